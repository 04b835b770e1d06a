//! Which link and address carry a fan on this host. Pure: the caller passes the links it
//! observed (from netlink) and, in the daemon, which of them networkd calls routable.

use crate::config::Rule;
use crate::fan::VXLAN_OVERHEAD;
use crate::ifname::IfName;
use crate::model::{Underlay, OWNER_PREFIX};
use ipnet::Ipv4Net;

/// A link with its IPv4 addresses, in the kernel's order (primary addresses first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub alias: Option<String>,
    pub addresses: Vec<Ipv4Net>,
}

impl HostLink {
    /// fanlink's own devices go routable too; they never carry a fan.
    pub fn is_fanlink_device(&self) -> bool {
        self.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_PREFIX))
    }
}

/// Finds the underlay of `rule` among `links`: the rule's `interface`, or else the link
/// holding an address inside the rule's underlay. Host routes (/32, such as a VIP) are used
/// only when nothing else is there, since a VIP moves between hosts; among equals the lowest
/// ifindex wins, so the choice is stable.
pub fn find(rule: &Rule, links: &[HostLink]) -> Result<Underlay, String> {
    let underlay = rule.map.underlay();
    let candidates: Vec<&HostLink> = links
        .iter()
        .filter(|l| !l.is_fanlink_device())
        .filter(|l| rule.interface.as_ref().is_none_or(|i| i.as_str() == l.name))
        .collect();
    if let Some(wanted) = &rule.interface {
        if candidates.is_empty() {
            return Err(format!("the underlay interface {wanted} does not exist"));
        }
    }
    let mut best: Option<(&HostLink, Ipv4Net)> = None;
    for link in &candidates {
        for address in link.addresses.iter().filter(|a| underlay.contains(&a.addr())) {
            let better = match best {
                None => true,
                Some((_, b)) => b.prefix_len() == 32 && address.prefix_len() < 32,
            };
            if better {
                best = Some((link, *address));
            }
        }
    }
    let (link, address) = best.ok_or_else(|| match &rule.interface {
        Some(i) => format!("{i} has no IPv4 address inside the underlay {underlay}"),
        None => format!("no link has an IPv4 address inside the underlay {underlay}"),
    })?;
    let link_name: IfName = link.name.parse().map_err(|e| format!("underlay link: {e}"))?;
    let mtu = rule.mtu.unwrap_or(link.mtu.saturating_sub(VXLAN_OVERHEAD));
    Ok(Underlay { link: link_name, address: address.addr(), mtu })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_all;
    use std::path::PathBuf;

    fn rule(extra: &str) -> Rule {
        let text = format!("[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n{extra}");
        parse_all(&[(PathBuf::from("t.toml"), text)]).0.remove(0)
    }

    fn link(index: u32, name: &str, addresses: &[&str]) -> HostLink {
        HostLink {
            index,
            name: name.into(),
            mtu: 1500,
            alias: None,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn picks_the_link_in_the_underlay() {
        let links = [link(1, "lo", &["127.0.0.1/8"]), link(2, "ens3", &["192.168.9.2/24", "10.0.3.4/16"])];
        let u = find(&rule(""), &links).unwrap();
        assert_eq!((u.link.as_str(), u.address.to_string(), u.mtu), ("ens3", "10.0.3.4".into(), 1450));
        assert_eq!(find(&rule("mtu = 1400\n"), &links).unwrap().mtu, 1400);
    }

    #[test]
    fn a_vip_loses_to_a_real_address_and_fanlink_devices_never_count() {
        let mut fan = link(3, "fan-250", &["10.0.77.1/16"]);
        fan.alias = Some("fanlink:fan-250".into());
        let links = [link(2, "ens3", &["10.0.9.9/32", "10.0.3.4/24"]), fan];
        assert_eq!(find(&rule(""), &links).unwrap().address.to_string(), "10.0.3.4");
    }

    #[test]
    fn the_named_interface_or_a_clear_error() {
        let links = [link(2, "ens3", &["10.0.3.4/16"]), link(3, "ens4", &["10.0.8.8/16"])];
        assert_eq!(find(&rule("interface = \"ens4\"\n"), &links).unwrap().address.to_string(), "10.0.8.8");
        assert_eq!(
            find(&rule("interface = \"ens9\"\n"), &links),
            Err("the underlay interface ens9 does not exist".into())
        );
        let links = [link(2, "ens3", &["192.168.1.2/24"])];
        assert_eq!(
            find(&rule("interface = \"ens3\"\n"), &links),
            Err("ens3 has no IPv4 address inside the underlay 10.0.0.0/16".into())
        );
        assert_eq!(
            find(&rule(""), &links),
            Err("no link has an IPv4 address inside the underlay 10.0.0.0/16".into())
        );
    }
}
