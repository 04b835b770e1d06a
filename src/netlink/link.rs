//! Links: dump and look up (`LinkInfo`), create the fan's bridge and vxlan, change, delete.
//!
//! Message builders are pure functions so their bytes can be compared with what iproute2
//! sends; the `impl Netlink` methods only send them.

use nix::errno::Errno;

use super::msg::{self, Attrs, DecodeError, MsgBuilder, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use super::{Error, Netlink};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LEARNING: u16 = 7;
const VETH_INFO_PEER: u16 = 1;
const IFLA_VXLAN_PORT: u16 = 15;
const IFLA_VXLAN_COLLECT_METADATA: u16 = 25;
const IFLA_VXLAN_VNIFILTER: u16 = 30;
/// Leaves the ~1 KiB of counters out of every link message; fanlink never reads them.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFF_UP: u32 = 1;
/// The driver signals carrier (RFC 2863 "lower layer up").
const IFF_LOWER_UP: u32 = 0x10000;
/// `sizeof(struct ifinfomsg)`.
pub(crate) const IFINFOMSG_LEN: usize = 16;

/// A link as the kernel reports it (RTM_NEWLINK in a dump or an event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// IFF_UP: administratively up, whatever the carrier.
    pub up: bool,
    /// IFF_LOWER_UP: the link has carrier.
    pub carrier: bool,
    pub mtu: u32,
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, its peer's ifindex.
    pub link: Option<u32>,
    /// IFLA_IFALIAS, where fanlink marks the links it owns.
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    /// IFLA_INFO_KIND, e.g. "bridge", "vxlan"; None for plain devices such as `lo`.
    pub kind: Option<String>,
    pub vxlan: Option<VxlanInfo>,
}

/// The vxlan options that make a device usable as a fan's collect_md tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    pub collect_metadata: bool,
    pub vnifilter: bool,
    pub learning: bool,
    pub port: u16,
}

/// A fan bridge to create. It is created down; bring it up with `set_link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBridge {
    pub name: String,
    pub mtu: u32,
    /// A fixed MAC, so the bridge does not take a port's random one as ports come and go.
    pub mac: Option<[u8; 6]>,
    pub alias: Option<String>,
}

/// A fan vxlan (collect_md, no learning; with vnifilter one per fan, without it the
/// host's one shared device) to create, down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVxlan {
    pub name: String,
    pub mtu: u32,
    pub vnifilter: bool,
    /// UDP port: the device's listen port and the destination of metadata-mode sends.
    pub port: u16,
    pub master: Option<u32>,
    pub alias: Option<String>,
}

/// A veth pair to create, both ends down: `name` a port of `master`, `peer` beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVeth {
    pub name: String,
    pub peer: String,
    pub mtu: u32,
    pub master: Option<u32>,
    pub alias: Option<String>,
}

/// Which link a change addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRef {
    Index(u32),
    Name(String),
}

impl From<u32> for LinkRef {
    fn from(i: u32) -> Self {
        LinkRef::Index(i)
    }
}

impl From<&str> for LinkRef {
    fn from(n: &str) -> Self {
        LinkRef::Name(n.to_owned())
    }
}

/// Changes applied by one RTM_SETLINK; `None` leaves a property alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChanges {
    pub up: Option<bool>,
    pub mtu: Option<u32>,
    /// `Some(0)` releases the link from its master.
    pub master: Option<u32>,
    /// `Some("")` removes the alias.
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
}

/// `struct ifinfomsg`: family AF_UNSPEC, index, flags and the mask of flags to change.
pub(crate) fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut h = [0; IFINFOMSG_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// The flags of a link creation: the echo (where the kernel sends it) gives the new link's
/// index, which every later op on it needs, without a second request.
const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;

pub fn new_bridge_msg(b: &NewBridge) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWLINK, CREATE).header(&ifinfomsg(0, 0, 0));
    m.str(IFLA_IFNAME, &b.name).u32(IFLA_MTU, b.mtu);
    if let Some(mac) = &b.mac {
        m.bytes(IFLA_ADDRESS, mac);
    }
    m.nest(IFLA_LINKINFO, |m| {
        m.str(IFLA_INFO_KIND, "bridge");
    });
    m
}

