//! What each fan should be, from the rules, the kernel's links and networkd's view of them.
//! Pure: the daemon's every decision is here, with the reason it logs.

use crate::config::Rule;
use crate::ifname::IfName;
use crate::model::Want;
use crate::networkd::{AdminState, OperState};
use crate::underlay::{self, HostLink};
use std::collections::{BTreeSet, HashMap};

/// networkd's view of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkView {
    pub oper: OperState,
    pub admin: AdminState,
}

/// The kernel's own "routable", for hosts without networkd (NetworkManager, ifupdown,
/// containers): administratively up, with carrier, and with a route beyond the link's own
/// subnets out of it (a default route, or any route via a gateway). The address inside the
/// underlay is `decide`'s to check, as with networkd.
pub fn kernel_views(
    links: &[crate::netlink::LinkInfo],
    routes: &[crate::netlink::RouteInfo],
) -> HashMap<u32, LinkView> {
    links
        .iter()
        .map(|l| {
            let beyond = routes
                .iter()
                .any(|r| r.oif == Some(l.index) && (r.gateway.is_some() || r.dst.prefix_len() == 0));
            let oper = match (l.up, l.carrier, beyond) {
                (false, _, _) => OperState::Off,
                (true, false, _) => OperState::NoCarrier,
                (true, true, false) => OperState::Carrier,
                (true, true, true) => OperState::Routable,
            };
            (l.index, LinkView { oper, admin: AdminState::Configured })
        })
        .collect()
}

/// A fan's target state and why, for the log and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub fan: IfName,
    pub want: Want,
    pub why: String,
}

/// Down (devices kept) when the rule says `enable = false`. Up when the underlay link is routable in networkd's eyes and holds an address in the
/// underlay; down otherwise (devices kept).
pub fn decide(rule: &Rule, links: &[HostLink], networkd: &HashMap<u32, LinkView>) -> Decision {
    let (want, why) = match underlay::find(rule, links) {
        // Kept, not removed: containers stay attached to a running fan's bridge.
        _ if !rule.enabled => (Want::Down, crate::config::DISABLED.into()),
        Err(e) => (Want::Down, format!("waiting: {e}")),
        Ok(u) => {
            let index = links.iter().find(|l| l.name == u.link.as_str()).map(|l| l.index);
            match index.and_then(|i| networkd.get(&i)) {
                None => (Want::Down, format!("waiting: networkd does not report {}", u.link)),
                Some(v) if v.admin == AdminState::Linger => {
                    (Want::Down, format!("{} is gone (networkd: linger)", u.link))
                }
                Some(v) if v.oper == OperState::Routable => {
                    let why = format!("{} routable with {}", u.link, u.address);
                    (Want::Up(u), why)
                }
                Some(v) => (Want::Down, format!("{} is {}", u.link, v.oper.as_str())),
            }
        }
    };
    Decision { fan: rule.name.clone(), want, why }
}

