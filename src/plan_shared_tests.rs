//! Table-driven tests of `plan` in the shared datapath (kernels without vnifilter), and of
//! a host whose kernel changed datapath.

use super::*;
use crate::config::parse_all;
use crate::model::{steer_tag, Datapath, Observed, SharedVxlan, Underlay};
use std::path::PathBuf;

fn rule(octet: u8) -> Rule {
    let text = format!("[[fan]]\noverlay = \"{octet}.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n");
    let (mut rules, errors) = parse_all(&[(PathBuf::from("t.toml"), text)]);
    assert!(errors.is_empty(), "{errors:?}");
    rules.remove(0)
}

fn up() -> Want {
    Want::Up(Underlay { link: "eth0".parse().unwrap(), address: "10.0.3.4".parse().unwrap(), mtu: 1450 })
}

fn lines(result: &Result<Vec<Op>, String>) -> Vec<String> {
    result.as_ref().unwrap().iter().map(ToString::to_string).collect()
}

const SHARED_INDEX: u32 = 3;

fn device(index: u32, kind: &str, alias: Option<String>) -> Device {
    Device { index, up: true, mtu: 1450, alias, kind: Some(kind.into()), ..Default::default() }
}

/// A fan (`250`: indexes 10-12, `251`: 20-22) as `up` at 10.0.3.4 leaves it in the shared datapath.
fn built(r: &Rule) -> ObservedFan {
    let base = u32::from(r.map.overlay().addr().octets()[0] - 250) * 10 + 10;
    let alias = Some(owner_alias(&r.name, false));
    let local = "10.0.3.4".parse().unwrap();
    let program = FanProgram { redirect: Some(SHARED_INDEX), ..FanProgram::new(r.map, local) };
    ObservedFan {
        bridge: Some(Device { mac: Some(bridge_mac(local)), ..device(base, "bridge", alias.clone()) }),
        vxlan: Some(Device { master: Some(base), ..device(base + 1, "veth", alias.clone()) }),
        peer: Some(device(base + 2, "veth", alias)),
        bridge_addresses: vec![r.map.bridge_address(local).unwrap()],
        program: Some(program.tag()),
        program_id: Some(7),
        nat: Some(nft::params_comment(r.map.overlay(), &r.name)),
        steer: Some(steer_tag(&r.name, r.map.vni(), base + 1)),
        ..Default::default()
    }
}

fn shared(users: &[&Rule]) -> SharedVxlan {
    SharedVxlan {
        device: Device {
            shared_vxlan: true,
            ..device(SHARED_INDEX, "vxlan", Some(crate::model::SHARED_ALIAS.into()))
        },
        users: users.iter().map(|r| r.name.clone()).collect(),
        drop: true,
    }
}

fn observed(datapath: Datapath, fans: &[(&Rule, ObservedFan)], shared: Option<SharedVxlan>) -> Observed {
    Observed {
        fans: fans.iter().map(|(r, seen)| (r.name.clone(), seen.clone())).collect(),
        // The fans' bridges and the underlay forward already.
        forwarding: fans.iter().map(|(r, _)| r.name.clone()).chain(["eth0".parse().unwrap()]).collect(),
        datapath,
        shared,
        ..Default::default()
    }
}

#[test]
fn another_vxlan_on_the_port_refuses_every_fan_that_needs_the_shared_vxlan_made() {
    let (a, b) = (rule(250), rule(251));
    let holders = vec!["flannel.1".to_string()];
    let seen = Observed { port_holders: holders.clone(), ..observed(Datapath::Shared, &[], None) };
    let plans = plan(&[(a.clone(), up()), (b.clone(), Want::Down)], &seen);
    assert_eq!(
        plans[0].result,
        Err(crate::port::refusal(&holders)),
        "nothing built, not even the host's part"
    );
    // A fan wanted down still gets its bridge (admin-down, for the workloads), nothing on the port.
    let down = lines(&plans[1].result);
    assert!(down.iter().all(|o| !o.contains("vxlan") && !o.contains("veth")), "{down:?}");
    // The shared vxlan is up already (it came first): a new fan only adds its own veth.
    let seen = Observed {
        port_holders: holders,
        ..observed(Datapath::Shared, &[(&a, built(&a))], Some(shared(&[&a])))
    };
    let plans = plan(&[(a.clone(), up()), (b.clone(), up())], &seen);
    assert_eq!(plans[0].result, Ok(vec![]));
    assert!(lines(&plans[1].result).iter().any(|o| o.starts_with("create veth fan-251-vx")), "{plans:?}");
}

