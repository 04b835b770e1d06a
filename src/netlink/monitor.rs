//! Link and address events for the daemon: a socket bound to rtnetlink multicast groups,
//! decoded with the same parsers as the dumps.
//!
//! Subscribe first, then dump, then handle events: anything that changed in between shows
//! up as an event. If the kernel overruns the socket, `recv_events` fails with ENOBUFS and
//! the caller must dump again, since events were lost.

use log::trace;
use nix::errno::Errno;

use super::addr::{parse_addr, AddrInfo};
use super::link::{parse_link, LinkInfo};
use super::{msg, Error, Netlink};

/// Link created or changed (up/down, master, MTU, ...).
pub const RTMGRP_LINK: u32 = 0x1;
/// IPv4 address added or removed.
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
/// Traffic control: qdiscs and filters added or removed (a deleted fan program).
pub const RTMGRP_TC: u32 = 0x8;
/// IPv4 routes added or removed (a default route appearing makes a link routable).
pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// vxlan VNI filter entries added or removed (Linux 5.18); a group number past the 32 bits
/// of `bind`'s mask, joined with NETLINK_ADD_MEMBERSHIP (`join`).
pub const RTNLGRP_TUNNEL: u32 = 35;
/// IPv4 per-namespace and per-device settings (each link's `forwarding` among them).
pub const RTNLGRP_IPV4_NETCONF: u32 = 24;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_NEWNETCONF: u16 = 80;
const RTM_NEWTUNNEL: u16 = 120;
const RTM_DELTUNNEL: u16 = 121;
const AF_BRIDGE: u8 = libc::AF_BRIDGE as u8;
const AF_INET: u8 = libc::AF_INET as u8;
/// `struct netconfmsg`: the family, padded to 4.
const NETCONFMSG_LEN: usize = 1;
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
/// Room for a burst of events (a container start is a handful of messages per link).
const MONITOR_RCVBUF: libc::c_int = 1 << 20;

const SO_ATTACH_FILTER: libc::c_int = 26;

/// The program of `filter_events`. A notification is one message per datagram, so the
/// first message's header (type at byte 4, little-endian u16 on every host fanlink runs on,
/// read a byte at a time) and its `ifinfomsg` family (byte 16) decide.
fn event_filter(routes: bool) -> [libc::sock_filter; 11] {
    const LOAD_BYTE: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JUMP_IF: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const PASS: u32 = u32::MAX;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        /* 0 */ op(LOAD_BYTE, 0, 0, 5), // type, high byte
        /* 1 */ op(JUMP_IF, 0, 7, 0), // every type fanlink drops is < 256; else pass (9)
        /* 2 */ op(LOAD_BYTE, 0, 0, 4), // type, low byte
        /* 3 */ op(JUMP_IF, 0, 2, RTM_NEWLINK.into()), // a link message (4) or not (6)
        /* 4 */ op(LOAD_BYTE, 0, 0, 16), // ifi_family
        /* 5 */ op(JUMP_IF, 4, 3, AF_BRIDGE.into()), // a port's state: drop (10); else pass (9)
        /* 6 */ op(JUMP_IF, 1, 0, RTM_NEWROUTE.into()), // a route (8)
        /* 7 */ op(JUMP_IF, 0, 1, RTM_DELROUTE.into()), // a route (8); else pass (9)
        /* 8 */ op(RETURN, 0, 0, if routes { PASS } else { 0 }),
        /* 9 */ op(RETURN, 0, 0, PASS),
        /* 10 */ op(RETURN, 0, 0, 0),
    ]
}

