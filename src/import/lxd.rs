//! `lxc network show NET` of an LXD fan network (`bridge.mode: fan`) into a fan, so that a
//! host moves from LXD's fan to fanlink's with the same overlay, underlay and so slice.
//!
//! The output is YAML, but the keys a fan needs are flat `key: value` lines under `config:`
//! (plus the top-level `name:`), so they are read line by line; no YAML parser. LXD's
//! defaults apply to keys it leaves out: overlay 240.0.0.0/8, underlay `auto` (the subnet of
//! the default route's link), vxlan, NAT and DHCP on.

use super::host::Host;
use super::parse::Refusal;
use super::{from_link, with_hint, Fan};
use crate::fan::FanMap;
use ipnet::Ipv4Net;

/// Whether `text` looks like `lxc network show` output rather than ubuntu-fan's syntax.
pub fn is_lxd(text: &str) -> bool {
    text.lines().any(|l| l.trim_end() == "config:")
        && text
            .lines()
            .any(|l| l.trim_start().starts_with("bridge.mode:") || l.trim_start().starts_with("fan."))
}

/// A `key: value` line: its 1-based line, the value's column, and the value unquoted.
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    line: usize,
    col: usize,
    value: &'a str,
}

fn entry(line: usize, text: &str) -> Option<(&str, Entry<'_>)> {
    let (key, rest) = text.trim_start().split_once(':')?;
    let value = rest.trim();
    let start = text.len() - rest.trim_start().len();
    let col = text[..start].chars().count() + 1;
    let (value, col) = match value.strip_prefix(['"', '\'']).and_then(|v| v.strip_suffix(['"', '\''])) {
        Some(inner) => (inner, col + 1),
        None => (value, col),
    };
    Some((key, Entry { line, col, value }))
}

/// The top-level `name:` and the flat keys under `config:`, with their positions.
fn read(text: &str) -> (Option<Entry<'_>>, Vec<(&str, Entry<'_>)>, usize) {
    let (mut name, mut config, mut config_line, mut inside) = (None, Vec::new(), 1, false);
    for (i, l) in text.lines().enumerate() {
        let top = !l.starts_with([' ', '\t']);
        if top {
            inside = l.trim_end() == "config:";
            if inside {
                config_line = i + 1;
            } else if let Some(("name", e)) = entry(i + 1, l) {
                name = Some(e);
            }
        } else if inside {
            if let Some((key, e)) = entry(i + 1, l) {
                config.push((key, e));
            }
        }
    }
    (name, config, config_line)
}

/// The keys fanlink translates; any other is named in a note as left out.
const KNOWN: [&str; 7] = [
    "bridge.mode",
    "fan.type",
    "fan.underlay_subnet",
    "fan.overlay_subnet",
    "bridge.mtu",
    "ipv4.nat",
    "ipv4.dhcp",
];