#[test]
fn first_fan_builds_the_shared_vxlan_its_veth_and_its_steering() {
    let r = rule(250);
    let plans = plan(&[(r.clone(), up())], &observed(Datapath::Shared, &[], None));
    assert_eq!(
        lines(&plans[0].result),
        [
            "create vxlan fanlink-vx external nolearning dstport 8472 mtu 1450 alias \"fanlink: the fans' shared vxlan\", dropping on ingress what no fan takes",
            "create bridge fan-250 mtu 1450 address 02:fa:0a:00:03:04 alias fanlink:fan-250",
            "create veth fan-250-vx peer fan-250-vp mtu 1450 master fan-250 alias fanlink:fan-250",
            "add address 250.3.4.1/8 to fan-250",
            "attach fan program to fan-250-vx egress (fanlink 250.0.0.0/8 10.0.0.0/16 10.0.3.4 via fanlink-vx)",
            "steer vni 16384000 from fanlink-vx ingress into fan-250-vx (fan-250)",
            "write nat table for fan-250: masquerade 250.0.0.0/8 leaving the overlay",
            "accept forwarding for fan-250 in the firewalls that drop it",
            "set net.ipv4.conf.fan-250.forwarding = 1",
            "set fan-250-vp up",
            "set fan-250-vx up",
            "set fan-250 up",
        ]
    );
}

#[test]
fn a_down_fan_gets_its_bridge_alone_and_up_adds_the_veth_and_the_shared_vxlan() {
    let r = rule(250);
    let plans = plan(&[(r.clone(), Want::Down)], &observed(Datapath::Shared, &[], None));
    assert_eq!(
        lines(&plans[0].result),
        [
            "create bridge fan-250 mtu 1450 address 02:fa:00:00:00:00 alias fanlink:fan-250",
            "accept forwarding for fan-250 in the firewalls that drop it",
        ]
    );
    let bridge = ObservedFan {
        bridge: Some(Device {
            mac: Some(bridge_mac(std::net::Ipv4Addr::UNSPECIFIED)),
            up: false,
            ..device(5, "bridge", Some(owner_alias(&r.name, false)))
        }),
        ..Default::default()
    };
    let ops =
        lines(&plan(&[(r.clone(), up())], &observed(Datapath::Shared, &[(&r, bridge)], None))[0].result);
    assert!(ops[0].starts_with("create vxlan fanlink-vx "), "{ops:?}");
    assert_eq!(ops[1], "set fan-250 address 02:fa:0a:00:03:04");
    assert!(ops[2].starts_with("create veth fan-250-vx peer fan-250-vp "), "{ops:?}");
    assert!(!ops.iter().any(|o| o.starts_with("create bridge") || o.starts_with("accept")), "{ops:?}");
    assert_eq!(ops[ops.len() - 3..], ["set fan-250-vp up", "set fan-250-vx up", "set fan-250 up"]);
}

#[test]
fn a_built_shared_fan_needs_nothing_and_a_second_fan_only_its_own() {
    let (a, b) = (rule(250), rule(251));
    let seen = observed(Datapath::Shared, &[(&a, built(&a))], Some(shared(&[&a])));
    let plans = plan(&[(a.clone(), up()), (b.clone(), up())], &seen);
    assert_eq!(plans[0].result, Ok(vec![]));
    let ops = lines(&plans[1].result);
    assert_eq!(ops[0], "create bridge fan-251 mtu 1450 address 02:fa:0a:00:03:04 alias fanlink:fan-251");
    assert!(ops.contains(
        &"attach fan program to fan-251-vx egress (fanlink 251.0.0.0/8 10.0.0.0/16 10.0.3.4 via fanlink-vx)"
            .into()
    ));
    assert!(ops.contains(&"steer vni 16449536 from fanlink-vx ingress into fan-251-vx (fan-251)".into()));
    assert!(!ops.iter().any(|o| o.contains("fan-250") || o.starts_with("create vxlan")), "{ops:?}");
}

