//! What fanctl and /etc/network/fan could say, as fanlink says it (issue 25): a fan kept but
//! disabled, DHCP with a lease time, another vxlan on the fan's UDP port, and `down` of a
//! fan that still has workloads on its bridge.

use crate::cli::{fanlink, TempDir};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// cloud-init's example as rules: the fan on eth0, its disabled alternative on eth1, and a
/// disabled fan of its own.
const KEPT: &str = "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\ninterface = \"eth0\"\n\
                    dhcp = true\ndhcp-lease = \"12h\"\n\n\
                    [[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\ninterface = \"eth1\"\nenable = false\n\n\
                    [[fan]]\noverlay = \"251.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\nenable = false\n";

#[test]
fn check_lists_disabled_fans_and_the_lease() {
    let dir = TempDir::new("kept");
    dir.write("50-kept.toml", KEPT);
    let out = fanlink(&["check", "--rules-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout).replace(&format!("{}/", dir.path().display()), "");
    assert_eq!(
        stdout,
        "fan-250  overlay 250.0.0.0/8  underlay 10.0.0.0/16  vni 16384000  link eth0  mtu auto  masquerade on  dhcp 12h  (50-kept.toml:1)\n\
         fan-250  overlay 250.0.0.0/8  underlay 10.0.0.0/16  vni 16384000  link eth1  mtu auto  masquerade on  disabled  (50-kept.toml:8)\n\
         fan-251  overlay 251.0.0.0/8  underlay 10.0.0.0/16  vni 16449536  link auto  mtu auto  masquerade on  disabled  (50-kept.toml:14)\n"
    );
}

#[test]
fn up_of_a_disabled_fan_says_so_and_changes_nothing() {
    let dir = TempDir::new("kept");
    dir.write("50-kept.toml", KEPT);
    let out = fanlink(&["up", "fan-251", "--rules-dir", dir.path().to_str().unwrap()]);
    let stderr = text(&out.stderr).replace(&format!("{}/", dir.path().display()), "");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr,
        "fanlink: fan-251 is disabled by its rule (50-kept.toml:14: enable = false); set enable = true to bring it up\n"
    );
    assert_eq!(text(&out.stdout), "");
}

use crate::launch::{Daemon, Launch, SOON};
use crate::topology::{sh, wait_for, Mode, Netns};

/// A host namespace with uplink0 at 10.99.1.1/16 and a default route through a peer
/// namespace: routable in the kernel's eyes, so the daemon runs without networkd.
struct KernelHost {
    ns: Netns,
    _peer: Netns,
    rules: TempDir,
    dir: TempDir,
}

impl KernelHost {
    fn new(tag: &str) -> KernelHost {
        let (ns, peer) = (Netns::new(tag), Netns::new("flkp"));
        crate::topology::run(
            None,
            &format!(
                "ip link add uplink0 netns {h} type veth peer name peer0 netns {p} && \
                 ip -n {p} addr add 10.99.254.254/16 dev peer0 && ip -n {p} link set peer0 up && \
                 ip -n {h} addr add 10.99.1.1/16 dev uplink0 && ip -n {h} link set uplink0 up && \
                 ip -n {h} route add default via 10.99.254.254",
                h = ns.name(),
                p = peer.name()
            ),
        );
        KernelHost { ns, _peer: peer, rules: TempDir::new("rules"), dir: TempDir::new("run") }
    }

    fn start(&self, mode: Mode) -> Daemon {
        let launch =
            Launch::new(self.ns.name(), "unix:path=/nonexistent/bus", self.rules.path(), self.dir.path());
        Daemon::start(&Launch { args: &["--source", "kernel"], env: &[mode.env()], ..launch })
    }

    /// "absent", "down" or "up": the fan's bridge as the kernel has it.
    fn bridge(&self, fan: &str) -> &'static str {
        let out = text(&sh(Some(self.ns.name()), &format!("ip -o link show dev {fan}")).stdout);
        match out.split_once('<').map(|(_, flags)| flags.split('>').next().unwrap_or("")) {
            None => "absent",
            Some(flags) if flags.split(',').any(|f| f == "UP") => "up",
            Some(_) => "down",
        }
    }

    fn wait(&self, fan: &str, want: &str, daemon: &Daemon) {
        wait_for(&format!("{fan} {want}; log:\n{}", daemon.log()), SOON, || self.bridge(fan) == want);
    }
}

fn fan(octet: u8, extra: &str) -> String {
    format!("[[fan]]\noverlay = \"{octet}.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\n{extra}\n")
}

