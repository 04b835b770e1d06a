//! The fan's own nftables table: NAT for traffic that leaves the overlay, and no conntrack
//! for traffic that stays in it. One table per fan, owned by fanlink, written over netlink
//! as one nf_tables transaction (no `nft` process; see Cargo.toml for why fanlink's own
//! codec rather than a crate) and read back with one table dump.
//!
//! Table `ip fanlink-<fan>`, as `nft list table` prints it:
//!
//! ```text
//! table ip fanlink-fan-250 {
//!     comment "fanlink overlay=250.0.0.0/8 bridge=fan-250 notrack"
//!     chain prerouting { type filter hook prerouting priority raw; policy accept;
//!         ip saddr 250.0.0.0/8 ip daddr 250.0.0.0/8 notrack
//!         udp dport 8472 fib daddr type local notrack }
//!     chain output { type filter hook output priority raw; policy accept;
//!         ip saddr 250.0.0.0/8 ip daddr 250.0.0.0/8 notrack
//!         udp dport 8472 notrack }
//!     chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 250.0.0.0/8 ip daddr != 250.0.0.0/8 oifname != "fan-250" masquerade comment ".." }
//! }
//! ```
//!
//! Masquerade is LXD's rule: the `daddr` clause keeps traffic between fan addresses (here or
//! on another host) un-NATed; the `oifname` clause does the same for frames that stay on the
//! bridge, which br_netfilter also shows to the ip hooks, with the bridge as output device.
//! Overlay-to-overlay traffic (bridged, through the vxlan port, or the host's own to its
//! containers) needs no NAT, so it skips conntrack (`notrack` at raw priority, before
//! conntrack's -200): conntrack is what made the fan slower than a plain vxlan once this
//! table, with its nat chain, switched it on in the namespace. The vxlan's own UDP (port
//! 8472, which fanlink's vxlan holds in this namespace) skips it too: what this host sends,
//! and what comes in addressed to this host (`fib daddr type local`, so that tunnels this
//! host only routes keep their conntrack state for the firewalls that use it). Untracked
//! packets have `ct state untracked`, so firewalls that accept only `established,related`
//! need the interface accept rules `firewall` adds.
//!
//! Replacing is one transaction: create T (no error if present), delete T, create the new
//! T, so no packet ever sees a missing or half-built table, and re-applying leaves one table.
//!
//! Names. A table name is `fanlink-` + the fan name with every byte outside `[A-Za-z0-9-]`
//! written `_xx` (hex), which is injective and reversible (`fanlink-fan-250`,
//! `fanlink-br_2efan`) and stays a word `nft` can parse back. Interface names inside rules
//! are compared as bytes, so any name works there.
//!
//! Ownership and parameters. The table carries the comment `fanlink overlay=.. bridge=..
//! notrack`, so an observer running `nft list table` sees who made it and with what, and
//! [`list`] tells whether a table is current from the comment alone (`notrack` marks this
//! layout: a table written by an older fanlink, NAT only, is rewritten). The masquerade rule
//! carries it too, for readers of older listings.

use ipnet::Ipv4Net;

use crate::datapath::nftnl::{self, At, Expr, NFPROTO_IPV4, NFT_CMP_EQ, NFT_CMP_NEQ};
use crate::fan::FAN_UDP_PORT;
use crate::ifname::IfName;
use crate::netlink::{self, msg::MsgBuilder, Netlink};

/// Prefix of every table fanlink owns; tables without it are never touched.
pub const TABLE_PREFIX: &str = "fanlink-";

/// Why talking to nftables (or iptables-legacy, see `firewall`) failed, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("{error}{}", hint(error))]
    Netlink { error: netlink::Error },
    #[error("cannot run `{program}`: it is not installed; install the {package} package")]
    Missing { program: String, package: String },
    #[error("cannot run `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` failed: {stderr}{hint}")]
    Failed { command: String, stderr: String, hint: &'static str },
    #[error("interface name \"{name}\" cannot be used in an iptables rule: {why}; rename the interface")]
    BadName { name: String, why: &'static str },
}

impl From<netlink::Error> for NftError {
    fn from(error: netlink::Error) -> NftError {
        NftError::Netlink { error }
    }
}

/// What to do about an nf_tables error, for the ones that have a fix.
fn hint(e: &netlink::Error) -> &'static str {
    use nix::errno::Errno;
    match e.errno {
        Errno::EPERM | Errno::EACCES => "; fanlink needs root or CAP_NET_ADMIN",
        Errno::EPROTONOSUPPORT | Errno::EOPNOTSUPP | Errno::EAFNOSUPPORT => {
            "; this kernel lacks nf_tables (CONFIG_NF_TABLES)"
        }
        Errno::ENOENT if e.op.contains("rule") => {
            "; this kernel lacks an nf_tables expression fanlink uses (CONFIG_NFT_MASQ, CONFIG_NFT_CT, CONFIG_NFT_COMPAT)"
        }
        _ => "",
    }
}

