//! The commands that compute and report without touching the network: `check`, `addr`,
//! `docker-args`. Each returns the process exit status.

use crate::addrplan::PlanReport;
use crate::cli::{FanName, FanSelector};
use crate::config::{self, Rule};
use crate::fan::{FanMap, VXLAN_OVERHEAD};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Exit status of a run that found problems the user asked about (bad rules, drift).
pub const EXIT_PROBLEMS: u8 = 1;

/// The rule directories in effect: `--rules-dir`s if given, else the defaults.
pub fn rule_dirs(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        config::DEFAULT_DIRS.iter().map(PathBuf::from).collect()
    } else {
        given.to_vec()
    }
}

/// `fanlink check`: every fan on one line, every error on stderr.
pub fn check(dirs: &[PathBuf]) -> Result<u8> {
    let (rules, errors) = config::load_all(dirs);
    for rule in &rules {
        println!("{}", describe(rule));
    }
    for error in &errors {
        eprintln!("{error}");
    }
    if errors.is_empty() {
        if rules.is_empty() {
            eprintln!("fanlink: no fans defined (looked in {})", join(dirs));
        }
        Ok(0)
    } else {
        eprintln!("fanlink: {} error(s) in the rules", errors.len());
        Ok(EXIT_PROBLEMS)
    }
}

fn join(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// One line per fan, as `check` lists it.
pub fn describe(rule: &Rule) -> String {
    let link = rule.interface.as_ref().map_or("auto".to_string(), |i| i.to_string());
    let mtu = rule.mtu.map_or("auto".to_string(), |m| m.to_string());
    let nat = if rule.masquerade { "on" } else { "off" };
    let mut extra = String::new();
    if rule.dhcp {
        extra += &format!("  dhcp {}", rule.dhcp_lease.as_deref().unwrap_or("1h"));
    }
    if !rule.enabled {
        extra += "  disabled";
    }
    format!(
        "{}  overlay {}  underlay {}  vni {}  link {}  mtu {}  masquerade {}{extra}  ({})",
        rule.name,
        rule.map.overlay(),
        rule.map.underlay(),
        rule.map.vni(),
        link,
        mtu,
        nat,
        rule.origin
    )
}

/// The fan a `FanSelector` names and this host's place on it.
struct Selected {
    rule: Rule,
    address: Ipv4Addr,
    /// The fan MTU when the address was read from the kernel (the rule's, or the link's - 50).
    mtu: Option<u32>,
}

/// Resolves a `FanSelector`: the named rule, or a rule of the given prefixes with the default
/// split; `--address`, or the address `fanlink up` would use, read from the kernel.
fn select(dirs: &[PathBuf], fan: &FanSelector, name: Option<&FanName>) -> Result<Selected> {
    let rule = match (fan.fan.overlay, fan.fan.underlay) {
        (Some(o), Some(u)) => {
            let map = FanMap::new(o, u).map_err(|e| anyhow!(e))?;
            let name = match name {
                Some(n) => n.or_default(&map)?,
                None => config::default_name(&map),
            };
            let origin = "the command line".to_string();
            let split = Default::default();
            let (mtu, dhcp, masquerade, by_hand) = (None, false, true, true);
            let (dhcp_lease, enabled) = (None, true);
            Rule {
                name,
                map,
                interface: None,
                mtu,
                masquerade,
                dhcp,
                split,
                dhcp_lease,
                enabled,
                origin,
                by_hand,
            }
        }
        _ => named(dirs, fan.fan.name.as_deref().unwrap_or_default())?,
    };
    if let Some(address) = fan.address {
        return Ok(Selected { rule, address, mtu: None });
    }
    let links = crate::system::System::open()?.snapshot()?.host_links();
    let underlay = crate::underlay::find(&rule, &links)
        .map_err(|e| anyhow!("{}: {e}; give this host's underlay address with --address", rule.name))?;
    Ok(Selected { rule, address: underlay.address, mtu: Some(underlay.mtu) })
}

fn named(dirs: &[PathBuf], name: &str) -> Result<Rule> {
    let (rules, errors) = config::load(dirs);
    match rules.into_iter().find(|r| r.name.as_str() == name) {
        Some(rule) => Ok(rule),
        None if !errors.is_empty() => {
            bail!("no valid fan named \"{name}\"; the rules have errors (see `fanlink check`)")
        }
        None => bail!("no fan named \"{name}\" in {}", join(dirs)),
    }
}

#[derive(Serialize)]
struct AddrReport {
    overlay: String,
    underlay: String,
    address: Ipv4Addr,
    slice: String,
    bridge_address: String,
    vni: u32,
    hosts_first: Ipv4Addr,
    hosts_last: Ipv4Addr,
    plan: PlanReport,
}

/// `fanlink addr`: the host's place on the fan and its slice's address plan.
pub fn addr(dirs: &[PathBuf], fan: &FanSelector, json: bool) -> Result<u8> {
    let Selected { rule, address, .. } = select(dirs, fan, None)?;
    let map = rule.map;
    let slice = map.slice(address)?;
    let plan = rule.addr_plan(address).map_err(|e| anyhow!(e))?;
    let underlay = map.underlay();
    let report = AddrReport {
        overlay: map.overlay().to_string(),
        underlay: underlay.to_string(),
        address,
        slice: slice.to_string(),
        bridge_address: map.bridge_address(address)?.to_string(),
        vni: map.vni(),
        hosts_first: Ipv4Addr::from(u32::from(underlay.network()) + 1),
        hosts_last: Ipv4Addr::from(u32::from(underlay.broadcast()) - 1),
        plan: PlanReport::from(&plan),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("overlay         {}", report.overlay);
        println!("underlay        {}", report.underlay);
        println!("address         {}", report.address);
        println!("slice           {}", report.slice);
        println!("bridge address  {}", report.bridge_address);
        println!("vni             {}", report.vni);
        println!(
            "fan hosts       {} - {} (each owns a /{})",
            report.hosts_first,
            report.hosts_last,
            slice.prefix_len()
        );
        println!("host addresses  {}", plan.host_text());
        println!("dhcp range      {}", plan.dhcp_text());
        println!("docker range    {}", plan.docker_text());
    }
    Ok(0)
}

/// The default fan MTU when nothing says otherwise: a 1500-byte underlay minus vxlan.
const DEFAULT_FAN_MTU: u32 = 1500 - VXLAN_OVERHEAD;

/// `fanlink docker-args`: one line of words for `docker network create $(...)`.
pub fn docker_args(
    dirs: &[PathBuf],
    fan: &FanSelector,
    name: &FanName,
    mtu: Option<u32>,
    network: Option<&str>,
) -> Result<u8> {
    if let Some(network) = network {
        crate::docker_args::check_network_name(network).map_err(|e| anyhow!(e))?;
    }
    let Selected { rule, address, mtu: found } = select(dirs, fan, Some(name))?;
    let plan = rule.addr_plan(address).map_err(|e| anyhow!(e))?;
    let mtu = mtu.or(rule.mtu).or(found).unwrap_or(DEFAULT_FAN_MTU);
    let network = network.unwrap_or(rule.name.as_str());
    let words = crate::docker_args::words(rule.map.overlay(), &plan, &rule.name, mtu, network)
        .map_err(|e| anyhow!(e))?;
    println!("{}", words.join(" "));
    Ok(0)
}
