"""Guest images: one per suite, built with mmdebstrap and cached outside the checkout.

An image is a raw ext4 file made with `mkfs.ext4 -d` (no loop device) plus the guest's own
kernel and initrd, booted directly (no bootloader). The cache key is the suite, the package
list, the files put into the guest (tests/machines/guest/) and how a tree is made and
made a guest (bootstrap, customise, MASKED): change any and the image is rebuilt; the other entries of that suite are removed then.
"""

import fcntl
import hashlib
import inspect
import os
import re
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
# The suites a guest can run: Debian 11 (Linux 5.10, systemd 247), 12 (6.1, 252), 13 (6.12, 257).
SUITES = ("bullseye", "bookworm", "trixie")
# Per suite: the workload hosts' container managers (scenario 6, lib/workloads.py). Debian 13
# has Incus (6.0) and Docker (26.1; the `docker` command is docker-cli, which docker.io only
# recommends); Debian 12 has Docker 20.10 and no Incus. busybox-static (replaces busybox) is
# the workloads' root filesystem; xz-utils unpacks Incus's image tarballs. Docker 20.10 fails
# every `docker run` where the kernel has AppArmor and apparmor_parser is missing (docker.io
# recommends apparmor, which a standard Debian 12 has); Docker 26 checks for the parser.
EXTRA = {
    "trixie": ["incus", "docker.io", "docker-cli", "iptables", "xz-utils", "busybox-static"],
    "bookworm": ["docker.io", "iptables", "busybox-static", "apparmor"],
}
# Guest memory (MiB): 640 boots systemd and fanlink; dockerd, containerd and incusd want more.
MEMORY = {"trixie": 1536, "bookworm": 1536}
# Their units are off in the image (scenario 6 enables them): the scenarios before it see
# the host they always saw, and no boot pays for a daemon it does not use.
WORKLOAD_UNITS = ["docker.service", "docker.socket", "containerd.service", "incus.service",
                  "incus.socket", "incus-startup.service", "incus-user.service", "incus-user.socket",
                  "lxcfs.service", "lxc.service", "lxc-net.service", "lxc-monitord.service"]


MASKED = [
    # waits for nothing a test needs; logins
    "systemd-networkd-wait-online.service", "serial-getty@ttyS0.service", "getty@tty1.service",
    "getty.target", "systemd-logind.service", "systemd-user-sessions.service",
    # timers and housekeeping
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
    "fstrim.timer", "dpkg-db-backup.timer", "man-db.timer", "cron.service",
    "systemd-timesyncd.service", "systemd-pstore.service", "systemd-update-utmp.service",
    "systemd-network-generator.service",
    # file systems and modules for hardware a guest does not have
    "dev-hugepages.mount", "dev-mqueue.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount", "modprobe@drm.service", "modprobe@dm_mod.service",
    "modprobe@efi_pstore.service", "modprobe@fuse.service", "modprobe@loop.service",
    "kmod-static-nodes.service", "systemd-rfkill.socket", "systemd-rfkill.service",
    "proc-sys-fs-binfmt_misc.automount", "systemd-binfmt.service",
    "systemd-ask-password-console.path", "systemd-ask-password-wall.path",
]
# The guest's initramfs holds just what mounts the root (virtio disk, ext4): Debian's
# default (MODULES=most, 36 MB) took seconds to unpack and probe under emulation.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"]


def packages(suite):
    extra = EXTRA.get(suite, [])
    return [p for p in PACKAGES if not (p == "busybox" and "busybox-static" in extra)] + extra


# What systemd enforces with BPF programs it attaches to a unit's cgroup. Before Linux 5.11
# each is charged to root's RLIMIT_MEMLOCK, the one fanlink's programs are charged to too
# (issue 25): Debian 11's guest masks none of the units that have these, so that it is
# charged as a stock host is.
BPF_DIRECTIVES = re.compile(r"^(IPAddressDeny|IPAddressAllow|IPAccounting|IP(Ingress|Egress)FilterPath|"
                            r"DevicePolicy|DeviceAllow|PrivateDevices|ProtectClock|ProtectKernelLogs|"
                            r"RestrictNetworkInterfaces|SocketBind(Allow|Deny))=", re.M)


def masked(suite, root):
    """MASKED, but on Debian 11 (kernel 5.10) without the units that hold BPF programs."""
    if suite != "bullseye":
        return MASKED
    keep = []
    for unit in MASKED:
        files = [root / d / unit for d in ("lib/systemd/system", "usr/lib/systemd/system")]
        if not any(f.is_file() and BPF_DIRECTIVES.search(f.read_text(errors="replace")) for f in files):
            keep.append(unit)
    return keep


