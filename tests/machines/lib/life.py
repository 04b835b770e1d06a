"""Scenarios 4 and 5, on one host of the fleet: the unit's life (reload, restart and upgrade
under traffic, stop, purge) and its sandbox as a real systemd enforces it.

Guest 1 (Debian 12 by default) is the host; the purge is on the last guest, whose files
scenario 1 listed before the install.
"""

import re

from checks import FAN, FAN2, Skip, container, is_up, ping, wait
from guest import StepFailed

DHCP_RULE = '\\n[[fan]]\\nname = "fan-245"\\noverlay = "245.0.0.0/8"\\nunderlay = "10.66.0.0/16"\\ndhcp = true\\n'
# What fanlink's journal must never say under the shipped unit (denied calls and capabilities).
# A call the filter kills (see audit_denials) shows as the unit's main process killed by SIGSYS.
DENIED = (r"EPERM|EACCES|Operation not permitted|Permission denied|os error 1\b|os error 13\b|"
          r"code=killed|status=31/SYS")
# A denial in the kernel log: a seccomp record (type 1326) or an AppArmor or SELinux denial
# (type 1400 is also AppArmor's profile_load STATUS records, at every boot where it is installed).
KERNEL_DENIED = r'type=1326|apparmor="DENIED"|avc: +denied'

# Everything under the package's reach (find's arguments): purge must leave it as it was.
SNAPSHOT = ("/etc /usr /var/lib /opt /srv -xdev \\( -path /var/lib/dpkg -o -path /var/lib/apt "
            "-o -path /var/lib/systemd \\) -prune -o -print")
AUDIT_DROPIN = "/etc/systemd/system/fanlink.service.d/50-machines-audit.conf"


def audit_denials(g, on):
    """Set before the first boot with fanlink (scenario 1): a call the unit's filter denies
    kills fanlink and is audited in the kernel log, instead of failing quietly with EPERM
    (which logs nothing), so scenario 5 sees any across all scenarios. Removed before purge."""
    if on:
        g.sh(f"mkdir -p {AUDIT_DROPIN.rsplit('/', 1)[0]} && printf '[Service]\\nSystemCallErrorNumber=\\n' "
             f">{AUDIT_DROPIN}")
    else:
        g.sh(f"rm -r {AUDIT_DROPIN.rsplit('/', 1)[0]} && systemctl daemon-reload")


def pinging(g, dst):
    """Starts 10 pings a second from the container; returns the stop-and-count script."""
    g.sh(f"ip netns exec ct ping -n -i 0.1 {dst} >/root/ping.log 2>&1 & echo $! >/root/ping.pid")
    wait(g, "grep -q 'bytes from' /root/ping.log", 20, f"no reply from {dst} before the step")


def lost(g):
    """Stops the pings; returns (sent, lost). A restart of the daemon must not cost a packet.
    The one request still in flight when ping is stopped is not a loss (ping's own summary
    counts it, and under TCG a round trip is long enough for that to happen in a run in five):
    a loss is a sequence number with no reply before the last answered one, or more than one
    sent after it."""
    out = g.out("kill -INT $(cat /root/ping.pid); sleep 0.5; cat /root/ping.log")
    answered = {int(m.group(1)) for m in re.finditer(r"bytes from .*icmp_seq=(\d+)", out)}
    for line in out.splitlines():
        if "transmitted" in line:
            sent = int(line.split()[0])
            last = max(answered, default=0)
            return sent, (last - len(answered)) + max(0, sent - last - 1)
    raise StepFailed(f"{g.name}: no ping summary:\n{out[-2000:]}")


def unit_life(fleet):
    if len(fleet.guests) < 2:
        return Skip("needs two guests or more (traffic to another host)")
    g, far = fleet.guests[0], fleet.index(fleet.guests[-1])
    # A rule added + reload: the dhcp fan of scenario 5 appears, fan-244 untouched.
    ifindex = g.out(f"cat /sys/class/net/{FAN}/ifindex")
    g.sh(f"printf '{DHCP_RULE}' >>/etc/fanlink.d/50-test.toml && systemctl reload fanlink")
    wait(g, is_up("fan-245") + " && ip -4 -o addr show dev fan-245 | grep -q ' 245.1.1.1/8'", 30,
         "reload: the new fan did not come up")
    if g.out(f"cat /sys/class/net/{FAN}/ifindex") != ifindex:
        raise StepFailed(f"{g.name}: reload rebuilt {FAN}")
    # Restart under traffic: zero lost.
    pinging(g, "244.2.1.2")
    g.sh("systemctl restart fanlink")
    wait(g, "systemctl is-active -q fanlink", 30, "restart: fanlink not active again")
    g.sh("sleep 2")
    sent, n = lost(g)
    fleet.note(g, "restart", f"{sent} pings at 10/s across `systemctl restart fanlink`, {n} lost")
    if n:
        raise StepFailed(f"{g.name}: {n} of {sent} pings lost across a restart")
    # Stop leaves the fans.
    g.sh("systemctl stop fanlink")
    g.sh(is_up() + " && " + is_up("fan-245"))
    ping(g, "244.2.1.2", ns="ct")
    g.sh("systemctl start fanlink")
    # Upgrade to a rebuilt package with a higher version, under traffic.
    pid = g.out("systemctl show fanlink -p MainPID --value").strip()
    pinging(g, f"244.{far}.1.2")
    g.sh(f"cd /root/files && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./{fleet.deb_up}",
         timeout=300)
    wait(g, f"systemctl is-active -q fanlink && [ \"$(systemctl show fanlink -p MainPID --value)\" != {pid} ]",
         30, "upgrade: the daemon was not restarted")
    g.sh("sleep 2")
    sent, n = lost(g)
    fleet.note(g, "upgrade", f"{sent} pings at 10/s across the upgrade, {n} lost")
    if n:
        raise StepFailed(f"{g.name}: {n} of {sent} pings lost across the upgrade")
    version = g.out("dpkg-query -W -f '${Version}' fanlink")
    if version != fleet.version_up:
        raise StepFailed(f"{g.name}: version {version} after the upgrade")


