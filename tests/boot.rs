//! A boot with container managers (issue 23): every configured fan's bridge exists from the
//! daemon's READY=1 on, whatever its underlay's state, so that Docker or Incus started after
//! fanlink attach to fanlink's bridge; a bridge of the fan's name that someone else made is
//! reported once, with what to do; Docker's burst of firewall changes at its start is not a
//! burst of log lines.

use crate::daemon::{Host, Launch, SOON};
use crate::launch::Daemon;
use crate::topology::wait_for;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");
/// A fan whose underlay no link of the host is in: its slice is not known.
const FAN_251_ELSEWHERE: &str = "[[fan]]\noverlay = \"251.0.0.0/8\"\nunderlay = \"10.98.0.0/16\"\n";

/// `fanlink run` on `host` with a notify socket; returns once it has sent READY=1.
fn start_until_ready(host: &Host) -> Daemon {
    let path = host.runtime.path().join(format!("notify-{}", crate::topology::unique("n")));
    let notify = UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let env = format!("NOTIFY_SOCKET={}", path.display());
    let launch = Launch::new(host.ns(), host.harness.bus(), host.rules.path(), host.runtime.path());
    let daemon = Daemon::start(&Launch { env: &[&env, host.mode.env(), "RUST_LOG=debug"], ..launch });
    let deadline = Instant::now() + SOON;
    let mut buf = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "no READY=1; log:\n{}", daemon.log());
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                return daemon;
            }
        }
    }
}

fn addresses(host: &Host, link: &str) -> String {
    host.sh(&format!("ip -o -4 addr show dev {link}"))
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn every_fans_bridge_exists_down_at_ready_whatever_its_underlay(mode) {
        let host = Host::new_in(mode, "boot", "10.99.3.3/16", &[]);
        host.rules.write("51-elsewhere.toml", FAN_251_ELSEWHERE);
        host.harness.run("carrier", &["down"]);
        // networkd must have said so before the daemon starts, or its first reconcile may
        // still see the uplink routable and bring fan-250 up (seen under load).
        let state = format!(
            "busctl --address={} get-property org.freedesktop.network1 {} org.freedesktop.network1.Link \
             OperationalState",
            host.harness.bus(),
            host.harness.var("HARNESS_UPLINK_OBJ")
        );
        wait_for("networkd to see the carrier gone", SOON, || host.sh(&state).contains("\"no-carrier\""));
        let daemon = start_until_ready(&host);
        // At READY=1, before the underlay is routable (fan-250) or even known (fan-251).
        for fan in ["fan-250", "fan-251"] {
            assert_eq!(host.fan(fan), "down", "{fan} at READY=1; log:\n{}", daemon.log());
            assert_eq!(addresses(&host, fan), "", "{fan}: no address while down");
            let alias = host.sh(&format!("ip -d link show dev {fan}"));
            assert!(alias.contains(&format!("alias fanlink:{fan}")), "{alias}");
            assert!(alias.contains("bridge"), "{alias}");
        }
        // A container manager's port on the down bridge (Docker, Incus) stays through the up.
        let _container = host.container();
        host.harness.run("carrier", &["up"]);
        host.wait_fan("fan-250", "up 250.3.3.1/8", &daemon);
        assert!(host.sh("ip -o link show dev cv0").contains("master fan-250"), "attached");
        wait_for("host -> container", SOON, || host.sh("ping -c1 -W1 250.1.1.10").contains(" 0% packet loss"));
        assert_eq!(host.fan("fan-251"), "down", "its underlay is still not here");
        let rt = host.runtime.path().join("rt");
        let status = host.sh(&format!("{BIN} --runtime-dir {} status", rt.display()));
        let fan_251 = status.split("\nfan-251: ").nth(1).unwrap_or_default();
        assert!(fan_251.contains(", actually down\n"), "{status}");
        assert!(fan_251.contains("  drift     none\n"), "a bridge alone is what a down fan has: {status}");
        assert!(!daemon.log().contains("ERROR"), "{}", daemon.log());
        // `fanlink down` removes a down fan's bridge as it removes everything of a fan.
        drop(daemon);
        let down = host.sh(&format!("{BIN} --rules-dir {} down fan-251", host.rules.path().display()));
        assert!(down.contains("fan-251: delete link fan-251"), "{down}");
        assert_eq!(host.fan("fan-251"), "absent");
    }
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn a_bridge_someone_else_made_is_reported_once_with_what_to_do_and_the_fan_follows_its_removal() {
    let host = Host::new("foreign", "10.99.1.1/16", &[]);
    // What Docker leaves when it restores a network named after the fan first: a plain
    // bridge of that name, its address, a container's port.
    host.sh("ip link add fan-250 type bridge && ip addr add 250.1.1.1/8 dev fan-250 && \
         ip link add dk0 type veth peer name dk1 && ip link set dk0 master fan-250 && \
         ip link set fan-250 up");
    let daemon = host.start();
    let rt = host.runtime.path().join("rt");
    let status = || host.sh(&format!("{BIN} --runtime-dir {} status", rt.display()));
    wait_for(&format!("a third attempt; log:\n{}", daemon.log()), SOON, || status().contains("(attempt 3)"));
    let text = status();
    assert!(
        text.contains("  failed    plan: a bridge named fan-250 exists that fanlink did not make"),
        "{text}"
    );
    let log = daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("[ERROR")).collect();
    assert_eq!(errors.len(), 1, "once per cause:\n{log}");
    assert!(errors[0].contains("delete it with `ip link del fan-250`"), "{}", errors[0]);
    assert!(errors[0].contains("systemctl restart docker"), "{}", errors[0]);
    assert!(host.sh("ip -o link show dev dk0").contains("master fan-250"), "not touched");
    assert_eq!(addresses(&host, "fan-250").split_whitespace().nth(3), Some("250.1.1.1/8"));
    // Its name freed, the fan is built at once (the deletion is an event: no backoff wait).
    host.sh("ip link del fan-250");
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    wait_for("the status to be clean", SOON, || !status().contains("failed"));
}

