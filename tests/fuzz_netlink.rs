//! Fuzzing the netlink readers as tests/fuzz.rs fuzzes the rules parser: `msg::messages` and
//! the link, address, route, tc, VNI and nf_tables readers, on arbitrary bytes and on
//! mutations of real messages, never panic and never loop (each case runs in microseconds;
//! a loop would hang the test), and a reader given a length that lies (an attribute that
//! claims more bytes than are left, a message longer than its datagram) returns an error.
//!
//! The real messages: the crate's own builders (a new bridge, vxlan and veth, an address, a
//! VNI, a BPF filter, an nftables table, chain and rule: the same layout the kernel dumps),
//! and, in the root test, the kernel's own dump replies from a network namespace of the
//! test's thread. `FANLINK_FUZZ_CASES` sets the cases per property (default 256); long runs
//! (`bench/fuzz`) and their figures: bench/README.md "Fuzzing".

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
        (
            LINK,
            payload(link::new_bridge_msg(&NewBridge {
                name: "fan-250".into(),
                mtu: 1450,
                mac: Some([2, 0, 0, 0, 0, 1]),
                alias: None,
            })),
        ),
        (LINK, payload(link::new_vxlan_msg(&vxlan))),
        (
            LINK,
            payload(link::new_veth_msg(&NewVeth {
                name: "a0".into(),
                peer: "b0".into(),
                mtu: 1450,
                master: Some(3),
                alias: None,
            })),
        ),
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
    (
        0..n,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<Option<prop::sample::Index>>(),
    )
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
    let mut runner =
        TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
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
            assert!(
                read(&lying).is_err(),
                "{name}: an attribute at {at} that claims {claim} bytes was taken"
            );
            at += msg::align(len.max(4));
        }
    }
}

/// The offsets of the attributes in `m[from..to]`, nested ones (NLA_F_NESTED) too, each
/// with the end of the list it is in.
/// rtnetlink sets no NLA_F_NESTED on the nests these readers read: (reader, the nest's type at
/// the top, and the type of a nest within it). The link reader reads IFLA_INFO_DATA of a
/// vxlan only (its numbers mean something per kind): `attributes` is told which it is.
const UNFLAGGED_NESTS: [(&str, u16, Option<u16>); 3] = [
    ("link", 18, Some(2)), // IFLA_LINKINFO, IFLA_INFO_DATA
    ("tc", 2, None),       // TCA_OPTIONS
    ("vni", 1, None),      // VXLAN_VNIFILTER_ENTRY
];

