//! A fan made by hand, as the README's "Two hosts by hand" does: `fanlink up --overlay
//! --underlay` in a host namespace, then what `-v` prints and what `status` says of it.

use crate::topology::Switch;

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF): run with --include-ignored"]
fn a_fan_made_by_hand_prints_each_op_once_and_its_status_says_what_the_kernel_has() {
    let switch = Switch::new();
    let host = switch.host("10.99.1.1/16");
    let rules = crate::cli::TempDir::new("byhand");
    let fanlink = |args: &str| host.ns.sh(&format!("{BIN} --rules-dir {} {args}", rules.path().display()));

    let out = fanlink("-v up --overlay 250.0.0.0/8 --underlay 10.99.0.0/16 --name lab0");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let ops: Vec<&str> = stdout.lines().collect();
    assert!(ops.iter().any(|l| l.starts_with("lab0: attach fan program to lab0-vx egress")), "{stdout}");
    for op in &ops {
        let printed = stdout.matches(op).count() + stderr.matches(op).count();
        assert_eq!(printed, 1, "`{op}` printed {printed} times:\n{stdout}---\n{stderr}");
    }

    let out = fanlink("status --json");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let fan = &status["fans"][0];
    assert_eq!(fan["name"], "lab0", "{status:#}");
    assert_eq!(fan["overlay"], "250.0.0.0/8", "{status:#}");
    assert_eq!(fan["underlay"], "10.99.0.0/16", "{status:#}");
    assert_eq!(fan["vni"], 16_384_000, "{status:#}");
    assert_eq!(fan["underlay_address"], "10.99.1.1", "{status:#}");
    assert_eq!(fan["slice"], "250.1.1.0/24", "{status:#}");
    assert_eq!(fan["bridge_address"], "250.1.1.1/8", "{status:#}");
    assert_eq!(fan["actual"], "up", "{status:#}");

    // The text form shows the same.
    let text = String::from_utf8_lossy(&fanlink("status").stdout).into_owned();
    assert!(text.contains("  fan       250.0.0.0/8 over 10.99.0.0/16, vni 16384000\n"), "{text}");
    assert!(text.contains("  slice     250.1.1.0/24, bridge 250.1.1.1/8\n"), "{text}");
}
