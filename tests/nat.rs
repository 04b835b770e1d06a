//! The NAT table and the forwarding fix against a real kernel, `nft` and iptables.
//!
//! Each test builds its own namespaces (names carry the pid and a counter, so tests run in
//! parallel): "host" with bridge `fan-250` 250.1.1.1/8 and uplink `u0` 10.99.0.1/16;
//! "container" (250.1.1.10, default via the bridge) and "peer" (250.1.1.20) on veths
//! enslaved to the bridge; a vxlan port (VNI 16384000, port 8472) in the bridge reaching
//! "remote" (250.2.2.10, another fan host in miniature) over a second underlay link
//! 10.98.0.0/16; "outside" (10.99.0.2/16) on the uplink, with no route to the overlay, so a
//! reply reaches the container only if the host masqueraded. fanlink's functions run on a thread that has `setns`'d into "host", so the
//! `nft`/`iptables` they start work there too. Guards delete the namespaces (and with them
//! every interface) also when a test fails.

use fanlink::datapath::{firewall, nft, nftnl, sysctl};
use fanlink::ifname::IfName;
use fanlink::netlink::Netlink;
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("fl-nat-{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS`, which must succeed.
    fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.0];
        argv.extend(args);
        run(&argv);
    }

    /// Runs a command inside the namespace; returns whether it succeeded and its stdout.
    fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = self.output(args);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn output(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().unwrap()
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.output(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed in {}: {stderr}", self.0);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ping(&self, to: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", to]).0
    }

    /// Runs `f` on a thread inside this namespace, as the daemon would be.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(argv: &[&str]) {
    let status = Command::new(argv[0]).args(&argv[1..]).status().unwrap();
    assert!(status.success(), "{argv:?} failed");
}

fn name(s: &str) -> IfName {
    s.parse().unwrap()
}

/// The namespaces; dropping it removes them all.
struct Fan {
    host: Netns,
    container: Netns,
    peer: Netns,
    remote: Netns,
    outside: Netns,
}