fn attributes(
    reader: &str,
    m: &[u8],
    from: usize,
    to: usize,
    depth: usize,
    out: &mut Vec<(usize, usize, usize)>,
) {
    let mut at = from;
    while at + 4 <= to {
        let len = u16::from_ne_bytes([m[at], m[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([m[at + 2], m[at + 3]]);
        if len < 4 || at + len > to {
            return;
        }
        out.push((at, to, depth));
        let unflagged = UNFLAGGED_NESTS.iter().any(|(r, top, inner)| {
            let kind_read = reader != "link" || m[..to].windows(6).any(|w| w == b"vxlan\0");
            *r == reader && ((depth == 0 && ty == *top) || (depth == 1 && Some(ty) == *inner && kind_read))
        });
        if ty & msg::NLA_F_NESTED != 0 || unflagged {
            attributes(reader, m, at + 4, at + len, depth + 1, out);
        }
        at += msg::align(len);
    }
}

/// The same inside the nests each reader reads: a child that claims more than its nest holds.
fn lying_nested_lengths(seeds: &[(Reader, Vec<u8>)]) -> Vec<String> {
    let (mut taken, mut tried) = (Vec::new(), 0);
    for ((name, header, read), m) in seeds {
        let mut all = Vec::new();
        attributes(name, m, msg::align(*header), m.len(), 0, &mut all);
        let nested: Vec<_> = all.into_iter().filter(|(_, _, depth)| *depth > 0).collect();
        tried += nested.len();
        for (at, end, _) in nested {
            let mut lying = m.clone();
            let claim = (end - at + 4) as u16;
            lying[at..at + 2].copy_from_slice(&claim.to_ne_bytes());
            if read(&lying).is_ok() {
                taken.push(format!("{name}: nested attribute at {at} claims {claim} bytes"));
            }
        }
    }
    eprintln!("[fuzz] {tried} nested attributes made to lie in {} messages", seeds.len());
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

/// What every seed set goes through: lying lengths and nests refused, framing errors, the
/// oracle's values, and no panic on any mutation.
fn every_check(seeds: Vec<(Reader, Vec<u8>)>) {
    lying_lengths_are_errors(&seeds);
    let taken = lying_nested_lengths(&seeds);
    assert!(taken.is_empty(), "lying nested lengths were taken:\n{}", taken.join("\n"));
    framing_errors(&seeds.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
    against_the_oracle(&seeds);
    never_panic_on(seeds);
}

#[test]
fn netlink_readers_never_panic_on_built_messages_and_refuse_lying_lengths() {
    let seeds = built();
    every_check(seeds);
}

/// Dump replies of the kernel itself: a bridge, a vnifilter vxlan with VNIs, a veth pair,
/// addresses, routes and a tc filter in a network namespace of this thread's own.
fn dumped() -> Vec<(Reader, Vec<u8>)> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let script = "set -e
            ip link set lo up
            ip link add br0 type bridge
            ip link add vx0 type vxlan external vnifilter dstport 4789 local 10.0.0.1
            ip link set vx0 master br0
            bridge vni add dev vx0 vni 100-110
            bridge vni add dev vx0 vni 5898241
            ip link add a0 mtu 1450 type veth peer name b0
            ip link set dev a0 alias fanlink
            ip addr add 10.0.0.1/24 dev a0
            ip addr add 250.1.1.1/8 dev br0
            ip link set a0 up; ip link set b0 up; ip link set br0 up
            ip route add 10.9.0.0/16 via 10.0.0.2 metric 7
            tc qdisc add dev vx0 clsact
            tc filter add dev vx0 egress bpf bytecode '1,6 0 0 0,'";
        let out = std::process::Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut nl = fanlink::netlink::Netlink::new().unwrap();
        let index = nl.link_by_name("vx0").unwrap().unwrap().index;
        let mut out = Vec::new();
        let mut dump = |reader: Reader, ty: u16, header: Vec<u8>| {
            for p in nl.dump(MsgBuilder::new(ty, 0).header(&header)).unwrap() {
                out.push((reader, p));
            }
        };
        dump(LINK, 18, vec![0; 16]); // RTM_GETLINK
        dump(ADDR, 22, [2, 0, 0, 0, 0, 0, 0, 0].to_vec()); // RTM_GETADDR, AF_INET
        dump(ROUTE, 26, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].to_vec()); // RTM_GETROUTE, AF_INET
                                                                        // RTM_GETTUNNEL (AF_BRIDGE), RTM_GETTFILTER on the clsact's egress.
        dump(VNI, 122, [&[7u8, 0, 0, 0][..], &index.to_ne_bytes()].concat());
        let tcmsg = [
            &[0u8; 4][..],
            &index.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &0xffff_fff3u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ];
        dump(TC, 46, tcmsg.concat());
        out
    })
    .join()
    .unwrap()
}

#[test]
#[ignore = "needs CAP_NET_ADMIN: run with --include-ignored"]
fn netlink_readers_never_panic_on_the_kernels_replies_and_refuse_lying_lengths() {
    let seeds = dumped();
    for kind in ["link", "addr", "route", "vni", "tc"] {
        let n = seeds.iter().filter(|((name, ..), _)| *name == kind).count();
        assert!(n > 0, "the kernel sent no {kind} message");
        eprintln!("[fuzz] {n} {kind} message(s) from the kernel");
    }
    every_check(seeds);
}

/// What netlink-packet-route reads of a link message, in fanlink's terms: (index, name, mtu,
/// master, alias, mac, kind, vxlan (collect_metadata, vnifilter, learning, port)).
type LinkView = (
    u32,
    String,
    u32,
    Option<u32>,
    Option<String>,
    Option<[u8; 6]>,
    Option<String>,
    Option<(bool, bool, bool, u16)>,
);

/// A netlink string as C (and the kernel's nla_strscpy, and fanlink) reads it: up to the first
/// NUL. netlink-packet-route keeps what follows an inner NUL.
fn c_str(s: &str) -> String {
    s.split('\0').next().unwrap_or("").to_owned()
}

fn oracle_link(p: &[u8]) -> Option<LinkView> {
    use netlink_packet_core::Parseable;
    use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
    let m = LinkMessage::parse(p).ok()?;
    let mut v: LinkView = (m.header.index, String::new(), 0, None, None, None, None, None);
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => v.1 = c_str(n),
            LinkAttribute::Mtu(n) => v.2 = *n,
            LinkAttribute::Controller(n) => v.3 = Some(*n).filter(|&n| n != 0),
            LinkAttribute::IfAlias(n) => v.4 = Some(c_str(n)),
            LinkAttribute::Address(mac) => v.5 = mac.as_slice().try_into().ok(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        // A kind with a NUL inside its attribute ("vxlan\0\0") it keeps
                        // whole, as one it does not know, and reads no data for it; the
                        // kernel and fanlink read the kind up to the NUL. Not the same reading.
                        LinkInfo::Kind(k) if k.to_string().contains('\0') => return None,
                        LinkInfo::Kind(k) => v.6 = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(x)) => {
                            let mut vx = (false, false, false, 0);
                            for a in x {
                                match a {
                                    InfoVxlan::CollectMetadata(b) => vx.0 = *b,
                                    InfoVxlan::Vnifilter(b) => vx.1 = *b,
                                    InfoVxlan::Learning(b) => vx.2 = *b,
                                    InfoVxlan::Port(p) => vx.3 = *p,
                                    _ => {}
                                }
                            }
                            v.7 = Some(vx);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(v)
}

fn ours_link(p: &[u8]) -> Option<LinkView> {
    let l = link::parse_link(p).ok()?;
    let vx = l.vxlan.map(|x| (x.collect_metadata, x.vnifilter, x.learning, x.port));
    Some((l.index, l.name, l.mtu, l.master, l.alias, l.mac, l.kind, vx))
}

/// (index, address) of an IPv4 address message, as netlink-packet-route reads it.
fn oracle_addr(p: &[u8]) -> Option<(u32, String)> {
    use netlink_packet_core::Parseable;
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    let m = AddressMessage::parse(p).ok()?;
    // The last of a twice-sent attribute, as the kernel's nla_parse keeps it (and fanlink).
    let ip = |want_local: bool| {
        m.attributes.iter().rev().find_map(|a| match a {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    let ip = ip(true).or(ip(false))?;
    Some((m.header.index, format!("{ip}/{}", m.header.prefix_len)))
}

fn ours_addr(p: &[u8]) -> Option<(u32, String)> {
    addr::parse_addr(p).ok().flatten().map(|a| (a.index, a.address.to_string()))
}

/// Where both readers take a message, they read the same values; on the seeds they must
/// both take it. Returns (both took, only fanlink took, only the oracle took).
fn same_reading(seeds: &[(Reader, Vec<u8>)], mutated: &[Vec<u8>]) -> (usize, usize, usize) {
    for ((name, ..), p) in seeds {
        match *name {
            "link" => assert_eq!(ours_link(p), oracle_link(p), "a link both must read"),
            "addr" => assert_eq!(ours_addr(p), oracle_addr(p), "an address both must read"),
            _ => {}
        }
    }
    let mut counts = (0, 0, 0);
    for p in mutated {
        for (ours, theirs) in [
            (ours_link(p).map(|v| format!("{v:?}")), oracle_link(p).map(|v| format!("{v:?}"))),
            (ours_addr(p).map(|v| format!("{v:?}")), oracle_addr(p).map(|v| format!("{v:?}"))),
        ] {
            match (&ours, &theirs) {
                (Some(a), Some(b)) => {
                    assert_eq!(a, b, "the two read {p:02x?} differently");
                    counts.0 += 1;
                }
                (Some(_), None) => counts.1 += 1,
                (None, Some(_)) => counts.2 += 1,
                (None, None) => {}
            }
        }
    }
    counts
}

/// Found by the oracle: fanlink read a vxlan flag byte as set only when it was 1; the kernel
/// (nla_get_u8) and netlink-packet-route take any non-zero byte.
#[test]
fn vxlan_flags_are_set_by_any_non_zero_byte() {
    let vxlan =
        NewVxlan { name: "vx".into(), mtu: 1450, vnifilter: true, port: 4789, master: None, alias: None };
    let mut p = payload(link::new_vxlan_msg(&vxlan));
    // IFLA_VXLAN_VNIFILTER (30), a u8 attribute: 5 bytes long, its value after the header.
    let at = p.windows(4).position(|w| w == [5, 0, 30, 0]).expect("the vnifilter flag") + 4;
    p[at] = 2;
    assert!(link::parse_link(&p).unwrap().vxlan.unwrap().vnifilter);
    assert_eq!(ours_link(&p), oracle_link(&p));
}

/// Found by the oracle: an IFA_LOCAL of 16 bytes in an IPv4 address message was read as
/// absent, and the address became IFA_ADDRESS's (the peer's, on a point-to-point link).
#[test]
fn an_ipv4_address_of_another_size_is_an_error() {
    let p = payload(addr::addr_msg(true, 3, "250.1.1.1/8".parse().unwrap()));
    let mut long = p.clone();
    // A second IFA_LOCAL (2) of 16 bytes after the others.
    long.extend_from_slice(&[20, 0, 2, 0]);
    long.extend_from_slice(&[0xff; 16]);
    assert!(addr::parse_addr(&p).unwrap().is_some());
    assert!(addr::parse_addr(&long).is_err());
}

/// `same_reading` on the seeds, then on mutations of the link and address seeds.
fn against_the_oracle(seeds: &[(Reader, Vec<u8>)]) {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    same_reading(seeds, &[]);
    let rt: Vec<_> =
        seeds.iter().filter(|((name, ..), _)| matches!(*name, "link" | "addr")).cloned().collect();
    let counts = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
    run("link and address readers vs netlink-packet-route", mutations(rt), |(_, m)| {
        let (both, ours, theirs) = same_reading(&[], &[m]);
        for (c, n) in counts.iter().zip([both, ours, theirs]) {
            c.fetch_add(n, Relaxed);
        }
        Ok(())
    });
    let [both, ours, theirs] = counts.map(AtomicUsize::into_inner);
    eprintln!("[fuzz] read the same by both: {both}; only by fanlink: {ours}; only by netlink-packet-route: {theirs}");
}
