//! IPv4 addresses: dump, add, delete. The fan bridge carries exactly one, `X.Y.Z.1/8`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nix::errno::Errno;

use super::msg::{self, DecodeError, MsgBuilder, NLM_F_CREATE, NLM_F_EXCL};
use super::{Error, Netlink};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const AF_INET: u8 = libc::AF_INET as u8;
/// `sizeof(struct ifaddrmsg)`.
const IFADDRMSG_LEN: usize = 8;

/// An IPv4 address on a link, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub address: Ipv4Net,
}

/// `struct ifaddrmsg`: family, prefix length, flags, scope (0 = global), ifindex. In a dump
/// request the kernel (without strict checking) only looks at the family.
fn ifaddrmsg(prefix_len: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut h = [AF_INET, prefix_len, 0, 0, 0, 0, 0, 0];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// Builds RTM_NEWADDR (`add`) or RTM_DELADDR. IFA_LOCAL is the interface's own address and
/// IFA_ADDRESS the peer's; on a broadcast link both are the address, as `ip addr add` sends.
pub fn addr_msg(add: bool, index: u32, net: Ipv4Net) -> MsgBuilder {
    let (ty, flags) = if add { (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL) } else { (RTM_DELADDR, 0) };
    let mut m = MsgBuilder::new(ty, flags).header(&ifaddrmsg(net.prefix_len(), index));
    let ip = net.addr().octets();
    m.bytes(IFA_LOCAL, &ip).bytes(IFA_ADDRESS, &ip);
    // The kernel does not derive a broadcast address; /31 and /32 have none (RFC 3021).
    if add && net.prefix_len() <= 30 {
        m.bytes(IFA_BROADCAST, &net.broadcast().octets());
    }
    m
}

/// Decodes an RTM_NEWADDR/RTM_DELADDR payload; None for non-IPv4 families.
pub fn parse_addr(payload: &[u8]) -> Result<Option<AddrInfo>, DecodeError> {
    let (hdr, attrs) = msg::split(payload, IFADDRMSG_LEN)?;
    if hdr[0] != AF_INET {
        return Ok(None);
    }
    let (mut local, mut address) = (None, None);
    for a in attrs {
        let a = a?;
        // An address of another size is an error: read as absent, IFA_LOCAL would leave
        // IFA_ADDRESS, which on a point-to-point link is the peer's.
        let ip = || {
            <[u8; 4]>::try_from(a.value)
                .map(Ipv4Addr::from)
                .map_err(|_| DecodeError("IPv4 address not 4 bytes"))
        };
        match a.ty {
            IFA_LOCAL => local = Some(ip()?),
            IFA_ADDRESS => address = Some(ip()?),
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always ours when present.
    let Some(ip) = local.or(address) else { return Err(DecodeError("address without IFA_LOCAL")) };
    let address = Ipv4Net::new(ip, hdr[1]).map_err(|_| DecodeError("prefix length over 32"))?;
    Ok(Some(AddrInfo { index: msg::ne_u32(&hdr[4..8]), address }))
}

impl Netlink {
    /// Every IPv4 address in the namespace.
    pub fn ipv4_addresses(&mut self) -> Result<Vec<AddrInfo>, Error> {
        let m = MsgBuilder::new(RTM_GETADDR, 0).header(&ifaddrmsg(0, 0));
        let replies = self.dump(m).map_err(|e| e.context("list addresses", None))?;
        let mut out = Vec::new();
        for p in &replies {
            out.extend(parse_addr(p).map_err(|e| super::malformed("list addresses", e))?);
        }
        Ok(out)
    }

    /// Adds `net` (address and prefix length) to link `index`; EEXIST if it is there.
    pub fn add_address(&mut self, index: u32, net: Ipv4Net) -> Result<(), Error> {
        self.request(addr_msg(true, index, net)).map_err(|e| e.context(format!("add address {net}"), None))
    }

    /// Removes `net` from link `index`; ENOENT if it is not there. The kernel matches on the
    /// local address and the prefix length.
    pub fn delete_address(&mut self, index: u32, net: Ipv4Net) -> Result<(), Error> {
        self.request(addr_msg(false, index, net)).map_err(|e| {
            let e = e.context(format!("delete address {net}"), None);
            // The kernel says EADDRNOTAVAIL; reported as ENOENT so that `missing_ok` covers
            // it without also swallowing EADDRNOTAVAIL's other meaning (an invalid MAC).
            if e.errno == Errno::EADDRNOTAVAIL {
                Error { errno: Errno::ENOENT, ..e }
            } else {
                e
            }
        })
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn add_address_bytes() {
        let b = addr_msg(true, 3, "250.3.4.1/8".parse().unwrap()).finish(1, 0);
        #[rustfmt::skip]
        assert_eq!(&b[msg::NLMSG_HDRLEN..], [
            2, 8, 0, 0, 3, 0, 0, 0,
            8, 0, 2, 0, 250, 3, 4, 1,
            8, 0, 1, 0, 250, 3, 4, 1,
            8, 0, 4, 0, 250, 255, 255, 255,
        ]);
        let a = parse_addr(&b[msg::NLMSG_HDRLEN..]).unwrap().unwrap();
        assert_eq!(a, AddrInfo { index: 3, address: "250.3.4.1/8".parse().unwrap() });
    }

    #[test]
    fn peer_address_does_not_win_over_local() {
        let mut m = MsgBuilder::new(RTM_NEWADDR, 0).header(&ifaddrmsg(32, 7));
        m.bytes(IFA_ADDRESS, &[10, 0, 0, 2]).bytes(IFA_LOCAL, &[10, 0, 0, 1]);
        let b = m.finish(1, 0);
        let a = parse_addr(&b[msg::NLMSG_HDRLEN..]).unwrap().unwrap();
        assert_eq!(a.address, "10.0.0.1/32".parse::<Ipv4Net>().unwrap());
        let none = addr_msg(false, 1, "10.0.0.1/32".parse().unwrap()).finish(1, 0);
        assert_eq!(none.len(), msg::NLMSG_HDRLEN + 8 + 16, "no broadcast on delete or /32");
    }
}
