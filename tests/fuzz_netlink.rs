//! Fuzzing the netlink readers as tests/fuzz.rs fuzzes the rules parser: `msg::messages` and
//! the link, address, route, tc, VNI and nf_tables readers, on arbitrary bytes and on
//! mutations of real messages, never panic and never loop (each case runs in microseconds;
//! a loop would hang the test), and a reader given a length that lies (an attribute that
//! claims more bytes than are left, a message longer than its datagram) returns an error.
//!
//! The real messages: the crate's own builders (a new bridge, vxlan and veth, an address, a
//! VNI, a BPF filter, an nftables table, chain and rule: the same layout the kernel dumps),
//! and, in the root test, the kernel's own dump replies from a network namespace of the
//! test's thread. `FANLINK_FUZZ_CASES` sets the cases per property (default 256).

use fanlink::datapath::nftnl;
use fanlink::netlink::msg::{self, MsgBuilder, NLMSG_HDRLEN};
use fanlink::netlink::{addr, link, route, tc, vni, NewBridge, NewVeth, NewVxlan};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// The readers, by name, each with the size of its fixed header (before the attributes).
type Reader = (&'static str, usize, fn(&[u8]) -> Result<(), msg::DecodeError>);

const LINK: Reader = ("link", 16, |p| link::parse_link(p).map(drop));
const ADDR: Reader = ("addr", 8, |p| addr::parse_addr(p).map(drop));
const ROUTE: Reader = ("route", 12, |p| route::parse_route(p).map(drop));
const TC: Reader = ("tc", 20, |p| tc::parse_filter(p).map(drop));
const VNI: Reader = ("vni", 8, |p| vni::parse_vnis(p).map(drop));
const TABLE: Reader = ("nft table", 4, |p| nftnl::parse_table(p).map(drop));
const CHAIN: Reader = ("nft chain", 4, |p| nftnl::parse_chain(p).map(drop));
const RULE: Reader = ("nft rule", 4, |p| nftnl::parse_rule(p).map(drop));
const READERS: [Reader; 8] = [LINK, ADDR, ROUTE, TC, VNI, TABLE, CHAIN, RULE];

fn cases() -> u32 {
    std::env::var("FANLINK_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
}

fn payload(m: MsgBuilder) -> Vec<u8> {
    m.finish(1, 0)[NLMSG_HDRLEN..].to_vec()
}

/// Messages from the crate's builders, each with the reader of its kind.
fn built() -> Vec<(Reader, Vec<u8>)> {
    let vxlan = NewVxlan {
        name: "fan-250-vx".into(),
        mtu: 1450,
        vnifilter: true,
        port: 4789,
        master: Some(7),
        alias: Some("fanlink".into()),
    };
    let rule = nftnl::new_rule(
        2,
        "fanlink",
        "postrouting",
        &[nftnl::ip_in(12, "250.0.0.0/8".parse().unwrap(), 0).as_slice(), &nftnl::ct_established()].concat(),
        nftnl::At::End,
        Some("fanlink:fan-250"),
        false,
    );
    vec![
        (LINK, payload(link::new_bridge_msg(&NewBridge { name: "fan-250".into(), mtu: 1450, mac: Some([2, 0, 0, 0, 0, 1]), alias: None }))),
        (LINK, payload(link::new_vxlan_msg(&vxlan))),
        (LINK, payload(link::new_veth_msg(&NewVeth { name: "a0".into(), peer: "b0".into(), mtu: 1450, master: Some(3), alias: None }))),
        (ADDR, payload(addr::addr_msg(true, 3, "250.1.1.1/8".parse().unwrap()))),
        (VNI, payload(vni::vni_msg(true, 4, 0x5a0101))),
        (TC, payload(tc::attach_bpf_msg(4, true, 9, "fanlink", false))),
        (TABLE, payload(nftnl::new_table(2, "fanlink", Some("fanlink")))),
        (CHAIN, payload(nftnl::new_base_chain(2, "fanlink", "postrouting", "nat", 4, 100))),
        (RULE, payload(rule)),
    ]
}

/// Overwrites a few bytes of a real message, then maybe cuts it short.
fn mutations(seeds: Vec<(Reader, Vec<u8>)>) -> impl Strategy<Value = (usize, Vec<u8>)> {
    let n = seeds.len();
    (0..n, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), any::<Option<prop::sample::Index>>())
        .prop_map(move |(i, edits, cut)| {
            let mut m = seeds[i].1.clone();
            for (at, byte) in edits {
                if !m.is_empty() {
                    let at = at.index(m.len());
                    m[at] = byte;
                }
            }
            if let Some(cut) = cut {
                m.truncate(cut.index(m.len() + 1));
            }
            (i, m)
        })
}

fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, test);
    eprintln!("[fuzz] {name}: {} inputs in {:.1?}", cases(), started.elapsed());
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Every reader on mutations of `seeds` (any reader on any seed, too: a link reader given a
/// route is one more input), and `messages` on them framed as a datagram.
fn never_panic_on(seeds: Vec<(Reader, Vec<u8>)>) {
    run("netlink readers, mutations", mutations(seeds.clone()), |(_, m)| {
        for (_, _, read) in READERS {
            let _ = read(&m);
        }
        Ok(())
    });
    run("netlink readers, arbitrary bytes", prop::collection::vec(any::<u8>(), 0..512), |m| {
        for (_, _, read) in READERS {
            let _ = read(&m);
        }
        for msg in msg::messages(&m).flatten() {
            let _ = msg::parse_error(&msg);
        }
        Ok(())
    });
}

/// An attribute that claims more than is left, at each top-level attribute of each seed,
/// makes its reader fail.
fn lying_lengths_are_errors(seeds: &[(Reader, Vec<u8>)]) {
    for ((name, header, read), m) in seeds {
        assert!(read(m).is_ok(), "{name}: the seed itself reads");
        let mut at = msg::align(*header);
        while at + 4 <= m.len() {
            let len = u16::from_ne_bytes([m[at], m[at + 1]]) as usize;
            let mut lying = m.clone();
            let claim = (m.len() - at + 4) as u16;
            lying[at..at + 2].copy_from_slice(&claim.to_ne_bytes());
            assert!(read(&lying).is_err(), "{name}: an attribute at {at} that claims {claim} bytes was taken");
            at += msg::align(len.max(4));
        }
    }
}

/// The offsets of the attributes in `m[from..to]`, nested ones (NLA_F_NESTED) too, each
/// with the end of the list it is in.
fn attributes(m: &[u8], from: usize, to: usize, out: &mut Vec<(usize, usize)>) {
    let mut at = from;
    while at + 4 <= to {
        let len = u16::from_ne_bytes([m[at], m[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([m[at + 2], m[at + 3]]);
        if len < 4 || at + len > to {
            return;
        }
        out.push((at, to));
        if ty & msg::NLA_F_NESTED != 0 {
            attributes(m, at + 4, at + len, out);
        }
        at += msg::align(len);
    }
}

/// The same inside the nests each reader reads: a child that claims more than its nest holds.
fn lying_nested_lengths(seeds: &[(Reader, Vec<u8>)]) -> Vec<String> {
    let mut taken = Vec::new();
    for ((name, header, read), m) in seeds {
        let mut all = Vec::new();
        attributes(m, msg::align(*header), m.len(), &mut all);
        for (at, end) in all.into_iter().filter(|(_, end)| *end != m.len()) {
            let mut lying = m.clone();
            let claim = (end - at + 4) as u16;
            lying[at..at + 2].copy_from_slice(&claim.to_ne_bytes());
            if read(&lying).is_ok() {
                taken.push(format!("{name}: nested attribute at {at} claims {claim} bytes"));
            }
        }
    }
    taken
}

/// A datagram cut inside a message, or whose message claims more than the datagram holds,
/// gives an error from `messages`.
fn framing_errors(payloads: &[Vec<u8>]) {
    for p in payloads {
        let mut m = MsgBuilder::new(16, 0);
        m = m.header(p);
        let whole = m.finish(1, 0);
        assert!(msg::messages(&whole).all(|r| r.is_ok()));
        for cut in 1..whole.len() {
            assert!(msg::messages(&whole[..cut]).any(|r| r.is_err()), "cut at {cut} of {}", whole.len());
        }
        let mut lying = whole.clone();
        lying[0..4].copy_from_slice(&(whole.len() as u32 + 4).to_ne_bytes());
        assert!(msg::messages(&lying).any(|r| r.is_err()));
    }
}

#[test]
fn netlink_readers_never_panic_on_built_messages_and_refuse_lying_lengths() {
    let seeds = built();
    lying_lengths_are_errors(&seeds);
    let taken = lying_nested_lengths(&seeds);
    assert!(taken.is_empty(), "lying nested lengths were taken:\n{}", taken.join("\n"));
    framing_errors(&seeds.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
    never_panic_on(seeds);
}