impl Fan {
    fn new() -> Fan {
        let fan = Fan {
            host: Netns::new("h"),
            container: Netns::new("c"),
            peer: Netns::new("p"),
            remote: Netns::new("r"),
            outside: Netns::new("o"),
        };
        let h = &fan.host;
        h.ip(&["link", "add", "fan-250", "type", "bridge"]);
        h.ip(&["addr", "add", "250.1.1.1/8", "dev", "fan-250"]);
        h.ip(&["link", "set", "fan-250", "up"]);
        for (port, ns, addr) in [("c0", &fan.container, "250.1.1.10/8"), ("p0", &fan.peer, "250.1.1.20/8")] {
            h.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0]);
            h.ip(&["link", "set", port, "master", "fan-250", "up"]);
            ns.ip(&["addr", "add", addr, "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        fan.container.ip(&["route", "add", "default", "via", "250.1.1.1"]);
        h.ip(&["link", "add", "u0", "type", "veth", "peer", "name", "eth0", "netns", &fan.outside.0]);
        h.ip(&["addr", "add", "10.99.0.1/16", "dev", "u0"]);
        h.ip(&["link", "set", "u0", "up"]);
        fan.outside.ip(&["addr", "add", "10.99.0.2/16", "dev", "eth0"]);
        fan.outside.ip(&["link", "set", "eth0", "up"]);
        h.ip(&["link", "add", "u1", "type", "veth", "peer", "name", "eth0", "netns", &fan.remote.0]);
        h.ip(&["addr", "add", "10.98.0.1/16", "dev", "u1"]);
        h.ip(&["link", "set", "u1", "up"]);
        let r = &fan.remote;
        r.ip(&["addr", "add", "10.98.0.2/16", "dev", "eth0"]);
        r.ip(&["link", "set", "eth0", "up"]);
        // A plain vxlan with a fixed remote: the fan's BPF is not under test here, only
        // that frames from a vxlan port cross the bridge like any other.
        for (ns, dev, local, remote) in
            [(h, "u1", "10.98.0.1", "10.98.0.2"), (r, "eth0", "10.98.0.2", "10.98.0.1")]
        {
            ns.ip(&[
                "link", "add", "vx250", "type", "vxlan", "id", "16384000", "local", local, "remote", remote,
                "dev", dev, "dstport", "8472",
            ]);
        }
        h.ip(&["link", "set", "vx250", "master", "fan-250", "up"]);
        r.ip(&["addr", "add", "250.2.2.10/8", "dev", "vx250"]);
        r.ip(&["link", "set", "vx250", "up"]);
        fan
    }

    /// Forwarding on (the bridge's and the underlay's) and the NAT table in place, as
    /// fanlink brings a fan up.
    fn up(&self) {
        self.host.enter(|| {
            for link in ["fan-250", "u0"] {
                assert!(
                    sysctl::ensure_forwarding(link).unwrap(),
                    "a new namespace starts with forwarding off"
                );
                assert!(!sysctl::ensure_forwarding(link).unwrap());
            }
            nft::apply(&name("fan-250"), "250.0.0.0/8".parse().unwrap(), &name("fan-250")).unwrap();
        });
    }

    fn up_again(&self) {
        self.host
            .enter(|| nft::apply(&name("fan-250"), "250.0.0.0/8".parse().unwrap(), &name("fan-250")))
            .unwrap();
    }

    fn bridged_ok(&self) -> bool {
        self.container.ping("250.1.1.20")
    }

    fn vxlan_ok(&self) -> bool {
        self.container.ping("250.2.2.10")
    }

    fn routed_ok(&self) -> bool {
        self.container.ping("10.99.0.2")
    }

    fn tables(&self) -> Vec<nft::NatTable> {
        self.host.enter(nft::list).unwrap()
    }
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn masquerade_uses_the_host_underlay_address() {
    let fan = Fan::new();
    fan.host.must(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert!(!fan.routed_ok(), "outside has no route back to the overlay, so no NAT means no reply");
    fan.host.must(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    // Counts what arrives outside, by source address.
    let (ok, _) = fan.outside.exec(&[
        "nft",
        "add table ip t; add chain ip t in { type filter hook input priority 0; }; \
         add rule ip t in ip saddr 10.99.0.1 icmp type echo-request counter; \
         add rule ip t in ip saddr 250.0.0.0/8 counter",
    ]);
    assert!(ok);
    fan.up();
    assert!(fan.routed_ok(), "the container reaches outside through the masquerade");
    assert!(fan.bridged_ok() && fan.vxlan_ok());
    let rules = fan.outside.must(&["nft", "list", "chain", "ip", "t", "in"]);
    assert!(rules.contains("ip saddr 10.99.0.1 icmp type echo-request counter packets 1 "), "{rules}");
    assert!(rules.contains("ip saddr 250.0.0.0/8 counter packets 0 "), "{rules}");
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn applying_twice_leaves_one_table_and_list_reports_it() {
    let fan = Fan::new();
    fan.up();
    fan.up_again();
    let listing = fan.host.must(&["nft", "list", "tables"]);
    assert_eq!(listing, "table ip fanlink-fan-250\n");
    let tables = fan.tables();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].name, "fanlink-fan-250");
    assert_eq!(tables[0].fan.as_deref(), Some("fan-250"));
    assert_eq!(tables[0].params, "fanlink overlay=250.0.0.0/8 bridge=fan-250 notrack");
    assert!(tables[0].is_current("250.0.0.0/8".parse().unwrap(), &name("fan-250")));
    // nft, the oracle, reads back exactly the table fanlink meant (see nft.rs's doc).
    let table = fan.host.must(&["nft", "list", "table", "ip", "fanlink-fan-250"]);
    let want = r#"table ip fanlink-fan-250 {
	comment "fanlink overlay=250.0.0.0/8 bridge=fan-250 notrack"
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		ip saddr 250.0.0.0/8 ip daddr 250.0.0.0/8 notrack
		udp dport 8472 fib daddr type local notrack
	}

	chain output {
		type filter hook output priority raw; policy accept;
		ip saddr 250.0.0.0/8 ip daddr 250.0.0.0/8 notrack
		udp dport 8472 notrack
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 250.0.0.0/8 ip daddr != 250.0.0.0/8 oifname != "fan-250" masquerade comment "fanlink overlay=250.0.0.0/8 bridge=fan-250 notrack"
	}
}
"#;
    assert_eq!(table, want);
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn changing_parameters_replaces_the_table_in_one_transaction() {
    let fan = Fan::new();
    fan.up();
    fan.host
        .enter(|| nft::apply(&name("fan-250"), "240.0.0.0/8".parse().unwrap(), &name("fan-240")))
        .unwrap();
    let tables = fan.tables();
    assert_eq!(tables.len(), 1);
    assert!(tables[0].is_current("240.0.0.0/8".parse().unwrap(), &name("fan-240")));
    let table = fan.host.must(&["nft", "list", "table", "ip", "fanlink-fan-250"]);
    assert_eq!(table.matches("masquerade").count(), 1, "{table}");
    assert!(table.contains("ip saddr 240.0.0.0/8 ip daddr != 240.0.0.0/8 oifname != \"fan-240\""), "{table}");

    // A transaction that fails at its last change changes nothing: the delete and
    // re-create before it are rolled back with it.
    let mut broken = nft::apply_batch(&name("fan-250"), "250.0.0.0/8".parse().unwrap(), &name("x"));
    let bad = nftnl::new_rule(2, "fanlink-fan-250", "no-such-chain", &[], nftnl::At::End, None, false);
    broken.push(("add a rule to a chain that is not there".into(), bad));
    let err = fan.host.enter(|| Netlink::netfilter().unwrap().transaction(broken)).unwrap_err();
    assert_eq!(err.op, "add a rule to a chain that is not there", "{err}");
    let tables = fan.tables();
    assert_eq!(tables.len(), 1);
    assert!(tables[0].is_current("240.0.0.0/8".parse().unwrap(), &name("fan-240")));
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn delete_removes_only_our_table_and_tolerates_absence() {
    let fan = Fan::new();
    fan.up();
    fan.host.must(&["nft", "add", "table", "ip", "filter"]);
    fan.host.enter(|| nft::delete(&name("fan-250"))).unwrap();
    assert_eq!(fan.tables(), []);
    assert_eq!(fan.host.must(&["nft", "list", "tables"]), "table ip filter\n");
    fan.host.enter(|| nft::delete(&name("fan-250"))).unwrap();
    assert!(!fan.routed_ok(), "without the masquerade, outside cannot answer");
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn names_that_need_escaping_round_trip_through_nft() {
    let fan = Fan::new();
    let odd = name("f.a_n;}{#$");
    fan.host.enter(|| nft::apply(&odd, "250.0.0.0/8".parse().unwrap(), &name("b'r{}#"))).unwrap();
    let tables = fan.tables();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].fan.as_deref(), Some(odd.as_str()));
    assert!(tables[0].is_current("250.0.0.0/8".parse().unwrap(), &name("b'r{}#")));
    fan.host.enter(|| nft::delete(&odd)).unwrap();
    assert_eq!(fan.tables(), []);
}

/// The FORWARD-DROP host: both kinds of traffic fail without the fix and work with it.
fn forward_drop(iptables: &str) {
    let fan = Fan::new();
    let bridge_nf = fan.host.must(&["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"]);
    assert_eq!(bridge_nf.trim(), "1", "the bridged case needs br_netfilter on");
    fan.up();
    assert!(fan.bridged_ok() && fan.vxlan_ok() && fan.routed_ok());
    fan.host.must(&[iptables, "-w", "-P", "FORWARD", "DROP"]);
    assert!(!fan.bridged_ok(), "br_netfilter sends bridged frames through FORWARD");
    assert!(!fan.vxlan_ok(), "also those to and from the vxlan port");
    assert!(!fan.routed_ok());

    // Ruled out: the per-bridge knob (already 0; the namespace's sysctl overrides it) and
    // an accept in an nftables table of our own (every base chain must accept).
    fan.host.ip(&["link", "set", "fan-250", "type", "bridge", "nf_call_iptables", "0"]);
    fan.host.must(&[
        "nft",
        "add table ip own; add chain ip own pass { type filter hook forward priority -300; }; \
         add rule ip own pass iifname \"fan-250\" accept; add rule ip own pass oifname \"fan-250\" accept",
    ]);
    assert!(!fan.bridged_ok() && !fan.vxlan_ok() && !fan.routed_ok());
    fan.host.must(&["nft", "delete", "table", "ip", "own"]);

    let (bridge, f) = (name("fan-250"), name("fan-250"));
    assert!(fan.host.enter(|| firewall::ensure_forward_accept(&f, &bridge)).unwrap());
    assert!(fan.bridged_ok(), "bridged container <-> peer");
    assert!(fan.vxlan_ok(), "bridged container <-> vxlan port <-> remote");
    assert!(fan.routed_ok(), "routed container -> outside, masqueraded");
    assert!(!fan.host.enter(|| firewall::ensure_forward_accept(&f, &bridge)).unwrap(), "idempotent");
    let rules = fan.host.must(&[iptables, "-w", "-S", "FORWARD"]);
    assert_eq!(rules.matches("fanlink:fan-250").count(), 2, "{rules}");

    assert!(fan.host.enter(|| firewall::remove_forward_accept(&f)).unwrap());
    assert!(!fan.host.enter(|| firewall::remove_forward_accept(&f)).unwrap());
    assert_eq!(fan.host.must(&[iptables, "-w", "-S", "FORWARD"]), "-P FORWARD DROP\n");
    assert!(!fan.bridged_ok() && !fan.vxlan_ok() && !fan.routed_ok());
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn forward_drop_with_iptables_nft() {
    forward_drop("iptables-nft");
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn forward_drop_with_iptables_legacy() {
    forward_drop("iptables-legacy");
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn rules_go_to_docker_user_and_follow_a_new_bridge() {
    let fan = Fan::new();
    fan.up();
    let h = &fan.host;
    h.must(&["iptables-nft", "-w", "-P", "FORWARD", "DROP"]);
    h.must(&["iptables-nft", "-w", "-N", "DOCKER-USER"]);
    h.must(&["iptables-nft", "-w", "-A", "DOCKER-USER", "-j", "RETURN"]);
    h.must(&["iptables-nft", "-w", "-I", "FORWARD", "-j", "DOCKER-USER"]);
    let f = name("fan-250");
    assert!(h.enter(|| firewall::ensure_forward_accept(&f, &name("old-br"))).unwrap());
    assert!(h.enter(|| firewall::ensure_forward_accept(&f, &f)).unwrap(), "the old bridge's rules go");
    // A copy in the wrong chain and a duplicate (as a race between two runs could leave).
    for chain in ["FORWARD", "DOCKER-USER"] {
        let copy =
            format!("iptables-nft -w -A {chain} -i fan-250 -m comment --comment fanlink:fan-250 -j ACCEPT");
        h.must(&copy.split(' ').collect::<Vec<_>>());
    }
    assert!(h.enter(|| firewall::ensure_forward_accept(&f, &f)).unwrap());
    assert!(!h.enter(|| firewall::ensure_forward_accept(&f, &f)).unwrap());
    assert_eq!(
        h.must(&["iptables-nft", "-w", "-S", "FORWARD"]),
        "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"
    );
    let user = h.must(&["iptables-nft", "-w", "-S", "DOCKER-USER"]);
    assert_eq!(
        user,
        "-N DOCKER-USER\n\
         -A DOCKER-USER -i fan-250 -m comment --comment \"fanlink:fan-250\" -j ACCEPT\n\
         -A DOCKER-USER -o fan-250 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"fanlink:fan-250\" -j ACCEPT\n\
         -A DOCKER-USER -j RETURN\n"
    );
    assert!(fan.bridged_ok() && fan.routed_ok());
    assert!(h.enter(|| firewall::remove_forward_accept(&f)).unwrap());
    assert!(!fan.routed_ok());
}

#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn a_host_without_iptables_tables_is_left_alone() {
    let fan = Fan::new();
    let f = name("fan-250");
    assert!(!fan.host.enter(|| firewall::ensure_forward_accept(&f, &f)).unwrap());
    assert_eq!(fan.host.must(&["nft", "list", "tables"]), "");
    assert_eq!(fan.host.must(&["cat", "/proc/net/ip_tables_names"]), "");
}

/// A hand-written nftables firewall that passes only what conntrack knows: the fan's own
/// overlay traffic is untracked (notrack), so only the interface rules fanlink inserts
/// into that chain let it through; replies to masqueraded traffic pass as established.
#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn a_ct_state_policy_drop_firewall_passes_fan_traffic() {
    let fan = Fan::new();
    fan.up();
    let h = &fan.host;
    let chain = "table inet filter {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tct state established,related accept\n\t}\n}\n";
    h.must(&["nft", "add table inet filter; add chain inet filter forward { type filter hook forward priority 0; policy drop; }; add rule inet filter forward ct state established,related accept"]);
    assert!(!fan.bridged_ok() && !fan.vxlan_ok(), "untracked overlay traffic is not established");
    assert!(!fan.routed_ok(), "a new connection out is dropped");

    let f = name("fan-250");
    assert!(h.enter(|| firewall::ensure_forward_accept(&f, &f)).unwrap());
    assert!(fan.bridged_ok() && fan.vxlan_ok() && fan.routed_ok());
    assert!(!h.enter(|| firewall::ensure_forward_accept(&f, &f)).unwrap(), "idempotent");
    let listing = h.must(&["nft", "list", "chain", "inet", "filter", "forward"]);
    let ours = "\t\tiifname \"fan-250\" accept comment \"fanlink:fan-250\"\n\
                \t\toifname \"fan-250\" ct state established,related accept comment \"fanlink:fan-250\"\n";
    assert_eq!(listing, chain.replace("\t\tct state", &format!("{ours}\t\tct state")));

    assert!(h.enter(|| firewall::remove_forward_accept(&f)).unwrap());
    assert!(!h.enter(|| firewall::remove_forward_accept(&f)).unwrap());
    assert_eq!(h.must(&["nft", "list", "chain", "inet", "filter", "forward"]), chain);
    assert!(!fan.bridged_ok() && !fan.vxlan_ok() && !fan.routed_ok());
}

/// Both kinds at once (Docker on a host with its own nftables ruleset): each gets the rules
/// in its own form, in one transaction, and iptables-nft still reads its table.
#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn iptables_nft_and_native_drop_chains_together() {
    let fan = Fan::new();
    fan.up();
    let h = &fan.host;
    h.must(&["iptables-nft", "-w", "-P", "FORWARD", "DROP"]);
    h.must(&[
        "nft",
        "add table ip mine; add chain ip mine gate { type filter hook forward priority 10; policy drop; }",
    ]);
    let f = name("fan-250");
    assert!(h.enter(|| firewall::ensure_forward_accept(&f, &f)).unwrap());
    assert!(fan.bridged_ok() && fan.vxlan_ok() && fan.routed_ok());
    assert_eq!(h.must(&["iptables-nft", "-w", "-S", "FORWARD"]).matches("fanlink:fan-250").count(), 2);
    assert_eq!(h.must(&["nft", "list", "chain", "ip", "mine", "gate"]).matches("fanlink:fan-250").count(), 2);
    assert!(h.enter(|| firewall::remove_forward_accept(&f)).unwrap());
    assert!(!fan.bridged_ok());
}

/// Overlay-to-overlay traffic never enters conntrack; traffic that leaves the overlay does
/// (it is masqueraded). Counted by a probe table on the forward hook.
#[test]
#[ignore = "needs root (namespaces, nf_tables; nft and iptables as oracles): run with --include-ignored"]
fn overlay_traffic_skips_conntrack() {
    let fan = Fan::new();
    fan.up();
    let h = &fan.host;
    h.must(&[
        "nft",
        "add table ip probe; add chain ip probe count { type filter hook forward priority 0; }; \
         add rule ip probe count ct state untracked counter; add rule ip probe count ct state != untracked counter; \
         add chain ip probe tunnel { type filter hook input priority 0; }; \
         add rule ip probe tunnel udp dport 8472 ct state untracked counter; \
         add rule ip probe tunnel udp dport 8472 ct state != untracked counter",
    ]);
    let counts = || {
        let listing = h.must(&["nft", "list", "chain", "ip", "probe", "count"]);
        let packets = |rule: &str| -> u64 {
            let line = listing.lines().find(|l| l.trim_start().starts_with(rule)).unwrap();
            line.split_whitespace().skip_while(|w| *w != "packets").nth(1).unwrap().parse().unwrap()
        };
        (packets("ct state untracked"), packets("ct state != untracked"))
    };
    assert!(fan.bridged_ok() && fan.vxlan_ok());
    let (untracked, tracked) = counts();
    assert!(untracked >= 4, "bridged and vxlan pings, both ways: {untracked}");
    assert_eq!(tracked, 0);
    // The vxlan's own UDP, to this host's underlay address, skips conntrack too.
    let tunnel = h.must(&["nft", "list", "chain", "ip", "probe", "tunnel"]);
    assert!(!tunnel.contains("ct state untracked counter packets 0 "), "{tunnel}");
    assert!(tunnel.contains("ct state != untracked counter packets 0 "), "{tunnel}");
    assert!(fan.routed_ok());
    let (_, tracked) = counts();
    assert!(tracked >= 2, "the masqueraded ping and its reply: {tracked}");
}