crate::in_both_datapaths! {
    /// A disabled fan is never built; a running fan that gets `enable = false` goes down with
    /// its devices kept (workloads stay attached), and the other fans stay up.
    #[ignore = "needs root (network namespaces): run with --include-ignored"]
    fn the_daemon_keeps_a_disabled_fan_down(mode) {
        let host = KernelHost::new("flkd");
        host.rules.write("50-t.toml", &(fan(250, "") + &fan(251, "") + &fan(252, "enable = false")));
        let daemon = host.start(mode);
        host.wait("fan-250", "up", &daemon);
        host.wait("fan-251", "up", &daemon);
        daemon.wait_log("fan-252: down: disabled by its rule (enable = false)");
        assert_eq!(host.bridge("fan-252"), "absent", "never built");
        host.rules.write("50-t.toml", &(fan(250, "enable = false") + &fan(251, "") + &fan(252, "enable = false")));
        daemon.signal_hup();
        host.wait("fan-250", "down", &daemon);
        assert_eq!(host.bridge("fan-251"), "up");
        let vx = text(&sh(Some(host.ns.name()), "ip -o link show dev fan-250-vx").stdout);
        assert!(vx.contains("master fan-250"), "the port stays on the bridge: {vx}");
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");

/// The kernel's devices of a host, one name a line.
fn links(ns: &Netns) -> Vec<String> {
    ns.run("ip -o link show")
        .lines()
        .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_string()))
        .collect()
}

crate::in_both_datapaths! {
    /// flannel's `flannel.1` holds UDP 8472: `up` refuses before building anything, naming
    /// it; the daemon reports it once, retries, and builds the fan once the device is gone.
    #[ignore = "needs root (network namespaces): run with --include-ignored"]
    fn another_vxlan_on_the_fan_port_is_named_and_nothing_is_built(mode) {
        let host = KernelHost::new("flkv");
        host.ns.run("ip link add flannel.1 type vxlan id 1 dstport 8472 nolearning dev uplink0 && ip link set flannel.1 up");
        let before = links(&host.ns);
        let out = host.ns.sh(&format!("{} {BIN} up --overlay 250.0.0.0/8 --underlay 10.99.0.0/16", mode.env()));
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            text(&out.stderr),
            "fanlink: fan-250: UDP port 8472, which every fan needs, is held by another vxlan: flannel.1 \
             (likely flannel's vxlan backend (8472 is its default port)); nothing was changed. Remove it \
             (`ip link del flannel.1`) or move it to another port, and fanlink retries\n"
        );
        assert_eq!(links(&host.ns), before, "nothing built");
        assert!(!host.ns.run("nft list tables").contains("fanlink"), "no NAT table");

        host.rules.write("50-t.toml", &fan(250, ""));
        let daemon = host.start(mode);
        daemon.wait_log("is held by another vxlan: flannel.1");
        // Retried after 1 s, then 2 s: the third attempt is made within ~3 s.
        std::thread::sleep(std::time::Duration::from_millis(3500));
        let log = daemon.log();
        let errors = log.lines().filter(|l| l.contains("ERROR") && l.contains("held by another vxlan")).count();
        assert_eq!(errors, 1, "reported once per cause:\n{log}");
        assert_eq!(links(&host.ns), before, "nothing built by the daemon either:\n{log}");
        host.ns.run("ip link del flannel.1");
        host.wait("fan-250", "up", &daemon);
    }
}

