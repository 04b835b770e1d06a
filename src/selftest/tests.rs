use super::*;

fn map() -> FanMap {
    FanMap::new("250.0.0.0/8".parse().unwrap(), "10.99.0.0/16".parse().unwrap()).unwrap()
}

fn status(actual: &str, drift: &[&str], nat: bool) -> FanStatus {
    serde_json::from_value(serde_json::json!({
        "name": "fan-250", "overlay": "250.0.0.0/8", "underlay": "10.99.0.0/16", "vni": 16384000,
        "wanted": "up", "why": "uplink0 routable with 10.99.1.1", "actual": actual,
        "underlay_link": "uplink0", "underlay_address": "10.99.1.1", "slice": "250.1.1.0/24",
        "bridge_address": "250.1.1.1/8", "bridge": "fan-250", "vxlan": "fan-250-vx",
        "program": null, "program_id": null, "drops": null, "nat": nat,
        "drift": drift, "error": null
    }))
    .unwrap()
}

fn rule(masquerade: bool) -> Rule {
    let text = format!(
        "[[fan]]\nname = \"fan-250\"\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.99.0.0/16\"\nmasquerade = {masquerade}\n"
    );
    let (mut rules, errors) = config::parse_all(&[(PathBuf::from("t.toml"), text)]);
    assert!(errors.is_empty(), "{errors:?}");
    rules.remove(0)
}

fn outcomes(checks: &[Check]) -> Vec<(&str, Outcome)> {
    checks.iter().map(|c| (c.step.as_str(), c.outcome)).collect()
}

#[test]
fn a_fan_that_is_up_as_planned_passes_and_one_that_is_not_says_why() {
    let good = fan_checks(&status("up", &[], true));
    assert_eq!(outcomes(&good), [("fan", Outcome::Passed), ("devices", Outcome::Passed)]);
    assert!(good[0].detail.contains("up on uplink0 with 10.99.1.1"), "{good:?}");

    let mut down = status("down", &[], true);
    down.error = Some("attach fan program: EPERM (2 attempts)".into());
    let bad = fan_checks(&down);
    assert_eq!(bad[0].outcome, Outcome::Failed);
    assert!(bad[0].detail.contains("is down, wanted up") && bad[0].detail.contains("EPERM"), "{bad:?}");

    let drifted = fan_checks(&status("up", &["set fan-250 up"], true));
    assert_eq!(drifted[1].outcome, Outcome::Failed);
    assert!(drifted[1].detail.contains("set fan-250 up") && drifted[1].detail.contains("fanlink up fan-250"));
}

#[test]
fn the_underlay_must_carry_the_fan_mtu_plus_the_vxlan_header() {
    assert_eq!(mtu_check(Some(("uplink0", 1500)), Some(1450)).outcome, Outcome::Passed);
    let small = mtu_check(Some(("uplink0", 1400)), Some(1450));
    assert_eq!(small.outcome, Outcome::Failed);
    assert!(small.detail.contains("leaves room for a fan MTU of 1350"), "{}", small.detail);
    assert_eq!(mtu_check(Some(("uplink0", 1499)), Some(1450)).outcome, Outcome::Failed, "one byte short");
    assert_eq!(mtu_check(None, Some(1450)).outcome, Outcome::Skipped);
}

#[test]
fn forwarding_must_be_on_for_every_interface_named() {
    let on = |a, b| [("fan-250".to_string(), a), ("uplink0".to_string(), b)];
    assert_eq!(forwarding_check(&on(Some(true), Some(true))).outcome, Outcome::Passed);
    let off = forwarding_check(&on(Some(true), Some(false)));
    assert_eq!(off.outcome, Outcome::Failed);
    assert!(off.detail.contains("off for uplink0"), "{}", off.detail);
    assert_eq!(forwarding_check(&on(None, Some(true))).outcome, Outcome::Failed, "unreadable is not on");
    assert_eq!(forwarding_check(&[]).outcome, Outcome::Skipped);
}

