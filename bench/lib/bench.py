#!/usr/bin/env python3
"""fanlink's benchmarks side by side with networkd-dispatcher (the peer it replaces).

Called by bench/run (which builds the binary and installs the packages); see its header for
the flags. Sections, in the order run:
  footprint at start, idle wakeups, reaction latency (warm and cold, A B A B), flap storm
  (CPU per event, footprint after), exec -> READY=1, state per peer, datapath.
Each section returns rows for the table that `report()` prints; `--smoke` shortens every
duration and asserts only that each measurement produced numbers (no timing asserted).
Everything made is recorded in WORK/made and removed at the end, also on failure.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import churn  # noqa: E402
import datapath  # noqa: E402
import hosts  # noqa: E402
from netwatch import BusWatch, NetlinkWatch, Pump, setlink_ns  # noqa: E402

FAN = "fan-250"
OVERLAY = "250.0.0.0/8"
BRIDGE_ADDR = "250.1.1.1/8"  # the harness uplink is 10.99.1.1 on underlay 10.99.0.0/16
# The issue's targets for the figures printed beside them (issue 14's table).
COLD_TARGET_MS = 3.0
DATAPATH_TARGET = 0.97
WARM_TARGET_US = 200
WARM_RATIO_TARGET = 100
ACK_TARGET_US = 100
RECONCILES_TARGET = 2
REQUESTS_TARGET = 2
CPU_EVENT_TARGET_US = 100
READY_TARGET_MS = {"1 fan": 10, "16 fans": 40}
RSS_TARGET_KIB = 2048
IDLE_CTXT_TARGET = 0
# Issue 23's targets for a busy container host.
CHURN_RATIO_TARGET = 100
# The daemons, in the order of the tables and of the alternating trials: fanlink, the peer
# whose hooks keep the fan's devices while the underlay is down (what fanlink does; the
# headline), and the peer whose hooks delete the fan on no-carrier and build it again.
KINDS = ("fanlink", "dispatcher", "rebuilding")
PEERS = ("dispatcher", "rebuilding")
LABEL = {"fanlink": "fanlink", "dispatcher": "networkd-dispatcher",
         "rebuilding": "networkd-dispatcher, rebuilding hooks"}
PEER_FAN = dict(bridge=FAN, vxlan="fan-250-vx", address=BRIDGE_ADDR, table="fan250", overlay=OVERLAY)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def summary(values):
    return {k: pct(values, p) for k, p in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


# ---------------------------------------------------------------- /proc readings

def proc_status(pid):
    """VmRSS/VmHWM (KiB) of the process and its split into anonymous memory (heap, stacks: the
    process's own) and file pages (the binary's text and data: clean, shared, reclaimable), fds,
    and context switches summed over its threads."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except FileNotFoundError:
            pass
    out["ctxt"] = vol + invol
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    out["threads"] = len(os.listdir(f"/proc/{pid}/task"))
    return out


def cpu_ticks(pid):
    """(utime+stime, cutime+cstime): /proc/PID/stat fields 14-15 and 16-17, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = [int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15]]
    return fields[0] + fields[1], fields[2] + fields[3]


def thread_ctxt(pid):
    """{thread name: voluntary+involuntary context switches}."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n = sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:
            continue
        out[name] = out.get(name, 0) + n
    return out


# ---------------------------------------------------------------- the two hosts

class Side:
    """One host and the daemon under test on it, with its watchers."""

    def __init__(self, kind, host, daemon, pump, work):
        self.kind, self.host, self.daemon = kind, host, daemon
        self.net = NetlinkWatch(host.ns, FAN)
        self.bus = BusWatch(host.bus, host.obj, lambda pid: work.record("pid", pid))
        pump.add(self.net)
        pump.add(self.bus)

    def down_done(self):
        # fanlink and the headline peer keep the devices (bridge admin-down); the rebuilding
        # peer's hook deletes them.
        return self.net.gone if self.kind == "rebuilding" else not self.net.up


def wait_up(pump, side, timeout=10):
    pump.until(lambda: side.net.ready and side.bus.state == "routable", timeout, f"{side.kind}: fan up")


def flap_down(pump, sides, cold, binary):
    for s in sides:
        s.host.carrier("down")
    for s in sides:
        pump.until(lambda: s.bus.state == "no-carrier" and s.down_done(), 10, f"{s.kind}: fan down")
        if cold and s.kind == "fanlink":
            hosts.sh(binary, "down", "--all", ns=s.host.ns)
            pump.until(lambda: s.net.gone, 10, "fanlink down --all")
        elif cold and s.kind == "dispatcher":  # the peer's `down --all`: its fan deleted
            hosts.remove_fan(s.host, **PEER_FAN)
            pump.until(lambda: s.net.gone, 10, "the peer's fan removed")
    pump.quiet([s.net for s in sides], 0.03, 2)


def trial(pump, side, cold, binary):
    """One flap; returns (reaction_ns, ns from `ip link set up` to fan up)."""
    flap_down(pump, [side], cold, binary)
    side.bus.resync_clock()
    n_oper, n_ready = len(side.bus.oper), len(side.net.ready_changes)
    t_cmd = time.monotonic_ns()
    side.host.carrier("up")
    pump.until(lambda: any(s == "routable" for _, _, s in side.bus.oper[n_oper:])
               and any(r for _, r in side.net.ready_changes[n_ready:]), 10, f"{side.kind}: fan up again")
    t0 = next(t for t, _, s in side.bus.oper[n_oper:] if s == "routable")
    t1 = next(t for t, r in side.net.ready_changes[n_ready:] if r)
    return t1 - t0, t1 - t_cmd


