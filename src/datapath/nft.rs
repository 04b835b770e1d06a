//! The fan's NAT: one nftables table per fan, owned by fanlink and replaced atomically.
//!
//! fanlink drives nftables through the `nft` program (`nft -f -`, the script on stdin), so
//! the Debian package Depends on `nftables`. The script builders are pure and unit-tested
//! to the byte; `apply`, `delete` and `list` only run `nft`.
//!
//! Each fan gets table `ip fanlink-<fan>` holding the masquerade rule LXD uses:
//! `ip saddr OVERLAY ip daddr != OVERLAY oifname != "BRIDGE" masquerade`. The `daddr`
//! clause keeps traffic between fan addresses (here or on another host) un-NATed; the
//! `oifname` clause does the same for frames that stay on the bridge, which br_netfilter
//! also shows to the ip postrouting hook, with the bridge as output device.
//!
//! Replacing is one transaction: `table ip T {}` (creates T if absent), `delete table ip T`,
//! then the new `table ip T { ... }`, all in one `nft -f` run, so no packet ever sees a
//! missing or half-built table, and re-applying leaves exactly one table.
//!
//! Names. nft 1.0.6 accepts no quoted table names, and an unquoted one may only hold
//! letters, digits and `/-_.`; a fan name (an interface name) may hold any other byte but
//! '/', ':' and whitespace. So the table name is `fanlink-` + the fan name with every
//! byte outside `[A-Za-z0-9-]` written `_xx` (hex), which is injective and reversible
//! (`fanlink-fan-250`, `fanlink-br_2efan`). Interface names inside rules are quoted
//! strings, which cannot contain `"`, and where a trailing `*` is a wildcard; such names
//! (and `\`, `+`, `!`, which iptables treats specially) are refused by [`rule_ifname`].
//!
//! Letting forwarded fan traffic past other firewalls is `firewall`'s job; see its doc
//! for why an accept in this table could not do it.
//!
//! Ownership and parameters. The table carries `comment "fanlink overlay=.. bridge=.."`,
//! so an observer running `nft list table` sees who made it and with what. nft 1.0.6
//! does not print table comments in JSON (`nft -j list tables` omits them; checked on
//! kernel 6.18), so the masquerade rule carries the same comment and [`list`] reads it
//! from there: one `nft -j list tables ip`, then one `nft -j list table` per fanlink table.

use ipnet::Ipv4Net;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use crate::ifname::IfName;

/// Prefix of every table fanlink owns; tables without it are never touched.
pub const TABLE_PREFIX: &str = "fanlink-";

/// Why talking to nftables (or iptables, see `firewall`) failed, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run `{program}`: it is not installed; install the {package} package")]
    Missing { program: String, package: String },
    #[error("cannot run `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("`{command}` failed: {stderr}{hint}")]
    Failed { command: String, stderr: String, hint: &'static str },
    #[error("interface name \"{name}\" cannot be used in a firewall rule: {why}; rename the interface")]
    BadName { name: String, why: &'static str },
    #[error("cannot understand the output of `{command}`: {why}")]
    Output { command: String, why: String },
}

/// A table fanlink made, as `nft` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatTable {
    /// The table's name, e.g. `fanlink-fan-250`.
    pub name: String,
    /// The fan it belongs to, decoded from the name; `None` if the name is not one
    /// fanlink would make (then it is someone else's table that happens to share the prefix).
    pub fan: Option<String>,
    /// The parameters comment (see [`params_comment`]); empty if the table has none.
    pub params: String,
}

impl NatTable {
    /// Whether the table does what `apply(fan, overlay, bridge)` would make it do.
    pub fn is_current(&self, overlay: Ipv4Net, bridge: &IfName) -> bool {
        self.params == params_comment(overlay, bridge)
    }
}

/// The nftables table name for a fan (see the module doc for the encoding).
pub fn table_name(fan: &IfName) -> String {
    let mut name = String::from(TABLE_PREFIX);
    for b in fan.as_str().bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("_{b:02x}"));
        }
    }
    name
}

