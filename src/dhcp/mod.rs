//! DHCP on a fan's bridge (`dhcp = true`): dnsmasq, as LXD and `fanctl --dhcp` run it. It
//! serves the DHCP part of the host's slice (its address plan, `addrplan`: never an address
//! of the host's or of Docker's share), tells clients the fan MTU (option 26: VMs hang on
//! TLS without it) and the bridge as their router, listens on the bridge only, and reads no
//! /etc/dnsmasq.conf. It follows the fan: started when the fan comes up, stopped when it
//! goes down, restarted with a new range when the slice moves.
//!
//! Who runs it depends on who runs fanlink. Under systemd each fan's dnsmasq is a unit of
//! its own, `fanlink-dhcp@FAN.service` (`units`): as fanlink's child it would share
//! fanlink's cgroup, whose `IPAddressDeny=any` drops every DHCP packet (found on a booted
//! Debian 12 guest). Elsewhere it is a supervised child (`children`).

mod children;
mod units;

use crate::ifname::IfName;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What one fan's dnsmasq is started with; a change means a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    pub fan: IfName,
    /// The bridge's address with the overlay's prefix length, e.g. 250.3.4.1/8.
    pub bridge_address: Ipv4Net,
    /// The first and last address handed out: the DHCP part of the slice's address plan,
    /// e.g. 250.3.4.2-250.3.4.127 (Docker's share is the rest).
    pub range: (Ipv4Addr, Ipv4Addr),
    pub mtu: u32,
    /// The lease time, in dnsmasq's syntax ("1h").
    pub lease: String,
}

/// A lease time as dnsmasq reads it ("3600", "45m", "12h", "7d", "2w", "infinite"), in
/// seconds; `None` if dnsmasq would not take it.
pub fn lease_seconds(text: &str) -> Option<u64> {
    if text == "infinite" {
        return Some(u64::MAX);
    }
    let at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let unit = match &text[at..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 604_800,
        _ => return None,
    };
    text[..at].parse::<u64>().ok().map(|n| n.saturating_mul(unit))
}

/// The fan's own dnsmasq options, as long option names without their `--` (the form of a
/// dnsmasq configuration file). `state_dir` keeps the lease file across restarts.
pub fn options(cfg: &DhcpConfig, state_dir: &Path) -> Vec<String> {
    let (first, last) = cfg.range;
    let router = cfg.bridge_address.addr();
    vec![
        // No /etc/hosts: this instance is fanlink's alone.
        "no-hosts".into(),
        format!("interface={}", cfg.fan),
        "except-interface=lo".into(),
        // Bound to the bridge's address only: no DNS or DHCP on any other interface, and no
        // clash with another resolver on the host.
        "bind-dynamic".into(),
        format!("dhcp-range={first},{last},{},{}", cfg.bridge_address.netmask(), cfg.lease),
        format!("dhcp-option=option:router,{router}"),
        format!("dhcp-option=option:mtu,{}", cfg.mtu),
        "dhcp-authoritative".into(),
        // The ICMP probe before an offer needs a raw socket, and only delays the offer.
        "no-ping".into(),
        format!("dhcp-leasefile={}", state_dir.join(format!("{}.leases", cfg.fan)).display()),
        "log-facility=-".into(),
        "log-dhcp".into(),
    ]
}

/// dnsmasq's command line as fanlink's child.
pub fn args(cfg: &DhcpConfig, state_dir: &Path) -> Vec<String> {
    // Foreground, and no user or group change (dnsmasq's debug mode): the switch would need
    // CAP_SETGID and setgroups(2); dnsmasq stays inside the caller's sandbox instead.
    // No /etc/dnsmasq.conf.
    ["--no-daemon".to_string(), "--conf-file=/dev/null".to_string()]
        .into_iter()
        .chain(options(cfg, state_dir).into_iter().map(|o| format!("--{o}")))
        .collect()
}

/// The dnsmasq servers of the fans, run one way or the other (see the module's comment).
pub enum Supervisor {
    Children(children::Children),
    Units(units::Units),
}

