"""The markdown of bench/RESULTS.md from the results of bench/lib/bench.py: the targets of
issues 14 and 23 beside this run's figures, then a section per measurement."""

import os
import statistics
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
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
def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def summary(values):
    return {k: pct(values, p) for k, p in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


PEER_DEPS = ["python3-dbus", "python3-gi", "gir1.2-glib-2.0", "libgirepository-1.0-1"]
PYTHON = ["python3", "python3.11", "python3-minimal", "python3.11-minimal", "libpython3.11-minimal",
          "libpython3.11-stdlib"]


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
         rows("VmHWM before / after (KiB)",
              lambda k: f"{c['rss_before'][k]['VmHWM']} / {c['rss_after'][k]['VmHWM']}"),
         rows("of VmRSS anonymous before / after (KiB)",
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
