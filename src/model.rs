//! The states `plan` compares: what a fan should be on this host (`Want`), what the kernel
//! has (`Observed`), and the operations that turn one into the other (`Op`).
//! Plain data, no I/O.

use crate::datapath::bpf::FanProgram;
use crate::ifname::IfName;
use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// fanlink marks what it owns on the kernel objects themselves, so the record travels with
/// the namespace and cannot drift: the interface alias of a fan's bridge and vxlan is
/// `OWNER_PREFIX` + the fan's name.
pub const OWNER_PREFIX: &str = "fanlink:";

/// Marks a fan brought up by hand (`fanlink up --overlay ...`): it has no rule, and the
/// daemon must not take it for a fan whose rule was removed.
const BY_HAND: &str = " by-hand";

pub fn owner_alias(fan: &IfName, by_hand: bool) -> String {
    format!("{OWNER_PREFIX}{fan}{}", if by_hand { BY_HAND } else { "" })
}

/// The fan an alias marks as fanlink's, and whether it was made by hand.
pub fn parse_alias(alias: &str) -> Option<(IfName, bool)> {
    let rest = alias.strip_prefix(OWNER_PREFIX)?;
    match rest.strip_suffix(BY_HAND) {
        Some(fan) => Some((fan.parse().ok()?, true)),
        None => Some((rest.parse().ok()?, false)),
    }
}

/// The host's one `external` vxlan of the shared datapath, and its mark.
pub const SHARED_VXLAN: &str = "fanlink-vx";
pub const SHARED_ALIAS: &str = "fanlink: the fans' shared vxlan";

/// How this host builds a fan's datapath. Chosen by what the kernel supports (`observe`
/// probes it), or forced with FANLINK_DATAPATH (tests, hosts whose probe misleads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// Linux 5.18+: a vxlan per fan, each with its VNI in the vxlan's filter; the kernel
    /// keeps the fans apart.
    #[default]
    Vnifilter,
    /// Before 5.18 the kernel allows one `external` vxlan per UDP port, which receives every
    /// VNI: the host has one (`SHARED_VXLAN`), each fan a veth pair (`<fan>-vx` a port of
    /// its bridge, `<fan>-vp` beside it). The fan program on `<fan>-vx` sends into the
    /// shared vxlan; a filter per fan on its ingress steers the fan's VNI into `<fan>-vx`;
    /// a last filter drops every other VNI.
    Shared,
}

impl Datapath {
    pub fn as_str(&self) -> &'static str {
        match self {
            Datapath::Vnifilter => "vnifilter",
            Datapath::Shared => "shared",
        }
    }
}

impl std::str::FromStr for Datapath {
    type Err = String;
    fn from_str(s: &str) -> Result<Datapath, String> {
        match s {
            "vnifilter" => Ok(Datapath::Vnifilter),
            "shared" => Ok(Datapath::Shared),
            _ => Err(format!("datapath must be auto, vnifilter or shared, not {s:?}")),
        }
    }
}

/// The name of the filter that steers a fan's VNI into its port (its ifindex): how observe
/// tells whose filter it is and whether it is current.
pub fn steer_tag(fan: &IfName, vni: u32, port_index: u32) -> String {
    format!("fanlink steer {fan} vni {vni} to {port_index}")
}

/// The fan a steering filter's name belongs to.
pub fn steer_fan(tag: &str) -> Option<IfName> {
    let rest = tag.strip_prefix("fanlink steer ")?;
    rest.split(' ').next()?.parse().ok()
}

pub const DROP_TAG: &str = "fanlink drop";

/// What a fan should be on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// No devices, no filter, no NAT: after `fanlink down` or when the rule is removed.
    Absent,
    /// Devices kept, the bridge administratively down, which leaves the program and the NAT
    /// rule without traffic: the underlay is not routable (or not known). Containers stay
    /// attached. A fan never up has its bridge alone, made down and without an address, so
    /// that container managers started later find it.
    Down,
    /// Up on this host's underlay address.
    Up(Underlay),
    /// Left as it is: a fan made by hand, which no rule describes.
    Keep,
}

/// This host's place on the underlay of one fan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Underlay {
    pub link: IfName,
    pub address: Ipv4Addr,
    /// The fan's MTU: the rule's, or the underlay link's minus the vxlan overhead.
    pub mtu: u32,
}

