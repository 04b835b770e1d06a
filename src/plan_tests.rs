//! Table-driven tests of `plan`: fixture rules against synthetic observed states.

use super::*;
use crate::config::parse_all;
use crate::model::{Observed, Underlay};
use std::path::PathBuf;

fn rule(extra: &str) -> Rule {
    let text = format!("[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n{extra}");
    let (mut rules, errors) = parse_all(&[(PathBuf::from("t.toml"), text)]);
    assert!(errors.is_empty(), "{errors:?}");
    rules.remove(0)
}

fn up_at(address: &str) -> Want {
    Want::Up(Underlay { link: "eth0".parse().unwrap(), address: address.parse().unwrap(), mtu: 1450 })
}

fn lines(result: &Result<Vec<Op>, String>) -> Vec<String> {
    result.as_ref().unwrap().iter().map(ToString::to_string).collect()
}

/// What the kernel looks like after `up` at 10.0.3.4 has been applied.
fn built(rule: &Rule) -> ObservedFan {
    let alias = Some(owner_alias(&rule.name, false));
    ObservedFan {
        bridge: Some(Device {
            index: 5,
            up: true,
            mtu: 1450,
            alias: alias.clone(),
            mac: Some(bridge_mac("10.0.3.4".parse().unwrap())),
            kind: Some("bridge".into()),
            ..Default::default()
        }),
        vxlan: Some(Device {
            index: 6,
            up: true,
            mtu: 1450,
            master: Some(5),
            alias,
            kind: Some("vxlan".into()),
            fan_vxlan: true,
            ..Default::default()
        }),
        bridge_addresses: vec!["250.3.4.1/8".parse().unwrap()],
        vnis: vec![16384000],
        program: Some("fanlink 250.0.0.0/8 10.0.0.0/16 10.0.3.4".into()),
        program_id: Some(7),
        nat: Some(nft::params_comment(rule.map.overlay(), &rule.name)),
        ..Default::default()
    }
}

/// `seen` of `fan`, whose bridge and underlay link forward already.
fn observed(fan: &Rule, seen: ObservedFan) -> Observed {
    let forwarding = [fan.name.clone(), "eth0".parse().unwrap()].into();
    Observed { fans: [(fan.name.clone(), seen)].into(), forwarding, ..Default::default() }
}

#[test]
fn another_vxlan_on_the_port_refuses_a_new_fan_and_leaves_a_running_one() {
    let r = rule("");
    let holders = vec!["lxdfan0-fan".to_string(), "flannel.1".to_string()];
    let new = Observed { port_holders: holders.clone(), ..observed(&r, ObservedFan::default()) };
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &new);
    assert_eq!(plans[0].result, Err(crate::port::refusal(&holders)));
    let running = Observed { port_holders: holders, ..observed(&r, built(&r)) };
    assert_eq!(plan(&[(r.clone(), up_at("10.0.3.4"))], &running)[0].result, Ok(vec![]));
}

#[test]
fn first_up_builds_everything_and_links_come_up_last() {
    let r = rule("");
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &Observed::default());
    assert_eq!(
        lines(&plans[0].result),
        [
            "create bridge fan-250 mtu 1450 address 02:fa:0a:00:03:04 alias fanlink:fan-250",
            "create vxlan fan-250-vx external vnifilter nolearning dstport 8472 mtu 1450 master fan-250 alias fanlink:fan-250",
            "add vni 16384000 to fan-250-vx",
            "add address 250.3.4.1/8 to fan-250",
            "attach fan program to fan-250-vx egress (fanlink 250.0.0.0/8 10.0.0.0/16 10.0.3.4)",
            "write nat table for fan-250: masquerade 250.0.0.0/8 leaving the overlay",
            "accept forwarding for fan-250 in the firewalls that drop it",
            "set net.ipv4.conf.fan-250.forwarding = 1",
            "set net.ipv4.conf.eth0.forwarding = 1",
            "set fan-250-vx up",
            "set fan-250 up",
        ]
    );
}

#[test]
fn a_built_fan_needs_nothing() {
    let r = rule("");
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, built(&r)));
    assert_eq!(plans[0].result, Ok(vec![]));
}