impl Supervisor {
    /// Units when fanlink is itself a systemd service (systemd sets `INVOCATION_ID` for each
    /// service it starts), children otherwise.
    pub fn new(state_dir: PathBuf, runtime_dir: PathBuf, exited: Arc<dyn Fn(IfName) + Send + Sync>) -> Self {
        if std::env::var_os("INVOCATION_ID").is_some() {
            Supervisor::Units(units::Units::new(state_dir))
        } else {
            Supervisor::Children(children::Children::new(state_dir, runtime_dir, exited))
        }
    }

    /// Makes dnsmasq serve `cfg`: started, or restarted if its configuration changed.
    /// `bus`, the system bus, is what starts a unit; without it that waits for the next call.
    pub fn ensure(&mut self, cfg: DhcpConfig, bus: Option<&crate::networkd::Bus>) {
        match self {
            Supervisor::Children(c) => c.ensure(cfg),
            Supervisor::Units(u) => u.ensure(cfg, bus),
        }
    }

    /// Stops every dnsmasq but those of `keep`.
    pub fn retain(&mut self, keep: &[IfName], bus: Option<&crate::networkd::Bus>) {
        match self {
            Supervisor::Children(c) => c.retain(keep),
            Supervisor::Units(u) => u.retain(keep, bus),
        }
    }

    /// When the daemon exits: children would outlive it unsupervised and hold the ports, so
    /// they stop (clients keep their leases); units stay, like the fans they serve.
    pub fn stop_all(&mut self) {
        if let Supervisor::Children(c) = self {
            c.retain(&[]);
        }
    }

    /// Called when a child's output ended.
    pub fn reap(&mut self, fan: &IfName) {
        if let Supervisor::Children(c) = self {
            c.reap(fan);
        }
    }

    /// When a quickly-dead child may be tried again, if one waits.
    pub fn next_retry(&self) -> Option<Instant> {
        match self {
            Supervisor::Children(c) => c.next_retry(),
            Supervisor::Units(_) => None,
        }
    }

    /// What serves a fan, for `status`: "dnsmasq PID" or the unit's name.
    pub fn serving(&self, fan: &IfName) -> Option<String> {
        match self {
            Supervisor::Children(c) => c.pid(fan).map(|pid| format!("dnsmasq {pid}")),
            Supervisor::Units(u) => u.serving(fan),
        }
    }
}

/// fan-250 on the host whose slice is 250.3.4.0/24, for the tests.
#[cfg(test)]
fn example() -> DhcpConfig {
    DhcpConfig {
        fan: "fan-250".parse().unwrap(),
        bridge_address: "250.3.4.1/8".parse().unwrap(),
        range: ("250.3.4.2".parse().unwrap(), "250.3.4.127".parse().unwrap()),
        mtu: 1450,
        lease: "1h".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_times_in_dnsmasqs_syntax() {
        let cases = [("3600", Some(3600)), ("45m", Some(2700)), ("12h", Some(43200)), ("7d", Some(604_800))];
        for (text, seconds) in
            cases.into_iter().chain([("2w", Some(1_209_600)), ("infinite", Some(u64::MAX))])
        {
            assert_eq!(lease_seconds(text), seconds, "{text}");
        }
        for bad in ["", "h", "1y", "1h ", "-5m", "1.5h"] {
            assert_eq!(lease_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dnsmasq_is_bound_to_the_bridge_and_tells_the_mtu() {
        let cfg = example();
        let args = args(&cfg, Path::new("/var/lib/fanlink")).join(" ");
        for want in [
            "--no-daemon --conf-file=/dev/null",
            "--interface=fan-250 --except-interface=lo --bind-dynamic",
            "--dhcp-range=250.3.4.2,250.3.4.127,255.0.0.0,1h",
            "--dhcp-option=option:router,250.3.4.1",
            "--dhcp-option=option:mtu,1450",
            "--dhcp-authoritative",
            "--dhcp-leasefile=/var/lib/fanlink/fan-250.leases",
        ] {
            assert!(args.contains(want), "{want} in {args}");
        }
        let week = DhcpConfig { lease: "7d".into(), ..cfg };
        let week = super::args(&week, Path::new("/var/lib/fanlink")).join(" ");
        assert!(week.contains("--dhcp-range=250.3.4.2,250.3.4.127,255.0.0.0,7d "), "{week}");
    }
}
