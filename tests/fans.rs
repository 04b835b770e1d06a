//! Several fans on one host, in each datapath: every fan's traffic stays in its fan (a
//! frame with one fan's VNI never reaches another fan's bridge, an unknown VNI reaches
//! none), all pairs reach each other within each fan, and a fan taken away disturbs none of
//! the others. The shared datapath is what kernels before 5.18 get.

use crate::cli::TempDir;
use crate::topology::{Background, Host, Mode, Netns, Switch};

const BIN: &str = env!("CARGO_BIN_EXE_fanlink");
const OCTETS: [u8; 3] = [250, 251, 252];

fn rules() -> TempDir {
    let dir = TempDir::new("rules");
    let text: String = OCTETS
        .iter()
        .map(|o| {
            format!("[[fan]]\noverlay = \"{o}.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\nmasquerade = false\n")
        })
        .collect();
    dir.write("50-test.toml", &text);
    dir
}

fn fanlink(mode: Mode, ns: &Netns, rules: &TempDir, args: &str) -> String {
    ns.run(&format!("{} {BIN} --rules-dir {} {args}", mode.env(), rules.path().display()))
}

fn ping(from: &Netns, to: &str) -> bool {
    from.sh(&format!("ping -c1 -W2 {to}")).status.success()
}

/// Hosts 1 and 2, each with `fans` of the three fans up and a container 2XX.N.N.10 on each.
struct Bed {
    /// containers[host][fan]
    containers: Vec<Vec<Netns>>,
    hosts: Vec<Host>,
    switch: Switch,
    rules: TempDir,
}

fn bed(mode: Mode, fans: usize) -> Bed {
    let switch = Switch::new();
    let rules = rules();
    let mut bed = Bed { containers: Vec::new(), hosts: Vec::new(), switch, rules };
    for n in 1..=2u8 {
        let host = bed.switch.host(&format!("10.99.{n}.{n}/16"));
        let mut cs = Vec::new();
        for o in &OCTETS[..fans] {
            fanlink(mode, &host.ns, &bed.rules, &format!("up fan-{o}"));
            cs.push(host.container(
                &format!("fan-{o}"),
                &format!("{o}.{n}.{n}.10/8"),
                &format!("{o}.{n}.{n}.1"),
                1450,
            ));
        }
        bed.hosts.push(host);
        bed.containers.push(cs);
    }
    bed
}

/// Every container pings its peer on the other host, both ways.
fn all_pairs(bed: &Bed, fans: &[usize]) {
    for &f in fans {
        let o = OCTETS[f];
        assert!(ping(&bed.containers[0][f], &format!("{o}.2.2.10")), "fan-{o}: host 1 -> host 2");
        assert!(ping(&bed.containers[1][f], &format!("{o}.1.1.10")), "fan-{o}: host 2 -> host 1");
    }
}

/// Captures on host 1's bridges while `traffic` runs; returns what each bridge saw.
fn on_bridges(bed: &Bed, fans: usize, traffic: impl FnOnce()) -> Vec<String> {
    let captures: Vec<Background> = OCTETS[..fans]
        .iter()
        .map(|o| Background::spawn(&bed.hosts[0].ns, &format!("tcpdump --immediate-mode -l -nn -i fan-{o}")))
        .collect();
    captures.iter().for_each(|c| c.wait_for_output(&["listening on"]));
    traffic();
    captures.into_iter().map(Background::finish).collect()
}

