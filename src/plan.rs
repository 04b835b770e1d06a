//! The pure core: what a fan should be (`Want`) against what the kernel has (`Observed`)
//! gives the operations that close the gap, in an order that keeps traffic off a half-built
//! fan (links come up last). No I/O: every case is a table-driven unit test.

use crate::config::Rule;
use crate::datapath::bpf::FanProgram;
use crate::datapath::nft;
use crate::ifname::IfName;
use crate::model::{
    owner_alias, parse_alias, steer_tag, Datapath, Device, LinkChange, Observed, ObservedFan, Op, Want,
    SHARED_VXLAN,
};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The operations for one fan, or why none can be planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanPlan {
    pub fan: IfName,
    pub result: Result<Vec<Op>, String>,
}

/// A stable, locally administered MAC for a fan bridge, from this host's underlay address:
/// unique within a fan (one host per underlay address), and unchanged when ports come and go.
pub fn bridge_mac(underlay_address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = underlay_address.octets();
    [0x02, 0xfa, a, b, c, d]
}

/// Plans every fan; the host's datapath (the shared vxlan, or its removal) is prepared in
/// the first plan of a fan wanted up, and IPv4 forwarding is turned on where a fan wanted up
/// needs it: its bridge and its underlay link (once per link), nowhere else.
pub fn plan(targets: &[(Rule, Want)], observed: &Observed) -> Vec<FanPlan> {
    let empty = ObservedFan::default();
    let ups: Vec<u32> =
        targets.iter().filter_map(|(_, w)| if let Want::Up(u) = w { Some(u.mtu) } else { None }).collect();
    let (mut host_ops, shared_index) = plan_host(observed, ups.iter().max().copied());
    let mut users = observed.shared.as_ref().map(|s| s.users.clone());
    let mut plans: Vec<FanPlan> = targets
        .iter()
        .map(|(rule, want)| {
            let seen = observed.fans.get(&rule.name).unwrap_or(&empty);
            let result = match want {
                Want::Absent => plan_absent(&rule.name, seen, users.as_mut()),
                _ => plan_fan(rule, want, seen, observed, shared_index),
            };
            FanPlan { fan: rule.name.clone(), result }
        })
        .collect();
    // Another vxlan holds UDP 8472: a plan that would open the port is refused whole, before
    // anything is built; the fans already up keep it open and are left alone.
    if !observed.port_holders.is_empty() {
        let opens = |op: &Op, rule: &Rule| crate::port::opens(op, &rule.vxlan_name(), observed.datapath);
        let host_opens = host_ops.iter().any(|op| matches!(op, Op::CreateSharedVxlan { .. }));
        for ((rule, want), p) in targets.iter().zip(plans.iter_mut()) {
            let refused =
                p.result.as_ref().is_ok_and(|ops| host_opens || ops.iter().any(|op| opens(op, rule)));
            if matches!(want, Want::Up(_)) && refused {
                p.result = Err(crate::port::refusal(&observed.port_holders));
            }
        }
        if host_opens {
            host_ops.clear();
        }
    }
    let first_up = targets
        .iter()
        .zip(plans.iter_mut())
        .find(|((_, want), p)| matches!(want, Want::Up(_)) && p.result.is_ok());
    if let Some((_, FanPlan { result: Ok(ops), .. })) = first_up {
        ops.splice(0..0, host_ops);
    }
    let mut forwarding = observed.forwarding.clone();
    for ((rule, want), p) in targets.iter().zip(plans.iter_mut()) {
        if let (Want::Up(underlay), Ok(ops)) = (want, p.result.as_mut()) {
            forward_on(&rule.name, &underlay.link, ops, &mut forwarding);
        }
    }
    plans
}

