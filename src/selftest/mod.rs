//! `fanlink test FAN`: is my fan working? What `fanatic test` was to ubuntu-fan users: a run
//! a person makes when something is wrong, each step passed or failed with what to check.
//!
//! The steps read what `status` reads (the daemon's view, else the rules and the kernel),
//! the links' MTUs and forwarding switches, and then cross the fan: an echo to each peer's
//! underlay address, to its bridge address across the fan, and one the size of the fan MTU
//! with DF set (a PMTU black hole passes small pings and stalls TLS). The judging is pure.

pub mod icmp;

use crate::config::{self, Rule};
use crate::fan::{FanMap, VXLAN_OVERHEAD};
use crate::status::FanStatus;
use anyhow::{anyhow, Result};
use icmp::{Echo, Pinger};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// One step: what was checked, how it ended, and what it found or what to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub step: String,
    pub outcome: Outcome,
    pub detail: String,
}

fn check(step: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    let outcome = if ok { Outcome::Passed } else { Outcome::Failed };
    Check { step: step.into(), outcome, detail: detail.into() }
}

fn skipped(step: impl Into<String>, why: impl Into<String>) -> Check {
    Check { step: step.into(), outcome: Outcome::Skipped, detail: why.into() }
}

/// The fan is wanted up and is up, with nothing left to do (status's drift).
pub fn fan_checks(s: &FanStatus) -> Vec<Check> {
    let up = s.wanted == "up" && s.actual == "up";
    let mut detail = if up {
        format!(
            "{} is up on {} with {}",
            s.name,
            s.underlay_link.as_deref().unwrap_or("?"),
            s.underlay_address.as_deref().unwrap_or("?")
        )
    } else {
        format!("{} is {}, wanted {}: {}", s.name, s.actual, s.wanted, s.why)
    };
    if let Some(error) = &s.error {
        detail.push_str(&format!("; the daemon's last attempt failed: {error}"));
    }
    if !up {
        detail.push_str("; see `fanlink status` and `journalctl -u fanlink`");
    }
    let planned = if s.drift.is_empty() {
        check("devices", true, "bridge, vxlan, program and NAT are as planned")
    } else {
        let what = s.drift.join("; ");
        check(
            "devices",
            false,
            format!("not as planned, still to do: {what}; `fanlink up {}` repairs it", s.name),
        )
    };
    vec![check("fan", up, detail), planned]
}

/// The underlay must carry a fan frame plus the vxlan header: MTU + 50.
pub fn mtu_check(underlay: Option<(&str, u32)>, fan_mtu: Option<u32>) -> Check {
    match (underlay, fan_mtu) {
        (Some((link, under)), Some(fan)) if under >= fan + VXLAN_OVERHEAD => {
            check("mtu", true, format!("{link}'s MTU {under} carries the fan's {fan} + {VXLAN_OVERHEAD}"))
        }
        (Some((link, under)), Some(fan)) => check(
            "mtu",
            false,
            format!(
                "{link}'s MTU {under} leaves room for a fan MTU of {}, the fan's is {fan}: full-size frames \
                 are fragmented or dropped; set the rule's `mtu` to {} or raise {link}'s MTU",
                under.saturating_sub(VXLAN_OVERHEAD),
                under.saturating_sub(VXLAN_OVERHEAD)
            ),
        ),
        _ => skipped("mtu", "the fan's bridge or its underlay link is not there"),
    }
}

/// IPv4 forwarding on the interfaces the fan's routed traffic comes in on.
pub fn forwarding_check(switches: &[(String, Option<bool>)]) -> Check {
    let off: Vec<&str> =
        switches.iter().filter(|(_, on)| *on != Some(true)).map(|(i, _)| i.as_str()).collect();
    if switches.is_empty() {
        return skipped("forwarding", "the fan's bridge or its underlay link is not there");
    }
    let names = switches.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>().join(" and ");
    if off.is_empty() {
        check("forwarding", true, format!("IPv4 forwarding is on for {names}"))
    } else {
        check(
            "forwarding",
            false,
            format!(
                "IPv4 forwarding is off for {} (net.ipv4.conf.IFACE.forwarding): workloads cannot leave the \
                 fan; fanlink turns it on with the fan, so something turned it off",
                off.join(" and ")
            ),
        )
    }
}

