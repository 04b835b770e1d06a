//! Fan rules: TOML files in drop-in directories, parsed into validated `Rule`s.
//!
//! Every problem becomes a `RuleError` that names file, line and column; loading goes on
//! after an error so that one run reports all of them.

use crate::addrplan::{self, AddrPlan, Split, SplitKey};
use crate::fan::FanMap;
use crate::ifname::IfName;
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[path = "config_read.rs"]
mod read;
#[path = "config_table.rs"]
mod table;
pub use read::{parse_reads, read_files, rule_files, FileRead};
use table::convert;

/// Where rules live, highest precedence first (systemd's drop-in convention).
pub const DEFAULT_DIRS: [&str; 3] = ["/etc/fanlink.d", "/run/fanlink.d", "/usr/lib/fanlink.d"];

/// Why a fan with `enable = false` is down, for the log and `status`.
pub const DISABLED: &str = "disabled by its rule (enable = false)";

/// MTUs we accept: IPv4's minimum reassembly size up to common jumbo frames.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;

/// One fan, as the rules want it on every host that shares its underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The bridge's name.
    pub name: IfName,
    pub map: FanMap,
    /// The link whose state drives the fan; `None`: the link holding an address in the underlay.
    pub interface: Option<IfName>,
    /// `None`: the underlay link's MTU minus the vxlan overhead.
    pub mtu: Option<u32>,
    pub masquerade: bool,
    /// Serve DHCP on the bridge (dnsmasq), as LXD and `fanctl --dhcp` do.
    pub dhcp: bool,
    /// How each host's slice is shared by the host, DHCP and Docker (`host-reserve`,
    /// `docker-share`).
    pub split: Split,
    /// The lease time dnsmasq hands out (`dhcp-lease`, in dnsmasq's syntax: "45m", "1h",
    /// "infinite"); `None`: one hour.
    pub dhcp_lease: Option<String>,
    /// False (`enable = false`, fanctl's `--disable` / `off`): the rule is kept but the fan
    /// is not brought up, and a running one is taken down (devices kept).
    pub enabled: bool,
    /// The file and line that defined it, for messages.
    pub origin: String,
    /// Made from command-line prefixes (`fanlink up --overlay`), not from a rule file.
    pub by_hand: bool,
}

impl Rule {
    /// A fan given by its prefixes on the command line (`fanlink up --overlay --underlay`),
    /// with every key at its default.
    pub fn by_hand(name: IfName, map: FanMap) -> Rule {
        Rule {
            name,
            map,
            interface: None,
            mtu: None,
            masquerade: true,
            dhcp: false,
            split: Split::default(),
            dhcp_lease: None,
            enabled: true,
            origin: "the command line".to_string(),
            by_hand: true,
        }
    }

    /// The vxlan device paired with the bridge: the bridge's name (cut to fit) plus "-vx".
    pub fn vxlan_name(&self) -> IfName {
        vxlan_name_for(&self.name)
    }

    /// The address plan of the slice that `address` owns.
    pub fn addr_plan(&self, address: std::net::Ipv4Addr) -> Result<AddrPlan, String> {
        let slice = self.map.slice(address).map_err(|e| e.to_string())?;
        self.split.plan(slice)
    }
}

/// A fan's name when its rule gives none: "fan-" and the overlay's first octet.
pub fn default_name(map: &FanMap) -> IfName {
    format!("fan-{}", map.overlay().addr().octets()[0]).parse().expect("short name")
}

pub fn vxlan_name_for(bridge: &IfName) -> IfName {
    let stem: String = bridge.as_str().chars().take(12).collect();
    format!("{}-vx", stem.trim_end_matches('-')).parse().expect("at most 15 valid bytes")
}

/// A problem in a rule file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub path: PathBuf,
    /// 1-based line and column; `None` when the problem is the file as a whole.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: error: {}", self.path.display(), self.message),
            None => write!(f, "{}: error: {}", self.path.display(), self.message),
        }
    }
}

/// A rule file as TOML sees it. Each fan stays a map of spanned keys and values so that
/// every key is checked on its own: one wrong type does not hide the file's other errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    fan: Vec<Spanned<RawFan>>,
}

type RawFan = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The keys a `[[fan]]` table may hold.
const KEYS: [&str; 11] = [
    "name",
    "overlay",
    "underlay",
    "interface",
    "mtu",
    "masquerade",
    "dhcp",
    "dhcp-lease",
    "host-reserve",
    "docker-share",
    "enable",
];

/// Loads every rule file of `dirs`; returns the rules in effect (see `in_effect`) and every
/// error found. A fan with an error is left out, the others are kept.
pub fn load(dirs: &[PathBuf]) -> (Vec<Rule>, Vec<RuleError>) {
    let (rules, errors) = load_all(dirs);
    (in_effect(rules), errors)
}

/// The rules that take effect, one per name: every enabled rule, and a disabled one whose
/// name no enabled rule (nor an earlier disabled one) has. A disabled rule may repeat an
/// enabled fan as its alternative, as cloud-init's example does (the fan on eth0, or "off"
/// on eth1): it is kept for the day it is enabled, and the enabled one is the fan.
pub fn in_effect(rules: Vec<Rule>) -> Vec<Rule> {
    let enabled: Vec<IfName> = rules.iter().filter(|r| r.enabled).map(|r| r.name.clone()).collect();
    let mut seen = Vec::new();
    rules
        .into_iter()
        .filter(|r| {
            let keep = r.enabled || (!enabled.contains(&r.name) && !seen.contains(&r.name));
            seen.push(r.name.clone());
            keep
        })
        .collect()
}