/// Decisions for every rule, plus `Absent` for fans of ours in the kernel that no rule
/// defines any more. `orphans_go` is false while the rules have errors: a fan whose file is
/// broken is not a removed fan, and a running fan is never taken down for a typo.
pub fn decide_all(
    rules: &[Rule],
    kernel_fans: &BTreeSet<IfName>,
    links: &[HostLink],
    networkd: &HashMap<u32, LinkView>,
    orphans_go: bool,
) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = rules.iter().map(|r| decide(r, links, networkd)).collect();
    if orphans_go {
        for fan in kernel_fans.iter().filter(|f| !rules.iter().any(|r| &r.name == *f)) {
            decisions.push(Decision {
                fan: fan.clone(),
                want: Want::Absent,
                why: "its rule was removed".into(),
            });
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_all;
    use std::path::PathBuf;

    fn rule() -> Rule {
        let text = "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n".to_string();
        parse_all(&[(PathBuf::from("t.toml"), text)]).0.remove(0)
    }

    fn links(address: &str) -> Vec<HostLink> {
        vec![HostLink {
            index: 2,
            name: "ens3".into(),
            mtu: 1500,
            alias: None,
            addresses: vec![address.parse().unwrap()],
        }]
    }

    fn view(oper: &str, admin: &str) -> HashMap<u32, LinkView> {
        HashMap::from([(2, LinkView { oper: OperState::parse(oper), admin: AdminState::parse(admin) })])
    }

    #[test]
    fn routable_with_an_address_is_up_anything_else_down() {
        let d = decide(&rule(), &links("10.0.3.4/16"), &view("routable", "configured"));
        assert!(matches!(d.want, Want::Up(_)));
        assert_eq!(d.why, "ens3 routable with 10.0.3.4");
        let cases = [
            ("no-carrier", "configured", "10.0.3.4/16", "ens3 is no-carrier"),
            ("off", "configured", "10.0.3.4/16", "ens3 is off"),
            ("degraded", "configuring", "10.0.3.4/16", "ens3 is degraded"),
            ("routable", "linger", "10.0.3.4/16", "ens3 is gone (networkd: linger)"),
            ("bogus-state", "configured", "10.0.3.4/16", "ens3 is unknown"),
            (
                "routable",
                "configured",
                "192.168.1.2/24",
                "waiting: no link has an IPv4 address inside the underlay 10.0.0.0/16",
            ),
        ];
        for (oper, admin, address, why) in cases {
            let d = decide(&rule(), &links(address), &view(oper, admin));
            assert_eq!((d.want, d.why.as_str()), (Want::Down, why), "{oper} {admin} {address}");
        }
        let d = decide(&rule(), &links("10.0.3.4/16"), &HashMap::new());
        assert_eq!(d.why, "waiting: networkd does not report ens3");
    }

    #[test]
    fn a_disabled_fan_is_down_whatever_its_underlay() {
        let disabled = Rule { enabled: false, ..rule() };
        let d = decide(&disabled, &links("10.0.3.4/16"), &view("routable", "configured"));
        assert_eq!((d.want, d.why.as_str()), (Want::Down, "disabled by its rule (enable = false)"));
    }

    #[test]
    fn fans_without_rules_go_only_when_the_rules_are_sound() {
        let kernel: BTreeSet<IfName> = ["fan-250".parse().unwrap(), "fan-old".parse().unwrap()].into();
        let all =
            decide_all(&[rule()], &kernel, &links("10.0.3.4/16"), &view("routable", "configured"), true);
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].fan.as_str(), &all[1].want), ("fan-old", &Want::Absent));
        let kept =
            decide_all(&[rule()], &kernel, &links("10.0.3.4/16"), &view("routable", "configured"), false);
        assert_eq!(kept.len(), 1, "a broken rule file never takes a fan down");
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::netlink::{LinkInfo, RouteInfo};

    fn link(index: u32, up: bool, carrier: bool) -> LinkInfo {
        LinkInfo {
            index,
            name: format!("eth{index}"),
            up,
            carrier,
            mtu: 1500,
            master: None,
            link: None,
            alias: None,
            mac: None,
            kind: None,
            vxlan: None,
        }
    }

    fn route(dst: &str, oif: u32, gateway: Option<&str>) -> RouteInfo {
        RouteInfo {
            dst: dst.parse().unwrap(),
            oif: Some(oif),
            gateway: gateway.map(|g| g.parse().unwrap()),
            metric: 0,
        }
    }

    #[test]
    fn routable_means_up_carrier_and_a_route_beyond() {
        let links = [
            link(2, true, true),
            link(3, true, true),
            link(4, true, false),
            link(5, false, false),
            link(6, true, true),
        ];
        let routes = [
            route("0.0.0.0/0", 2, Some("10.0.0.1")),
            route("10.0.0.0/16", 2, None),
            route("192.168.9.0/24", 3, Some("10.1.0.1")),
            route("0.0.0.0/0", 4, Some("10.2.0.1")),
            route("10.6.0.0/16", 6, None),
        ];
        let views = kernel_views(&links, &routes);
        let oper = |i: u32| views[&i].oper;
        assert_eq!(
            [oper(2), oper(3), oper(4), oper(5), oper(6)],
            [
                OperState::Routable,
                OperState::Routable,
                OperState::NoCarrier,
                OperState::Off,
                OperState::Carrier
            ]
        );
    }
}

