"""One booted guest: qemu on a qcow2 overlay of a cached image, driven through its agent.

The guest's disk is a per-guest qcow2 overlay on the suite's base image, so a reboot inside
qemu keeps what the test wrote (-snapshot would too, but the overlay is also what a failed
step leaves to look at). The agent (tests/machines/fl-agent) answers on a virtio-serial port whose
host end is a unix socket this process connects to once: the connection outlives reboots.
"""

import base64
import os
import select
import socket
import subprocess
import time
from pathlib import Path

PORT = "org.fanlink.agent"
# Every guest started, so that cleanup finds them whatever thread or step failed.
RUNNING = []
SLOW = float(os.environ.get("FANLINK_MACHINES_SLOW", "1"))
# Drivers udev would load for the emulated PC (IDE, floppy, speaker, SMBus; kvm, because the
# emulated CPU shows svm): on a booted guest under load their probes held udev's workers
# for minutes, networkd waited for udev, and the uplink came up without its address. Kept
# from udev's modprobe (by alias: kmod reads modprobe.blacklist), so not even read from disk.
NOT_LOADED = ["floppy", "pcspkr", "ata_piix", "ata_generic", "pata_acpi", "i2c_piix4", "cfg80211",
              "kvm", "kvm_amd", "kvm_intel", "powernow_k8", "acpi_cpufreq", "serio_raw", "psmouse",
              "joydev", "evdev", "sg", "sr_mod", "parport_pc", "ppdev", "qemu_fw_cfg", "button",
              "drm", "bochs", "intel_rapl_msr", "intel_rapl_common", "ghash_clmulni_intel"]


class StepFailed(Exception):
    pass


def accel():
    """kvm where the CPU exposes virtualization, else software emulation. An openable
    /dev/kvm is not enough: on a CPU without vmx/svm qemu starts with kvm and then aborts
    ("failed to set MSR"), so a fallback list (-accel kvm -accel tcg) does not help."""
    try:
        flags = open("/proc/cpuinfo").read().split()
        if ("vmx" in flags or "svm" in flags) and os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "kvm"
    except OSError:
        pass
    return "tcg"


