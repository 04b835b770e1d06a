use super::*;
use crate::netlink::msg::{attrs, messages};

fn payload(m: MsgBuilder) -> Vec<u8> {
    let b = m.finish(1, 0);
    messages(&b).next().unwrap().unwrap().payload.to_vec()
}

#[test]
fn every_expression_reads_back_as_built() {
    let mut exprs: Vec<Expr> = ip_in(12, "250.0.0.0/8".parse().unwrap(), NFT_CMP_EQ).into();
    exprs.extend(ifname_is(NFT_META_OIFNAME, "fan-250", NFT_CMP_NEQ, true));
    exprs.extend(ct_established());
    exprs.extend(udp_dport(8472));
    exprs.extend(to_this_host());
    exprs.extend([
        Expr::Counter,
        Expr::Match { name: "comment".into(), rev: 0, info: vec![b'x'; 256] },
        Expr::Notrack,
        Expr::Masq,
        Expr::Verdict(NF_ACCEPT),
    ]);
    let rule = new_rule(NFPROTO_INET, "t", "c", &exprs, At::Top, Some("fanlink:f"), false);
    let got = parse_rule(&payload(rule)).unwrap();
    assert_eq!((got.family, got.table.as_str(), got.chain.as_str()), (NFPROTO_INET, "t", "c"));
    assert_eq!(got.exprs, exprs);
    assert_eq!(got.comment.as_deref(), Some("fanlink:f"));
}

#[test]
fn nft_forms_match_its_debug_output() {
    // `nft --debug=netlink add rule ip t c ip saddr 250.0.0.0/8 oifname "fan-250"`:
    // [ payload load 4b @ network header + 12 => reg 1 ]
    // [ bitwise reg 1 = ( reg 1 & 0x000000ff ) ^ 0x00000000 ]  [ cmp eq reg 1 0x000000fa ]
    // [ meta load oifname => reg 1 ]  [ cmp eq reg 1 0x2d6e6166 0x00303532 0x00000000 0x00000000 ]
    let [p, b, c] = ip_in(12, "250.1.0.0/8".parse().unwrap(), NFT_CMP_EQ);
    assert_eq!(p, Expr::Payload { dreg: 1, base: 1, offset: 12, len: 4 });
    assert_eq!(b, Expr::Bitwise { reg: 1, mask: vec![0xff, 0, 0, 0], xor: vec![0; 4] });
    assert_eq!(c, Expr::Cmp { sreg: 1, op: 0, data: vec![0xfa, 0, 0, 0] });
    let [_, name] = ifname_is(NFT_META_OIFNAME, "fan-250", NFT_CMP_EQ, true);
    assert_eq!(name, Expr::Cmp { sreg: 1, op: 0, data: b"fan-250\0\0\0\0\0\0\0\0\0".to_vec() });
    let [_, short] = ifname_is(NFT_META_IIFNAME, "fan-250", NFT_CMP_EQ, false);
    assert_eq!(short, Expr::Cmp { sreg: 1, op: 0, data: b"fan-250\0".to_vec() });
    // [ ct load state => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000006 ) ^ 0x00000000 ]
    // [ cmp neq reg 1 0x00000000 ]
    assert_eq!(ct_established()[1], Expr::Bitwise { reg: 1, mask: vec![6, 0, 0, 0], xor: vec![0; 4] });
}

#[test]
fn unknown_expressions_are_other() {
    // A `log` expression with data, and a `masq` with flags (not the plain one we write).
    let mut m = nft_msg(NFT_MSG_NEWRULE, 0, NFPROTO_IPV4);
    m.nest(NFTA_RULE_EXPRESSIONS, |m| {
        for (name, flags) in [("log", true), ("masq", true), ("cmp", false)] {
            m.nest(NFTA_LIST_ELEM, |m| {
                m.str(NFTA_EXPR_NAME, name).nest(NFTA_EXPR_DATA, |m| {
                    if flags {
                        m.be32(1, 4);
                    }
                });
            });
        }
    });
    let got = parse_rule(&payload(m)).unwrap();
    assert_eq!(got.exprs, [Expr::Other("log".into()), Expr::Other("masq".into()), Expr::Other("cmp".into())]);
}

#[test]
fn userdata_comments() {
    assert_eq!(udata_comment("ab"), [0, 3, b'a', b'b', 0]);
    assert_eq!(parse_udata_comment(&[0, 3, b'a', b'b', 0]).as_deref(), Some("ab"));
    // nft puts other TLVs first sometimes (rule: ebtables policy is type 1).
    assert_eq!(parse_udata_comment(&[1, 1, 9, 0, 2, b'x', 0]).as_deref(), Some("x"));
    assert_eq!(parse_udata_comment(&[0, 9, b'x']), None, "truncated");
    assert_eq!(parse_udata_comment(&[]), None);
}

#[test]
fn tables_and_chains_read_back() {
    let t = parse_table(&payload(new_table(NFPROTO_IPV4, "fanlink-f", Some("c")))).unwrap();
    assert_eq!(t, TableInfo { family: 2, name: "fanlink-f".into(), comment: Some("c".into()) });
    let c = new_base_chain(NFPROTO_INET, "filter", "forward", "filter", NF_INET_FORWARD, PRIO_RAW);
    let c = parse_chain(&payload(c)).unwrap();
    let want = ChainInfo {
        family: 1,
        table: "filter".into(),
        name: "forward".into(),
        hook: Some((NF_INET_FORWARD, -300)),
        policy: Some(NF_ACCEPT),
    };
    assert_eq!(c, want);
    let regular = nft_msg(NFT_MSG_NEWCHAIN, 0, NFPROTO_IPV4);
    assert_eq!(parse_chain(&payload(regular)).unwrap().hook, None);
}

#[test]
fn rule_messages_have_the_right_flags_and_handles() {
    let top = new_rule(NFPROTO_IPV4, "t", "c", &[], At::Top, None, false);
    assert_eq!(top.flags() & (NLM_F_APPEND | NLM_F_CREATE), NLM_F_CREATE, "no APPEND: inserted first");
    let end = new_rule(NFPROTO_IPV4, "t", "c", &[], At::End, None, true);
    assert_ne!(end.flags() & NLM_F_APPEND, 0);
    let p = payload(end);
    let compat = attrs(&p[4..]).flatten().find(|a| a.ty == NFTA_RULE_COMPAT).unwrap();
    assert_eq!(compat.value, [8, 0, 1, 0, 0, 0, 0, 0, 8, 0, 2, 0, 0, 0, 0, 0]);
    let del = parse_rule(&payload(del_rule(NFPROTO_IPV4, "t", "c", 42))).unwrap();
    assert_eq!((del.handle, del.exprs.len()), (42, 0));
    assert_eq!(get_rules(2, "t", "c").ty(), 0x0a07);
}
