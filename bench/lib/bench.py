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
        # fanlink keeps its devices (links admin down); the peer's hook deletes them.
        return self.net.gone if self.kind == "dispatcher" else not self.net.up


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


ACK = re.compile(r"event to last ack: (\d+) us")
REQUESTS = re.compile(r"event to last ack: \d+ us, (\d+) netlink request")


def acks_of_up(log_text):
    """fanlink's own figure for each reconcile that brought fan-250 up (its ops are logged
    at info just before the reconcile's 'event to last ack' line)."""
    out, ops = [], []
    for line in log_text.splitlines():
        m = ACK.search(line)
        if m:
            if any(o.endswith(f"set {FAN} up") for o in ops):
                out.append(int(m.group(1)))
            ops = []
        elif f"{FAN}:" in line:
            ops.append(line)
    return out


def latency(pump, sides, n, binary):
    res = {}
    fl = sides["fanlink"]
    for path, cold in (("warm", False), ("cold", True)):
        samples = {"fanlink": [], "dispatcher": []}
        cmd = {"fanlink": [], "dispatcher": []}
        log_from = os.path.getsize(fl.daemon.log)
        for i in range(n):
            for kind in ("fanlink", "dispatcher"):  # A B A B: neither side gets a warmer machine
                r, c = trial(pump, sides[kind], cold, binary)
                samples[kind].append(r)
                cmd[kind].append(c)
        with open(fl.daemon.log) as f:
            f.seek(log_from)
            acks = acks_of_up(f.read())
        res[path] = dict(samples=samples, cmd=cmd, acks=acks)
        log(f"latency {path}: fanlink p50 {statistics.median(samples['fanlink']) / 1e3:.0f} us, "
            f"dispatcher p50 {statistics.median(samples['dispatcher']) / 1e3:.0f} us")
    return res


def storm(pump, sides, n, binary):
    """n flaps on both hosts at once; CPU (ticks) used by each daemon over them."""
    before = {k: cpu_ticks(s.daemon.pid) for k, s in sides.items()}
    log_from = os.path.getsize(sides["fanlink"].daemon.log)
    t = time.monotonic()
    for i in range(n):
        flap_down(pump, list(sides.values()), False, binary)
        for s in sides.values():
            s.host.carrier("up")
        for s in sides.values():
            wait_up(pump, s)
    pump.quiet([s.net for s in sides.values()], 0.05, 2)
    log(f"{n} flaps in {time.monotonic() - t:.1f} s")
    with open(sides["fanlink"].daemon.log) as f:
        f.seek(log_from)
        text = f.read()
    reconciles = len(ACK.findall(text))
    requests = sum(int(x) for x in REQUESTS.findall(text))
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
        hosts.sh("sh", os.path.join(script_dir, "off.d", "50-fan"), ns=host.ns, check=False,
                 env=dict(os.environ, IFACE="uplink0"))
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
    hosts.write_hooks(scripts, **PEER_FAN)

    log("starting two harness hosts (real networkd each): A runs fanlink, B networkd-dispatcher")
    host_a = hosts.Host(work, f"flb{os.getpid()}a")
    host_b = hosts.Host(work, f"flb{os.getpid()}b")
    pump = Pump()
    fl = hosts.start_fanlink(work, host_a, args.binary, rules, os.path.join(work.path, "fanlink.log"))
    nd = hosts.start_dispatcher(work, host_b, scripts, os.path.join(work.path, "dispatcher.log"))
    sides = {"fanlink": Side("fanlink", host_a, fl, pump, work), "dispatcher": Side("dispatcher", host_b, nd, pump, work)}
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
    if args.smoke:
        smoke_check(r)


