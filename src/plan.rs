//! The pure core: what a fan should be (`Want`) against what the kernel has (`Observed`)
//! gives the operations that close the gap, in an order that keeps traffic off a half-built
//! fan (links come up last). No I/O: every case is a table-driven unit test.

use crate::config::Rule;
use crate::datapath::bpf::FanProgram;
use crate::datapath::nft;
use crate::ifname::IfName;
use crate::model::{owner_alias, parse_alias, Device, LinkChange, Observed, ObservedFan, Op, Want};
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

/// Plans every fan; `forwarding` is switched on once if any fan is wanted up.
pub fn plan(targets: &[(Rule, Want)], observed: &Observed) -> Vec<FanPlan> {
    let empty = ObservedFan::default();
    let mut plans: Vec<FanPlan> = targets
        .iter()
        .map(|(rule, want)| {
            let seen = observed.fans.get(&rule.name).unwrap_or(&empty);
            FanPlan { fan: rule.name.clone(), result: plan_fan(rule, want, seen) }
        })
        .collect();
    let wants_up = targets.iter().any(|(_, want)| matches!(want, Want::Up(_)));
    if wants_up && !observed.forwarding {
        if let Some(FanPlan { result: Ok(ops), .. }) = plans.iter_mut().find(|p| p.result.is_ok()) {
            // Before the links come up, so that the first forwarded packet is not dropped.
            let at = ops.iter().position(is_link_up).unwrap_or(ops.len());
            ops.insert(at, Op::EnableForwarding);
        }
    }
    plans
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
    match device {
        Some(d) if d.alias.is_none() && built_by_fanlink(d) => Ok(Some(d)),
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

pub fn plan_fan(rule: &Rule, want: &Want, seen: &ObservedFan) -> Result<Vec<Op>, String> {
    let (bridge, vxlan) = (rule.name.clone(), rule.vxlan_name());
    let seen_bridge = owned(&seen.bridge, &bridge, &rule.name)?;
    let seen_vxlan = owned(&seen.vxlan, &vxlan, &rule.name)?;
    match want {
        Want::Up(underlay) => plan_up(rule, underlay, seen, seen_bridge, seen_vxlan),
        Want::Down => Ok(plan_down(rule, seen_bridge)),
        Want::Absent => plan_absent(&rule.name, seen),
        Want::Keep => Ok(Vec::new()),
    }
}

/// Removes everything of a fan that is ours; needs only its name, so it also serves fans
/// whose rule is gone.
pub fn plan_absent(fan: &IfName, seen: &ObservedFan) -> Result<Vec<Op>, String> {
    let vxlan = crate::config::vxlan_name_for(fan);
    let seen_bridge = owned(&seen.bridge, fan, fan)?;
    let seen_vxlan = owned(&seen.vxlan, &vxlan, fan)?;
    let mut ops = Vec::new();
    if seen.nat.is_some() {
        ops.push(Op::DeleteNat { fan: fan.clone() });
    }
    // Not observed (it takes a process per iptables backend): removal is idempotent.
    if seen_bridge.is_some() {
        ops.push(Op::RemoveForwardAccept { fan: fan.clone() });
    }
    // Deleting the vxlan also removes its qdisc and filter.
    if seen_vxlan.is_some() {
        ops.push(Op::DeleteLink { link: vxlan });
    }
    if seen_bridge.is_some() {
        ops.push(Op::DeleteLink { link: fan.clone() });
    }
    Ok(ops)
}

/// Down is not delete: containers stay attached to the bridge. Only the bridge goes
/// administratively down: that stops the fan's traffic both ways (a down bridge forwards
/// nothing to or from its ports), and leaves the program and the NAT rule without traffic.
/// The vxlan stays up: taking it down closes its UDP socket and waits for RCU (25-40 ms in
/// the kernel), opening it again is most of a warm start. Coming back up is one netlink
/// message.
fn plan_down(rule: &Rule, bridge: Option<&Device>) -> Vec<Op> {
    match bridge {
        Some(b) if b.up => {
            vec![Op::SetLink {
                link: rule.name.clone(),
                change: LinkChange { up: Some(false), ..Default::default() },
            }]
        }
        _ => Vec::new(),
    }
}

fn plan_up(
    rule: &Rule,
    underlay: &crate::model::Underlay,
    seen: &ObservedFan,
    seen_bridge: Option<&Device>,
    seen_vxlan: Option<&Device>,
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

    // The vxlan, enslaved to the bridge, with the fan's VNI in its filter.
    let vxlan_ok = seen_vxlan.filter(|v| v.kind.as_deref() == Some("vxlan") && v.fan_vxlan);
    match (seen_vxlan, vxlan_ok) {
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
            if !seen.vnis.contains(&rule.map.vni()) {
                ops.push(Op::AddVni { vxlan: vxlan.clone(), vni: rule.map.vni() });
            }
        }
        (stale, None) => {
            if stale.is_some() {
                ops.push(Op::DeleteLink { link: vxlan.clone() });
            }
            ops.push(Op::CreateVxlan { vxlan: vxlan.clone(), bridge: bridge.clone(), mtu, alias });
            ops.push(Op::AddVni { vxlan: vxlan.clone(), vni: rule.map.vni() });
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

    // The program: a fresh vxlan has none; a changed address or rule changes its tag.
    let program = FanProgram::new(rule.map, underlay.address);
    if vxlan_ok.is_none() || seen.program.as_deref() != Some(program.tag().as_str()) {
        ops.push(Op::AttachProgram { vxlan: vxlan.clone(), program });
    }

    let params = nft::params_comment(rule.map.overlay(), &rule.name);
    match (&seen.nat, rule.masquerade) {
        (Some(p), true) if *p == params => {}
        (_, true) => ops.push(Op::WriteNat { fan: bridge.clone(), overlay: rule.map.overlay() }),
        (Some(_), false) => ops.push(Op::DeleteNat { fan: bridge.clone() }),
        (None, false) => {}
    }

    // Not observed (a process per iptables backend): ensured, idempotently, when the fan's
    // bridge is made, so that a flap does not start processes.
    let up = |link: IfName| Op::SetLink { link, change: LinkChange { up: Some(true), ..Default::default() } };
    if bridge_ok.is_none() {
        ops.push(Op::AcceptForwarding { fan: bridge.clone() });
    }
    // Up last: traffic starts only once everything above is in place.
    if !vxlan_ok.is_some_and(|v| v.up) {
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
