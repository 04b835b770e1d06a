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
//! So fanlink adds those two rules, marked with the comment `fanlink:<fan>`, to every
//! firewall in the namespace that can drop forwarded traffic, at the top of the chain:
//!
//! - iptables-nft (`ip filter` with chain `FORWARD` in nftables): written over netlink in
//!   exactly the form `iptables-nft -I` writes (x_tables `conntrack` and `comment` matches,
//!   a counter; checked byte for byte against its strace), so `iptables-nft -S` and Docker
//!   read them as their own. They go into `DOCKER-USER` when that chain exists (Docker
//!   evaluates it first and never rewrites it), else into `FORWARD`; Docker re-inserting its
//!   own jumps above them later is harmless, as Docker's chains only act on Docker's bridges.
//! - Any other nftables base chain on the forward hook with `policy drop` (a hand-written
//!   `inet filter`, `ct state established,related accept; policy drop`): the same two rules
//!   in nft's native form (`iifname "fan-250" accept`, `oifname "fan-250" ct state
//!   established,related accept`), the mark as the rule's comment. Such a drop cannot be
//!   overridden from another table (every base chain must accept), and the fan's notrack
//!   (see `nft`) makes overlay traffic `untracked`, which an `established,related` rule
//!   does not pass: the interface rule does.
//! - iptables-legacy (`filter` in `/proc/net/ip_tables_names`, read rather than asked so
//!   that a host without legacy tables does not get one): the `iptables-legacy` program,
//!   the only process fanlink still starts for a firewall, and only on such hosts.
//!
//! All nftables changes of one call are one transaction. Ensuring never moves a rule that
//! is already there, so an administrator's rule placed above ours (say, a DROP from the fan
//! bridge into Docker's networks, which our `-i` rule in `DOCKER-USER` would otherwise let
//! through, as Docker's and LXD's own recipes do) keeps winning. A host whose firewall
//! cannot drop forwarded traffic is left alone.

use crate::datapath::legacy;
use crate::datapath::nft::{table_name, with_socket, NftError, TABLE_PREFIX};
use crate::datapath::nftnl::{self, At, ChainInfo, Expr, RuleInfo, NFPROTO_INET, NFPROTO_IPV4, NFT_CMP_EQ};
use crate::ifname::IfName;
use crate::netlink::{self, msg::MsgBuilder, Netlink};

/// The chain Docker reserves for the administrator's rules, evaluated before its own.
pub const DOCKER_USER: &str = "DOCKER-USER";

/// The comment marking fanlink's rules for one fan; fan names are encoded as for the NAT
/// table, so the comment is always a plain word.
pub fn rule_comment(fan: &IfName) -> String {
    format!("fanlink:{}", &table_name(fan)[TABLE_PREFIX.len()..])
}

/// A chain that can drop forwarded traffic, and so gets the accept rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// iptables-nft's `ip filter`; `docker`: it has `DOCKER-USER`.
    IptablesNft { docker: bool },
    /// A native nftables forward base chain with policy drop.
    Native { family: u8, table: String, chain: String },
}

impl Target {
    fn family(&self) -> u8 {
        match self {
            Target::IptablesNft { .. } => NFPROTO_IPV4,
            Target::Native { family, .. } => *family,
        }
    }

    fn table(&self) -> &str {
        match self {
            Target::IptablesNft { .. } => "filter",
            Target::Native { table, .. } => table,
        }
    }

    /// Where our rules belong.
    fn chain(&self) -> &str {
        match self {
            Target::IptablesNft { docker: true } => DOCKER_USER,
            Target::IptablesNft { docker: false } => "FORWARD",
            Target::Native { chain, .. } => chain,
        }
    }

    /// Where rules of ours may be: where they belong, and where they belonged before.
    fn chains(&self) -> Vec<&str> {
        match self {
            Target::IptablesNft { docker } => {
                ["FORWARD"].into_iter().chain(docker.then_some(DOCKER_USER)).collect()
            }
            Target::Native { chain, .. } => vec![chain],
        }
    }

