"""A busy container host (issue 23), for bench/lib/bench.py: hundreds of containers' veths on
the fan bridge and a churn of container starts and stops, on fanlink's host and on the
peer's, at the same time and the same rate.

A container is a veth pair: `cvN` on the host, put on the fan bridge and set up (what
Docker, Incus and LXD do for a container's NIC), its peer `cN` in one netns standing for the
containers (the host sees only its own end, as with real containers). A start makes one, a
stop deletes the oldest: the population stays at N. networkd sees each veth come and go and
signals every state it passes through; neither the veth nor its signals change a fan.

Figures: CPU per churn event (the daemon's own, from its threads' schedstat in ns, plus its
children's, in clock ticks), counted from the first event until both daemons are idle again;
fanlink's reconciles, netlink requests and bus calls over the same span (its counters, at the
unit's log level); RSS right before the first event and right after the daemons are idle
again (the counters are read outside that bracket: a status answer reads the kernel afresh,
every veth's link included, and the heap shows it); and whether the fan is still right: fanlink's status
shows no drift, and a container on the fan still reaches a second fan host (the harness's
fake router, given a fan of its own with `fanlink up`) across the vxlan.
"""

import collections
import os
import subprocess
import time

import hosts

CLK_TCK = os.sysconf("SC_CLK_TCK")
BATCH = 50


def own_cpu_ns(pid):
    """CPU time of the process's threads so far (schedstat: ns, unlike the 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


def children_cpu_ns(pid):
    """CPU time of the process's waited-for children (cutime + cstime, clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) * 1_000_000_000 // CLK_TCK


def cpu_ns(pid):
    return own_cpu_ns(pid), children_cpu_ns(pid)


class Containers:
    """Container veths on `bridge` of a harness host, their peers in one netns."""

    def __init__(self, work, host, tag, bridge):
        self.host, self.bridge = host, bridge
        self.ns = f"flb{os.getpid()}{tag}-ct"
        work.record("ns", self.ns)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.live = collections.deque()
        self.next = 0

    def _ip(self, lines):
        subprocess.run(["ip", "-n", self.host.ns, "-batch", "-"], input="\n".join(lines) + "\n",
                       check=True, capture_output=True, text=True)

    def start(self, n=1):
        lines = []
        for _ in range(n):
            i, self.next = self.next, self.next + 1
            lines += [f"link add cv{i} mtu 1450 type veth peer name c{i} netns {self.ns} mtu 1450",
                      f"link set cv{i} master {self.bridge} up"]
            self.live.append(i)
        self._ip(lines)

    def stop(self):
        self._ip([f"link del cv{self.live.popleft()}"])


def settle(pump, pids, quiet_s, timeout):
    """Pumps the watches until no pid used CPU for quiet_s; returns {pid: seconds from the
    call to its last CPU use}."""
    t0 = time.monotonic()
    last = {p: (sum(cpu_ns(p)), t0) for p in pids}
    while time.monotonic() - t0 < timeout:
        pump.run(0.25)
        now = time.monotonic()
        for p in pids:
            c = sum(cpu_ns(p))
            if c != last[p][0]:
                last[p] = (c, now)
        if all(now - t >= quiet_s for _, t in last.values()):
            break
    return {p: max(0.0, t - t0) for p, (_, t) in last.items()}


def fan_host_beside(work, binary, host, fan):
    """The harness's fake router (peer0, 10.99.1.254, on uplink0's wire) as a second fan
    host, and a probe container on `host`'s fan: what `reaches()` pings across the fan."""
    peer_ns = host.peer_ns
    empty = work.sub("churn-empty-rules")
    hosts.sh(binary, "--rules-dir", empty, "up", "--overlay", "250.0.0.0/8", "--underlay", "10.99.0.0/16",
             "--name", fan, ns=peer_ns)
    probe = f"flb{os.getpid()}-probe"
    work.record("ns", probe)
    subprocess.run(["ip", "netns", "add", probe], check=True)
    for cmd in (["ip", "link", "add", "pv0", "netns", host.ns, "mtu", "1450", "type", "veth", "peer", "name",
                 "eth0", "netns", probe, "mtu", "1450"],
                ["ip", "-n", host.ns, "link", "set", "pv0", "master", fan, "up"],
                ["ip", "-n", probe, "addr", "add", "250.1.1.10/8", "dev", "eth0"],
                ["ip", "-n", probe, "link", "set", "eth0", "up"],
                ["ip", "-n", probe, "link", "set", "lo", "up"]):
        subprocess.run(cmd, check=True, capture_output=True)
    return probe


def reaches(probe, addr="250.1.254.1"):
    """A container on the fan reaches the other fan host's bridge (across the vxlan)."""
    r = hosts.sh("ping", "-q", "-c", "3", "-i", "0.2", "-W", "2", addr, ns=probe, check=False)
    return r.returncode == 0


def churn(pump, sides, work, binary, fan, n, rate, seconds, proc_status):
    """sides: {"fanlink": Side, "dispatcher": Side}; both hosts churn at once."""
    fl = sides["fanlink"]
    probe = fan_host_beside(work, binary, fl.host, fan)
    cts = {k: Containers(work, s.host, k[0], fan) for k, s in sides.items()}
    pids = [s.daemon.pid for s in sides.values()]
    t = time.monotonic()
    for left in range(n, 0, -BATCH):
        for c in cts.values():
            c.start(min(BATCH, left))
        pump.run(0.05)
    setup_settle = settle(pump, pids, 2.0, 600)
    out = {"containers": n, "populate_s": time.monotonic() - t, "populate_settle": setup_settle}
    out["reaches_before"] = reaches(probe)
    settle(pump, pids, 1.0, 60)
    # The counters first: a status answer reads the kernel afresh (300 veths' links), which
    # the daemon's heap and peak then show; the RSS readings bracket only the churn.
    c0 = fl.daemon.counters()
    out["rss_before"] = {k: proc_status(s.daemon.pid) for k, s in sides.items()}
    cpu0 = {k: cpu_ns(s.daemon.pid) for k, s in sides.items()}

    events = max(2, int(rate * seconds))
    t0 = time.monotonic()
    for e in range(events):
        due = t0 + e / rate
        if (wait := due - time.monotonic()) > 0:
            pump.run(wait)
        for c in cts.values():
            if e % 2 == 0:
                c.start()
            else:
                c.stop()
    out["churn_s"] = time.monotonic() - t0
    drain = settle(pump, pids, 1.0, 600)
    out["drain_s"] = {k: drain[s.daemon.pid] for k, s in sides.items()}
    cpu1 = {k: cpu_ns(s.daemon.pid) for k, s in sides.items()}
    out["rss_after"] = {k: proc_status(s.daemon.pid) for k, s in sides.items()}
    c1 = fl.daemon.counters()
    out["events"] = events
    out["cpu_ns"] = {k: (cpu1[k][0] - cpu0[k][0], cpu1[k][1] - cpu0[k][1]) for k in sides}
    out["counters"] = {key: c1[key] - c0[key] for key in ("reconciles", "netlink_requests", "bus_calls")}
    out["links_kept"] = (c0["networkd_links"], c1["networkd_links"])
    status = fl.daemon.status()
    out["drift"] = {f["name"]: (f["actual"], f["drift"]) for f in status["fans"]}
    out["reaches_after"] = reaches(probe)
    # The containers go (their netns with them, and so the host ends), before anything
    # else is measured on these hosts.
    for ns in [c.ns for c in cts.values()] + [probe]:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    settle(pump, pids + [s.host.networkd_pid for s in sides.values()], 1.0, 120)
    return out