/// The INFO_DATA bytes match `ip link add NAME type vxlan external vnifilter dstport PORT`
/// (iproute2 adds `nolearning` for `external` by itself; the kernel default is learning on).
pub fn new_vxlan_msg(v: &NewVxlan) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWLINK, CREATE).header(&ifinfomsg(0, 0, 0));
    m.str(IFLA_IFNAME, &v.name).u32(IFLA_MTU, v.mtu);
    if let Some(master) = v.master {
        m.u32(IFLA_MASTER, master);
    }
    m.nest(IFLA_LINKINFO, |m| {
        m.str(IFLA_INFO_KIND, "vxlan").nest(IFLA_INFO_DATA, |m| {
            m.u8(IFLA_VXLAN_COLLECT_METADATA, 1);
            if v.vnifilter {
                m.u8(IFLA_VXLAN_VNIFILTER, 1);
            }
            m.u8(IFLA_VXLAN_LEARNING, 0).be16(IFLA_VXLAN_PORT, v.port);
        });
    });
    m
}

/// `ip link add NAME mtu MTU master M type veth peer name PEER mtu MTU`.
pub fn new_veth_msg(v: &NewVeth) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWLINK, CREATE).header(&ifinfomsg(0, 0, 0));
    m.str(IFLA_IFNAME, &v.name).u32(IFLA_MTU, v.mtu);
    if let Some(master) = v.master {
        m.u32(IFLA_MASTER, master);
    }
    m.nest(IFLA_LINKINFO, |m| {
        m.str(IFLA_INFO_KIND, "veth").nest(IFLA_INFO_DATA, |m| {
            // VETH_INFO_PEER: an ifinfomsg, then the peer's own attributes.
            let mut peer = MsgBuilder::new(0, 0).header(&ifinfomsg(0, 0, 0));
            peer.str(IFLA_IFNAME, &v.peer).u32(IFLA_MTU, v.mtu);
            m.bytes(VETH_INFO_PEER, &peer.finish(0, 0)[msg::NLMSG_HDRLEN..]);
        });
    });
    m
}

/// A message that makes the kernel load the vxlan driver if it is a module (on a kernel
/// with vnifilter, its RTM_*TUNNEL handlers exist only once it is loaded) and then fails
/// its validation: a VNI of 2^24 is out of range, so nothing is created.
pub fn load_vxlan_msg() -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL).header(&ifinfomsg(0, 0, 0));
    m.nest(IFLA_LINKINFO, |m| {
        m.str(IFLA_INFO_KIND, "vxlan").nest(IFLA_INFO_DATA, |m| {
            m.u32(IFLA_VXLAN_ID, 1 << 24);
        });
    });
    m
}

pub fn set_link_msg(link: &LinkRef, c: &LinkChanges) -> MsgBuilder {
    let index = match link {
        LinkRef::Index(i) => *i,
        LinkRef::Name(_) => 0,
    };
    let (flags, change) = match c.up {
        Some(up) => (if up { IFF_UP } else { 0 }, IFF_UP),
        None => (0, 0),
    };
    let mut m = MsgBuilder::new(RTM_SETLINK, 0).header(&ifinfomsg(index, flags, change));
    // With index 0 the kernel looks the link up by IFLA_IFNAME.
    if let LinkRef::Name(name) = link {
        m.str(IFLA_IFNAME, name);
    }
    if let Some(mtu) = c.mtu {
        m.u32(IFLA_MTU, mtu);
    }
    if let Some(master) = c.master {
        m.u32(IFLA_MASTER, master);
    }
    if let Some(alias) = &c.alias {
        // "" is sent as a lone NUL: an empty NLA_STRING fails validation, and the kernel
        // stores "\0" as an empty alias, which it then leaves out of dumps.
        m.str(IFLA_IFALIAS, alias);
    }
    if let Some(mac) = &c.mac {
        m.bytes(IFLA_ADDRESS, mac);
    }
    m
}