    /// The two rules, in the order they should stand, in this firewall's own form.
    pub fn wanted(&self, bridge: &IfName, comment: &str) -> [Vec<Expr>; 2] {
        let (iif, oif) = (nftnl::NFT_META_IIFNAME, nftnl::NFT_META_OIFNAME);
        let accept = Expr::Verdict(nftnl::NF_ACCEPT);
        match self {
            Target::IptablesNft { .. } => {
                let comment = xt_comment(comment);
                let mut i = nftnl::ifname_is(iif, bridge.as_str(), NFT_CMP_EQ, false).to_vec();
                i.extend([comment.clone(), Expr::Counter, accept.clone()]);
                let mut o = nftnl::ifname_is(oif, bridge.as_str(), NFT_CMP_EQ, false).to_vec();
                o.extend([xt_conntrack_established(), comment, Expr::Counter, accept]);
                [i, o]
            }
            Target::Native { .. } => {
                let mut i = nftnl::ifname_is(iif, bridge.as_str(), NFT_CMP_EQ, true).to_vec();
                i.push(accept.clone());
                let mut o = nftnl::ifname_is(oif, bridge.as_str(), NFT_CMP_EQ, true).to_vec();
                o.extend(nftnl::ct_established());
                o.push(accept);
                [i, o]
            }
        }
    }

    /// Whether `rule` carries our mark for the fan whose mark is `comment`.
    fn is_ours(&self, rule: &RuleInfo, comment: &str) -> bool {
        match self {
            Target::IptablesNft { .. } => rule.exprs.contains(&xt_comment(comment)),
            Target::Native { .. } => rule.comment.as_deref() == Some(comment),
        }
    }

    /// A change inserting `exprs` at the top of our chain.
    fn insert(&self, exprs: &[Expr], comment: &str) -> (String, MsgBuilder) {
        let (family, table, chain) = (self.family(), self.table(), self.chain());
        let m = match self {
            Target::IptablesNft { .. } => nftnl::new_rule(family, table, chain, exprs, At::Top, None, true),
            Target::Native { .. } => {
                nftnl::new_rule(family, table, chain, exprs, At::Top, Some(comment), false)
            }
        };
        (format!("insert accept rule into {table} {chain}"), m)
    }
}

/// iptables' `-m comment --comment TEXT`: `struct xt_comment_info { char comment[256]; }`.
pub fn xt_comment(text: &str) -> Expr {
    let mut info = text.as_bytes().to_vec();
    info.resize(256, 0);
    Expr::Match { name: "comment".into(), rev: 0, info }
}

/// iptables' `-m conntrack --ctstate RELATED,ESTABLISHED`: `struct xt_conntrack_mtinfo3`
/// (8 addresses of 16 bytes, then expires, l4proto and ports, 168 bytes with padding) with
/// `match_flags` = XT_CONNTRACK_STATE at 146 and `state_mask` established|related at 150.
pub fn xt_conntrack_established() -> Expr {
    let mut info = vec![0u8; 168];
    info[146..148].copy_from_slice(&1u16.to_ne_bytes());
    info[150..152].copy_from_slice(&(nftnl::CT_ESTABLISHED_RELATED as u16).to_ne_bytes());
    Expr::Match { name: "conntrack".into(), rev: 3, info }
}

/// The nftables chains in this namespace that get our rules, from one chain dump.
pub fn targets(chains: &[ChainInfo]) -> Vec<Target> {
    let iptables = |c: &ChainInfo| c.family == NFPROTO_IPV4 && c.table == "filter";
    let mut out = Vec::new();
    let has_iptables = chains.iter().any(|c| iptables(c) && c.name == "FORWARD");
    if has_iptables {
        out.push(Target::IptablesNft { docker: chains.iter().any(|c| iptables(c) && c.name == DOCKER_USER) });
    }
    for c in chains {
        let forward_drop =
            matches!(c.hook, Some((nftnl::NF_INET_FORWARD, _))) && c.policy == Some(nftnl::NF_DROP);
        let ours = c.table.starts_with(TABLE_PREFIX);
        let family = c.family == NFPROTO_IPV4 || c.family == NFPROTO_INET;
        if forward_drop && family && !ours && !(iptables(c) && has_iptables) {
            out.push(Target::Native { family: c.family, table: c.table.clone(), chain: c.name.clone() });
        }
    }
    out
}

