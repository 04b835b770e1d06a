"""Scenario 6: the Fan's workloads for real (issue 23): Incus instances and Docker containers
from the suites' own packages on fanlink's fan, across booted hosts, through reboots.

The workload hosts are the guests whose image has Docker (lib/image.py EXTRA): by default
Debian 13 (Incus 6.0 and Docker 26.1) and Debian 12 (Docker 20.10). Each gets fan-250
(250.0.0.0/8 over the underlay, dhcp = true): guest i's slice is 250.i.1.0/24. Images come from
a busybox root filesystem the guest builds itself (no registry, no mirror). Another guest,
without fan-250, is where NAT is seen. Scenario 4 purged fanlink on Debian 13: it is installed
again here as a user would (its rule file stayed).
"""

import ipaddress
import re
import shlex
import time
from contextlib import contextmanager

from checks import FANS, Skip, is_up, wait
from fleet import say
from guest import StepFailed

FAN = "fan-250"
RULE = f'[[fan]]\\nname = "{FAN}"\\noverlay = "250.0.0.0/8"\\nunderlay = "10.66.0.0/16"\\ndhcp = true\\n'
# README "Docker": the recipe as the test runs it (one line to change when the recipe does).
DOCKER_NET = "docker network create $(fanlink docker-args {fan})"
REBOOTS = 3
LEASES = f"/var/lib/fanlink/{FAN}.leases"
DHCP_CONF = f"/var/lib/fanlink/dhcp/{FAN}.conf"
COUNT_TABLE = "flnat"

# README "Docker" and "LXD and Incus": the images, made offline from the guest's
# busybox-static, as the recipes make them (each in a directory of its own).
DOCKER_IMAGE = r"""set -e
rm -rf /root/docker && mkdir /root/docker && cd /root/docker
mkdir -p tiny/bin && cp /bin/busybox tiny/bin/
for applet in sh sleep ping ip; do ln -s busybox tiny/bin/$applet; done
tar -C tiny -c . | docker import - tiny
"""
INITTAB = """::sysinit:/bin/ip link set eth0 up
::sysinit:/bin/udhcpc -i eth0 -O mtu -s /etc/udhcpc.sh -b
::respawn:/bin/sleep 1000000
"""
INCUS_IMAGE = r"""set -e
rm -rf /root/incus && mkdir /root/incus && cd /root/incus
mkdir -p tiny/bin tiny/sbin tiny/etc meta
cp /bin/busybox tiny/bin/
for applet in sh sleep ping ip udhcpc init; do ln -s busybox tiny/bin/$applet; done
ln -s ../bin/busybox tiny/sbin/init
cat > tiny/etc/inittab <<'EOF'
""" + INITTAB + r"""EOF
cat > tiny/etc/udhcpc.sh <<'EOF'
#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
[ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
ip addr flush dev eth0 && ip addr add "$ip/$mask" dev eth0
ip route replace default via "$router"
EOF
chmod 755 tiny/etc/udhcpc.sh
printf 'architecture: x86_64\ncreation_date: %s\nproperties:\n  description: busybox\n' "$(date +%s)" > meta/metadata.yaml
tar -C meta -czf meta.tar.gz metadata.yaml && tar -C tiny -czf rootfs.tar.gz .
incus image import meta.tar.gz rootfs.tar.gz --alias tiny
"""
PRESEED = f"""storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  config: {{boot.autostart: "true"}}
  devices:
    root: {{type: disk, path: /, pool: default}}
    eth0: {{type: nic, nictype: bridged, parent: {FAN}, name: eth0}}
"""
# The test's own, after the recipe: busybox's init powers off on SIGUSR2 and ignores the
# SIGPWR Incus sends, so each reboot would wait out Incus's shutdown timeout (30 s).
PROFILE = "incus profile set default raw.lxc=lxc.signal.halt=SIGUSR2 boot.host_shutdown_timeout=5"


