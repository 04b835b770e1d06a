//! The kernel state `observe` reads, kept by the daemon and patched by rtnetlink events.
//!
//! A dump and an event are the same message (RTM_NEWLINK, RTM_NEWADDR, ...) decoded by the
//! same parsers, so a snapshot made by dumps and one patched by the events since are the
//! same thing. What an event does not carry in full (a tc filter, a VNI filter, a route:
//! the monitor reads only whose they are) is dropped from the snapshot and read again when
//! `observe` next needs it. Pure: no socket here.

use crate::netlink::{AddrInfo, Event, FilterInfo, LinkInfo, RouteInfo};
use crate::underlay::HostLink;
use std::collections::HashMap;

/// The kernel as one snapshot: links and their IPv4 addresses, whether it forwards IPv4,
/// and the tc filters, VNIs and routes read so far.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub links: Vec<LinkInfo>,
    pub addresses: Vec<AddrInfo>,
    /// IPv4 forwarding by ifindex (`net.ipv4.conf.LINK.forwarding`), for the links read so
    /// far (`System::observe` reads those it needs), then kept by the netconf events.
    pub forwarding: HashMap<u32, bool>,
    /// cls_bpf filters by (ifindex, egress), as last read.
    pub(crate) filters: HashMap<(u32, bool), Vec<FilterInfo>>,
    /// VNI filter entries by vxlan ifindex, as last read.
    pub(crate) vnis: HashMap<u32, Vec<u32>>,
    /// The main table's IPv4 routes, as last read.
    pub(crate) routes: Option<Vec<RouteInfo>>,
}

impl Snapshot {
    /// A snapshot from a dump of links and one of addresses.
    pub fn new(links: Vec<LinkInfo>, addresses: Vec<AddrInfo>) -> Snapshot {
        Snapshot { links, addresses, ..Default::default() }
    }

