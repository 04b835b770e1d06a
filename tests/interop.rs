//! Interop with Ubuntu's patched-kernel vxlan fan, emulated as closely as a stock kernel
//! allows: a plain vxlan (id 16384000, dstport 8472, local = the underlay address,
//! nolearning) in a bridge, with an all-zeros fdb entry that sends every frame to the one
//! fanlink host, as the patch's fan-map would compute for the addresses used here (ARP
//! included: the patch unicasts an ARP request to the host its target maps to). Unlike the
//! patch, the emulation also sends what cannot be mapped (IPv6 multicast) to that host.
//!
//! A container behind it and one behind `fanlink up` exchange ARP and ICMP both ways; a
//! capture on the Ubuntu host's switch port shows VNI = overlay >> 8, UDP 8472, unicast to the
//! computed host, and inner frames byte for byte as the containers sent and received them.

use crate::cli::TempDir;
use crate::topology::{run, sh, wait_for, Background, Netns, Switch};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");
const FAN_250: &str = "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\n";
/// The payload pattern of the pings, to find them in the captures ("fanlink!").
const PATTERN: &str = "66616e6c696e6b21";
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) headers before the inner Ethernet frame.
const OUTER: usize = 36;

/// Captures on `iface` in `ns` into `file`; ready once the file has its header, which
/// tcpdump writes after the capture is live.
fn capture(ns: &Netns, iface: &str, file: &Path) -> Background {
    let bg = Background::spawn(
        ns,
        &format!("tcpdump --immediate-mode -Z root -U -n -i {iface} -w {}", file.display()),
    );
    wait_for("tcpdump to capture", Duration::from_secs(10), || {
        std::fs::metadata(file).map(|m| m.len() >= 24).unwrap_or(false)
    });
    bg
}

/// `tcpdump -r FILE ARGS`: a text view of a capture.
fn read(file: &Path, args: &str) -> String {
    run(None, &format!("tcpdump -r {} {args} 2>/dev/null", file.display()))
}

/// The packets of a `tcpdump -x`/`-xx` listing, as bytes.
fn packets(listing: &str) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = Vec::new();
    for line in listing.lines() {
        match line.trim_start().strip_prefix("0x") {
            Some(rest) if line.starts_with('\t') => {
                let hex = rest.split_once(':').map_or("", |(_, h)| h).split_whitespace().collect::<String>();
                let bytes =
                    (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap());
                all.last_mut().expect("a header line first").extend(bytes);
            }
            _ => all.push(Vec::new()),
        }
    }
    all.retain(|p| !p.is_empty());
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