class Host:
    def __init__(self, g, i, incus):
        self.g, self.i, self.incus = g, i, incus
        self.slice = ipaddress.ip_network(f"250.{i}.1.0/24")
        self.gw = f"250.{i}.1.1"
        self.underlay = f"10.66.{i}.1"
        # (kind, name): kind "incus" or "docker"
        self.workloads = [("docker", "d1"), ("docker", "d2")] + ([("incus", "i1"), ("incus", "i2")] if incus else [])
        self.addrs = {}


def wexec(kind, name, cmd):
    return (f"incus exec {name} -- " if kind == "incus" else f"docker exec {name} ") + cmd


class Checks:
    """Each check a named step: all are run and each failure reported, the scenario failing
    at the end with the list (a failing check says which feature is missing, not less)."""

    def __init__(self, fleet):
        self.fleet, self.failed = fleet, []

    @contextmanager
    def step(self, label):
        t = time.monotonic()
        try:
            yield
            say(f"machines: step 6: {label}: {time.monotonic() - t:.0f} s")
        except StepFailed as e:
            say(f"machines: step 6: {label}: FAILED in {time.monotonic() - t:.0f} s: {e}")
            self.failed.append(f"{label}: {str(e).splitlines()[0]}")


def workloads(fleet):
    hosts = [Host(g, fleet.index(g), g.suite == "trixie") for g in fleet.guests if g.suite in ("trixie", "bookworm")]
    if len(hosts) < 2 or not any(h.incus for h in hosts):
        return Skip("needs two workload hosts (Debian 12 or 13), one of them Debian 13 (Incus)")
    others = [g for g in fleet.guests if g not in [h.g for h in hosts]]
    if not others:
        return Skip("needs a guest without the workloads' fan, to see NAT on")
    nat = others[0]
    c = Checks(fleet)

    with fleet.step("6: fanlink + fan-250, Docker and Incus on, images built, all hosts at once"):
        fleet.parallel(lambda g: setup(fleet, next(h for h in hosts if h.g is g)), [h.g for h in hosts])
    with fleet.step("6: workloads started, all hosts at once"):
        fleet.parallel(lambda g: start(next(h for h in hosts if h.g is g)), [h.g for h in hosts])
    run_checks(fleet, c, hosts, nat, "first boot")
    for n in range(1, REBOOTS + 1):
        with fleet.step(f"6: reboot {n}, workload hosts at once"):
            took = fleet.parallel(lambda g: g.reboot(), [h.g for h in hosts])
        for h in hosts:
            fleet.note(h.g, "workloads", f"reboot {n} took {took[h.g.name]:.0f} s; " + order(h.g))
        with c.step(f"reboot {n}: the fans are fanlink's, the workloads back by themselves"):
            fleet.parallel(lambda g: back(next(h for h in hosts if h.g is g)), [h.g for h in hosts])
        run_checks(fleet, c, hosts, nat, f"after reboot {n}")
    if c.failed:
        raise StepFailed(f"{len(c.failed)} workload checks failed:\n" + "\n".join(c.failed))


def setup(fleet, h):
    g = h.g
    if g.sh("dpkg-query -W -f '${Status}' fanlink 2>/dev/null | grep -q 'install ok installed'", check=False)[0]:
        # Scenario 4 purged it here; its rule file (the admin's) stayed.
        g.sh(f"cd /root/files && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./{fleet.deb}", timeout=300)
        g.sh("systemctl enable --now fanlink")
    g.sh(f"printf '{RULE}' >/etc/fanlink.d/60-workloads.toml && fanlink check && systemctl reload fanlink")
    wait(g, is_up(FAN) + f" && ip -4 -o addr show dev {FAN} | grep -q ' {h.gw}/8'", 60,
         f"{FAN} did not come up", "fanlink status; journalctl -u fanlink | tail -n 20")
    units = "docker.socket docker.service containerd.service" + (
        " incus.socket incus.service incus-startup.service" if h.incus else "")
    g.sh(f"systemctl enable --now {units}", timeout=300)
    g.sh(DOCKER_IMAGE + ">/dev/null", timeout=180)
    g.sh(DOCKER_NET.format(fan=FAN) + " >/dev/null", timeout=120)
    if h.incus:
        g.sh(f"incus admin init --preseed <<'EOF'\n{PRESEED}EOF", timeout=180)
        g.sh(PROFILE, timeout=60)
        g.sh(INCUS_IMAGE, timeout=180)