#[test]
fn what_is_deleted_by_hand_comes_back() {
    let a = rule(250);
    // The steering filter: attached again, nothing else.
    let mut seen = built(&a);
    seen.steer = None;
    let plans = plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, seen)], Some(shared(&[]))));
    assert_eq!(
        lines(&plans[0].result),
        ["steer vni 16384000 from fanlink-vx ingress into fan-250-vx (fan-250)"]
    );
    // The drop filter: the shared vxlan is ensured again, in place.
    let mut host = shared(&[&a]);
    host.drop = false;
    let plans = plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, built(&a))], Some(host)));
    assert_eq!(lines(&plans[0].result).len(), 1);
    assert!(lines(&plans[0].result)[0].starts_with("create vxlan fanlink-vx"));
    // The shared vxlan: made again, and every program that names it is renewed.
    let plans = plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, built(&a))], None));
    let ops = lines(&plans[0].result);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops[0].starts_with("create vxlan fanlink-vx"));
    assert!(ops[1].starts_with("attach fan program to fan-250-vx egress"));
    assert!(ops[2].starts_with("steer vni 16384000"));
    // The veth (its peer goes with it): made again, with its program and steering.
    let mut seen = built(&a);
    (seen.vxlan, seen.peer) = (None, None);
    let plans = plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, seen)], Some(shared(&[&a]))));
    let ops = lines(&plans[0].result);
    assert_eq!(
        ops[0],
        "create veth fan-250-vx peer fan-250-vp mtu 1450 master fan-250 alias fanlink:fan-250"
    );
    assert_eq!(ops[ops.len() - 2..], ["set fan-250-vp up", "set fan-250-vx up"]);
    assert!(ops.iter().any(|o| o.starts_with("steer vni 16384000")));
}

#[test]
fn down_keeps_everything_and_takes_the_bridge_down() {
    let a = rule(250);
    let seen = observed(Datapath::Shared, &[(&a, built(&a))], Some(shared(&[&a])));
    assert_eq!(lines(&plan(&[(a.clone(), Want::Down)], &seen)[0].result), ["set fan-250 down"]);
}

#[test]
fn the_shared_vxlan_goes_with_the_last_fan() {
    let (a, b) = (rule(250), rule(251));
    let seen = observed(Datapath::Shared, &[(&a, built(&a)), (&b, built(&b))], Some(shared(&[&a, &b])));
    let plans = plan_absent_all(&[a.name.clone(), b.name.clone()], &seen);
    assert_eq!(
        lines(&plans[0].result),
        [
            "delete nat table of fan-250",
            "remove the forwarding accept rules of fan-250",
            "stop steering vni 16384000 (fan-250)",
            "delete link fan-250-vx",
            "delete link fan-250-vp",
            "delete link fan-250",
        ]
    );
    let last = lines(&plans[1].result);
    assert_eq!(last.last().unwrap(), "delete link fanlink-vx");
    assert!(!last.iter().any(|o| o.starts_with("stop steering")), "the filter goes with the device");
    // One fan of two removed: the other keeps the shared vxlan.
    let plans = plan_absent_all(std::slice::from_ref(&b.name), &seen);
    assert!(!lines(&plans[0].result).contains(&"delete link fanlink-vx".to_string()));
}

