"""Datapath and per-peer state, for bench/lib/bench.py. Namespaces only, all recorded.

datapath(): one switch; hosts f1,f2 with a fanlink fan (`fanlink up`, underlay 10.98.0.0/16),
hosts g1,g2 the same in the shared datapath (forced, as on kernels without vnifilter),
hosts p1,p2 with a plain vxlan (VNI 42, dstport 8472, nolearning, one static fdb entry to
the other host), and n1,n2 the same plus a masquerade table (conntrack on, as with fanlink's
NAT), each with a container on a 1450-MTU bridge. iperf3 TCP and UDP and
ping between the two containers of each pair, fan and plain runs alternated.

peer_state(): host h0 and N peers on a switch, each `fanlink up`; h0 pings every peer's
bridge once; count h0's fdb, neighbour and route entries at N = 2, 8, 32.
"""

import json
import os
import re
import statistics
import subprocess

import hosts


def ip(*args, ns=None):
    subprocess.run(["ip"] + (["-n", ns] if ns else []) + list(args), check=True, capture_output=True)


class Lab:
    def __init__(self, work, tag):
        self.work, self.prefix = work, f"flb{os.getpid()}{tag}"

    def ns(self, name):
        full = f"{self.prefix}-{name}"
        self.work.record("ns", full)
        subprocess.run(["ip", "netns", "add", full], check=True)
        ip("link", "set", "lo", "up", ns=full)
        return full

    def switch(self):
        sw = self.ns("sw")
        ip("link", "add", "sw", "type", "bridge", ns=sw)
        ip("link", "set", "sw", "up", ns=sw)
        return sw

    def host(self, sw, name, addr):
        h = self.ns(name)
        ip("link", "add", "uplink0", "netns", h, "type", "veth", "peer", "name", f"s-{name}", "netns", sw)
        ip("link", "set", f"s-{name}", "master", "sw", "up", ns=sw)
        ip("addr", "add", f"{addr}/16", "dev", "uplink0", ns=h)
        ip("link", "set", "uplink0", "up", ns=h)
        return h

    def container(self, host, bridge, name, addr, gw):
        c = self.ns(name)
        ip("link", "add", f"v-{name}", "netns", host, "mtu", "1450", "type", "veth",
           "peer", "name", "eth0", "netns", c, "mtu", "1450")
        ip("link", "set", f"v-{name}", "master", bridge, "up", ns=host)
        ip("addr", "add", addr, "dev", "eth0", ns=c)
        ip("link", "set", "eth0", "up", ns=c)
        if gw:
            ip("route", "add", "default", "via", gw, ns=c)
        return c


def fanlink_up(binary, empty_rules, host, datapath="auto"):
    hosts.sh("env", f"FANLINK_DATAPATH={datapath}", binary, "--rules-dir", empty_rules, "up",
             "--overlay", "250.0.0.0/8", "--underlay", "10.98.0.0/16", "--name", "fan-250", ns=host)


def plain_vxlan(host, local, remote):
    ip("link", "add", "br0", "mtu", "1450", "type", "bridge", ns=host)
    ip("link", "add", "vx0", "mtu", "1450", "type", "vxlan", "id", "42", "dstport", "8472", "local", local,
       "nolearning", ns=host)
    subprocess.run(["bridge", "-n", host, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", remote],
                   check=True, capture_output=True)
    ip("link", "set", "vx0", "master", "br0", "up", ns=host)
    ip("link", "set", "br0", "up", ns=host)


def iperf(work, client, server, addr, seconds, udp):
    """Received bits/s of one iperf3 run (a one-off server, restarted if it did not come up)."""
    args = ["iperf3", "-c", addr, "-t", str(seconds), "-J"] + (["-u", "-b", "0", "-l", "1400"] if udp else [])
    err = None
    for _ in range(5):
        srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", addr],
                               stdout=open(os.path.join(work.path, "iperf3-server.log"), "a"),
                               stderr=subprocess.STDOUT)
        work.record("pid", srv.pid)
        try:
            for _ in range(40):  # the server needs a moment to listen
                r = subprocess.run(["ip", "netns", "exec", client] + args, capture_output=True, text=True)
                out = json.loads(r.stdout or "{}")
                if r.returncode == 0 and "error" not in out:
                    return out["end"]["sum_received"]["bits_per_second"]
                err = out.get("error", r.stderr)
                if srv.poll() is not None:
                    break
                subprocess.run(["sleep", "0.05"])
        finally:
            hosts.kill_pid(srv.pid)
            srv.wait()
    raise RuntimeError(f"{' '.join(args)} in {client}: {err}")


def ping_rtt(client, addr, count):
    r = hosts.sh("ping", "-q", "-c", str(count), "-i", "0.01", addr, ns=client)
    return float(re.search(r"= [\d.]+/([\d.]+)/", r.stdout).group(1))


