//! The host's edges for `plan`: `observe` reads the kernel (netlink dumps, nft, sysctl) into
//! an `Observed`, `apply` performs one `Op`. Each op is idempotent here: "already exists"
//! and "already gone" count as done, so a plan cut short by a crash can be applied again.

use crate::config::{vxlan_name_for, Rule};
use crate::datapath::bpf::FanProgram;
use crate::datapath::{bpf, firewall, nft, sysctl};
use crate::fan::FAN_UDP_PORT;
use crate::ifname::IfName;
use crate::model::{
    parse_alias, steer_fan, steer_tag, Datapath, Device, Observed, ObservedFan, Op, SharedVxlan, DROP_TAG,
    SHARED_ALIAS, SHARED_VXLAN,
};
use crate::netlink::{self, tc, LinkChanges, LinkInfo, Netlink, NewBridge, NewVeth, NewVxlan, Tolerate};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Why observing or applying failed, with what a person can do about it.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// Not a `#[source]`: the message already says all of it, hint included.
    #[error("{error}{}", netlink_hint(error))]
    Netlink { error: netlink::Error },
    #[error(transparent)]
    Bpf(#[from] bpf::LoadError),
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error("{link}: no such link")]
    NoLink { link: IfName },
    #[error("{0}")]
    Config(String),
}

impl From<netlink::Error> for SystemError {
    fn from(error: netlink::Error) -> SystemError {
        SystemError::Netlink { error }
    }
}

/// Capability bits (linux/capability.h) that fanlink's ops need.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Checks, before anything is changed, that this process may do what `ops` need: a plan
/// is not started only to fail half-way for want of a privilege.
pub fn preflight(ops: &[Op]) -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !ops.is_empty() && !has(CAP_NET_ADMIN) {
        return Err("fanlink needs root or CAP_NET_ADMIN to change links, tc and nftables".into());
    }
    let loads_bpf = ops.iter().any(|op| matches!(op, Op::AttachProgram { .. }));
    if loads_bpf && !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        // Linux before 5.8 knows no CAP_BPF: the shipped unit must grant CAP_SYS_ADMIN there.
        return Err("loading the fan's BPF program needs CAP_BPF (Linux 5.8 and later) or CAP_SYS_ADMIN; \
             before 5.8 under systemd, `systemctl edit fanlink` and add: \
             [Service] CapabilityBoundingSet=CAP_SYS_ADMIN"
            .into());
    }
    Ok(())
}

/// Hints for the errnos a fan host meets, naming the missing privilege or kernel feature.
fn netlink_hint(e: &netlink::Error) -> &'static str {
    use nix::errno::Errno;
    match e.errno {
        Errno::EPERM | Errno::EACCES => "; fanlink needs root or CAP_NET_ADMIN",
        Errno::EOPNOTSUPP if e.op.contains("vxlan") => {
            "; this kernel's vxlan lacks collect_md or vnifilter (vnifilter needs Linux 5.18)"
        }
        Errno::EOPNOTSUPP if e.op.contains("vni") => "; vxlan vnifilter needs Linux 5.18",
        Errno::EOPNOTSUPP | Errno::ENOENT if e.op.contains("clsact") || e.op.contains("bpf") => {
            "; tc clsact and cls_bpf need Linux 4.5 with CONFIG_NET_CLS_BPF"
        }
        _ => "",
    }
}

/// A fan's own devices carry the owner alias: the fans found that way, each with whether
/// it was made by hand.
fn fans_in_kernel(links: &[LinkInfo]) -> BTreeMap<IfName, bool> {
    links.iter().filter_map(|l| parse_alias(l.alias.as_deref()?)).collect()
}

fn device(link: &LinkInfo) -> Device {
    let md = |vnifilter: bool| {
        link.vxlan.is_some_and(|v| {
            v.collect_metadata && v.vnifilter == vnifilter && !v.learning && v.port == FAN_UDP_PORT
        })
    };
    Device {
        index: link.index,
        up: link.up,
        mtu: link.mtu,
        master: link.master,
        link: link.link,
        alias: link.alias.clone(),
        mac: link.mac,
        kind: link.kind.clone(),
        fan_vxlan: md(true),
        shared_vxlan: md(false),
    }
}

