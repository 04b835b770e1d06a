//! Another vxlan on the fans' UDP port. A vxlan device opens its UDP socket when it comes
//! up; two that differ in how they receive (flannel's `id 1 dstport 8472`, LXD's fan, and
//! fanlink's `external` one) cannot share it, and the second to come up gets EADDRINUSE.
//! fanlink finds such a device in the link dump and refuses a plan that would open the port,
//! before changing anything, naming the device and who likely made it. Pure.

use crate::fan::FAN_UDP_PORT;
use crate::ifname::IfName;
use crate::model::{parse_alias, Datapath, LinkChange, Op, SHARED_ALIAS, SHARED_VXLAN};
use crate::netlink::LinkInfo;

/// The vxlans up on UDP 8472 that are not fanlink's, by name. A device of fanlink's that is
/// not marked yet (a crash between its creation and its mark) is recognised by its make.
pub fn holders(links: &[LinkInfo]) -> Vec<String> {
    links
        .iter()
        .filter(|l| l.up && l.vxlan.is_some_and(|v| v.port == FAN_UDP_PORT))
        .filter(|l| {
            let marked = l.alias.as_deref().is_some_and(|a| a == SHARED_ALIAS || parse_alias(a).is_some());
            let v = l.vxlan.expect("a vxlan");
            let unmarked_ours = l.alias.is_none() && v.collect_metadata && !v.learning;
            !marked && !(unmarked_ours && (l.name == SHARED_VXLAN || l.name.ends_with("-vx")))
        })
        .map(|l| l.name.clone())
        .collect()
}

/// Who likely made a vxlan, by the names their tools give them.
pub fn maker(name: &str) -> &'static str {
    if name.starts_with("flannel.") {
        "flannel's vxlan backend (8472 is its default port)"
    } else if name.starts_with("cilium_vxlan") {
        "Cilium's vxlan tunnel (8472 is its default port)"
    } else if name.starts_with("lxdfan") || name.ends_with("-fan") {
        "LXD's fan (a network with bridge.mode=fan)"
    } else if name.starts_with("ftun") || name.contains("fan") {
        "ubuntu-fan's fanctl"
    } else {
        "something outside fanlink"
    }
}

/// Why no fan can open the port while `holders` are up.
pub fn refusal(holders: &[String]) -> String {
    let who: Vec<String> = holders.iter().map(|h| format!("{h} (likely {})", maker(h))).collect();
    format!(
        "UDP port {FAN_UDP_PORT}, which every fan needs, is held by another vxlan: {}; nothing was \
         changed. Remove it (`ip link del {}`) or move it to another port, and fanlink retries",
        who.join(", "),
        holders[0]
    )
}

/// Whether `op` opens the port: it creates the shared vxlan (which comes up), or brings a
/// fan's own vxlan (`vxlan`, in the vnifilter datapath) up.
pub fn opens(op: &Op, vxlan: &IfName, datapath: Datapath) -> bool {
    match op {
        Op::CreateSharedVxlan { .. } => true,
        Op::SetLink { link, change: LinkChange { up: Some(true), .. } } => {
            datapath == Datapath::Vnifilter && link == vxlan
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::VxlanInfo;

    fn vxlan(name: &str, up: bool, port: u16, alias: Option<&str>, external: bool) -> LinkInfo {
        LinkInfo {
            index: 9,
            name: name.into(),
            up,
            carrier: up,
            mtu: 1450,
            master: None,
            link: None,
            alias: alias.map(Into::into),
            mac: None,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo { collect_metadata: external, vnifilter: external, learning: false, port }),
        }
    }

    #[test]
    fn foreign_vxlans_up_on_the_port_hold_it_and_ours_do_not() {
        let links = [
            vxlan("flannel.1", true, 8472, None, false),
            vxlan("lxdfan0-fan", true, 8472, Some("lxd"), false),
            vxlan("vx-down", false, 8472, None, false),
            vxlan("vx-4789", true, 4789, None, false),
            vxlan("fan-250-vx", true, 8472, Some("fanlink:fan-250"), true),
            vxlan("fan-251-vx", true, 8472, None, true),
            vxlan(SHARED_VXLAN, true, 8472, Some(SHARED_ALIAS), true),
        ];
        assert_eq!(holders(&links), ["flannel.1", "lxdfan0-fan"]);
    }

    #[test]
    fn the_refusal_names_each_device_and_its_likely_maker() {
        assert_eq!(
            refusal(&["flannel.1".into(), "lxdfan0-fan".into(), "vx0".into()]),
            "UDP port 8472, which every fan needs, is held by another vxlan: flannel.1 (likely \
             flannel's vxlan backend (8472 is its default port)), lxdfan0-fan (likely LXD's fan (a \
             network with bridge.mode=fan)), vx0 (likely something outside fanlink); nothing was \
             changed. Remove it (`ip link del flannel.1`) or move it to another port, and fanlink retries"
        );
        assert_eq!(maker("cilium_vxlan"), "Cilium's vxlan tunnel (8472 is its default port)");
        assert_eq!(maker("ftun0"), "ubuntu-fan's fanctl");
    }
}