#[test]
fn down_keeps_the_devices() {
    let r = rule("");
    let plans = plan(&[(r.clone(), Want::Down)], &observed(&r, built(&r)));
    assert_eq!(lines(&plans[0].result), ["set fan-250 down"]);
}

/// What a down fan that was never up has: its bridge, down (a new link is), no address, no
/// port, so that a container manager started later attaches to it.
fn bridge_only(r: &Rule) -> ObservedFan {
    ObservedFan {
        bridge: Some(Device {
            index: 5,
            mtu: 1450,
            alias: Some(owner_alias(&r.name, false)),
            mac: Some(bridge_mac(Ipv4Addr::UNSPECIFIED)),
            kind: Some("bridge".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_down_fan_never_up_gets_its_bridge_down_and_without_address() {
    let r = rule("");
    let plans = plan(&[(r.clone(), Want::Down)], &Observed::default());
    assert_eq!(
        lines(&plans[0].result),
        [
            "create bridge fan-250 mtu 1450 address 02:fa:00:00:00:00 alias fanlink:fan-250",
            "accept forwarding for fan-250 in the firewalls that drop it",
        ]
    );
    let r1400 = rule("mtu = 1400\n");
    let ops = lines(&plan(&[(r1400, Want::Down)], &Observed::default())[0].result);
    assert!(ops[0].starts_with("create bridge fan-250 mtu 1400 "), "{ops:?}");
    // Made, it stays as it is; nothing forwards on a down fan's account.
    let plans = plan(&[(r.clone(), Want::Down)], &observed(&r, bridge_only(&r)));
    assert_eq!(plans[0].result, Ok(vec![]));
}

#[test]
fn a_disabled_fan_gets_no_bridge_and_a_running_one_only_goes_down() {
    let r = rule("enable = false\n");
    assert_eq!(plan(&[(r.clone(), Want::Down)], &Observed::default())[0].result, Ok(vec![]));
    let ops = lines(&plan(&[(r.clone(), Want::Down)], &observed(&r, built(&r)))[0].result);
    assert_eq!(ops, ["set fan-250 down"]);
}

#[test]
fn up_from_a_bridge_made_down_builds_the_rest_around_it() {
    let r = rule("");
    let mut seen = observed(&r, bridge_only(&r));
    seen.forwarding.clear();
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &seen);
    assert_eq!(
        lines(&plans[0].result),
        [
            "set fan-250 address 02:fa:0a:00:03:04",
            "create vxlan fan-250-vx external vnifilter nolearning dstport 8472 mtu 1450 master fan-250 alias fanlink:fan-250",
            "add vni 16384000 to fan-250-vx",
            "add address 250.3.4.1/8 to fan-250",
            "attach fan program to fan-250-vx egress (fanlink 250.0.0.0/8 10.0.0.0/16 10.0.3.4)",
            "write nat table for fan-250: masquerade 250.0.0.0/8 leaving the overlay",
            "set net.ipv4.conf.fan-250.forwarding = 1",
            "set net.ipv4.conf.eth0.forwarding = 1",
            "set fan-250-vx up",
            "set fan-250 up",
        ]
    );
}

#[test]
fn forwarding_is_turned_on_per_link_once_and_only_where_off() {
    let a = rule("");
    let text = "[[fan]]\noverlay = \"251.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n".to_string();
    let b = parse_all(&[(PathBuf::from("t.toml"), text)]).0.remove(0);
    let enables = |plan: &FanPlan| -> Vec<String> {
        lines(&plan.result).into_iter().filter(|l| l.contains("forwarding = 1")).collect()
    };
    let targets = [(a.clone(), up_at("10.0.3.4")), (b.clone(), up_at("10.0.3.4"))];
    let plans = plan(&targets, &Observed::default());
    assert_eq!(
        enables(&plans[0]),
        ["set net.ipv4.conf.fan-250.forwarding = 1", "set net.ipv4.conf.eth0.forwarding = 1"]
    );
    assert_eq!(enables(&plans[1]), ["set net.ipv4.conf.fan-251.forwarding = 1"], "the underlay once");
    // Someone turned the underlay's off under a built fan: that one link, nothing else.
    let mut seen = observed(&a, built(&a));
    seen.forwarding.remove(&"eth0".parse::<IfName>().unwrap());
    let plans = plan(&[(a.clone(), up_at("10.0.3.4"))], &seen);
    assert_eq!(lines(&plans[0].result), ["set net.ipv4.conf.eth0.forwarding = 1"]);
    // A down fan needs none.
    let plans = plan(&[(a.clone(), Want::Down)], &Observed { forwarding: Default::default(), ..seen });
    assert_eq!(lines(&plans[0].result), ["set fan-250 down"]);
    // A name with a dot reads as sysctl(8) writes it.
    let vlan = Op::EnableForwarding { link: "eth0.100".parse().unwrap() };
    assert_eq!(vlan.to_string(), "set net.ipv4.conf.eth0/100.forwarding = 1");
}

#[test]
fn coming_back_after_a_flap_reuses_the_devices() {
    let r = rule("");
    let mut seen = built(&r);
    seen.bridge.as_mut().unwrap().up = false;
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, seen.clone()));
    assert_eq!(lines(&plans[0].result), ["set fan-250 up"], "one netlink message");

    // Someone removed the program and the NAT table meanwhile: restored.
    seen.program = None;
    seen.nat = None;
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, seen));
    assert_eq!(
        lines(&plans[0].result),
        [
            "attach fan program to fan-250-vx egress (fanlink 250.0.0.0/8 10.0.0.0/16 10.0.3.4)",
            "write nat table for fan-250: masquerade 250.0.0.0/8 leaving the overlay",
            "set fan-250 up",
        ]
    );
}