#[test]
fn nat_is_checked_only_where_the_rule_asks_for_it() {
    assert_eq!(nat_check(&rule(true), &status("up", &[], true)).outcome, Outcome::Passed);
    assert_eq!(nat_check(&rule(true), &status("up", &[], false)).outcome, Outcome::Failed);
    let pending =
        status("up", &["write nat table for fan-250: masquerade 250.0.0.0/8 leaving the overlay"], true);
    assert_eq!(nat_check(&rule(true), &pending).outcome, Outcome::Failed, "a table not as planned");
    assert_eq!(nat_check(&rule(false), &status("up", &[], false)).outcome, Outcome::Skipped);
}

#[test]
fn peers_are_the_hosts_owning_complete_overlay_neighbours_of_the_bridge() {
    let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
               250.2.2.1        0x1         0x2         0a:00:00:00:00:01     *        fan-250\n\
               250.2.2.10       0x1         0x2         0a:00:00:00:00:02     *        fan-250\n\
               250.3.3.1        0x1         0x0         00:00:00:00:00:00     *        fan-250\n\
               250.1.1.10       0x1         0x2         0a:00:00:00:00:03     *        fan-250\n\
               250.4.4.1        0x1         0x2         0a:00:00:00:00:04     *        other\n\
               10.99.5.5        0x1         0x2         0a:00:00:00:00:05     *        fan-250\n\
               250.6.6.1        0x1         0x6         0a:00:00:00:00:06     *        fan-250\n";
    let own = Some("10.99.1.1".parse().unwrap());
    let peers = peers_from_arp(arp, "fan-250", &map(), own);
    // 250.2.2.x twice is one host; incomplete, own slice, other device, not overlay: out.
    assert_eq!(peers, ["10.99.2.2".parse::<Ipv4Addr>().unwrap(), "10.99.6.6".parse().unwrap()]);
}

#[test]
fn a_peer_step_tells_a_filtered_tunnel_from_a_dead_host_and_a_black_hole() {
    let peer: Ipv4Addr = "10.99.2.2".parse().unwrap();
    let bridge: Ipv4Addr = "250.2.2.1".parse().unwrap();
    let local = Some("10.99.1.1".parse().unwrap());
    let t = Duration::from_millis(2);
    let probe = |underlay, overlay, full| PeerProbe { peer, bridge, underlay, overlay, full };

    let good =
        peer_checks(&probe(Echo::Answered(t), Echo::Answered(t), Some(Echo::Answered(t))), local, 1450);
    assert_eq!(
        outcomes(&good),
        [("peer 10.99.2.2", Outcome::Passed), ("peer 10.99.2.2 full-size", Outcome::Passed)]
    );

    let tunnel = peer_checks(&probe(Echo::Answered(t), Echo::Silent, None), local, 1450);
    assert_eq!(tunnel[0].outcome, Outcome::Failed);
    assert!(tunnel[0].detail.contains("UDP 8472") && tunnel[0].detail.contains("answers on the underlay"));
    assert_eq!(tunnel[1].outcome, Outcome::Skipped);

    let dead = peer_checks(&probe(Echo::Silent, Echo::Silent, None), local, 1450);
    assert!(dead[0].detail.starts_with("neither 10.99.2.2 nor"), "{dead:?}");

    for (full, says) in [
        (Echo::Silent, "no answer while small ones do"),
        (Echo::TooBig, "EMSGSIZE"),
        (Echo::Unreachable(4), "needs fragmenting"),
    ] {
        let hole = peer_checks(&probe(Echo::Answered(t), Echo::Answered(t), Some(full)), local, 1450);
        assert_eq!(hole[1].outcome, Outcome::Failed);
        assert!(hole[1].detail.contains(says) && hole[1].detail.contains("less than 1500 bytes"), "{hole:?}");
    }
}
