//! A container host's churn (veths made, put on the fan bridge, deleted) against a real
//! networkd: it changes no fan, so it costs the daemon no reconcile and no netlink request,
//! and what the daemon keeps about networkd's links does not grow with it.

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

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn container_churn_costs_no_reconcile_and_no_memory() {
    let host = Host::new("churn", "10.99.1.1/16", &[]);
    let daemon = host.start();
    host.wait_fan("fan-250", "up 250.1.1.1/8", &daemon);
    let containers = Netns::new("flk");
    let n = 20;
    let links = || count(&counters(&host), "networkd_links");
    // The host's own links, once networkd has reported them all.
    wait_until(|| format!("networkd to settle; {}", counters(&host)), || links() >= 2);
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
    let veths: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "ip link add ck{i} netns {h} mtu 1450 type veth peer name eth{i} netns {c} mtu 1450 && \
                 ip -n {h} link set ck{i} master fan-250 up",
                h = host.ns(),
                c = containers.name()
            )
        })
        .collect();
    sh(None, &veths.join(" && "));
    wait_until(|| format!("{n} veths followed; {}", counters(&host)), || links() == base + n);
    let dels: Vec<String> = (0..n).map(|i| format!("ip link del ck{i}")).collect();
    host.sh(&dels.join(" && "));
    // networkd's `linger` and the kernel's RTM_DELLINK: the view of each veth goes.
    wait_until(|| format!("the views of the deleted veths to go; {}", counters(&host)), || links() == base);
    let after = counters(&host);
    for key in ["reconciles", "netlink_requests"] {
        assert_eq!(count(&after, key), count(&before, key), "{key}: {before} -> {after}");
    }
    assert_eq!(host.fan("fan-250"), "up 250.1.1.1/8");
}