#[test]
#[ignore = "needs root, systemd-networkd, dbus-daemon and iptables-nft: run with --include-ignored"]
fn a_burst_of_firewall_changes_logs_the_accept_rules_only_when_they_change() {
    let host = Host::new("fwburst", "10.99.1.1/16", &[]);
    // Docker's firewall: FORWARD DROP and its DOCKER-USER chain (iptables-nft).
    host.sh("iptables-nft -w -P FORWARD DROP && iptables-nft -w -N DOCKER-USER && \
         iptables-nft -w -A DOCKER-USER -j RETURN && iptables-nft -w -I FORWARD -j DOCKER-USER");
    let daemon = host.start();
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    let op = "fan-250: accept forwarding for fan-250 in the firewalls that drop it";
    let count =
        |prefix: &str| daemon.log().lines().filter(|l| l.starts_with(prefix) && l.contains(op)).count();
    wait_for("the accept rules", SOON, || {
        host.sh("iptables-nft -w -S DOCKER-USER").contains("fanlink:fan-250")
    });
    assert_eq!(count("[INFO"), 1, "made with the bridge:\n{}", daemon.log());
    // Docker at start: chains and rules rewritten one command at a time; once, in the middle,
    // DOCKER-USER flushed, which takes fanlink's rules away: the one change to make.
    for i in 0..24 {
        host.sh(&format!("iptables-nft -w -N DOCKER-X{i} && iptables-nft -w -A FORWARD -j DOCKER-X{i}"));
        if i == 12 {
            host.sh("iptables-nft -w -F DOCKER-USER && iptables-nft -w -A DOCKER-USER -j RETURN");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_for("the accept rules back", SOON, || {
        host.sh("iptables-nft -w -S DOCKER-USER").contains("fanlink:fan-250")
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = daemon.log();
    let checks = count("[INFO") + count("[DEBUG");
    eprintln!("[boot] {checks} re-checks of the accept rules, {} logged at info", count("[INFO"));
    assert!(checks >= 5, "the burst re-ensured the rules many times:\n{log}");
    assert_eq!(count("[INFO"), 2, "logged when made and when put back, not per re-check:\n{log}");
    assert_eq!(log.matches("insert accept rule into filter DOCKER-USER for fan-250").count(), 4, "{log}");
}
