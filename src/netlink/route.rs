//! IPv4 routes of the main table: which link has the default route (for `import`), and which
//! links have a route beyond their own subnet (the kernel's "routable", for hosts without
//! networkd).

use super::msg::{self, MsgBuilder};
use super::{Error, Netlink};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

const RTM_GETROUTE: u16 = 26;
/// `sizeof(struct rtmsg)`.
const RTMSG_LEN: usize = 12;
const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;

/// A unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Net,
    /// The output link; `None` for multipath routes, which name no single link.
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub metric: u32,
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

/// Decodes one RTM_NEWROUTE payload; `None` for routes of other tables or types.
pub fn parse_route(payload: &[u8]) -> Result<Option<RouteInfo>, msg::DecodeError> {
    let (hdr, attrs) = msg::split(payload, RTMSG_LEN)?;
    let (dst_len, kind) = (hdr[1], hdr[7]);
    let (mut table, mut dst, mut oif, mut gateway, mut metric) = (u32::from(hdr[4]), None, None, None, 0);
    for a in attrs {
        let a = a?;
        match a.ty {
            RTA_TABLE => table = a.u32().unwrap_or(table),
            RTA_DST => dst = ipv4(a.value),
            RTA_OIF => oif = a.u32(),
            RTA_GATEWAY => gateway = ipv4(a.value),
            RTA_PRIORITY => metric = a.u32().unwrap_or(0),
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN || kind != RTN_UNICAST {
        return Ok(None);
    }
    let dst = Ipv4Net::new(dst.unwrap_or(Ipv4Addr::UNSPECIFIED), dst_len)
        .map_err(|_| msg::DecodeError("route prefix"))?;
    Ok(Some(RouteInfo { dst, oif, gateway, metric }))
}

impl Netlink {
    /// The IPv4 unicast routes of the main table.
    pub fn ipv4_routes(&mut self) -> Result<Vec<RouteInfo>, Error> {
        let header = [libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let replies = self.dump(MsgBuilder::new(RTM_GETROUTE, 0).header(&header))?;
        let mut routes = Vec::new();
        for p in &replies {
            routes.extend(parse_route(p).map_err(|e| super::malformed("list routes", e))?);
        }
        Ok(routes)
    }
}