/// IPv4 forwarding where a fan that is up needs it, and only there: the kernel decides by
/// the interface a packet comes in on, so the bridge (a container's packets to the world)
/// and the underlay link (their replies, NATed back) are enough; traffic between containers
/// is bridged, also across hosts, and needs none. The host's other interfaces are not routed
/// between because of a fan (`net.ipv4.ip_forward` would turn on every one of them, and
/// Docker, which finds it on, then leaves its FORWARD policy at ACCEPT). `on`: the links
/// known to forward, kept across the fans of one plan. A bridge this plan makes is new and
/// forwards nothing yet, whatever was observed under its name.
fn forward_on(bridge: &IfName, underlay: &IfName, ops: &mut Vec<Op>, on: &mut BTreeSet<IfName>) {
    let made = ops.iter().any(|op| matches!(op, Op::CreateBridge { bridge: b, .. } if b == bridge));
    if made {
        on.remove(bridge);
    }
    // Before the links come up, so that the first forwarded packet is not dropped.
    let mut at = ops.iter().position(is_link_up).unwrap_or(ops.len());
    for link in [bridge, underlay] {
        if on.insert(link.clone()) {
            ops.insert(at, Op::EnableForwarding { link: link.clone() });
            at += 1;
        }
    }
}

/// Plans the removal of fans without rules, in order: the shared vxlan goes with the last
/// fan that used it.
pub fn plan_absent_all(fans: &[IfName], observed: &Observed) -> Vec<FanPlan> {
    let empty = ObservedFan::default();
    let mut users = observed.shared.as_ref().map(|s| s.users.clone());
    fans.iter()
        .map(|fan| {
            let seen = observed.fans.get(fan).unwrap_or(&empty);
            FanPlan { fan: fan.clone(), result: plan_absent(fan, seen, users.as_mut()) }
        })
        .collect()
}

/// The host's part of the datapath when a fan is wanted up (`mtu`: the largest such fan's):
/// the shared vxlan in the shared datapath, or none. Also the shared vxlan's ifindex if it
/// stays as it is (`None`: it is made by these ops, so every program naming it is renewed).
fn plan_host(observed: &Observed, mtu: Option<u32>) -> (Vec<Op>, Option<u32>) {
    let Some(mtu) = mtu else { return (Vec::new(), None) };
    let shared_name: IfName = SHARED_VXLAN.parse().expect("a valid name");
    let seen = observed.shared.as_ref();
    match observed.datapath {
        // A kernel that now has vnifilter (an upgrade): the shared vxlan holds UDP 8472.
        Datapath::Vnifilter => match seen {
            Some(_) => (vec![Op::DeleteLink { link: shared_name }], None),
            None => (Vec::new(), None),
        },
        // A kernel that lost vnifilter (or the datapath forced): the fans' own vxlans hold
        // UDP 8472 and go first; each fan's plan builds its veth.
        Datapath::Shared if !observed.vnifilter_vxlans.is_empty() => {
            let mut ops: Vec<Op> =
                observed.vnifilter_vxlans.iter().map(|v| Op::DeleteLink { link: v.clone() }).collect();
            if seen.is_some() {
                ops.push(Op::DeleteLink { link: shared_name });
            }
            ops.push(Op::CreateSharedVxlan { mtu });
            (ops, None)
        }
        Datapath::Shared => match seen {
            Some(s) if s.device.kind.as_deref() == Some("vxlan") && s.device.shared_vxlan => {
                let mut ops = Vec::new();
                if !s.drop || !s.device.up {
                    ops.push(Op::CreateSharedVxlan { mtu: s.device.mtu.max(mtu) });
                } else if s.device.mtu < mtu {
                    let change = LinkChange { mtu: Some(mtu), ..Default::default() };
                    ops.push(Op::SetLink { link: shared_name.clone(), change });
                }
                // Made but not marked before a crash (creating it again finds it and stops).
                if s.device.alias.is_none() {
                    let change =
                        LinkChange { alias: Some(crate::model::SHARED_ALIAS.into()), ..Default::default() };
                    ops.push(Op::SetLink { link: shared_name, change });
                }
                (ops, Some(s.device.index))
            }
            Some(_) => (vec![Op::DeleteLink { link: shared_name }, Op::CreateSharedVxlan { mtu }], None),
            None => (vec![Op::CreateSharedVxlan { mtu }], None),
        },
    }
}

fn is_link_up(op: &Op) -> bool {
    matches!(
        op,
        Op::SetLink {
            change: LinkChange { up: Some(true), mtu: None, mac: None, master: None, alias: None },
            ..
        }
    )
}