def latency(pump, sides, n, binary):
    """Trials alternating the daemons. fanlink's own "event to last ack" of a warm up is the
    last reconcile's, from its counters after the trial: a warm trial is two reconciles (down,
    up), and a trial with any other is left out (counted). A cold trial has more (`down --all`,
    the creation's echo), so it has no such figure at the unit's log level."""
    res = {}
    fl = sides["fanlink"]
    for path, cold in (("warm", False), ("cold", True)):
        samples = {k: [] for k in sides}
        cmd = {k: [] for k in sides}
        acks, odd = [], 0
        for i in range(n):
            for kind in sides:  # A B C A B C: none gets a warmer machine
                before = fl.daemon.counters()["reconciles"] if kind == "fanlink" else None
                r, c = trial(pump, sides[kind], cold, binary)
                samples[kind].append(r)
                cmd[kind].append(c)
                if kind == "fanlink" and not cold:
                    after = fl.daemon.counters()
                    if after["reconciles"] - before == 2:
                        acks.append(after["last_reconcile_us"])
                    else:
                        odd += 1
        res[path] = dict(samples=samples, cmd=cmd, acks=acks, odd=odd)
        log(f"latency {path}: " + ", ".join(f"{k} p50 {statistics.median(v) / 1e3:.0f} us" for k, v in samples.items()))
    return res


def storm(pump, sides, n, binary):
    """n flaps on both hosts at once; CPU (ticks) used by each daemon over them."""
    before = {k: cpu_ticks(s.daemon.pid) for k, s in sides.items()}
    counted = sides["fanlink"].daemon.counters()
    t = time.monotonic()
    for i in range(n):
        flap_down(pump, list(sides.values()), False, binary)
        for s in sides.values():
            s.host.carrier("up")
        for s in sides.values():
            wait_up(pump, s)
    pump.quiet([s.net for s in sides.values()], 0.05, 2)
    log(f"{n} flaps in {time.monotonic() - t:.1f} s")
    now = sides["fanlink"].daemon.counters()
    reconciles = now["reconciles"] - counted["reconciles"]
    requests = now["netlink_requests"] - counted["netlink_requests"]
    out = {}
    for k, s in sides.items():
        own, children = cpu_ticks(s.daemon.pid)
        out[k] = (own - before[k][0], children - before[k][1])
    out["reconciles"] = reconciles
    out["requests"] = requests
    return out


def idle(pump, sides, seconds):
    """Context switches of each idle daemon, in total and per thread name."""
    before = {k: thread_ctxt(s.daemon.pid) for k, s in sides.items()}
    pump.run(seconds)
    out = {}
    for k, s in sides.items():
        after = thread_ctxt(s.daemon.pid)
        per = {t: n - before[k].get(t, 0) for t, n in after.items()}
        out[k] = (sum(per.values()), {t: n for t, n in per.items() if n})
    return out


def kernel_floor(work, reps):
    """The kernel's share of fanlink's warm up and down: the same devices as fanlink's in a
    scratch netns, and the RTM_NEWLINK requests fanlink sends, timed from send to ack."""
    lab = datapath.Lab(work, "k")
    ns = lab.ns("floor")
    datapath.ip("link", "add", FAN, "type", "bridge", ns=ns)
    datapath.ip("link", "add", PEER_FAN["vxlan"], "type", "vxlan", "external", "vnifilter", "nolearning",
                "dstport", "8472", ns=ns)
    datapath.ip("link", "set", PEER_FAN["vxlan"], "master", FAN, ns=ns)
    datapath.ip("addr", "add", BRIDGE_ADDR, "dev", FAN, ns=ns)
    out = {"vxlan up": [], "bridge up": [], "vxlan down": [], "bridge down": []}
    for _ in range(reps):
        out["vxlan up"].append(setlink_ns(ns, [PEER_FAN["vxlan"]], True))
        out["bridge up"].append(setlink_ns(ns, [FAN], True))
        out["vxlan down"].append(setlink_ns(ns, [PEER_FAN["vxlan"]], False))
        out["bridge down"].append(setlink_ns(ns, [FAN], False))
    out["vxlan up + bridge up"] = [a + b for a, b in zip(out["vxlan up"], out["bridge up"])]
    # The daemon's requests come after idle (a flap's are ~0.3 s apart), and after idle the
    # same request costs 2-3x its back-to-back time (README, "Found while measuring", 13).
    setlink_ns(ns, [PEER_FAN["vxlan"]], True)
    up, down = out["bridge up, 0.3 s after the last"], out["bridge down, 0.3 s after the last"] = [], []
    for _ in range(reps):
        time.sleep(0.3)
        up.append(setlink_ns(ns, [FAN], True))
        time.sleep(0.3)
        down.append(setlink_ns(ns, [FAN], False))
    return out


# ---------------------------------------------------------------- exec -> READY=1

def run_once(work, host, binary, rules, notify):
    notify.drain()
    d = hosts.start_fanlink(work, host, binary, rules, os.path.join(work.path, "start.log"),
                            notify=notify.path, level="info")
    t = notify.wait_ready(10) - d.exec_ns
    d.stop()
    return t


