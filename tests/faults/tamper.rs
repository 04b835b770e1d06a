//! Faults from outside the daemon's inputs: the fan's objects deleted by hand, rule files
//! rewritten under a SIGHUP storm, and a runtime directory that cannot be written.

use super::{assert_one_of_everything, wait_for, Host, UP};
use crate::topology::Mode;
use std::time::Duration;

/// Deletes one of the fan's objects by hand and waits for the daemon to restore it by
/// itself: the op that made it (`remade`) appears in the log a second time. Links and
/// addresses are seen on rtnetlink, filters on its tc group, NAT tables on nftables' group.
fn deleted_by_hand_is_restored(mode: Mode, what: &str, delete: &str, remade: &str) {
    let host = Host::new_in(mode, &format!("del{}", &what[..2]));
    let daemon = host.start();
    host.wait_fan(UP, &daemon);
    let _container = host.container();
    assert_eq!(daemon.log().matches(remade).count(), 1, "made once: {remade}");
    let delete = delete.replace("TABLE", host.sh("nft list tables | grep fanlink").trim());
    crate::topology::run(Some(host.ns()), &delete);
    wait_for(
        || format!("{what} deleted by hand to be restored; log:\n{}", daemon.log()),
        || daemon.log().matches(remade).count() >= 2,
    );
    host.wait_fan(UP, &daemon);
    assert_one_of_everything(&host, true, &format!("{what} restored"));
    if what == "bridge" {
        // The kernel frees a deleted bridge's ports; fanlink does not know whose they were.
        let attached = host.sh("ip -o link show dev cv0").contains("master fan-250");
        eprintln!("[faults] a container port of the deleted bridge is attached again: {attached}");
    } else {
        assert!(
            host.sh("ip -o link show dev cv0").contains("master fan-250"),
            "the container stays attached"
        );
        assert!(host.sh("ping -c1 -W2 250.1.1.10").contains(" 0% packet loss"), "host -> container");
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn a_bridge_deleted_by_hand_is_restored(mode) {
        deleted_by_hand_is_restored(mode, "bridge", "ip link del fan-250", "create bridge fan-250");
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn a_vxlan_deleted_by_hand_is_restored(mode) {
        let remade = match mode {
            Mode::Vnifilter => "create vxlan fan-250-vx",
            Mode::Shared => "create veth fan-250-vx",
        };
        deleted_by_hand_is_restored(mode, "vxlan", "ip link del fan-250-vx", remade);
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn a_bpf_filter_deleted_by_hand_is_restored(mode) {
        deleted_by_hand_is_restored(mode, "filter", "tc filter del dev fan-250-vx egress", "attach fan program");
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
    fn an_nft_table_deleted_by_hand_is_restored(mode) {
        deleted_by_hand_is_restored(mode, "nft table", "nft delete TABLE", "write nat table");
    }
}

/// The forwarding of the fan's bridge and of its underlay link is watched through the
/// kernel's netconf events (nothing reads the files per reconcile): turned off by hand, one
/// link's or every link's at once (`net.ipv4.ip_forward` from 1 to 0), under a fan that is
/// up, it is turned back on, on those two links only; `ip_forward` stays as it was.
#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn forwarding_turned_off_by_hand_is_turned_back_on() {
    let host = Host::new("fwd");
    let get = |key: &str| host.sh(&format!("sysctl -n net.ipv4.{key}")).trim().to_string();
    let on = || [get("conf.fan-250.forwarding"), get("conf.uplink0.forwarding"), get("ip_forward")];
    let ons = ["1", "1", "0"].map(String::from);
    // A new namespace may inherit forwarding on from the host: start from off.
    host.sh("sysctl -qw net.ipv4.ip_forward=0");
    let daemon = host.start();
    let enables =
        |link: &str| daemon.log().matches(&format!("set net.ipv4.conf.{link}.forwarding = 1")).count();
    host.wait_fan(UP, &daemon);
    assert_eq!(on(), ons, "the bridge and the underlay, not ip_forward");
    assert!(!daemon.log().contains("ip_forward"), "{}", daemon.log());
    assert_eq!((enables("fan-250"), enables("uplink0")), (1, 1), "{}", daemon.log());
    host.sh("sysctl -qw net.ipv4.conf.uplink0.forwarding=0");
    wait_for(
        || format!("the underlay's forwarding to be turned back on; log:\n{}", daemon.log()),
        || enables("uplink0") == 2 && on() == ons,
    );
    // Someone's ip_forward on, then off (a sysctl.conf applied again): every link's goes off.
    host.sh("sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv4.ip_forward=0");
    wait_for(
        || format!("both to be turned back on; log:\n{}", daemon.log()),
        || enables("uplink0") == 3 && enables("fan-250") == 2 && on() == ons,
    );
    assert_one_of_everything(&host, true, "forwarding restored");
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn the_shared_vxlan_deleted_by_hand_is_restored() {
    deleted_by_hand_is_restored(
        Mode::Shared,
        "shared vxlan",
        "ip link del fanlink-vx",
        "create vxlan fanlink-vx",
    );
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn a_steering_filter_deleted_by_hand_is_restored() {
    let delete = "tc filter del dev fanlink-vx ingress pref 1 handle 0xfa0000 bpf";
    deleted_by_hand_is_restored(Mode::Shared, "steering", delete, "steer vni 16384000");
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn the_peer_of_a_fans_veth_deleted_by_hand_is_restored() {
    deleted_by_hand_is_restored(Mode::Shared, "peer", "ip link del fan-250-vp", "create veth fan-250-vx");
}

#[test]
#[ignore = "needs root, systemd-networkd and dbus-daemon: run with --include-ignored"]
fn a_sighup_storm_while_rules_are_rewritten_never_takes_a_fan_down_and_ends_in_the_final_rules() {
    // The shared datapath: fan-251 comes and goes beside fan-250 on one shared vxlan.
    let host = Host::new_in(Mode::Shared, "hup");
    let mut daemon = host.start();
    host.wait_fan(UP, &daemon);
    let second =
        |mtu: u32| format!("[[fan]]\noverlay = \"251.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\nmtu = {mtu}\n");
    let path = host.rules.path().join("60-second.toml");
    std::fs::write(&path, second(1400)).unwrap();
    daemon.signal_hup();
    wait_for(|| "fan-251".into(), || host.sh("ip -o link show dev fan-251").contains("mtu 1400"));
    // A fan deleted and made again during the storm would pass a look at the end and need
    // not say so in the log: its devices' indexes would change.
    let fan_250 = || {
        let links = host.sh("ip -o link show | awk -F': ' '{ print $1 \": \" $2 }' | cut -d@ -f1");
        let ours = ["fan-250", "fan-250-vx", "fan-250-vp", "fanlink-vx"];
        links
            .lines()
            .filter(|l| ours.iter().any(|o| l.ends_with(&format!(": {o}"))))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let before = fan_250();
    assert_eq!(
        before.split(", ").count(),
        4,
        "fan-250's bridge, its veth pair and the shared vxlan: {before}"
    );
    let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut atomic_log = String::new();
    let mut in_place_log = String::new();
    let hups = std::thread::scope(|s| {
        let storm = s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("the daemon is alive");
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        // First atomically (a complete file renamed over the old one), then in place in
        // pieces (truncate, a prefix, the rest), as `>` in a shell or many editors write.
        for round in 0..200u32 {
            let text = second(1300 + (round % 7) * 10);
            if round < 100 {
                let tmp = host.rules.path().join(".60-second.toml.tmp");
                std::fs::write(&tmp, &text).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            } else {
                use std::io::Write;
                let mut f = std::fs::File::create(&path).unwrap();
                // Every other round, the prefix that is valid rules (no `mtu` yet).
                let cut = match round % 2 {
                    0 => text.find("mtu").unwrap(),
                    _ => 12 + round as usize % (text.len() - 12),
                };
                f.write_all(&text.as_bytes()[..cut]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
                f.write_all(&text.as_bytes()[cut..]).unwrap();
            }
            if round == 99 {
                daemon.signal_hup();
                host.settle();
                atomic_log = daemon.log();
            }
            // Now and then the file rests, complete, long enough for a reload to take it.
            let rest = if round > 100 && round % 10 == 0 { 300 } else { 3 };
            std::thread::sleep(Duration::from_millis(rest));
        }
        in_place_log = daemon.log()[atomic_log.len()..].to_string();
        std::fs::write(&path, second(1280)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        storm.join().unwrap()
    });
    daemon.signal_hup();
    wait_for(
        || format!("the final rules; log:\n{}", daemon.log()),
        || host.sh("ip -o link show dev fan-251").contains("mtu 1280"),
    );
    host.settle();
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon is still running");
    let log = daemon.log();
    let refused = log.matches("reload refused").count();
    let removed = log.matches("fan-251: delete link fan-251-vx").count();
    let being_written = log.matches("(is it being written?)").count();
    // Every MTU fan-251 was given is one a complete file held: a reload that took a prefix
    // without the `mtu` line gave it the default (the underlay's minus the vxlan's 50 bytes).
    let written: Vec<String> =
        (0..7).map(|i| (1300 + i * 10).to_string()).chain(["1280".into(), "1400".into()]).collect();
    let mtus = |log: &str| -> Vec<String> {
        log.lines().filter_map(|l| l.split("set fan-251 mtu ").nth(1)).map(String::from).collect()
    };
    eprintln!(
        "[faults] {hups} SIGHUPs during 200 rewrites; {refused} reloads refused ({being_written} files caught \
         mid-write); fan-251 removed {removed} time(s), given MTUs {:?}",
        mtus(&log)
    );
    for line in log.lines() {
        assert!(!line.contains("panicked"), "{line}");
        assert!(
            !line.contains("set fan-250 down") && !line.contains("delete link fan-250"),
            "{line}; log:\n{log}"
        );
        assert!(!line.contains("set fan-251 down"), "{line}; log:\n{log}");
    }
    assert_eq!(fan_250(), before, "fan-250's devices are the same ones after the storm; log:\n{log}");
    assert!(!atomic_log.contains("delete link"), "atomic rewrites never remove a fan; log:\n{atomic_log}");
    // A reload never acts on a file caught mid-write: not when it is empty (then it is an
    // error anyway), nor when it is a valid prefix.
    assert_eq!(removed, 0, "in-place rewrites never remove fan-251; log:\n{log}");
    for mtu in mtus(&log) {
        assert!(written.contains(&mtu), "fan-251 given MTU {mtu}, which no complete file held; log:\n{log}");
    }
    // ... and still takes the file when it rests between rewrites.
    assert!(!mtus(&in_place_log).is_empty(), "no reload took a rewritten file; log:\n{in_place_log}");
    assert_eq!(host.fan(), format!("{UP} [2, 2, 2, 2]"));
}

/// Starts the daemon with its runtime directory on a tmpfs mounted with `options` in a
/// private mount namespace (so nothing else sees it).
fn start_on_tmpfs(host: &Host, options: &str, prepare: &str) -> super::Daemon {
    let mnt = host.runtime.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o {options} fanlink-fault {m} && {prepare} exec \"$@\"",
        m = mnt.display(),
        prepare = prepare.replace("MNT", &mnt.display().to_string())
    );
    let wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c", &script, "sh"];
    host.start_wrapped(&wrapper, &mnt.join("rt"))
}

#[test]
#[ignore = "needs root, systemd-networkd, dbus-daemon and mount namespaces: run with --include-ignored"]
fn a_read_only_or_full_runtime_dir_is_a_clear_error_and_the_fans_keep_running() {
    let host = Host::new("rodir");
    let mut daemon = host.start();
    host.wait_fan(UP, &daemon);
    daemon.kill9();
    let rt = host.runtime.path().join("mnt/rt");

    // Without its control socket the daemon says why and goes on following networkd: only
    // `fanlink status` falls back to reading the kernel.
    for (options, prepare, why) in [
        ("ro,size=64k", "", "Read-only file system"),
        ("nr_inodes=2,size=64k", "mkdir -m 700 MNT/rt &&", "No space left on device"),
    ] {
        let mut daemon = start_on_tmpfs(&host, options, prepare);
        daemon.wait_log(&format!("control socket {}/control: {why}", rt.display()));
        daemon.wait_log("running without it (status reads the kernel)");
        host.wait_fan(UP, &daemon);
        host.harness.run("carrier", &["down"]);
        host.wait_fan("down", &daemon);
        host.harness.run("carrier", &["up"]);
        host.wait_fan(UP, &daemon);
        daemon.kill9();
    }
}