fn isolation(mode: Mode, fans: usize) {
    let bed = bed(mode, fans);
    let indexes: Vec<usize> = (0..fans).collect();
    let seen = on_bridges(&bed, fans, || all_pairs(&bed, &indexes));
    for (f, wire) in seen.iter().enumerate() {
        let own = OCTETS[f];
        assert!(wire.contains(&format!("{own}.2.2.10")), "fan-{own} saw its own traffic: {wire}");
        for other in OCTETS.iter().filter(|o| **o != own) {
            assert!(!wire.contains(&format!(" {other}.")), "fan-{own}'s bridge saw fan-{other}'s: {wire}");
        }
    }

    // A host without fanlink sends vxlan by hand: VNI 0x123456 (no fan's) and fan-251's VNI
    // carrying fan-250's addresses. The first reaches no bridge; the second only fan-251's.
    let intruder = bed.switch.host("10.99.9.9/16");
    intruder.ns.run(
        "ip link add vxa type vxlan id 1193046 remote 10.99.1.1 dstport 8472 dev uplink0 && \
         ip link add vxb type vxlan id 16449536 remote 10.99.1.1 dstport 8472 dev uplink0 && \
         ip addr add 250.1.1.77/24 dev vxa && ip addr add 250.1.1.78/24 dev vxb && \
         ip link set vxa up && ip link set vxb up",
    );
    let seen = on_bridges(&bed, fans, || {
        intruder.ns.sh("ping -c2 -W1 -I vxa 250.1.1.10; ping -c2 -W1 -I vxb 250.1.1.10");
    });
    for (f, wire) in seen.iter().enumerate() {
        assert!(!wire.contains("250.1.1.77"), "an unknown VNI reached fan-{}: {wire}", OCTETS[f]);
        let carried = wire.contains("250.1.1.78");
        assert_eq!(carried, OCTETS[f] == 251, "fan-251's VNI reached fan-{}: {wire}", OCTETS[f]);
    }
    if mode == Mode::Shared {
        let qdiscs = bed.hosts[0].ns.run("tc -s qdisc show dev fanlink-vx");
        // "qdisc clsact ffff: parent ffff:fff1 \n Sent B bytes P pkt (dropped N, ...": N > 0.
        let dropped = qdiscs
            .split("qdisc clsact")
            .nth(1)
            .and_then(|clsact| clsact.split("(dropped ").nth(1)?.split(',').next()?.parse::<u64>().ok());
        assert!(dropped.is_some_and(|n| n > 0), "the unknown VNI is dropped on the shared vxlan: {qdiscs}");
    }

    // The middle fan goes (under its containers: --force); the others carry on, and come
    // back after.
    fanlink(mode, &bed.hosts[0].ns, &bed.rules, "down fan-251 --force");
    let others: Vec<usize> = indexes.iter().copied().filter(|&f| f != 1).collect();
    all_pairs(&bed, &others);
    if mode == Mode::Shared {
        let filters = bed.hosts[0].ns.run("tc filter show dev fanlink-vx ingress");
        assert!(!filters.contains("fan-251") && filters.contains("fan-250"), "{filters}");
    }
    for f in ["fan-250", "fan-252"].iter().take(fans - 1) {
        fanlink(mode, &bed.hosts[0].ns, &bed.rules, &format!("down {f} --force"));
    }
    let left = bed.hosts[0].ns.run("ip -o link show");
    assert!(!left.contains("fan"), "down removes every fan and the shared vxlan: {left}");
}

crate::in_both_datapaths! {
    #[ignore = "needs root (network namespaces, netlink, BPF, tcpdump): run with --include-ignored"]
    fn two_fans_on_a_host_stay_apart(mode) {
        isolation(mode, 2);
    }
}

crate::in_both_datapaths! {
    #[ignore = "needs root (network namespaces, netlink, BPF, tcpdump): run with --include-ignored"]
    fn three_fans_on_a_host_stay_apart(mode) {
        isolation(mode, 3);
    }
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF): run with --include-ignored"]
fn a_host_that_changes_kernels_converges_to_the_other_datapath_and_back() {
    // A reboot into a kernel with (or without) vnifilter, as the probe would see it.
    let bed = bed(Mode::Vnifilter, 2);
    let host = &bed.hosts[0].ns;
    for mode in [Mode::Shared, Mode::Vnifilter, Mode::Shared] {
        for o in &OCTETS[..2] {
            fanlink(mode, host, &bed.rules, &format!("up fan-{o}"));
        }
        all_pairs(&bed, &[0, 1]);
        let links = host.run("ip -o -d link show");
        let shared =
            links.contains("fanlink-vx") && links.contains("fan-250-vp") && links.contains("fan-251-vp");
        let per_fan_vxlans = links.lines().filter(|l| l.contains("-vx") && l.contains("vnifilter")).count();
        match mode {
            Mode::Shared => assert!(shared && per_fan_vxlans == 0, "{mode:?}: {links}"),
            Mode::Vnifilter => {
                assert!(!links.contains("fanlink-vx") && !links.contains("-vp"), "{mode:?}: {links}");
                assert_eq!(per_fan_vxlans, 2, "{links}");
            }
        }
        let json = fanlink(mode, host, &bed.rules, "status --json");
        let want = format!("\"datapath\": \"{}\"", if mode == Mode::Shared { "shared" } else { "vnifilter" });
        assert_eq!(json.matches(&want).count(), 2, "{json}");
        assert!(!json.contains("half built"), "{json}");
    }
}

#[test]
#[ignore = "needs root (network namespaces, netlink, BPF, nft): run with --include-ignored"]
fn a_failed_up_leaves_nothing_behind() {
    // A process holds UDP 8472: the fan's vxlan cannot come up, and nothing in the link dump
    // says so beforehand (another vxlan on the port is refused before anything is built:
    // tests/fanctl.rs), so the up fails part-way and takes back what it made.
    let switch = Switch::new();
    let host = switch.host("10.99.1.1/16");
    let rules = rules();
    let listener = Background::spawn(
        &host.ns,
        "python3 -uc 'import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.bind((\"0.0.0.0\", 8472)); print(\"bound\"); time.sleep(60)'",
    );
    listener.wait_for_output(&["bound"]);
    let cmd = format!("{} {BIN} --rules-dir {} up fan-250", Mode::Vnifilter.env(), rules.path().display());
    let out = host.ns.sh(&cmd);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let links = host.ns.run("ip -o link show");
    assert!(!links.contains("fan-250"), "the failed up removed what it made: {links}");
    assert!(!host.ns.run("nft list tables").contains("fanlink"), "and its NAT table");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("set fan-250-vx up: fan-250-vx: set link: EADDRINUSE"),
        "failed part-way: {stderr}"
    );
}