/// A device fanlink made but could not mark: the kernel ignores an alias in the message that
/// creates a link, so fanlink marks it in a second one, and a crash between the two leaves it
/// unmarked. Such a device is recognised by what only fanlink builds: a bridge with its
/// `02:fa:` MAC, a vxlan in collect_md + vnifilter mode on port 8472 without learning. It is
/// adopted, and marked by the next plan.
fn built_by_fanlink(d: &Device) -> bool {
    match d.kind.as_deref() {
        Some("bridge") => d.mac.is_some_and(|m| m[..2] == [0x02, 0xfa]),
        Some("vxlan") => d.fan_vxlan,
        _ => false,
    }
}

/// A device of ours, or an error if the name is taken by something fanlink does not own.
fn owned<'a>(device: &'a Option<Device>, name: &IfName, fan: &IfName) -> Result<Option<&'a Device>, String> {
    owned_or_adopted(device, name, fan, false)
}

/// `owned`, where `adopt` says the device, unmarked, is recognised by its place (see
/// `shared_ports`).
fn owned_or_adopted<'a>(
    device: &'a Option<Device>,
    name: &IfName,
    fan: &IfName,
    adopt: bool,
) -> Result<Option<&'a Device>, String> {
    match device {
        Some(d) if d.alias.is_none() && (adopt || built_by_fanlink(d)) => Ok(Some(d)),
        Some(d) if d.alias.as_deref().and_then(parse_alias).map(|(f, _)| f).as_ref() != Some(fan) => {
            Err(format!(
                "a device named {name} exists that fanlink does not own (its alias is {:?}); \
             rename it or give the fan another `name`",
                d.alias.as_deref().unwrap_or("")
            ))
        }
        other => Ok(other.as_ref()),
    }
}

/// A bridge of the fan's name that fanlink did not make: what to do about it. fanlink does
/// not take it over, not even an empty one: it cannot tell who made it nor what they will
/// still do with it. Docker makes such a bridge when it restores a network named after the
/// fan before fanlink's bridge exists; it gives it its own address and MTU, and remembers
/// across restarts that the bridge is its own, so `docker network rm` would later delete
/// it, with the fan's vxlan in it. Its name freed, the fan is built at once (the bridge's
/// deletion is an event the daemon acts on).
fn foreign_bridge(name: &IfName, seen: &ObservedFan, error: String) -> String {
    match seen.bridge.as_ref().filter(|b| b.kind.as_deref() == Some("bridge")) {
        Some(_) => format!(
            "a bridge named {name} exists that fanlink did not make (Docker makes one when it \
                 restores a network of that name before fanlink has made the fan's bridge); fanlink \
                 does not take over a bridge it did not make: delete it with `ip link del {name}` \
                 (then, if Docker made it, `systemctl restart docker`, whose containers then attach \
                 to fanlink's bridge), or give the fan another `name`"
        ),
        None => error,
    }
}

/// The fan's port and peer, ours or not. A veth pair fanlink made but could not mark (a
/// crash between the create and the alias) is recognised by its place: `<fan>-vx` a port
/// of the fan's bridge, `<fan>-vp` its peer.
#[allow(clippy::type_complexity)]
fn ports<'a>(
    fan: &IfName,
    seen: &'a ObservedFan,
    bridge: Option<&Device>,
) -> Result<(Option<&'a Device>, Option<&'a Device>), String> {
    let vx = &seen.vxlan;
    let veth = |d: &Device| d.kind.as_deref() == Some("veth") && d.alias.is_none();
    let adopt_vx = vx.as_ref().is_some_and(|d| veth(d) && bridge.is_some_and(|b| d.master == Some(b.index)));
    let port = owned_or_adopted(vx, &crate::config::vxlan_name_for(fan), fan, adopt_vx)?;
    let adopt_vp =
        seen.peer.as_ref().is_some_and(|p| veth(p) && port.is_some_and(|v| p.link == Some(v.index)));
    let peer = owned_or_adopted(&seen.peer, &peer_name_for(fan), fan, adopt_vp)?;
    Ok((port, peer))
}

