use super::*;
use crate::netlink::msg::{attrs, messages};

fn ifname(s: &str) -> IfName {
    s.parse().unwrap()
}

/// The value of NFTA_RULE_EXPRESSIONS in a built rule.
fn expressions(m: MsgBuilder) -> Vec<u8> {
    let b = m.finish(1, 0);
    let msg = messages(&b).next().unwrap().unwrap();
    attrs(&msg.payload[4..]).flatten().find(|a| a.ty == 4).unwrap().value.to_vec()
}

/// Our rules for iptables-nft are byte for byte what `iptables-nft -I FORWARD ...` sends
/// (strace on Debian 12, iptables 1.8.9; testdata/), and read back as what we build.
#[test]
fn iptables_nft_rules_are_what_iptables_nft_writes() {
    let target = Target::IptablesNft { docker: false };
    let [i, o] = target.wanted(&ifname("fan-250"), "fanlink:fan-250");
    for (exprs, strace) in [
        (&i, &include_bytes!("testdata/iptables-nft-in.bin")[..]),
        (&o, &include_bytes!("testdata/iptables-nft-out.bin")[..]),
    ] {
        let (_, m) = target.insert(exprs, "fanlink:fan-250");
        assert_eq!(expressions(m), strace);
        let decoded: Vec<Expr> = attrs(strace).flatten().map(|e| Expr::decode(&e).unwrap()).collect();
        assert_eq!(&decoded, exprs);
    }
}

#[test]
fn native_rules_carry_the_mark_as_comment() {
    let target = Target::Native { family: NFPROTO_INET, table: "filter".into(), chain: "forward".into() };
    let [i, o] = target.wanted(&ifname("fan-250"), "fanlink:fan-250");
    assert_eq!(i.last(), Some(&Expr::Verdict(nftnl::NF_ACCEPT)));
    assert!(o.contains(&Expr::Ct { key: nftnl::NFT_CT_STATE, dreg: 1 }));
    let (what, m) = target.insert(&i, "fanlink:fan-250");
    assert_eq!(what, "insert accept rule into filter forward");
    let b = m.finish(1, 0);
    let rule = nftnl::parse_rule(messages(&b).next().unwrap().unwrap().payload).unwrap();
    assert_eq!(rule.comment.as_deref(), Some("fanlink:fan-250"));
    assert!(target.is_ours(&rule, "fanlink:fan-250"));
    assert!(!target.is_ours(&rule, "fanlink:fan-2500"));
}

fn chain(family: u8, table: &str, name: &str, hook: Option<u32>, policy: Option<u32>) -> ChainInfo {
    ChainInfo { family, table: table.into(), name: name.into(), hook: hook.map(|h| (h, 0)), policy }
}

#[test]
fn targets_are_iptables_and_dropping_forward_chains() {
    let fwd = Some(nftnl::NF_INET_FORWARD);
    let (drop, accept) = (Some(nftnl::NF_DROP), Some(nftnl::NF_ACCEPT));
    let chains = [
        chain(NFPROTO_IPV4, "filter", "FORWARD", fwd, drop),
        chain(NFPROTO_IPV4, "filter", "DOCKER-USER", None, None),
        chain(NFPROTO_INET, "filter", "forward", fwd, drop),
        chain(NFPROTO_INET, "open", "forward", fwd, accept),
        chain(NFPROTO_INET, "filter", "input", Some(1), drop),
        chain(10, "ip6only", "forward", fwd, drop),
        chain(NFPROTO_IPV4, "fanlink-x", "forward", fwd, drop),
    ];
    assert_eq!(
        targets(&chains),
        [
            Target::IptablesNft { docker: true },
            Target::Native { family: NFPROTO_INET, table: "filter".into(), chain: "forward".into() },
        ]
    );
    assert_eq!(targets(&chains[2..]).len(), 1);
    assert_eq!(targets(&chains[..1]), [Target::IptablesNft { docker: false }]);
    assert_eq!(targets(&[]), []);
}

fn rule(target: &Target, chain: &str, handle: u64, exprs: Vec<Expr>) -> RuleInfo {
    RuleInfo {
        family: target.family(),
        table: target.table().into(),
        chain: chain.into(),
        handle,
        exprs,
        comment: None,
    }
}

#[test]
fn reconcile_keeps_what_fits_and_replaces_the_rest() {
    let t = Target::IptablesNft { docker: true };
    let c = "fanlink:f";
    let [i, o] = t.wanted(&ifname("br"), c);
    let names = |changes: Vec<(String, MsgBuilder)>| changes.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(
        names(reconcile(&t, &ifname("br"), &[], c)),
        ["insert accept rule into filter DOCKER-USER", "insert accept rule into filter DOCKER-USER"]
    );
    let good = [rule(&t, "DOCKER-USER", 1, i.clone()), rule(&t, "DOCKER-USER", 2, o.clone())];
    assert!(reconcile(&t, &ifname("br"), &good, c).is_empty(), "idempotent");
    let [old, _] = t.wanted(&ifname("old-br"), c);
    let messy = [
        rule(&t, "FORWARD", 3, i.clone()),
        rule(&t, "DOCKER-USER", 4, old),
        rule(&t, "DOCKER-USER", 5, o.clone()),
        rule(&t, "DOCKER-USER", 6, o),
    ];
    assert_eq!(
        names(reconcile(&t, &ifname("br"), &messy, c)),
        [
            "delete rule 3 from filter FORWARD",
            "delete rule 4 from filter DOCKER-USER",
            "delete rule 6 from filter DOCKER-USER",
            "insert accept rule into filter DOCKER-USER",
        ]
    );
}

#[test]
fn xt_structs_have_the_kernel_sizes() {
    let Expr::Match { info, .. } = xt_comment("fanlink:f") else { panic!() };
    assert_eq!((info.len(), &info[..10]), (256, &b"fanlink:f\0"[..]));
    let Expr::Match { name, rev, info } = xt_conntrack_established() else { panic!() };
    assert_eq!((name.as_str(), rev, info.len()), ("conntrack", 3, 168));
}
