"""Simulated hosts and the two daemons under test, for bench/lib/bench.py.

Everything made is written to WORK/made (one "pid N", "harness DIR" or "ns NAME" per
line) before or right after it exists, so that `bench.py --cleanup WORK` (called by
bench/run's trap) can remove it even if the driver died. Nothing is killed by name.
"""

import json
import os
import signal
import socket
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(REPO, "tests", "harness", "networkd-harness.sh")
MADE = "made"


class Work:
    def __init__(self, path):
        self.path = path
        os.chmod(path, 0o755)  # networkd runs as systemd-network and must reach the bus inside

    def record(self, kind, what):
        if kind == "pid":  # with its start time, so that a recycled PID is never killed
            what = f"{what} {starttime(what)}"
        with open(os.path.join(self.path, MADE), "a") as f:
            f.write(f"{kind} {what}\n")

    def sub(self, name):
        p = os.path.join(self.path, name)
        os.makedirs(p, exist_ok=True)
        os.chmod(p, 0o755)
        return p


def starttime(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "gone"


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid, grace=2.5):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.02)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def cleanup(work_path):
    """Undoes WORK/made in reverse order; every step is best-effort and idempotent."""
    try:
        with open(os.path.join(work_path, MADE)) as f:
            made = [line.split(" ", 1) for line in f.read().splitlines() if " " in line]
    except FileNotFoundError:
        return
    for kind, what in reversed(made):
        if kind == "pid":
            pid, started = what.split()
            if starttime(pid) == started:
                kill_pid(int(pid))
        elif kind == "harness" and os.path.isdir(what):
            subprocess.run([HARNESS, "stop", what], capture_output=True)
        elif kind == "ns":
            subprocess.run(["ip", "netns", "del", what], capture_output=True)
    os.remove(os.path.join(work_path, MADE))


def sh(*args, ns=None, check=True, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Host:
    """One harness host: netns + private bus + real networkd, uplink0 10.99.1.1/24."""

    def __init__(self, work, name):
        self.work, self.dir = work, os.path.join(work.path, name)
        work.record("harness", self.dir)
        out = subprocess.run([HARNESS, "start", self.dir], env=dict(os.environ, NAME=name),
                             check=True, capture_output=True, text=True).stdout
        env = dict(line[len("export "):].split("=", 1) for line in out.splitlines() if line.startswith("export "))
        self.bus = env["DBUS_SYSTEM_BUS_ADDRESS"].strip("'")
        self.ns = env["HARNESS_NETNS"]
        self.peer_ns = env["HARNESS_PEER_NETNS"]
        self.obj = env["HARNESS_UPLINK_OBJ"]
        self.networkd_pid = int(env["NETWORKD_PID"])
        self.address = "10.99.1.1"

    def carrier(self, updown):
        subprocess.run([HARNESS, "carrier", self.dir, updown], check=True, capture_output=True)


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def wait_ready(self, timeout):
        """CLOCK_MONOTONIC ns at receipt of the datagram carrying READY=1."""
        self.sock.settimeout(timeout)
        while True:
            msg = self.sock.recv(4096)
            t = time.monotonic_ns()
            if b"READY=1" in msg.split(b"\n"):
                return t

    def drain(self):
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        self.sock.setblocking(True)


class Daemon:
    """A started daemon: its PID (the exec'd program itself), log and exec time."""

    def __init__(self, work, argv, env, log, runtime=None):
        self.log, self.runtime = log, runtime
        self.exec_ns = time.monotonic_ns()
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, env=env, stdout=f, stderr=f, stdin=subprocess.DEVNULL)
        work.record("pid", self.proc.pid)
        self.pid = self.proc.pid

    def stop(self):
        kill_pid(self.pid)
        self.proc.wait()

    def status(self):
        """fanlink's answer on its control socket (what `fanlink status --json` prints)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(os.path.join(self.runtime, "control"))
            s.sendall(b"status\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)

    def counters(self):
        """The daemon's own counts since it started: reconciles, their netlink requests, bus
        calls, networkd views kept, the last reconcile's event -> last ack (µs)."""
        return self.status()["daemon"]


def start_fanlink(work, host, binary, rules, log, notify=None, level="info"):
    """The unit runs `fanlink --verbose run`: info, the level every figure is measured at;
    what the bench counts comes from the daemon's counters (`Daemon.counters`), not its log."""
    # The unit's environment, not the operator's shell: with RUST_BACKTRACE set, each error
    # the daemon makes (a kept state gone stale in a cold trial, say) walks the unwind tables,
    # which pages in ~128 KiB of them that a daemon under systemd never reads.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUST_") and k != "NOTIFY_SOCKET"}
    env.update(DBUS_SYSTEM_BUS_ADDRESS=host.bus, RUST_LOG=level)
    if notify:
        env["NOTIFY_SOCKET"] = notify
    runtime = work.sub(os.path.basename(host.dir) + "-run")
    argv = ["ip", "netns", "exec", host.ns, binary, "--rules-dir", rules, "--runtime-dir", runtime, "run"]
    return Daemon(work, argv, env, log, runtime)