class Guest:
    def __init__(self, name, image, work, netns, addr, mac, files_tar, mcast=1234, mem=640):
        self.name, self.image, self.addr = name, image, addr
        self.dir = Path(work) / name
        self.dir.mkdir(parents=True)
        self.serial = self.dir / "serial.log"
        self.sock_path = self.dir / "agent.sock"
        self.disk = self.dir / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(image.disk), str(self.disk)], check=True)
        # mitigations=off: the guest is a test bed, and page-table isolation on every system
        # call is what costs most under software emulation.
        # The rest spares probes and checks that cost seconds under emulation: one serial
        # port, no timer check, no crypto self-tests, no PS/2 ports, and no drivers for the
        # emulated PC's other hardware (see NOT_LOADED). Not tsc=reliable: with it, a TSC
        # calibrated while the host was busy went unchecked, and a Debian 13 guest's clock ran
        # at a third of the host's (its boot said 109 s; the host waited 432).
        cmdline = (f"root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 mitigations=off "
                   "8250.nr_uarts=1 no_timer_check cryptomgr.notests i8042.noaux i8042.nokbd "
                   f"modprobe.blacklist={','.join(NOT_LOADED)} "
                   f"systemd.hostname={name} fl.addr={addr} "
                   # For a look at a boot: e.g. "systemd.show_status=1 loglevel=6".
                   + os.environ.get("FANLINK_MACHINES_APPEND", ""))
        self.cmd = [
            "ip", "netns", "exec", netns, "qemu-system-x86_64",
            # The default CPU model: "-cpu max" makes software emulation several times slower
            # (the kernel picks vector code paths that TCG emulates at great cost).
            "-accel", accel(),
            "-m", str(mem), "-smp", "1", "-nographic", "-nodefaults",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
            "-drive", f"file={self.disk},format=qcow2,if=virtio",
            # Files the test copies in (the .debs): a tar on a read-only disk, /dev/vdb.
            "-drive", f"file={files_tar},format=raw,if=virtio,readonly=on",
            # Entropy from the host: early boot waited seconds for the kernel's random pool.
            "-device", "virtio-rng-pci",
            "-netdev", f"socket,id=n0,mcast=230.0.0.1:{mcast}",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},addr=0x3,romfile=",
            "-serial", f"file:{self.serial}",
            "-device", "virtio-serial",
            "-chardev", f"socket,id=agent,path={self.sock_path},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={PORT}",
        ]
        self.proc = None
        self.sock = None
        self.buf = b""
        self.boot_id = None
        self.to_agent = None
        self.seq = 0

    def start(self):
        RUNNING.append(self)
        log = open(self.dir / "qemu.log", "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise StepFailed(f"{self.name}: qemu exited: "
                                 + (self.dir / "qemu.log").read_text(errors="replace")[-2000:])
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.sock_path))
                self.sock = s
                return
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise StepFailed(f"{self.name}: no agent socket from qemu")
                time.sleep(0.1)

    def _line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.proc.poll() is not None:
                raise StepFailed(f"{self.name}: qemu exited ({self.proc.returncode})")
            r, _, _ = select.select([self.sock], [], [], min(left, 1.0))
            if r:
                data = self.sock.recv(65536)
                if not data:
                    raise StepFailed(f"{self.name}: agent socket closed")
                self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def wait_boot(self, timeout=600):
        """Waits for the agent of a boot other than the last one seen; returns seconds."""
        t0 = time.monotonic()
        deadline = t0 + timeout * SLOW
        while True:
            line = self._line(deadline)
            if line is None:
                raise StepFailed(f"{self.name}: no boot within {timeout} s")
            if line.startswith("READY ") and line.split()[1] != self.boot_id:
                self.boot_id = line.split()[1]
                break
        # What the host waited for the agent, apart from the wait for the boot's jobs: the
        # guest's own "Startup finished" has been seen to say much less than the host waited.
        self.to_agent = time.monotonic() - t0
        # The boot's jobs done (or given up on) before the test goes on.
        self.sh("timeout 120 systemctl is-system-running --wait >/dev/null || true", timeout=180)
        return time.monotonic() - t0

    def sh(self, script, timeout=120, check=True):
        """Runs a shell script in the guest as root; returns (rc, output). Timeouts are
        stretched by FANLINK_MACHINES_SLOW (a factor, default 1) on a loaded machine."""
        timeout *= SLOW
        self.seq += 1
        tag = f"{self.seq}"
        b64 = base64.b64encode(script.encode()).decode()
        self.sock.sendall(f"RUN {tag} {b64}\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if line is None:
                raise StepFailed(f"{self.name}: no answer within {timeout:.0f} s to: {script}")
            parts = line.split(" ", 3)
            if parts[0] == "DONE" and parts[1] == tag:
                rc = int(parts[2])
                out = base64.b64decode(parts[3]).decode(errors="replace") if len(parts) > 3 else ""
                if check and rc != 0:
                    raise StepFailed(f"{self.name}: exit {rc}: {script}\n{out}")
                return rc, out
            if parts[0] == "READY":
                raise StepFailed(f"{self.name}: rebooted while running: {script}")

    def out(self, script, timeout=120):
        return self.sh(script, timeout)[1]

    def reboot(self, timeout=600):
        """Reboots from inside (qemu stays, the overlay disk keeps what was written)."""
        self.seq += 1
        b64 = base64.b64encode(b"systemctl reboot").decode()
        self.sock.sendall(f"RUN {self.seq} {b64}\n".encode())
        return self.wait_boot(timeout)

    def evidence(self):
        """What to show when a step failed: the serial log's tail and the guest's journal."""
        text = [f"---- {self.name}: serial log (tail)"]
        text += self.serial.read_text(errors="replace").splitlines()[-60:] if self.serial.exists() else []
        try:
            j = self.out("journalctl -b --no-pager -o short-monotonic | tail -n 150; "
                         "echo; journalctl -k --no-pager | grep -Ei 'audit|seccomp|denied' | tail -n 20",
                         timeout=180)
            text += [f"---- {self.name}: journalctl -b (tail)", j]
        except (StepFailed, OSError) as e:
            text.append(f"---- {self.name}: journal unavailable: {e}")
        return "\n".join(text)

    def stop(self):
        if self.sock:
            self.sock.close()
        if self.proc and self.proc.poll() is None:
            # The recorded qemu only (ip netns exec execs it: same pid).
            self.proc.kill()
            self.proc.wait()
