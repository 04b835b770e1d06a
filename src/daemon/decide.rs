//! What each fan should be, from the rules, the kernel's links and networkd's view of them.
//! Pure: the daemon's every decision is here, with the reason it logs.

use crate::config::Rule;
use crate::ifname::IfName;
use crate::model::Want;
use crate::networkd::{AdminState, OperState};
use crate::underlay::{self, HostLink};
use std::collections::{BTreeSet, HashMap};

/// networkd's view of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkView {
    pub oper: OperState,
    pub admin: AdminState,
}

/// A fan's target state and why, for the log and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub fan: IfName,
    pub want: Want,
    pub why: String,
}

/// Up when the underlay link is routable in networkd's eyes and holds an address in the
/// underlay; down otherwise (devices kept).
pub fn decide(rule: &Rule, links: &[HostLink], networkd: &HashMap<u32, LinkView>) -> Decision {
    let (want, why) = match underlay::find(rule, links) {
        Err(e) => (Want::Down, format!("waiting: {e}")),
        Ok(u) => {
            let index = links.iter().find(|l| l.name == u.link.as_str()).map(|l| l.index);
            match index.and_then(|i| networkd.get(&i)) {
                None => (Want::Down, format!("waiting: networkd does not report {}", u.link)),
                Some(v) if v.admin == AdminState::Linger => {
                    (Want::Down, format!("{} is gone (networkd: linger)", u.link))
                }
                Some(v) if v.oper == OperState::Routable => {
                    let why = format!("{} routable with {}", u.link, u.address);
                    (Want::Up(u), why)
                }
                Some(v) => (Want::Down, format!("{} is {}", u.link, v.oper.as_str())),
            }
        }
    };
    Decision { fan: rule.name.clone(), want, why }
}

/// Decisions for every rule, plus `Absent` for fans of ours in the kernel that no rule
/// defines any more. `orphans_go` is false while the rules have errors: a fan whose file is
/// broken is not a removed fan, and a running fan is never taken down for a typo.
pub fn decide_all(
    rules: &[Rule],
    kernel_fans: &BTreeSet<IfName>,
    links: &[HostLink],
    networkd: &HashMap<u32, LinkView>,
    orphans_go: bool,
) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = rules.iter().map(|r| decide(r, links, networkd)).collect();
    if orphans_go {
        for fan in kernel_fans.iter().filter(|f| !rules.iter().any(|r| &r.name == *f)) {
            decisions.push(Decision {
                fan: fan.clone(),
                want: Want::Absent,
                why: "its rule was removed".into(),
            });
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_all;
    use std::path::PathBuf;

    fn rule() -> Rule {
        let text = "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n".to_string();
        parse_all(&[(PathBuf::from("t.toml"), text)]).0.remove(0)
    }

    fn links(address: &str) -> Vec<HostLink> {
        vec![HostLink {
            index: 2,
            name: "ens3".into(),
            mtu: 1500,
            alias: None,
            addresses: vec![address.parse().unwrap()],
        }]
    }

    fn view(oper: &str, admin: &str) -> HashMap<u32, LinkView> {
        HashMap::from([(2, LinkView { oper: OperState::parse(oper), admin: AdminState::parse(admin) })])
    }

    #[test]
    fn routable_with_an_address_is_up_anything_else_down() {
        let d = decide(&rule(), &links("10.0.3.4/16"), &view("routable", "configured"));
        assert!(matches!(d.want, Want::Up(_)));
        assert_eq!(d.why, "ens3 routable with 10.0.3.4");
        let cases = [
            ("no-carrier", "configured", "10.0.3.4/16", "ens3 is no-carrier"),
            ("off", "configured", "10.0.3.4/16", "ens3 is off"),
            ("degraded", "configuring", "10.0.3.4/16", "ens3 is degraded"),
            ("routable", "linger", "10.0.3.4/16", "ens3 is gone (networkd: linger)"),
            ("bogus-state", "configured", "10.0.3.4/16", "ens3 is unknown"),
            (
                "routable",
                "configured",
                "192.168.1.2/24",
                "waiting: no link has an IPv4 address inside the underlay 10.0.0.0/16",
            ),
        ];
        for (oper, admin, address, why) in cases {
            let d = decide(&rule(), &links(address), &view(oper, admin));
            assert_eq!((d.want, d.why.as_str()), (Want::Down, why), "{oper} {admin} {address}");
        }
        let d = decide(&rule(), &links("10.0.3.4/16"), &HashMap::new());
        assert_eq!(d.why, "waiting: networkd does not report ens3");
    }

    #[test]
    fn fans_without_rules_go_only_when_the_rules_are_sound() {
        let kernel: BTreeSet<IfName> = ["fan-250".parse().unwrap(), "fan-old".parse().unwrap()].into();
        let all =
            decide_all(&[rule()], &kernel, &links("10.0.3.4/16"), &view("routable", "configured"), true);
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].fan.as_str(), &all[1].want), ("fan-old", &Want::Absent));
        let kept =
            decide_all(&[rule()], &kernel, &links("10.0.3.4/16"), &view("routable", "configured"), false);
        assert_eq!(kept.len(), 1, "a broken rule file never takes a fan down");
    }
}