def purge(fleet):
    """apt purge on the last guest: fans, NAT and every file of the package gone."""
    if len(fleet.guests) < 2:
        return Skip("needs two guests or more (the first one goes on to scenario 5)")
    g = fleet.guests[-1]
    g.sh("ip netns del ct; ip netns del cu; true")
    audit_denials(g, False)
    g.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q fanlink", timeout=120)
    left = g.out(f"ip -o link show | grep -E '{FAN}|{FAN2}|fan-245|fanlink-vx' || true; "
                 "nft list tables | grep -i fan || true; ls -d /run/fanlink /var/lib/fanlink "
                 "/var/lib/private/fanlink /etc/fanlink.d/fanlink.toml 2>/dev/null || true").strip()
    # The admin's own rule file stays (Debian policy: purge removes what the package made);
    # so does its directory, which holds it. Everything else of the package is gone.
    diff = g.out(f"find {SNAPSHOT} | sort >/root/after-purge; "
                 "diff /root/before-install /root/after-purge | grep '^[<>]' | "
                 "grep -v -e /etc/systemd/network -e '^> /etc/fanlink.d$' "
                 "-e '^> /etc/fanlink.d/50-test.toml$' || true").strip()
    if g.sh("test -f /etc/fanlink.d/50-test.toml", check=False)[0] != 0:
        raise StepFailed(f"{g.name}: purge removed the admin's own rule file")
    if left or diff:
        raise StepFailed(f"{g.name}: after purge:\n{left}\n{diff}")


# ---- 5. the sandbox, enforced -------------------------------------------------------------

# The first live run found the shipped unit's IPAddressDeny=any dropping the DHCP of the fan's
# dnsmasq (then a child of fanlink, in its cgroup): no lease. Now it is a unit of its own.
def sandbox(fleet):
    if len(fleet.guests) < 2:
        return Skip("needs scenario 4's DHCP fan, which needs two guests or more")
    g = fleet.guests[0]
    # The DHCP fan hands a lease to a container; its dnsmasq is a unit of its own.
    container(g, "ct5", "fan-245", None, None)
    out = g.out("ip netns exec ct5 busybox udhcpc -i eth0 -n -q -t 10 -T 1 -s /bin/true 2>&1", timeout=60)
    if "obtained" not in out or "245.1.1." not in out:
        detail = g.sh("systemctl status --no-pager fanlink-dhcp@fan-245; "
                      "journalctl --no-pager -u fanlink-dhcp@fan-245 | tail -n 30", check=False)[1]
        raise StepFailed(f"{g.name}: no DHCP lease on fan-245:\n{out}\n{detail}")
    g.sh("ip netns del ct5")
    for unit in ["fanlink.service", "fanlink-dhcp@fan-245.service"]:
        value = exposure(g, unit)
        fleet.note(g, "security", f"live exposure of {unit}: {value}")
        if value > 2.0:
            raise StepFailed(f"{g.name}: live exposure of {unit} {value} > 2.0")
    # The other guests' systemd versions score the same unit too (reported; the budget of 2.0
    # is enforced above, on Debian 12, whose systemd packaging/check-deb scores offline).
    for h in fleet.guests[1:-1]:
        fleet.note(h, "security", f"live exposure of fanlink.service: {exposure(h, 'fanlink.service')}")
    for h in fleet.guests:
        found = h.out(f"journalctl -k --no-pager | grep -E '{KERNEL_DENIED}' || true; "
                      "journalctl --no-pager -u fanlink -u 'fanlink-dhcp@*' | "
                      f"grep -E '{DENIED}' || true").strip()
        if found:
            raise StepFailed(f"{h.name}: denied calls or capabilities:\n{found}")


def exposure(g, unit):
    """`systemd-analyze security` on the running guest: the overall exposure of `unit`."""
    line = g.out(f"systemd-analyze security --no-pager {unit} | tail -n 1").strip()
    try:
        return float(line.split(":")[1].split()[0])
    except (IndexError, ValueError):
        raise StepFailed(f"{g.name}: no exposure level for {unit}: {line}") from None
