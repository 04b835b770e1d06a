//! `fanlink status`: per fan, what is wanted and why, what the kernel has, and the drift
//! between the two (the ops a reconcile would still apply). The daemon builds it from its
//! own decisions; without a daemon the CLI builds it from the rules and the kernel.

use crate::config::vxlan_name_for;
use crate::fan::FanMap;
use crate::model::{Observed, ObservedFan, Op, Want, SHARED_VXLAN};
use crate::plan::FanPlan;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The status of one fan, as `status --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FanStatus {
    pub name: String,
    pub overlay: Option<String>,
    pub underlay: Option<String>,
    pub vni: Option<u32>,
    /// "up", "down" or "absent".
    pub wanted: String,
    pub why: String,
    /// "up", "down", "absent" or "partial" (some of its devices missing).
    pub actual: String,
    pub underlay_link: Option<String>,
    pub underlay_address: Option<String>,
    pub slice: Option<String>,
    /// The slice's address plan: the host's addresses, the DHCP range, Docker's share.
    #[serde(default)]
    pub plan: Option<crate::addrplan::PlanReport>,
    pub bridge_address: Option<String>,
    pub bridge: Option<String>,
    pub vxlan: Option<String>,
    /// The datapath the fan's devices are built for: "vnifilter" (its own vxlan) or
    /// "shared" (a veth into the host's shared vxlan, for kernels without vnifilter).
    #[serde(default)]
    pub datapath: Option<String>,
    /// The attached program's tc filter name (its parameters) and kernel id.
    pub program: Option<String>,
    pub program_id: Option<u32>,
    /// Frames the program dropped (broadcasts, unmappable targets): the clsact counter.
    pub drops: Option<u64>,
    pub nat: bool,
    /// The DHCP server on the bridge, when the daemon runs one: "dnsmasq PID".
    #[serde(default)]
    pub dhcp: Option<String>,
    /// What a reconcile would still change; empty when the kernel matches the rules.
    pub drift: Vec<String>,
    /// The daemon's last attempt for this fan failed: the step, the error, the attempt count.
    #[serde(default)]
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Who decided "wanted": "daemon (networkd)" or "no daemon: the rules and the kernel".
    pub source: String,
    pub fans: Vec<FanStatus>,
}

/// Where a fan's decision came from, for `FanStatus`.
pub struct Wanted<'a> {
    pub rule: Option<&'a crate::config::Rule>,
    pub want: &'a Want,
    pub why: &'a str,
}

fn actual(seen: &ObservedFan) -> &'static str {
    match (&seen.bridge, &seen.vxlan) {
        (None, None) => "absent",
        (Some(b), Some(v)) if b.up && v.up => "up",
        (Some(_), Some(_)) => "down",
        // A fan never up yet: its bridge alone, down (see `plan::plan_down`).
        (Some(b), None) if !b.up => "down",
        _ => "partial",
    }
}

/// What a fan's program says about it: its map, the host's underlay address and the VNI,
/// read back from the tc filter name that `FanProgram::tag` writes
/// (`fanlink OVERLAY UNDERLAY LOCAL [vni N] [ttl N]`).
fn from_program(tag: &str) -> Option<(FanMap, Ipv4Addr, u32)> {
    let mut words = tag.split(' ');
    if words.next() != Some("fanlink") {
        return None;
    }
    let overlay = words.next()?.parse().ok()?;
    let underlay = words.next()?.parse().ok()?;
    let map = FanMap::new(overlay, underlay).ok()?;
    let local = words.next()?.parse().ok()?;
    let vni = match (words.next(), words.next()) {
        (Some("vni"), Some(vni)) => vni.parse().ok()?,
        _ => map.vni(),
    };
    Some((map, local, vni))
}

/// One fan's status from its decision, the kernel and its plan. `drops` is read by the
/// caller (a netlink request per fan). A fan without a rule (made by hand with `fanlink up
/// --overlay`) is described by what its program says.
pub fn fan_status(wanted: Wanted<'_>, seen: &ObservedFan, plan: &FanPlan, drops: Option<u64>) -> FanStatus {
    let kernel = seen.program.as_deref().and_then(from_program);
    let (link, address) = match wanted.want {
        Want::Up(u) => (Some(u.link.to_string()), Some(u.address)),
        _ => (None, kernel.map(|(_, local, _)| local)),
    };
    let map = wanted.rule.map(|r| r.map).or(kernel.map(|(map, _, _)| map));
    let vni = match wanted.rule {
        Some(rule) => Some(rule.map.vni()),
        None => kernel.map(|(_, _, vni)| vni),
    };
    let mut drift: Vec<String> = match &plan.result {
        Ok(ops) => ops.iter().map(Op::to_string).collect(),
        Err(e) => vec![format!("cannot plan: {e}")],
    };
    // A fan left half built while it is wanted down is not repaired until it comes up, but
    // it is not what the rules describe either.
    if drift.is_empty() && actual(seen) == "partial" {
        let missing =
            if seen.bridge.is_none() { plan.fan.to_string() } else { vxlan_name_for(&plan.fan).to_string() };
        drift.push(format!("half built: {missing} is missing (completed when the fan comes up)"));
    }
    let datapath = seen.vxlan.as_ref().and_then(|v| match v.kind.as_deref() {
        Some("vxlan") => Some("vnifilter".to_string()),
        Some("veth") => Some("shared".to_string()),
        _ => None,
    });
    FanStatus {
        name: plan.fan.to_string(),
        overlay: map.map(|m| m.overlay().to_string()),
        underlay: map.map(|m| m.underlay().to_string()),
        vni,
        wanted: match wanted.want {
            Want::Up(_) => "up",
            Want::Down => "down",
            Want::Absent => "absent",
            Want::Keep => "kept",
        }
        .to_string(),
        why: wanted.why.to_string(),
        actual: actual(seen).to_string(),
        underlay_link: link,
        underlay_address: address.map(|a| a.to_string()),
        slice: map.zip(address).and_then(|(m, a)| m.slice(a).ok()).map(|s| s.to_string()),
        plan: map.zip(address).and_then(|(m, a)| {
            // A fan made by hand has no rule: the default split, as `docker-args` uses.
            let split = wanted.rule.map_or_else(Default::default, |r| r.split);
            split.plan(m.slice(a).ok()?).ok().map(|p| (&p).into())
        }),
        bridge_address: seen.bridge_addresses.first().map(|a| a.to_string()),
        bridge: seen.bridge.as_ref().map(|_| plan.fan.to_string()),
        vxlan: seen.vxlan.as_ref().map(|_| vxlan_name_for(&plan.fan).to_string()),
        datapath,
        program: seen.program.clone(),
        program_id: seen.program_id,
        drops,
        nat: seen.nat.is_some(),
        dhcp: None,
        drift,
        error: None,
    }
}

