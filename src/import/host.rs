//! What the importer asks of this host, for underlays given as an interface (`ens3/16`)
//! or as `default`: the interface's IPv4 addresses, and which link has the default route.
//! Behind a trait so that the translation stays testable without a kernel.

use crate::netlink::Netlink;
use ipnet::Ipv4Net;

/// The host facts an import may need. Errors are messages for the user.
pub trait Host {
    /// The IPv4 addresses of `ifname`, primary first.
    fn addresses(&mut self, ifname: &str) -> Result<Vec<Ipv4Net>, String>;
    /// The name of the link that carries the IPv4 default route of the main table.
    fn default_link(&mut self) -> Result<String, String>;
}

/// The host as netlink sees it, in the calling thread's network namespace. The socket is
/// opened on first use: importing prefixes only needs no privileges and no kernel.
#[derive(Default)]
pub struct NetlinkHost(Option<Netlink>);

impl NetlinkHost {
    fn netlink(&mut self) -> Result<&mut Netlink, String> {
        if self.0.is_none() {
            self.0 = Some(Netlink::new().map_err(|e| e.to_string())?);
        }
        Ok(self.0.as_mut().expect("just opened"))
    }
}

impl Host for NetlinkHost {
    fn addresses(&mut self, ifname: &str) -> Result<Vec<Ipv4Net>, String> {
        let nl = self.netlink()?;
        let link = nl.link_by_name(ifname).map_err(|e| e.to_string())?;
        let link = link.ok_or_else(|| format!("this host has no interface named {ifname}"))?;
        let all = nl.ipv4_addresses().map_err(|e| e.to_string())?;
        Ok(all.into_iter().filter(|a| a.index == link.index).map(|a| a.address).collect())
    }

    /// The main table's default route with the lowest metric, as the kernel picks it.
    /// Multipath defaults name no single link and are skipped.
    fn default_link(&mut self) -> Result<String, String> {
        let nl = self.netlink()?;
        let routes = nl.ipv4_routes().map_err(|e| e.to_string())?;
        let best =
            routes.iter().filter(|r| r.dst.prefix_len() == 0).filter_map(|r| Some((r.metric, r.oif?))).min();
        let (_, index) = best.ok_or("this host has no IPv4 default route")?;
        let links = nl.links().map_err(|e| e.to_string())?;
        let link = links.into_iter().find(|l| l.index == index);
        link.map(|l| l.name).ok_or_else(|| format!("the default route's link (index {index}) is gone"))
    }
}