#[test]
fn a_new_address_moves_the_fan_to_its_slice() {
    let r = rule("");
    let plans = plan(&[(r.clone(), up_at("10.0.9.9"))], &observed(&r, built(&r)));
    assert_eq!(
        lines(&plans[0].result),
        [
            "set fan-250 address 02:fa:0a:00:09:09",
            "delete address 250.3.4.1/8 from fan-250",
            "add address 250.9.9.1/8 to fan-250",
            "attach fan program to fan-250-vx egress (fanlink 250.0.0.0/8 10.0.0.0/16 10.0.9.9)",
        ]
    );
}

#[test]
fn an_address_that_owns_no_slice_is_an_error() {
    let r = rule("");
    let plans = plan(&[(r, up_at("10.0.255.255"))], &Observed::default());
    assert_eq!(
        plans[0].result,
        Err("10.0.255.255 is the broadcast address of 10.0.0.0/16; its host part is all ones and owns no slice".into())
    );
}

#[test]
fn devices_fanlink_does_not_own_are_never_touched() {
    let r = rule("");
    let mut seen = built(&r);
    // Someone's own bridge of that name, as fanctl makes it: no alias, a port's MAC.
    seen.bridge.as_mut().unwrap().alias = None;
    seen.bridge.as_mut().unwrap().mac = Some([0x52, 0x54, 0, 1, 2, 3]);
    // A fan with a rule says what to do (the bridge Docker makes when it restores its
    // network first); one whose rule is gone is not looked after any more.
    for want in [up_at("10.0.3.4"), Want::Down] {
        let plans = plan(&[(r.clone(), want)], &observed(&r, seen.clone()));
        assert_eq!(
            plans[0].result,
            Err("a bridge named fan-250 exists that fanlink did not make (Docker makes one when it \
                 restores a network of that name before fanlink has made the fan's bridge); fanlink \
                 does not take over a bridge it did not make: delete it with `ip link del fan-250` \
                 (then, if Docker made it, `systemctl restart docker`, whose containers then attach \
                 to fanlink's bridge), or give the fan another `name`"
                .into())
        );
    }
    let generic = Err("a device named fan-250 exists that fanlink does not own (its alias is \"\"); \
                       rename it or give the fan another `name`"
        .to_string());
    assert_eq!(plan(&[(r.clone(), Want::Absent)], &observed(&r, seen.clone()))[0].result, generic);
    // Empty (no port, no address) or not, it is not taken over.
    let mut empty = seen.clone();
    empty.vxlan = None;
    empty.bridge_addresses.clear();
    assert!(plan(&[(r.clone(), Want::Down)], &observed(&r, empty))[0].result.is_err());
    // Not a bridge: the plain message.
    seen.bridge.as_mut().unwrap().kind = Some("dummy".into());
    assert_eq!(plan(&[(r.clone(), Want::Down)], &observed(&r, seen))[0].result, generic);
}