/// The text `fanlink status` prints.
pub fn render(status: &Status) -> String {
    let mut out = format!("source: {}\n", status.source);
    if status.fans.is_empty() {
        out.push_str("no fans\n");
    }
    for f in &status.fans {
        let _ = writeln!(out, "\n{}: wanted {} ({}), actually {}", f.name, f.wanted, f.why, f.actual);
        if let (Some(o), Some(u), Some(v)) = (&f.overlay, &f.underlay, f.vni) {
            let _ = writeln!(out, "  fan       {o} over {u}, vni {v}");
        }
        if let (Some(l), Some(a)) = (&f.underlay_link, &f.underlay_address) {
            let _ = writeln!(out, "  underlay  {a} on {l}");
        }
        if let Some(s) = &f.slice {
            let _ = writeln!(out, "  slice     {s}, bridge {}", f.bridge_address.as_deref().unwrap_or("-"));
        }
        if let Some(plan) = &f.plan {
            let _ = writeln!(out, "  plan      {plan}");
        }
        let devices = [f.bridge.as_deref(), f.vxlan.as_deref()].iter().flatten().copied().collect::<Vec<_>>();
        let _ =
            writeln!(out, "  devices   {}", if devices.is_empty() { "-".into() } else { devices.join(", ") });
        match f.datapath.as_deref() {
            Some("shared") => {
                let _ =
                    writeln!(out, "  datapath  shared: {SHARED_VXLAN} steers the fan's VNI into its veth");
            }
            Some(d) => {
                let _ = writeln!(out, "  datapath  {d}: the fan's own vxlan");
            }
            None => {}
        }
        match (&f.program, f.program_id) {
            (Some(p), Some(id)) => {
                let drops = f.drops.map_or("-".to_string(), |d| d.to_string());
                let _ = writeln!(out, "  program   id {id} ({p}), {drops} frames dropped");
            }
            _ => out.push_str("  program   -\n"),
        }
        let _ = writeln!(out, "  nat       {}", if f.nat { "masquerade" } else { "-" });
        if let Some(dhcp) = &f.dhcp {
            let _ = writeln!(out, "  dhcp      {dhcp}");
        }
        if let Some(error) = &f.error {
            let _ = writeln!(out, "  failed    {error}");
        }
        if f.drift.is_empty() {
            out.push_str("  drift     none\n");
        } else {
            for d in &f.drift {
                let _ = writeln!(out, "  drift     {d}");
            }
        }
    }
    out
}

