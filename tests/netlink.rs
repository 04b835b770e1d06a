//! The netlink client against the real kernel. Each test first moves its own thread into a
//! fresh network namespace (`unshare(CLONE_NEWNET)` affects only the calling thread), so
//! tests run in parallel with fixed names and leave nothing behind: the namespace dies with
//! the thread. `ip`/`tc`/`bridge` subprocesses are spawned from that thread and so inherit
//! its namespace; `subprocess_sees_the_threads_namespace` checks that.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::Command;

use fanlink::netlink::monitor::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK};
use fanlink::netlink::{Event, LinkChanges, Netlink, NewBridge, NewVxlan, Tolerate};
use ipnet::Ipv4Net;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

const MAC: [u8; 6] = [0x02, 0xfa, 0, 0x03, 0x04, 0x01];
const FAN_VNI: u32 = 16_384_000;

fn netns() -> Netlink {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    Netlink::new().expect("netlink socket")
}

/// Runs a tool in this thread's namespace and returns its stdout.
fn run(tool: &str, args: &[&str]) -> String {
    let out = crate::util::output(Command::new(tool).args(args));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn bridge(nl: &mut Netlink, name: &str) -> u32 {
    let b = NewBridge { name: name.into(), mtu: 1450, mac: Some(MAC), alias: Some("fanlink:250".into()) };
    let echoed = nl.create_bridge(&b).unwrap();
    let index = nl.link_by_name(name).unwrap().unwrap().index;
    assert!(echoed.is_none_or(|i| i == index), "the creation's echo (Linux 6.3+) names the new link");
    index
}

fn vxlan(nl: &mut Netlink, name: &str, master: Option<u32>) -> u32 {
    let v = NewVxlan {
        name: name.into(),
        mtu: 1450,
        vnifilter: true,
        port: 8472,
        master,
        alias: Some("fanlink:250".into()),
    };
    nl.create_vxlan(&v).unwrap();
    nl.link_by_name(name).unwrap().unwrap().index
}

/// Loads `r0 = verdict; exit` as a SCHED_CLS program, just to have a program fd.
fn bpf_prog(verdict: i32) -> OwnedFd {
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&verdict.to_ne_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: BPF_PROG_LOAD (5) with a zeroed attr whose pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    assert!(fd >= 0, "BPF_PROG_LOAD: {}", Errno::last());
    // SAFETY: the kernel just returned this fd to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `Command` forks from the calling thread, so `ip` sees the test's private namespace: only
/// `lo` and the test's own link.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn subprocess_sees_the_threads_namespace() {
    let mut nl = netns();
    bridge(&mut nl, "only-here");
    let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["lo", "only-here"]);
    let out = run("ip", &["-o", "link", "show"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("only-here"), "{out}");
}

/// Every attribute fanlink asks for reads back from our dump and from `ip -d link show`.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn bridge_and_vxlan_are_created_as_asked() {
    let mut nl = netns();
    let br = bridge(&mut nl, "fan-250");
    let vx = vxlan(&mut nl, "fan-vx", Some(br));

    let b = nl.link_by_name("fan-250").unwrap().unwrap();
    assert_eq!((b.kind.as_deref(), b.mtu, b.mac, b.up), (Some("bridge"), 1450, Some(MAC), false));
    assert_eq!(b.alias.as_deref(), Some("fanlink:250"));
    let v = nl.links().unwrap().into_iter().find(|l| l.index == vx).unwrap();
    assert_eq!((v.name.as_str(), v.kind.as_deref(), v.mtu), ("fan-vx", Some("vxlan"), 1450));
    assert_eq!((v.master, v.up, v.alias.as_deref()), (Some(br), false, Some("fanlink:250")));
    let info = v.vxlan.unwrap();
    assert!(info.collect_metadata && info.vnifilter && !info.learning, "{info:?}");
    assert_eq!(info.port, 8472);

    let out = run("ip", &["-d", "link", "show", "fan-vx"]);
    // iproute2 prints "vnifilterid 0" (no space), so match the words separately.
    for want in ["mtu 1450", "master fan-250", "state DOWN", "vxlan external", "vnifilter"] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
    for want in ["dstport 8472", "nolearning", "alias fanlink:250"] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
    let out = run("ip", &["-d", "link", "show", "fan-250"]);
    for want in ["mtu 1450", "link/ether 02:fa:00:03:04:01", "bridge forward_delay", "alias fanlink:250"] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }

    let dup = NewBridge { name: "fan-250".into(), mtu: 1450, mac: None, alias: None };
    let err = nl.create_bridge(&dup).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert_eq!(err.ifname.as_deref(), Some("fan-250"));
    assert!(!nl.create_bridge(&dup).exists_ok().unwrap(), "EEXIST tolerated as no change");
}

