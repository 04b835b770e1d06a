"""The scenarios of the real-machines issues (12, 13), each a function of the booted fleet.

A scenario returns None (passed) or Skip(why), and raises StepFailed on the first step that
does not hold. Every guest has two fans (lib/checks.py says which addresses). Debian 11's
kernel has no vxlan vnifilter: there both fans share one vxlan (the shared datapath);
Debian 12 and 13 give each fan its own.
"""

import json
import re

import life
import workloads
from checks import FAN, FAN2, FANS, Skip, container, first_pings, is_up, ping, wait
from guest import StepFailed

RULE = "".join(f'[[fan]]\\nname = "{f}"\\noverlay = "{o}.0.0.0/8"\\nunderlay = "10.66.0.0/16"\\n'
               for f, (o, _) in FANS.items())
# What each suite's kernel gets (a probe decides in fanlink; the test knows the kernels).
DATAPATH = {"bullseye": "shared", "bookworm": "vnifilter", "trixie": "vnifilter"}
# The default fleet, one guest each, on one L2: guest 1 runs the per-host scenarios 4 and
# 5; guest 2, Debian 11, is the kernel without vnifilter in every scenario but those.
FLEET = ["bookworm", "bullseye", "trixie"]


# ---- 1. install and reboot ----------------------------------------------------------------

def install_and_reboot(fleet):
    """apt install ./fanlink_*.deb, a rule, enable, reboot: the fans come up by themselves,
    on every guest at once (so on every kernel of the fleet)."""
    def install(g):
        g.sh("mkdir -p /root/files && tar -xf /dev/vdb -C /root/files")
        if g is fleet.guests[-1]:
            # Everything under the package's reach, before it is installed: scenario 4's
            # purge (on this guest) compares.
            g.sh(f"find {life.SNAPSHOT} | sort >/root/before-install", timeout=300)
        g.sh(f"cd /root/files && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./{fleet.deb}",
             timeout=300)
        life.audit_denials(g, True)
        g.sh(f"printf '{RULE}' >/etc/fanlink.d/50-test.toml && fanlink check && systemctl enable fanlink "
             "&& sync")
    with fleet.step("1: install + rule + enable, all guests at once"):
        fleet.parallel(install)
    with fleet.step("1: reboot, all guests at once"):
        boot = fleet.parallel(lambda g: g.reboot())

    def check(g):
        i = fleet.index(g)
        # READY (or a failure) within two minutes of the guest's multi-user.
        wait(g, "systemctl show fanlink -p ActiveState | grep -qE '=(active|failed)' && "
             f"journalctl -b -u fanlink | grep -q '{FAN2}: up:'", 120,
             "no decision from fanlink after boot", "systemctl status fanlink; journalctl -b -u fanlink")
        wait(g, " && ".join(is_up(f) for f in FANS) + " && [ $(fanlink status | grep -c 'drift     none') = 2 ]",
             60, "the fans are not up with no drift after boot",
             "fanlink status; journalctl -b -u fanlink | tail -20")
        # The rest in one round trip (each costs seconds on a loaded emulated guest).
        sep = "\n----8<----\n"
        out = g.out(f"fanlink status; echo '{sep}'; fanlink status --json; echo '{sep}'; "
                    f"journalctl -b -u fanlink -o short-monotonic | grep ': up: '; echo '{sep}'; "
                    f"systemd-analyze blame --no-pager | head -n 6 | tr -s ' ' | paste -sd ','; echo '{sep}'; "
                    "systemd-analyze | head -n 1; "
                    "systemctl show fanlink -p ActiveEnterTimestampMonotonic --value")
        text, js, ups, blame, times = out.split(sep.strip())
        st = {f["name"]: f for f in json.loads(js)["fans"]}
        if "source: daemon" not in text:
            raise StepFailed(f"{g.name}: `fanlink status` does not answer through the daemon:\n{text}")
        for f, (o, _) in FANS.items():
            want = {"wanted": "up", "actual": "up", "bridge_address": f"{o}.{i}.1.1/8",
                    "datapath": DATAPATH[g.suite], "drift": []}
            got = {k: st.get(f, {}).get(k) for k in want}
            if got != want:
                raise StepFailed(f"{g.name}: {f}: status {got}, not {want}:\n{text}")
            if not re.search(f"{f}: up: .* routable with 10.66.{i}.1\\b", ups):
                raise StepFailed(f"{g.name}: no decision line for {f} in the journal:\n{ups}")
        # Boot-to-fan-up from the guest's own journal: systemd-analyze, fanlink's READY (the
        # unit's ActiveEnter, monotonic since boot) and its first decision line.
        analyze, ready = times.strip().splitlines()[-2:]
        up = re.search(r"^\[ *([0-9.]+)\]", ups.strip(), re.M)
        fleet.note(g, "boot", f"reboot took {boot[g.name]:.0f} s (its agent up after {g.to_agent:.0f} s); "
                   f"{analyze.strip()}; fanlink READY at "
                   f"{int(ready or 0) / 1e6:.1f} s, first fan up at {up.group(1) if up else '?'} s after kernel start")
        fleet.note(g, "boot", "slowest units:", blame.strip())
    with fleet.step("1: check the fans, all guests"):
        fleet.parallel(check)


# ---- 2. the mixed fleet: Debian 11, 12, 13 on two fans ------------------------------------

# Counters on every guest's bridges, in the bridge family's prerouting (what enters a
# bridge from a port: a container's veth, the fan's vxlan or its veth from the shared one).
COUNT_TABLE = "fltest"


def counters(g):
    """{comment: packets} of the counting table."""
    text = g.out(f"nft list table bridge {COUNT_TABLE}")
    return {c: int(n) for n, c in re.findall(r'counter packets (\d+) bytes \d+ comment "([^"]+)"', text)}


