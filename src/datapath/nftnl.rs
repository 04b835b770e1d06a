//! nf_tables objects as netlink messages: tables, base chains and rules built from a small
//! set of expressions, and the same read back from dumps. Pure: no socket (that is
//! `netlink::nfnl`), so every byte is tested here, against what `nft` and `iptables-nft`
//! send (strace) and what `nft --debug=netlink` prints for them.
//!
//! Only what fanlink writes or must recognise is modelled. Expressions read back compare
//! equal to the ones built, so "is this rule the one we want" is `==`; attributes a dump adds
//! (counter values, bitwise op) are not part of the model.

use crate::netlink::msg::{split, Attr, MsgBuilder, NLA_F_NESTED, NLM_F_APPEND, NLM_F_CREATE};
use crate::netlink::nfnl::nft_msg;

pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_DELRULE: u16 = 8;

pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_FORWARD: u32 = 2;
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const NF_INET_POST_ROUTING: u32 = 4;
/// nft's `raw` and `srcnat` priorities.
pub const PRIO_RAW: i32 = -300;
pub const PRIO_SRCNAT: i32 = 100;
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_COMPAT: u16 = 5;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
/// `NFTNL_UDATA_TABLE_COMMENT` and `NFTNL_UDATA_RULE_COMMENT`: what `nft` prints as `comment`.
const UDATA_COMMENT: u8 = 0;

pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_L4PROTO: u32 = 16;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
/// `fib daddr type`: NFT_FIB_RESULT_ADDRTYPE with NFTA_FIB_F_DADDR; `local` is RTN_LOCAL.
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub const NFTA_FIB_F_DADDR: u32 = 1 << 1;
pub const RTN_LOCAL: u32 = 2;
pub const NFT_META_OIFNAME: u32 = 7;
pub const NFT_CT_STATE: u32 = 0;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
/// `ct state` bits (NF_CT_STATE_BIT): established 2, related 4.
pub const CT_ESTABLISHED_RELATED: u32 = 2 | 4;

/// One expression of a rule, as fanlink writes or recognises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    Bitwise {
        reg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Fib {
        result: u32,
        flags: u32,
        dreg: u32,
    },
    /// Written with zero counts; read back whatever the counts.
    Counter,
    /// An x_tables match (iptables-nft's `-m NAME`), `info` the match's struct.
    Match {
        name: String,
        rev: u32,
        info: Vec<u8>,
    },
    Verdict(u32),
    Notrack,
    Masq,
    /// Anything else, by name: never one of ours.
    Other(String),
}