def start_times(work, host, binary, reps, script_dir):
    """exec -> READY=1: fanlink with 1 and 16 fans (cold: no devices yet; restart: devices
    exist), and the peer with its one hook set, on the same harness host."""
    notify = hosts.NotifySocket(os.path.join(work.path, "notify.sock"))
    out = {}
    rules16 = work.sub("rules16")
    hosts.write_rules(rules16, [(f"fan-b{i}", f"250.{16 * i}.0.0/12") for i in range(16)])
    rules1 = os.path.join(work.path, "rules")
    for label, rules in (("1 fan", rules1), ("16 fans", rules16)):
        for mode in ("cold", "restart"):
            if mode == "restart":  # leaves the fans built: fanlink exits leaving them as they are
                run_once(work, host, binary, rules, notify)
            vals = []
            for _ in range(reps):
                if mode == "cold":
                    hosts.sh(binary, "down", "--all", ns=host.ns)
                vals.append(run_once(work, host, binary, rules, notify))
            out[f"fanlink, {label}, {mode}"] = vals
    hosts.sh(binary, "down", "--all", ns=host.ns)
    vals = []
    for _ in range(reps):
        notify.drain()
        d = hosts.start_dispatcher(work, host, script_dir, os.path.join(work.path, "start-dispatcher.log"),
                                   notify=notify.path)
        vals.append(notify.wait_ready(30) - d.exec_ns)
        d.stop()
        hosts.remove_fan(host, **PEER_FAN)
    out["networkd-dispatcher, 1 fan"] = vals
    return out


# ---------------------------------------------------------------- sizes

def installed_kib(packages):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Installed-Size}\n"] + packages,
                       capture_output=True, text=True)
    return {p: int(s) for p, s in (line.split() for line in r.stdout.splitlines())}


PEER_DEPS = ["python3-dbus", "python3-gi", "gir1.2-glib-2.0", "libgirepository-1.0-1"]
PYTHON = ["python3", "python3.11", "python3-minimal", "python3.11-minimal", "libpython3.11-minimal",
          "libpython3.11-stdlib"]


# ---------------------------------------------------------------- the run

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--binary-note", default="")
    ap.add_argument("--flaps", type=int, default=50, help="flaps per path and daemon for latency")
    ap.add_argument("--storm", type=int, default=1000, help="flaps before the second footprint reading")
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle for the wakeup count")
    ap.add_argument("--iperf", type=float, default=10, help="seconds per iperf3 run")
    ap.add_argument("--iperf-reps", type=int, default=5, help="alternating runs per kind")
    ap.add_argument("--starts", type=int, default=10, help="starts per exec->READY case")
    ap.add_argument("--containers", type=int, default=300, help="containers (veths on the fan bridge) per host")
    ap.add_argument("--churn-rate", type=float, default=10, help="container starts + stops per second")
    ap.add_argument("--churn", type=float, default=60, help="seconds of churn")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--command", default="bench/run")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", help="write the markdown here instead of stdout")
    args = ap.parse_args()
    # The observer runs at real-time priority; SCHED_RESET_ON_FORK keeps the daemons,
    # ip and the harness it starts at normal priority.
    os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(50))

    work = hosts.Work(args.work)
    r = {"args": args}
    rules = work.sub("rules")
    hosts.write_rules(rules, [(FAN, OVERLAY)])
    scripts = work.sub("dispatcher.d")
    hosts.write_hooks(scripts, keep=True, **PEER_FAN)
    rebuild = work.sub("dispatcher-rebuild.d")
    hosts.write_hooks(rebuild, keep=False, **PEER_FAN)

    log("starting three harness hosts (real networkd each): A runs fanlink, B networkd-dispatcher "
        "with hooks that keep the fan's devices, C networkd-dispatcher with hooks that delete and rebuild it")
    host_a = hosts.Host(work, f"flb{os.getpid()}a")
    host_b = hosts.Host(work, f"flb{os.getpid()}b")
    host_c = hosts.Host(work, f"flb{os.getpid()}c")
    pump = Pump()
    fl = hosts.start_fanlink(work, host_a, args.binary, rules, os.path.join(work.path, "fanlink.log"))
    nd = hosts.start_dispatcher(work, host_b, scripts, os.path.join(work.path, "dispatcher.log"))
    nr = hosts.start_dispatcher(work, host_c, rebuild, os.path.join(work.path, "dispatcher-rebuild.log"))
    sides = {"fanlink": Side("fanlink", host_a, fl, pump, work), "dispatcher": Side("dispatcher", host_b, nd, pump, work),
             "rebuilding": Side("rebuilding", host_c, nr, pump, work)}
    for s in sides.values():
        wait_up(pump, s, 30)
    pump.quiet([s.net for s in sides.values()], 0.5, 10)
    r["start"] = {k: proc_status(s.daemon.pid) for k, s in sides.items()}
    log(f"footprint at start: {r['start']}")

    # Idle means networkd and the kernel are idle too: the new bridge's ports pass the
    # forward delay (15 s) and networkd configures the new links first.
    log("waiting for both hosts to settle (no link, address or networkd message for 5 s)")
    pump.quiet([s.net for s in sides.values()] + [s.bus for s in sides.values()], 2 if args.smoke else 5, 60)
    log(f"idle wakeups over {args.idle} s")
    r["idle"] = idle(pump, sides, args.idle)

    # The footprint after a few flaps of each kind (warm, and cold: fanlink creates its fan
    # again, BPF load and nftables included): what 1000 more must not grow.
    log("10 flaps on both hosts, then 10 warm and 10 cold trials each")
    storm(pump, sides, 10, args.binary)
    latency(pump, sides, 10, args.binary)
    pump.quiet([s.net for s in sides.values()], 0.5, 10)
    r["after10"] = {k: proc_status(s.daemon.pid) for k, s in sides.items()}
    log(f"footprint after 30 flaps: {r['after10']}")

    log(f"reaction latency: {args.flaps} flaps per path and daemon, alternating")
    r["latency"] = latency(pump, sides, args.flaps, args.binary)

    log("kernel floor: fanlink's netlink requests alone")
    r["floor"] = kernel_floor(work, args.flaps)

    log(f"flap storm: {args.storm} flaps on both hosts")
    r["storm"] = storm(pump, sides, args.storm, args.binary)
    pump.quiet([s.net for s in sides.values()], 0.5, 10)
    r["after"] = {k: proc_status(s.daemon.pid) for k, s in sides.items()}
    log(f"footprint after: {r['after']}")
    nr.stop()

    log(f"container churn: {args.containers} containers per host, {args.churn_rate:g} starts + stops/s "
        f"for {args.churn:g} s, on A and B at once")
    r["churn"] = churn.churn(pump, {k: sides[k] for k in ("fanlink", "dispatcher")}, work, args.binary, FAN,
                             args.containers, args.churn_rate, args.churn, proc_status)
    log(f"churn: {r['churn']}")
    fl.stop()
    nd.stop()

    log("exec -> READY=1")
    r["ready"] = start_times(work, host_a, args.binary, args.starts, scripts)

    log("state per peer")
    r["peers"] = datapath.peer_state(work, args.binary, (2, 8, 32) if not args.smoke else (2, 4))
    log("datapath")
    r["datapath"] = datapath.datapath(work, args.binary, args.iperf, args.iperf_reps)

    r["size"] = os.path.getsize(args.binary)
    r["peer_size"] = installed_kib(["networkd-dispatcher"] + PEER_DEPS + PYTHON)
    text = report(r)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out}")
    else:
        print(text)
    return r