    /// Patches in one rtnetlink notification. Each carries the whole object (a link, an
    /// address), or names the link whose filters or VNIs changed: those are read again.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::NewLink(l) => match self.links.iter_mut().find(|o| o.index == l.index) {
                Some(old) => *old = l.clone(),
                None => self.links.push(l.clone()),
            },
            Event::DelLink { index, .. } => {
                self.links.retain(|l| l.index != *index);
                self.addresses.retain(|a| a.index != *index);
                self.filters.retain(|(i, _), _| i != index);
                self.vnis.remove(index);
                self.forwarding.remove(index);
            }
            Event::NewAddr(a) => {
                if !self.addresses.contains(a) {
                    self.addresses.push(*a);
                }
            }
            Event::DelAddr(a) => self.addresses.retain(|o| o != a),
            Event::Tc { index } => self.filters.retain(|(i, _), _| i != index),
            Event::Tunnel { index } => {
                self.vnis.remove(index);
            }
            Event::Route => self.routes = None,
            Event::Forwarding { index, on } => {
                self.forwarding.insert(*index, *on);
            }
            // The bridge layer's view of a port: the AF_UNSPEC message beside it says it all.
            Event::Port { .. } => {}
        }
    }

    pub fn host_links(&self) -> Vec<HostLink> {
        self.links
            .iter()
            .map(|l| HostLink {
                index: l.index,
                name: l.name.clone(),
                mtu: l.mtu,
                alias: l.alias.clone(),
                addresses: self.addresses.iter().filter(|a| a.index == l.index).map(|a| a.address).collect(),
            })
            .collect()
    }

    /// The ports of fan `fan`'s bridge other than fanlink's own (`<fan>-vx`): containers'
    /// and VMs' interfaces, or anything else someone attached. None if the bridge is not
    /// fanlink's.
    pub fn workloads(&self, fan: &crate::ifname::IfName) -> Vec<String> {
        let ours = |l: &LinkInfo| {
            l.alias.as_deref().and_then(crate::model::parse_alias).is_some_and(|(f, _)| &f == fan)
        };
        let Some(bridge) = self.link(fan.as_str()).filter(|b| ours(b)) else { return Vec::new() };
        let port = crate::config::vxlan_name_for(fan);
        self.links
            .iter()
            .filter(|l| l.master == Some(bridge.index) && l.name != port.as_str())
            .map(|l| l.name.clone())
            .collect()
    }

    pub(crate) fn link(&self, name: &str) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, up: bool) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            up,
            carrier: up,
            mtu: 1500,
            master: None,
            link: None,
            alias: Some("fanlink:fan-250".into()),
            mac: None,
            kind: Some("bridge".into()),
            vxlan: None,
        }
    }

    fn addr(index: u32, a: &str) -> AddrInfo {
        AddrInfo { index, address: a.parse().unwrap() }
    }

    fn filter(name: &str) -> FilterInfo {
        FilterInfo { name: name.into(), prog_id: Some(3), prio: 1, handle: 1, direct_action: true }
    }

    /// The state a dump would give after the same changes.
    fn dumped(links: Vec<LinkInfo>, addresses: Vec<AddrInfo>) -> Snapshot {
        Snapshot::new(links, addresses)
    }

    fn same(a: &Snapshot, b: &Snapshot) -> bool {
        a.links == b.links && a.addresses == b.addresses && a.forwarding == b.forwarding
    }

    #[test]
    fn a_link_event_replaces_the_link_or_adds_it() {
        let mut s = dumped(vec![link(1, "lo", true), link(5, "fan-250", false)], vec![]);
        s.apply(&Event::NewLink(link(5, "fan-250", true)));
        assert!(same(&s, &dumped(vec![link(1, "lo", true), link(5, "fan-250", true)], vec![])));
        s.apply(&Event::NewLink(link(7, "fan-250-vx", false)));
        assert_eq!(s.link("fan-250-vx"), Some(&link(7, "fan-250-vx", false)));
        // A bridge port's AF_BRIDGE message carries no alias: it must not replace the link.
        s.apply(&Event::Port { name: "fan-250-vx".into(), gone: true });
        assert_eq!(s.link("fan-250-vx"), Some(&link(7, "fan-250-vx", false)));
    }

    #[test]
    fn a_deleted_link_takes_its_addresses_filters_and_vnis_along() {
        let mut s = dumped(
            vec![link(5, "fan-250", true), link(7, "fan-250-vx", true)],
            vec![addr(5, "250.1.1.1/8"), addr(2, "10.0.1.1/16")],
        );
        s.filters.insert((7, true), vec![filter("fan_egress")]);
        s.filters.insert((9, false), vec![filter("other")]);
        s.vnis.insert(7, vec![16_384_000]);
        s.apply(&Event::DelLink { index: 5, name: "fan-250".into() });
        s.apply(&Event::DelLink { index: 7, name: "fan-250-vx".into() });
        assert!(same(&s, &dumped(vec![], vec![addr(2, "10.0.1.1/16")])));
        assert_eq!(s.filters.keys().collect::<Vec<_>>(), [&(9, false)]);
        assert!(s.vnis.is_empty());
    }

    #[test]
    fn address_events_add_once_and_remove_exactly_that_address() {
        let mut s = dumped(vec![link(5, "fan-250", true)], vec![addr(5, "250.1.1.1/8")]);
        s.apply(&Event::NewAddr(addr(5, "250.1.1.1/8")));
        s.apply(&Event::NewAddr(addr(2, "10.0.1.1/16")));
        s.apply(&Event::DelAddr(addr(5, "250.1.1.1/16")));
        assert!(same(
            &s,
            &dumped(vec![link(5, "fan-250", true)], vec![addr(5, "250.1.1.1/8"), addr(2, "10.0.1.1/16")])
        ));
        s.apply(&Event::DelAddr(addr(5, "250.1.1.1/8")));
        assert_eq!(s.addresses, [addr(2, "10.0.1.1/16")]);
        assert_eq!(s.host_links()[0].addresses, Vec::<ipnet::Ipv4Net>::new());
    }

    #[test]
    fn tc_tunnel_and_route_events_drop_what_they_name_to_be_read_again() {
        let mut s = dumped(vec![], vec![]);
        s.filters.insert((7, true), vec![filter("fan_egress")]);
        s.filters.insert((7, false), vec![]);
        s.filters.insert((8, true), vec![filter("fan_egress")]);
        s.vnis.insert(7, vec![1]);
        s.vnis.insert(8, vec![2]);
        s.routes = Some(vec![]);
        s.apply(&Event::Tc { index: 7 });
        s.apply(&Event::Tunnel { index: 8 });
        assert_eq!(s.filters.keys().collect::<Vec<_>>(), [&(8, true)]);
        assert_eq!(s.vnis.keys().collect::<Vec<_>>(), [&7]);
        assert!(s.routes.is_some());
        s.apply(&Event::Route);
        assert!(s.routes.is_none());
    }

    #[test]
    fn a_forwarding_event_sets_the_links_forwarding_and_a_deleted_link_forgets_it() {
        let mut s = dumped(vec![link(5, "fan-250", true)], vec![]);
        s.apply(&Event::Forwarding { index: 5, on: false });
        assert_eq!(s.forwarding, HashMap::from([(5, false)]));
        s.apply(&Event::Forwarding { index: 5, on: true });
        s.apply(&Event::Forwarding { index: 2, on: true });
        assert_eq!(s.forwarding, HashMap::from([(5, true), (2, true)]));
        s.apply(&Event::DelLink { index: 5, name: "fan-250".into() });
        assert_eq!(s.forwarding, HashMap::from([(2, true)]));
    }

    #[test]
    fn workloads_are_the_bridge_ports_that_are_not_fanlinks() {
        let port = |index, name: &str, master| LinkInfo {
            master,
            alias: None,
            kind: Some("veth".into()),
            ..link(index, name, true)
        };
        let s = dumped(
            vec![
                link(5, "fan-250", true),
                LinkInfo { master: Some(5), ..link(6, "fan-250-vx", true) },
                port(7, "veth1a2b", Some(5)),
                port(8, "tap0", Some(5)),
                port(9, "elsewhere", Some(3)),
                LinkInfo { alias: Some("not ours".into()), ..link(10, "fan-251", true) },
                port(11, "veth-other", Some(10)),
            ],
            vec![],
        );
        assert_eq!(s.workloads(&"fan-250".parse().unwrap()), ["veth1a2b", "tap0"]);
        assert!(s.workloads(&"fan-251".parse().unwrap()).is_empty(), "not fanlink's bridge");
        assert!(s.workloads(&"fan-252".parse().unwrap()).is_empty());
    }
}