/// What a new link is marked with after its creation (see `Netlink::mark_new`).
#[derive(Debug, Clone, Copy)]
struct Mark<'a> {
    alias: Option<&'a str>,
    /// `addrgenmode none`: the link gets no IPv6 link-local address when it comes up.
    no_ipv6_addresses: bool,
}

/// RTM_SETLINK by name with the alias, if any, and `addrgenmode none` if asked.
fn mark_msg(name: &str, mark: Mark) -> MsgBuilder {
    let c = LinkChanges { alias: mark.alias.map(str::to_owned), ..Default::default() };
    let mut m = set_link_msg(&LinkRef::from(name), &c);
    if mark.no_ipv6_addresses {
        m.nest(IFLA_AF_SPEC, |m| {
            m.nest(libc::AF_INET6 as u16, |m| {
                m.u8(IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE);
            });
        });
    }
    m
}

fn alias_only(alias: &Option<String>) -> Mark<'_> {
    Mark { alias: alias.as_deref(), no_ipv6_addresses: false }
}

/// The index of link `name` in the replies to a creation (the kernel's echo of it).
pub fn echoed_index(replies: &[Vec<u8>], name: &str) -> Option<u32> {
    replies.iter().filter_map(|p| parse_link(p).ok()).find(|l| l.name == name).map(|l| l.index)
}

/// Decodes an RTM_NEWLINK payload (dump reply, get reply or event).
pub fn parse_link(payload: &[u8]) -> Result<LinkInfo, DecodeError> {
    let (hdr, attrs) = msg::split(payload, IFINFOMSG_LEN)?;
    let mut l = LinkInfo {
        index: msg::ne_u32(&hdr[4..8]),
        name: String::new(),
        up: msg::ne_u32(&hdr[8..12]) & IFF_UP != 0,
        carrier: msg::ne_u32(&hdr[8..12]) & IFF_LOWER_UP != 0,
        mtu: 0,
        master: None,
        link: None,
        alias: None,
        mac: None,
        kind: None,
        vxlan: None,
    };
    for a in attrs {
        let a = a?;
        match a.ty {
            IFLA_IFNAME => l.name = a.str().to_owned(),
            IFLA_MTU => l.mtu = a.u32().ok_or(DecodeError("short IFLA_MTU"))?,
            IFLA_MASTER => l.master = a.u32().filter(|&m| m != 0),
            IFLA_LINK => l.link = a.u32().filter(|&m| m != 0),
            IFLA_IFALIAS => l.alias = Some(a.str().to_owned()),
            IFLA_ADDRESS => l.mac = a.value.try_into().ok(),
            IFLA_LINKINFO => parse_linkinfo(a.nested(), &mut l)?,
            _ => {}
        }
    }
    Ok(l)
}

fn parse_linkinfo(attrs: Attrs<'_>, l: &mut LinkInfo) -> Result<(), DecodeError> {
    let mut data = None;
    for a in attrs {
        let a = a?;
        match a.ty {
            IFLA_INFO_KIND => l.kind = Some(a.str().to_owned()),
            IFLA_INFO_DATA => data = Some(a),
            _ => {}
        }
    }
    // INFO_DATA's attribute numbers mean something only once the kind is known.
    if let (Some("vxlan"), Some(data)) = (l.kind.as_deref(), data) {
        let mut v = VxlanInfo { collect_metadata: false, vnifilter: false, learning: false, port: 0 };
        for a in data.nested() {
            let a = a?;
            match a.ty {
                // Flags: any non-zero byte is set, as the kernel reads them (nla_get_u8).
                IFLA_VXLAN_COLLECT_METADATA => v.collect_metadata = a.u8().is_some_and(|b| b != 0),
                IFLA_VXLAN_VNIFILTER => v.vnifilter = a.u8().is_some_and(|b| b != 0),
                IFLA_VXLAN_LEARNING => v.learning = a.u8().is_some_and(|b| b != 0),
                IFLA_VXLAN_PORT => v.port = a.be16().unwrap_or(0),
                _ => {}
            }
        }
        l.vxlan = Some(v);
    }
    Ok(())
}