def smoke_checks(r):
    """--smoke asserts no timing: that every section produced figures, and what must hold
    whatever the machine's load (counts, the fan still right after the churn)."""
    lat, c = r["latency"], r["churn"]
    checks = [(f"latency {p}: {k} has samples", bool(v)) for p in lat for k, v in lat[p]["samples"].items()]
    checks.append(("latency warm: fanlink's own event -> last ack from its counters", bool(lat["warm"]["acks"])))
    checks += [(f"exec->READY: {k} has samples", bool(v)) for k, v in r["ready"].items()]
    checks += [(f"datapath {k}: {m} > 0", v > 0) for k, d in r["datapath"].items() for m, v in d.items()]
    checks += [(f"footprint {w} {k}: VmRSS", bool(v.get("VmRSS"))) for w in ("start", "after10", "after")
               for k, v in r[w].items()]
    checks.append(("storm: fanlink's reconciles counted", r["storm"]["reconciles"] > 0))
    checks.append(("churn: both daemons used CPU", all(sum(v) > 0 for v in c["cpu_ns"].values())))
    checks.append(("churn: no reconcile caused by it", c["counters"]["reconciles"] == 0))
    checks.append(("churn: no netlink request caused by it", c["counters"]["netlink_requests"] == 0))
    checks.append(("churn: fanlink's fan up, no drift", all(a == "up" and not d for a, d in c["drift"].values())))
    checks.append(("churn: a container reaches the other fan host, before and after",
                   c["reaches_before"] and c["reaches_after"]))
    return checks