/// Every valid rule of `dirs`, the disabled alternatives of enabled fans too (for `check`).
pub fn load_all(dirs: &[PathBuf]) -> (Vec<Rule>, Vec<RuleError>) {
    parse_reads(&read_files(dirs))
}

/// Parses file contents given as (path, text), in order, and checks rules across files.
pub fn parse_all(sources: &[(PathBuf, String)]) -> (Vec<Rule>, Vec<RuleError>) {
    let mut rules: Vec<(Rule, Located)> = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in sources {
        // A file caught in the middle of an in-place rewrite (truncated, not yet written) would
        // read as "no fans" and take its fans down; a deliberately empty file has a comment.
        if text.is_empty() {
            let message =
                "the file is empty (is it being written?); a file without fans needs at least a comment"
                    .into();
            errors.push(RuleError { path: path.clone(), position: None, message });
            continue;
        }
        let at = |span: Range<usize>, message: String| RuleError {
            path: path.clone(),
            position: Some(line_col(text, span.start)),
            message,
        };
        let raw: RawFile = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                errors.push(at(span, e.message().trim_end().to_string()));
                continue;
            }
        };
        for fan in raw.fan {
            match convert(fan.get_ref(), fan.span(), path, text) {
                Ok((rule, keys)) => {
                    let located = Located {
                        name: place(path, text, &keys.name),
                        overlay: place(path, text, &keys.overlay),
                    };
                    // A disabled fan builds nothing, so it cannot clash (it is checked when enabled).
                    let enabled = rules.iter().filter(|(r, _)| r.enabled && rule.enabled);
                    match enabled.into_iter().find_map(|(other, at)| clash(&rule, other, at)) {
                        Some((Key::Name, message)) => errors.push(at(keys.name, message)),
                        Some((Key::Overlay, message)) => errors.push(at(keys.overlay, message)),
                        None => rules.push((rule, located)),
                    }
                }
                Err(mut errs) => errors.append(&mut errs),
            }
        }
    }
    (rules.into_iter().map(|(r, _)| r).collect(), errors)
}

/// Where a rule's keys are, as FILE:LINE:COL, for "already defined at ..." messages.
struct Located {
    /// The `name` value, or the `[[fan]]` header when the name is the default.
    name: String,
    overlay: String,
}

/// The key a clash between two fans is reported at.
enum Key {
    Name,
    Overlay,
}

/// The byte spans of a fan's keys that checks across fans report at.
struct KeySpans {
    name: Range<usize>,
    overlay: Range<usize>,
}

fn place(path: &Path, text: &str, span: &Range<usize>) -> String {
    let (line, col) = line_col(text, span.start);
    format!("{}:{line}:{col}", path.display())
}

/// Whether `rule` cannot live beside `other` (defined at `at`): the key to report at, and why,
/// citing the same key of the other fan.
fn clash(rule: &Rule, other: &Rule, at: &Located) -> Option<(Key, String)> {
    if rule.name == other.name {
        return Some((
            Key::Name,
            format!(
                "a fan named \"{}\" is already defined at {}; give this one another `name`",
                rule.name, at.name
            ),
        ));
    }
    if rule.vxlan_name() == other.vxlan_name() || rule.vxlan_name() == other.name {
        return Some((
            Key::Name,
            format!(
                "the vxlan device of fan \"{}\" would be \"{}\", which fan \"{}\" at {} uses; choose a name that differs in its first 12 bytes",
                rule.name,
                rule.vxlan_name(),
                other.name,
                at.name
            ),
        ));
    }
    let (a, b) = (rule.map.overlay(), other.map.overlay());
    if a.contains(&b.network()) || b.contains(&a.network()) {
        let message = format!("overlay {a} overlaps overlay {b} of fan \"{}\" at {}", other.name, at.overlay);
        return Some((Key::Overlay, message));
    }
    // The VNI is the overlay's top 24 bits: two overlays inside one /24 share it, and the
    // kernel (or the shared datapath's steering) can carry one fan per VNI only.
    if rule.map.vni() == other.map.vni() {
        let message = format!(
            "overlay {a} would use VNI {}, which overlay {b} of fan \"{}\" at {} uses; \
             two fans need overlays in different /24s",
            rule.map.vni(),
            other.name,
            at.overlay
        );
        return Some((Key::Overlay, message));
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Rule>, Vec<String>) {
        let (rules, errors) = parse_all(&[(PathBuf::from("t.toml"), text.to_string())]);
        (rules, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults() {
        let (rules, errors) = parse("[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        let r = &rules[0];
        assert_eq!(r.name.as_str(), "fan-250");
        assert_eq!(r.vxlan_name().as_str(), "fan-250-vx");
        assert!(r.masquerade);
        assert_eq!((r.mtu, &r.interface, r.origin.as_str()), (None, &None, "t.toml:1"));
    }

    #[test]
    fn vxlan_names_fit() {
        let long: IfName = "abcdefghijklmno".parse().unwrap();
        assert_eq!(vxlan_name_for(&long).as_str(), "abcdefghijkl-vx");
        let dash: IfName = "abcdefghijk-xyz".parse().unwrap();
        assert_eq!(vxlan_name_for(&dash).as_str(), "abcdefghijk-vx");
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}

#[cfg(test)]
#[path = "config_kept_tests.rs"]
mod kept_tests;