/// What the worker knows when a kernel change arrives, to tell whether it can matter.
#[derive(Debug, Default)]
pub struct Interest {
    /// The fans' bridges and whether each is wanted up.
    pub bridges: HashMap<String, bool>,
    /// The fans' bridges' ifindexes (address events name links by index).
    pub bridge_indexes: Vec<u32>,
    /// The fans' vxlan devices, by name, and their ifindex where known (tc events name it).
    pub vxlans: HashMap<String, Option<u32>>,
    /// The underlay links in use, with the MTU the fans were sized from.
    pub underlay_links: HashMap<String, u32>,
    /// Every rule's underlay prefix: an address appearing or leaving there can move a fan.
    pub underlays: Vec<ipnet::Ipv4Net>,
    /// Whether the kernel decides "routable" (then carrier and routes matter too).
    pub following_kernel: bool,
    /// The ifindexes whose IPv4 forwarding a fan that is up needs: its bridge and underlay.
    pub forwarding: Vec<u32>,
}

/// Whether networkd's view of link `index` can change a decision. fanlink's own devices (the
/// fans' bridges and vxlans, which networkd walks through its states on every flap) are never
/// an underlay (`underlay::find`); a link not in `links` (not kept, or new) may be.
pub fn view_can_matter(links: &[crate::netlink::LinkInfo], index: u32) -> bool {
    let link = links.iter().find(|l| l.index == index);
    !link.and_then(|l| l.alias.as_deref()).is_some_and(|a| a.starts_with(crate::model::OWNER_PREFIX))
}

/// What a batch of kernel changes can change. Most of the kernel's chatter (a container's
/// veth, the echo of fanlink's own requests, networkd's work on other links) changes
/// nothing; an underlay's address or MTU changes a fan's plan only through its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Matters {
    No,
    /// Only what `decide` reads: decide again, reconcile if a decision changed.
    Wants,
    /// Something of a fan's own (or lost events): reconcile.
    Plan,
}

/// The most any event of the batch can change (see `Matters`).
pub fn kernel_change_matters(events: &[crate::netlink::Event], interest: &Interest) -> Matters {
    use crate::netlink::Event as E;
    use Matters::{No, Plan, Wants};
    let when = |cond: bool, m: Matters| if cond { m } else { No };
    let in_underlay =
        |a: &crate::netlink::AddrInfo| interest.underlays.iter().any(|u| u.contains(&a.address.addr()));
    // An empty batch means events were lost (ENOBUFS): resync.
    if events.is_empty() {
        return Plan;
    }
    let one = |event: &E| match event {
        E::NewLink(l) => {
            let bridge = interest.bridges.get(&l.name).is_some_and(|up| *up != l.up);
            let vxlan = interest.vxlans.contains_key(&l.name) && !l.up;
            let owner = l.alias.as_deref().is_some_and(|a| a.starts_with(crate::model::OWNER_PREFIX))
                && !interest.bridges.contains_key(&l.name)
                && !interest.vxlans.contains_key(&l.name);
            let underlay = interest.underlay_links.get(&l.name).is_some_and(|mtu| *mtu != l.mtu);
            when(bridge || vxlan || owner || interest.following_kernel, Plan).max(when(underlay, Wants))
        }
        E::DelLink { name, .. } => {
            when(interest.bridges.contains_key(name) || interest.vxlans.contains_key(name), Plan)
                .max(when(interest.underlay_links.contains_key(name), Wants))
        }
        E::NewAddr(a) => when(in_underlay(a), Wants),
        // Also a bridge's own address, removed by someone.
        E::DelAddr(a) => {
            when(interest.bridge_indexes.contains(&a.index), Plan).max(when(in_underlay(a), Wants))
        }
        E::Tc { index } | E::Tunnel { index } => {
            when(interest.vxlans.values().any(|v| *v == Some(*index)), Plan)
        }
        // A port left a bridge: released by hand from the fan's bridge, say.
        E::Port { name, gone } => {
            when(*gone && (interest.bridges.contains_key(name) || interest.vxlans.contains_key(name)), Plan)
        }
        E::Route => when(interest.following_kernel, Plan),
        // Someone turned forwarding off under a fan that is up: fanlink turns it back on.
        E::Forwarding { index, on } => when(!on && interest.forwarding.contains(index), Plan),
    };
    events.iter().map(one).max().unwrap_or(No)
}

#[cfg(test)]
mod interest_tests {
    use super::Matters::{No, Plan, Wants};
    use super::*;
    use crate::netlink::{AddrInfo, Event, LinkInfo};

