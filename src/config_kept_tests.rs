//! `enable` and `dhcp-lease`, the keys fanctl's `--disable` / `off` and `--dhcp` map to.
use super::*;

fn parse(text: &str) -> (Vec<Rule>, Vec<String>) {
    let (rules, errors) = parse_all(&[(PathBuf::from("t.toml"), text.to_string())]);
    (rules, errors.iter().map(ToString::to_string).collect())
}

#[test]
fn a_disabled_fan_is_kept_may_repeat_an_enabled_one_and_yields_to_it() {
    let fan = |overlay: &str, extra: &str| {
        format!("[[fan]]\noverlay = \"{overlay}\"\nunderlay = \"10.0.0.0/16\"\n{extra}\n")
    };
    // cloud-init's example: the same fan on eth0, or (off) on eth1.
    let text = fan("250.0.0.0/8", "enable = false\ninterface = \"eth1\"")
        + &fan("250.0.0.0/8", "interface = \"eth0\"")
        + &fan("251.0.0.0/8", "enable = false");
    let (rules, errors) = parse(&text);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rules.iter().map(|r| r.enabled).collect::<Vec<_>>(), [false, true, false]);
    let effect = in_effect(rules);
    let names: Vec<_> = effect.iter().map(|r| (r.name.as_str(), r.enabled)).collect();
    assert_eq!(names, [("fan-250", true), ("fan-251", false)]);
    assert_eq!(effect[0].interface.as_ref().map(IfName::as_str), Some("eth0"));
    let (_, errors) = parse(&fan("250.0.0.0/8", "enable = \"no\""));
    assert_eq!(errors, ["t.toml:4:10: error: `enable` must be true or false, not \"no\""]);
}

#[test]
fn dhcp_lease_is_a_dnsmasq_lease_time_beside_dhcp() {
    let lease = |value: &str, dhcp: bool| {
        let text = format!(
            "[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\ndhcp = {dhcp}\ndhcp-lease = {value}\n"
        );
        let (rules, errors) = parse(&text);
        rules.first().map(|r| r.dhcp_lease.clone().unwrap()).ok_or(errors.join(""))
    };
    for good in ["\"45m\"", "\"12h\"", "\"7d\"", "\"2w\"", "\"3600\"", "\"infinite\""] {
        assert_eq!(lease(good, true), Ok(good.trim_matches('"').to_string()));
    }
    let at = "t.toml:5:14: error: ";
    assert_eq!(
        lease("\"1y\"", true),
        Err(format!(
            "{at}`dhcp-lease` \"1y\" is not a lease time such as \"45m\", \"12h\", \"7d\" or \"infinite\""
        ))
    );
    assert_eq!(
        lease("\"90s\"", true),
        Err(format!("{at}`dhcp-lease` \"90s\" is shorter than dnsmasq's minimum of 2m"))
    );
    assert_eq!(
        lease("\"1h\"", false),
        Err(format!("{at}`dhcp-lease` without `dhcp = true`: no DHCP server hands it out"))
    );
    assert!(lease("60", true).unwrap_err().contains("must be a string such as \"1h\", not an integer"));
}
