//! The commands that change this host once, as fanctl did: `up`, `down`, `plan`. Each
//! observes, plans and applies in one go; the daemon does the same on every event.

use crate::cli::UpTarget;
use crate::config::{self, Rule, DISABLED};
use crate::datapath::nft;
use crate::fan::{FanMap, VXLAN_OVERHEAD};
use crate::ifname::IfName;
use crate::model::{Observed, Op, Underlay, Want};
use crate::plan::{plan, plan_absent_all, FanPlan};
use crate::system::{Snapshot, System};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The rule `up` acts on: a configured one, or one made from fanctl-style arguments.
fn target_rule(dirs: &[PathBuf], target: &UpTarget) -> Result<Rule> {
    if let (Some(overlay), Some(underlay)) = (target.fan.overlay, target.fan.underlay) {
        let map = FanMap::new(overlay, underlay).map_err(|e| anyhow!(e))?;
        let name = target.name.or_default(&map)?;
        let origin = "the command line".to_string();
        return Ok(Rule {
            name,
            map,
            interface: None,
            mtu: None,
            masquerade: true,
            dhcp: false,
            split: Default::default(),
            dhcp_lease: None,
            enabled: true,
            origin,
            by_hand: true,
        });
    }
    named_rule(dirs, target.fan.name.as_deref().unwrap_or_default())
}

fn named_rule(dirs: &[PathBuf], name: &str) -> Result<Rule> {
    let (rules, errors) = config::load(dirs);
    for e in &errors {
        log::warn!("{e}");
    }
    rules.into_iter().find(|r| r.name.as_str() == name).ok_or_else(|| match errors.is_empty() {
        true => anyhow!("no fan named \"{name}\" in the rules (see `fanlink check`)"),
        false => anyhow!("no valid fan named \"{name}\"; the rules have errors (see `fanlink check`)"),
    })
}

/// Where the fan goes on this host: the given address (on whichever link holds it), or
/// the rule's underlay link and address.
fn underlay_for(rule: &Rule, snap: &Snapshot, address: Option<Ipv4Addr>) -> Result<Underlay> {
    let links = snap.host_links();
    let Some(address) = address else {
        return crate::underlay::find(rule, &links).map_err(|e| anyhow!("{}: {e}", rule.name));
    };
    let link = links
        .iter()
        .find(|l| l.addresses.iter().any(|a| a.addr() == address))
        .ok_or_else(|| anyhow!("no link on this host has the address {address}"))?;
    let mtu = rule.mtu.unwrap_or(link.mtu.saturating_sub(VXLAN_OVERHEAD));
    Ok(Underlay { link: link.name.parse().map_err(|e| anyhow!("{e}"))?, address, mtu })
}

/// The NAT tables fanlink owns; a host without nft has none, which `apply` then reports
/// if a fan needs one.
fn nat_tables() -> Vec<nft::NatTable> {
    nft::list().unwrap_or_else(|e| {
        log::debug!("cannot list nft tables: {e}");
        Vec::new()
    })
}

/// Plans `want` for `rule` against the kernel as it is now (`nat`: fanlink's NAT tables,
/// read once per command: one nf_tables dump).
fn plan_one(
    sys: &mut System,
    snap: &mut Snapshot,
    nat: &[nft::NatTable],
    rule: &Rule,
    want: Want,
) -> Result<Vec<Op>> {
    let fans = BTreeSet::from([rule.name.clone()]);
    let observed: Observed = sys.observe(snap, &fans, nat)?;
    let plans = plan(&[(rule.clone(), want)], &observed);
    plans.into_iter().next().expect("one plan per target").result.map_err(|e| anyhow!("{}: {e}", rule.name))
}

/// Applies ops in order, printing each on stdout once it is done (not also as a log line:
/// `-v` would show it twice); the first failure stops the rest (the next run completes
/// what is missing).
fn apply_all(sys: &mut System, fan: &IfName, ops: &[Op], limit: Option<usize>) -> Result<()> {
    crate::system::preflight(ops).map_err(|e| anyhow!("{fan}: {e}"))?;
    for op in ops.iter().take(limit.unwrap_or(usize::MAX)) {
        sys.apply(op).with_context(|| format!("{fan}: {op}"))?;
        println!("{fan}: {op}");
    }
    Ok(())
}

