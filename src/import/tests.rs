//! `translate` end to end without a kernel: a fake host answers for interfaces and the
//! default route, so underlay lookups and their refusals are checked exactly.

use super::host::Host;
use super::*;

/// A host with fixed links: (name, addresses), and the default route's link if any.
struct FakeHost {
    links: Vec<(&'static str, Vec<&'static str>)>,
    default: Option<&'static str>,
}

impl Host for FakeHost {
    fn addresses(&mut self, ifname: &str) -> Result<Vec<Ipv4Net>, String> {
        let (_, addrs) = self
            .links
            .iter()
            .find(|(n, _)| *n == ifname)
            .ok_or_else(|| format!("this host has no interface named {ifname}"))?;
        Ok(addrs.iter().map(|a| a.parse().unwrap()).collect())
    }

    fn default_link(&mut self) -> Result<String, String> {
        self.default.map(String::from).ok_or_else(|| "this host has no IPv4 default route".into())
    }
}

fn host() -> FakeHost {
    FakeHost { links: vec![("ens3", vec!["10.0.9.9/32", "10.0.3.4/24"]), ("ens4", vec![])], default: None }
}

/// The `[[fan]]` keys and notes of a translation, or its refusals as `check` prints them.
fn run(text: &str, prefix: Option<&str>, host: &mut FakeHost) -> Result<Vec<String>, Vec<String>> {
    let prefix = prefix.map(|p| p.parse().unwrap());
    match translate("f", text, Syntax::FanFile, prefix, host) {
        Ok((toml, _)) => Ok(toml.lines().skip(3).filter(|l| !l.is_empty()).map(String::from).collect()),
        Err(refusals) => Err(refusals.iter().map(|r| r.at("f")).collect()),
    }
}

#[test]
fn an_interface_underlay_takes_its_address_cut_to_the_length() {
    let lines = run("ens3/16 250.0.0.0/8\n", None, &mut host()).unwrap();
    assert_eq!(
        lines,
        [
            "# f:1: ens3/16 250.0.0.0/8",
            "# underlay 10.0.0.0/16: from ens3's address 10.0.3.4/24 on this host",
            "[[fan]]",
            "overlay = \"250.0.0.0/8\"",
            "underlay = \"10.0.0.0/16\"",
            "interface = \"ens3\"",
        ]
    );
    let own_length = run("250.0.0.0/8 ens3\n", None, &mut host()).unwrap();
    assert_eq!(own_length[4], "underlay = \"10.0.3.0/24\"");
}

#[test]
fn lookups_that_fail_are_refused_with_a_hint() {
    let hint = "give the underlay with --underlay-prefix";
    assert_eq!(
        run("ens9/16 250.0.0.0/8\n", None, &mut host()),
        Err(vec![format!("f:1:1: error: this host has no interface named ens9; {hint}")])
    );
    assert_eq!(
        run("ens4/16 250.0.0.0/8\n", None, &mut host()),
        Err(vec![format!("f:1:1: error: ens4 has no IPv4 address on this host; {hint}")])
    );
    assert_eq!(
        run("250.0.0.0/8 default/16\n", None, &mut host()),
        Err(vec![format!("f:1:13: error: this host has no IPv4 default route; {hint}")])
    );
}

#[test]
fn the_default_route_names_the_link_but_the_rule_does_not() {
    let mut h = host();
    h.default = Some("ens3");
    let lines = run("default/16 250.0.0.0/8\n", None, &mut h).unwrap();
    assert_eq!(lines[1], "# `default`: ens3 has the default route on this host");
    assert_eq!(lines[3], "# no `interface`: fanlink uses the link that has an address in the underlay");
    assert_eq!(&lines[5..], ["overlay = \"250.0.0.0/8\"", "underlay = \"10.0.0.0/16\""]);
}

#[test]
fn underlay_prefix_replaces_the_lookup() {
    let mut nobody = FakeHost { links: vec![], default: None };
    let lines = run("ens3/16 250.0.0.0/8\n", Some("172.16.0.0/16"), &mut nobody).unwrap();
    assert_eq!(lines[1], "# underlay 172.16.0.0/16: from --underlay-prefix");
    assert_eq!(lines[4], "underlay = \"172.16.0.0/16\"");
}

#[test]
fn every_refusal_is_reported_and_nothing_is_kept() {
    let text = "10.0.0.0/16 250.0.0.0/8\n10.0.0.0/16 251.0.0.0/8 --mtu=9\n10.0.0.0/16 252.0.0.0/8 -t ipip\n";
    let errors = run(text, None, &mut host()).unwrap_err();
    assert_eq!(errors.iter().map(|e| &e[..8]).collect::<Vec<_>>(), ["f:2:25: ", "f:3:25: "]);
}

#[test]
fn dhcp_becomes_the_dhcp_key() {
    let lines = run("10.0.0.0/16 250.0.0.0/8 --dhcp\n", None, &mut host()).unwrap();
    assert_eq!(lines.last().map(String::as_str), Some("dhcp = true"), "{lines:?}");
}