def start(h):
    g = h.g
    for kind, name in h.workloads:
        if kind == "docker":
            g.sh(f"docker run -d --restart=always --network {FAN} --name {name} tiny /bin/sleep 1000000 "
                 ">/dev/null", timeout=180)
    d1 = g.out(f"docker inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' d1").strip()
    for kind, name in h.workloads:
        if kind == "incus":
            g.sh(f"incus init -q tiny {name}", timeout=180)
            if name == "i2":
                # A client asking for an address Docker holds (an old lease, a copied
                # instance): the DHCP server must not hand it out (issue 23, defect 1).
                tab = INITTAB.replace(" -b\n", f" -b -r {d1}\n")
                g.sh(f"cat >/root/incus/inittab-{name} <<'EOF'\n{tab}EOF\n"
                     f"incus file push /root/incus/inittab-{name} {name}/etc/inittab")
            g.sh(f"incus start {name}", timeout=180)


def order(g):
    """When fanlink, Docker and Incus became active in the last boot (seconds after the kernel
    started): the start-up race, said."""
    out = g.out("for u in fanlink docker incus; do systemctl show $u -p ActiveEnterTimestampMonotonic --value; done")
    t = [int(v or 0) / 1e6 for v in out.split()]
    return ", ".join(f"{u} active at {v:.1f} s" for u, v in zip(("fanlink", "docker", "incus"), t) if v)


def back(h):
    g = h.g
    fans = [FAN] + list(FANS)
    # The bridge is fanlink's (its alias) and every fan without drift: Docker did not make a
    # plain bridge of the fan's name first (issue 23, defect 2).
    wait(g, " && ".join(is_up(f) for f in fans) + f" && ip -d link show dev {FAN} | grep -q 'alias fanlink:{FAN}$'"
         " && ! fanlink status | grep '^  drift' | grep -vq 'drift     none'", 120,
         "the fans are not up and fanlink's after the reboot",
         f"ip -d link show dev {FAN}; fanlink status; journalctl -b -u fanlink | tail -n 20; "
         "journalctl -b -u docker | grep -i bridge | tail -n 5")
    names = [n for k, n in h.workloads if k == "docker"]
    wait(g, " && ".join(f"[ \"$(docker inspect -f '{{{{.State.Running}}}}' {n})\" = true ]" for n in names), 120,
         "Docker's restart=always containers did not come back", "docker ps -a; journalctl -b -u docker | tail -n 20")
    if h.incus:
        names = [n for k, n in h.workloads if k == "incus"]
        wait(g, " && ".join(f"incus list -f csv -c s {n} | grep -qx RUNNING" for n in names), 120,
             "the Incus instances did not come back", "incus list; journalctl -b -u incus | tail -n 20")
    found = g.out("journalctl -b -u fanlink | grep -i 'does not own' || true").strip()
    if found:
        raise StepFailed(f"{g.name}: fanlink found a bridge it does not own:\n{found}")


def addresses(h):
    """{name: address/len} inside each workload, waiting for the instances' leases."""
    g = h.g
    script = "\n".join(f"echo {n} $({wexec(k, n, 'ip -4 -o addr show dev eth0')} | awk '{{print $4}}')"
                       for k, n in h.workloads)
    end = time.monotonic() + 60
    while True:
        got = dict(line.split(" ", 1) if " " in line else (line, "") for line in g.out(script, timeout=180).splitlines())
        if all(got.get(n) for _, n in h.workloads) or time.monotonic() > end:
            return {n: got.get(n, "") for _, n in h.workloads}
        g.sh("sleep 2")