pub fn plan_fan(
    rule: &Rule,
    want: &Want,
    seen: &ObservedFan,
    observed: &Observed,
    shared_index: Option<u32>,
) -> Result<Vec<Op>, String> {
    let seen_bridge =
        owned(&seen.bridge, &rule.name, &rule.name).map_err(|e| foreign_bridge(&rule.name, seen, e))?;
    let (seen_vxlan, _) = ports(&rule.name, seen, seen_bridge)?;
    match want {
        Want::Up(underlay) => {
            let host = Host { datapath: observed.datapath, shared_index };
            if let (Datapath::Shared, Some(why)) = (host.datapath, &observed.shared_blocked) {
                return Err(why.clone());
            }
            plan_up(rule, underlay, seen, (seen_bridge, seen_vxlan), host)
        }
        Want::Down => Ok(plan_down(rule, seen_bridge)),
        Want::Absent => plan_absent(&rule.name, seen, None),
        Want::Keep => Ok(Vec::new()),
    }
}

/// The name of the peer of a fan's veth port in the shared datapath: `<fan>-vp`.
pub fn peer_name_for(fan: &IfName) -> IfName {
    let vx = crate::config::vxlan_name_for(fan);
    let stem = vx.as_str().strip_suffix("-vx").expect("vxlan names end in -vx");
    format!("{stem}-vp").parse().expect("as long as the vxlan name")
}

/// Removes everything of a fan that is ours; needs only its name, so it also serves fans
/// whose rule is gone. `users`: the fans still steered by the shared vxlan, if there is
/// one; it goes with the last of them.
pub fn plan_absent(
    fan: &IfName,
    seen: &ObservedFan,
    users: Option<&mut std::collections::BTreeSet<IfName>>,
) -> Result<Vec<Op>, String> {
    let vxlan = crate::config::vxlan_name_for(fan);
    let seen_bridge = owned(&seen.bridge, fan, fan)?;
    let (seen_vxlan, seen_peer) = ports(fan, seen, seen_bridge)?;
    let mut ops = Vec::new();
    if seen.nat.is_some() {
        ops.push(Op::DeleteNat { fan: fan.clone() });
    }
    // Not observed (it takes nf_tables dumps of every forward chain, and an iptables-legacy
    // process where legacy tables exist): removal is idempotent.
    if seen_bridge.is_some() {
        ops.push(Op::RemoveForwardAccept { fan: fan.clone() });
    }
    let last_user = users.is_some_and(|u| {
        u.remove(fan);
        u.is_empty()
    });
    if let Some(vni) = seen.steer.as_deref().and_then(steer_vni).filter(|_| !last_user) {
        ops.push(Op::DetachSteer { fan: fan.clone(), vni });
    }
    // Deleting the vxlan (or the veth) also removes its qdisc and filter; a veth its peer.
    if seen_vxlan.is_some() {
        ops.push(Op::DeleteLink { link: vxlan });
    }
    if seen_peer.is_some() {
        ops.push(Op::DeleteLink { link: peer_name_for(fan) });
    }
    if seen_bridge.is_some() {
        ops.push(Op::DeleteLink { link: fan.clone() });
    }
    if last_user {
        ops.push(Op::DeleteLink { link: SHARED_VXLAN.parse().expect("a valid name") });
    }
    Ok(ops)
}

fn steer_vni(tag: &str) -> Option<u32> {
    let mut words = tag.split(' ').skip_while(|w| *w != "vni");
    words.next()?;
    words.next()?.parse().ok()
}