def smoke_summary(checks, crashed=None):
    """The one line tests/run counts; non-zero exit if any check failed."""
    failed = [name for name, ok in checks if not ok] + ([f"the run stopped: {crashed}"] if crashed else [])
    for name in failed:
        log(f"smoke FAILED: {name}")
    print(f"bench smoke: {len(checks) - len(failed) + (1 if crashed else 0)} passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------- the table

def us(ns):
    return f"{ns / 1e3:.0f}" if abs(ns) >= 10e3 else f"{ns / 1e3:.1f}"


def thread_list(per):
    return ", ".join(f"{t} {n}" for t, n in sorted(per.items(), key=lambda x: -x[1])) or "none"


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    load = open("/proc/loadavg").read().split()[:3]
    return (f"{os.cpu_count()} CPUs ({model}), kernel {os.uname().release}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at the end {' '.join(load)}")


def total_flaps(a):
    """Flaps fanlink's host has seen at the second footprint reading."""
    return 30 + 2 * a.flaps + a.storm


def verdict(ok):
    return "met" if ok else "**missed**"


def targets(r):
    """Issue 14's and issue 23's tables: each figure of this run beside its target, the peers'
    where they have one (the headline peer keeps the fan's devices as fanlink does)."""
    a, lat, sto, idl = r["args"], r["latency"], r["storm"], r["idle"]
    med = lambda path, k: statistics.median(lat[path]["samples"][k]) / 1e3  # noqa: E731  (µs)
    warm_f = med("warm", "fanlink")
    ratio = lambda v: v / warm_f if warm_f > 0 else float("inf")  # noqa: E731
    acks = lat["warm"]["acks"]
    ack = statistics.median(acks) if acks else float("nan")
    cold = {k: pct(lat["cold"]["samples"][k], 50) / 1e3 for k in KINDS}
    per_event = lambda k: sum(sto[k]) * 1000 / CLK_TCK / a.storm / 2 * 1000  # noqa: E731  (µs)
    ready = {k: statistics.median(v) / 1e6 for k, v in r["ready"].items()}
    rss10, rss = r["after10"]["fanlink"]["VmRSS"], r["after"]["fanlink"]["VmRSS"]
    dp = r["datapath"]
    tcp = dp["fan"]["tcp"] / dp["plain"]["tcp"]
    rows = [
        ("warm: routable -> bridge UP + address, p50", f"{warm_f:.0f} µs",
         *(f"{med('warm', k):.0f} µs (x{ratio(med('warm', k)):.0f})" for k in PEERS),
         f"<= {WARM_TARGET_US} µs and >= {WARM_RATIO_TARGET}x the peer",
         verdict(warm_f <= WARM_TARGET_US and ratio(med("warm", "dispatcher")) >= WARM_RATIO_TARGET)),
        ("fanlink's own \"event to last ack\", warm up, p50", f"{ack:.0f} µs", "-", "-", f"<= {ACK_TARGET_US} µs",
         verdict(ack <= ACK_TARGET_US)),
        ("reconciles per flap (storm)", f"{sto['reconciles'] / a.storm:.1f}", "-", "-", f"{RECONCILES_TARGET}",
         verdict(round(sto["reconciles"] / a.storm, 1) <= RECONCILES_TARGET)),
        ("netlink requests per flap (storm)", f"{sto['requests'] / a.storm:.1f}", "-", "-", f"{REQUESTS_TARGET}",
         verdict(round(sto["requests"] / a.storm, 1) <= REQUESTS_TARGET)),
        ("CPU per event (storm, all)", f"{per_event('fanlink'):.0f} µs",
         *(f"{per_event(k):.0f} µs (x{per_event(k) / max(per_event('fanlink'), 1e-9):.0f})" for k in PEERS),
         f"<= {CPU_EVENT_TARGET_US} µs", verdict(per_event("fanlink") <= CPU_EVENT_TARGET_US)),
        ("cold: first creation incl. BPF load and NAT, p50", f"{cold['fanlink'] / 1e3:.2f} ms",
         *(f"{cold[k] / 1e3:.0f} ms" for k in PEERS), f"<= {COLD_TARGET_MS:g} ms",
         verdict(cold["fanlink"] / 1e3 <= COLD_TARGET_MS)),
    ]
    for label, limit in READY_TARGET_MS.items():
        f = ready.get(f"fanlink, {label}, cold")
        rows.append((f"exec -> READY=1, {label} cold, p50", f"{f:.1f} ms",
                     f"{ready['networkd-dispatcher, 1 fan']:.0f} ms (1 fan)" if label == "1 fan" else "-", "-",
                     f"<= {limit} ms", verdict(f <= limit)))
    rows += [
        (f"idle RSS after 30 / {total_flaps(a)} flaps (static build)", f"{rss10} / {rss} KiB",
         *(f"{r['after10'][k]['VmRSS']} / {r['after'][k]['VmRSS']} KiB" for k in PEERS),
         f"<= {RSS_TARGET_KIB} KiB, flat", verdict(rss <= RSS_TARGET_KIB and rss == rss10)),
        (f"threads / context switches per idle {a.idle:g} s", f"{r['start']['fanlink']['threads']} / {idl['fanlink'][0]}",
         *(f"{r['start'][k]['threads']} / {idl[k][0]}" for k in PEERS), f"as few as needed / {IDLE_CTXT_TARGET}",
         verdict(idl["fanlink"][0] <= IDLE_CTXT_TARGET)),
        ("datapath TCP, fan / plain vxlan, same run", f"{tcp:.3f}", "-", "-", f">= {DATAPATH_TARGET:g}",
         verdict(tcp >= DATAPATH_TARGET)),
    ]
    head = f"| figure | fanlink | {LABEL['dispatcher']} (keeps the fan) | {LABEL['rebuilding']} | target | |"
    L = ["## Targets (issue 14)", "", head, "|---|---|---|---|---|---|"]
    L += [f"| {' | '.join(row)} |" for row in rows]
    L += ["", "The peers: networkd-dispatcher with hooks whose down does what fanlink does (the bridge "
          "admin-down, its devices kept; a warm up is `ip link set fan-250 up`): the headline; and with "
          "hooks that delete the fan on no-carrier and build it again on routable. Each figure is from the "
          "sections below; a miss is explained in `bench/README.md` (Found while measuring).", ""]
    L += churn_targets(r)
    return L


def churn_per_event(c, k):
    """µs of CPU per churn event, own + children."""
    return sum(c["cpu_ns"][k]) / c["events"] / 1e3


def churn_targets(r):
    c = r["churn"]
    f, p = churn_per_event(c, "fanlink"), churn_per_event(c, "dispatcher")
    ratio = p / f if f > 0 else float("inf")
    cnt = c["counters"]
    rss = lambda k: (c["rss_before"][k]["VmRSS"], c["rss_after"][k]["VmRSS"])  # noqa: E731
    right = all(a == "up" and not d for a, d in c["drift"].values()) and c["reaches_before"] and c["reaches_after"]
    rows = [
        ("netlink requests / reconciles caused by the churn", f"{cnt['netlink_requests']} / {cnt['reconciles']}",
         "-", "0 / 0", verdict(cnt["netlink_requests"] == 0 and cnt["reconciles"] == 0)),
        ("CPU per churn event (a container start or stop)", f"{f:.0f} µs", f"{p:.0f} µs (x{ratio:.0f})",
         f">= {CHURN_RATIO_TARGET}x below the peer", verdict(ratio >= CHURN_RATIO_TARGET)),
        ("RSS before / after the churn", "{} / {} KiB".format(*rss("fanlink")), "{} / {} KiB".format(*rss("dispatcher")),
         "flat", verdict(rss("fanlink")[0] == rss("fanlink")[1])),
        ("the fan after the churn: status drift; a container reaches the other fan host",
         ", ".join(f"{n}: {a}, drift {'none' if not d else len(d)}" for n, (a, d) in c["drift"].items())
         + f"; reaches {'yes' if c['reaches_after'] else 'no'}", "-", "drift none, reaches", verdict(right)),
    ]
    L = [f"## Targets (issue 23): a busy container host", "",
         f"| figure | fanlink | {LABEL['dispatcher']} | target | |", "|---|---|---|---|---|"]
    L += [f"| {' | '.join(row)} |" for row in rows]
    return L + ["", "From the section \"Container churn\" below.", ""]


def churn_section(r):
    c, a = r["churn"], r["args"]
    cnt = c["counters"]
    rows = lambda label, f: f"| {label} | {f('fanlink')} | {f('dispatcher')} |"  # noqa: E731
    L = ["## Container churn: a busy container host", "",
         f"{c['containers']} containers per host (a veth each on the fan bridge, its peer in a netns), then "
         f"{c['events']} container starts and stops alternating ({a.churn_rate:g} per second, "
         f"{c['churn_s']:.1f} s) on fanlink's host and the headline peer's at once: each start makes a veth "
         "pair, puts it on the bridge and sets it up; each stop deletes the oldest. networkd signals every "
         "state each veth passes through. CPU from the first event until both daemons were idle again "
         "(1 s without CPU).", "",
         f"| | fanlink | {LABEL['dispatcher']} |", "|---|---|---|",
         rows("CPU per churn event, own (µs; schedstat)", lambda k: f"{c['cpu_ns'][k][0] / c['events'] / 1e3:.0f}"),
         rows("CPU per churn event, children (µs; clock ticks)",
              lambda k: f"{c['cpu_ns'][k][1] / c['events'] / 1e3:.0f}"),
         rows("CPU per churn event, all (µs)", lambda k: f"{churn_per_event(c, k):.0f}"),
         rows("idle again after the last event (s)", lambda k: f"{c['drain_s'][k]:.1f}"),
         rows("VmRSS before / after (KiB)",
              lambda k: f"{c['rss_before'][k]['VmRSS']} / {c['rss_after'][k]['VmRSS']}"),
         rows("of it anonymous before / after (KiB)",
              lambda k: f"{c['rss_before'][k].get('RssAnon', '?')} / {c['rss_after'][k].get('RssAnon', '?')}"),
         rows("reconciles / netlink requests / bus calls during the churn",
              lambda k: f"{cnt['reconciles']} / {cnt['netlink_requests']} / {cnt['bus_calls']}" if k == "fanlink"
              else "-"),
         rows("networkd views kept before / after", lambda k: "{} / {}".format(*c["links_kept"]) if k == "fanlink"
              else "-"),
         "",
         f"- CPU per churn event, {LABEL['dispatcher']} / fanlink: **x{churn_per_event(c, 'dispatcher') / max(churn_per_event(c, 'fanlink'), 1e-9):.0f}**",
         f"- fanlink's fan after the churn: " + ", ".join(
             f"{n} {act}, drift {'none' if not d else '; '.join(d)}" for n, (act, d) in c["drift"].items())
         + f"; a container on it reaches the other fan host across the vxlan: before {'yes' if c['reaches_before'] else '**no**'}, "
         f"after {'yes' if c['reaches_after'] else '**no**'}",
         f"- populating {c['containers']} containers took {c['populate_s']:.1f} s, and the daemons were idle "
         + ", ".join(f"{v:.1f} s" for v in c["populate_settle"].values()) + " after it (fanlink, the peer)", ""]
    return L


def report(r):
    a = r["args"]
    L = ["# fanlink vs networkd-dispatcher: benchmarks", "",
         f"Machine: {machine()}.  ",
         f"Command: `{a.command}` (flaps per path {a.flaps}, storm {a.storm}, idle {a.idle:g} s, "
         f"iperf3 {a.iperf:g} s x {a.iperf_reps}, starts {a.starts}, containers {a.containers}, churn "
         f"{a.churn_rate:g}/s for {a.churn:g} s). fanlink at the unit's log level (info).  ",
         "Regenerate with `sudo bench/run --write`; `bench/run --help` for the knobs; the method is in "
         "`bench/README.md`.", ""]
    if a.smoke:
        L += ["**Smoke run: durations too short for the figures to mean anything.**", ""]
    L += targets(r)

    L += ["## Reaction: uplink routable -> fan bridge UP with its address", "",
          "t0 = networkd's PropertiesChanged(OperationalState=routable) as a `chrt -f 50 busctl monitor` "
          "received it (kernel receive stamp); t1 = the rtnetlink message that completed \"bridge UP and "
          "addressed\", stamped on receipt by a SCHED_FIFO listener in the host netns. Samples alternate "
          "fanlink, dispatcher, rebuilding, fanlink, ... on three identical harness hosts. Times in µs.", "",
          "| path | daemon | n | min | p50 | p90 | p99 | max | negative | carrier-up cmd -> fan up, p50 |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for path, d in r["latency"].items():
        for kind, s in d["samples"].items():
            m = summary(s)
            neg = sum(1 for v in s if v < 0)
            L.append(f"| {path} | {LABEL[kind]} | {len(s)} | " + " | ".join(us(m[k]) for k in m) +
                     f" | {neg} | {us(statistics.median(d['cmd'][kind]))} |")
        acks = d["acks"]
        if acks:
            m = summary([v * 1000 for v in acks])
            L.append(f"| {path} | fanlink's own \"event to last ack\" | {len(acks)} | " +
                     " | ".join(us(m[k]) for k in m) + " | - | - |")
    L.append("")
    for path, d in r["latency"].items():
        f = statistics.median(d["samples"]["fanlink"])
        for k in PEERS:
            p = statistics.median(d["samples"][k])
            L.append(f"- {path}: ratio of medians {LABEL[k]} / fanlink = **{p / f:.0f}x**" if f > 0 else
                     f"- {path}: fanlink median <= 0 (below the monitor's resolution; see its own ack figure)")
    cold = pct(r["latency"]["cold"]["samples"]["fanlink"], 50) / 1e6  # the table's p50
    L.append(f"- cold, fanlink p50: **{cold:.2f} ms** (target <= {COLD_TARGET_MS:g} ms: "
             f"{'met' if cold <= COLD_TARGET_MS else 'missed'})")
    odd = r["latency"]["warm"]["odd"]
    L += ["", "warm = the devices exist: fanlink sends one netlink message (the bridge up), the headline peer "
          "runs one `ip` (its down hook set the bridge admin-down and kept the devices); the rebuilding "
          "peer's hooks delete the fan on no-carrier, so both of its paths create it (5 `ip` + 1 `nft` "
          "process). cold = the fan deleted while the uplink was down (`fanlink down --all`; for the headline "
          "peer, what the rebuilding hook does): creation incl. BPF load (fanlink), the nftables table (one "
          "netlink transaction for fanlink, an `nft` process for the peers) and the firewall check (netlink "
          "dumps; no process). \"negative\" counts samples where the bridge came up before the monitor's copy "
          "of the signal arrived (dbus-daemon sends the monitor's copy last). fanlink's own \"event to last "
          "ack\" is its counters' last reconcile after each warm trial (the up's; a trial with other "
          f"reconciles than the down's and the up's is left out: {odd} here); a cold trial has more "
          "reconciles, so no such figure.", ""]

    L += ["### The kernel's share", "",
          "The requests of a warm up/down, alone, on the same devices in a scratch netns (RTM_NEWLINK "
          "send -> ack, µs): the physical limit of the warm path. fanlink sends only the bridge's; the "
          "vxlan rows are what taking the vxlan down and up too would cost. The first rows are "
          "back to back; the last two each 0.3 s after the previous request, as the daemon's are.", "",
          "| request | n | min | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for k, v in r["floor"].items():
        m = summary(v)
        L.append(f"| {k} | {len(v)} | " + " | ".join(us(m[x]) for x in m) + " |")
    L.append("")

    st, af = r["start"], r["after"]
    peer = r["peer_size"]
    deps = sum(peer.get(p, 0) for p in ["networkd-dispatcher"] + PEER_DEPS)
    total = deps + sum(peer.get(p, 0) for p in PYTHON)
    row = lambda label, f: f"| {label} | " + " | ".join(f(k) for k in KINDS) + " |"  # noqa: E731
    L += ["## Footprint", "",
          "| | " + " | ".join(LABEL[k] for k in KINDS) + " |", "|---|---|---|---|",
          row("VmRSS at start (KiB)", lambda k: str(st[k]["VmRSS"])),
          row("VmHWM at start (KiB)", lambda k: str(st[k]["VmHWM"])),
          row("VmRSS after 30 flaps: 20 warm, 10 cold (KiB)", lambda k: str(r["after10"][k]["VmRSS"])),
          row(f"VmRSS after {total_flaps(a)} flaps (KiB)", lambda k: str(af[k]["VmRSS"])),
          row("VmHWM after (KiB)", lambda k: str(af[k]["VmHWM"])),
          row("of VmRSS: anonymous (heap, stacks) at start / after 30 / after all (KiB)",
              lambda k: " / ".join(str(r[w][k].get("RssAnon", "?")) for w in ("start", "after10", "after"))),
          row("of VmRSS: file pages (the binary's text and data) at start / after 30 / after all (KiB)",
              lambda k: " / ".join(str(r[w][k].get("RssFile", "?")) for w in ("start", "after10", "after"))),
          row("fds at start / after", lambda k: f"{st[k]['fds']} / {af[k]['fds']}"),
          row("threads", lambda k: str(st[k]["threads"])),
          f"| on disk | {r['size'] / 1024:.0f} KiB binary{a.binary_note} | "
          f"{peer.get('networkd-dispatcher', 0)} KiB package; {deps} KiB with python3-dbus, python3-gi, "
          f"gir1.2-glib-2.0, libgirepository; {total} KiB with the Python 3.11 interpreter and stdlib "
          f"(dpkg Installed-Size) | the same |", ""]

    idl, sto = r["idle"], r["storm"]
    ms = lambda ticks: ticks * 1000 / CLK_TCK * 100 / a.storm  # noqa: E731  (ms per 100 flaps)
    row = lambda label, f: f"| {label} | " + " | ".join(f(k) for k in KINDS) + " |"  # noqa: E731
    L += ["## Quiet and CPU", "",
          "| | " + " | ".join(LABEL[k] for k in KINDS) + " |", "|---|---|---|---|",
          row(f"context switches while idle {a.idle:g} s (all threads)", lambda k: str(idl[k][0])),
          row("... by thread", lambda k: thread_list(idl[k][1])),
          row("CPU per 100 flaps, own (utime+stime)", lambda k: f"{ms(sto[k][0]):.0f} ms"),
          row("CPU per 100 flaps, children (cutime+cstime)", lambda k: f"{ms(sto[k][1]):.0f} ms"),
          row("CPU per event, all (a flap is 2 events: down, up)", lambda k: f"{ms(sum(sto[k])) * 10 / 2:.0f} µs"),
          "", f"CPU is read in clock ticks ({1000 // CLK_TCK} ms) over {a.storm} flaps of the three hosts at "
          f"once. fanlink ran {sto['reconciles']} reconciles for them ({sto['reconciles'] / a.storm:.1f} per flap) "
          f"and sent {sto['requests']} netlink requests ({sto['requests'] / a.storm:.1f} per flap), by its own "
          "counters (`status --json`), at the unit's log level (info).", ""]
    L += churn_section(r)
    L += ["## Start: exec -> READY=1", "", "| case | n | min | p50 | max |", "|---|---|---|---|---|"]
    for k, v in r["ready"].items():
        L.append(f"| {k} | {len(v)} | {min(v) / 1e6:.1f} ms | {statistics.median(v) / 1e6:.1f} ms | "
                 f"{max(v) / 1e6:.1f} ms |")
    L += ["", "cold: no fan devices at exec (creation incl. BPF load and the nftables table before READY); restart: "
          "the fans are already built.", ""]

    dp = r["datapath"]
    L += ["## Datapath: container to container across two hosts", "",
          "| | fanlink fan | plain vxlan (static fdb) | fan / plain | plain vxlan + masquerade table | "
          "fan / (plain + nat) | fan, shared datapath | shared / plain |",
          "|---|---|---|---|---|---|---|---|"]
    for m, unit, scale in (("tcp", "Gbit/s", 1e9), ("udp", "Gbit/s", 1e9), ("rtt", "ms", 1)):
        f, p, n, g = dp["fan"][m], dp["plain"][m], dp["plain+nat"][m], dp["fan shared"][m]
        label = {"tcp": "iperf3 TCP", "udp": "iperf3 UDP, 1400-byte datagrams, unlimited rate (received)",
                 "rtt": "ping RTT avg"}[m]
        L.append(f"| {label} | {f / scale:.3f} {unit} | {p / scale:.3f} {unit} | {f / p:.3f} | "
                 f"{n / scale:.3f} {unit} | {f / n:.3f} | {g / scale:.3f} {unit} | {g / p:.3f} |")
    tcp = dp["fan"]["tcp"] / dp["plain"]["tcp"]
    L += ["", f"- datapath TCP, fan / plain vxlan: **{tcp:.3f}** (target >= {DATAPATH_TARGET:g}: "
          f"{'met' if tcp >= DATAPATH_TARGET else 'missed'})"]
    L += ["", "MTU 1450 everywhere; medians of the runs; the kinds alternate. fanlink's hosts carry its "
          "table: masquerade for what leaves the overlay (its nat hook switches conntrack on in the "
          "namespace) and notrack for overlay-to-overlay traffic, which so skips conntrack; the third "
          "column is the plain vxlan with a masquerade table and no notrack, whose every packet goes "
          "through conntrack.", ""]

    L += ["## State per peer on one host", "",
          "Host h0 and N peers on one switch, each `fanlink up`; h0 pings each peer's bridge address once. "
          "Configured = permanent/static entries an overlay installs per peer; learned = aging caches that "
          "traffic creates on any network (flannel's hosts get them too, on top of its 3 configured).", "",
          "| peers joined | fdb configured / learned | IPv4 neigh configured / learned (of which overlay) | "
          "IPv4 routes, all tables | flannel vxlan configures |",
          "|---|---|---|---|---|"]
    for n, c in r["peers"].items():
        L.append(f"| {n} | {c['fdb_fixed']} / {c['fdb'] - c['fdb_fixed']} | {c['neigh_fixed']} / "
                 f"{c['neigh'] - c['neigh_fixed']} ({c['neigh_overlay']}) | {c['route']} | "
                 f"{3 * n} (a route, a neighbour, an fdb entry per peer; computed) |")
    ns = sorted(r["peers"])
    lo, hi = r["peers"][ns[0]], r["peers"][ns[-1]]
    d = lambda k: (hi[k] - lo[k]) / (ns[-1] - ns[0])  # noqa: E731
    L += ["", f"Per peer joined ({ns[0]} -> {ns[-1]}): configured fdb {d('fdb_fixed'):.2f}, configured "
          f"neighbours {d('neigh_fixed'):.2f}, routes {d('route'):.2f}; learned fdb {d('fdb') - d('fdb_fixed'):.2f}, "
          f"learned neighbours {d('neigh') - d('neigh_fixed'):.2f} (overlay {d('neigh_overlay'):.2f}).", ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--cleanup":
        hosts.cleanup(sys.argv[2])
    elif "--smoke" in sys.argv:
        try:
            result = main()
        except Exception as e:  # the line is printed whatever stopped the run
            smoke_summary([], crashed=f"{type(e).__name__}: {e}")
            raise
        sys.exit(smoke_summary(smoke_checks(result)))
    else:
        main()