/// One RTM_SETLINK carries several changes; addressing by name or index both work; a gone
/// link is ENODEV, which `is_not_found` covers.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn set_link_changes_and_delete() {
    let mut nl = netns();
    let br = bridge(&mut nl, "fan-250");
    let vx = vxlan(&mut nl, "fan-vx", None);
    let up = LinkChanges { up: Some(true), master: Some(br), ..Default::default() };
    nl.set_link(vx, &up).unwrap();
    nl.set_link("fan-250", &LinkChanges { up: Some(true), mtu: Some(1400), ..Default::default() }).unwrap();
    let v = nl.link_by_name("fan-vx").unwrap().unwrap();
    assert_eq!((v.up, v.master), (true, Some(br)));
    let b = nl.link_by_name("fan-250").unwrap().unwrap();
    assert_eq!((b.up, b.mtu), (true, 1400));
    assert!(run("ip", &["link", "show", "fan-vx"]).contains("master fan-250 state UNKNOWN"));

    let mac = [0x02, 0, 0, 0, 0, 0x42];
    let change = LinkChanges {
        up: Some(false),
        master: Some(0),
        alias: Some(String::new()),
        mac: Some(mac),
        ..Default::default()
    };
    nl.set_link("fan-vx", &change).unwrap();
    let v = nl.link_by_name("fan-vx").unwrap().unwrap();
    assert_eq!((v.up, v.master, v.alias, v.mac), (false, None, None, Some(mac)));

    nl.delete_link(vx).unwrap();
    assert_eq!(nl.link_by_name("fan-vx").unwrap(), None);
    let err = nl.delete_link(vx).unwrap_err();
    assert_eq!(err.errno, Errno::ENODEV, "{err}");
    assert!(err.is_not_found());
    let err = nl.set_link("fan-vx", &up).unwrap_err();
    assert_eq!((err.errno, err.ifname.as_deref()), (Errno::ENODEV, Some("fan-vx")));
}

#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn addresses_add_list_delete() {
    let mut nl = netns();
    let br = bridge(&mut nl, "fan-250");
    let net: Ipv4Net = "250.3.4.1/8".parse().unwrap();
    nl.add_address(br, net).unwrap();
    let addrs = nl.ipv4_addresses().unwrap();
    assert!(addrs.iter().any(|a| a.index == br && a.address == net), "{addrs:?}");
    let out = run("ip", &["-4", "addr", "show", "dev", "fan-250"]);
    assert!(out.contains("inet 250.3.4.1/8 brd 250.255.255.255 scope global fan-250"), "{out}");

    assert!(nl.add_address(br, net).unwrap_err().is_exists());
    nl.delete_address(br, net).unwrap();
    assert!(!nl.ipv4_addresses().unwrap().iter().any(|a| a.index == br));
    let err = nl.delete_address(br, net).unwrap_err();
    assert_eq!(err.errno, Errno::ENOENT, "the kernel's EADDRNOTAVAIL, mapped: {err}");
}

/// RTM_NEWTUNNEL entries read back through RTM_GETTUNNEL, which folds ranges.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn vni_filter_entries() {
    let mut nl = netns();
    let vx = vxlan(&mut nl, "fan-vx", None);
    let vx2 = vxlan(&mut nl, "fan251-vx", None);
    assert_eq!(nl.vnis(vx).unwrap(), Vec::<u32>::new());
    nl.add_vni(vx, FAN_VNI).unwrap();
    nl.add_vni(vx2, FAN_VNI + 65536).unwrap();
    assert_eq!(nl.vnis(vx).unwrap(), [FAN_VNI]);
    assert_eq!(nl.vnis(vx2).unwrap(), [FAN_VNI + 65536]);
    nl.add_vni(vx, FAN_VNI).expect("adding a VNI the device has is a no-op");
    let out = run("bridge", &["vni", "show", "dev", "fan-vx"]);
    assert!(out.contains("16384000"), "{out}");

    // Consecutive VNIs come back folded into one START..END entry.
    for v in 10..=12 {
        nl.add_vni(vx, v).unwrap();
    }
    assert_eq!(nl.vni_ranges(vx).unwrap(), [10..=12, FAN_VNI..=FAN_VNI]);
    assert_eq!(nl.vnis(vx).unwrap(), [10, 11, 12, FAN_VNI]);
    nl.delete_vni(vx, 11).unwrap();
    assert_eq!(nl.vnis(vx).unwrap(), [10, 12, FAN_VNI]);
    assert!(nl.delete_vni(vx, 11).unwrap_err().is_not_found());
}