/// Down is not delete: containers stay attached to the bridge. Only the bridge goes
/// administratively down: that stops the fan's traffic both ways (a down bridge forwards
/// nothing to or from its ports), and leaves the program and the NAT rule without traffic.
/// The vxlan stays up: taking it down closes its UDP socket and waits for RCU (25-40 ms in
/// the kernel), opening it again is most of a warm start. Coming back up is one netlink
/// message.
///
/// A fan that was never up still gets its bridge, down, without an address (its slice may
/// not be known yet): a container manager started after fanlink (Docker restoring a network
/// named after the fan, Incus a NIC with `parent = fan-250`) finds fanlink's bridge and
/// attaches to it, instead of making a plain bridge of that name itself. Its MTU and MAC are
/// placeholders that the first `up` corrects: the rule's MTU or the usual 1450, and the
/// `02:fa:` prefix that lets a crash before its mark is written be recognised
/// (`built_by_fanlink`). A disabled fan gets none.
fn plan_down(rule: &Rule, bridge: Option<&Device>) -> Vec<Op> {
    match bridge {
        Some(b) if b.up => {
            vec![Op::SetLink {
                link: rule.name.clone(),
                change: LinkChange { up: Some(false), ..Default::default() },
            }]
        }
        Some(_) => Vec::new(),
        // A disabled fan (`enable = false`) is not on this host: nothing is made for it.
        None if !rule.enabled => Vec::new(),
        None => vec![
            Op::CreateBridge {
                bridge: rule.name.clone(),
                mtu: rule.mtu.unwrap_or(DOWN_MTU),
                mac: bridge_mac(Ipv4Addr::UNSPECIFIED),
                alias: owner_alias(&rule.name, rule.by_hand),
            },
            // Ensured where the bridge is made (see `plan_up`), so that its first `up` reads
            // no firewall either.
            Op::AcceptForwarding { fan: rule.name.clone() },
        ],
    }
}

/// A down fan's bridge before its underlay link is known: a 1500-byte underlay's fan MTU.
const DOWN_MTU: u32 = 1500 - crate::fan::VXLAN_OVERHEAD;

/// The host's datapath as a fan's plan needs it.
#[derive(Clone, Copy)]
struct Host {
    datapath: Datapath,
    /// The shared vxlan's ifindex if it exists and stays.
    shared_index: Option<u32>,
}

