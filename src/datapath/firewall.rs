//! Letting fan traffic through a host firewall that drops forwarded packets.
//!
//! Docker sets the iptables `FORWARD` policy to DROP, and with br_netfilter
//! (`bridge-nf-call-iptables=1`, the default once the module is in, also in every new
//! namespace) even frames *bridged* between two ports of the fan bridge traverse iptables
//! `FORWARD`. Found with network namespaces on Debian 12 (iptables 1.8.9, nftables 1.0.6,
//! kernel 6.18), a bridge `fan-250` with a container veth, a second veth port and a vxlan
//! port to a remote namespace, and an uplink to an "outside" namespace, after
//! `iptables -P FORWARD DROP` (tests/nat.rs repeats all of this):
//!
//! - Both bridged (container <-> other port, container <-> vxlan <-> remote) and routed
//!   (container -> outside, masqueraded) traffic stop. The vxlan's own UDP is INPUT/OUTPUT
//!   on the host, so only the inner frames are affected.
//! - The per-bridge `nf_call_iptables` knob (sysfs `bridge/nf_call_iptables`,
//!   `IFLA_BR_NF_CALL_IPTABLES`) does not help: it is already 0, and br_netfilter calls
//!   iptables if the per-namespace sysctl *or* the bridge option is on. Only the global
//!   `net.bridge.bridge-nf-call-iptables=0` skips iptables for bridged frames, and that
//!   breaks Docker and Kubernetes, which rely on it.
//! - An `accept` in fanlink's own nftables table (a forward base chain at any priority)
//!   does not help either: in nftables a packet must be accepted by *every* base chain on
//!   the hook, so iptables-nft's `ip filter FORWARD` still drops it.
//! - What works is an ACCEPT inside the dropping chain itself: `-i BRIDGE -j ACCEPT` and
//!   `-o BRIDGE -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`. br_netfilter gives
//!   bridged frames the bridge as in- and output device, so the first rule also covers
//!   bridged traffic; the second lets replies in without opening the containers to new
//!   connections from outside. This is what Docker and LXD document for the same problem.
//! - iptables-legacy and iptables-nft are separate hooks: a legacy FORWARD drop needs the
//!   rules added with `iptables-legacy`, an nft one with `iptables-nft`; neither helps the
//!   other.
//!
//! So fanlink adds those two rules, marked `-m comment --comment fanlink:<fan>`, to each
//! iptables backend whose filter table exists in the namespace (`ip filter` with chain
//! `FORWARD` in nftables; `filter` in `/proc/net/ip_tables_names` for legacy, which is
//! read rather than asked so that a host without legacy tables does not get one). A host
//! without an iptables filter table is left alone. The rules go at the top of
//! `DOCKER-USER` when that chain exists (Docker evaluates it first and never rewrites it),
//! else at the top of `FORWARD`; Docker re-inserting its own jumps above them later is
//! harmless, as Docker's chains only act on Docker's bridges. They are changed through the
//! `iptables-*` programs, not `nft`, because iptables-nft refuses tables that `nft` edited.
//! Ensuring never moves a rule that is already there, so an administrator's rule placed
//! above ours (say, a DROP from the fan bridge into Docker's networks, which our `-i`
//! rule in `DOCKER-USER` would otherwise let through, as Docker's and LXD's own recipes
//! do) keeps winning.
//! A drop in some other nftables base chain (a hand-written `inet filter` with
//! `policy drop`) cannot be overridden from outside; its owner must accept the bridge.

use crate::datapath::nft::{nft_items, rule_ifname, run_tool, table_name, NftError, TABLE_PREFIX};
use crate::ifname::IfName;

/// The chain Docker reserves for the administrator's rules, evaluated before its own.
pub const DOCKER_USER: &str = "DOCKER-USER";

/// Which iptables the rules go through; the two keep separate tables in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn program(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }
}