def run_checks(fleet, c, hosts, nat, when):
    def each(fn):
        fleet.parallel(lambda g: fn(next(h for h in hosts if h.g is g)), [h.g for h in hosts])

    def in_slice(h):
        h.addrs = addresses(h)
        bad = {n: a for n, a in h.addrs.items()
               if not a or ipaddress.ip_interface(a).ip not in h.slice or a.split("/")[1] != "8"}
        if bad:
            raise StepFailed(f"{h.g.name}: not an address in {h.slice} (length 8): {bad}")
    with c.step(f"{when}: every instance and container has an address in its host's slice"):
        each(in_slice)

    def unique(h):
        g = h.g
        sep = "----8<----"
        leases, inspect, conf = g.out(
            f"cat {LEASES}; echo '{sep}'; docker network inspect {FAN} -f "
            "'{{range .Containers}}{{.Name}} {{.IPv4Address}}{{println}}{{end}}"
            "{{range .IPAM.Config}}range {{.IPRange}}{{println}}{{end}}'; "
            f"echo '{sep}'; grep '^dhcp-range=' {DHCP_CONF}").split(sep)
        held = {}
        for line in leases.split("\n"):
            f = line.split()
            if len(f) >= 3:
                held.setdefault(f[2], []).append(f"lease {f[1]}")
        ranges = []
        for line in inspect.split("\n"):
            f = line.split()
            if len(f) == 2 and f[0] == "range":
                ranges.append(ipaddress.ip_network(f[1]))
            elif len(f) == 2:
                held.setdefault(f[1].split("/")[0], []).append(f"docker {f[0]}")
        held.setdefault(h.gw, []).append("the host")
        twice = {a: who for a, who in held.items() if len(who) > 1}
        seen = [a.split("/")[0] for a in h.addrs.values() if a]
        twice.update({a: "seen in two workloads" for a in seen if seen.count(a) > 1})
        # By construction, not by luck: the DHCP range and Docker's --ip-range do not overlap,
        # and neither holds the host's own address.
        pools = []
        for line in conf.split("\n"):
            m = re.match(r"dhcp-range=([0-9.]+),([0-9.]+)", line.strip())
            if m:
                pools.append(("dhcp", ipaddress.ip_address(m.group(1)), ipaddress.ip_address(m.group(2))))
        pools += [("docker", r[0], r[-1]) for r in ranges]
        gw = ipaddress.ip_address(h.gw)
        clash = [f"{a[0]} {a[1]}-{a[2]} and {b[0]} {b[1]}-{b[2]}" for n, a in enumerate(pools)
                 for b in pools[n + 1:] if a[0] != b[0] and a[1] <= b[2] and b[1] <= a[2]]
        clash += [f"{p[0]} {p[1]}-{p[2]} holds the host's {gw}" for p in pools if p[1] <= gw <= p[2]]
        if twice or clash:
            raise StepFailed(f"{g.name}: addresses held twice {twice}; plan overlaps {clash}\n"
                             f"leases:\n{leases.strip()}\ndocker:\n{inspect.strip()}\n{conf.strip()}")
    with c.step(f"{when}: no address twice on a host (leases, docker network inspect, the plan)"):
        each(unique)

    def mtu(h):
        g = h.g
        want = g.out(f"cat /sys/class/net/{FAN}/mtu").strip()
        got = {n: re.search(r" mtu (\d+)", g.out(wexec(k, n, "ip link show dev eth0"))) for k, n in h.workloads}
        got = {n: m.group(1) if m else "?" for n, m in got.items()}
        bad = {n: m for n, m in got.items() if m != want}
        if bad:
            raise StepFailed(f"{g.name}: MTU inside is not the fan's {want}: {bad}")
    with c.step(f"{when}: MTU inside = the fan's"):
        each(mtu)

    def pings(h, targets_of):
        lost = []
        for k, n in h.workloads:
            targets = targets_of(h, k, n)
            if not targets:
                continue
            loop = (f"for a in {' '.join(targets)}; do ping -c 1 -W 5 $a >/dev/null 2>&1 "
                    f"|| echo \"lost: {n} -> $a\"; done")
            lost.append(h.g.out(wexec(k, n, "sh -c " + shlex.quote(loop)), timeout=60 + 10 * len(targets)).strip())
        lost = "\n".join(x for x in lost if x)
        if lost:
            raise StepFailed(f"{h.g.name}: first pings unanswered:\n{lost}")

    def across(h, k, n):
        return [o.addrs[m].split("/")[0] for o in hosts if o is not h for _, m in o.workloads if o.addrs.get(m)]
    with c.step(f"{when}: every workload pair across hosts, at the first ping"):
        each(lambda h: pings(h, across))

    def beside(h, k, n):
        return [h.addrs[m].split("/")[0] for j, m in h.workloads if j != k and h.addrs.get(m)]
    if any(h.incus for h in hosts):
        with c.step(f"{when}: instance <-> container on one host"):
            each(lambda h: pings(h, beside) if h.incus else None)

    def host_workload(h):
        pings(h, lambda h, k, n: [h.gw])
        targets = [o.addrs[m].split("/")[0] for o in hosts for _, m in o.workloads if o.addrs.get(m)]
        lost = h.g.out("\n".join(f"ping -n -c 1 -W 5 {a} >/dev/null 2>&1 || echo 'lost: host -> {a}'"
                                 for a in targets), timeout=60 + 10 * len(targets)).strip()
        if lost:
            raise StepFailed(f"{h.g.name}: first pings unanswered:\n{lost}")
    with c.step(f"{when}: host <-> workload (its own, and every host to every workload)"):
        each(host_workload)

    # NAT: the other guest has no fan-250 and no default route, and counts what arrives: an
    # echo request from a workload must come from its host's underlay address, none from 250/8.
    with c.step(f"{when}: NAT out to {nat.name}'s underlay address"):
        rules = [f"add table ip {COUNT_TABLE}", f"delete table ip {COUNT_TABLE}", f"add table ip {COUNT_TABLE}",
                 f"add chain ip {COUNT_TABLE} seen {{ type filter hook input priority -300 ; }}",
                 f'add rule ip {COUNT_TABLE} seen icmp type echo-request ip saddr 250.0.0.0/8 counter comment "overlay"']
        rules += [f'add rule ip {COUNT_TABLE} seen icmp type echo-request ip saddr {h.underlay} counter comment "{h.i}"'
                  for h in hosts]
        nat.sh("nft -f - <<'EOF'\n" + "\n".join(rules) + "\nEOF")
        dst = nat.addr.split("/")[0]
        each(lambda h: pings(h, lambda h, k, n: [dst]))
        seen = {cm: int(p) for p, cm in re.findall(r'counter packets (\d+) bytes \d+ comment "([^"]+)"',
                                                   nat.out(f"nft list table ip {COUNT_TABLE}"))}
        want = {str(h.i): len(h.workloads) for h in hosts}
        if seen.get("overlay") or any(seen.get(i, 0) < n for i, n in want.items()):
            raise StepFailed(f"{nat.name}: echo requests seen by source {seen}, want none from 250/8 and "
                             f"at least {want} from the hosts' underlay addresses")

    def forwarding(h):
        out = h.g.out("sysctl -n net.ipv4.ip_forward; iptables -S FORWARD | head -n 1").split("\n")
        if out[:2] != ["1", "-P FORWARD DROP"]:
            raise StepFailed(f"{h.g.name}: ip_forward {out[0]}, iptables {out[1] if len(out) > 1 else '?'}: "
                             "not what Docker sets when it turns forwarding on itself (1, FORWARD DROP): "
                             "the host routes between any of its interfaces (issue 23, defect 5)")
    with c.step(f"{when}: ip_forward and FORWARD policy are Docker's (1, DROP): not an open router"):
        each(forwarding)