def key(suite):
    h = hashlib.sha256()
    h.update(suite.encode() + b"\0" + ",".join(packages(suite)).encode() + b"\0")
    for f in sorted(GUEST_FILES.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    # How a tree is made and made a guest is part of the image too.
    for fn in (bootstrap, customise, masked):
        h.update(inspect.getsource(fn).encode() + b"\0")
    h.update(repr((MASKED, INITRD_MODULES, BPF_DIRECTIVES.pattern, WORKLOAD_UNITS)).encode())
    return h.hexdigest()[:12]


class Image:
    def __init__(self, suite):
        self.suite = suite
        self.dir = CACHE / f"{suite}-{key(suite)}"
        self.disk = self.dir / "disk.img"
        self.kernel = self.dir / "vmlinuz"
        self.initrd = self.dir / "initrd.img"
        self.mem = MEMORY.get(suite, 640)

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
        # The bootstrapped tree is kept until an image is made from it (keyed by suite and
        # packages only): a failure after it costs no second download.
        pkey = hashlib.sha256(f"mmdebstrap {suite} {packages(suite)} {INITRD_MODULES}".encode()).hexdigest()[:12]
        root, done = CACHE / f".root-{suite}-{pkey}", CACHE / f".root-{suite}-{pkey}.ok"
        for stale in CACHE.glob(f".root-{suite}-*"):
            if not str(stale).startswith(str(root)):
                remove_tree(stale)
        log = CACHE / f".build-{suite}.log"
        log.write_text("")
        try:
            if not done.exists():
                remove_tree(root)
                bootstrap(suite, root, log)
                done.touch()
            t1 = time.monotonic()
            unmasked = customise(suite, root, log)
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
        say(f"image {suite}: built in {t3 - t0:.0f} s (mmdebstrap {t1 - t0:.0f} s, "
            f"setup {t2 - t1:.0f} s, mkfs {t3 - t2:.0f} s)"
            + (f"; not masked, they hold BPF programs: {' '.join(unmasked)}" if unmasked else ""))
        return img


def bootstrap(suite, root, log):
    """The suite's packages into `root`. mmdebstrap rather than debootstrap: apt fetches in
    parallel and resolves in one go (debootstrap took 250-310 s for each of three suites at
    once on a loaded 2-core machine); no documentation, manual pages or translations (less
    to unpack and to copy into the image); and a hook before the kernel is installed makes
    its one initramfs the small one (INITRD_MODULES)."""
    initrd = ('mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d" && '
              'echo MODULES=list >"$1/etc/initramfs-tools/conf.d/fanlink-machines" && '
              f'printf "%s\\n" {" ".join(INITRD_MODULES)} >"$1/usr/share/initramfs-tools/modules.d/fanlink-machines"')
    run(["mmdebstrap", "--variant=minbase", "--include=" + ",".join(packages(suite)),
         "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
         "--aptopt=Acquire::Languages \"none\"",
         "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
         "--dpkgopt=path-exclude=/usr/share/info/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
         "--essential-hook=" + initrd,
         suite, str(root), "http://deb.debian.org/debian"], log)


def remove_tree(path):
    """rm -rf that first unmounts what an interrupted mmdebstrap left mounted inside (its
    /proc): removing through a mount would reach the host's files."""
    path = str(path)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for m in sorted((m for m in mounts if m.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=False)


def customise(suite, root, log):
    """What turns a bootstrapped tree into a test guest: fstab, networkd, the agent."""
    # The guest installs the .deb as a user's Debian would: with its manual pages.
    for f in ("etc/dpkg/dpkg.cfg.d/99mmdebstrap", "etc/apt/apt.conf.d/99mmdebstrap"):
        (root / f).unlink(missing_ok=True)
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
    # Under software emulation every unit costs CPU the boot waits for (one vCPU): what a
    # test guest never needs is masked (`systemd-analyze blame` in a guest shows the rest).
    # Masks of units a suite does not have are harmless.
    mask = masked(suite, root)
    run(["chroot", str(root), "systemctl", "mask"] + mask, log)
    units = [u for u in WORKLOAD_UNITS
             if any((root / d / u).is_file() for d in ("lib/systemd/system", "usr/lib/systemd/system"))]
    if units:
        run(["chroot", str(root), "systemctl", "disable"] + units, log)
    # Generators run (one process each) before systemd loads a unit: none but the fstab one
    # has anything to find in a test guest (no TPM, LUKS, GPT, SysV scripts, gettys).
    gens = root / "etc/systemd/system-generators"
    gens.mkdir(parents=True, exist_ok=True)
    for d in ("lib/systemd/system-generators", "usr/lib/systemd/system-generators"):
        for g in (root / d).glob("*") if (root / d).is_dir() else []:
            if g.name != "systemd-fstab-generator" and not (gens / g.name).exists():
                (gens / g.name).symlink_to("/dev/null")
    run(["chroot", str(root), "passwd", "-d", "root"], log)
    # apt's downloaded .debs are not needed in the image.
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
    return sorted(set(MASKED) - set(mask))
