"""Guest images: one per suite, built with debootstrap and cached outside the checkout.

An image is a raw ext4 file made with `mkfs.ext4 -d` (no loop device) plus the guest's own
kernel and initrd, booted directly (no bootloader). The cache key is the suite, the package
list and the files put into the guest (tests/machines/guest/): change any and the image is
rebuilt; the other entries of that suite are removed then.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("FANLINK_MACHINES_CACHE", "/var/cache/fanlink-machines"))
GUEST_FILES = Path(__file__).resolve().parent.parent / "guest"

# What a guest needs, since it reaches no mirror: systemd as PID 1 with networkd, the bus,
# what fanlink's .deb depends on (nftables) and runs (dnsmasq-base for dhcp = true), and the
# tools the scenarios use (ip, ping, ps; busybox's udhcpc as a container's DHCP client).
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "initramfs-tools", "linux-image-amd64",
    "iproute2", "nftables", "dnsmasq-base", "iputils-ping", "procps", "busybox",
]
# Per suite, when a suite splits a package out (none so far).
EXTRA = {}


def packages(suite):
    return PACKAGES + EXTRA.get(suite, [])


def key(suite):
    h = hashlib.sha256()
    h.update(suite.encode() + b"\0" + ",".join(packages(suite)).encode() + b"\0")
    for f in sorted(GUEST_FILES.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


class Image:
    def __init__(self, suite):
        self.suite = suite
        self.dir = CACHE / f"{suite}-{key(suite)}"
        self.disk = self.dir / "disk.img"
        self.kernel = self.dir / "vmlinuz"
        self.initrd = self.dir / "initrd.img"

    def ready(self):
        return (self.dir / "done").exists()


def run(cmd, log, **kw):
    with open(log, "ab") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, **kw)


def build(suite, say):
    """Returns the cached image of `suite`, building it first when its key changed."""
    img = Image(suite)
    CACHE.mkdir(parents=True, exist_ok=True)
    # One builder per suite at a time (two test runs on one machine share the cache).
    with open(CACHE / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if img.ready():
            say(f"image {suite}: cached ({img.dir})")
            return img
        t0 = time.monotonic()
        for old in CACHE.glob(f"{suite}-*"):
            remove_tree(old)
        # The debootstrap tree is kept until an image is made from it (keyed by suite and
        # packages only): a failure after it costs no second download.
        pkey = hashlib.sha256(f"{suite} {packages(suite)}".encode()).hexdigest()[:12]
        root, done = CACHE / f".root-{suite}-{pkey}", CACHE / f".root-{suite}-{pkey}.ok"
        for stale in CACHE.glob(f".root-{suite}-*"):
            if not str(stale).startswith(str(root)):
                remove_tree(stale)
        log = CACHE / f".build-{suite}.log"
        log.write_text("")
        try:
            if not done.exists():
                remove_tree(root)
                run(["debootstrap", "--variant=minbase", "--include=" + ",".join(packages(suite)),
                     suite, str(root), "http://deb.debian.org/debian"], log)
                done.touch()
            t1 = time.monotonic()
            customise(root, log)
            t2 = time.monotonic()
            img.dir.mkdir()
            shutil.copy(sorted(root.glob("boot/vmlinuz-*"))[-1], img.kernel)
            shutil.copy(sorted(root.glob("boot/initrd.img-*"))[-1], img.initrd)
            raw = img.dir / "disk.img.part"
            with open(raw, "wb") as f:
                f.truncate(3 << 30)
            run(["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(raw)], log)
            os.rename(raw, img.disk)
            (img.dir / "done").write_text(f"{suite} {' '.join(packages(suite))}\n")
            t3 = time.monotonic()
        except (subprocess.CalledProcessError, OSError, IndexError) as e:
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            remove_tree(img.dir)
            raise RuntimeError(f"image {suite}: build failed: {e}\n" + "\n".join(tail)) from e
        remove_tree(root)
        done.unlink()
        log.unlink()
        say(f"image {suite}: built in {t3 - t0:.0f} s (debootstrap {t1 - t0:.0f} s, "
            f"setup {t2 - t1:.0f} s, mkfs {t3 - t2:.0f} s)")
        return img


def remove_tree(path):
    """rm -rf that first unmounts what an interrupted debootstrap left mounted inside (its
    /proc): removing through a mount would reach the host's files."""
    path = str(path)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for m in sorted((m for m in mounts if m.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


def customise(root, log):
    """What turns a debootstrap tree into a test guest: fstab, networkd, the agent."""
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (root / "etc/hostname").write_text("guest\n")
    dst = root / "usr/local/sbin/fl-uplink"
    shutil.copy(GUEST_FILES / "fl-uplink", dst)
    dst.chmod(0o755)
    for unit in ("fl-agent.service", "fl-uplink.service"):
        shutil.copy(GUEST_FILES / unit, root / "etc/systemd/system")
    # The journal kept across reboots, so a failed step after a reboot still shows the boot before.
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    run(["chroot", str(root), "systemctl", "enable", "systemd-networkd", "fl-agent.service",
         "fl-uplink.service"], log)
    # Nothing in a test guest waits for a network to be "online" or for a tty login.
    run(["chroot", str(root), "systemctl", "mask", "systemd-networkd-wait-online.service",
         "serial-getty@ttyS0.service", "getty@tty1.service", "apt-daily.timer",
         "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"], log)
    run(["chroot", str(root), "passwd", "-d", "root"], log)
    # apt's downloaded .debs are not needed in the image.
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