def start_dispatcher(work, host, script_dir, log, notify=None):
    """networkd-dispatcher in networkd's own netns and mount ns: it runs `networkctl`,
    which reads /run/systemd/netif, private to the harness's networkd."""
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=host.bus)
    env.pop("NOTIFY_SOCKET", None)
    if notify:
        env["NOTIFY_SOCKET"] = notify
    argv = ["nsenter", "-t", str(host.networkd_pid), "-m", "-n",
            "networkd-dispatcher", "-S", script_dir, "-T"]
    return Daemon(work, argv, env, log)


# The peer's fan, built the way a networkd-dispatcher user would: ip + nft in hooks.
# Same devices and settings as fanlink's (bridge, external vxlan on 8472 without learning,
# bridge address, MTU, masquerade); it lacks fanlink's BPF program, which no ip command
# can load, so the peer does strictly less work per event. Two sets of hooks:
# - keep (the headline peer): the down hook does what fanlink does, the bridge admin-down
#   with its devices kept, and a warm up is one `ip` (the bridge up); the fan is built only
#   when it does not exist;
# - rebuild: the down hook deletes the fan, so every up builds it again.
CREATE = """ip link add {bridge} mtu 1450 type bridge || exit 0
ip link add {vxlan} mtu 1450 type vxlan external nolearning dstport 8472
ip link set {vxlan} master {bridge}
ip addr add {address} dev {bridge}
nft -f - <<EOF
table ip {table} {{
  chain post {{ type nat hook postrouting priority srcnat; ip saddr {overlay} ip daddr != {overlay} masquerade; }}
}}
EOF
ip link set {vxlan} up
ip link set {bridge} up
"""

HOOK_UP = """#!/bin/sh
# routable.d: build the fan on the underlay uplink0 (networkd-dispatcher sets IFACE).
[ "$IFACE" = uplink0 ] || exit 0
""" + CREATE

HOOK_UP_KEEP = """#!/bin/sh
# routable.d: the fan on the underlay uplink0 up: its devices are kept while the underlay
# is down, so this is the bridge up; they are built only if they do not exist.
[ "$IFACE" = uplink0 ] || exit 0
ip link set {bridge} up 2>/dev/null && exit 0
""" + CREATE

HOOK_DOWN = """#!/bin/sh
# off.d and no-carrier.d: remove the fan when the underlay uplink0 stops being routable.
[ "$IFACE" = uplink0 ] || exit 0
nft delete table ip {table} 2>/dev/null
ip link del {vxlan} 2>/dev/null
ip link del {bridge} 2>/dev/null
exit 0
"""

HOOK_DOWN_KEEP = """#!/bin/sh
# off.d and no-carrier.d: the fan down when the underlay uplink0 stops being routable, as
# fanlink does it: the bridge admin-down, every device kept.
[ "$IFACE" = uplink0 ] || exit 0
ip link set {bridge} down 2>/dev/null
exit 0
"""


def write_hooks(script_dir, keep, **fan):
    up, down = (HOOK_UP_KEEP, HOOK_DOWN_KEEP) if keep else (HOOK_UP, HOOK_DOWN)
    for state, text in (("routable.d", up), ("off.d", down), ("no-carrier.d", down)):
        d = os.path.join(script_dir, state)
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        path = os.path.join(d, "50-fan")
        with open(path, "w") as f:
            f.write(text.format(**fan))
        os.chmod(path, 0o755)
    os.chmod(script_dir, 0o755)


def remove_fan(host, **fan):
    """What the rebuilding hooks do on no-carrier, by hand: the peer's `fanlink down --all`."""
    sh("sh", "-c", HOOK_DOWN.format(**fan), ns=host.ns, check=False, env=dict(os.environ, IFACE="uplink0"))


def write_rules(rules_dir, fans):
    """fans: [(name, overlay)] over the harness underlay 10.99.0.0/16."""
    os.makedirs(rules_dir, exist_ok=True)
    with open(os.path.join(rules_dir, "bench.toml"), "w") as f:
        for name, overlay in fans:
            f.write(f'[[fan]]\nname = "{name}"\noverlay = "{overlay}"\nunderlay = "10.99.0.0/16"\n\n')