impl Netlink {
    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, Error> {
        let mut m = MsgBuilder::new(RTM_GETLINK, 0).header(&ifinfomsg(0, 0, 0));
        m.u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        let replies = self.dump(m).map_err(|e| e.context("list links", None))?;
        replies.iter().map(|p| parse_link(p).map_err(|e| super::malformed("list links", e))).collect()
    }

    /// The link called `name`, or None if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>, Error> {
        let mut m = MsgBuilder::new(RTM_GETLINK, 0).header(&ifinfomsg(0, 0, 0));
        m.str(IFLA_IFNAME, name).u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        match self.get(m) {
            Ok(replies) => match replies.first() {
                Some(p) => Ok(Some(parse_link(p).map_err(|e| super::malformed("get link", e))?)),
                None => Ok(None),
            },
            Err(e) if e.errno == Errno::ENODEV => Ok(None),
            Err(e) => Err(e.context("get link", Some(name))),
        }
    }

    /// Creates a bridge, down, that will get no IPv6 address; its index if the kernel echoed
    /// it. EEXIST if the name is taken.
    ///
    /// The fan is IPv4 only (the datapath maps IPv4 overlay addresses), so an IPv6 link-local
    /// address on the bridge only costs: each up would add it (DAD, MLD and router
    /// solicitations into the fan) and each down remove it, and with a masquerade rule
    /// anywhere on the host that removal makes the kernel walk the whole conntrack table
    /// once more (bench/README.md, "Found while measuring", 13). LXD disables IPv6 on its fan
    /// bridges likewise. Containers' own IPv6 across the bridge (L2) is untouched.
    pub fn create_bridge(&mut self, b: &NewBridge) -> Result<Option<u32>, Error> {
        let index =
            self.create(new_bridge_msg(b), &b.name).map_err(|e| e.context("create bridge", Some(&b.name)))?;
        self.mark_new(&b.name, Mark { alias: b.alias.as_deref(), no_ipv6_addresses: true })?;
        Ok(index)
    }

    /// Creates a fan vxlan, down; its index if the kernel echoed it. EEXIST if the name is
    /// taken or (without vnifilter support) another external device already uses the port.
    pub fn create_vxlan(&mut self, v: &NewVxlan) -> Result<Option<u32>, Error> {
        let index =
            self.create(new_vxlan_msg(v), &v.name).map_err(|e| e.context("create vxlan", Some(&v.name)))?;
        self.mark_new(&v.name, alias_only(&v.alias))?;
        Ok(index)
    }

    /// Creates a veth pair, both ends down, and marks both ends with the alias; the index of
    /// `name` if the kernel echoed it.
    pub fn create_veth(&mut self, v: &NewVeth) -> Result<Option<u32>, Error> {
        let index =
            self.create(new_veth_msg(v), &v.name).map_err(|e| e.context("create veth", Some(&v.name)))?;
        self.mark_new(&v.name, alias_only(&v.alias))?;
        self.mark_new(&v.peer, alias_only(&v.alias))?;
        Ok(index)
    }

    /// Sends a creation and reads the new link `name`'s index from the echo, if any came.
    fn create(&mut self, m: MsgBuilder, name: &str) -> Result<Option<u32>, Error> {
        Ok(echoed_index(&self.get(m)?, name))
    }

    /// `ip link set NAME addrgenmode none`: the link gets no IPv6 link-local address, so the
    /// host sends nothing from it (no DAD, router solicitation or MLD). Before it is up.
    pub fn no_ipv6_addresses(&mut self, name: &str) -> Result<(), Error> {
        let mark = Mark { alias: None, no_ipv6_addresses: true };
        self.mark(name, mark).map_err(|e| e.context("set addrgenmode none", Some(name)))
    }

    /// Sends `mark`. A link without IPv6 state (a kernel booted with ipv6.disable=1, or an
    /// MTU below IPv6's 1280) refuses the AF_INET6 part, and has nothing to turn off: then
    /// only the alias is sent, if there is one.
    fn mark(&mut self, name: &str, mark: Mark) -> Result<(), Error> {
        match self.request(mark_msg(name, mark)) {
            Err(e) if e.errno == Errno::EAFNOSUPPORT && mark.no_ipv6_addresses => match mark.alias {
                Some(_) => self.request(mark_msg(name, Mark { no_ipv6_addresses: false, ..mark })),
                None => Ok(()),
            },
            r => r,
        }
    }

    /// Asks the kernel to load the vxlan driver (see `load_vxlan_msg`); the expected answer
    /// is ERANGE, any other is the caller's to judge.
    pub fn load_vxlan(&mut self) -> Errno {
        match self.request(load_vxlan_msg()) {
            Ok(()) => Errno::UnknownErrno,
            Err(e) => e.errno,
        }
    }

    /// RTM_NEWLINK silently ignores IFLA_IFALIAS when it creates a link (only the change
    /// path reads it), and refuses IFLA_AF_SPEC for AF_INET6 (the link has no IPv6 state
    /// yet), so both are a second message. If that fails the link is removed again:
    /// fanlink recognises its links by alias, and an unmarked one would be orphaned.
    fn mark_new(&mut self, name: &str, mark: Mark) -> Result<(), Error> {
        if mark.alias.is_none() && !mark.no_ipv6_addresses {
            return Ok(());
        }
        let r = self.mark(name, mark).map_err(|e| e.context("set link", Some(name)));
        if r.is_err() {
            let mut m = MsgBuilder::new(RTM_DELLINK, 0).header(&ifinfomsg(0, 0, 0));
            m.str(IFLA_IFNAME, name);
            if let Err(e) = self.request(m) {
                log::warn!("{name}: removing the link after a failed alias: {e}");
            }
        }
        r
    }

    /// Applies `changes` in one message. The kernel applies master, MTU and MAC before the
    /// up/down flag, so "set master and bring up" is safe in one call.
    pub fn set_link(&mut self, link: impl Into<LinkRef>, changes: &LinkChanges) -> Result<(), Error> {
        let link = link.into();
        let name = match &link {
            LinkRef::Name(n) => Some(n.as_str()),
            LinkRef::Index(_) => None,
        };
        self.request(set_link_msg(&link, changes)).map_err(|e| e.context("set link", name))
    }

    /// Deletes a link; ENODEV if it is already gone.
    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        let m = MsgBuilder::new(RTM_DELLINK, 0).header(&ifinfomsg(index, 0, 0));
        self.request(m).map_err(|e| e.context(format!("delete link {index}"), None))
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn vxlan_info_data_matches_iproute2() {
        let v = NewVxlan {
            name: "fan-vx".into(),
            mtu: 1450,
            vnifilter: true,
            port: 8472,
            master: None,
            alias: None,
        };
        let b = new_vxlan_msg(&v).finish(1, 0);
        // From strace of `ip link add fan-vx type vxlan external vnifilter dstport 8472`.
        #[rustfmt::skip]
        let info_data = [
            36, 0, 2, 0,
            5, 0, 25, 0, 1, 0, 0, 0,
            5, 0, 30, 0, 1, 0, 0, 0,
            5, 0, 7, 0, 0, 0, 0, 0,
            6, 0, 15, 0, 0x21, 0x18, 0, 0,
        ];
        assert!(b.ends_with(&info_data));
        let (_, attrs) = msg::split(&b[msg::NLMSG_HDRLEN..], IFINFOMSG_LEN).unwrap();
        let tys: Vec<u16> = attrs.map(|a| a.unwrap().ty).collect();
        assert_eq!(tys, [IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO]);
        assert_eq!(&b[4..8], [16, 0, 0x09, 0x06], "REQUEST|ECHO|EXCL|CREATE");
    }

    #[test]
    fn bridge_round_trips_through_the_parser() {
        let b = NewBridge {
            name: "fan-250".into(),
            mtu: 1450,
            mac: Some([2, 0, 0, 0, 0, 1]),
            alias: Some("fanlink".into()),
        };
        let bytes = new_bridge_msg(&b).finish(1, 0);
        let l = parse_link(&bytes[msg::NLMSG_HDRLEN..]).unwrap();
        assert_eq!(l.name, "fan-250");
        assert_eq!((l.mtu, l.mac, l.alias), (1450, b.mac, None), "the alias is a second message");
        assert_eq!((l.kind.as_deref(), l.vxlan, l.up), (Some("bridge"), None, false));
    }

    #[test]
    fn the_echo_of_a_creation_gives_the_new_links_index() {
        let mut echo = MsgBuilder::new(RTM_NEWLINK, 0).header(&ifinfomsg(7, 0, 0));
        echo.str(IFLA_IFNAME, "fan-250");
        let echo = echo.finish(1, 0)[msg::NLMSG_HDRLEN..].to_vec();
        let peer = {
            let mut m = MsgBuilder::new(RTM_NEWLINK, 0).header(&ifinfomsg(8, 0, 0));
            m.str(IFLA_IFNAME, "fan-250-p");
            m.finish(2, 0)[msg::NLMSG_HDRLEN..].to_vec()
        };
        let replies = [vec![1, 2, 3], peer, echo];
        assert_eq!(echoed_index(&replies, "fan-250"), Some(7), "a short or other link's reply is skipped");
        assert_eq!(echoed_index(&replies[..2], "fan-250"), None, "no echo (before Linux 6.3): ask");
    }

    #[test]
    fn a_new_bridges_mark_carries_its_alias_and_addrgenmode_none() {
        let b = mark_msg("x", Mark { alias: Some("f"), no_ipv6_addresses: true }).finish(1, 0);
        #[rustfmt::skip]
        assert_eq!(&b[msg::NLMSG_HDRLEN..], [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            6, 0, 3, 0, b'x', 0, 0, 0,
            6, 0, 20, 0, b'f', 0, 0, 0,
            // IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE: IN6_ADDR_GEN_MODE_NONE } }
            16, 0, 26, 0, 12, 0, 10, 0, 5, 0, 8, 0, 1, 0, 0, 0,
        ]);
        let alias_only = mark_msg("x", Mark { alias: Some("f"), no_ipv6_addresses: false }).finish(1, 0);
        let body = |m: &[u8]| m[msg::NLMSG_HDRLEN..].to_vec();
        assert_eq!(body(&alias_only), body(&b[..b.len() - 16]), "a veth or vxlan: its alias only");
    }

    #[test]
    fn set_link_by_name_with_flags() {
        let c =
            LinkChanges { up: Some(true), master: Some(0), alias: Some(String::new()), ..Default::default() };
        let b = set_link_msg(&LinkRef::from("x"), &c).finish(1, 0);
        #[rustfmt::skip]
        assert_eq!(&b[msg::NLMSG_HDRLEN..], [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,
            6, 0, 3, 0, b'x', 0, 0, 0,
            8, 0, 10, 0, 0, 0, 0, 0,
            5, 0, 20, 0, 0, 0, 0, 0,
        ]);
    }
}