/// The changes that make `have` (our rules in the target's chains) exactly `wanted` at
/// the top of the target's chain: stale ones (another bridge, the other chain, a second
/// copy) go, missing ones are inserted, the rest stay where they are.
pub fn reconcile(
    target: &Target,
    bridge: &IfName,
    have: &[RuleInfo],
    comment: &str,
) -> Vec<(String, MsgBuilder)> {
    let wanted = target.wanted(bridge, comment);
    let mut kept: Vec<&Vec<Expr>> = Vec::new();
    let mut changes = Vec::new();
    for rule in have {
        let fits =
            rule.chain == target.chain() && wanted.contains(&rule.exprs) && !kept.contains(&&rule.exprs);
        if fits {
            kept.push(&rule.exprs);
        } else {
            let m = nftnl::del_rule(rule.family, &rule.table, &rule.chain, rule.handle);
            changes.push((format!("delete rule {} from {} {}", rule.handle, rule.table, rule.chain), m));
        }
    }
    // Inserted in reverse so that they end up first, in the order of `wanted`.
    for exprs in wanted.iter().rev().filter(|w| !kept.contains(w)) {
        changes.push(target.insert(exprs, comment));
    }
    changes
}

/// Our rules for the fan marked `comment` in the chains of `target`.
fn owned(nl: &mut Netlink, target: &Target, comment: &str) -> Result<Vec<RuleInfo>, NftError> {
    let mut rules = Vec::new();
    for chain in target.chains() {
        let dump = match nl.dump(nftnl::get_rules(target.family(), target.table(), chain)) {
            Ok(dump) => dump,
            // DOCKER-USER (or the whole table) went away since the chain dump.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        for payload in dump {
            let rule =
                nftnl::parse_rule(&payload).map_err(|e| netlink::malformed("list nftables rules", e))?;
            if target.is_ours(&rule, comment) {
                rules.push(rule);
            }
        }
    }
    Ok(rules)
}

/// The nftables chains that get our rules, now.
fn current_targets(nl: &mut Netlink) -> Result<Vec<Target>, NftError> {
    let mut chains = Vec::new();
    for payload in nl.dump(nftnl::get_chains(0))? {
        chains.push(nftnl::parse_chain(&payload).map_err(|e| netlink::malformed("list nftables chains", e))?);
    }
    Ok(targets(&chains))
}

/// Makes every firewall in this namespace that can drop forwarded traffic accept the
/// bridge's, and drops rules of ours that no longer match (another bridge, the wrong
/// chain). Returns whether anything changed; a second call changes nothing.
pub fn ensure_forward_accept(fan: &IfName, bridge: &IfName) -> Result<bool, NftError> {
    let comment = rule_comment(fan);
    let changed = with_socket(|nl| {
        let mut changes = Vec::new();
        for target in current_targets(nl)? {
            let have = owned(nl, &target, &comment)?;
            changes.extend(reconcile(&target, bridge, &have, &comment));
        }
        for (what, _) in changes.iter().filter(|(w, _)| w.starts_with("insert")) {
            log::info!("{what} for {bridge}");
        }
        let changed = !changes.is_empty();
        nl.transaction(changes)?;
        Ok(changed)
    })?;
    Ok(legacy::ensure_forward_accept(fan, bridge)? || changed)
}

/// Removes every rule of ours for `fan`; returns whether there was any.
pub fn remove_forward_accept(fan: &IfName) -> Result<bool, NftError> {
    let comment = rule_comment(fan);
    let changed = with_socket(|nl| {
        let mut changes = Vec::new();
        for target in current_targets(nl)? {
            for rule in owned(nl, &target, &comment)? {
                let m = nftnl::del_rule(rule.family, &rule.table, &rule.chain, rule.handle);
                changes.push((format!("delete rule {} from {} {}", rule.handle, rule.table, rule.chain), m));
            }
        }
        let changed = !changes.is_empty();
        nl.transaction(changes)?;
        Ok(changed)
    })?;
    Ok(legacy::remove_forward_accept(fan)? || changed)
}

#[cfg(all(test, target_endian = "little"))]
#[path = "firewall_tests.rs"]
mod tests;
