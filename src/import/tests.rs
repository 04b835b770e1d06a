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

/// `lxc network show` output, translated or refused as `run` shows it.
fn lxd(text: &str, host: &mut FakeHost) -> Result<Vec<String>, Vec<String>> {
    match translate("n", text, Syntax::Lxd, None, host) {
        Ok((toml, _)) => Ok(toml.lines().skip(3).filter(|l| !l.is_empty()).map(String::from).collect()),
        Err(refusals) => Err(refusals.iter().map(|r| r.at("n")).collect()),
    }
}

#[test]
fn an_lxd_fan_network_keeps_its_slice() {
    assert!(lxd::is_lxd("config:\n  bridge.mode: fan\nname: lxdfan0\n"));
    assert!(!lxd::is_lxd("10.0.0.0/16 250.0.0.0/8\n"));
    // `auto` (LXD's default underlay): the subnet of the default route's link.
    let mut h = FakeHost { default: Some("ens3"), ..host() };
    let lines =
        lxd("config:\n  bridge.mode: fan\n  fan.underlay_subnet: auto\n  ipv4.dhcp: 'false'\n", &mut h)
            .unwrap();
    assert_eq!(
        lines,
        [
            "# n:2: lxc network show: bridge.mode fan",
            "# no fan.overlay_subnet: LXD's default, 240.0.0.0/8",
            "# fan.underlay_subnet auto: ens3 has the default route on this host",
            "# underlay 10.0.3.0/24: from ens3's address 10.0.3.4/24 on this host",
            "[[fan]]",
            "overlay = \"240.0.0.0/8\"",
            "underlay = \"10.0.3.0/24\"",
        ]
    );
}

#[test]
fn what_lxd_says_that_fanlink_cannot_do_is_refused_at_its_value() {
    let cases = [
        (
            "name: lxdbr0\nconfig:\n  ipv4.address: 10.1.1.1/24\n  fan.type: vxlan\n",
            "n:2:1: error: no `bridge.mode: fan` under `config:`: not an LXD fan network",
        ),
        (
            "config:\n  bridge.mode: fan\n  fan.underlay_subnet: 10.0.0.0/16\n  bridge.mtu: \"big\"\n",
            "n:4:16: error: bridge.mtu `big` is not a number",
        ),
        (
            "config:\n  bridge.mode: fan\n",
            "n:2:16: error: this host has no IPv4 default route; give the underlay with --underlay-prefix",
        ),
        (
            "config:\n  bridge.mode: fan\n  fan.underlay_subnet: 10.0.0.0\n",
            "n:3:24: error: fan.underlay_subnet `10.0.0.0` is not an IPv4 prefix such as 10.0.0.0/16",
        ),
        (
            "config:\n  bridge.mode: fan\n  fan.underlay_subnet: 10.0.0.0/16\n  ipv4.nat: maybe\n",
            "n:4:13: error: ipv4.nat `maybe` is not true or false",
        ),
        (
            "config:\n  bridge.mode: fan\n  fan.underlay_subnet: 10.0.0.0/16\n  bridge.mtu: \"100\"\n",
            "n:2:1: error: the translation does not load: `mtu` must be an integer from 576 to 9000, not 100",
        ),
        (
            "config:\n  bridge.mode: fan\n  fan.underlay_subnet: 10.0.0.0/16\nname: fan/0\n",
            "n:4:7: error: name: \"fan/0\" contains '/', which interface names cannot contain",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(lxd(text, &mut host()), Err(vec![expected.to_string()]), "{text}");
    }
}