/// A table fanlink made, as the kernel reports it.
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

/// The comment that marks a table and its rule: owner, parameters and layout, so a reader
/// can tell whether the table is current without parsing rules.
pub fn params_comment(overlay: Ipv4Net, bridge: &IfName) -> String {
    format!("fanlink overlay={} bridge={} notrack", overlay.trunc(), bridge)
}

/// The changes, each named for errors, that replace the fan's table in one transaction.
pub fn apply_batch(fan: &IfName, overlay: Ipv4Net, bridge: &IfName) -> Vec<(String, MsgBuilder)> {
    let mut batch = delete_batch(fan);
    batch.extend(create_batch(fan, overlay, bridge));
    batch
}

/// The changes that create the fan's table where there is none (NLM_F_EXCL: EEXIST if
/// there is). Deleting nothing, they leave the kernel no deferred destruction to wait for.
pub fn create_batch(fan: &IfName, overlay: Ipv4Net, bridge: &IfName) -> Vec<(String, MsgBuilder)> {
    let table = table_name(fan);
    let overlay = overlay.trunc();
    let comment = params_comment(overlay, bridge);
    let t = table.as_str();
    let mut create = nftnl::new_table(NFPROTO_IPV4, t, Some(&comment));
    create.add_flags(crate::netlink::msg::NLM_F_EXCL);
    let mut batch = vec![(format!("create table ip {t}"), create)];
    let mut within: Vec<Expr> = nftnl::ip_in(12, overlay, NFT_CMP_EQ).into();
    within.extend(nftnl::ip_in(16, overlay, NFT_CMP_EQ));
    within.push(Expr::Notrack);
    let tunnel: Vec<Expr> = nftnl::udp_dport(FAN_UDP_PORT).into();
    let tunnel_in = [&tunnel[..], &nftnl::to_this_host(), &[Expr::Notrack]].concat();
    let tunnel_out = [&tunnel[..], &[Expr::Notrack]].concat();
    for (chain, hook, tunnel) in [
        ("prerouting", nftnl::NF_INET_PRE_ROUTING, tunnel_in),
        ("output", nftnl::NF_INET_LOCAL_OUT, tunnel_out),
    ] {
        let c = nftnl::new_base_chain(NFPROTO_IPV4, t, chain, "filter", hook, nftnl::PRIO_RAW);
        batch.push((format!("create chain {chain} in {t}"), c));
        for rule in [&within, &tunnel] {
            let r = nftnl::new_rule(NFPROTO_IPV4, t, chain, rule, At::End, None, false);
            batch.push((format!("add notrack rule to {t}"), r));
        }
    }
    let mut masq: Vec<Expr> = nftnl::ip_in(12, overlay, NFT_CMP_EQ).into();
    masq.extend(nftnl::ip_in(16, overlay, NFT_CMP_NEQ));
    masq.extend(nftnl::ifname_is(nftnl::NFT_META_OIFNAME, bridge.as_str(), NFT_CMP_NEQ, true));
    masq.push(Expr::Masq);
    let post = "postrouting";
    let c =
        nftnl::new_base_chain(NFPROTO_IPV4, t, post, "nat", nftnl::NF_INET_POST_ROUTING, nftnl::PRIO_SRCNAT);
    batch.push((format!("create chain {post} in {t}"), c));
    let r = nftnl::new_rule(NFPROTO_IPV4, t, post, &masq, At::End, Some(&comment), false);
    batch.push((format!("add masquerade rule to {t}"), r));
    batch
}