impl Expr {
    fn name(&self) -> &str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Cmp { .. } => "cmp",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
            Expr::Counter => "counter",
            Expr::Match { .. } => "match",
            Expr::Verdict(_) => "immediate",
            Expr::Notrack => "notrack",
            Expr::Masq => "masq",
            Expr::Other(name) => name,
        }
    }

    /// The attributes inside NFTA_EXPR_DATA, in libnftnl's order.
    fn encode(&self, m: &mut MsgBuilder) {
        match self {
            Expr::Meta { key, dreg } => {
                m.be32(2, *key).be32(1, *dreg);
            }
            Expr::Payload { dreg, base, offset, len } => {
                m.be32(1, *dreg).be32(2, *base).be32(3, *offset).be32(4, *len);
            }
            Expr::Bitwise { reg, mask, xor } => {
                m.be32(1, *reg).be32(2, *reg).be32(3, mask.len() as u32);
                m.nest(4 | NLA_F_NESTED, |m| {
                    m.bytes(NFTA_DATA_VALUE, mask);
                });
                m.nest(5 | NLA_F_NESTED, |m| {
                    m.bytes(NFTA_DATA_VALUE, xor);
                });
            }
            Expr::Cmp { sreg, op, data } => {
                m.be32(1, *sreg).be32(2, *op).nest(3 | NLA_F_NESTED, |m| {
                    m.bytes(NFTA_DATA_VALUE, data);
                });
            }
            Expr::Ct { key, dreg } => {
                m.be32(2, *key).be32(1, *dreg);
            }
            Expr::Fib { result, flags, dreg } => {
                m.be32(1, *dreg).be32(2, *result).be32(3, *flags);
            }
            Expr::Counter => {
                m.be64(1, 0).be64(2, 0);
            }
            Expr::Match { name, rev, info } => {
                m.str(1, name).be32(2, *rev).bytes(3, info);
            }
            Expr::Verdict(code) => {
                m.be32(1, NFT_REG_VERDICT).nest(2 | NLA_F_NESTED, |m| {
                    m.nest(NFTA_DATA_VERDICT | NLA_F_NESTED, |m| {
                        m.be32(NFTA_VERDICT_CODE, *code);
                    });
                });
            }
            Expr::Notrack | Expr::Masq | Expr::Other(_) => {}
        }
    }

    /// Reads one NFTA_LIST_ELEM back; unknown shapes become `Other`, a nest whose lengths
    /// do not add up (in what is read) is an error.
    pub fn decode(elem: &Attr<'_>) -> Decoded<Expr> {
        let mut name = "";
        let mut data: Vec<Attr<'_>> = Vec::new();
        for a in elem.nested() {
            let a = a?;
            match a.ty {
                NFTA_EXPR_NAME => name = a.str(),
                NFTA_EXPR_DATA => data = a.nested().collect::<Decoded<_>>()?,
                _ => {}
            }
        }
        // Set when a nest read below is malformed: the closures answer `None` then, and the
        // whole element is an error rather than an `Other`.
        let malformed = std::cell::Cell::new(false);
        fn find_in<'a>(nest: &Attr<'a>, ty: u16, malformed: &std::cell::Cell<bool>) -> Option<Attr<'a>> {
            let found = nest.nested().find(|a| a.as_ref().map_or(true, |a| a.ty == ty))?;
            found.map_err(|_| malformed.set(true)).ok()
        }
        let get = |ty: u16| data.iter().find(|a| a.ty == ty);
        let num = |ty: u16| get(ty).and_then(Attr::be32);
        // The value inside a nested NFTA_DATA_VALUE (cmp data, bitwise mask/xor).
        let value = |ty: u16| Some(find_in(get(ty)?, NFTA_DATA_VALUE, &malformed)?.value.to_vec());
        let other = || Expr::Other(name.to_string());
        let parsed = match name {
            "meta" => (|| Some(Expr::Meta { key: num(2)?, dreg: num(1)? }))(),
            "payload" => {
                (|| Some(Expr::Payload { dreg: num(1)?, base: num(2)?, offset: num(3)?, len: num(4)? }))()
            }
            "bitwise" => (|| {
                let reg = num(1)?;
                (num(2)? == reg).then_some(())?;
                Some(Expr::Bitwise { reg, mask: value(4)?, xor: value(5)? })
            })(),
            "cmp" => (|| Some(Expr::Cmp { sreg: num(1)?, op: num(2)?, data: value(3)? }))(),
            "ct" => (|| Some(Expr::Ct { key: num(2)?, dreg: num(1)? }))(),
            "fib" => (|| Some(Expr::Fib { dreg: num(1)?, result: num(2)?, flags: num(3)? }))(),
            "counter" => Some(Expr::Counter),
            "match" => (|| {
                let info = get(3)?.value.to_vec();
                Some(Expr::Match { name: get(1)?.str().to_string(), rev: num(2)?, info })
            })(),
            "immediate" => (|| {
                (num(1)? == NFT_REG_VERDICT).then_some(())?;
                let verdict = find_in(get(2)?, NFTA_DATA_VERDICT, &malformed)?;
                let code = find_in(&verdict, NFTA_VERDICT_CODE, &malformed)?;
                Some(Expr::Verdict(code.be32()?))
            })(),
            "notrack" => Some(Expr::Notrack),
            "masq" if data.is_empty() => Some(Expr::Masq),
            _ => None,
        };
        if malformed.get() {
            return Err(crate::netlink::msg::DecodeError("malformed nftables expression"));
        }
        Ok(parsed.unwrap_or_else(other))
    }
}

/// `meta iifname`/`oifname` compared with `name`; nft pads the name to IFNAMSIZ (16),
/// iptables-nft sends it with one NUL, and both compare the same bytes.
pub fn ifname_is(key: u32, name: &str, op: u32, pad_to_ifnamsiz: bool) -> [Expr; 2] {
    let mut data = name.as_bytes().to_vec();
    data.resize(if pad_to_ifnamsiz { 16 } else { name.len() + 1 }, 0);
    [Expr::Meta { key, dreg: NFT_REG_1 }, Expr::Cmp { sreg: NFT_REG_1, op, data }]
}

