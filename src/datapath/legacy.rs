//! The accept rules on hosts whose legacy iptables (`iptables-legacy`, x_tables) has a
//! filter table: the one firewall fanlink changes through a program, as the legacy tables
//! have no netlink interface. See `firewall` for which rules and why.

use std::io;
use std::process::{Command, Stdio};

use crate::datapath::firewall::{rule_comment, DOCKER_USER};
use crate::datapath::nft::NftError;
use crate::ifname::IfName;

const PROGRAM: &str = "iptables-legacy";

/// Checks that an interface name means exactly itself as an iptables `-i`/`-o` argument,
/// so no name can become a wildcard or a negation.
pub fn rule_ifname(name: &IfName) -> Result<&str, NftError> {
    let s = name.as_str();
    let why = if s.contains('+') {
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

/// The two rules (arguments after the chain name) that let a bridge's traffic through.
pub fn accept_rules(fan: &IfName, bridge: &IfName) -> Result<[Vec<String>; 2], NftError> {
    let br = rule_ifname(bridge)?;
    let comment = rule_comment(fan);
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    Ok([
        words(&format!("-i {br} -m comment --comment {comment} -j ACCEPT")),
        words(&format!(
            "-o {br} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment {comment} -j ACCEPT"
        )),
    ])
}

/// A rule of ours found in `iptables -S CHAIN` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRule {
    pub chain: String,
    pub args: Vec<String>,
}

/// The rules in `iptables -S` output carrying `comment`. Our rules contain no spaces in
/// any argument, so splitting on whitespace and dropping quotes is exact for them.
pub fn parse_owned_rules(listing: &str, comment: &str) -> Vec<OwnedRule> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<String> =
                line.split_whitespace().map(|w| w.trim_matches('"').to_string()).collect();
            let marked = words.windows(2).any(|w| w[0] == "--comment" && w[1] == comment);
            match words.as_slice() {
                [a, chain, args @ ..] if a == "-A" && marked => {
                    Some(OwnedRule { chain: chain.clone(), args: args.to_vec() })
                }
                _ => None,
            }
        })
        .collect()
}

/// Whether legacy iptables has a filter table here, and if so whether it has DOCKER-USER.
fn in_use() -> Result<Option<bool>, NftError> {
    // Absent when the kernel has no legacy iptables; then nothing legacy can drop.
    // `thread-self`: `/proc/net` follows the thread-group leader's namespace, not a thread
    // that has setns'd elsewhere.
    let tables = std::fs::read_to_string("/proc/thread-self/net/ip_tables_names").unwrap_or_default();
    if !tables.lines().any(|t| t == "filter") {
        return Ok(None);
    }
    Ok(Some(run_tool(PROGRAM, &["-w", "-S", DOCKER_USER]).is_ok()))
}

/// Our rules for `fan` in the chains we ever use.
fn owned_rules(comment: &str, docker: bool) -> Result<Vec<OwnedRule>, NftError> {
    let mut rules = Vec::new();
    for chain in ["FORWARD"].into_iter().chain(docker.then_some(DOCKER_USER)) {
        let listing = run_tool(PROGRAM, &["-w", "-S", chain])?;
        rules.extend(parse_owned_rules(&listing, comment));
    }
    Ok(rules)
}

fn change(op: &str, chain: &str, args: &[String]) -> Result<(), NftError> {
    let mut argv = vec!["-w", op, chain];
    argv.extend(args.iter().map(String::as_str));
    run_tool(PROGRAM, &argv).map(drop)
}

/// `firewall::ensure_forward_accept` for legacy iptables; nothing when it has no filter table.
pub fn ensure_forward_accept(fan: &IfName, bridge: &IfName) -> Result<bool, NftError> {
    let Some(docker) = in_use()? else { return Ok(false) };
    let wanted = accept_rules(fan, bridge)?;
    let chain = if docker { DOCKER_USER } else { "FORWARD" };
    let have = owned_rules(&rule_comment(fan), docker)?;
    let mut changed = false;
    let mut kept: Vec<&OwnedRule> = Vec::new();
    for rule in &have {
        // Stale: another bridge, the other chain, or duplicated (a race between two runs).
        // `-D` by spec removes the first copy, so every copy of a duplicate goes and one is
        // inserted again at the top below.
        let copies = have.iter().filter(|r| *r == rule).count();
        if rule.chain != chain || !wanted.contains(&rule.args) || copies > 1 {
            change("-D", &rule.chain, &rule.args)?;
            changed = true;
        } else {
            kept.push(rule);
        }
    }
    // Inserted in reverse so they end up first, in the order of `accept_rules`.
    for rule in wanted.iter().rev() {
        if !kept.iter().any(|r| &r.args == rule) {
            change("-I", chain, rule)?;
            changed = true;
            log::info!("{PROGRAM}: accept forwarding for {bridge} in {chain}");
        }
    }
    Ok(changed)
}

