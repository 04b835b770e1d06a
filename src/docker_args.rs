//! `fanlink docker-args`: the arguments of `docker network create` that put Docker
//! containers on this host's share of its slice. Pure. They are printed for
//! `docker network create $(fanlink docker-args fan-250)`, so every word must survive the
//! shell's unquoted expansion as it is: no spaces, quotes or glob characters.

use crate::addrplan::AddrPlan;
use crate::ifname::IfName;
use ipnet::Ipv4Net;

/// Characters that an unquoted `$(...)` leaves alone (no field splitting, no globbing).
fn shell_safe(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/=,@+%".contains(c))
}

/// Docker's own rule for network names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), which is also shell-safe.
pub fn check_network_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "--network-name \"{}\": a Docker network name is letters, digits, '_', '.' and '-', starting with a letter or digit",
            name.escape_default()
        )),
    }
}

/// The words, in order: a bridge network on the fan's bridge (Docker takes it over rather than
/// making its own), the whole overlay as its subnet (on-link, as the bridge's /8 is), the
/// bridge's address as gateway, Docker's share of the slice as `--ip-range`, the addresses of
/// that share Docker must leave alone, the fan MTU, and the network's name last.
pub fn words(
    overlay: Ipv4Net,
    plan: &AddrPlan,
    bridge: &IfName,
    mtu: u32,
    network: &str,
) -> Result<Vec<String>, String> {
    let docker = plan.docker.as_ref().ok_or_else(|| {
        format!(
            "{bridge} gives Docker no addresses (docker-share = \"none\"); set a docker-share in its rule"
        )
    })?;
    let mut words = vec!["--driver".to_string(), "bridge".to_string()];
    words.push(format!("--subnet={overlay}"));
    words.push(format!("--gateway={}", plan.host.0));
    words.push(format!("--ip-range={}", docker.range));
    words.extend(docker.aux.iter().map(|(name, address)| format!("--aux-address={name}={address}")));
    for option in
        [format!("com.docker.network.bridge.name={bridge}"), format!("com.docker.network.driver.mtu={mtu}")]
    {
        words.push("-o".into());
        words.push(option);
    }
    words.push(network.to_string());
    match words.iter().find(|w| !shell_safe(w)) {
        Some(w) => Err(format!(
            "\"{}\" holds a character the shell would split or expand in `$(fanlink docker-args ...)`; \
             choose a name of letters, digits, '.', '_' and '-'",
            w.escape_default()
        )),
        None => Ok(words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addrplan::Split;
    use crate::dhcp::{options, DhcpConfig};
    use std::net::Ipv4Addr;

    fn plan(split: Split) -> AddrPlan {
        split.plan("250.3.4.0/24".parse().unwrap()).unwrap()
    }

    fn fan() -> IfName {
        "fan-250".parse().unwrap()
    }

    #[test]
    fn the_words_docker_network_create_takes() {
        let w =
            words("250.0.0.0/8".parse().unwrap(), &plan(Split::default()), &fan(), 1450, "fan-250").unwrap();
        assert_eq!(
            w.join(" "),
            "--driver bridge --subnet=250.0.0.0/8 --gateway=250.3.4.1 --ip-range=250.3.4.128/25 \
             --aux-address=last=250.3.4.255 -o com.docker.network.bridge.name=fan-250 \
             -o com.docker.network.driver.mtu=1450 fan-250"
        );
        let none = Split { docker_share: 0, ..Split::default() };
        let err = words("250.0.0.0/8".parse().unwrap(), &plan(none), &fan(), 1450, "x").unwrap_err();
        assert_eq!(
            err,
            "fan-250 gives Docker no addresses (docker-share = \"none\"); set a docker-share in its rule"
        );
        let glob: IfName = "fan*".parse().unwrap();
        let err =
            words("250.0.0.0/8".parse().unwrap(), &plan(Split::default()), &glob, 1450, "x").unwrap_err();
        assert!(err.starts_with("\"com.docker.network.bridge.name=fan*\" holds a character"), "{err}");
        assert!(check_network_name("web.1_a-b").is_ok());
        assert!(check_network_name("-x").is_err() && check_network_name("a b").is_err());
    }

    /// Defect 1: dnsmasq handed out `.2`-`.254` of the slice while Docker's `--ip-range` was
    /// the whole slice, so a lease could duplicate a container's address. The range dnsmasq is
    /// given and the addresses Docker may use must be disjoint, for every split that checks.
    #[test]
    fn dnsmasq_and_docker_never_share_an_address() {
        for split in [
            Split::default(),
            Split { host_reserve: 20, docker_share: 4 },
            Split { host_reserve: 3, docker_share: 64 },
        ] {
            let p = plan(split);
            let cfg = DhcpConfig {
                fan: fan(),
                bridge_address: "250.3.4.1/8".parse().unwrap(),
                range: p.dhcp.unwrap(),
                mtu: 1450,
                lease: "1h".into(),
            };
            let given = options(&cfg, std::path::Path::new("/x"));
            let range = given.iter().find_map(|o| o.strip_prefix("dhcp-range=")).unwrap();
            let bounds: Vec<Ipv4Addr> = range.split(',').take(2).map(|a| a.parse().unwrap()).collect();
            let w = words("250.0.0.0/8".parse().unwrap(), &p, &fan(), 1450, "n").unwrap();
            let ip_range: Ipv4Net =
                w.iter().find_map(|w| w.strip_prefix("--ip-range=")).unwrap().parse().unwrap();
            let aux: Vec<Ipv4Addr> = w
                .iter()
                .filter_map(|w| w.strip_prefix("--aux-address=")?.split_once('=')?.1.parse().ok())
                .collect();
            for a in u32::from(bounds[0])..=u32::from(bounds[1]) {
                let a = Ipv4Addr::from(a);
                assert!(!ip_range.contains(&a) || aux.contains(&a), "{a} is DHCP's and Docker's ({split:?})");
                assert!(a != p.host.0, "the bridge's address is handed out");
            }
        }
    }
}
