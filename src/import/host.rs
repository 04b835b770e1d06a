//! What the importer asks of this host, for underlays given as an interface (`ens3/16`)
//! or as `default`: the interface's IPv4 addresses, and which link has the default route.
//! Behind a trait so that the translation stays testable without a kernel.

use crate::netlink::msg::{self, MsgBuilder};
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

const RTM_GETROUTE: u16 = 26;
/// `sizeof(struct rtmsg)`.
const RTMSG_LEN: usize = 12;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;

impl Host for NetlinkHost {
    fn addresses(&mut self, ifname: &str) -> Result<Vec<Ipv4Net>, String> {
        let nl = self.netlink()?;
        let link = nl.link_by_name(ifname).map_err(|e| e.to_string())?;
        let link = link.ok_or_else(|| format!("this host has no interface named {ifname}"))?;
        let all = nl.ipv4_addresses().map_err(|e| e.to_string())?;
        Ok(all.into_iter().filter(|a| a.index == link.index).map(|a| a.address).collect())
    }

    /// Dumps the IPv4 routes and keeps main-table unicast routes of length 0; the lowest
    /// metric wins, as it does for the kernel. Multipath defaults have no RTA_OIF and are
    /// skipped: they name no single link.
    fn default_link(&mut self) -> Result<String, String> {
        let nl = self.netlink()?;
        let header = [libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let replies = nl.dump(MsgBuilder::new(RTM_GETROUTE, 0).header(&header)).map_err(|e| e.to_string())?;
        let mut best: Option<(u32, u32)> = None;
        for payload in &replies {
            let Ok((hdr, attrs)) = msg::split(payload, RTMSG_LEN) else { continue };
            let (mut table, mut oif, mut metric) = (u32::from(hdr[4]), None, 0);
            for a in attrs.flatten() {
                match a.ty {
                    RTA_TABLE => table = a.u32().unwrap_or(table),
                    RTA_OIF => oif = a.u32(),
                    RTA_PRIORITY => metric = a.u32().unwrap_or(0),
                    _ => {}
                }
            }
            let is_default = hdr[1] == 0 && hdr[7] == RTN_UNICAST && table == u32::from(RT_TABLE_MAIN);
            if let (true, Some(index)) = (is_default, oif) {
                if best.is_none_or(|(m, _)| metric < m) {
                    best = Some((metric, index));
                }
            }
        }
        let (_, index) = best.ok_or("this host has no IPv4 default route")?;
        let links = nl.links().map_err(|e| e.to_string())?;
        let link = links.into_iter().find(|l| l.index == index);
        link.map(|l| l.name).ok_or_else(|| format!("the default route's link (index {index}) is gone"))
    }
}