def smoke_check(r):
    """Only that every section produced numbers: --smoke asserts no timing."""
    lat = r["latency"]
    problems = [f"{p}: no {k} samples" for p in lat for k, v in lat[p]["samples"].items() if not v]
    problems += [f"{p}: no 'event to last ack' from fanlink's log" for p in lat if not lat[p]["acks"]]
    problems += [f"exec->READY: no samples for {k}" for k, v in r["ready"].items() if not v]
    problems += [f"datapath {k}: zero {m}" for k, d in r["datapath"].items() for m, v in d.items() if not v > 0]
    for when in ("start", "after10", "after"):
        problems += [f"footprint {when} {k}: {v}" for k, v in r[when].items() if not v.get("VmRSS")]
    if problems:
        raise SystemExit("bench --smoke: " + "; ".join(problems))
    log("smoke: every measurement produced figures")


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
    """Issue 14's table: each figure of this run beside its target, the peer's where it has one."""
    a, lat, sto, idl = r["args"], r["latency"], r["storm"], r["idle"]
    warm_f = statistics.median(lat["warm"]["samples"]["fanlink"]) / 1e3
    warm_p = statistics.median(lat["warm"]["samples"]["dispatcher"]) / 1e3
    ratio = warm_p / warm_f if warm_f > 0 else float("inf")
    acks = lat["warm"]["acks"]
    ack = statistics.median(acks) if acks else float("nan")
    cold_f = pct(lat["cold"]["samples"]["fanlink"], 50) / 1e3
    cold_p = pct(lat["cold"]["samples"]["dispatcher"], 50) / 1e3
    per_event = lambda k: sum(sto[k]) * 1000 / CLK_TCK / a.storm / 2 * 1000  # noqa: E731  (µs)
    ready = {k: statistics.median(v) / 1e6 for k, v in r["ready"].items()}
    rss10, rss = r["after10"]["fanlink"]["VmRSS"], r["after"]["fanlink"]["VmRSS"]
    dp = r["datapath"]
    tcp = dp["fan"]["tcp"] / dp["plain"]["tcp"]
    rows = [
        ("warm: routable -> bridge UP + address, p50", f"{warm_f:.0f} µs", f"{warm_p:.0f} µs (x{ratio:.0f})",
         f"<= {WARM_TARGET_US} µs and >= {WARM_RATIO_TARGET}x the peer",
         verdict(warm_f <= WARM_TARGET_US and ratio >= WARM_RATIO_TARGET)),
        ("fanlink's own \"event to last ack\", warm up, p50", f"{ack:.0f} µs", "-", f"<= {ACK_TARGET_US} µs",
         verdict(ack <= ACK_TARGET_US)),
        ("reconciles per flap (storm)", f"{sto['reconciles'] / a.storm:.1f}", "-", f"{RECONCILES_TARGET}",
         verdict(round(sto["reconciles"] / a.storm, 1) <= RECONCILES_TARGET)),
        ("netlink requests per flap (storm)", f"{sto['requests'] / a.storm:.1f}", "-", f"{REQUESTS_TARGET}",
         verdict(round(sto["requests"] / a.storm, 1) <= REQUESTS_TARGET)),
        ("CPU per event (storm, all)", f"{per_event('fanlink'):.0f} µs", f"{per_event('dispatcher'):.0f} µs",
         f"<= {CPU_EVENT_TARGET_US} µs", verdict(per_event("fanlink") <= CPU_EVENT_TARGET_US)),
        ("cold: first creation incl. BPF load and NAT, p50", f"{cold_f / 1e3:.2f} ms", f"{cold_p / 1e3:.0f} ms",
         f"<= {COLD_TARGET_MS:g} ms", verdict(cold_f / 1e3 <= COLD_TARGET_MS)),
    ]
    for label, limit in READY_TARGET_MS.items():
        f = ready.get(f"fanlink, {label}, cold")
        rows.append((f"exec -> READY=1, {label} cold, p50", f"{f:.1f} ms",
                     f"{ready['networkd-dispatcher, 1 fan']:.0f} ms (1 fan)" if label == "1 fan" else "-",
                     f"<= {limit} ms", verdict(f <= limit)))
    rows += [
        (f"idle RSS after 30 / {total_flaps(a)} flaps (static build)", f"{rss10} / {rss} KiB",
         f"{r['after10']['dispatcher']['VmRSS']} / {r['after']['dispatcher']['VmRSS']} KiB",
         f"<= {RSS_TARGET_KIB} KiB, flat", verdict(rss <= RSS_TARGET_KIB and rss == rss10)),
        (f"threads / context switches per idle {a.idle:g} s", f"{r['start']['fanlink']['threads']} / {idl['fanlink'][0]}",
         f"{r['start']['dispatcher']['threads']} / {idl['dispatcher'][0]}", f"as few as needed / {IDLE_CTXT_TARGET}",
         verdict(idl["fanlink"][0] <= IDLE_CTXT_TARGET)),
        ("datapath TCP, fan / plain vxlan, same run", f"{tcp:.3f}", "-", f">= {DATAPATH_TARGET:g}",
         verdict(tcp >= DATAPATH_TARGET)),
    ]
    L = ["## Targets (issue 14)", "", "| figure | fanlink | networkd-dispatcher | target | |", "|---|---|---|---|---|"]
    L += [f"| {' | '.join(row)} |" for row in rows]
    return L + ["", "Each figure is from the sections below; a miss is explained in `bench/README.md` "
                "(Found while measuring).", ""]