def datapath(work, binary, seconds, reps):
    lab = Lab(work, "d")
    empty = work.sub("empty-rules")
    sw = lab.switch()
    f1, f2 = lab.host(sw, "f1", "10.98.0.1"), lab.host(sw, "f2", "10.98.0.2")
    p1, p2 = lab.host(sw, "p1", "10.98.1.1"), lab.host(sw, "p2", "10.98.1.2")
    n1, n2 = lab.host(sw, "n1", "10.98.2.1"), lab.host(sw, "n2", "10.98.2.2")
    g1, g2 = lab.host(sw, "g1", "10.98.3.1"), lab.host(sw, "g2", "10.98.3.2")
    for h in (f1, f2):
        fanlink_up(binary, empty, h)
    for h in (g1, g2):  # the shared datapath of kernels without vnifilter, forced
        fanlink_up(binary, empty, h, "shared")
    plain_vxlan(p1, "10.98.1.1", "10.98.1.2")
    plain_vxlan(p2, "10.98.1.2", "10.98.1.1")
    # The same plain vxlan plus a masquerade table like fanlink's: its nat hook switches on
    # conntrack for every packet, which separates that cost from the fan program's.
    for h, local, remote in ((n1, "10.98.2.1", "10.98.2.2"), (n2, "10.98.2.2", "10.98.2.1")):
        plain_vxlan(h, local, remote)
        subprocess.run(["ip", "netns", "exec", h, "nft", "-f", "-"], check=True, capture_output=True, text=True,
                       input="table ip nat {\n  chain post {\n    type nat hook postrouting priority srcnat;\n"
                             "    ip saddr 192.168.51.0/24 ip daddr != 192.168.51.0/24 masquerade\n  }\n}\n")
    pair = {
        "fan": (lab.container(f1, "fan-250", "fc1", "250.0.1.10/8", "250.0.1.1"),
                lab.container(f2, "fan-250", "fc2", "250.0.2.10/8", "250.0.2.1"), "250.0.2.10"),
        "fan shared": (lab.container(g1, "fan-250", "gc1", "250.3.1.10/8", "250.3.1.1"),
                       lab.container(g2, "fan-250", "gc2", "250.3.2.10/8", "250.3.2.1"), "250.3.2.10"),
        "plain": (lab.container(p1, "br0", "pc1", "192.168.50.1/24", None),
                  lab.container(p2, "br0", "pc2", "192.168.50.2/24", None), "192.168.50.2"),
        "plain+nat": (lab.container(n1, "br0", "nc1", "192.168.51.1/24", None),
                      lab.container(n2, "br0", "nc2", "192.168.51.2/24", None), "192.168.51.2"),
    }
    for c1, _, dst in pair.values():  # ARP, and a working path, before any timing
        hosts.sh("ping", "-c", "3", "-i", "0.2", "-W", "2", dst, ns=c1)
    res = {k: {"tcp": [], "udp": [], "rtt": []} for k in pair}
    for _ in range(reps):
        for kind, (c1, c2, dst) in pair.items():  # alternated, so drift hits both alike
            res[kind]["tcp"].append(iperf(work, c1, c2, dst, seconds, udp=False))
            res[kind]["udp"].append(iperf(work, c1, c2, dst, seconds, udp=True))
            res[kind]["rtt"].append(ping_rtt(c1, dst, 100 if seconds > 2 else 20))
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in res.items()}


def count(host):
    """h0's entries: each table split into configured (permanent/static: what an overlay
    must install per peer) and learned caches (aging; any L2/L3 traffic makes them)."""
    def lines(*cmd):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if line.strip()]
    fdb = lines("bridge", "-n", host, "fdb", "show")
    neigh = lines("ip", "-n", host, "-4", "neigh", "show")
    route = lines("ip", "-n", host, "-4", "route", "show", "table", "all")
    fixed = lambda ls, words: sum(1 for line in ls if any(w in line.split() for w in words))  # noqa: E731
    return {
        "fdb": len(fdb), "fdb_fixed": fixed(fdb, ("permanent", "static")),
        "neigh": len(neigh), "neigh_fixed": fixed(neigh, ("PERMANENT", "NOARP")),
        "neigh_overlay": sum(1 for line in neigh if line.startswith("250.")),
        "route": len(route),
    }


def peer_state(work, binary, steps):
    lab = Lab(work, "s")
    empty = work.sub("empty-rules")
    sw = lab.switch()
    h0 = lab.host(sw, "h0", "10.98.0.1")
    fanlink_up(binary, empty, h0)
    out, joined = {}, 0
    for n in steps:
        while joined < n:
            joined += 1
            h = lab.host(sw, f"h{joined}", f"10.98.{joined}.1")
            fanlink_up(binary, empty, h)
            hosts.sh("ping", "-c", "1", "-W", "2", f"250.{joined}.1.1", ns=h0)
        out[n] = count(h0)
    return out