crate::in_both_datapaths! {
    /// A container (a veth on the bridge) keeps `down` and `down --all` from taking its fan
    /// away, as fanctl refused; `--force` does it and leaves the container's veth detached.
    #[ignore = "needs root (network namespaces): run with --include-ignored"]
    fn down_refuses_while_workloads_are_attached(mode) {
        let host = KernelHost::new("flkw");
        let container = Netns::new("flkc");
        let fanlink = |args: &str| host.ns.sh(&format!("{} {BIN} {args}", mode.env()));
        for overlay in ["250.0.0.0/8", "251.0.0.0/8"] {
            let out = fanlink(&format!("up --overlay {overlay} --underlay 10.99.0.0/16"));
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        crate::topology::run(
            None,
            &format!(
                "ip -n {h} link add c0 type veth peer name eth0 netns {c} && ip -n {h} link set c0 master fan-250 up",
                h = host.ns.name(),
                c = container.name()
            ),
        );
        let refusal = "fanlink: fan-250 has 1 attached (c0): workloads still use the fan; nothing was taken \
                       down. Stop them (or move them to another bridge), or add --force to take the fan down \
                       under them\n";
        for args in ["down fan-250", "down --all"] {
            let out = fanlink(args);
            assert_eq!((out.status.code(), text(&out.stderr)), (Some(2), refusal.to_string()), "{args}");
            assert_eq!((host.bridge("fan-250"), host.bridge("fan-251")), ("up", "up"), "{args}");
        }
        let out = fanlink("down fan-251");
        assert!(out.status.success(), "a fan without workloads goes: {}", text(&out.stderr));
        let out = fanlink("down fan-250 --force");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(host.bridge("fan-250"), "absent");
        let c0 = host.ns.run("ip -o link show dev c0");
        assert!(!c0.contains("master"), "the container's veth stays, detached: {c0}");
    }
}

/// Every form cloud-init's fan module and ubuntu-fan write, imported and then read back by
/// `fanlink check`: each line of the source is one fan, enabled or kept disabled as it was.
#[test]
fn every_cloud_init_form_round_trips_through_import_and_check() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/import/good");
    let source = std::path::Path::new(corpus).join("cloud-init-every-form.fan");
    let out = fanlink(&["import", source.to_str().unwrap(), "--underlay-prefix", "172.16.0.0/16"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dir = TempDir::new("every");
    dir.write("50-imported.toml", &text(&out.stdout));
    let out = fanlink(&["check", "--rules-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let fans: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split("  ").collect();
            let kept: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| {
                    !w.starts_with('(')
                        && !w.starts_with("vni")
                        && !w.starts_with("mtu")
                        && !w.starts_with("masq")
                })
                .collect();
            kept.join(" ")
        })
        .collect();
    assert_eq!(
        fans,
        [
            "fan-240 overlay 240.0.0.0/8 underlay 172.16.0.0/16 link eth0 dhcp 1h",
            "fan-240 overlay 240.0.0.0/8 underlay 172.16.0.0/16 link eth1 dhcp 1h disabled",
            "lxdfan0 overlay 241.0.0.0/8 underlay 172.16.0.0/16 link eth0 dhcp 1h disabled",
            "fan-242 overlay 242.0.0.0/8 underlay 172.16.0.0/16 link auto dhcp 1h",
            "fan-243 overlay 243.0.0.0/8 underlay 172.16.0.0/16 link eth0",
            "fan-244 overlay 244.0.0.0/8 underlay 172.16.0.0/16 link auto dhcp 1h",
            "fan-245 overlay 245.0.0.0/8 underlay 172.16.0.0/16 link eth1 disabled",
            "fan-246 overlay 246.0.0.0/8 underlay 172.16.0.0/16 link auto",
            "fan-247 overlay 247.0.0.0/8 underlay 172.16.0.0/16 link eth0 dhcp 1h",
        ]
    );
    let source_fans = std::fs::read_to_string(&source)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .count();
    assert_eq!(fans.len(), source_fans, "one fan per line of the source");
}

/// `dhcp-lease` reaches the client: a container's DHCP client (busybox udhcpc) is offered
/// the rule's lease time, not dnsmasq's hour.
#[test]
#[ignore = "needs root (network namespaces), dnsmasq and busybox: run with --include-ignored"]
fn the_rules_lease_time_is_the_one_a_client_gets() {
    let host = KernelHost::new("flkl");
    host.rules.write("50-t.toml", &fan(250, "dhcp = true\ndhcp-lease = \"12h\""));
    let daemon = host.start(Mode::Vnifilter);
    host.wait("fan-250", "up", &daemon);
    let container = Netns::new("flkc");
    crate::topology::run(
        None,
        &format!(
            "ip -n {h} link add c0 type veth peer name eth0 netns {c} && ip -n {h} link set c0 master fan-250 up && \
             ip -n {c} link set eth0 up",
            h = host.ns.name(),
            c = container.name()
        ),
    );
    let script =
        host.dir.write("lease.sh", "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease $lease\"\nexit 0\n");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut lease = String::new();
    wait_for(&format!("a DHCP lease; log:\n{}", daemon.log()), std::time::Duration::from_secs(20), || {
        let out = container.sh(&format!("busybox udhcpc -i eth0 -n -q -f -t 3 -T 1 -s {}", script.display()));
        lease = text(&out.stdout).lines().find(|l| l.starts_with("lease ")).unwrap_or("").to_string();
        !lease.is_empty()
    });
    assert_eq!(lease, "lease 43200", "12h in seconds");
}
