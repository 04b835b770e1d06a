"""What the scenarios share: the fans every guest has, and checks run in a guest.

Guest i of the fleet has the underlay address 10.66.i.1/16. Every guest has two fans over
it: fan-244 (244.0.0.0/8) and fan-246 (246.0.0.0/8), so guest i's bridges are 244.i.1.1/8
and 246.i.1.1/8, and its "containers" (network namespaces on the bridges) are `ct` at
244.i.1.2 and `cu` at 246.i.1.2.
"""

from guest import SLOW, StepFailed

FAN, FAN2 = "fan-244", "fan-246"
FANS = {FAN: (244, "ct"), FAN2: (246, "cu")}


class Skip:
    def __init__(self, why):
        self.why = why


def is_up(name=FAN):
    return f"ip -o link show dev {name} 2>/dev/null | grep -q '[<,]UP[,>]'"


def wait(g, cond, secs, what, show=None):
    """Polls a shell condition in the guest (no fixed sleeps); fails with `what` and the
    output of the `show` script, run then."""
    # By the guest's clock, not by a count of tries: under load one try can take seconds.
    secs = int(secs * SLOW)
    rc, _ = g.sh(f"end=$((SECONDS + {secs})); while [ $SECONDS -lt $end ]; do ({cond}) && exit 0; "
                 "sleep 0.2; done; exit 1", timeout=secs + 120, check=False)
    if rc != 0:
        detail = "\n" + g.sh(show, check=False)[1] if show else ""
        raise StepFailed(f"{g.name}: {what} (not within {secs} s){detail}")


def ping(g, dst, ns=None, count=3):
    pre = f"ip netns exec {ns} " if ns else ""
    # The ping's own -w decides; the agent's timeout is only for a guest that stopped
    # answering, and a guest under TCG has been seen to pause for 40 s right after a reboot.
    rc, out = g.sh(f"{pre}ping -n -c {count} -i 0.2 -w 15 {dst}", timeout=120, check=False)
    if rc != 0:
        raise StepFailed(f"{g.name}: {'container' if ns else 'host'} cannot ping {dst}\n{out}")


def first_pings(g, targets):
    """One ping each, which must be answered: the first packet to a peer is not lost (no
    learning, no per-peer state to set up). targets: [(netns or None, address)]; one round
    trip to the guest for all of them."""
    lines = [f"{'ip netns exec ' + ns + ' ' if ns else ''}ping -n -c 1 -W 5 {dst} >/dev/null 2>&1 "
             f"|| echo 'lost: {ns or 'host'} -> {dst}'" for ns, dst in targets]
    lost = g.out("\n".join(lines), timeout=30 + 10 * len(targets)).strip()
    if lost:
        raise StepFailed(f"{g.name}: first pings unanswered:\n{lost}")


def container(g, ns, bridge, addr, gw):
    g.sh(f"""set -e
ip netns add {ns}
ip link add {ns}-h mtu 1450 type veth peer name eth0 netns {ns} mtu 1450
ip link set {ns}-h master {bridge} up
ip -n {ns} link set lo up; ip -n {ns} link set eth0 up
{f'ip -n {ns} addr add {addr} dev eth0; ip -n {ns} route add default via {gw}' if addr else ''}""")