/// The fan name a table name encodes, or `None` if fanlink would not have made it.
pub fn fan_of_table(table: &str) -> Option<String> {
    let encoded = table.strip_prefix(TABLE_PREFIX)?;
    let mut bytes = Vec::new();
    let mut rest = encoded.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            bytes.push(b);
            rest = tail;
        } else {
            return None;
        }
    }
    let fan = String::from_utf8(bytes).ok()?;
    // Only the canonical encoding round-trips (no "_41" for 'A'); anything else is not ours.
    let ifname: IfName = fan.parse().ok()?;
    (table_name(&ifname) == table).then_some(fan)
}

/// Checks that an interface name means exactly itself inside an nft quoted string and as an
/// iptables `-i`/`-o` argument, so no name can inject syntax or become a wildcard.
pub fn rule_ifname(name: &IfName) -> Result<&str, NftError> {
    let s = name.as_str();
    let why = if s.contains('"') {
        Some("nftables strings cannot contain '\"'")
    } else if s.contains('\\') {
        Some("'\\' is an escape character in nftables strings")
    } else if s.contains('*') {
        Some("'*' is a wildcard in nftables interface matches")
    } else if s.contains('+') {
        Some("'+' is a wildcard in iptables interface matches")
    } else if s.contains('!') {
        Some("'!' is negation in iptables")
    } else {
        None
    };
    match why {
        Some(why) => Err(NftError::BadName { name: s.escape_default().to_string(), why }),
        None => Ok(s),
    }
}

/// The comment that marks a table and its rule: owner plus parameters, so a reader can
/// tell whether the table is current without parsing rules.
pub fn params_comment(overlay: Ipv4Net, bridge: &IfName) -> String {
    format!("fanlink overlay={} bridge={}", overlay.trunc(), bridge)
}

/// The script that replaces the fan's table in one transaction.
pub fn apply_script(fan: &IfName, overlay: Ipv4Net, bridge: &IfName) -> Result<String, NftError> {
    let table = table_name(fan);
    let br = rule_ifname(bridge)?;
    let overlay = overlay.trunc();
    let comment = params_comment(overlay, bridge);
    Ok(format!(
        "table ip {table} {{}}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tcomment \"{comment}\"\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {overlay} ip daddr != {overlay} oifname != \"{br}\" masquerade comment \"{comment}\"\n\
         \t}}\n\
         }}\n"
    ))
}

/// The script that removes the fan's table, succeeding when it is already gone (nft 1.0.6
/// has no `destroy`, so the table is created empty first).
pub fn delete_script(fan: &IfName) -> String {
    let table = table_name(fan);
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

/// Creates or replaces the fan's NAT table.
pub fn apply(fan: &IfName, overlay: Ipv4Net, bridge: &IfName) -> Result<(), NftError> {
    let script = apply_script(fan, overlay, bridge)?;
    run_tool("nft", &["-f", "-"], Some(&script)).map(drop)
}

/// Removes the fan's NAT table; an absent table is fine.
pub fn delete(fan: &IfName) -> Result<(), NftError> {
    run_tool("nft", &["-f", "-"], Some(&delete_script(fan))).map(drop)
}

/// The `ip` tables whose names start with `fanlink-`, with their parameters comment.
pub fn list() -> Result<Vec<NatTable>, NftError> {
    let tables = run_tool("nft", &["-j", "list", "tables", "ip"], None)?;
    let mut out = Vec::new();
    for name in parse_table_names(&tables, "nft -j list tables ip")? {
        // The comment is only visible per rule in nft 1.0.6's JSON (see the module doc).
        let args = ["-j", "list", "table", "ip", name.as_str()];
        let json = match run_tool("nft", &args, None) {
            Ok(json) => json,
            // Deleted between the two calls: it is simply not there any more.
            Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file") => continue,
            Err(e) => return Err(e),
        };
        let params = parse_params(&json, &name, &format!("nft {}", args.join(" ")))?;
        out.push(NatTable { fan: fan_of_table(&name), name, params });
    }
    Ok(out)
}

/// Table names with our prefix from `nft -j list tables`.
pub fn parse_table_names(json: &str, command: &str) -> Result<Vec<String>, NftError> {
    let items = nft_items(json, command)?;
    let mut names: Vec<String> = items
        .iter()
        .filter_map(|item| item.get("table"))
        .filter(|t| t.get("family").and_then(|f| f.as_str()) == Some("ip"))
        .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
        .filter(|n| n.starts_with(TABLE_PREFIX))
        .map(str::to_string)
        .collect();
    names.sort();
    Ok(names)
}

/// The parameters comment of one of our tables from `nft -j list table`: the table's own
/// comment where nft prints it (newer releases), else the first rule comment.
pub fn parse_params(json: &str, table: &str, command: &str) -> Result<String, NftError> {
    let items = nft_items(json, command)?;
    let in_table = |obj: &serde_json::Value, key: &str| {
        obj.get(key).and_then(|v| v.as_str()) == Some(table)
            && obj.get("family").and_then(|f| f.as_str()) == Some("ip")
    };
    let table_comment = items
        .iter()
        .filter_map(|i| i.get("table"))
        .find(|t| in_table(t, "name"))
        .and_then(|t| t.get("comment"))
        .and_then(|c| c.as_str());
    let rule_comment = || {
        items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| in_table(r, "table"))
            .find_map(|r| r.get("comment").and_then(|c| c.as_str()))
    };
    Ok(table_comment.or_else(rule_comment).unwrap_or_default().to_string())
}

