"""Event sources with receipt timestamps, for bench/lib/bench.py (stdlib only).

- `NetlinkWatch`: an rtnetlink socket made inside a host's netns, bound to
  RTMGRP_LINK|RTMGRP_IPV4_IFADDR. It tracks one bridge (up flag, IPv4 address, gone) and
  stamps every message with time.monotonic_ns() taken right after recv() returns.
- `BusWatch`: `chrt -f 50 busctl monitor --json=short` on a host's private bus, filtered to
  networkd's PropertiesChanged. busctl stamps each message with the kernel's socket receive
  time (CLOCK_REALTIME, µs); we convert it to CLOCK_MONOTONIC with an offset sampled just
  before each trial, and also keep our own receipt time as a cross-check.
Both are pumped by one selector (`Pump`), never polled on a timer.
"""

import ctypes
import json
import os
import selectors
import socket
import struct
import subprocess
import time

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
IFLA_IFNAME = 3
IFA_LOCAL = 2
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, make):
    """Calls make() with this thread inside netns `ns` (Python 3.11 has no os.setns)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            return make()
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def _attrs(buf, off, end):
    while off + 4 <= end:
        alen, atype = struct.unpack_from("HH", buf, off)
        if alen < 4:
            break
        yield atype & 0x3FFF, buf[off + 4 : off + alen]
        off += (alen + 3) & ~3


class NetlinkWatch:
    """The state of bridge `name` in netns `ns`, and every change of it with its time."""

    def __init__(self, ns, name):
        self.ns, self.name = ns, name
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
        self.index = None
        self.up = False
        self.addr = False
        self._initial()
        # (t_ns, ready) each time "UP and addressed" changes; (t_ns, gone) likewise.
        self.ready_changes = []
        self.gone_changes = []
        self.last_msg_ns = time.monotonic_ns()

    def _initial(self):
        link = subprocess.run(["ip", "-n", self.ns, "-j", "link", "show", "dev", self.name],
                              capture_output=True, text=True)
        if link.returncode == 0:
            info = json.loads(link.stdout)[0]
            self.index = info["ifindex"]
            self.up = "UP" in info.get("flags", [])
            addrs = subprocess.run(["ip", "-n", self.ns, "-j", "-4", "addr", "show", "dev", self.name],
                                   capture_output=True, text=True, check=True)
            self.addr = any(json.loads(addrs.stdout)[0].get("addr_info", []))

    @property
    def ready(self):
        return self.index is not None and self.up and self.addr

    @property
    def gone(self):
        return self.index is None

    def on_readable(self):
        data = self.sock.recv(1 << 20)
        now = time.monotonic_ns()
        self.last_msg_ns = now
        was_ready, was_gone = self.ready, self.gone
        off = 0
        while off + 16 <= len(data):
            mlen, mtype = struct.unpack_from("IH", data, off)
            if mlen < 16:
                break
            body, end = off + 16, off + mlen
            if mtype in (RTM_NEWLINK, RTM_DELLINK):
                _, _, _, index, flags, _ = struct.unpack_from("BBHiII", data, body)
                name = None
                for atype, val in _attrs(data, body + 16, end):
                    if atype == IFLA_IFNAME:
                        name = val.rstrip(b"\0").decode()
                if name == self.name:
                    if mtype == RTM_DELLINK:
                        self.index, self.up, self.addr = None, False, False
                    else:
                        self.index, self.up = index, bool(flags & IFF_UP)
            elif mtype in (RTM_NEWADDR, RTM_DELADDR):
                family, _, _, _, index = struct.unpack_from("BBBBI", data, body)
                if family == socket.AF_INET and index == self.index:
                    if any(a == IFA_LOCAL for a, _ in _attrs(data, body + 8, end)):
                        self.addr = mtype == RTM_NEWADDR
            off += (mlen + 3) & ~3
        if self.ready != was_ready:
            self.ready_changes.append((now, self.ready))
        if self.gone != was_gone:
            self.gone_changes.append((now, self.gone))


class BusWatch:
    """networkd's OperationalState signals for one link path, as a real-time monitor sees them."""

    MATCH = ("type='signal',sender='org.freedesktop.network1',"
             "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'")

    def __init__(self, bus_address, path, record_pid):
        self.path = path
        self.proc = subprocess.Popen(
            ["chrt", "-f", "50", "stdbuf", "-oL", "busctl", f"--address={bus_address}",
             "monitor", "--json=short", "--match", self.MATCH],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        record_pid(self.proc.pid)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = b""
        # (t_kernel_mono_ns, t_recv_ns, state) for each OperationalState of `path`.
        self.oper = []
        self.offset_ns = 0
        self.resync_clock()
        # The state before the monitor started (it only sees changes), read once.
        now = subprocess.run(["busctl", f"--address={bus_address}", "get-property", "org.freedesktop.network1",
                              path, "org.freedesktop.network1.Link", "OperationalState"],
                             capture_output=True, text=True, check=True).stdout.split()[1].strip('"')
        self.oper.append((0, 0, now))
        self.last_msg_ns = time.monotonic_ns()

    def resync_clock(self):
        """CLOCK_REALTIME - CLOCK_MONOTONIC, the smallest of a few samples' bracket."""
        best = None
        for _ in range(5):
            a = time.monotonic_ns()
            r = time.time_ns()
            b = time.monotonic_ns()
            if best is None or b - a < best[0]:
                best = (b - a, r - (a + b) // 2)
        self.offset_ns = best[1]

    def fileno(self):
        return self.proc.stdout.fileno()

    def on_readable(self):
        chunk = os.read(self.fileno(), 1 << 16)
        now = time.monotonic_ns()
        if not chunk:
            raise RuntimeError("busctl monitor exited")
        self.buf += chunk
        self.last_msg_ns = now
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"{"):
                continue
            msg = json.loads(line)
            if msg.get("path") != self.path:
                continue
            props = msg["payload"]["data"][1]
            if "OperationalState" in props:
                t = msg["timestamp-realtime"] * 1000 - self.offset_ns
                self.oper.append((t, now, props["OperationalState"]["data"]))

    @property
    def state(self):
        return self.oper[-1][2] if self.oper else None


class Pump:
    """One selector over every watch; `until` waits for a predicate without a timer loop."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()

    def add(self, watch):
        self.sel.register(watch.sock if isinstance(watch, NetlinkWatch) else watch, selectors.EVENT_READ, watch)

    def run(self, seconds):
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            for key, _ in self.sel.select(left):
                key.data.on_readable()

    def until(self, pred, timeout, what):
        end = time.monotonic() + timeout
        while not pred():
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            for key, _ in self.sel.select(left):
                key.data.on_readable()

    def quiet(self, watches, quiet_s, timeout):
        """Pumps until no message (netlink, or networkd's signals) arrived for quiet_s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.run(quiet_s / 2)
            last = max(w.last_msg_ns for w in watches)
            if time.monotonic_ns() - last >= quiet_s * 1e9:
                return


def setlink_ns(ns, names, up):
    """The kernel's own share of a warm up (or down): RTM_NEWLINK setting IFF_UP on each of
    `names` in turn, each waiting for its ack, as fanlink does. Returns elapsed ns."""
    sock = in_netns(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
    try:
        sock.bind((0, 0))
        indexes = [in_netns(ns, lambda n=n: socket.if_nametoindex(n)) for n in names]
        t = time.monotonic_ns()
        for seq, index in enumerate(indexes, 1):
            body = struct.pack("BBHiII", socket.AF_UNSPEC, 0, 0, index, IFF_UP if up else 0, IFF_UP)
            sock.send(struct.pack("IHHII", 16 + len(body), RTM_NEWLINK, 0x1 | 0x4, seq, 0) + body)
            ack = sock.recv(4096)
            if struct.unpack_from("i", ack, 16)[0] != 0:
                raise OSError(-struct.unpack_from("i", ack, 16)[0], f"RTM_NEWLINK {names}")
        return time.monotonic_ns() - t
    finally:
        sock.close()