def report(r):
    a = r["args"]
    L = ["# fanlink vs networkd-dispatcher: benchmarks", "",
         f"Machine: {machine()}.  ",
         f"Command: `{a.command}` (flaps per path {a.flaps}, storm {a.storm}, idle {a.idle:g} s, "
         f"iperf3 {a.iperf:g} s x {a.iperf_reps}, starts {a.starts}).  ",
         "Regenerate with `sudo bench/run --write`; `bench/run --help` for the knobs; the method is in "
         "`bench/README.md`.", ""]
    if a.smoke:
        L += ["**Smoke run: durations too short for the figures to mean anything.**", ""]
    L += targets(r)

    L += ["## Reaction: uplink routable -> fan bridge UP with its address", "",
          "t0 = networkd's PropertiesChanged(OperationalState=routable) as a `chrt -f 50 busctl monitor` "
          "received it (kernel receive stamp); t1 = the rtnetlink message that completed \"bridge UP and "
          "addressed\", stamped on receipt by a SCHED_FIFO listener in the host netns. Samples alternate "
          "fanlink, dispatcher, fanlink, ... on two identical harness hosts. Times in µs.", "",
          "| path | daemon | n | min | p50 | p90 | p99 | max | negative | carrier-up cmd -> fan up, p50 |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for path, d in r["latency"].items():
        for kind, s in d["samples"].items():
            m = summary(s)
            neg = sum(1 for v in s if v < 0)
            L.append(f"| {path} | {kind} | {len(s)} | " + " | ".join(us(m[k]) for k in m) +
                     f" | {neg} | {us(statistics.median(d['cmd'][kind]))} |")
        acks = d["acks"]
        if acks:
            m = summary([v * 1000 for v in acks])
            L.append(f"| {path} | fanlink's own \"event to last ack\" | {len(acks)} | " +
                     " | ".join(us(m[k]) for k in m) + " | - | - |")
    L.append("")
    for path, d in r["latency"].items():
        f, p = statistics.median(d["samples"]["fanlink"]), statistics.median(d["samples"]["dispatcher"])
        L.append(f"- {path}: ratio of medians dispatcher / fanlink = **{p / f:.0f}x**" if f > 0 else
                 f"- {path}: fanlink median <= 0 (below the monitor's resolution; see its own ack figure)")
    cold = pct(r["latency"]["cold"]["samples"]["fanlink"], 50) / 1e6  # the table's p50
    L.append(f"- cold, fanlink p50: **{cold:.2f} ms** (target <= {COLD_TARGET_MS:g} ms: "
             f"{'met' if cold <= COLD_TARGET_MS else 'missed'})")
    L += ["", "warm = the devices exist (fanlink: one netlink message, set the bridge up); the peer's hooks "
          "delete the fan on no-carrier, so both of its paths create it (5 `ip` + 1 `nft` process). cold = "
          "`fanlink down --all` while the uplink was down: creation incl. BPF load, the nftables table (one "
          "netlink transaction) and the firewall check (netlink dumps; no process). \"negative\" counts samples "
          "where the bridge came up before the monitor's copy of the signal arrived (dbus-daemon sends the "
          "monitor's copy last).", ""]

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
    L += ["## Footprint", "",
          f"| | fanlink | networkd-dispatcher |", "|---|---|---|",
          f"| VmRSS at start (KiB) | {st['fanlink']['VmRSS']} | {st['dispatcher']['VmRSS']} |",
          f"| VmHWM at start (KiB) | {st['fanlink']['VmHWM']} | {st['dispatcher']['VmHWM']} |",
          f"| VmRSS after 30 flaps: 20 warm, 10 cold (KiB) | {r['after10']['fanlink']['VmRSS']} | "
          f"{r['after10']['dispatcher']['VmRSS']} |",
          f"| VmRSS after {total_flaps(a)} flaps (KiB) | {af['fanlink']['VmRSS']} | {af['dispatcher']['VmRSS']} |",
          f"| VmHWM after (KiB) | {af['fanlink']['VmHWM']} | {af['dispatcher']['VmHWM']} |",
          "| of VmRSS: anonymous (heap, stacks) at start / after 30 / after all (KiB) | "
          + " | ".join(" / ".join(str(r[w][k].get("RssAnon", "?")) for w in ("start", "after10", "after"))
                       for k in ("fanlink", "dispatcher")) + " |",
          "| of VmRSS: file pages (the binary's text and data) at start / after 30 / after all (KiB) | "
          + " | ".join(" / ".join(str(r[w][k].get("RssFile", "?")) for w in ("start", "after10", "after"))
                       for k in ("fanlink", "dispatcher")) + " |",
          f"| fds at start / after | {st['fanlink']['fds']} / {af['fanlink']['fds']} | "
          f"{st['dispatcher']['fds']} / {af['dispatcher']['fds']} |",
          f"| threads | {st['fanlink']['threads']} | {st['dispatcher']['threads']} |",
          f"| on disk | {r['size'] / 1024:.0f} KiB binary{a.binary_note} | "
          f"{peer.get('networkd-dispatcher', 0)} KiB package; {deps} KiB with python3-dbus, python3-gi, "
          f"gir1.2-glib-2.0, libgirepository; {total} KiB with the Python 3.11 interpreter and stdlib "
          f"(dpkg Installed-Size) |", ""]

    idl, sto = r["idle"], r["storm"]
    ms = lambda ticks: ticks * 1000 / CLK_TCK * 100 / a.storm  # noqa: E731  (ms per 100 flaps)
    L += ["## Quiet and CPU", "",
          "| | fanlink | networkd-dispatcher |", "|---|---|---|",
          f"| context switches while idle {a.idle:g} s (all threads) | {idl['fanlink'][0]} | {idl['dispatcher'][0]} |",
          f"| ... by thread | {thread_list(idl['fanlink'][1])} | {thread_list(idl['dispatcher'][1])} |"]
    f_own, f_ch = sto["fanlink"]
    d_own, d_ch = sto["dispatcher"]
    L += [f"| CPU per 100 flaps, own (utime+stime) | {ms(f_own):.0f} ms | {ms(d_own):.0f} ms |",
          f"| CPU per 100 flaps, children (cutime+cstime) | {ms(f_ch):.0f} ms | {ms(d_ch):.0f} ms |",
          f"| CPU per event, all (a flap is 2 events: down, up) | {ms(f_own + f_ch) * 10 / 2:.0f} µs | "
          f"{ms(d_own + d_ch) * 10 / 2:.0f} µs |", "",
          f"CPU is read in clock ticks ({1000 // CLK_TCK} ms) over {a.storm} flaps of both hosts at once. "
          f"fanlink ran {sto['reconciles']} reconciles for them ({sto['reconciles'] / a.storm:.1f} per flap) and "
          f"sent {sto['requests']} netlink requests ({sto['requests'] / a.storm:.1f} per flap; its own count, "
          "in the debug line of each reconcile), with RUST_LOG=debug.", ""]
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
    else:
        main()