/// `fanlink up`.
pub fn up(dirs: &[PathBuf], target: &UpTarget, stop_after: Option<usize>) -> Result<u8> {
    let rule = target_rule(dirs, target)?;
    if !rule.enabled {
        bail!(
            "{} is disabled by its rule ({}: enable = false); set enable = true to bring it up",
            rule.name,
            rule.origin
        );
    }
    let mut sys = System::open()?;
    let mut snap = sys.snapshot()?;
    let underlay = underlay_for(&rule, &snap, target.address)?;
    let ops = plan_one(&mut sys, &mut snap, &nat_tables(), &rule, Want::Up(underlay.clone()))?;
    if ops.is_empty() {
        println!("{}: up on {} with {}", rule.name, underlay.link, underlay.address);
    } else {
        sys.check_kernel().map_err(|e| anyhow!("{}: {e}", rule.name))?;
    }
    let result = apply_all(&mut sys, &rule.name, &ops, stop_after);
    // A failed `up` of a new fan takes away what it made (a completed one stays as it is:
    // the next `up` or the daemon finishes it).
    if result.is_err() && ops.iter().any(|op| matches!(op, Op::CreateBridge { .. })) {
        if let Err(e) = take_down(&mut sys, &rule.name) {
            eprintln!("fanlink: {}: removing what the failed up made: {e:#}", rule.name);
        }
    }
    result?;
    Ok(0)
}

/// Removes a fan as `down` does, quietly.
fn take_down(sys: &mut System, fan: &IfName) -> Result<()> {
    let mut snap = sys.snapshot()?;
    let observed = sys.observe(&mut snap, &BTreeSet::from([fan.clone()]), &nat_tables())?;
    for p in plan_absent_all(std::slice::from_ref(fan), &observed) {
        for op in p.result.map_err(|e| anyhow!(e))? {
            log::info!("{fan}: undo: {op}");
            sys.apply(&op)?;
        }
    }
    Ok(())
}

/// `fanlink down NAME` or `--all`: removes exactly what fanlink made, rule or not; while
/// workloads are attached to a bridge, nothing at all unless `force`.
pub fn down(name: Option<&str>, all: bool, force: bool) -> Result<u8> {
    let mut sys = System::open()?;
    let mut snap = sys.snapshot()?;
    let nat = nat_tables();
    let fans: BTreeSet<IfName> = if all {
        let mut fans = snap.fan_names(&[]);
        fans.extend(nat.iter().filter_map(|t| t.fan.as_deref()?.parse().ok()));
        fans
    } else {
        let name = name.unwrap_or_default();
        BTreeSet::from([name.parse::<IfName>().map_err(|e| anyhow!("{e}"))?])
    };
    let busy: Vec<String> = fans
        .iter()
        .filter_map(|fan| {
            let ports = snap.workloads(fan);
            (!ports.is_empty()).then(|| format!("{fan} has {} attached ({})", ports.len(), ports.join(", ")))
        })
        .collect();
    if !busy.is_empty() && !force {
        bail!(
            "{}: workloads still use the fan; nothing was taken down. Stop them (or move them to \
             another bridge), or add --force to take the fan down under them",
            busy.join("; ")
        );
    }
    let observed = sys.observe(&mut snap, &fans, &nat)?;
    let names: Vec<IfName> = observed.fans.keys().cloned().collect();
    let mut failed = Vec::new();
    for FanPlan { fan, result } in plan_absent_all(&names, &observed) {
        let result = result.map_err(|e| anyhow!(e)).and_then(|ops| {
            if ops.is_empty() {
                println!("{fan}: not on this host");
            }
            apply_all(&mut sys, &fan, &ops, None)
        });
        if let Err(e) = result {
            eprintln!("fanlink: {e:#}");
            failed.push(fan.to_string());
        }
    }
    match failed.is_empty() {
        true => Ok(0),
        false => bail!("could not take down {}", failed.join(", ")),
    }
}