/// The `nftables` array of an `nft -j` answer.
pub(crate) fn nft_items(json: &str, command: &str) -> Result<Vec<serde_json::Value>, NftError> {
    let bad = |why: String| NftError::Output { command: command.to_string(), why };
    let mut doc: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    match doc.get_mut("nftables").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(items)) => Ok(items),
        _ => Err(bad("no \"nftables\" array".into())),
    }
}

/// Runs a firewall tool, feeding `stdin` if given, and returns its stdout. Errors name the
/// package to install or the privilege to get.
pub(crate) fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => {
                NftError::Missing { program: program.to_string(), package: package(program).to_string() }
            }
            _ => NftError::Spawn { program: program.to_string(), source },
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the tool's own error below; the pipe closes on drop.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| NftError::Spawn { program: program.to_string(), source })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() {
        return Err(NftError::Failed { command, hint: hint(&stderr), stderr });
    }
    if !stderr.is_empty() {
        log::debug!("{command}: {stderr}");
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The Debian package that ships a program fanlink runs.
fn package(program: &str) -> &str {
    match program {
        "nft" => "nftables",
        p if p.starts_with("iptables") => "iptables",
        p => p,
    }
}

/// What to do about a tool's complaint, for the ones that have a fix.
fn hint(stderr: &str) -> &'static str {
    // nft says "Operation not permitted", iptables-nft "Permission denied (you must be
    // root)", iptables-legacy fails on its lock file with "Permission denied".
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        " (fanlink needs root or CAP_NET_ADMIN)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifname(s: &str) -> IfName {
        s.parse().unwrap()
    }

    #[test]
    fn apply_script_is_exact() {
        let got =
            apply_script(&ifname("fan-250"), "250.0.0.0/8".parse().unwrap(), &ifname("fan-250")).unwrap();
        let want = r#"table ip fanlink-fan-250 {}
delete table ip fanlink-fan-250
table ip fanlink-fan-250 {
	comment "fanlink overlay=250.0.0.0/8 bridge=fan-250"
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 250.0.0.0/8 ip daddr != 250.0.0.0/8 oifname != "fan-250" masquerade comment "fanlink overlay=250.0.0.0/8 bridge=fan-250"
	}
}
"#;
        assert_eq!(got, want);
    }

    #[test]
    fn apply_script_truncates_host_bits() {
        let got = apply_script(&ifname("f"), "10.1.2.3/8".parse().unwrap(), &ifname("br")).unwrap();
        assert!(got.contains("ip saddr 10.0.0.0/8 ip daddr != 10.0.0.0/8 oifname != \"br\""), "{got}");
    }

    #[test]
    fn delete_script_is_exact() {
        assert_eq!(
            delete_script(&ifname("fan-250")),
            "table ip fanlink-fan-250 {}\ndelete table ip fanlink-fan-250\n"
        );
    }

    #[test]
    fn table_names_encode_every_unsafe_byte() {
        let cases = [
            ("fan-250", "fanlink-fan-250"),
            ("lxdfan0", "fanlink-lxdfan0"),
            ("br.fan", "fanlink-br_2efan"),
            ("a_b", "fanlink-a_5fb"),
            ("x;}\"{", "fanlink-x_3b_7d_22_7b"),
            ("é", "fanlink-_c3_a9"),
        ];
        for (fan, table) in cases {
            assert_eq!(table_name(&ifname(fan)), table);
            assert_eq!(fan_of_table(table).as_deref(), Some(fan), "{table}");
        }
    }

    #[test]
    fn foreign_tables_decode_to_none() {
        for t in
            ["filter", "fanlink-", "fanlink-_4", "fanlink-_zz", "fanlink-a.b", "fanlink-_41", "fanlink-_2f"]
        {
            assert_eq!(fan_of_table(t), None, "{t}");
        }
    }

    #[test]
    fn rule_names_that_could_inject_are_refused() {
        for ok in ["fan-250", "br.x", "a'b", "a$b#c;d{}"] {
            assert!(rule_ifname(&ifname(ok)).is_ok(), "{ok}");
        }
        for bad in ["a\"b", "a\\b", "fan*", "fan+", "!fan"] {
            let err = rule_ifname(&ifname(bad)).unwrap_err().to_string();
            assert!(err.contains("rename the interface"), "{err}");
        }
        let err = apply_script(&ifname("f"), "250.0.0.0/8".parse().unwrap(), &ifname("a\"b")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface name \"a\\\"b\" cannot be used in a firewall rule: nftables strings cannot \
             contain '\"'; rename the interface"
        );
    }

    #[test]
    fn parses_tables_and_rule_comment_of_nft_1_0_6() {
        let tables = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "fanlink-fan-250", "handle": 2}},
            {"table": {"family": "ip", "name": "filter", "handle": 3}},
            {"table": {"family": "ip", "name": "fanlink-a_2eb", "handle": 4}}]}"#;
        assert_eq!(parse_table_names(tables, "t").unwrap(), ["fanlink-a_2eb", "fanlink-fan-250"]);
        let table = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "fanlink-fan-250", "handle": 2}},
            {"chain": {"family": "ip", "table": "fanlink-fan-250", "name": "postrouting"}},
            {"rule": {"family": "ip", "table": "fanlink-fan-250", "chain": "postrouting",
                      "comment": "fanlink overlay=250.0.0.0/8 bridge=fan-250", "expr": []}}]}"#;
        let params = parse_params(table, "fanlink-fan-250", "t").unwrap();
        let t = NatTable { name: "fanlink-fan-250".into(), fan: Some("fan-250".into()), params };
        assert!(t.is_current("250.0.0.0/8".parse().unwrap(), &ifname("fan-250")));
        assert!(!t.is_current("240.0.0.0/8".parse().unwrap(), &ifname("fan-250")));
    }

    #[test]
    fn table_comment_wins_when_nft_prints_it() {
        let table = r#"{"nftables": [{"table": {"family": "ip", "name": "fanlink-x", "comment": "new"}},
            {"rule": {"family": "ip", "table": "fanlink-x", "comment": "old"}}]}"#;
        assert_eq!(parse_params(table, "fanlink-x", "t").unwrap(), "new");
    }

    #[test]
    fn tool_errors_name_the_fix() {
        let err = run_tool("fanlink-no-such-tool", &[], None).unwrap_err().to_string();
        assert_eq!(err, "cannot run `fanlink-no-such-tool`: it is not installed; install the fanlink-no-such-tool package");
        assert_eq!(package("nft"), "nftables");
        assert_eq!(package("iptables-legacy"), "iptables");
        for denied in [
            "netlink: Error: cache initialization failed: Operation not permitted",
            "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
            "Fatal: can't open lock file /run/xtables.lock: Permission denied",
        ] {
            assert_eq!(hint(denied), " (fanlink needs root or CAP_NET_ADMIN)");
        }
        let err = NftError::Failed {
            command: "nft -f -".into(),
            stderr: "Error: x".into(),
            hint: hint("Error: x"),
        };
        assert_eq!(err.to_string(), "`nft -f -` failed: Error: x");
    }

    #[test]
    fn bad_json_names_the_command() {
        let err = parse_table_names("{}", "nft -j list tables ip").unwrap_err().to_string();
        assert_eq!(err, "cannot understand the output of `nft -j list tables ip`: no \"nftables\" array");
    }
}