/// `ip saddr`/`daddr` (`offset` 12/16) in `net`, or not in it, as nft writes a prefix.
pub fn ip_in(offset: u32, net: ipnet::Ipv4Net, op: u32) -> [Expr; 3] {
    let net = net.trunc();
    [
        Expr::Payload { dreg: NFT_REG_1, base: NFT_PAYLOAD_NETWORK_HEADER, offset, len: 4 },
        Expr::Bitwise { reg: NFT_REG_1, mask: net.netmask().octets().to_vec(), xor: vec![0; 4] },
        Expr::Cmp { sreg: NFT_REG_1, op, data: net.network().octets().to_vec() },
    ]
}

/// `udp dport PORT`, as nft writes it (the `meta l4proto udp` dependency first).
pub fn udp_dport(port: u16) -> [Expr; 4] {
    [
        Expr::Meta { key: NFT_META_L4PROTO, dreg: NFT_REG_1 },
        Expr::Cmp { sreg: NFT_REG_1, op: NFT_CMP_EQ, data: vec![17] },
        Expr::Payload { dreg: NFT_REG_1, base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2 },
        Expr::Cmp { sreg: NFT_REG_1, op: NFT_CMP_EQ, data: port.to_be_bytes().to_vec() },
    ]
}

/// `fib daddr type local`: the packet is addressed to this host.
pub fn to_this_host() -> [Expr; 2] {
    [
        Expr::Fib { result: NFT_FIB_RESULT_ADDRTYPE, flags: NFTA_FIB_F_DADDR, dreg: NFT_REG_1 },
        Expr::Cmp { sreg: NFT_REG_1, op: NFT_CMP_EQ, data: RTN_LOCAL.to_ne_bytes().to_vec() },
    ]
}

/// `ct state established,related`, as nft writes it.
pub fn ct_established() -> [Expr; 3] {
    [
        Expr::Ct { key: NFT_CT_STATE, dreg: NFT_REG_1 },
        Expr::Bitwise {
            reg: NFT_REG_1,
            mask: CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp { sreg: NFT_REG_1, op: NFT_CMP_NEQ, data: vec![0; 4] },
    ]
}

/// A comment in nftnl's userdata TLV form (`type, len, value`), NUL included.
pub fn udata_comment(comment: &str) -> Vec<u8> {
    let len = u8::try_from(comment.len() + 1).expect("comments are short");
    let mut out = vec![UDATA_COMMENT, len];
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    out
}

/// The comment in a userdata blob, if it has one.
pub fn parse_udata_comment(mut udata: &[u8]) -> Option<String> {
    while let [ty, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *ty == UDATA_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        udata = &rest[usize::from(*len)..];
    }
    None
}

/// Creates table `name` (no error if it exists: `nft`'s `table ip T {}`).
pub fn new_table(family: u8, name: &str, comment: Option<&str>) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, family);
    m.str(NFTA_TABLE_NAME, name);
    if let Some(c) = comment {
        m.bytes(NFTA_TABLE_USERDATA, &udata_comment(c));
    }
    m
}

pub fn del_table(family: u8, name: &str) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_DELTABLE, 0, family);
    m.str(NFTA_TABLE_NAME, name);
    m
}

/// A base chain with policy accept; `kind` is "filter" or "nat".
pub fn new_base_chain(family: u8, table: &str, name: &str, kind: &str, hook: u32, prio: i32) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family);
    m.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, name);
    m.nest(NFTA_CHAIN_HOOK | NLA_F_NESTED, |m| {
        m.be32(NFTA_HOOK_HOOKNUM, hook).be32(NFTA_HOOK_PRIORITY, prio as u32);
    });
    m.be32(NFTA_CHAIN_POLICY, NF_ACCEPT).str(NFTA_CHAIN_TYPE, kind);
    m
}

/// Where a new rule goes in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Top,
    End,
}

/// A rule. `iptables` adds the NFTA_RULE_COMPAT nest iptables-nft writes on its rules.
pub fn new_rule(
    family: u8,
    table: &str,
    chain: &str,
    exprs: &[Expr],
    at: At,
    comment: Option<&str>,
    iptables: bool,
) -> MsgBuilder {
    let flags = NLM_F_CREATE | if at == At::End { NLM_F_APPEND } else { 0 };
    let mut m = nft_msg(NFT_MSG_NEWRULE, flags, family);
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    m.nest(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, |m| {
        for e in exprs {
            m.nest(NFTA_LIST_ELEM | NLA_F_NESTED, |m| {
                m.str(NFTA_EXPR_NAME, e.name()).nest(NFTA_EXPR_DATA | NLA_F_NESTED, |m| e.encode(m));
            });
        }
    });
    if iptables {
        m.nest(NFTA_RULE_COMPAT | NLA_F_NESTED, |m| {
            m.be32(1, 0).be32(2, 0);
        });
    }
    if let Some(c) = comment {
        m.bytes(NFTA_RULE_USERDATA, &udata_comment(c));
    }
    m
}