/// The fan `text` describes; every problem is a refusal at its line and column.
pub fn fan(text: &str, underlay_prefix: Option<Ipv4Net>, host: &mut dyn Host) -> Result<Fan, Vec<Refusal>> {
    let (name, config, config_line) = read(text);
    let get = |key: &str| config.iter().find(|(k, _)| *k == key).map(|(_, e)| *e);
    let refuse = |e: Entry<'_>, message: String| vec![Refusal { line: e.line, col: e.col, message }];
    let mode = get("bridge.mode").ok_or_else(|| {
        let message = "no `bridge.mode: fan` under `config:`: not an LXD fan network".to_string();
        vec![Refusal { line: config_line, col: 1, message }]
    })?;
    if mode.value != "fan" {
        let message = format!(
            "bridge.mode `{}` is not a fan network; fanlink imports LXD's fan networks (bridge.mode: fan)",
            mode.value
        );
        return Err(refuse(mode, message));
    }
    if let Some(kind) = get("fan.type").filter(|e| e.value != "vxlan") {
        let message = match kind.value {
            "ipip" => "the ipip fan is not supported: fanlink builds the vxlan fan only (ipip was removed \
                       from LXD); set fan.type: vxlan on every host of this fan"
                .to_string(),
            other => format!("unknown fan.type `{other}`; LXD knows vxlan and ipip"),
        };
        return Err(refuse(kind, message));
    }
    let mut notes = Vec::new();
    let overlay = match get("fan.overlay_subnet") {
        Some(e) => (prefix(e, "fan.overlay_subnet")?, e),
        None => {
            notes.push("no fan.overlay_subnet: LXD's default, 240.0.0.0/8".to_string());
            ("240.0.0.0/8".parse().expect("static"), mode)
        }
    };
    let underlay = match get("fan.underlay_subnet") {
        Some(e) if e.value != "auto" => {
            let net = prefix(e, "fan.underlay_subnet")?;
            if net.addr() != net.network() {
                notes.push(format!(
                    "{} is this host's address in the underlay; fanlink finds it by itself",
                    net.addr()
                ));
            }
            (net.trunc(), e)
        }
        found => {
            // LXD's `auto` (also its default): the subnet of the link with the default route.
            let at = found.unwrap_or(mode);
            let net = match underlay_prefix {
                Some(p) => from_link("auto", None, Some(p), host, &mut notes),
                None => host.default_link().map_err(with_hint).and_then(|link| {
                    notes
                        .push(format!("fan.underlay_subnet auto: {link} has the default route on this host"));
                    from_link(&link, None, None, host, &mut notes)
                }),
            };
            (net.map_err(|m| refuse(at, m))?, at)
        }
    };
    let map = FanMap::new(overlay.0, underlay.0).map_err(|m| {
        let at = if m.starts_with("underlay") { underlay.1 } else { overlay.1 };
        refuse(at, m)
    })?;
    let mtu = match get("bridge.mtu") {
        None => None,
        Some(e) => Some(
            e.value
                .parse::<u32>()
                .map_err(|_| refuse(e, format!("bridge.mtu `{}` is not a number", e.value)))?,
        ),
    };
    let flag = |key: &str| -> Result<bool, Vec<Refusal>> {
        match get(key) {
            None => Ok(true),
            Some(e) => e
                .value
                .parse::<bool>()
                .map_err(|_| refuse(e, format!("{key} `{}` is not true or false", e.value))),
        }
    };
    let (masquerade, dhcp) = (flag("ipv4.nat")?, flag("ipv4.dhcp")?);
    let name = match name {
        Some(e) => Some(e.value.parse().map_err(|err| refuse(e, format!("name: {err}")))?),
        None => None,
    };
    if dhcp {
        notes.push(
            "LXD's dnsmasq handed out the whole slice and kept a DNS domain of the instances; fanlink's \
             hands out the DHCP part of the slice's plan (`fanlink addr`) and keeps no names (see the README)"
                .into(),
        );
    }
    let left: Vec<&str> = config.iter().map(|(k, _)| *k).filter(|k| !KNOWN.contains(k)).collect();
    if !left.is_empty() {
        notes.push(format!("not translated: {}", left.join(", ")));
    }
    let source = match &name {
        Some(n) => format!("lxc network show {n}: bridge.mode fan"),
        None => "lxc network show: bridge.mode fan".to_string(),
    };
    Ok(Fan {
        line: mode.line,
        source,
        name,
        map,
        interface: None,
        enabled: true,
        dhcp,
        host_reserve: None,
        mtu,
        masquerade,
        notes,
    })
}

fn prefix(e: Entry<'_>, key: &str) -> Result<Ipv4Net, Vec<Refusal>> {
    e.value.parse().map_err(|_| {
        let message = format!("{key} `{}` is not an IPv4 prefix such as 10.0.0.0/16", e.value);
        vec![Refusal { line: e.line, col: e.col, message }]
    })
}