    fn link(name: &str, up: bool, mtu: u32) -> Event {
        Event::NewLink(LinkInfo {
            index: 9,
            name: name.into(),
            up,
            carrier: up,
            mtu,
            master: None,
            link: None,
            alias: None,
            mac: None,
            kind: None,
            vxlan: None,
        })
    }

    fn interest() -> Interest {
        Interest {
            bridges: HashMap::from([("fan-250".into(), true)]),
            bridge_indexes: vec![5],
            vxlans: HashMap::from([("fan-250-vx".into(), Some(7))]),
            underlay_links: HashMap::from([("ens3".into(), 1500)]),
            underlays: vec!["10.0.0.0/16".parse().unwrap()],
            following_kernel: false,
            forwarding: vec![5, 2],
        }
    }

    #[test]
    fn networkd_on_fanlinks_own_devices_changes_no_decision() {
        let with_alias = |index, alias: Option<&str>| match link("x", true, 1500) {
            Event::NewLink(l) => LinkInfo { index, alias: alias.map(String::from), ..l },
            _ => unreachable!(),
        };
        let links =
            [with_alias(2, None), with_alias(5, Some("fanlink:fan-250")), with_alias(6, Some("other"))];
        assert!(view_can_matter(&links, 2), "an uplink");
        assert!(!view_can_matter(&links, 5), "a fan's bridge");
        assert!(view_can_matter(&links, 6), "someone else's alias");
        assert!(view_can_matter(&links, 9), "a link not kept");
        assert!(view_can_matter(&[], 5), "nothing kept");
    }

    #[test]
    fn only_changes_that_can_move_a_fan_matter() {
        let i = interest();
        let addr = |a: &str| Event::NewAddr(AddrInfo { index: 2, address: a.parse().unwrap() });
        for (event, matters) in [
            (link("fan-250", true, 1450), No),
            (link("fan-250", false, 1450), Plan),
            (link("fan-250-vx", true, 1450), No),
            (link("fan-250-vx", false, 1450), Plan),
            (link("veth1234", true, 1500), No),
            (link("ens3", true, 1500), No),
            (link("ens3", true, 9000), Wants),
            (Event::DelLink { index: 5, name: "fan-250".into() }, Plan),
            (Event::DelLink { index: 6, name: "veth1234".into() }, No),
            (addr("10.0.9.9/16"), Wants),
            (addr("192.168.1.2/24"), No),
            (Event::DelAddr(AddrInfo { index: 5, address: "250.1.1.1/8".parse().unwrap() }), Plan),
            (Event::DelAddr(AddrInfo { index: 2, address: "192.168.1.2/24".parse().unwrap() }), No),
            (Event::Tc { index: 7 }, Plan),
            (Event::Tc { index: 8 }, No),
            (Event::Tunnel { index: 7 }, Plan),
            (Event::Tunnel { index: 8 }, No),
            (Event::Port { name: "fan-250-vx".into(), gone: true }, Plan),
            (Event::Port { name: "fan-250-vx".into(), gone: false }, No),
            (Event::Port { name: "veth1234".into(), gone: true }, No),
            (Event::Route, No),
            (Event::Forwarding { index: 5, on: false }, Plan),
            (Event::Forwarding { index: 2, on: false }, Plan),
            (Event::Forwarding { index: 5, on: true }, No),
            (Event::Forwarding { index: 9, on: false }, No),
        ] {
            assert_eq!(kernel_change_matters(std::slice::from_ref(&event), &i), matters, "{event:?}");
        }
        assert_eq!(kernel_change_matters(&[], &i), Plan, "lost events: resync");
        let batch = [addr("10.0.9.9/16"), link("fan-250", false, 1450), link("veth1234", true, 1500)];
        assert_eq!(kernel_change_matters(&batch, &i), Plan, "the most any event can change");
        let kernel = Interest { following_kernel: true, ..interest() };
        assert_eq!(kernel_change_matters(&[Event::Route], &kernel), Plan);
        assert_eq!(kernel_change_matters(&[link("ens3", false, 1500)], &kernel), Plan);
        let all_down = Interest { forwarding: vec![], ..interest() };
        let off = Event::Forwarding { index: 5, on: false };
        assert_eq!(kernel_change_matters(&[off], &all_down), No, "no fan needs it");
    }
}
