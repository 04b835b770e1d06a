//! `fanlink test` on hosts in namespaces: a working fan passes every step, and each step
//! fails, naming its cause, in a namespace set up to break it (a filtered UDP 8472, a peer
//! without a fan, an underlay too small for the fan MTU, a missing NAT table, forwarding
//! turned off). The ICMP echoes stay between the namespaces made here.

use crate::cli::TempDir;
use crate::topology::{Host, Switch};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");
const RULE: &str =
    "[[fan]]\nname = \"fan-250\"\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\nmtu = 1450\n";

/// Hosts 10.99.N.N on one switch, the first `with_fan` of them with the fan up.
struct Lab {
    hosts: Vec<Host>,
    rules: TempDir,
    switch: Switch,
}

impl Lab {
    fn new(hosts: u8, with_fan: u8) -> Lab {
        let switch = Switch::new();
        let rules = TempDir::new("selftest");
        rules.write("fan.toml", RULE);
        let hosts: Vec<Host> = (1..=hosts).map(|n| switch.host(&format!("10.99.{n}.{n}/16"))).collect();
        let lab = Lab { hosts, rules, switch };
        for n in 0..usize::from(with_fan) {
            let out = lab.fanlink(n, "up fan-250");
            assert!(out.status.success(), "up: {}", String::from_utf8_lossy(&out.stderr));
        }
        lab
    }

    fn fanlink(&self, host: usize, args: &str) -> Output {
        let rules = self.rules.path().display();
        // A runtime dir of its own: no daemon answers, status reads the rules and the kernel.
        self.hosts[host].ns.sh(&format!("{BIN} --rules-dir {rules} --runtime-dir {rules}/run {args}"))
    }

    /// `fanlink test` on the first host: its exit code and stdout.
    fn test(&self, args: &str) -> (Option<i32>, String) {
        let out = self.fanlink(0, &format!("test fan-250 {args}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The line of `step`, which must say `word` (ok, FAILED, skipped).
fn line<'a>(out: &'a str, word: &str, step: &str) -> &'a str {
    let start = format!("{word:<8}{step}: ");
    out.lines().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no `{start}` line in:\n{out}"))
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF, raw ICMP): run with --include-ignored"]
fn a_working_fan_passes_every_step_and_finds_its_peers_by_itself() {
    let lab = Lab::new(2, 2);
    // Without --peer: nobody talked across the fan yet, then the host did (its neighbour).
    line(&lab.test("").1, "skipped", "peers");
    lab.hosts[0].ns.run("ping -c 1 -W 5 250.2.2.1");
    line(&lab.test("").1, "ok", "peer 10.99.2.2");

    let (code, out) = lab.test("--peer 10.99.2.2");
    assert_eq!(code, Some(0), "{out}");
    for step in ["fan", "devices", "mtu", "forwarding", "nat", "peer 10.99.2.2", "peer 10.99.2.2 full-size"] {
        line(&out, "ok", step);
    }
    assert!(line(&out, "ok", "peer 10.99.2.2 full-size").contains("a 1450-byte packet with DF set crosses"));
    assert!(out.contains("fan-250: 7 of 7 steps passed, 0 failed"), "{out}");

    let (_, json) = lab.test("--peer 10.99.2.2 --json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["checks"][5]["step"], "peer 10.99.2.2", "{v:#}");
    assert_eq!(v["checks"][5]["outcome"], "passed", "{v:#}");
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF, raw ICMP): run with --include-ignored"]
fn a_filtered_tunnel_and_a_peer_without_a_fan_fail_the_peer_step() {
    let lab = Lab::new(3, 2);
    lab.hosts[1].ns.run(
        "nft add table inet flt && nft add chain inet flt in '{ type filter hook input priority 0; }' && \
         nft add rule inet flt in udp dport 8472 drop",
    );
    let (code, out) = lab.test("--peer 10.99.2.2 --peer 10.99.3.3");
    assert_eq!(code, Some(1), "{out}");
    for peer in ["10.99.2.2", "10.99.3.3"] {
        let failed = line(&out, "FAILED", &format!("peer {peer}"));
        assert!(
            failed.contains("answers on the underlay but its fan address") && failed.contains("UDP 8472")
        );
        line(&out, "skipped", &format!("peer {peer} full-size"));
    }
    line(&out, "ok", "fan");
    // A host that is not there at all is told apart.
    let (_, out) = lab.test("--peer 10.99.9.9");
    assert!(
        line(&out, "FAILED", "peer 10.99.9.9").contains("neither 10.99.9.9 nor its fan address 250.9.9.1")
    );
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF, raw ICMP): run with --include-ignored"]
fn an_underlay_too_small_for_the_fan_mtu_fails_the_mtu_step() {
    let lab = Lab::new(2, 2);
    lab.hosts[0].ns.run("ip link set uplink0 mtu 1400");
    let (code, out) = lab.test("--peer 10.99.2.2");
    assert_eq!(code, Some(1), "{out}");
    assert!(line(&out, "FAILED", "mtu").contains("uplink0's MTU 1400 leaves room for a fan MTU of 1350"));
    line(&out, "ok", "peer 10.99.2.2");
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF, raw ICMP): run with --include-ignored"]
fn a_missing_nat_table_or_forwarding_fails_its_step() {
    let lab = Lab::new(2, 2);
    lab.hosts[0].ns.run("nft delete table ip fanlink-fan-250");
    let (code, out) = lab.test("--peer 10.99.2.2");
    assert_eq!(code, Some(1), "{out}");
    assert!(line(&out, "FAILED", "nat").contains("NAT table is missing"));
    assert!(line(&out, "FAILED", "devices").contains("write nat table for fan-250"));
    line(&out, "ok", "forwarding");

    lab.fanlink(0, "up fan-250");
    lab.hosts[0].ns.run("sysctl -qw net.ipv4.conf.uplink0.forwarding=0");
    let (code, out) = lab.test("--peer 10.99.2.2");
    assert_eq!(code, Some(1), "{out}");
    assert!(line(&out, "FAILED", "forwarding").contains("off for uplink0"));
    line(&out, "ok", "nat");
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF, raw ICMP): run with --include-ignored"]
fn a_path_narrower_than_the_fan_fails_the_full_size_step_while_small_pings_pass() {
    // Both uplinks say 1500, but the switch port to the peer carries 1400: a black hole for
    // full-size frames that no MTU on either host shows.
    let lab = Lab::new(2, 2);
    lab.switch.ns.run(&format!("ip link set {} mtu 1400", lab.hosts[1].port));
    let (code, out) = lab.test("--peer 10.99.2.2");
    assert_eq!(code, Some(1), "{out}");
    line(&out, "ok", "mtu");
    line(&out, "ok", "peer 10.99.2.2");
    let hole = line(&out, "FAILED", "peer 10.99.2.2 full-size");
    assert!(hole.contains("does not cross") && hole.contains("less than 1500 bytes"), "{hole}");
}