#[test]
fn a_kernel_that_gained_vnifilter_replaces_the_shared_datapath() {
    let a = rule(250);
    let seen = observed(Datapath::Vnifilter, &[(&a, built(&a))], Some(shared(&[&a])));
    let ops = lines(&plan(&[(a.clone(), up())], &seen)[0].result);
    assert_eq!(
        ops[..5],
        [
            "delete link fanlink-vx",
            "delete link fan-250-vx",
            "delete link fan-250-vp",
            "create vxlan fan-250-vx external vnifilter nolearning dstport 8472 mtu 1450 master fan-250 alias fanlink:fan-250",
            "add vni 16384000 to fan-250-vx",
        ]
    );
    assert!(ops.contains(
        &"attach fan program to fan-250-vx egress (fanlink 250.0.0.0/8 10.0.0.0/16 10.0.3.4)".into()
    ));
}

#[test]
fn a_kernel_that_lost_vnifilter_replaces_the_fans_vxlan() {
    let a = rule(250);
    let mut seen = built(&a);
    seen.vxlan = Some(Device {
        fan_vxlan: true,
        master: Some(10),
        ..device(11, "vxlan", Some(owner_alias(&a.name, false)))
    });
    (seen.peer, seen.steer) = (None, None);
    let mut host = observed(Datapath::Shared, &[(&a, seen)], None);
    // Another fan's vxlan too, not asked about: every one holds UDP 8472.
    host.vnifilter_vxlans = vec!["fan-250-vx".parse().unwrap(), "fan-240-vx".parse().unwrap()];
    let ops = lines(&plan(&[(a.clone(), up())], &host)[0].result);
    assert_eq!(ops[..2], ["delete link fan-250-vx", "delete link fan-240-vx"]);
    assert!(ops[2].starts_with("create vxlan fanlink-vx"));
    assert_eq!(
        ops[3..5],
        [
            "delete link fan-250-vx",
            "create veth fan-250-vx peer fan-250-vp mtu 1450 master fan-250 alias fanlink:fan-250"
        ]
    );
}

#[test]
fn a_foreign_device_with_the_shared_name_blocks_the_shared_datapath_only() {
    let a = rule(250);
    let mut seen = observed(Datapath::Shared, &[], None);
    seen.shared_blocked = Some("a device named fanlink-vx exists that fanlink does not own".into());
    assert_eq!(plan(&[(a.clone(), up())], &seen)[0].result, Err(seen.shared_blocked.clone().unwrap()));
    seen.datapath = Datapath::Vnifilter;
    assert!(plan(&[(a.clone(), up())], &seen)[0].result.is_ok());
}

#[test]
fn a_veth_pair_made_but_not_marked_before_a_crash_is_adopted_and_marked() {
    let a = rule(250);
    let mut seen = built(&a);
    seen.vxlan.as_mut().unwrap().alias = None;
    let peer = seen.peer.as_mut().unwrap();
    (peer.alias, peer.link) = (None, Some(11));
    let host = Some(shared(&[&a]));
    let plans = plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, seen.clone())], host.clone()));
    assert_eq!(
        lines(&plans[0].result),
        ["set fan-250-vx alias fanlink:fan-250", "set fan-250-vp alias fanlink:fan-250"]
    );
    // A veth of that name in no bridge of ours is someone else's.
    seen.vxlan.as_mut().unwrap().master = Some(99);
    let plans = plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, seen)], host));
    assert!(plans[0]
        .result
        .as_ref()
        .unwrap_err()
        .starts_with("a device named fan-250-vx exists that fanlink does not own"));
}

#[test]
fn a_shared_vxlan_made_but_not_marked_before_a_crash_is_marked() {
    let a = rule(250);
    let mut host = shared(&[&a]);
    host.device.alias = None;
    let plans =
        plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, built(&a))], Some(host.clone())));
    assert_eq!(lines(&plans[0].result), ["set fanlink-vx alias fanlink: the fans' shared vxlan"]);
    host.drop = false;
    let plans = plan(&[(a.clone(), up())], &observed(Datapath::Shared, &[(&a, built(&a))], Some(host)));
    assert_eq!(
        lines(&plans[0].result),
        [
            "create vxlan fanlink-vx external nolearning dstport 8472 mtu 1450 alias \"fanlink: the fans' shared \
             vxlan\", dropping on ingress what no fan takes",
            "set fanlink-vx alias fanlink: the fans' shared vxlan"
        ]
    );
}
