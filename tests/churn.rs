//! A container host's churn (veths made, put on the fan bridge, deleted) against a real
//! networkd: it changes no fan, so it costs the daemon no reconcile, no netlink request and
//! no call to networkd, and what the daemon keeps about networkd's links does not grow with
//! it; and a new link that becomes an underlay later is still followed.

use crate::daemon::{wait_until, Host};
use crate::topology::{sh, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");

/// The daemon's counters (`status --json`, "daemon").
fn counters(host: &Host) -> serde_json::Value {
    let out =
        host.sh(&format!("{BIN} --runtime-dir {} status --json", host.runtime.path().join("rt").display()));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    status["daemon"].clone()
}

fn count(c: &serde_json::Value, key: &str) -> u64 {
    c[key].as_u64().unwrap_or_else(|| panic!("no {key} in {c}"))
}

/// `n` veth pairs, `ckFROM`.. on the host, their peers in `containers`, on `bridge` if any.
fn veths(host: &Host, containers: &Netns, from: usize, n: usize, bridge: Option<&str>) {
    let add: Vec<String> = (from..from + n)
        .map(|i| {
            let master = bridge.map(|b| format!("master {b} ")).unwrap_or_default();
            format!(
                "ip link add ck{i} netns {h} mtu 1450 type veth peer name eth{i} netns {c} mtu 1450 && \
                 ip -n {h} link set ck{i} {master}up",
                h = host.ns(),
                c = containers.name()
            )
        })
        .collect();
    sh(None, &add.join(" && "));
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn container_churn_costs_no_reconcile_and_no_memory() {
    let host = Host::new("churn", "10.99.1.1/16", &[]);
    let containers = Netns::new("flk");
    let n = 20;
    // Containers from before the daemon started: networkd's snapshot has them.
    veths(&host, &containers, 0, n, None);
    let daemon = host.start();
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    let links = || count(&counters(&host), "networkd_links");
    wait_until(|| format!("the snapshot; {}", counters(&host)), || links() >= n as u64 + 2);
    // The echo of the fan's creation may still cost a reconcile: wait for it to pass.
    let reconciles = || count(&counters(&host), "reconciles");
    let mut last = reconciles();
    wait_until(
        || "the reconciles to stop".into(),
        || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            std::mem::replace(&mut last, reconciles()) == last
        },
    );
    let base = links();
    let before = counters(&host);
    // New containers on the fan: networkd reports each veth, and none can be an underlay.
    veths(&host, &containers, n, n, Some("fan-250"));
    host.harness.run("networkctl", &["list"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(links(), base, "no view kept of a new veth: {}", counters(&host));
    // All of them go: networkd's `linger` and the kernel's RTM_DELLINK; the views of the
    // old ones go too.
    let dels: Vec<String> = (0..2 * n).map(|i| format!("ip link del ck{i}")).collect();
    host.sh(&dels.join(" && "));
    wait_until(
        || format!("the views of the deleted veths to go; {}", counters(&host)),
        || links() == base - n as u64,
    );
    let after = counters(&host);
    // Not even a call to networkd: a veth without an underlay address is no underlay.
    for key in ["reconciles", "netlink_requests", "bus_calls"] {
        assert_eq!(count(&after, key), count(&before, key), "{key}: {before} -> {after}");
    }
    assert_eq!(host.fan("fan-250"), "up 250.1.1.1/8");
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn a_link_that_gets_an_underlay_address_after_networkd_reported_it_carries_the_fan() {
    let host = Host::new("lateul", "10.99.1.1/16", &[]);
    host.rules.write("50-test.toml", "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.98.0.0/16\"\n");
    let daemon = host.start();
    daemon.wait_log("running: 1 fan(s)");
    // A new link, reported by networkd while it has no address in the underlay: its view is
    // not asked for then (a container's veth looks the same).
    let far = Netns::new("flu");
    sh(
        None,
        &format!(
            "ip link add nl0 netns {h} type veth peer name nlp netns {f} && ip -n {f} link set nlp up && \
             ip -n {h} link set nl0 up",
            h = host.ns(),
            f = far.name()
        ),
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let fan = host.fan("fan-250");
    assert!(!fan.starts_with("up"), "no underlay yet, and the fan is {fan}");
    // networkd configures it into the underlay: its view is asked for once it can carry the fan.
    let dir = host.harness.var("HARNESS_DIR");
    let network = format!("{dir}/network/20-nl0.network");
    std::fs::write(
        &network,
        "[Match]\nName=nl0\n\n[Network]\nAddress=10.98.1.1/16\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nLLDP=no\n",
    )
    .unwrap();
    sh(None, &format!("chmod 644 {network}"));
    host.harness.run("networkctl", &["reload"]);
    host.harness.run("networkctl", &["reconfigure", "nl0"]);
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
}