#[test]
fn absent_removes_exactly_what_is_ours() {
    let r = rule("");
    let plans = plan(&[(r.clone(), Want::Absent)], &observed(&r, built(&r)));
    assert_eq!(
        lines(&plans[0].result),
        [
            "delete nat table of fan-250",
            "remove the forwarding accept rules of fan-250",
            "delete link fan-250-vx",
            "delete link fan-250"
        ]
    );
}

#[test]
fn masquerade_off_removes_the_nat_table() {
    let r = rule("masquerade = false\n");
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, built(&r)));
    assert_eq!(lines(&plans[0].result), ["delete nat table of fan-250"]);
}

#[test]
fn a_changed_mtu_and_a_lost_vni_are_repaired() {
    let r = rule("");
    let mut seen = built(&r);
    seen.vnis.clear();
    let want =
        Want::Up(Underlay { link: "eth0".parse().unwrap(), address: "10.0.3.4".parse().unwrap(), mtu: 8950 });
    let plans = plan(&[(r.clone(), want)], &observed(&r, seen));
    assert_eq!(
        lines(&plans[0].result),
        ["set fan-250 mtu 8950", "set fan-250-vx mtu 8950", "add vni 16384000 to fan-250-vx"]
    );
}

#[test]
fn a_vxlan_of_the_wrong_kind_is_recreated_and_a_new_bridge_gets_it_back() {
    let r = rule("");
    let mut seen = built(&r);
    seen.vxlan.as_mut().unwrap().fan_vxlan = false;
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, seen));
    assert_eq!(
        lines(&plans[0].result)[..3],
        [
            "delete link fan-250-vx",
            "create vxlan fan-250-vx external vnifilter nolearning dstport 8472 mtu 1450 master fan-250 alias fanlink:fan-250",
            "add vni 16384000 to fan-250-vx",
        ]
    );

    let mut seen = built(&r);
    seen.bridge.as_mut().unwrap().kind = Some("dummy".into());
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, seen));
    let ops = lines(&plans[0].result);
    assert_eq!(
        ops[..3],
        [
            "delete link fan-250",
            "create bridge fan-250 mtu 1450 address 02:fa:0a:00:03:04 alias fanlink:fan-250",
            "set fan-250-vx master fan-250"
        ]
    );
    assert!(ops.contains(&"add address 250.3.4.1/8 to fan-250".to_string()));
}

#[test]
fn devices_made_but_not_marked_before_a_crash_are_adopted_and_marked() {
    let r = rule("");
    let mut seen = built(&r);
    seen.bridge.as_mut().unwrap().alias = None;
    seen.vxlan.as_mut().unwrap().alias = None;
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, seen.clone()));
    assert_eq!(
        lines(&plans[0].result),
        ["set fan-250 alias fanlink:fan-250", "set fan-250-vx alias fanlink:fan-250"]
    );
    // A bridge with another MAC is someone else's, marked or not.
    seen.bridge.as_mut().unwrap().mac = Some([0x52, 0x54, 0, 1, 2, 3]);
    let plans = plan(&[(r.clone(), up_at("10.0.3.4"))], &observed(&r, seen));
    assert!(plans[0]
        .result
        .as_ref()
        .unwrap_err()
        .starts_with("a bridge named fan-250 exists that fanlink did not make"));
}

#[test]
fn a_down_fan_gets_its_bridge_but_a_disabled_one_builds_nothing() {
    let enabled = rule("");
    let disabled = rule("enable = false\n");
    let seen = Observed::default();
    let down = plan(&[(enabled, Want::Down)], &seen);
    assert!(lines(&down[0].result).iter().any(|o| o.starts_with("create bridge fan-250")), "{down:?}");
    let off = plan(&[(disabled, Want::Down)], &seen);
    assert_eq!(off[0].result, Ok(vec![]));
}