/// NETLINK_EXT_ACK brings the kernel's reason into the error and its Display.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn errors_carry_the_kernels_ext_ack_message() {
    let mut nl = netns();
    let vx = vxlan(&mut nl, "fan-vx", None);
    let vx2 = vxlan(&mut nl, "fan251-vx", None);
    nl.add_vni(vx, FAN_VNI).unwrap();
    // Refused even while both devices are down. The kernel's EEXIST becomes EADDRINUSE.
    let err = nl.add_vni(vx2, FAN_VNI).unwrap_err();
    assert_eq!(err.errno, Errno::EADDRINUSE, "{err}");
    assert_eq!(err.ext_ack.as_deref(), Some("VNI in use"), "{err}");
    assert_eq!(
        err.on("fan251-vx").to_string(),
        "fan251-vx: add vni 16384000: EADDRINUSE: Address already in use (VNI in use)"
    );
}

/// clsact + cls_bpf: attach, EEXIST without replace, atomic replace, detach, ENOENT.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn clsact_and_bpf_filter_lifecycle() {
    let mut nl = netns();
    let vx = vxlan(&mut nl, "fan-vx", None);
    assert_eq!(nl.qdisc_drops(vx).unwrap(), None);
    nl.add_clsact(vx).unwrap();
    assert!(nl.add_clsact(vx).unwrap_err().is_exists());
    assert_eq!(nl.qdisc_drops(vx).unwrap(), Some(0));
    assert_eq!(nl.bpf_filters(vx, true).unwrap(), []);

    let prog = bpf_prog(0);
    nl.attach_bpf(vx, true, prog.as_fd(), "fan_egress", false).unwrap();
    let f = nl.bpf_filters(vx, true).unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].name.as_str(), f[0].prio, f[0].handle, f[0].direct_action), ("fan_egress", 1, 1, true));
    let first_id = f[0].prog_id.expect("TCA_BPF_ID");
    assert_eq!(nl.bpf_filters(vx, false).unwrap(), [], "nothing on ingress");
    let out = run("tc", &["filter", "show", "dev", "fan-vx", "egress"]);
    assert!(out.contains(&format!("fan_egress direct-action not_in_hw id {first_id}")), "{out}");

    let err = nl.attach_bpf(vx, true, prog.as_fd(), "fan_egress", false).unwrap_err();
    assert!(err.is_exists(), "{err}");
    // The filter keeps its own reference: closing our fd does not detach the program.
    drop(prog);
    let prog2 = bpf_prog(0);
    nl.attach_bpf(vx, true, prog2.as_fd(), "fan_egress2", true).unwrap();
    let f = nl.bpf_filters(vx, true).unwrap();
    assert_eq!(f.len(), 1, "replace swaps in place: {f:?}");
    assert_eq!(f[0].name, "fan_egress2");
    assert_ne!(f[0].prog_id, Some(first_id));
    nl.attach_bpf(vx, false, prog2.as_fd(), "fan_ingress", true).unwrap();
    assert_eq!(nl.bpf_filters(vx, false).unwrap()[0].name, "fan_ingress");

    nl.detach_bpf(vx, true).unwrap();
    assert_eq!(nl.bpf_filters(vx, true).unwrap(), []);
    assert!(nl.detach_bpf(vx, true).unwrap_err().is_not_found());
    assert!(!nl.detach_bpf(vx, true).missing_ok().unwrap());
    nl.delete_clsact(vx).unwrap();
    assert_eq!(nl.qdisc_drops(vx).unwrap(), None);
    let e = nl.delete_clsact(vx).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

/// TC_ACT_SHOT verdicts land in the clsact qdisc's gnet_stats_queue.drops.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn drop_counter_counts_the_programs_drops() {
    let mut nl = netns();
    nl.set_link("lo", &LinkChanges { up: Some(true), ..Default::default() }).unwrap();
    let lo = nl.link_by_name("lo").unwrap().unwrap().index;
    nl.add_clsact(lo).unwrap();
    nl.attach_bpf(lo, true, bpf_prog(2).as_fd(), "drop_all", false).unwrap(); // TC_ACT_SHOT
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..3 {
        let _ = sock.send_to(b"x", "127.0.0.1:9");
    }
    assert_eq!(nl.qdisc_drops(lo).unwrap(), Some(3));
}

