//! The commands that compute and report without touching the network: `check`, `addr`,
//! `docker-args`. Each returns the process exit status.

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

/// Resolves a `FanSelector` to its map and, when named, its rule.
fn select(dirs: &[PathBuf], fan: &FanSelector) -> Result<(FanMap, Option<Rule>)> {
    if let (Some(o), Some(u)) = (fan.fan.overlay, fan.fan.underlay) {
        return Ok((FanMap::new(o, u).map_err(|e| anyhow!(e))?, None));
    }
    let name = fan.fan.name.as_deref().unwrap_or_default();
    let (rules, errors) = config::load(dirs);
    match rules.into_iter().find(|r| r.name.as_str() == name) {
        Some(rule) => Ok((rule.map, Some(rule))),
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
}

/// `fanlink addr`: the host's place on the fan.
pub fn addr(dirs: &[PathBuf], fan: &FanSelector, json: bool) -> Result<u8> {
    let (map, _) = select(dirs, fan)?;
    let slice = map.slice(fan.address)?;
    let underlay = map.underlay();
    let report = AddrReport {
        overlay: map.overlay().to_string(),
        underlay: underlay.to_string(),
        address: fan.address,
        slice: slice.to_string(),
        bridge_address: map.bridge_address(fan.address)?.to_string(),
        vni: map.vni(),
        hosts_first: Ipv4Addr::from(u32::from(underlay.network()) + 1),
        hosts_last: Ipv4Addr::from(u32::from(underlay.broadcast()) - 1),
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
    }
    Ok(0)
}

/// The default fan MTU when nothing says otherwise: a 1500-byte underlay minus vxlan.
const DEFAULT_FAN_MTU: u32 = 1500 - VXLAN_OVERHEAD;

/// `fanlink docker-args`: a Docker bridge network on the fan's bridge, handing out the
/// host's slice. Docker keeps the gateway out of its pool itself; the aux-address keeps the
/// slice's network address out, as the fan docs do by hand.
pub fn docker_args(
    dirs: &[PathBuf],
    fan: &FanSelector,
    name: &FanName,
    mtu: Option<u32>,
    network: Option<&str>,
) -> Result<u8> {
    let (map, rule) = select(dirs, fan)?;
    let slice = map.slice(fan.address)?;
    let gateway = map.bridge_address(fan.address)?.addr();
    let bridge = match &rule {
        Some(rule) => rule.name.clone(),
        None => name.or_default(&map)?,
    };
    let mtu = mtu.or(rule.as_ref().and_then(|r| r.mtu)).unwrap_or(DEFAULT_FAN_MTU);
    let args = [
        "--driver bridge".to_string(),
        format!("-o com.docker.network.bridge.name={bridge}"),
        format!("-o com.docker.network.driver.mtu={mtu}"),
        format!("--subnet={}", map.overlay()),
        format!("--ip-range={slice}"),
        format!("--gateway={gateway}"),
        format!("--aux-address=net={}", slice.network()),
        network.unwrap_or(bridge.as_str()).to_string(),
    ];
    println!("docker network create {}", args.join(" \\\n    "));
    Ok(0)
}