/// The changes that remove the fan's table, succeeding when it is already gone (created
/// empty first: `destroy` needs Linux 6.3).
pub fn delete_batch(fan: &IfName) -> Vec<(String, MsgBuilder)> {
    let t = table_name(fan);
    vec![
        (format!("create table ip {t}"), nftnl::new_table(NFPROTO_IPV4, &t, None)),
        (format!("delete table ip {t}"), nftnl::del_table(NFPROTO_IPV4, &t)),
    ]
}

/// Creates the fan's table, or replaces it if it exists.
pub fn apply(fan: &IfName, overlay: Ipv4Net, bridge: &IfName) -> Result<(), NftError> {
    with_socket(|nl| {
        // A plan writes the table mostly where there is none (a cold up): the creation is
        // tried first, with no request to ask; EEXIST (a stale table) and it is replaced.
        match nl.transaction(create_batch(fan, overlay, bridge)) {
            Err(e) if e.is_exists() => Ok(nl.transaction(apply_batch(fan, overlay, bridge))?),
            other => Ok(other?),
        }
    })
}

/// Removes the fan's table; an absent table is fine.
pub fn delete(fan: &IfName) -> Result<(), NftError> {
    with_socket(|nl| Ok(nl.transaction(delete_batch(fan))?))
}

thread_local! {
    /// One netfilter socket per thread, kept open: closing one after a transaction that
    /// deleted something waits for the kernel's deferred destruction of it (an RCU grace
    /// period, 7-16 ms on the loaded bench machine).
    static SOCKET: std::cell::RefCell<Option<Netlink>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on this thread's netfilter socket; a failure discards the socket, so that the
/// next call starts clean.
pub(crate) fn with_socket<T>(f: impl FnOnce(&mut Netlink) -> Result<T, NftError>) -> Result<T, NftError> {
    SOCKET.with(|cell| {
        let mut slot = cell.borrow_mut();
        let nl = match slot.as_mut() {
            Some(nl) => nl,
            None => slot.insert(Netlink::netfilter()?),
        };
        let result = f(nl);
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// The `ip` tables whose names start with `fanlink-`, with their parameters comment: one dump.
pub fn list() -> Result<Vec<NatTable>, NftError> {
    let dump = with_socket(|nl| Ok(nl.dump(nftnl::get_tables(NFPROTO_IPV4))?))?;
    let mut out = Vec::new();
    for payload in dump {
        let t = nftnl::parse_table(&payload).map_err(|e| netlink::malformed("list nftables tables", e))?;
        if t.family == NFPROTO_IPV4 && t.name.starts_with(TABLE_PREFIX) {
            out.push(NatTable {
                fan: fan_of_table(&t.name),
                params: t.comment.unwrap_or_default(),
                name: t.name,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::msg::{messages, NLMSG_HDRLEN};
    use nftnl::RuleInfo;

    fn ifname(s: &str) -> IfName {
        s.parse().unwrap()
    }

    /// The rules of a batch, decoded as a dump would decode them.
    fn rules(batch: Vec<(String, MsgBuilder)>) -> Vec<RuleInfo> {
        batch
            .into_iter()
            .map(|(_, m)| m.finish(1, 0))
            .filter(|b| b[4] == nftnl::NFT_MSG_NEWRULE as u8)
            .map(|b| nftnl::parse_rule(messages(&b).next().unwrap().unwrap().payload).unwrap())
            .collect()
    }

    #[test]
    fn apply_batch_replaces_the_table_in_order() {
        let batch = apply_batch(&ifname("fan-250"), "250.1.2.3/8".parse().unwrap(), &ifname("fan-250"));
        let names: Vec<&str> = batch.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "create table ip fanlink-fan-250",
                "delete table ip fanlink-fan-250",
                "create table ip fanlink-fan-250",
                "create chain prerouting in fanlink-fan-250",
                "add notrack rule to fanlink-fan-250",
                "add notrack rule to fanlink-fan-250",
                "create chain output in fanlink-fan-250",
                "add notrack rule to fanlink-fan-250",
                "add notrack rule to fanlink-fan-250",
                "create chain postrouting in fanlink-fan-250",
                "add masquerade rule to fanlink-fan-250",
            ]
        );
        let (_, table) = &batch[2];
        let b = table.clone().finish(1, 0);
        let t = nftnl::parse_table(&b[NLMSG_HDRLEN..]).unwrap();
        assert_eq!(t.comment.as_deref(), Some("fanlink overlay=250.0.0.0/8 bridge=fan-250 notrack"));
        assert!(delete_batch(&ifname("fan-250")).iter().zip(&batch).all(|(a, b)| a.0 == b.0));
        // Where there is no table: the same minus the delete, and EEXIST if one appeared.
        let create = create_batch(&ifname("fan-250"), "250.1.2.3/8".parse().unwrap(), &ifname("fan-250"));
        assert!(create.iter().map(|(n, _)| n.as_str()).eq(names[2..].iter().copied()));
        assert_ne!(create[0].1.flags() & crate::netlink::msg::NLM_F_EXCL, 0);
    }

    #[test]
    fn rules_say_what_nft_would() {
        let got = rules(apply_batch(&ifname("f"), "10.0.0.0/8".parse().unwrap(), &ifname("br")));
        assert_eq!(got.len(), 5);
        let net = |offset, op| nftnl::ip_in(offset, "10.0.0.0/8".parse().unwrap(), op).to_vec();
        let within = [net(12, NFT_CMP_EQ), net(16, NFT_CMP_EQ), vec![Expr::Notrack]].concat();
        let udp = nftnl::udp_dport(8472).to_vec();
        let local = nftnl::to_this_host().to_vec();
        assert_eq!((got[0].chain.as_str(), &got[0].exprs), ("prerouting", &within));
        let tunnel_in = [udp.clone(), local, vec![Expr::Notrack]].concat();
        assert_eq!((got[1].chain.as_str(), &got[1].exprs), ("prerouting", &tunnel_in));
        assert_eq!((got[2].chain.as_str(), &got[2].exprs), ("output", &within));
        assert_eq!((got[3].chain.as_str(), &got[3].exprs), ("output", &[udp, vec![Expr::Notrack]].concat()));
        let oif = nftnl::ifname_is(nftnl::NFT_META_OIFNAME, "br", NFT_CMP_NEQ, true).to_vec();
        let masq = [net(12, NFT_CMP_EQ), net(16, NFT_CMP_NEQ), oif, vec![Expr::Masq]].concat();
        assert_eq!((got[4].chain.as_str(), &got[4].exprs), ("postrouting", &masq));
        assert_eq!(got[4].comment.as_deref(), Some("fanlink overlay=10.0.0.0/8 bridge=br notrack"));
        // 10.0.0.0/8: mask ff000000, network 0a000000, in network byte order.
        assert_eq!(masq[1], Expr::Bitwise { reg: 1, mask: vec![255, 0, 0, 0], xor: vec![0; 4] },);
        assert_eq!(masq[2], Expr::Cmp { sreg: 1, op: NFT_CMP_EQ, data: vec![10, 0, 0, 0] });
    }

    #[test]
    fn current_means_same_parameters_and_layout() {
        let t = |params: &str| NatTable {
            name: "fanlink-f".into(),
            fan: Some("f".into()),
            params: params.into(),
        };
        let o = "250.0.0.0/8".parse().unwrap();
        assert!(t("fanlink overlay=250.0.0.0/8 bridge=fan-250 notrack").is_current(o, &ifname("fan-250")));
        assert!(
            !t("fanlink overlay=250.0.0.0/8 bridge=fan-250").is_current(o, &ifname("fan-250")),
            "NAT only: old"
        );
        assert!(!t("fanlink overlay=250.0.0.0/8 bridge=fan-250 notrack").is_current(o, &ifname("fan-25")));
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
    fn errors_name_the_fix() {
        use nix::errno::Errno;
        let e = |op: &str, errno| NftError::from(netlink::Error::new(op, errno)).to_string();
        assert_eq!(
            e("nftables transaction", Errno::EPERM),
            "nftables transaction: EPERM: Operation not permitted; fanlink needs root or CAP_NET_ADMIN"
        );
        assert!(e("add masquerade rule to t", Errno::ENOENT)
            .ends_with("(CONFIG_NFT_MASQ, CONFIG_NFT_CT, CONFIG_NFT_COMPAT)"));
        assert!(e("delete table ip t", Errno::ENOENT).ends_with("No such file or directory"));
    }
}
