//! Fan rules: TOML files in drop-in directories, parsed into validated `Rule`s.
//!
//! Every problem becomes a `RuleError` that names file, line and column; loading goes on
//! after an error so that one run reports all of them.

use crate::fan::FanMap;
use crate::ifname::IfName;
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where rules live, highest precedence first (systemd's drop-in convention).
pub const DEFAULT_DIRS: [&str; 3] = ["/etc/fanlink.d", "/run/fanlink.d", "/usr/lib/fanlink.d"];

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
    /// The file and line that defined it, for messages.
    pub origin: String,
}

impl Rule {
    /// The vxlan device paired with the bridge: the bridge's name (cut to fit) plus "-vx".
    pub fn vxlan_name(&self) -> IfName {
        vxlan_name_for(&self.name)
    }
}

fn vxlan_name_for(bridge: &IfName) -> IfName {
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

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    fan: Vec<Spanned<RawFan>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawFan {
    name: Option<Spanned<String>>,
    overlay: Spanned<String>,
    underlay: Spanned<String>,
    interface: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    masquerade: Option<bool>,
}

/// The rule files that take effect: `*.toml` by file name, an earlier directory masking a
/// later one, a link to /dev/null masking the name altogether. Sorted by file name.
pub fn rule_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut chosen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") && !name.starts_with('.') {
                chosen.entry(name).or_insert_with(|| entry.path());
            }
        }
    }
    chosen
        .into_values()
        .filter(|path| std::fs::canonicalize(path).map(|p| p != Path::new("/dev/null")).unwrap_or(true))
        .collect()
}

/// Loads every rule file of `dirs`; returns the valid rules and every error found.
/// A fan with an error is left out, the others are kept.
pub fn load(dirs: &[PathBuf]) -> (Vec<Rule>, Vec<RuleError>) {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in rule_files(dirs) {
        warn_if_writable_by_others(&path);
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((path, text)),
            Err(e) => errors.push(RuleError { path, position: None, message: format!("cannot read: {e}") }),
        }
    }
    let (rules, mut more) = parse_all(&sources);
    errors.append(&mut more);
    (rules, errors)
}

fn warn_if_writable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o002 != 0 {
            log::warn!("{}: is world-writable; anyone on this host can change its fans", path.display());
        }
    }
}

/// Parses file contents given as (path, text), in order, and checks rules across files.
pub fn parse_all(sources: &[(PathBuf, String)]) -> (Vec<Rule>, Vec<RuleError>) {
    let mut rules: Vec<(Rule, Located)> = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in sources {
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
            let span = fan.span();
            match convert(fan.into_inner(), path, text) {
                Ok((rule, located)) => {
                    let clash = rules.iter().find_map(|(other, at)| clash(&rule, other, at));
                    match clash {
                        Some(message) => errors.push(at(span, message)),
                        None => rules.push((rule, located)),
                    }
                }
                Err(mut errs) => errors.append(&mut errs),
            }
        }
    }
    (rules.into_iter().map(|(r, _)| r).collect(), errors)
}

/// Where a rule was defined, for "already used at ..." messages.
struct Located(String);

fn clash(rule: &Rule, other: &Rule, at: &Located) -> Option<String> {
    let at = &at.0;
    if rule.name == other.name {
        return Some(format!(
            "a fan named \"{}\" is already defined at {at}; give this one another `name`",
            rule.name
        ));
    }
    if rule.vxlan_name() == other.vxlan_name() || rule.vxlan_name() == other.name {
        return Some(format!(
            "the vxlan device of fan \"{}\" would be \"{}\", which the fan at {at} uses; choose a name that differs in its first 12 bytes",
            rule.name,
            rule.vxlan_name()
        ));
    }
    let (a, b) = (rule.map.overlay(), other.map.overlay());
    if a.contains(&b.network()) || b.contains(&a.network()) {
        return Some(format!("overlay {a} overlaps overlay {b} of fan \"{}\" at {at}", other.name));
    }
    None
}

fn convert(raw: RawFan, path: &Path, text: &str) -> Result<(Rule, Located), Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut err = |span: Range<usize>, message: String| {
        errors.push(RuleError {
            path: path.to_path_buf(),
            position: Some(line_col(text, span.start)),
            message,
        });
    };
    let mut net = |field: &Spanned<String>, what: &str| match field.get_ref().parse::<Ipv4Net>() {
        Ok(n) => Some(n),
        Err(_) => {
            err(
                field.span(),
                format!(
                    "{what} \"{}\" is not an IPv4 prefix like \"250.0.0.0/8\"",
                    field.get_ref().escape_default()
                ),
            );
            None
        }
    };
    let overlay = net(&raw.overlay, "overlay");
    let underlay = net(&raw.underlay, "underlay");
    let map = match (overlay, underlay) {
        (Some(o), Some(u)) => FanMap::new(o, u).map_err(|m| err(raw.overlay.span(), m)).ok(),
        _ => None,
    };
    let name = match (&raw.name, map) {
        (Some(n), _) => n.get_ref().parse::<IfName>().map_err(|m| err(n.span(), format!("name: {m}"))).ok(),
        (None, Some(m)) => {
            Some(format!("fan-{}", m.overlay().addr().octets()[0]).parse().expect("short name"))
        }
        (None, None) => None,
    };
    let interface = raw.interface.as_ref().and_then(|i| {
        i.get_ref().parse::<IfName>().map_err(|m| err(i.span(), format!("interface: {m}"))).ok()
    });
    let mtu = raw.mtu.as_ref().and_then(|m| {
        let valid = u32::try_from(*m.get_ref()).ok().filter(|v| MTU_RANGE.contains(v));
        if valid.is_none() {
            let (lo, hi) = (MTU_RANGE.start(), MTU_RANGE.end());
            err(m.span(), format!("mtu {} is out of range; use {lo} to {hi}", m.get_ref()));
        }
        valid
    });
    match (name, map) {
        (Some(name), Some(map)) if errors.is_empty() => {
            let (line, _) = line_col(text, raw.overlay.span().start);
            let origin = format!("{}:{line}", path.display());
            let rule = Rule {
                name,
                map,
                interface,
                mtu,
                masquerade: raw.masquerade.unwrap_or(true),
                origin: origin.clone(),
            };
            Ok((rule, Located(origin)))
        }
        _ => Err(errors),
    }
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
        assert_eq!((r.mtu, &r.interface, r.origin.as_str()), (None, &None, "t.toml:2"));
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