pub use crate::snapshot::Snapshot;

impl Snapshot {
    /// Every fan known here: those with rules, and those whose devices say they are ours.
    pub fn fan_names(&self, rules: &[Rule]) -> BTreeSet<IfName> {
        let mut names: BTreeSet<IfName> = fans_in_kernel(&self.links).into_keys().collect();
        names.extend(rules.iter().map(|r| r.name.clone()));
        names
    }

    /// The fans of ours in the kernel, each with whether it was made by hand.
    pub fn kernel_fans(&self) -> BTreeMap<IfName, bool> {
        fans_in_kernel(&self.links)
    }
}

fn shared_name() -> IfName {
    SHARED_VXLAN.parse().expect("a valid name")
}

/// One netlink socket for the whole run.
pub struct System {
    nl: Netlink,
    /// The datapath, probed once (a kernel does not change under a running process).
    datapath: Option<Datapath>,
    /// Link indexes by name for the ops of the current plan, so that each op on a link costs
    /// no lookup request: the fans' links `observe` saw, and those created or looked up
    /// since. `observe` starts every plan and so starts this afresh; a creation records the
    /// index the kernel echoed (else it is asked once), a deletion forgets them all.
    indexes: HashMap<IfName, u32>,
}

/// Forces the datapath (`vnifilter`, `shared`; `auto` or unset: probe the kernel).
pub const DATAPATH_ENV: &str = "FANLINK_DATAPATH";

impl System {
    pub fn open() -> Result<System, SystemError> {
        Ok(System { nl: Netlink::new()?, datapath: None, indexes: HashMap::new() })
    }

    /// The datapath this host uses: FANLINK_DATAPATH if set, else what the kernel supports.
    pub fn datapath(&mut self) -> Result<Datapath, SystemError> {
        if let Some(d) = self.datapath {
            return Ok(d);
        }
        let forced = std::env::var(DATAPATH_ENV).ok().filter(|v| !v.is_empty() && v != "auto");
        let d = match forced {
            Some(v) => v.parse().map_err(|e: String| SystemError::Config(format!("{DATAPATH_ENV}: {e}")))?,
            None if self.nl.has_vnifilter()? => Datapath::Vnifilter,
            None => Datapath::Shared,
        };
        self.datapath = Some(d);
        Ok(d)
    }

    /// Refuses a kernel older than fanlink's minimum (Linux 5.1: the BPF JMP32 instructions
    /// its programs use; everything else it needs is older), naming what is missing. Checked
    /// before anything is changed. Without the privilege to ask, the kernel is not judged:
    /// `preflight` reports the privilege.
    pub fn check_kernel(&mut self) -> Result<(), SystemError> {
        match bpf::supports_jmp32() {
            Ok(true) | Err(_) => Ok(()),
            Ok(false) => Err(SystemError::Config(
                "this kernel's BPF verifier lacks the JMP32 instructions (Linux 5.1) that fanlink's \
                 programs use; fanlink needs Linux 5.1 or later"
                    .into(),
            )),
        }
    }

    /// Dumps links and addresses (two requests); filters, VNIs, routes and the links'
    /// forwarding settings are read when first needed.
    pub fn snapshot(&mut self) -> Result<Snapshot, SystemError> {
        Ok(Snapshot::new(self.nl.links()?, self.nl.ipv4_addresses()?))
    }

    /// Which of the fans' bridges and of the links with an IPv4 address (any underlay has
    /// one) forward IPv4: from `snap`, else read into it (one small file each, once: the
    /// netconf events keep them).
    fn forwarding(
        &self,
        snap: &mut Snapshot,
        fans: &BTreeSet<IfName>,
    ) -> Result<BTreeSet<IfName>, SystemError> {
        let wanted: Vec<(u32, String)> = snap
            .links
            .iter()
            .filter(|l| {
                fans.iter().any(|f| f.as_str() == l.name) || snap.addresses.iter().any(|a| a.index == l.index)
            })
            .map(|l| (l.index, l.name.clone()))
            .collect();
        let mut on = BTreeSet::new();
        for (index, name) in wanted {
            let known = match snap.forwarding.get(&index) {
                Some(known) => Some(*known),
                None => sysctl::forwarding(&name)?,
            };
            if let Some(known) = known {
                snap.forwarding.insert(index, known);
                on.extend(known.then(|| name.parse().ok()).flatten());
            }
        }
        Ok(on)
    }