/// A monitor subscribed before the changes sees each of them, decoded like the dumps.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn monitor_reports_links_and_addresses() {
    let mut nl = netns();
    let mut mon = Netlink::monitor(RTMGRP_LINK | RTMGRP_IPV4_IFADDR).unwrap();
    let br = bridge(&mut nl, "fan-250");
    let net: Ipv4Net = "250.3.4.1/8".parse().unwrap();
    nl.add_address(br, net).unwrap();
    nl.delete_address(br, net).unwrap();
    nl.delete_link(br).unwrap();

    let mut events = Vec::new();
    while !events.iter().any(|e| matches!(e, Event::DelLink { .. })) {
        let mut fds = [PollFd::new(mon.as_fd(), PollFlags::POLLIN)];
        let ready = nix::poll::poll(&mut fds, PollTimeout::from(2000u16)).unwrap();
        assert!(ready > 0, "no DelLink within 2 s; got {events:?}");
        events.extend(mon.recv_events().unwrap());
    }
    let new_link = events.iter().find_map(|e| match e {
        Event::NewLink(l) if l.index == br => Some(l),
        _ => None,
    });
    assert_eq!(new_link.map(|l| l.name.as_str()), Some("fan-250"), "{events:?}");
    assert!(events.contains(&Event::NewAddr(fanlink::netlink::AddrInfo { index: br, address: net })));
    assert!(events.contains(&Event::DelAddr(fanlink::netlink::AddrInfo { index: br, address: net })));
    assert!(events.contains(&Event::DelLink { index: br, name: "fan-250".into() }), "{events:?}");
}

/// The monitor's in-kernel filter: a port's state messages (RTM_NEWLINK, AF_BRIDGE) never
/// arrive, a port leaving its bridge does; routes arrive only while asked for.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn monitor_filter_drops_port_states_and_routes_unless_asked() {
    use fanlink::netlink::monitor::RTMGRP_IPV4_ROUTE;
    let mut nl = netns();
    let mut mon = Netlink::monitor(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE).unwrap();
    mon.filter_events(false).unwrap();
    let drain = |mon: &mut Netlink, until: &dyn Fn(&[Event]) -> bool| {
        let mut events = Vec::new();
        while !until(&events) {
            let mut fds = [PollFd::new(mon.as_fd(), PollFlags::POLLIN)];
            let ready = nix::poll::poll(&mut fds, PollTimeout::from(2000u16)).unwrap();
            assert!(ready > 0, "nothing more within 2 s; got {events:?}");
            events.extend(mon.recv_events().unwrap());
        }
        events
    };
    let br = bridge(&mut nl, "fan-250");
    let vx = vxlan(&mut nl, "fan-250-vx", Some(br));
    let up = LinkChanges { up: Some(true), ..Default::default() };
    nl.set_link("fan-250-vx", &up).unwrap();
    nl.set_link("fan-250", &up).unwrap();
    let net: Ipv4Net = "250.3.4.1/8".parse().unwrap();
    nl.add_address(br, net).unwrap(); // adds routes (local, broadcast, the /8)
    run("ip", &["link", "set", "fan-250-vx", "nomaster"]);
    let events = drain(&mut mon, &|e| e.iter().any(|e| matches!(e, Event::Port { gone: true, .. })));
    assert!(events.contains(&Event::NewAddr(fanlink::netlink::AddrInfo { index: br, address: net })));
    assert!(events.iter().any(|e| matches!(e, Event::NewLink(l) if l.index == vx)), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Port { gone: false, .. })), "{events:?}");
    assert!(!events.contains(&Event::Route), "routes while not asked for: {events:?}");

    mon.filter_events(true).unwrap();
    nl.delete_address(br, net).unwrap();
    let events = drain(&mut mon, &|e| e.contains(&Event::Route));
    assert!(events.contains(&Event::DelAddr(fanlink::netlink::AddrInfo { index: br, address: net })));
}

/// A dump larger than one datagram is collected up to NLMSG_DONE.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN): run with --include-ignored"]
fn dumps_span_many_datagrams() {
    let mut nl = netns();
    // ~1 KiB per link message and at most 32 KiB per datagram: 200 links need several.
    for i in 0..200 {
        let index = bridge(&mut nl, &format!("br{i}"));
        nl.add_address(
            index,
            Ipv4Net::new([10, 1, (i / 250) as u8, (i % 250) as u8 + 1].into(), 16).unwrap(),
        )
        .unwrap();
    }
    let links = nl.links().unwrap();
    assert_eq!(links.len(), 201);
    assert!(links.iter().all(|l| l.name == "lo" || l.alias.as_deref() == Some("fanlink:250")));
    assert_eq!(nl.ipv4_addresses().unwrap().len(), 200);
    assert_eq!(run("ip", &["-o", "link", "show"]).lines().count(), 201);
}