def mixed_fleet(fleet):
    """Containers on both fans of every guest: all pairs of one fan reach each other both
    ways at the first ping, every host reaches every container, and no frame of one fan
    enters the other's bridge (on Debian 11 both fans arrive through one shared vxlan)."""
    if len(fleet.guests) < 2:
        return Skip("needs two guests or more")

    def setup(g):
        i = fleet.index(g)
        rules = [f"add table bridge {COUNT_TABLE}",
                 f"add chain bridge {COUNT_TABLE} pre {{ type filter hook prerouting priority -300 ; }}"]
        for f, (o, ns) in FANS.items():
            container(g, ns, f, f"{o}.{i}.1.2/8", f"{o}.{i}.1.1")
            for p in (244, 246):
                for d in ("saddr", "daddr"):
                    rules.append(f'add rule bridge {COUNT_TABLE} pre meta ibrname "{f}" ip {d} {p}.0.0.0/8 '
                                 f'counter comment "{f} {d} {p}"')
        g.sh("nft -f - <<'EOF'\n" + "\n".join(rules) + "\nEOF")
    with fleet.step("2: containers and counters, all guests"):
        fleet.parallel(setup)

    def pings(g):
        targets = []
        for h in fleet.guests:
            for f, (o, ns) in FANS.items():
                dst = f"{o}.{fleet.index(h)}.1.2"
                targets.append((None, dst))  # the host reaches every container
                if h is not g:
                    targets.append((ns, dst))
        first_pings(g, targets)
    with fleet.step("2: first pings, every pair both ways, all guests at once"):
        fleet.parallel(pings)
    for g in fleet.guests:
        seen = counters(g)
        for f, (o, _) in FANS.items():
            other = 246 if o == 244 else 244
            if not seen.get(f"{f} saddr {o}"):
                raise StepFailed(f"{g.name}: {f}'s bridge saw none of its own fan's frames: {seen}")
            crossed = {k: n for k, n in seen.items() if k.startswith(f"{f} ") and k.endswith(f" {other}") and n}
            if crossed:
                raise StepFailed(f"{g.name}: frames of the other fan entered {f}'s bridge: {crossed}")
        fleet.note(g, "fans", f"datapath {DATAPATH[g.suite]};",
                   ", ".join(f"{k}: {n}" for k, n in sorted(seen.items()) if n))


# ---- 3. networkd drives it ----------------------------------------------------------------

def networkd_drives(fleet):
    """On every guest but the last (their peer), at once: Debian 11 and 12 by default."""
    if len(fleet.guests) < 2:
        return Skip("needs two guests or more")
    peer = fleet.guests[-1]
    fleet.parallel(lambda g: networkd_one(fleet, g, peer), fleet.guests[:-1])


def networkd_one(fleet, g, peer):
    i, p = fleet.index(g), fleet.index(peer)
    up_link = g.out("ls /sys/class/net | grep '^en' | head -n1").strip()
    with fleet.step(f"3: {g.name}: networkctl down/up"):
        g.sh(f"networkctl down {up_link}")
        wait(g, f"! ({is_up()}) && ip link show dev {FAN}-vx >/dev/null && "
             f"ip -o link show dev ct-h | grep -q 'master {FAN}'", 30,
             "networkctl down: the bridge did not go admin-down with devices and container kept")
        g.sh(f"networkctl up {up_link}")
        wait(g, is_up(), 60, "networkctl up: the fan did not come back")
        ping(g, f"244.{p}.1.2", ns="ct")
    with fleet.step(f"3: {g.name}: networkd restart"):
        # A transition as soon as the new networkd has configured the link: the daemon must
        # see it. Not sooner: networkd 247 (Debian 11) sets a link up when it configures it,
        # undoing a `networkctl down` made in between (seen on the booted guest).
        g.sh("systemctl restart systemd-networkd")
        wait(g, f"networkctl list --no-legend {up_link} | grep -q configured", 30,
             "networkd did not configure the uplink after its restart")
        g.sh(f"networkctl down {up_link}")
        wait(g, f"! ({is_up()})", 30, "a down right after a networkd restart was missed")
        g.sh(f"networkctl up {up_link}")
        wait(g, is_up(), 60, "an up after a networkd restart was missed")
    with fleet.step(f"3: {g.name}: a new address and back"):
        g.sh(f"printf '[Match]\\nName=en*\\n[Network]\\nAddress=10.66.{i}.9/16\\n' "
             ">/etc/systemd/network/10-uplink.network && networkctl reload")
        wait(g, f"ip -4 -o addr show dev {FAN} | grep -q ' 244.{i}.9.1/8' && "
             f"! ip -4 -o addr show dev {FAN} | grep -q ' 244.{i}.1.1/8'", 60,
             f"the fan did not move to 244.{i}.9.1 after the address change")
        ping(peer, f"244.{i}.9.1")
        g.sh("rm /etc/systemd/network/10-uplink.network && networkctl reload")
        wait(g, f"ip -4 -o addr show dev {FAN} | grep -q ' 244.{i}.1.1/8'", 60,
             f"the fan did not move back to 244.{i}.1.1")
        ping(g, f"244.{p}.1.2", ns="ct")


# In order; they run on one fleet, each on the state the ones before it left.
STEPS = {
    "1-install-reboot": [install_and_reboot],
    "2-mixed-fleet": [mixed_fleet],
    "3-networkd": [networkd_drives],
    "4-unit-life": [life.unit_life, life.purge],
    "5-sandbox": [life.sandbox],
    # After 4 and 5: Docker and Incus change the hosts they ran on (files, firewall).
    "6-workloads": [workloads.workloads],
}