    /// The cls_bpf filters at a hook of link `index`: from `snap`, else read into it.
    fn filters(
        &mut self,
        snap: &mut Snapshot,
        index: u32,
        egress: bool,
    ) -> Result<Vec<tc::FilterInfo>, SystemError> {
        if let Some(f) = snap.filters.get(&(index, egress)) {
            return Ok(f.clone());
        }
        let f = self.nl.bpf_filters(index, egress)?;
        snap.filters.insert((index, egress), f.clone());
        Ok(f)
    }

    /// What the kernel has of `fans`. `nat` is the list of fanlink's NAT tables, read by
    /// the caller (one nf_tables dump, so the daemon reads it only when nftables changed).
    /// Costs no request when `snap` already holds the filters and VNIs of the fans' devices.
    pub fn observe(
        &mut self,
        snap: &mut Snapshot,
        fans: &BTreeSet<IfName>,
        nat: &[nft::NatTable],
    ) -> Result<Observed, SystemError> {
        let forwarding = self.forwarding(snap, fans)?;
        let mut observed = Observed { forwarding, datapath: self.datapath()?, ..Default::default() };
        observed.vnifilter_vxlans = snap
            .links
            .iter()
            .filter(|l| l.alias.as_deref().and_then(parse_alias).is_some() && device(l).fan_vxlan)
            .filter_map(|l| l.name.parse().ok())
            .collect();
        observed.port_holders = crate::port::holders(&snap.links);
        self.indexes.clear();
        let mut steers = BTreeMap::new();
        if let Some((device, alias)) = snap.link(SHARED_VXLAN).map(|l| (device(l), l.alias.clone())) {
            let index = device.index;
            let ours = alias.as_deref() == Some(SHARED_ALIAS) || (alias.is_none() && device.shared_vxlan);
            if ours {
                let mut shared = SharedVxlan { device, ..Default::default() };
                for f in self.filters(snap, index, false)? {
                    if f.name == DROP_TAG {
                        shared.drop = true;
                    } else if let Some(fan) = steer_fan(&f.name) {
                        shared.users.insert(fan.clone());
                        steers.insert(fan, f.name);
                    }
                }
                observed.shared = Some(shared);
            } else {
                observed.shared_blocked = Some(format!(
                    "a device named {SHARED_VXLAN} exists that fanlink does not own (its alias is {:?}); \
                     the shared datapath needs the name",
                    alias.as_deref().unwrap_or("")
                ));
            }
        }
        for fan in fans {
            // Read what `snap` lacks first: the links below borrow it.
            let ours =
                |l: &LinkInfo| l.alias.as_deref().and_then(parse_alias).is_some_and(|(f, _)| &f == fan);
            if let Some(v) =
                snap.link(vxlan_name_for(fan).as_str()).filter(|l| ours(l)).map(|l| (l.index, device(l)))
            {
                if v.1.fan_vxlan && !snap.vnis.contains_key(&v.0) {
                    let vnis = self.nl.vnis(v.0)?;
                    snap.vnis.insert(v.0, vnis);
                }
                self.filters(snap, v.0, true)?;
            }
            let bridge = snap.link(fan.as_str());
            let vxlan = snap.link(vxlan_name_for(fan).as_str());
            let peer = snap.link(crate::plan::peer_name_for(fan).as_str());
            let shared = snap.link(SHARED_VXLAN);
            for l in [bridge, vxlan, peer, shared].into_iter().flatten() {
                if let Ok(name) = l.name.parse() {
                    self.indexes.insert(name, l.index);
                }
            }
            let mut seen = ObservedFan {
                bridge: bridge.map(device),
                vxlan: vxlan.map(device),
                peer: peer.map(device),
                steer: steers.remove(fan),
                nat: nat.iter().find(|t| t.fan.as_deref() == Some(fan.as_str())).map(|t| t.params.clone()),
                ..Default::default()
            };
            if let Some(b) = bridge {
                seen.bridge_addresses =
                    snap.addresses.iter().filter(|a| a.index == b.index).map(|a| a.address).collect();
            }
            // Only a device of ours is asked about its VNIs and filters.
            if let Some(v) = vxlan.filter(|l| ours(l)) {
                if seen.vxlan.as_ref().is_some_and(|d| d.fan_vxlan) {
                    seen.vnis = snap.vnis.get(&v.index).cloned().unwrap_or_default();
                }
                if let Some(filter) = snap.filters.get(&(v.index, true)).and_then(|f| f.first()) {
                    seen.program = Some(filter.name.clone());
                    seen.program_id = filter.prog_id;
                }
            }
            observed.fans.insert(fan.clone(), seen);
        }
        Ok(observed)
    }