/// Status of every fan in `observed` from `plans` and decisions.
pub fn collect(
    source: &str,
    decisions: &[(Option<&crate::config::Rule>, Want, String)],
    observed: &Observed,
    plans: &[FanPlan],
    mut drops: impl FnMut(&ObservedFan) -> Option<u64>,
) -> Status {
    let empty = ObservedFan::default();
    let fans = decisions
        .iter()
        .zip(plans)
        .map(|((rule, want, why), plan)| {
            let seen = observed.fans.get(&plan.fan).unwrap_or(&empty);
            fan_status(Wanted { rule: *rule, want, why }, seen, plan, drops(seen))
        })
        .collect();
    Status { source: source.to_string(), fans }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::bpf::FanProgram;
    use crate::ifname::IfName;
    use crate::model::Device;

    #[test]
    fn a_fan_without_a_rule_is_described_by_its_program() {
        let map = FanMap::new("250.0.0.0/8".parse().unwrap(), "10.99.0.0/16".parse().unwrap()).unwrap();
        let program = FanProgram::new(map, "10.99.1.1".parse().unwrap());
        let seen = ObservedFan { program: Some(program.tag()), program_id: Some(7), ..Default::default() };
        let fan: IfName = "fan-250".parse().unwrap();
        let plan = FanPlan { fan, result: Ok(Vec::new()) };
        let why = "made by hand";
        let status = fan_status(Wanted { rule: None, want: &Want::Keep, why }, &seen, &plan, Some(0));
        assert_eq!(status.overlay.as_deref(), Some("250.0.0.0/8"));
        assert_eq!(status.underlay.as_deref(), Some("10.99.0.0/16"));
        assert_eq!(status.vni, Some(16_384_000));
        assert_eq!(status.underlay_address.as_deref(), Some("10.99.1.1"));
        assert_eq!(status.slice.as_deref(), Some("250.1.1.0/24"));
        assert_eq!(status.underlay_link, None, "the program does not name the link");
        let plan = status.plan.as_ref().unwrap();
        assert_eq!(plan.to_string(), "host 250.1.1.1, dhcp 250.1.1.2-250.1.1.127, docker 250.1.1.128/25");
        let text = render(&Status { source: "t".into(), fans: vec![status] });
        assert!(
            text.contains(
                "\n  plan      host 250.1.1.1, dhcp 250.1.1.2-250.1.1.127, docker 250.1.1.128/25\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn program_tags_read_back() {
        let map = FanMap::new("241.0.0.0/8".parse().unwrap(), "192.168.0.0/16".parse().unwrap()).unwrap();
        let program = FanProgram::new(map, "192.168.3.4".parse().unwrap());
        assert_eq!(from_program(&program.tag()), Some((map, "192.168.3.4".parse().unwrap(), map.vni())));
        let tag = "fanlink 241.0.0.0/8 192.168.0.0/16 192.168.3.4 vni 42 ttl 8";
        assert_eq!(from_program(tag), Some((map, "192.168.3.4".parse().unwrap(), 42)));
        assert_eq!(from_program("fanlink 241.0.0.0/8"), None);
        assert_eq!(from_program("other 241.0.0.0/8 192.168.0.0/16 192.168.3.4"), None);
    }

    #[test]
    fn a_half_built_fan_is_drift_and_the_datapath_is_named() {
        let plan = FanPlan { fan: "fan-250".parse().unwrap(), result: Ok(Vec::new()) };
        let bridge = Device { kind: Some("bridge".into()), ..Default::default() };
        let vxlan = Device { kind: Some("vxlan".into()), ..Default::default() };
        let half = ObservedFan { vxlan: Some(vxlan), ..Default::default() };
        let wanted = || Wanted { rule: None, want: &Want::Down, why: "no address" };
        let s = fan_status(wanted(), &half, &plan, None);
        assert_eq!(s.actual, "partial");
        assert_eq!(s.drift, ["half built: fan-250 is missing (completed when the fan comes up)"]);
        assert!(render(&Status { source: "t".into(), fans: vec![s] }).contains("drift     half built"));
        // A down fan never up has its bridge alone, down: what the rules describe.
        let bridge_only = ObservedFan { bridge: Some(bridge.clone()), ..Default::default() };
        let s = fan_status(wanted(), &bridge_only, &plan, None);
        assert_eq!((s.actual.as_str(), s.drift.len()), ("down", 0));
        let up_alone =
            ObservedFan { bridge: Some(Device { up: true, ..bridge.clone() }), ..Default::default() };
        assert_eq!(fan_status(wanted(), &up_alone, &plan, None).actual, "partial");
        let veth = Device { kind: Some("veth".into()), up: true, ..Default::default() };
        let built = ObservedFan {
            bridge: Some(Device { up: true, ..bridge }),
            vxlan: Some(veth),
            ..Default::default()
        };
        let s = fan_status(wanted(), &built, &plan, None);
        assert_eq!((s.datapath.as_deref(), s.drift.len()), (Some("shared"), 0));
        assert!(render(&Status { source: "t".into(), fans: vec![s] }).contains("datapath  shared"));
    }
}