/// `fanlink plan [NAME]`: what `up` would do for each fan, applying nothing.
pub fn plan_cmd(dirs: &[PathBuf], name: Option<&str>, address: Option<Ipv4Addr>) -> Result<u8> {
    let rules = match name {
        Some(name) => vec![named_rule(dirs, name)?],
        None => config::load(dirs).0,
    };
    let mut sys = System::open()?;
    let mut snap = sys.snapshot()?;
    let nat = nat_tables();
    let mut problems = false;
    for rule in &rules {
        if !rule.enabled {
            println!("{}: disabled (enable = false): nothing to do", rule.name);
            continue;
        }
        let ops = underlay_for(rule, &snap, address)
            .and_then(|underlay| plan_one(&mut sys, &mut snap, &nat, rule, Want::Up(underlay)));
        match ops {
            Ok(ops) if ops.is_empty() => println!("{}: nothing to do", rule.name),
            Ok(ops) => ops.iter().for_each(|op| println!("{}: {op}", rule.name)),
            Err(e) => {
                problems = true;
                eprintln!("fanlink: {e:#}");
            }
        }
    }
    Ok(if problems { 2 } else { 0 })
}

/// `fanlink status`: the daemon's view if one runs, else the rules against the kernel.
pub fn status(dirs: &[PathBuf], runtime_dir: &std::path::Path, json: bool) -> Result<u8> {
    let status = current_status(dirs, runtime_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", crate::status::render(&status));
    }
    Ok(0)
}

/// The daemon's view of every fan if one runs, else the rules against the kernel.
pub fn current_status(dirs: &[PathBuf], runtime_dir: &std::path::Path) -> Result<crate::status::Status> {
    match ask_daemon(runtime_dir) {
        Ok(status) => Ok(status),
        Err(e) => {
            log::debug!("no daemon answered: {e:#}");
            local_status(dirs)
        }
    }
}

fn ask_daemon(runtime_dir: &std::path::Path) -> Result<crate::status::Status> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(crate::daemon::control_path(runtime_dir))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.write_all(b"status\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(serde_json::from_str(&reply)?)
}

fn local_status(dirs: &[PathBuf]) -> Result<crate::status::Status> {
    let (rules, _) = config::load(dirs);
    let mut sys = System::open()?;
    let mut snap = sys.snapshot()?;
    let links = snap.host_links();
    // (fan, its rule, what `up` would want, why); fans of ours without a rule would go.
    let mut fans: Vec<(IfName, Option<&Rule>, Want, String)> = rules
        .iter()
        .map(|r| match crate::underlay::find(r, &links) {
            _ if !r.enabled => (r.name.clone(), Some(r), Want::Down, DISABLED.into()),
            Ok(u) => {
                let why = format!("{} has {}", u.link, u.address);
                (r.name.clone(), Some(r), Want::Up(u), why)
            }
            Err(e) => (r.name.clone(), Some(r), Want::Down, e),
        })
        .collect();
    for (fan, by_hand) in snap.kernel_fans().into_iter().filter(|(f, _)| !rules.iter().any(|r| &r.name == f))
    {
        match by_hand {
            true => {
                fans.push((fan, None, Want::Keep, "made by hand with `fanlink up`; left as it is".into()))
            }
            false => fans.push((fan, None, Want::Absent, "no rule defines it".into())),
        }
    }
    let names = fans.iter().map(|f| f.0.clone()).collect();
    let observed = sys.observe(&mut snap, &names, &nat_tables())?;
    let targets: Vec<_> =
        fans.iter().filter_map(|(_, rule, want, _)| Some(((*rule)?.clone(), want.clone()))).collect();
    let orphans: Vec<IfName> =
        fans.iter().filter(|f| f.1.is_none() && f.2 != Want::Keep).map(|f| f.0.clone()).collect();
    let mut by_fan: std::collections::BTreeMap<IfName, FanPlan> = plan(&targets, &observed)
        .into_iter()
        .chain(plan_absent_all(&orphans, &observed))
        .map(|p| (p.fan.clone(), p))
        .collect();
    let plans: Vec<FanPlan> = fans
        .iter()
        .map(|(name, ..)| {
            by_fan.remove(name).unwrap_or(FanPlan { fan: name.clone(), result: Ok(Vec::new()) })
        })
        .collect();
    let decided: Vec<_> = fans.into_iter().map(|(_, rule, want, why)| (rule, want, why)).collect();
    Ok(crate::status::collect(
        "no daemon: the rules against the kernel (up wherever an underlay address is found)",
        &decided,
        &observed,
        &plans,
        |seen| seen.vxlan.as_ref().and_then(|v| sys.drops(v.index).ok().flatten()),
    ))
}