/// One rtnetlink notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Sent for creation and for every change of a link, so it is "this is the link now".
    NewLink(LinkInfo),
    DelLink {
        index: u32,
        name: String,
    },
    NewAddr(AddrInfo),
    DelAddr(AddrInfo),
    /// A tc qdisc was removed or a filter added or removed, on link `index`.
    Tc {
        index: u32,
    },
    /// An IPv4 route was added or removed.
    Route,
    /// The bridge layer's own message about a port (`AF_BRIDGE`): it lacks the link's kind
    /// and alias, so it says only that `name` joined (`gone` false) or left a bridge.
    Port {
        name: String,
        gone: bool,
    },
    /// A VNI filter entry of link `index` was added or removed.
    Tunnel {
        index: u32,
    },
    /// IPv4 forwarding of link `index` was set (`net.ipv4.conf.LINK.forwarding`; writing
    /// `net.ipv4.ip_forward` sets every link's, and each is announced).
    Forwarding {
        index: u32,
        on: bool,
    },
}

impl Netlink {
    /// A socket receiving the multicast `groups` (e.g. `RTMGRP_LINK | RTMGRP_IPV4_IFADDR`)
    /// of the calling thread's network namespace. Use it only for `recv_events`.
    pub fn monitor(groups: u32) -> Result<Self, Error> {
        let nl = Self::open(nix::sys::socket::SockProtocol::NetlinkRoute, groups)?;
        super::set_int_opt(&nl.fd, libc::SOL_SOCKET, libc::SO_RCVBUF, MONITOR_RCVBUF)
            .map_err(|e| Error::new("open netlink monitor", e))?;
        nl.filter_events(true)?;
        Ok(nl)
    }

    /// Which notifications wake the reader at all, decided in the kernel by a classic BPF
    /// socket filter, so that one fanlink would only drop costs it no wakeup: a bridge port's
    /// own state messages (RTM_NEWLINK of family AF_BRIDGE, e.g. a port reaching forwarding
    /// 15 s after it joined: what kept an idle daemon from being idle) and, unless `routes`,
    /// IPv4 route changes (they matter only while the daemon follows the kernel instead of
    /// networkd). A port leaving a bridge (RTM_DELLINK, AF_BRIDGE) still passes.
    pub fn filter_events(&self, routes: bool) -> Result<(), Error> {
        let program = event_filter(routes);
        let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
        // SAFETY: a valid fd and a pointer to a live sock_fprog whose filter outlives the call
        // (the kernel copies the program).
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        Errno::result(r).map(drop).map_err(|e| Error::new("filter netlink events", e))
    }

    /// Also receives multicast group `group` (a number, such as `RTNLGRP_TUNNEL`).
    pub fn join(&mut self, group: u32) -> Result<(), Error> {
        super::set_int_opt(&self.fd, super::SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group as libc::c_int)
            .map_err(|e| Error::new("join netlink group", e))
    }