pub fn del_rule(family: u8, table: &str, chain: &str, handle: u64) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_DELRULE, 0, family);
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain).be64(NFTA_RULE_HANDLE, handle);
    m
}

/// Dump requests: every table or chain of `family` (0: all), the rules of one chain.
pub fn get_tables(family: u8) -> MsgBuilder {
    nft_msg(NFT_MSG_GETTABLE, 0, family)
}

pub fn get_chains(family: u8) -> MsgBuilder {
    nft_msg(NFT_MSG_GETCHAIN, 0, family)
}

pub fn get_rules(family: u8, table: &str, chain: &str) -> MsgBuilder {
    let mut m = nft_msg(NFT_MSG_GETRULE, 0, family);
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    m
}

/// A table from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub family: u8,
    pub name: String,
    pub comment: Option<String>,
}

/// A chain from a dump; `hook` (number, priority) and `policy` only for base chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    pub family: u8,
    pub table: String,
    pub name: String,
    pub hook: Option<(u32, i32)>,
    pub policy: Option<u32>,
}

/// A rule from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

type Decoded<T> = Result<T, crate::netlink::msg::DecodeError>;

/// The family byte and the attributes of a reply payload (after the nlmsghdr).
fn body(payload: &[u8]) -> Decoded<(u8, Vec<Attr<'_>>)> {
    let (hdr, a) = split(payload, 4)?;
    Ok((hdr[0], a.collect::<Result<_, _>>()?))
}

fn find<'a>(a: &[Attr<'a>], ty: u16) -> Option<Attr<'a>> {
    a.iter().find(|x| x.ty == ty).copied()
}

pub fn parse_table(payload: &[u8]) -> Decoded<TableInfo> {
    let (family, a) = body(payload)?;
    Ok(TableInfo {
        family,
        name: find(&a, NFTA_TABLE_NAME).map(|x| x.str().to_string()).unwrap_or_default(),
        comment: find(&a, NFTA_TABLE_USERDATA).and_then(|x| parse_udata_comment(x.value)),
    })
}

pub fn parse_chain(payload: &[u8]) -> Decoded<ChainInfo> {
    let (family, a) = body(payload)?;
    let hook = match find(&a, NFTA_CHAIN_HOOK) {
        Some(h) => {
            let h: Vec<Attr<'_>> = h.nested().collect::<Decoded<_>>()?;
            (|| Some((find(&h, NFTA_HOOK_HOOKNUM)?.be32()?, find(&h, NFTA_HOOK_PRIORITY)?.be32()? as i32)))()
        }
        None => None,
    };
    let text = |ty| find(&a, ty).map(|x| x.str().to_string()).unwrap_or_default();
    Ok(ChainInfo {
        family,
        table: text(NFTA_CHAIN_TABLE),
        name: text(NFTA_CHAIN_NAME),
        hook,
        policy: find(&a, NFTA_CHAIN_POLICY).and_then(|x| x.be32()),
    })
}

pub fn parse_rule(payload: &[u8]) -> Decoded<RuleInfo> {
    let (family, a) = body(payload)?;
    let text = |ty| find(&a, ty).map(|x| x.str().to_string()).unwrap_or_default();
    let exprs = match find(&a, NFTA_RULE_EXPRESSIONS) {
        Some(list) => list
            .nested()
            .filter(|e| e.as_ref().map_or(true, |e| e.ty == NFTA_LIST_ELEM))
            .map(|e| Expr::decode(&e?))
            .collect::<Decoded<_>>()?,
        None => Vec::new(),
    };
    Ok(RuleInfo {
        family,
        table: text(NFTA_RULE_TABLE),
        chain: text(NFTA_RULE_CHAIN),
        handle: find(&a, NFTA_RULE_HANDLE).and_then(|x| x.be64()).unwrap_or(0),
        exprs,
        comment: find(&a, NFTA_RULE_USERDATA).and_then(|x| parse_udata_comment(x.value)),
    })
}

#[cfg(all(test, target_endian = "little"))]
#[path = "nftnl_tests.rs"]
mod tests;
