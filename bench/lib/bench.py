#!/usr/bin/env python3
"""fanlink's benchmarks side by side with networkd-dispatcher (the peer it replaces).

Called by bench/run (which builds the binary and installs the packages); see its header for
the flags. Sections, in the order run:
  footprint at start, idle wakeups, reaction latency (warm and cold, A B C A B C), flap storm
  (CPU per event, footprint after), container churn (A and B), exec -> READY=1, state per
  peer, datapath. A runs fanlink at the unit's log level, B networkd-dispatcher with hooks
  that keep the fan's devices (the headline peer), C with hooks that delete and rebuild it.
Each section returns rows for the table that `report()` prints; `--smoke` shortens every
duration and checks only that each measurement produced numbers and what holds whatever the
load (the churn's counts, the fan right after it): no timing is asserted.
Everything made is recorded in WORK/made and removed at the end, also on failure.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import churn  # noqa: E402
from report import (  # noqa: E402
    PEER_DEPS, PYTHON, report)
import datapath  # noqa: E402
import hosts  # noqa: E402
from netwatch import BusWatch, NetlinkWatch, Pump, setlink_ns  # noqa: E402

FAN = "fan-250"
OVERLAY = "250.0.0.0/8"
BRIDGE_ADDR = "250.1.1.1/8"  # the harness uplink is 10.99.1.1 on underlay 10.99.0.0/16
PEER_FAN = dict(bridge=FAN, vxlan="fan-250-vx", address=BRIDGE_ADDR, table="fan250", overlay=OVERLAY)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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
    """n flaps on every host at once; CPU (ticks) used by each daemon over them."""
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
    log("waiting for the hosts to settle (no link, address or networkd message for 5 s)")
    pump.quiet([s.net for s in sides.values()] + [s.bus for s in sides.values()], 2 if args.smoke else 5, 60)
    log(f"idle wakeups over {args.idle} s")
    r["idle"] = idle(pump, sides, args.idle)

    # The footprint after a few flaps of each kind (warm, and cold: fanlink creates its fan
    # again, BPF load and nftables included): what 1000 more must not grow.
    log("10 flaps on every host, then 10 warm and 10 cold trials each")
    storm(pump, sides, 10, args.binary)
    latency(pump, sides, 10, args.binary)
    pump.quiet([s.net for s in sides.values()], 0.5, 10)
    r["after10"] = {k: proc_status(s.daemon.pid) for k, s in sides.items()}
    log(f"footprint after 30 flaps: {r['after10']}")

    log(f"reaction latency: {args.flaps} flaps per path and daemon, alternating")
    r["latency"] = latency(pump, sides, args.flaps, args.binary)

    log("kernel floor: fanlink's netlink requests alone")
    r["floor"] = kernel_floor(work, args.flaps)

    log(f"flap storm: {args.storm} flaps on every host")
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
    line = f"bench smoke: {len(checks) - len(failed) + (1 if crashed else 0)} passed, {len(failed)} failed"
    print(line, flush=True)
    if os.environ.get("BENCH_SMOKE_MARK"):  # bench/run prints a line of its own without it
        with open(os.environ["BENCH_SMOKE_MARK"], "w") as f:
            f.write(line + "\n")
    return 1 if failed else 0


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