/// The comment marking fanlink's rules for one fan; fan names are encoded as for the NAT
/// table, so the comment is always a plain word.
pub fn rule_comment(fan: &IfName) -> String {
    format!("fanlink:{}", &table_name(fan)[TABLE_PREFIX.len()..])
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

/// The iptables backends that have a filter table in this namespace, and for each whether
/// it has Docker's `DOCKER-USER` chain.
pub fn backends_in_use() -> Result<Vec<(Backend, bool)>, NftError> {
    let mut found = Vec::new();
    let chains = run_tool("nft", &["-j", "list", "chains", "ip"], None)?;
    let names = filter_chains(&chains)?;
    if names.iter().any(|c| c == "FORWARD") {
        found.push((Backend::Nft, names.iter().any(|c| c == DOCKER_USER)));
    }
    // Absent when the kernel has no legacy iptables; then nothing legacy can drop.
    // `thread-self`: `/proc/net` follows the thread-group leader's namespace, not a thread
    // that has setns'd elsewhere.
    let legacy = std::fs::read_to_string("/proc/thread-self/net/ip_tables_names").unwrap_or_default();
    if legacy.lines().any(|t| t == "filter") {
        let docker = run_tool(Backend::Legacy.program(), &["-w", "-S", DOCKER_USER], None).is_ok();
        found.push((Backend::Legacy, docker));
    }
    Ok(found)
}

/// Chain names of table `ip filter` in `nft -j list chains ip` output.
fn filter_chains(json: &str) -> Result<Vec<String>, NftError> {
    let items = nft_items(json, "nft -j list chains ip")?;
    Ok(items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("table").and_then(|t| t.as_str()) == Some("filter"))
        .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect())
}

/// Our rules for `fan` in the chains we ever use, on one backend.
fn owned_rules(backend: Backend, comment: &str, docker: bool) -> Result<Vec<OwnedRule>, NftError> {
    let mut rules = Vec::new();
    for chain in ["FORWARD"].into_iter().chain(docker.then_some(DOCKER_USER)) {
        let listing = run_tool(backend.program(), &["-w", "-S", chain], None)?;
        rules.extend(parse_owned_rules(&listing, comment));
    }
    Ok(rules)
}

fn change(backend: Backend, op: &str, chain: &str, args: &[String]) -> Result<(), NftError> {
    let mut argv = vec!["-w", op, chain];
    argv.extend(args.iter().map(String::as_str));
    run_tool(backend.program(), &argv, None).map(drop)
}

/// Makes every iptables filter table in this namespace accept the bridge's traffic, and
/// drops rules of ours that no longer match (another bridge, the wrong chain). Returns
/// whether anything changed; a second call changes nothing.
pub fn ensure_forward_accept(fan: &IfName, bridge: &IfName) -> Result<bool, NftError> {
    let wanted = accept_rules(fan, bridge)?;
    let comment = rule_comment(fan);
    let mut changed = false;
    for (backend, docker) in backends_in_use()? {
        let chain = if docker { DOCKER_USER } else { "FORWARD" };
        let have = owned_rules(backend, &comment, docker)?;
        let mut kept: Vec<&OwnedRule> = Vec::new();
        for rule in &have {
            // Stale: another bridge, the other chain, or duplicated (a race between two
            // runs). `-D` by spec removes the first copy, so every copy of a duplicate goes
            // and one is inserted again at the top below.
            let copies = have.iter().filter(|r| *r == rule).count();
            if rule.chain != chain || !wanted.contains(&rule.args) || copies > 1 {
                change(backend, "-D", &rule.chain, &rule.args)?;
                changed = true;
            } else {
                kept.push(rule);
            }
        }
        // Inserted in reverse so they end up first, in the order of `accept_rules`.
        for rule in wanted.iter().rev() {
            if !kept.iter().any(|r| &r.args == rule) {
                change(backend, "-I", chain, rule)?;
                changed = true;
                log::info!("{}: accept forwarding for {bridge} in {chain}", backend.program());
            }
        }
    }
    Ok(changed)
}

/// Removes every rule of ours for `fan`; returns whether there was any.
pub fn remove_forward_accept(fan: &IfName) -> Result<bool, NftError> {
    let comment = rule_comment(fan);
    let mut changed = false;
    for (backend, docker) in backends_in_use()? {
        for rule in owned_rules(backend, &comment, docker)? {
            change(backend, "-D", &rule.chain, &rule.args)?;
            changed = true;
        }
    }
    Ok(changed)
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
        assert!(accept_rules(&ifname("f"), &ifname("fan+")).is_err());
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
    fn filter_chains_reads_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}},
            {"chain": {"family": "ip", "table": "fanlink-fan-250", "name": "postrouting"}}]}"#;
        assert_eq!(filter_chains(json).unwrap(), ["FORWARD", "DOCKER-USER"]);
        assert!(filter_chains("garbage").is_err());
    }
}
