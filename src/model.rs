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

/// What a fan should be on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// No devices, no filter, no NAT: after `fanlink down` or when the rule is removed.
    Absent,
    /// Devices kept, the bridge administratively down, which leaves the program and the NAT
    /// rule without traffic: the underlay is not routable. Containers stay attached.
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
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND`: "bridge", "vxlan", ...
    pub kind: Option<String>,
    /// For a vxlan: whether it is set up as a fan needs (collect_md, vnifilter, no learning, port 8472).
    pub fan_vxlan: bool,
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
}

/// The kernel state `plan` needs, per fan name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub fans: BTreeMap<IfName, ObservedFan>,
    pub forwarding: bool,
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
    /// Load the fan program and attach it to the vxlan's egress, replacing any other.
    AttachProgram {
        vxlan: IfName,
        program: FanProgram,
    },
    /// Create or atomically replace the fan's NAT table.
    WriteNat {
        fan: IfName,
        overlay: Ipv4Net,
    },
    DeleteNat {
        fan: IfName,
    },
    EnableForwarding,
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
            Op::AddVni { vxlan, vni } => write!(f, "add vni {vni} to {vxlan}"),
            Op::SetLink { link, change } => write!(f, "set {link} {change}"),
            Op::AddAddress { link, address } => write!(f, "add address {address} to {link}"),
            Op::DeleteAddress { link, address } => write!(f, "delete address {address} from {link}"),
            Op::AttachProgram { vxlan, program } => {
                write!(f, "attach fan program to {vxlan} egress ({})", program.tag())
            }
            Op::WriteNat { fan, overlay, .. } => {
                write!(f, "write nat table for {fan}: masquerade {overlay} leaving the overlay")
            }
            Op::DeleteNat { fan } => write!(f, "delete nat table of {fan}"),
            Op::EnableForwarding => write!(f, "set net.ipv4.ip_forward = 1"),
            Op::AcceptForwarding { fan } => write!(f, "accept forwarding for {fan} in iptables FORWARD"),
            Op::RemoveForwardAccept { fan } => write!(f, "remove the forwarding accept rules of {fan}"),
            Op::DeleteLink { link } => write!(f, "delete link {link}"),
        }
    }
}