crate::in_both_datapaths! {
    #[ignore = "needs root (network namespaces, netlink, BPF, tcpdump): run with --include-ignored"]
    fn a_patched_kernel_fan_host_and_a_fanlink_host_exchange_arp_and_ip_unchanged(mode) {
        let switch = Switch::new();
        let fanlink = switch.host("10.99.1.1/16");
        let ubuntu = switch.host("10.99.2.2/16");
        let rules = TempDir::new("rules");
        rules.write("50-test.toml", FAN_250);
        fanlink.ns.run(&format!("{} {BIN} --rules-dir {} up fan-250", mode.env(), rules.path().display()));
        ubuntu.ns.run(
            "ip link add fan-250 mtu 1450 type bridge && ip addr add 250.2.2.1/8 dev fan-250 && \
             ip link add ftun0 mtu 1450 type vxlan id 16384000 dstport 8472 local 10.99.2.2 dev uplink0 nolearning && \
             ip link set ftun0 master fan-250 && \
             bridge fdb append 00:00:00:00:00:00 dev ftun0 dst 10.99.1.1 && \
             ip link set ftun0 up && ip link set fan-250 up",
        );
        let behind_fanlink = fanlink.container("fan-250", "250.1.1.10/8", "250.1.1.1", 1450);
        let behind_ubuntu = ubuntu.container("fan-250", "250.2.2.10/8", "250.2.2.1", 1450);

        let dir = TempDir::new("pcap");
        let (wire, at_f, at_u) =
            (dir.path().join("wire.pcap"), dir.path().join("f.pcap"), dir.path().join("u.pcap"));
        let captures = [
            capture(&switch.ns, &ubuntu.port, &wire),
            capture(&behind_fanlink, "eth0", &at_f),
            capture(&behind_ubuntu, "eth0", &at_u),
        ];
        // Each side ARPs for the other first (neighbour caches flushed in between).
        let ping =
            |from: &Netns, to: &str| from.sh(&format!("ping -c2 -i0.2 -W2 -p {PATTERN} {to}")).status.success();
        assert!(ping(&behind_ubuntu, "250.1.1.10"), "patched-kernel side -> fanlink side");
        for ns in [&behind_fanlink, &behind_ubuntu] {
            ns.run("ip neigh flush dev eth0");
        }
        assert!(ping(&behind_fanlink, "250.2.2.10"), "fanlink side -> patched-kernel side");
        // A tcpdump that stops drops what it has not read yet, and under load the wire's lags
        // behind the containers': stop only once it holds every ICMP frame they saw.
        wait_for("the wire capture to hold what the containers saw", Duration::from_secs(10), || {
            let lenient = |file: &Path, args: &str| {
                String::from_utf8_lossy(
                    &sh(None, &format!("tcpdump -r {} {args} 2>/dev/null", file.display())).stdout,
                )
                .into_owned()
            };
            let on_wire: Vec<Vec<u8>> = packets(&lenient(&wire, "-nn -x udp port 8472"))
                .into_iter()
                .filter(|p| p.len() > OUTER)
                .map(|p| p[OUTER..].to_vec())
                .collect();
            [&at_f, &at_u]
                .iter()
                .all(|f| packets(&lenient(f, "-nn -xx icmp")).iter().all(|fr| on_wire.contains(fr)))
        });
        for c in captures {
            c.finish();
        }

        // The wire: every frame is vxlan to UDP 8472, VNI 250.0.0.0 >> 8, unicast to the host
        // the inner destination maps to; ARP both ways.
        let view = read(&wire, "-nn -v -T vxlan udp");
        let vxlan: Vec<&str> = view.lines().filter(|l| l.contains("VXLAN")).collect();
        assert!(vxlan.len() >= 8, "two pings and two ARP exchanges each way:\n{view}");
        for line in &vxlan {
            assert!(line.contains("vni 16384000"), "{line}");
            let unicast = line.contains("10.99.2.2.") && line.contains("> 10.99.1.1.8472:")
                || line.contains("10.99.1.1.") && line.contains("> 10.99.2.2.8472:");
            assert!(unicast, "unicast between the two hosts on 8472: {line}");
        }
        let inner = read(&wire, "-nn -T vxlan udp");
        for seen in [
            "ARP, Request who-has 250.1.1.10 tell 250.2.2.10",
            "ARP, Reply 250.1.1.10 is-at",
            "ARP, Request who-has 250.2.2.10 tell 250.1.1.10",
            "ARP, Reply 250.2.2.10 is-at",
            "250.2.2.10 > 250.1.1.10: ICMP echo request",
            "250.1.1.10 > 250.2.2.10: ICMP echo reply",
            "250.1.1.10 > 250.2.2.10: ICMP echo request",
            "250.2.2.10 > 250.1.1.10: ICMP echo reply",
        ] {
            assert!(inner.contains(seen), "{seen} on the wire:\n{inner}");
        }

        // Inner frames unchanged: each ICMP frame a container sent or received appears on the wire
        // whole (MACs, IP header with its TTL and id, ICMP id, sequence and payload), after the
        // outer headers.
        let on_wire: Vec<Vec<u8>> = packets(&read(&wire, "-nn -x udp port 8472"))
            .into_iter()
            .filter(|p| p.len() > OUTER)
            .map(|p| p[OUTER..].to_vec())
            .collect();
        let pattern: Vec<u8> =
            (0..PATTERN.len() / 2).map(|i| u8::from_str_radix(&PATTERN[2 * i..2 * i + 2], 16).unwrap()).collect();
        let mut compared = 0;
        for file in [&at_f, &at_u] {
            for frame in packets(&read(file, "-nn -xx icmp")) {
                assert!(contains(&frame, &pattern), "our ping payload");
                assert!(on_wire.contains(&frame), "frame not on the wire unchanged: {frame:02x?}");
                compared += 1;
            }
        }
        assert_eq!(compared, 16, "2 requests and 2 replies each way, seen by both containers");
        eprintln!(
            "[interop] {} vxlan frames on the wire; {compared} container frames found there unchanged:\n{inner}",
            vxlan.len()
        );
    }
}

/// The Ubuntu patched kernel's fan, emulated: a classic vxlan on the fan's VNI that floods
/// to the given hosts (the patch computes the one host; flooding to all reaches it too).
fn emulated_ubuntu(host: &crate::topology::Host, me: u8, peers: &[u8]) {
    let fdb: String = peers
        .iter()
        .map(|p| format!(" && bridge fdb append 00:00:00:00:00:00 dev ftun0 dst 10.99.{p}.{p}"))
        .collect();
    host.ns.run(&format!(
        "ip link add fan-250 mtu 1450 type bridge && ip addr add 250.{me}.{me}.1/8 dev fan-250 && \
         ip link add ftun0 mtu 1450 type vxlan id 16384000 dstport 8472 local 10.99.{me}.{me} dev uplink0 nolearning && \
         ip link set ftun0 master fan-250{fdb} && ip link set ftun0 up && ip link set fan-250 up"
    ));
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF): run with --include-ignored"]
fn a_mixed_fleet_every_pair_both_ways_on_the_first_ping() {
    // Host 1 in the vnifilter datapath, host 2 in the shared one (kernels before 5.18), host 3
    // the patched kernel: every ordered pair, the first ping of each must arrive.
    let switch = Switch::new();
    let rules = TempDir::new("rules");
    rules.write("50-test.toml", FAN_250);
    let hosts: Vec<_> = (1..=3u8).map(|n| switch.host(&format!("10.99.{n}.{n}/16"))).collect();
    for (host, mode) in hosts.iter().zip(["vnifilter", "shared"]) {
        let up = format!("FANLINK_DATAPATH={mode} {BIN} --rules-dir {} up fan-250", rules.path().display());
        host.ns.run(&up);
    }
    emulated_ubuntu(&hosts[2], 3, &[1, 2]);
    let containers: Vec<Netns> = hosts
        .iter()
        .zip(1..=3u8)
        .map(|(h, n)| h.container("fan-250", &format!("250.{n}.{n}.10/8"), &format!("250.{n}.{n}.1"), 1450))
        .collect();
    for (s, from) in containers.iter().enumerate() {
        for d in (1..=3u8).filter(|d| usize::from(*d) != s + 1) {
            let first = from.sh(&format!("ping -c1 -W2 250.{d}.{d}.10")).status.success();
            assert!(first, "host {} -> host {d}: the first ping", s + 1);
        }
    }
}