/// A workload's traffic leaving the overlay is masqueraded: the fan's table is there.
pub fn nat_check(rule: &Rule, s: &FanStatus) -> Check {
    if !rule.masquerade {
        return skipped("nat", "masquerade = false in the rule: traffic leaves with overlay addresses");
    }
    // The op that would write it, as status lists it (model.rs: `Op::WriteNat`).
    let missing = s.drift.iter().any(|d| d.contains("nat table"));
    if s.nat && !missing {
        check(
            "nat",
            true,
            format!("traffic from {} to the rest of the world is masqueraded", rule.map.overlay()),
        )
    } else {
        check(
            "nat",
            false,
            format!(
                "the fan's NAT table is missing or not as planned: workloads' traffic would leave with \
                 overlay source addresses; `fanlink up {}` restores it",
                rule.name
            ),
        )
    }
}

/// Hosts on the fan this one talked to recently: overlay neighbours on the bridge (from
/// /proc/net/arp), mapped to the underlay host that owns them, this host excepted.
pub fn peers_from_arp(arp: &str, bridge: &str, map: &FanMap, own: Option<Ipv4Addr>) -> Vec<Ipv4Addr> {
    let mut peers = Vec::new();
    for line in arp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(ip), Some(flags), Some(dev)) = (f.first(), f.get(2), f.get(5)) else { continue };
        let complete = u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|v| v & 0x2 != 0);
        let Some(host) = ip.parse().ok().and_then(|ip| map.underlay_of(ip)) else { continue };
        if *dev == bridge && complete && Some(host) != own && !peers.contains(&host) {
            peers.push(host);
        }
    }
    peers
}

/// What the echoes to one peer found.
pub struct PeerProbe {
    pub peer: Ipv4Addr,
    pub bridge: Ipv4Addr,
    pub underlay: Echo,
    pub overlay: Echo,
    /// The echo of the fan MTU's size with DF set; not sent when the small one failed.
    pub full: Option<Echo>,
}

