//! `fanlink run` against a real systemd-networkd on a private bus in a network namespace
//! (tests/harness): the fan follows the underlay, survives networkd and bus restarts,
//! ignores forged signals, reloads rules, and recovers from `kill -9`.

use crate::cli::TempDir;
pub use crate::launch::{wait_until, Daemon, Launch, SOON};
use crate::topology::{sh, wait_for, Mode, Netns};
use crate::util::Harness;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");
const FAN_250: &str = "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\n";
const FAN_251: &str = "[[fan]]\noverlay = \"251.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\n";

/// A host: networkd on its own bus, with uplink0 at `address`, and fanlink's rules.
pub struct Host {
    pub harness: Harness,
    pub rules: TempDir,
    pub runtime: TempDir,
    pub mode: Mode,
}

impl Host {
    pub fn new(name: &str, address: &str, knobs: &[(&str, &str)]) -> Host {
        Host::new_in(Mode::Vnifilter, name, address, knobs)
    }

    /// A host whose fanlink builds the datapath `mode`.
    pub fn new_in(mode: Mode, name: &str, address: &str, knobs: &[(&str, &str)]) -> Host {
        let mut all = vec![("UPLINK_ADDR", address), ("PEER_ADDR", "10.99.254.254/16"), ("UPLINK_GW", "")];
        all.extend_from_slice(knobs);
        // Both modes of a test run at once: their harness names must differ.
        let name = if mode == Mode::Shared { format!("s{name}") } else { name.to_string() };
        let harness = Harness::start_with(&name, &all);
        let rules = TempDir::new("rules");
        rules.write("50-test.toml", FAN_250);
        Host { harness, rules, runtime: TempDir::new("run"), mode }
    }

    pub fn ns(&self) -> &str {
        self.harness.var("HARNESS_NETNS")
    }

    pub fn sh(&self, command: &str) -> String {
        String::from_utf8_lossy(&sh(Some(self.ns()), command).stdout).into_owned()
    }

    /// `fanlink run` with the host's rules and runtime dir.
    pub fn start(&self) -> Daemon {
        self.start_wrapped(&[], &self.runtime.path().join("rt"))
    }

    /// `fanlink run` in this host's namespace under `wrapper` (e.g. `unshare -m sh -c ...`;
    /// empty for none), with `runtime` as its runtime directory.
    pub fn start_wrapped(&self, wrapper: &[&str], runtime: &Path) -> Daemon {
        let launch = Launch::new(self.ns(), self.harness.bus(), self.rules.path(), self.runtime.path());
        Daemon::start(&Launch {
            wrapper,
            runtime: Some(runtime),
            env: &[self.mode.env(), "RUST_LOG=debug"],
            ..launch
        })
    }

    /// A container namespace on the fan bridge: veth `cv0` here, `eth0` 250.1.1.10/8 there.
    pub fn container(&self) -> Netns {
        let container = Netns::new("flc");
        sh(
            None,
            &format!(
                "ip link add cv0 netns {h} mtu 1450 type veth peer name eth0 netns {c} mtu 1450 && \
                 ip -n {h} link set cv0 master fan-250 up && ip -n {c} addr add 250.1.1.10/8 dev eth0 && \
                 ip -n {c} link set eth0 up",
                h = self.ns(),
                c = container.name()
            ),
        );
        container
    }

    /// "up 250.1.1.1/8", "down", or "absent" for the fan bridge `bridge`.
    pub fn fan(&self, bridge: &str) -> String {
        let link = self.sh(&format!("ip -o link show dev {bridge} 2>/dev/null"));
        if link.is_empty() {
            return "absent".into();
        }
        let flags = link.split('<').nth(1).and_then(|f| f.split('>').next()).unwrap_or("");
        if !flags.split(',').any(|f| f == "UP") {
            return "down".into();
        }
        let addr = self.sh(&format!("ip -o -4 addr show dev {bridge}"));
        let addr = addr.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap_or("-");
        format!("up {addr}")
    }