fn plan_up(
    rule: &Rule,
    underlay: &crate::model::Underlay,
    seen: &ObservedFan,
    (seen_bridge, seen_vxlan): (Option<&Device>, Option<&Device>),
    host: Host,
) -> Result<Vec<Op>, String> {
    let (bridge, vxlan) = (rule.name.clone(), rule.vxlan_name());
    let address = rule.map.bridge_address(underlay.address).map_err(|e| e.to_string())?;
    let (mtu, mac, alias) =
        (underlay.mtu, bridge_mac(underlay.address), owner_alias(&rule.name, rule.by_hand));
    let mut ops = Vec::new();

    // The bridge, recreated if something else of ours carries its name.
    let bridge_ok = seen_bridge.filter(|b| b.kind.as_deref() == Some("bridge"));
    match (seen_bridge, bridge_ok) {
        (_, Some(b)) => {
            let change = LinkChange {
                mtu: (b.mtu != mtu).then_some(mtu),
                mac: (b.mac != Some(mac)).then_some(mac),
                alias: b.alias.is_none().then(|| alias.clone()),
                ..Default::default()
            };
            if change != LinkChange::default() {
                ops.push(Op::SetLink { link: bridge.clone(), change });
            }
        }
        (stale, None) => {
            if stale.is_some() {
                ops.push(Op::DeleteLink { link: bridge.clone() });
            }
            ops.push(Op::CreateBridge { bridge: bridge.clone(), mtu, mac, alias: alias.clone() });
        }
    }

    // The bridge's port `<fan>-vx`: the fan's vxlan, or in the shared datapath a veth whose
    // peer is `<fan>-vp`. A port of the other datapath (a kernel change) is replaced.
    let shared = host.datapath == Datapath::Shared;
    let peer = peer_name_for(&rule.name);
    let port_ok = match shared {
        false => seen_vxlan.filter(|v| v.kind.as_deref() == Some("vxlan") && v.fan_vxlan),
        true => seen_vxlan.filter(|v| {
            v.kind.as_deref() == Some("veth")
                && seen.peer.as_ref().is_some_and(|p| p.kind.as_deref() == Some("veth"))
        }),
    };
    match (seen_vxlan, port_ok) {
        (_, Some(v)) => {
            let enslaved = bridge_ok.is_some_and(|b| v.master == Some(b.index));
            let change = LinkChange {
                mtu: (v.mtu != mtu).then_some(mtu),
                master: (!enslaved).then(|| bridge.clone()),
                alias: v.alias.is_none().then(|| alias.clone()),
                ..Default::default()
            };
            if change != LinkChange::default() {
                ops.push(Op::SetLink { link: vxlan.clone(), change });
            }
            if !shared && !seen.vnis.contains(&rule.map.vni()) {
                ops.push(Op::AddVni { vxlan: vxlan.clone(), vni: rule.map.vni() });
            }
            if let Some(p) = seen.peer.as_ref().filter(|_| shared) {
                let change = LinkChange {
                    mtu: (p.mtu != mtu).then_some(mtu),
                    alias: p.alias.is_none().then(|| alias.clone()),
                    ..Default::default()
                };
                if change != LinkChange::default() {
                    ops.push(Op::SetLink { link: peer.clone(), change });
                }
            }
        }
        (stale, None) => {
            if stale.is_some() {
                ops.push(Op::DeleteLink { link: vxlan.clone() });
            }
            if seen.peer.is_some() {
                ops.push(Op::DeleteLink { link: peer.clone() });
            }
            if shared {
                let (port, bridge) = (vxlan.clone(), bridge.clone());
                ops.push(Op::CreateVeth { port, peer: peer.clone(), bridge, mtu, alias });
            } else {
                ops.push(Op::CreateVxlan { vxlan: vxlan.clone(), bridge: bridge.clone(), mtu, alias });
                ops.push(Op::AddVni { vxlan: vxlan.clone(), vni: rule.map.vni() });
            }
        }
    }

    // The bridge address; addresses of an old slice go.
    let addresses: &[_] = if bridge_ok.is_some() { &seen.bridge_addresses } else { &[] };
    for old in addresses.iter().filter(|a| **a != address && rule.map.overlay().contains(&a.addr())) {
        ops.push(Op::DeleteAddress { link: bridge.clone(), address: *old });
    }
    if !addresses.contains(&address) {
        ops.push(Op::AddAddress { link: bridge.clone(), address });
    }

    // The program: a fresh port has none; a changed address or rule (or a new shared vxlan)
    // changes its tag.
    let fresh = port_ok.is_none() || (shared && host.shared_index.is_none());
    let program = FanProgram {
        redirect: host.shared_index.filter(|_| shared),
        ..FanProgram::new(rule.map, underlay.address)
    };
    if fresh || seen.program.as_deref() != Some(program.tag().as_str()) {
        let via = shared.then(|| SHARED_VXLAN.parse().expect("a valid name"));
        ops.push(Op::AttachProgram {
            vxlan: vxlan.clone(),
            program: FanProgram { redirect: None, ..program },
            via,
        });
    }
    // The shared datapath: the fan's VNI steered into its port.
    if shared {
        let vni = rule.map.vni();
        let current = port_ok.map(|p| steer_tag(&rule.name, vni, p.index));
        if fresh || seen.steer != current {
            ops.push(Op::AttachSteer { fan: rule.name.clone(), vni, port: vxlan.clone() });
        }
    }

    let params = nft::params_comment(rule.map.overlay(), &rule.name);
    match (&seen.nat, rule.masquerade) {
        (Some(p), true) if *p == params => {}
        (_, true) => ops.push(Op::WriteNat { fan: bridge.clone(), overlay: rule.map.overlay() }),
        (Some(_), false) => ops.push(Op::DeleteNat { fan: bridge.clone() }),
        (None, false) => {}
    }

    // Not observed (nf_tables dumps of every forward chain, and an iptables-legacy process
    // where legacy tables exist): ensured, idempotently, when the fan's bridge is made, so
    // that a flap reads no firewall.
    let up = |link: IfName| Op::SetLink { link, change: LinkChange { up: Some(true), ..Default::default() } };
    if bridge_ok.is_none() {
        ops.push(Op::AcceptForwarding { fan: bridge.clone() });
    }
    // Up last: traffic starts only once everything above is in place.
    if shared && !(port_ok.is_some() && seen.peer.as_ref().is_some_and(|p| p.up)) {
        ops.push(up(peer));
    }
    if !port_ok.is_some_and(|v| v.up) {
        ops.push(up(vxlan));
    }
    if !bridge_ok.is_some_and(|b| b.up) {
        ops.push(up(bridge));
    }
    Ok(ops)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "plan_shared_tests.rs"]
mod shared_tests;