/// A network device as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    pub index: u32,
    pub up: bool,
    pub mtu: u32,
    pub master: Option<u32>,
    /// For a veth: its peer's ifindex.
    pub link: Option<u32>,
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND`: "bridge", "vxlan", ...
    pub kind: Option<String>,
    /// For a vxlan: whether it is set up as a fan needs (collect_md, vnifilter, no learning, port 8472).
    pub fan_vxlan: bool,
    /// For a vxlan: set up as the shared datapath's (the same, without vnifilter).
    pub shared_vxlan: bool,
}

/// One fan's objects as observed, found by the fan's device names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedFan {
    pub bridge: Option<Device>,
    pub vxlan: Option<Device>,
    /// IPv4 addresses on the bridge.
    pub bridge_addresses: Vec<Ipv4Net>,
    /// VNIs in the vxlan's filter.
    pub vnis: Vec<u32>,
    /// Name of the BPF filter on the vxlan's egress, if one is attached.
    pub program: Option<String>,
    /// The kernel's id of that program.
    pub program_id: Option<u32>,
    /// The parameters recorded in the fan's NAT table, if the table exists.
    pub nat: Option<String>,
    /// The shared datapath: `<fan>-vp`, the peer of the fan's veth port `<fan>-vx`.
    pub peer: Option<Device>,
    /// The shared datapath: the name of the fan's steering filter on the shared vxlan.
    pub steer: Option<String>,
}

/// The shared datapath's vxlan as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SharedVxlan {
    pub device: Device,
    /// Fans with a steering filter on its ingress.
    pub users: std::collections::BTreeSet<IfName>,
    /// The last filter, which drops the VNIs no fan took, is there.
    pub drop: bool,
}

/// The kernel state `plan` needs, per fan name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub fans: BTreeMap<IfName, ObservedFan>,
    /// The links whose IPv4 forwarding (`net.ipv4.conf.LINK.forwarding`) is on, among the
    /// fans' bridges and the links that may be an underlay (those with an IPv4 address).
    pub forwarding: std::collections::BTreeSet<IfName>,
    /// The datapath this kernel supports (or the one forced).
    pub datapath: Datapath,
    /// `SHARED_VXLAN`, if it exists and is fanlink's.
    pub shared: Option<SharedVxlan>,
    /// Why the shared datapath cannot be built: something not fanlink's has its name.
    pub shared_blocked: Option<String>,
    /// Every fan's vxlan of the vnifilter datapath, whatever fans were asked about: in the
    /// shared datapath (a kernel change) they hold UDP 8472 and must go first.
    pub vnifilter_vxlans: Vec<IfName>,
    /// Vxlans up on UDP 8472 that are not fanlink's (flannel's, LXD's fan): no fan can open
    /// the port while they hold it (see `port`).
    pub port_holders: Vec<String>,
}

/// A change to an existing link; `None` fields stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub master: Option<IfName>,
    pub up: Option<bool>,
    /// fanlink's mark, for a device it made but could not mark (see `plan`).
    pub alias: Option<String>,
}

/// One step of a plan. Each is idempotent at the edge that performs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateBridge {
        bridge: IfName,
        mtu: u32,
        mac: [u8; 6],
        alias: String,
    },
    CreateVxlan {
        vxlan: IfName,
        bridge: IfName,
        mtu: u32,
        alias: String,
    },
    /// The shared datapath's vxlan (`external` without vnifilter), its clsact qdisc and the
    /// last filter on its ingress, which drops what no fan's filter took.
    CreateSharedVxlan {
        mtu: u32,
    },
    /// The shared datapath's port of a fan: `port` in the bridge, `peer` beside it.
    CreateVeth {
        port: IfName,
        peer: IfName,
        bridge: IfName,
        mtu: u32,
        alias: String,
    },
    /// Steer the fan's VNI, arriving on the shared vxlan, into `port`'s receive path.
    AttachSteer {
        fan: IfName,
        vni: u32,
        port: IfName,
    },
    DetachSteer {
        fan: IfName,
        vni: u32,
    },
    AddVni {
        vxlan: IfName,
        vni: u32,
    },
    SetLink {
        link: IfName,
        change: LinkChange,
    },
    AddAddress {
        link: IfName,
        address: Ipv4Net,
    },
    DeleteAddress {
        link: IfName,
        address: Ipv4Net,
    },
    /// Load the fan program and attach it to the vxlan's (or veth port's) egress, replacing
    /// any other. `via`: the shared vxlan the program sends into (its ifindex is read when
    /// the op is applied, as it may be made by the same plan).
    AttachProgram {
        vxlan: IfName,
        program: FanProgram,
        via: Option<IfName>,
    },
    /// Create or atomically replace the fan's NAT table.
    WriteNat {
        fan: IfName,
        overlay: Ipv4Net,
    },
    DeleteNat {
        fan: IfName,
    },
    /// Turn on IPv4 forwarding for packets that come in on `link` (the kernel decides by
    /// the input interface): a fan's bridge, or its underlay link. Never host-wide.
    EnableForwarding {
        link: IfName,
    },
    /// Accept the bridge's traffic in iptables' FORWARD chains that exist (Docker's DROP).
    AcceptForwarding {
        fan: IfName,
    },
    RemoveForwardAccept {
        fan: IfName,
    },
    DeleteLink {
        link: IfName,
    },
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl fmt::Display for LinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(mtu) = self.mtu {
            parts.push(format!("mtu {mtu}"));
        }
        if let Some(mac) = &self.mac {
            parts.push(format!("address {}", format_mac(mac)));
        }
        if let Some(master) = &self.master {
            parts.push(format!("master {master}"));
        }
        if let Some(alias) = &self.alias {
            parts.push(format!("alias {alias}"));
        }
        if let Some(up) = self.up {
            parts.push((if up { "up" } else { "down" }).to_string());
        }
        f.write_str(&parts.join(" "))
    }
}

/// Reads like the `ip`/`tc`/`nft` command a person would type for the same step.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateBridge { bridge, mtu, mac, alias } => write!(
                f,
                "create bridge {bridge} mtu {mtu} address {} alias {alias}",
                format_mac(mac)
            ),
            Op::CreateVxlan { vxlan, bridge, mtu, alias } => write!(
                f,
                "create vxlan {vxlan} external vnifilter nolearning dstport {} mtu {mtu} master {bridge} alias {alias}",
                crate::fan::FAN_UDP_PORT
            ),
            Op::CreateSharedVxlan { mtu } => write!(
                f,
                "create vxlan {SHARED_VXLAN} external nolearning dstport {} mtu {mtu} alias {SHARED_ALIAS:?}, \
                 dropping on ingress what no fan takes",
                crate::fan::FAN_UDP_PORT
            ),
            Op::CreateVeth { port, peer, bridge, mtu, alias } => {
                write!(f, "create veth {port} peer {peer} mtu {mtu} master {bridge} alias {alias}")
            }
            Op::AttachSteer { fan, vni, port } => {
                write!(f, "steer vni {vni} from {SHARED_VXLAN} ingress into {port} ({fan})")
            }
            Op::DetachSteer { fan, vni } => write!(f, "stop steering vni {vni} ({fan})"),
            Op::AddVni { vxlan, vni } => write!(f, "add vni {vni} to {vxlan}"),
            Op::SetLink { link, change } => write!(f, "set {link} {change}"),
            Op::AddAddress { link, address } => write!(f, "add address {address} to {link}"),
            Op::DeleteAddress { link, address } => write!(f, "delete address {address} from {link}"),
            Op::AttachProgram { vxlan, program, via: None } => {
                write!(f, "attach fan program to {vxlan} egress ({})", program.tag())
            }
            Op::AttachProgram { vxlan, program, via: Some(via) } => {
                write!(f, "attach fan program to {vxlan} egress ({} via {via})", program.tag())
            }
            Op::WriteNat { fan, overlay, .. } => {
                write!(f, "write nat table for {fan}: masquerade {overlay} leaving the overlay")
            }
            Op::DeleteNat { fan } => write!(f, "delete nat table of {fan}"),
            // sysctl(8)'s name: a dot in the interface name is written as a slash.
            Op::EnableForwarding { link } => {
                write!(f, "set net.ipv4.conf.{}.forwarding = 1", link.as_str().replace('.', "/"))
            }
            Op::AcceptForwarding { fan } => write!(f, "accept forwarding for {fan} in the firewalls that drop it"),
            Op::RemoveForwardAccept { fan } => write!(f, "remove the forwarding accept rules of {fan}"),
            Op::DeleteLink { link } => write!(f, "delete link {link}"),
        }
    }
}