    /// Blocks until the kernel sends notifications and returns those of one datagram that
    /// fanlink understands (IPv6 addresses and other message types are skipped). Use `poll`
    /// on the socket (it is `AsFd`) to wait with a timeout.
    pub fn recv_events(&mut self) -> Result<Vec<Event>, Error> {
        let op = "receive netlink events";
        let n = self.recv().map_err(|e| Error::new(op, e))?;
        let buf = &self.buf[..n];
        trace!("netlink event: {}", super::hex(buf));
        let mut out = Vec::new();
        for m in msg::messages(buf) {
            let m = m.map_err(|e| super::malformed(op, e))?;
            let event = match m.ty {
                RTM_NEWLINK | RTM_DELLINK if m.payload.first() == Some(&AF_BRIDGE) => {
                    let l = parse_link(m.payload).map_err(|e| super::malformed(op, e))?;
                    Some(Event::Port { name: l.name, gone: m.ty == RTM_DELLINK })
                }
                RTM_NEWLINK => {
                    Some(Event::NewLink(parse_link(m.payload).map_err(|e| super::malformed(op, e))?))
                }
                RTM_DELLINK => {
                    let l = parse_link(m.payload).map_err(|e| super::malformed(op, e))?;
                    Some(Event::DelLink { index: l.index, name: l.name })
                }
                RTM_NEWADDR => {
                    parse_addr(m.payload).map_err(|e| super::malformed(op, e))?.map(Event::NewAddr)
                }
                RTM_DELADDR => {
                    parse_addr(m.payload).map_err(|e| super::malformed(op, e))?.map(Event::DelAddr)
                }
                // `struct tcmsg` starts with family (u8) and padding, then the ifindex.
                RTM_DELQDISC | RTM_NEWTFILTER | RTM_DELTFILTER => m
                    .payload
                    .get(4..8)
                    .map(|b| Event::Tc { index: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) }),
                RTM_NEWROUTE | RTM_DELROUTE => Some(Event::Route),
                // `struct tunnel_msg`: family, flags, 2 reserved bytes, then the ifindex.
                RTM_NEWTUNNEL | RTM_DELTUNNEL => m
                    .payload
                    .get(4..8)
                    .map(|b| Event::Tunnel { index: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) }),
                RTM_NEWNETCONF => parse_forwarding(m.payload)
                    .map_err(|e| super::malformed(op, e))?
                    .map(|(index, on)| Event::Forwarding { index, on }),
                msg::NLMSG_OVERRUN => return Err(Error::new(op, Errno::ENOBUFS)),
                _ => None,
            };
            out.extend(event);
        }
        Ok(out)
    }
}

/// A link's IPv4 forwarding setting from an RTM_NEWNETCONF, if it carries it: a change of a
/// link's `forwarding` is announced for that link, a change of `net.ipv4.ip_forward` for
/// `all`, `default` and then every link (which fanlink does not need twice), and a new link
/// announces all its settings.
fn parse_forwarding(payload: &[u8]) -> Result<Option<(u32, bool)>, msg::DecodeError> {
    let (hdr, attrs) = msg::split(payload, NETCONFMSG_LEN)?;
    if hdr[0] != AF_INET {
        return Ok(None);
    }
    let (mut index, mut forwarding) = (None, None);
    for a in attrs {
        let a = a?;
        match a.ty {
            NETCONFA_IFINDEX => index = a.u32().map(|i| i as i32),
            NETCONFA_FORWARDING => forwarding = a.u32(),
            _ => {}
        }
    }
    Ok(index.filter(|i| *i > 0).zip(forwarding).map(|(i, f)| (i as u32, f != 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTM_NEWNETCONF as the kernel sends it when a forwarding setting changes
    /// (`inet_netconf_fill_devconf` for NETCONFA_FORWARDING): the family, then the ifindex
    /// and the value, each a native-endian s32.
    fn netconf(family: u8, index: i32, forwarding: i32) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(&[8, 0, 1, 0]);
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&[8, 0, 2, 0]);
        b.extend_from_slice(&forwarding.to_ne_bytes());
        b
    }

    #[test]
    fn a_links_forwarding_setting_is_read_from_netconf() {
        assert_eq!(parse_forwarding(&netconf(2, 3, 0)), Ok(Some((3, false))));
        assert_eq!(parse_forwarding(&netconf(2, 3, 1)), Ok(Some((3, true))));
        // `all` (-1, `net.ipv4.ip_forward`) and `default` (-2) are no link's: each link's
        // own announcement follows them.
        assert_eq!(parse_forwarding(&netconf(2, -1, 0)), Ok(None));
        assert_eq!(parse_forwarding(&netconf(2, -2, 0)), Ok(None));
        // IPv6 (family 10) has its own forwarding.
        assert_eq!(parse_forwarding(&netconf(10, 3, 0)), Ok(None));
        // Another setting of a link (rp_filter, type 3) says nothing about forwarding.
        let mut rp_filter = netconf(2, 3, 1);
        rp_filter[14] = 3;
        assert_eq!(parse_forwarding(&rp_filter), Ok(None));
        assert!(parse_forwarding(&[]).is_err());
    }
}