    /// The index of `link`: known in this plan, else asked (and then known).
    fn index(&mut self, link: &IfName) -> Result<u32, SystemError> {
        if let Some(&index) = self.indexes.get(link) {
            return Ok(index);
        }
        match self.nl.link_by_name(link.as_str())? {
            Some(l) => {
                self.indexes.insert(link.clone(), l.index);
                Ok(l.index)
            }
            None => Err(SystemError::NoLink { link: link.clone() }),
        }
    }

    /// Records what a creation of `link` did: its index if the kernel echoed it; "already
    /// exists" is done, and then the link that exists is asked about when needed.
    fn created(
        &mut self,
        link: &IfName,
        result: Result<Option<u32>, netlink::Error>,
    ) -> Result<(), SystemError> {
        self.indexes.remove(link);
        match result {
            Ok(index) => {
                self.indexes.extend(index.map(|i| (link.clone(), i)));
                Ok(())
            }
            Err(e) if e.is_exists() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `Op::AcceptForwarding`, saying whether it changed any firewall.
    pub fn accept_forwarding(&mut self, fan: &IfName) -> Result<bool, SystemError> {
        Ok(firewall::ensure_forward_accept(fan, fan)?)
    }

    /// Performs one op.
    pub fn apply(&mut self, op: &Op) -> Result<(), SystemError> {
        match op {
            Op::CreateBridge { bridge, mtu, mac, alias } => {
                let new = NewBridge {
                    name: bridge.to_string(),
                    mtu: *mtu,
                    mac: Some(*mac),
                    alias: Some(alias.clone()),
                };
                let result = self.nl.create_bridge(&new);
                self.created(bridge, result)?;
            }
            Op::CreateVxlan { vxlan, bridge, mtu, alias } => {
                let master = Some(self.index(bridge)?);
                let new = NewVxlan {
                    name: vxlan.to_string(),
                    mtu: *mtu,
                    vnifilter: true,
                    port: FAN_UDP_PORT,
                    master,
                    alias: Some(alias.clone()),
                };
                let result = self.nl.create_vxlan(&new);
                self.created(vxlan, result)?;
            }
            Op::AddVni { vxlan, vni } => {
                let index = self.index(vxlan)?;
                self.nl.add_vni(index, *vni).exists_ok()?;
            }
            Op::SetLink { link, change } => {
                let master = match &change.master {
                    Some(m) => Some(self.index(m)?),
                    None => None,
                };
                let changes = LinkChanges {
                    up: change.up,
                    mtu: change.mtu,
                    master,
                    alias: change.alias.clone(),
                    mac: change.mac,
                };
                self.nl.set_link(link.as_str(), &changes)?;
            }
            Op::AddAddress { link, address } => {
                let index = self.index(link)?;
                self.nl.add_address(index, *address).exists_ok()?;
            }
            Op::DeleteAddress { link, address } => {
                let index = self.index(link)?;
                self.nl.delete_address(index, *address).missing_ok()?;
            }
            Op::CreateSharedVxlan { mtu } => {
                let new = NewVxlan {
                    name: SHARED_VXLAN.to_string(),
                    mtu: *mtu,
                    vnifilter: false,
                    port: FAN_UDP_PORT,
                    master: None,
                    alias: Some(SHARED_ALIAS.to_string()),
                };
                let result = self.nl.create_vxlan(&new);
                self.created(&shared_name(), result)?;
                let index = self.index(&shared_name())?;
                self.nl.add_clsact(index).exists_ok()?;
                let fd = bpf::load(&bpf::drop_all(), "fanlink_drop")?;
                use std::os::fd::AsFd;
                self.nl.attach_bpf_at(
                    index,
                    false,
                    (tc::LAST_PRIO, tc::FILTER_HANDLE),
                    fd.as_fd(),
                    DROP_TAG,
                )?;
                let up = LinkChanges { up: Some(true), ..Default::default() };
                self.nl.set_link(index, &up)?;
            }
            Op::CreateVeth { port, peer, bridge, mtu, alias } => {
                let master = Some(self.index(bridge)?);
                let new = NewVeth {
                    name: port.to_string(),
                    peer: peer.to_string(),
                    mtu: *mtu,
                    master,
                    alias: Some(alias.clone()),
                };
                let result = self.nl.create_veth(&new);
                self.created(port, result)?;
                self.indexes.remove(peer);
                // Nothing of the host's may enter the fan's bridge through the peer (its
                // IPv6 link-local chatter would teach the bridge the peer's MAC).
                self.nl.no_ipv6_addresses(peer.as_str())?;
            }
            Op::AttachSteer { fan, vni, port } => {
                let (shared, port) = (self.index(&shared_name())?, self.index(port)?);
                let fd = bpf::load(&bpf::fan_steer(*vni, port), &bpf::steer_prog_name(*vni))?;
                use std::os::fd::AsFd;
                let tag = steer_tag(fan, *vni, port);
                self.nl.attach_bpf_at(shared, false, (tc::FILTER_PRIO, *vni), fd.as_fd(), &tag)?;
            }
            Op::DetachSteer { vni, .. } => {
                if let Some(l) = self.nl.link_by_name(SHARED_VXLAN)? {
                    self.nl.detach_bpf_at(l.index, false, (tc::FILTER_PRIO, *vni)).missing_ok()?;
                }
            }
            Op::AttachProgram { vxlan, program, via } => {
                let index = self.index(vxlan)?;
                let program = &match via {
                    Some(via) => FanProgram { redirect: Some(self.index(via)?), ..*program },
                    None => *program,
                };
                let fd = bpf::load_fan(program)?;
                self.nl.add_clsact(index).exists_ok()?;
                // NLM_F_REPLACE on a fixed prio/handle: the old program serves until the
                // new one is in, so a re-slice never leaves the vxlan without one.
                use std::os::fd::AsFd;
                self.nl.attach_bpf(index, true, fd.as_fd(), &program.tag(), true)?;
            }
            Op::WriteNat { fan, overlay } => nft::apply(fan, *overlay, fan)?,
            Op::DeleteNat { fan } => nft::delete(fan)?,
            Op::EnableForwarding { link } => {
                sysctl::ensure_forwarding(link.as_str())?;
            }
            Op::AcceptForwarding { fan } => {
                firewall::ensure_forward_accept(fan, fan)?;
            }
            Op::RemoveForwardAccept { fan } => {
                firewall::remove_forward_accept(fan)?;
            }
            Op::DeleteLink { link } => {
                // A veth takes its peer along: every index is asked again.
                self.indexes.clear();
                if let Some(l) = self.nl.link_by_name(link.as_str())? {
                    self.nl.delete_link(l.index).missing_ok()?;
                }
            }
        }
        Ok(())
    }

    /// The IPv4 routes of the main table: from `snap`, else read into it.
    pub fn routes(&mut self, snap: &mut Snapshot) -> Result<Vec<netlink::RouteInfo>, SystemError> {
        if snap.routes.is_none() {
            snap.routes = Some(self.nl.ipv4_routes()?);
        }
        Ok(snap.routes.clone().unwrap_or_default())
    }

    /// The clsact drop counter of a fan's vxlan: frames the program refused.
    pub fn drops(&mut self, vxlan_index: u32) -> Result<Option<u64>, SystemError> {
        Ok(self.nl.qdisc_drops(vxlan_index)?)
    }
}