/// Removes every legacy rule of ours for `fan`; returns whether there was any.
pub fn remove_forward_accept(fan: &IfName) -> Result<bool, NftError> {
    let Some(docker) = in_use()? else { return Ok(false) };
    let mut changed = false;
    for rule in owned_rules(&rule_comment(fan), docker)? {
        change("-D", &rule.chain, &rule.args)?;
        changed = true;
    }
    Ok(changed)
}

/// Runs a program and returns its stdout. Errors name the package to install or the
/// privilege to get.
pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<String, NftError> {
    let command = format!("{program} {}", args.join(" "));
    let output =
        Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|source| {
            match source.kind() {
                io::ErrorKind::NotFound => {
                    NftError::Missing { program: program.to_string(), package: package(program).to_string() }
                }
                _ => NftError::Spawn { program: program.to_string(), source },
            }
        })?;
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
        p if p.starts_with("iptables") => "iptables",
        p => p,
    }
}

/// What to do about a tool's complaint, for the ones that have a fix.
fn hint(stderr: &str) -> &'static str {
    // iptables-legacy fails on its lock file with "Permission denied".
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
    fn rules_are_exact() {
        let [i, o] = accept_rules(&ifname("fan-250"), &ifname("fan-250")).unwrap();
        assert_eq!(i.join(" "), "-i fan-250 -m comment --comment fanlink:fan-250 -j ACCEPT");
        assert_eq!(
            o.join(" "),
            "-o fan-250 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment fanlink:fan-250 -j ACCEPT"
        );
        assert_eq!(rule_comment(&ifname("a_b\"c")), "fanlink:a_5fb_22c");
        let err = accept_rules(&ifname("f"), &ifname("fan+")).unwrap_err().to_string();
        assert_eq!(
            err,
            "interface name \"fan+\" cannot be used in an iptables rule: '+' is a wildcard in \
             iptables interface matches; rename the interface"
        );
        assert!(accept_rules(&ifname("f"), &ifname("!fan")).is_err());
        assert!(accept_rules(&ifname("f"), &ifname("a\"b")).is_ok(), "an argv word, not a shell word");
    }

    #[test]
    fn finds_only_our_rules_in_iptables_listing() {
        let listing = r#"-P FORWARD DROP
-A FORWARD -j DOCKER-USER
-A FORWARD -i fan-250 -m comment --comment "fanlink:fan-250" -j ACCEPT
-A FORWARD -i fan-2500 -m comment --comment "fanlink:fan-2500" -j ACCEPT
-A FORWARD -o fan-250 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "fanlink:fan-250" -j ACCEPT
-A FORWARD -i x -m comment --comment "someone else's" -j ACCEPT
"#;
        let rules = parse_owned_rules(listing, "fanlink:fan-250");
        let wanted = accept_rules(&ifname("fan-250"), &ifname("fan-250")).unwrap();
        assert_eq!(
            rules,
            wanted
                .iter()
                .map(|args| OwnedRule { chain: "FORWARD".into(), args: args.clone() })
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn tool_errors_name_the_fix() {
        let err = run_tool("fanlink-no-such-tool", &[]).unwrap_err().to_string();
        assert_eq!(err, "cannot run `fanlink-no-such-tool`: it is not installed; install the fanlink-no-such-tool package");
        assert_eq!(package("iptables-legacy"), "iptables");
        assert_eq!(
            hint("Fatal: can't open lock file /run/xtables.lock: Permission denied"),
            " (fanlink needs root or CAP_NET_ADMIN)"
        );
        let err =
            NftError::Failed { command: "iptables-legacy -S".into(), stderr: "x".into(), hint: hint("x") };
        assert_eq!(err.to_string(), "`iptables-legacy -S` failed: x");
    }
}