/// The peer steps: its bridge address answers across the fan, and a full-size frame does.
pub fn peer_checks(p: &PeerProbe, local: Option<Ipv4Addr>, fan_mtu: u32) -> Vec<Check> {
    let local = local.map_or("this host".to_string(), |a| a.to_string());
    let step = format!("peer {}", p.peer);
    let mut out = vec![match (&p.overlay, &p.underlay) {
        (Echo::Answered(t), _) => {
            check(step.clone(), true, format!("{} answers across the fan in {:.1} ms", p.bridge, ms(*t)))
        }
        (_, Echo::Answered(_)) => check(
            step.clone(),
            false,
            format!(
                "{} answers on the underlay but its fan address {} does not: is its fan up (`fanlink test` \
                 there), and does UDP 8472 (vxlan) pass both ways between {local} and {}?",
                p.peer, p.bridge, p.peer
            ),
        ),
        _ => check(
            step.clone(),
            false,
            format!(
                "neither {} nor its fan address {} answers: is the host up and on the underlay (or is ICMP \
                 filtered on the way)?",
                p.peer, p.bridge
            ),
        ),
    }];
    let step = format!("{step} full-size");
    out.push(match &p.full {
        None => skipped(step, "the small echo did not cross"),
        Some(Echo::Answered(_)) => {
            check(step, true, format!("a {fan_mtu}-byte packet with DF set crosses the fan"))
        }
        Some(e) => {
            let how = match e {
                Echo::TooBig => "this host's route is narrower than that (EMSGSIZE)".to_string(),
                Echo::Unreachable(4) => "a router on the path says it needs fragmenting".to_string(),
                Echo::Unreachable(code) => format!("it came back unreachable (ICMP code {code})"),
                _ => "it got no answer while small ones do".to_string(),
            };
            check(
                step,
                false,
                format!(
                    "a {fan_mtu}-byte packet with DF set does not cross: {how}. The path between {local} and \
                     {} carries less than {} bytes: lower the fan's `mtu` or raise the path's",
                    p.peer,
                    fan_mtu + VXLAN_OVERHEAD
                ),
            )
        }
    });
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends `tries` echoes until one answers; the last outcome otherwise.
fn probe(pinger: &mut Pinger, to: Ipv4Addr, size: usize, df: bool, tries: u32) -> Result<Echo> {
    let mut last = Echo::Silent;
    for _ in 0..tries {
        last = pinger.echo(to, size, df, Duration::from_secs(1))?;
        if matches!(last, Echo::Answered(_) | Echo::TooBig) {
            break;
        }
    }
    Ok(last)
}

/// `net.ipv4.conf.IFACE.forwarding`, in this process's network namespace (what the daemon
/// reads and writes); unreadable is `None`.
fn forwarding(iface: &str) -> Option<bool> {
    crate::datapath::sysctl::forwarding(iface).ok().flatten()
}

/// `fanlink test`: every step, printed as it ends; exit 1 when any failed.
pub fn run(dirs: &[PathBuf], runtime_dir: &Path, name: &str, given: &[Ipv4Addr], json: bool) -> Result<u8> {
    let (rules, errors) = config::load(dirs);
    let rule = rules.iter().find(|r| r.name.as_str() == name).ok_or_else(|| match errors.is_empty() {
        true => anyhow!("no fan named \"{name}\" in the rules"),
        false => anyhow!("no valid fan named \"{name}\"; the rules have errors (see `fanlink check`)"),
    })?;
    let status = crate::oneshot::current_status(dirs, runtime_dir)?;
    let s = status.fans.iter().find(|f| f.name == name).ok_or_else(|| anyhow!("no status for {name}"))?;
    let mut checks = fan_checks(s);

    let mut sys = crate::system::System::open()?;
    let links = sys.snapshot()?.host_links();
    let mtu_of = |n: &str| links.iter().find(|l| l.name == n).map(|l| l.mtu);
    let fan_mtu = mtu_of(name);
    let underlay = s.underlay_link.as_deref().and_then(|l| Some((l, mtu_of(l)?)));
    checks.push(mtu_check(underlay, fan_mtu));
    let ifaces = [Some(name), s.underlay_link.as_deref()];
    let present: Vec<&str> = ifaces.into_iter().flatten().filter(|i| mtu_of(i).is_some()).collect();
    checks
        .push(forwarding_check(&present.iter().map(|i| (i.to_string(), forwarding(i))).collect::<Vec<_>>()));
    checks.push(nat_check(rule, s));

    let local: Option<Ipv4Addr> = s.underlay_address.as_deref().and_then(|a| a.parse().ok());
    let peers = if given.is_empty() {
        let arp = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
        peers_from_arp(&arp, name, &rule.map, local)
    } else {
        given.to_vec()
    };
    let up = s.actual == "up";
    match (peers.is_empty(), up) {
        (true, _) => checks.push(skipped(
            "peers",
            "no peer given (--peer ADDRESS, a host's underlay address) and no host on the fan talked to this one \
             recently",
        )),
        (false, false) => checks.push(skipped("peers", "the fan is not up here")),
        (false, true) => {
            let mut pinger = Pinger::new().map_err(|e| anyhow!("an ICMP socket (needs root): {e}"))?;
            let mtu = fan_mtu.unwrap_or(1500 - VXLAN_OVERHEAD);
            for peer in peers {
                let bridge = rule.map.bridge_address(peer).map_err(|e| anyhow!("--peer {peer}: {e}"))?.addr();
                let underlay = probe(&mut pinger, peer, 84, false, 2)?;
                let overlay = probe(&mut pinger, bridge, 84, false, 3)?;
                let full = match overlay {
                    Echo::Answered(_) => Some(probe(&mut pinger, bridge, mtu as usize, true, 2)?),
                    _ => None,
                };
                checks.extend(peer_checks(&PeerProbe { peer, bridge, underlay, overlay, full }, local, mtu));
            }
        }
    }

    let failed = checks.iter().filter(|c| c.outcome == Outcome::Failed).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "fan": name, "checks": checks }))?);
    } else {
        for c in &checks {
            let word = match c.outcome {
                Outcome::Passed => "ok",
                Outcome::Failed => "FAILED",
                Outcome::Skipped => "skipped",
            };
            println!("{word:<8}{}: {}", c.step, c.detail);
        }
        let passed = checks.iter().filter(|c| c.outcome == Outcome::Passed).count();
        println!("{name}: {passed} of {} steps passed, {failed} failed", checks.len());
    }
    Ok(if failed > 0 { crate::commands::EXIT_PROBLEMS } else { 0 })
}

#[cfg(test)]
mod tests;