    pub fn wait_fan(&self, bridge: &str, want: &str, daemon: &Daemon) {
        wait_until(|| format!("{bridge} to be {want}; log:\n{}", daemon.log()), || self.fan(bridge) == want);
    }

    /// Waits until the daemon has caught up: asks for its status over the control socket
    /// twice. A reply comes after every event queued before its request was read, but before
    /// the reconcile those events started; the second reply, after that reconcile too.
    pub fn settle(&self) {
        let rt = self.runtime.path().join("rt");
        // The daemon's answer, not the kernel-reading fallback of a `status` without a daemon.
        let status =
            format!("{BIN} --runtime-dir {} status --json | grep -q '\"source\": *\"daemon'", rt.display());
        for _ in 0..2 {
            wait_until(
                || "the daemon to answer status".into(),
                || sh(Some(self.ns()), &status).status.success(),
            );
        }
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn the_fan_comes_up_whether_fanlink_starts_before_or_after_routable(mode) {
        let host = Host::new_in(mode, "early", "10.99.1.1/16", &[]);
        let daemon = host.start();
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        daemon.wait_log("fan-250: up: uplink0 routable with 10.99.1.1");
        drop(daemon);

        let late = Host::new_in(mode, "late", "10.99.2.2/16", &[]);
        late.harness.run("carrier", &["down"]);
        let daemon = late.start();
        daemon.wait_log("running: 1 fan(s)");
        assert_eq!(late.fan("fan-250"), "down", "the bridge, down, before the underlay is routable");
        late.harness.run("carrier", &["up"]);
        late.wait_fan("fan-250", "up 250.2.2.1/8", &daemon);
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn flaps_take_the_fan_down_and_up_and_containers_stay_attached(mode) {
        let host = Host::new_in(mode, "flap", "10.99.1.1/16", &[]);
        let daemon = host.start();
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        let _container = host.container();
        host.harness.run("carrier", &["down"]);
        host.wait_fan("fan-250", "down", &daemon);
        host.harness.run("carrier", &["up"]);
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        host.harness.run("link", &["down"]);
        host.wait_fan("fan-250", "down", &daemon);
        host.harness.run("link", &["up"]);
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        for _ in 0..50 {
            host.harness.run("carrier", &["down"]);
            host.harness.run("carrier", &["up"]);
        }
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        assert!(host.sh("ip -o link show dev cv0").contains("master fan-250"), "the container is still attached");
        // The last flaps' events may still be in flight: the fan settles up, then answers.
        wait_for("host -> container after the flaps", SOON, || {
            host.fan("fan-250") == "up 250.1.1.1/8"
                && sh(Some(host.ns()), "ping -c1 -W1 250.1.1.10").status.success()
        });
    }
}

/// The netlink requests of each reconcile, from the daemon's debug lines
/// "event to last ack: N us, K netlink request(s)".
fn requests_per_reconcile(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split("event to last ack: ").nth(1))
        .filter_map(|rest| rest.split(", ").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn a_flap_costs_one_netlink_request_each_way(mode) {
        let host = Host::new_in(mode, "nlreq", "10.99.1.1/16", &[]);
        let launch = Launch::new(host.ns(), host.harness.bus(), host.rules.path(), host.runtime.path());
        let daemon = Daemon::start(&Launch { env: &[mode.env(), "RUST_LOG=debug"], ..launch });
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        // The echo of the creation settles first (its events may cost a read of the new filters).
        host.settle();
        let before = daemon.log().len();
        let flaps = 5;
        for _ in 0..flaps {
            host.harness.run("carrier", &["down"]);
            host.wait_fan("fan-250", "down", &daemon);
            host.harness.run("carrier", &["up"]);
            host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        }
        // Every request is counted once its reconcile has logged; then nothing more may come.
        wait_until(
            || format!("{} netlink requests; log:\n{}", 2 * flaps, &daemon.log()[before..]),
            || requests_per_reconcile(&daemon.log()[before..]).iter().sum::<u64>() >= 2 * flaps,
        );
        host.settle();
        let log = daemon.log();
        let per = requests_per_reconcile(&log[before..]);
        eprintln!("[daemon] {flaps} flaps: {} reconciles, requests {per:?}", per.len());
        // Down: set the bridge down; up: set it up. Nothing is dumped: the kernel's state
        // is kept and patched by the events, and the NAT table and filters are known.
        assert_eq!(per.iter().sum::<u64>(), 2 * flaps, "{per:?}; log:\n{}", &log[before..]);
        assert!(per.iter().all(|n| *n <= 1), "{per:?}");
    }
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn the_devices_fanlink_creates_cost_no_call_to_networkd() {
    let host = Host::new("ownlinks", "10.99.1.1/16", &[]);
    let launch = Launch::new(host.ns(), host.harness.bus(), host.rules.path(), host.runtime.path());
    let daemon = Daemon::start(&Launch { env: &["RUST_LOG=debug"], ..launch });
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    // networkd reports the new bridge and vxlan by their indexes only; asking it who they are
    // (three calls each, answered only once networkd is done configuring them) is needless:
    // a link that carries fanlink's alias is never an underlay.
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log();
    assert!(!log.contains("asking networkd for link"), "log:\n{log}");
    // The control: a device that is not fanlink's is asked about, in that very line.
    let other = sh(Some(host.ns()), "ip link add other0 type bridge && ip link set other0 up");
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let index = host.sh("ip -o link show dev other0 | cut -d: -f1");
    daemon.wait_log(&format!("asking networkd for link {}\n", index.trim()));
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn a_restart_asks_networkd_about_no_device_of_its_own() {
    let host = Host::new("ownstart", "10.99.1.1/16", &[]);
    let daemon = host.start();
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    let followed =
        |log: &str| log.lines().find(|l| l.contains("networkd is on the bus; ")).map(str::to_owned);
    let first = followed(&daemon.log()).expect("the first start follows networkd");
    drop(daemon);
    // The bridge and vxlan now exist, and networkd lists them: each would cost two calls
    // at start (sixteen fans: 64), and neither can be an underlay.
    let daemon = host.start();
    daemon.wait_log("networkd is on the bus; ");
    let log = daemon.log();
    assert_eq!(followed(&log), Some(first), "log:\n{log}");
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn fanlink_resyncs_after_networkd_and_the_bus_restart(mode) {
        let host = Host::new_in(mode, "restart", "10.99.1.1/16", &[]);
        let daemon = host.start();
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);

        // networkd gone while the uplink loses carrier: fans stay as they are until it is back.
        host.harness.run("kill-networkd", &[]);
        daemon.wait_log("networkd left the bus");
        host.harness.run("carrier", &["down"]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(host.fan("fan-250"), "up 250.1.1.1/8", "nothing changes while networkd is away");
        host.harness.run_with("start-networkd", &[], &[("WAIT_ROUTABLE", "0")]);
        host.wait_fan("fan-250", "down", &daemon);
        host.harness.run("carrier", &["up"]);
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);

        // The bus itself restarts (networkd does not reconnect by itself, so it restarts too).
        host.harness.run("kill-bus", &[]);
        daemon.wait_log("lost the system bus");
        host.harness.run("kill-networkd", &[]);
        host.harness.run("start-bus", &[]);
        host.harness.run("start-networkd", &[]);
        daemon.wait_log("networkd is on the bus");
        host.harness.run("carrier", &["down"]);
        host.wait_fan("fan-250", "down", &daemon);
        host.harness.run("carrier", &["up"]);
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    }
}

/// A connection's unique name on the bus, found by its PID as any local user can (issue 24).
fn unique_name_of(host: &Host, pid: u32) -> String {
    let bus = format!("--address={}", host.harness.bus());
    let out = crate::util::output(std::process::Command::new("busctl").args([
        &bus,
        "list",
        "--unique",
        "--no-legend",
    ]));
    let list = String::from_utf8_lossy(&out.stdout);
    let mine = |l: &str| {
        let mut words = l.split_whitespace();
        let name = words.next()?;
        (words.next()? == pid.to_string()).then(|| name.to_owned())
    };
    list.lines().find_map(mine).unwrap_or_else(|| panic!("no connection of pid {pid} on the bus:\n{list}"))
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn forged_signals_change_nothing() {
    let host = Host::new("forge", "10.99.1.1/16", &[]);
    // A link whose name needs escaping (an escape sequence and a quote; the kernel takes
    // both): networkd lists it, fanlink says it ignores it, in a line the terminal
    // cannot be steered by.
    let odd = sh(Some(host.ns()), "ip link add 'fl\x1b[7m\"x' type bridge");
    assert!(odd.status.success(), "{}", String::from_utf8_lossy(&odd.stderr));
    let daemon = host.start();
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    let path = host.harness.var("HARNESS_UPLINK_OBJ").to_string();
    let props = "org.freedesktop.DBus.Properties";
    let link = "org.freedesktop.network1.Link";
    // Broadcast, which the bus does not even route to fanlink (its match names networkd), and
    // sent to fanlink's unique name, which the bus delivers whatever the match: dropped, and
    // said so at debug.
    let unicast = format!("--destination={}", unique_name_of(&host, daemon.pid()));
    let forgeries = [
        (path.as_str(), vec!["sa{sv}as", link, "1", "OperationalState", "s", "off", "0"]),
        (path.as_str(), vec!["sa{sv}as", link, "1", "OperationalState", "s", "../../x", "0"]),
        (path.as_str(), vec!["sa{sv}as", link, "1", "OperationalState", "i", "3", "0"]),
        (
            "/org/freedesktop/network1/link/_39",
            vec!["sa{sv}as", link, "1", "OperationalState", "s", "off", "0"],
        ),
        ("/org/example/link/_32", vec!["sa{sv}as", link, "1", "OperationalState", "s", "off", "0"]),
    ];
    for destination in [None, Some(unicast.as_str())] {
        for (object, args) in &forgeries {
            let mut argv: Vec<&str> = destination.into_iter().collect();
            argv.extend(["emit", object, props, "PropertiesChanged"]);
            argv.extend(args);
            host.harness.busctl(&argv);
        }
    }
    // A real change after the forgeries: once it is handled, the forgeries were too.
    host.harness.run("carrier", &["down"]);
    host.wait_fan("fan-250", "down", &daemon);
    host.harness.run("carrier", &["up"]);
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    let log = daemon.log();
    assert_eq!(log.matches("set fan-250 down").count(), 1, "only the real carrier loss took it down:\n{log}");
    let drops: Vec<&str> =
        log.lines().filter(|l| l.contains("dropped ") && l.contains("member=PropertiesChanged")).collect();
    assert!(drops.len() >= forgeries.len(), "each unicast forgery is dropped, in a debug line:\n{log}");
    assert!(drops.iter().any(|l| l.contains("path=/org/example/link/_32 ")), "{drops:#?}");
    // Bus strings reach the log escaped, or not at all (a dropped message's values).
    assert!(log.contains(r#" "fl\u{1b}[7m\"x"; ignoring it"#), "the odd link's name, escaped:\n{log}");
    assert!(!log.contains('\x1b'), "no raw escape character in the log:\n{}", log.escape_debug());
    assert!(!log.contains("../../x"), "a dropped message's values are not logged:\n{log}");
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn sighup_reloads_and_a_broken_rule_file_changes_nothing(mode) {
        let host = Host::new_in(mode, "hup", "10.99.1.1/16", &[]);
        let daemon = host.start();
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        host.rules.write("60-second.toml", FAN_251);
        daemon.signal_hup();
        host.wait_fan("fan-251", "up 251.1.1.1/8", &daemon);

        host.rules.write("70-broken.toml", "[[fan]]\noverlay = \"252.0.0.0/8\"\nunderlay = 7\n");
        std::fs::remove_file(host.rules.path().join("60-second.toml")).unwrap();
        daemon.signal_hup();
        daemon.wait_log("reload refused: 1 error(s) in the rules; running fans are untouched");
        assert!(daemon.log().contains("70-broken.toml:3:12: error: `underlay` must be a string"));
        assert_eq!(host.fan("fan-251"), "up 251.1.1.1/8", "a broken reload changes nothing");

        std::fs::remove_file(host.rules.path().join("70-broken.toml")).unwrap();
        daemon.signal_hup();
        host.wait_fan("fan-251", "absent", &daemon);
        assert_eq!(host.fan("fan-250"), "up 250.1.1.1/8");
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn kill_9_while_bringing_a_fan_up_then_restart_leaves_one_of_everything(mode) {
        let host = Host::new_in(mode, "kill", "10.99.1.1/16", &[]);
        for delay_ms in [0, 2, 5, 10, 20, 40] {
            let mut daemon = host.start();
            std::thread::sleep(Duration::from_millis(delay_ms));
            daemon.child.kill().unwrap();
            daemon.child.wait().unwrap();
            let daemon = host.start();
            host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
            daemon.wait_log("running:");
            let count = |cmd: &str| host.sh(cmd).lines().count();
            assert_eq!(count("ip -o link show type bridge"), 1, "one bridge (after {delay_ms} ms)");
            assert_eq!(count("ip -o link show type vxlan"), 1, "one vxlan");
            assert_eq!(count("tc filter show dev fan-250-vx egress | grep fanlink"), 1, "one filter");
            assert_eq!(count("nft list tables | grep fanlink"), 1, "one nat table");
            drop(daemon);
            host.sh(&format!("{BIN} down --all"));
        }
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn a_new_underlay_address_moves_the_fan(mode) {
        let host = Host::new_in(mode, "move", "10.99.1.1/16", &[]);
        let daemon = host.start();
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        host.harness.run("set-address", &["10.99.7.7/16"]);
        host.wait_fan("fan-250", "up 250.7.7.1/8", &daemon);
        assert!(host.sh("tc filter show dev fan-250-vx egress").contains("10.99.7.7"));
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn two_hosts_reach_each_other_while_both_uplinks_are_routable(mode) {
        let switch = crate::topology::unique("flsw");
        crate::topology::run(None, &format!("ip netns add {switch} && ip -n {switch} link add sw-br type bridge && ip -n {switch} link set sw-br up"));
        let _switch = Netns(switch.clone());
        let a = Host::new_in(mode, "twoa", "10.99.1.1/16", &[("SWITCH_NS", &switch)]);
        let b = Host::new_in(mode, "twob", "10.99.2.2/16", &[("SWITCH_NS", &switch)]);
        let (da, db) = (a.start(), b.start());
        a.wait_fan("fan-250", "up 250.1.1.1/8", &da);
        b.wait_fan("fan-250", "up 250.2.2.1/8", &db);
        let ca = Netns::new("flc");
        sh(
            None,
            &format!(
                "ip link add cv0 netns {h} mtu 1450 type veth peer name eth0 netns {c} mtu 1450 && \
                 ip -n {h} link set cv0 master fan-250 up && ip -n {c} addr add 250.1.1.10/8 dev eth0 && \
                 ip -n {c} link set eth0 up && ip -n {c} route add default via 250.1.1.1",
                h = a.ns(),
                c = ca.name()
            ),
        );
        let ping = |to: &str| sh(Some(ca.name()), &format!("ping -c1 -W1 {to}")).status.success();
        assert!(ping("250.2.2.1"), "container on a -> fan bridge of b");
        b.harness.run("link", &["down"]);
        b.wait_fan("fan-250", "down", &db);
        assert!(!ping("250.2.2.1"), "b's fan is down");
        b.harness.run("link", &["up"]);
        b.wait_fan("fan-250", "up 250.2.2.1/8", &db);
        wait_for("traffic to resume", SOON, || ping("250.2.2.1"));
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn a_fan_made_by_hand_is_left_alone_by_the_daemon(mode) {
        let host = Host::new_in(mode, "hand", "10.99.1.1/16", &[]);
        let daemon = host.start();
        host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
        host.sh(&format!("{} {BIN} up --overlay 252.0.0.0/8 --underlay 10.99.0.0/16", mode.env()));
        assert_eq!(host.fan("fan-252"), "up 252.1.1.1/8");
        // Any change makes the daemon reconcile; the fan made by hand has no rule and stays.
        daemon.signal_hup();
        daemon.wait_log("reloaded the rules");
        host.harness.run("carrier", &["down"]);
        host.wait_fan("fan-250", "down", &daemon);
        assert_eq!(host.fan("fan-252"), "up 252.1.1.1/8");
        let status = host.sh(&format!("{BIN} --runtime-dir /nonexistent status"));
        assert!(
            status.contains("fan-252: wanted kept (made by hand with `fanlink up`; left as it is), actually up"),
            "{status}"
        );
        host.sh(&format!("{BIN} down fan-252"));
        assert_eq!(host.fan("fan-252"), "absent");
    }
}

/// `fanlink run` in a namespace without networkd: the kernel decides "routable".
fn start_without_networkd(ns: &Netns, rules: &TempDir, runtime: &TempDir, source: &str) -> Daemon {
    let launch = Launch::new(ns.name(), "unix:path=/nonexistent/bus", rules.path(), runtime.path());
    Daemon::start(&Launch { args: &["--source", source], ..launch })
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
fn without_networkd_the_kernel_decides() {
    let host = Netns::new("flk");
    let peer = Netns::new("flkp");
    sh(
        None,
        &format!(
            "ip -n {p} link add bump0 type bridge && \
             ip link add uplink0 netns {h} type veth peer name peer0 netns {p} && \
             ip -n {p} addr add 10.99.254.254/16 dev peer0 && ip -n {p} link set peer0 up && \
             ip -n {h} addr add 10.99.1.1/16 dev uplink0 && ip -n {h} link set uplink0 up && \
             ip -n {h} route add default via 10.99.254.254",
            h = host.name(),
            p = peer.name()
        ),
    );
    let (rules, runtime) = (TempDir::new("rules"), TempDir::new("run"));
    rules.write("50-test.toml", FAN_250);
    let daemon = start_without_networkd(&host, &rules, &runtime, "auto");
    let fan = || {
        let out = String::from_utf8_lossy(&sh(Some(host.name()), "ip -o -4 addr show dev fan-250 up").stdout)
            .into_owned();
        out.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap_or("down").to_string()
    };
    let wait =
        |want: &str| wait_for(&format!("fan-250 {want}; log:\n{}", daemon.log()), SOON, || fan() == want);
    wait("250.1.1.1/8");
    daemon.wait_log("following the kernel's link state until networkd appears");
    sh(Some(peer.name()), "ip link set peer0 down");
    wait("down");
    sh(Some(peer.name()), "ip link set peer0 up");
    wait("250.1.1.1/8");
    // No route beyond the subnet: not routable.
    sh(Some(host.name()), "ip route del default");
    wait("down");
    sh(Some(host.name()), "ip route add default via 10.99.254.254");
    wait("250.1.1.1/8");
    // A new address (a DHCP renew, say) moves the fan.
    sh(Some(host.name()), "ip addr del 10.99.1.1/16 dev uplink0 && ip addr add 10.99.7.7/16 dev uplink0 && ip route add default via 10.99.254.254");
    wait("250.7.7.1/8");
    let status = String::from_utf8_lossy(
        &sh(Some(host.name()), &format!("{BIN} --runtime-dir {}/rt status", runtime.path().display())).stdout,
    )
    .into_owned();
    assert!(status.starts_with("source: daemon, following the kernel (no networkd)"), "{status}");
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn auto_switches_to_networkd_when_it_appears() {
    let host = Host::new("appear", "10.99.1.1/16", &[]);
    host.harness.run("kill-networkd", &[]);
    let daemon = host.start();
    daemon.wait_log("no networkd on the bus; following the kernel's link state");
    // The harness's uplink has no gateway: the kernel does not call it routable.
    daemon.wait_log("fan-250: down: uplink0 is carrier");
    assert_eq!(host.fan("fan-250"), "down", "its bridge, down, following the kernel too");
    host.harness.run("start-networkd", &[]);
    daemon.wait_log("networkd appeared; following it from now on");
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    host.harness.run("carrier", &["down"]);
    host.wait_fan("fan-250", "down", &daemon);
}

/// Every `STATUS=` line the daemon sent so far, read from a notify socket of the test's own.
fn status_lines(notify: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        lines.extend(text.lines().filter_map(|l| l.strip_prefix("STATUS=")).map(str::to_string));
    }
    lines
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn a_fan_that_cannot_be_built_is_reported_failed_retried_and_logged_once() {
    let host = Host::new("fail", "10.99.1.1/16", &[]);
    let notify_path = host.runtime.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    // Without CAP_BPF (or CAP_SYS_ADMIN) the program cannot load: the daemon's view of a
    // kernel that refuses the program, as Debian 12's did under the unit (issue 11).
    let notify_env = format!("NOTIFY_SOCKET={}", notify_path.display());
    let launch = Launch::new(host.ns(), host.harness.bus(), host.rules.path(), host.runtime.path());
    let mut daemon = Daemon::start(&Launch {
        inside: &["setpriv", "--inh-caps=-all", "--bounding-set=-bpf,-sys_admin,-perfmon"],
        env: &[&notify_env, "RUST_LOG=debug"],
        ..launch
    });
    let daemon_log = || daemon.log();
    let status =
        || host.sh(&format!("{BIN} --runtime-dir {} status", host.runtime.path().join("rt").display()));
    // Retried with backoff (1 s, then 2 s) with no event to wake it: attempt 3 within ~3 s.
    wait_for(&format!("a third attempt; log:\n{}", daemon_log()), SOON, || status().contains("(attempt 3)"));
    let text = status();
    assert!(text.contains("  failed    attach fan program"), "{text}");
    assert!(text.contains("EPERM"), "{text}");
    let json =
        host.sh(&format!("{BIN} --runtime-dir {} status --json", host.runtime.path().join("rt").display()));
    assert!(json.contains("\"error\": \"attach fan program"), "{json}");
    let lines = status_lines(&notify);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("1 fan(s): fan-250 not up: attach fan program"),
        "STATUS= says what failed: {lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("fan-250 up on")), "never announced as up: {lines:?}");
    let errors = daemon_log()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("fan-250: attach fan program"))
        .count();
    assert_eq!(errors, 1, "logged once per cause, not once per attempt:\n{}", daemon_log());
    // With the bus gone no reconcile can run: a due retry must wait for its next slot, not
    // wake the daemon at once, again and again (it did: a busy loop).
    host.harness.run("kill-bus", &[]);
    daemon.wait_log("lost the system bus");
    let wakes = || daemon_log().matches("event to last ack").count();
    let before = wakes();
    // Attempt 3 was just made; attempt 4 falls due 4 s after it, inside this window.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        wakes() - before <= 20,
        "a few wakes in 5 s (the retry timer, kernel events), not {}",
        wakes() - before
    );
    daemon.kill9();
    // networkd does not reconnect by itself: it restarts with the bus.
    host.harness.run("kill-networkd", &[]);
    host.harness.run("start-bus", &[]);
    host.harness.run("start-networkd", &[]);

    // The same host with the capabilities back: the fan comes up, the status says so.
    let daemon = host.start();
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    wait_for("the status to be clean", SOON, || !status().contains("failed"));
}
