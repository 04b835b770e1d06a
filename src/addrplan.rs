//! One address plan per host slice: who may hand out which addresses of the slice a host
//! owns. Pure. The slice is cut in three, in this order, so that no two parts can overlap:
//!
//! - the host's own addresses: the first `host-reserve` addresses after the slice's network
//!   address, the bridge's `.1` first (ubuntu-fan's `host-reserve`);
//! - the DHCP range (`dhcp = true`): everything between the host's part and Docker's;
//! - Docker's `--ip-range`: the last `docker-share` of the slice, a CIDR block as Docker wants
//!   it, with the slice's last address kept out by `--aux-address`.
//!
//! The split is the same whether DHCP is on or not, so turning DHCP on later never hands out
//! an address a running container holds. The slice's network and last addresses go to no one
//! (x.y.z.0 and x.y.z.255 of a /24 confuse enough software to be worth two addresses).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// How a rule splits each host's slice (`host-reserve`, `docker-share`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Split {
    /// The slice's first N addresses after its network address are the host's; the bridge's
    /// `.1` is the first of them, so N >= 1.
    pub host_reserve: u32,
    /// Docker gets the last 1/N of the slice (N a power of two, at least 2); 0: nothing.
    pub docker_share: u32,
}

/// Half the slice for Docker, the rest but the bridge's address for DHCP: both fit on one
/// host, DHCP on or off.
impl Default for Split {
    fn default() -> Split {
        Split { host_reserve: 1, docker_share: 2 }
    }
}

/// `docker-share` as a rule writes it: "1/2", "1/4", ... or "none".
pub fn parse_share(text: &str) -> Result<u32, String> {
    if text == "none" {
        return Ok(0);
    }
    let n = text.strip_prefix("1/").and_then(|n| n.parse::<u32>().ok());
    match n {
        Some(n) if n >= 2 && n.is_power_of_two() => Ok(n),
        _ => Err(format!(
            "`docker-share` \"{}\" is not a share Docker's --ip-range can be: \"1/2\", \"1/4\", \"1/8\", ... or \"none\"",
            text.escape_default()
        )),
    }
}

pub fn share_text(share: u32) -> String {
    if share == 0 {
        "none".into()
    } else {
        format!("1/{share}")
    }
}

/// A rule key a split error is about, so that `check` reports it at that key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKey {
    HostReserve,
    DockerShare,
}

/// The three parts as offsets from the slice's network address (inclusive ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offsets {
    host: (u64, u64),
    dhcp: Option<(u64, u64)>,
    /// First offset and prefix length of Docker's block.
    docker: Option<(u64, u8)>,
}

impl Split {
    /// Where each part lies in a slice of this prefix length; an error names the key to change.
    fn offsets(&self, slice_len: u8) -> Result<Offsets, (SplitKey, String)> {
        let size = 1u64 << (32 - u32::from(slice_len));
        let docker = match self.docker_share {
            0 => None,
            n if u64::from(n) * 2 > size => {
                let message = format!(
                    "`docker-share` \"1/{n}\" of a /{slice_len} slice is less than 2 addresses; use a larger share or \"none\""
                );
                return Err((SplitKey::DockerShare, message));
            }
            n => Some((size - size / u64::from(n), slice_len + n.trailing_zeros() as u8)),
        };
        // Everything below Docker's block, or below the slice's last address.
        let end = docker.map_or(size - 1, |(first, _)| first);
        let reserve = u64::from(self.host_reserve);
        if reserve == 0 {
            let message = "`host-reserve` must be 1 or more: the bridge's address is the host's first".into();
            return Err((SplitKey::HostReserve, message));
        }
        if reserve >= end {
            let share = share_text(self.docker_share);
            let message = format!(
                "`host-reserve = {reserve}` does not fit a /{slice_len} slice with docker-share \"{share}\": at most {} addresses",
                end - 1
            );
            return Err((SplitKey::HostReserve, message));
        }
        let dhcp = (reserve + 1 < end).then_some((reserve + 1, end - 1));
        Ok(Offsets { host: (1, reserve), dhcp, docker })
    }

    /// Whether this split works for slices of `slice_len`, and why not.
    pub fn check(&self, slice_len: u8) -> Result<(), (SplitKey, String)> {
        self.offsets(slice_len).map(|_| ())
    }

    /// Whether DHCP has addresses to hand out in slices of `slice_len` (a split that checks).
    pub fn has_dhcp(&self, slice_len: u8) -> bool {
        self.offsets(slice_len).is_ok_and(|o| o.dhcp.is_some())
    }

    /// The plan of one host's slice.
    pub fn plan(&self, slice: Ipv4Net) -> Result<AddrPlan, String> {
        let o = self.offsets(slice.prefix_len()).map_err(|(_, m)| m)?;
        let base = u64::from(u32::from(slice.network()));
        let at = |offset: u64| Ipv4Addr::from((base + offset) as u32);
        let last = at((1u64 << (32 - u32::from(slice.prefix_len()))) - 1);
        let docker = o.docker.map(|(first, len)| Docker {
            range: Ipv4Net::new(at(first), len).expect("length <= 32"),
            aux: vec![("last", last)],
        });
        Ok(AddrPlan {
            slice,
            host: (at(o.host.0), at(o.host.1)),
            dhcp: o.dhcp.map(|(a, b)| (at(a), at(b))),
            docker,
        })
    }
}

/// Docker's part: `--ip-range` and the `--aux-address`es that keep addresses of it unused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Docker {
    pub range: Ipv4Net,
    /// (name, address): Docker wants a name for each.
    pub aux: Vec<(&'static str, Ipv4Addr)>,
}

impl Docker {
    /// Whether Docker may give `address` to a container.
    pub fn hands_out(&self, address: Ipv4Addr) -> bool {
        self.range.contains(&address) && !self.aux.iter().any(|(_, a)| *a == address)
    }
}

/// One host's slice, cut into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrPlan {
    pub slice: Ipv4Net,
    /// The host's own addresses, first and last; the first is the bridge's.
    pub host: (Ipv4Addr, Ipv4Addr),
    /// What dnsmasq hands out when `dhcp = true`; `None` when nothing is left for it.
    pub dhcp: Option<(Ipv4Addr, Ipv4Addr)>,
    pub docker: Option<Docker>,
}

fn count(range: (Ipv4Addr, Ipv4Addr)) -> u64 {
    u64::from(u32::from(range.1)) - u64::from(u32::from(range.0)) + 1
}

/// "a - b (N addresses)", or "a" for one.
fn describe_range(range: (Ipv4Addr, Ipv4Addr)) -> String {
    match count(range) {
        1 => format!("{}", range.0),
        n => format!("{} - {} ({n} addresses)", range.0, range.1),
    }
}

impl AddrPlan {
    pub fn host_text(&self) -> String {
        match count(self.host) {
            1 => format!("{} (the bridge)", self.host.0),
            n => format!("{} - {} (the bridge and {} reserved)", self.host.0, self.host.1, n - 1),
        }
    }

    pub fn dhcp_text(&self) -> String {
        self.dhcp.map_or("none (no address left for it)".into(), describe_range)
    }

    pub fn docker_text(&self) -> String {
        match &self.docker {
            None => "none (docker-share \"none\")".into(),
            Some(d) => {
                let aux: Vec<String> = d.aux.iter().map(|(_, a)| a.to_string()).collect();
                format!("{} (--ip-range; {} kept out)", d.range, aux.join(", "))
            }
        }
    }
}

/// The plan as `addr --json` and `status --json` print it (and the daemon sends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReport {
    /// The host's own addresses, first and last (the bridge's first).
    pub host: [Ipv4Addr; 2],
    /// What dnsmasq hands out with `dhcp = true`, first and last.
    pub dhcp: Option<[Ipv4Addr; 2]>,
    /// Docker's `--ip-range`, a prefix such as "250.3.4.128/25".
    pub docker_ip_range: Option<String>,
    /// Docker's `--aux-address`es: addresses of its range it must not hand out.
    pub docker_aux_addresses: Vec<Ipv4Addr>,
}

impl From<&AddrPlan> for PlanReport {
    fn from(p: &AddrPlan) -> PlanReport {
        PlanReport {
            host: [p.host.0, p.host.1],
            dhcp: p.dhcp.map(|(a, b)| [a, b]),
            docker_ip_range: p.docker.as_ref().map(|d| d.range.to_string()),
            docker_aux_addresses: p
                .docker
                .as_ref()
                .map_or(Vec::new(), |d| d.aux.iter().map(|a| a.1).collect()),
        }
    }
}

impl fmt::Display for PlanReport {
    /// One line: "host 250.3.4.1, dhcp 250.3.4.2-250.3.4.127, docker 250.3.4.128/25".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range =
            |r: [Ipv4Addr; 2]| if r[0] == r[1] { r[0].to_string() } else { format!("{}-{}", r[0], r[1]) };
        let dhcp = self.dhcp.map_or("none".into(), range);
        let docker = self.docker_ip_range.as_deref().unwrap_or("none");
        write!(f, "host {}, dhcp {dhcp}, docker {docker}", range(self.host))
    }
}

impl fmt::Display for AddrPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {}, dhcp {}, docker {}", self.host_text(), self.dhcp_text(), self.docker_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(split: Split, slice: &str) -> AddrPlan {
        split.plan(slice.parse().unwrap()).unwrap()
    }

    #[test]
    fn the_default_splits_a_24_between_dhcp_and_docker() {
        let p = plan(Split::default(), "250.3.4.0/24");
        assert_eq!(p.host_text(), "250.3.4.1 (the bridge)");
        assert_eq!(p.dhcp_text(), "250.3.4.2 - 250.3.4.127 (126 addresses)");
        assert_eq!(p.docker_text(), "250.3.4.128/25 (--ip-range; 250.3.4.255 kept out)");
    }

    #[test]
    fn narrower_and_wider_slices() {
        let p = plan(Split::default(), "100.66.128.0/26");
        assert_eq!(p.to_string(), "host 100.66.128.1 (the bridge), dhcp 100.66.128.2 - 100.66.128.31 (30 addresses), docker 100.66.128.32/27 (--ip-range; 100.66.128.63 kept out)");
        let p = plan(Split::default(), "250.178.0.0/16");
        assert_eq!(p.dhcp, Some(("250.178.0.2".parse().unwrap(), "250.178.127.255".parse().unwrap())));
        assert_eq!(p.docker.unwrap().range.to_string(), "250.178.128.0/17");
        // A /30 has room for one address beside the bridge: Docker's, or DHCP's without Docker.
        let p = plan(Split::default(), "240.0.0.4/30");
        assert_eq!((p.dhcp, p.docker_text()), (None, "240.0.0.6/31 (--ip-range; 240.0.0.7 kept out)".into()));
        let p = plan(Split { host_reserve: 1, docker_share: 0 }, "240.0.0.4/30");
        assert_eq!(p.dhcp_text(), "240.0.0.6");
    }

    #[test]
    fn host_reserve_and_share_move_the_bounds() {
        let p = plan(Split { host_reserve: 10, docker_share: 4 }, "250.3.4.0/24");
        assert_eq!(p.to_string(), "host 250.3.4.1 - 250.3.4.10 (the bridge and 9 reserved), dhcp 250.3.4.11 - 250.3.4.191 (181 addresses), docker 250.3.4.192/26 (--ip-range; 250.3.4.255 kept out)");
        let p = plan(Split { host_reserve: 1, docker_share: 0 }, "250.3.4.0/24");
        assert_eq!(p.dhcp_text(), "250.3.4.2 - 250.3.4.254 (253 addresses)");
    }

    #[test]
    fn splits_that_do_not_fit_name_their_key() {
        let err = |split: Split, len: u8| split.check(len).unwrap_err();
        assert_eq!(
            err(Split { host_reserve: 128, docker_share: 2 }, 24),
            (SplitKey::HostReserve, "`host-reserve = 128` does not fit a /24 slice with docker-share \"1/2\": at most 127 addresses".into())
        );
        assert_eq!(err(Split { host_reserve: 0, docker_share: 2 }, 24).0, SplitKey::HostReserve);
        assert_eq!(
            err(Split { host_reserve: 1, docker_share: 4 }, 30),
            (SplitKey::DockerShare, "`docker-share` \"1/4\" of a /30 slice is less than 2 addresses; use a larger share or \"none\"".into())
        );
        assert!(Split { host_reserve: 127, docker_share: 2 }.check(24).is_ok());
        assert!(Split { host_reserve: 254, docker_share: 0 }.check(24).is_ok());
        assert!(Split { host_reserve: 255, docker_share: 0 }.check(24).is_err());
    }

    /// Rule files as `check` reads them: (rules, errors as printed).
    fn parse(text: &str) -> (Vec<crate::config::Rule>, Vec<String>) {
        let (rules, errors) =
            crate::config::parse_all(&[(std::path::PathBuf::from("t.toml"), text.to_string())]);
        (rules, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_split_keys_are_checked_against_the_slice() {
        let fan = |extra: &str| {
            parse(&format!("[[fan]]\noverlay = \"250.0.0.0/8\"\nunderlay = \"10.0.0.0/16\"\n{extra}"))
        };
        let (rules, errors) = fan("host-reserve = 10\ndocker-share = \"1/4\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rules[0].split, Split { host_reserve: 10, docker_share: 4 });
        assert_eq!(fan("").0[0].split, Split::default());
        assert_eq!(
            fan("host-reserve = 128\n").1,
            ["t.toml:4:16: error: `host-reserve = 128` does not fit a /24 slice with docker-share \"1/2\": at most 127 addresses"]
        );
        assert_eq!(
            fan("host-reserve = 0\n").1,
            ["t.toml:4:16: error: `host-reserve` must be a number of addresses, 1 or more (the bridge's is the first), not 0"]
        );
        assert!(fan("docker-share = \"1/3\"\n").1[0]
            .starts_with("t.toml:4:16: error: `docker-share` \"1/3\" is not"));
        // A /30 slice has one address beside the bridge: DHCP needs Docker's share for it.
        let tiny = "[[fan]]\noverlay = \"250.0.0.0/14\"\nunderlay = \"10.0.0.0/16\"\n";
        let (_, errors) = parse(&format!("{tiny}dhcp = true\n"));
        assert_eq!(errors, ["t.toml:4:8: error: `dhcp = true` has no address to hand out: a /30 slice has none left beside the host's 1 and Docker's share 1/2; set docker-share = \"none\" or a smaller host-reserve"]);
        assert!(parse(&format!("{tiny}dhcp = true\ndocker-share = \"none\"\n")).1.is_empty());
    }

    #[test]
    fn shares_parse() {
        assert_eq!(parse_share("1/2"), Ok(2));
        assert_eq!(parse_share("1/64"), Ok(64));
        assert_eq!(parse_share("none"), Ok(0));
        for bad in ["1/3", "1/1", "1/0", "half", "2/4", ""] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }

    /// Any slice a fan can give (/1 to /30) and any split that checks.
    fn case() -> impl Strategy<Value = (Ipv4Net, Split)> {
        (1u8..=30, any::<u32>(), 0u32..=31, any::<u32>()).prop_filter_map(
            "a split that fits",
            |(len, a, s, r)| {
                let slice = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
                let size = 1u64 << (32 - len);
                let docker_share = if s == 0 { 0 } else { 1u32 << s };
                // Reserves across the whole range, small ones most often.
                let host_reserve = 1 + (u64::from(r) % if r % 2 == 0 { 16 } else { size }) as u32;
                let split = Split { host_reserve, docker_share };
                split.check(len).ok().map(|_| (slice, split))
            },
        )
    }

    proptest! {
        /// Host, DHCP and Docker never share an address, each stays inside the slice, and
        /// the network and last addresses go to no one.
        #[test]
        fn the_parts_never_overlap((slice, split) in case(), probe in any::<u32>()) {
            let p = split.plan(slice).unwrap();
            // A random address of the slice, and every boundary of every part and its neighbours.
            let mut probes = vec![Ipv4Addr::from(u32::from(slice.network()) | (probe & !u32::from(slice.netmask())))];
            let mut edges = vec![slice.network(), slice.broadcast(), p.host.0, p.host.1];
            edges.extend(p.dhcp.map_or(vec![], |d| vec![d.0, d.1]));
            edges.extend(p.docker.as_ref().map_or(vec![], |d| vec![d.range.network(), d.range.broadcast()]));
            for e in edges {
                let e = u32::from(e);
                probes.extend([e.wrapping_sub(1), e, e.wrapping_add(1)].map(Ipv4Addr::from));
            }
            for a in probes.into_iter().filter(|a| slice.contains(a)) {
                let within = |r: (Ipv4Addr, Ipv4Addr)| r.0 <= a && a <= r.1;
                let owners = [
                    within(p.host),
                    p.dhcp.is_some_and(within),
                    p.docker.as_ref().is_some_and(|d| d.hands_out(a)),
                ];
                prop_assert!(owners.iter().filter(|o| **o).count() <= 1, "{a} in {p}");
                if a == slice.network() || a == slice.broadcast() {
                    prop_assert_eq!(owners, [false; 3], "{} in {}", a, p);
                }
            }
            prop_assert_eq!(p.host.0, Ipv4Addr::from(u32::from(slice.network()) + 1));
            prop_assert_eq!(u32::from(p.host.1) - u32::from(p.host.0) + 1, split.host_reserve);
            for r in [Some(p.host), p.dhcp].into_iter().flatten() {
                prop_assert!(slice.contains(&r.0) && slice.contains(&r.1) && r.0 <= r.1);
            }
            if let Some(d) = &p.docker {
                prop_assert!(slice.contains(&d.range));
                prop_assert_eq!(d.range.network(), d.range.addr(), "a CIDR block Docker accepts");
            }
        }

        /// Nothing is wasted: every address but the network and last ones has an owner, and
        /// with the default split on a /29 or wider slice both DHCP and Docker get some.
        #[test]
        fn every_usable_address_has_an_owner((slice, split) in case()) {
            let p = split.plan(slice).unwrap();
            let size = 1u64 << (32 - slice.prefix_len());
            let dhcp = p.dhcp.map_or(0, count);
            let docker = p.docker.as_ref().map_or(0, |d| 1u64 << (32 - d.range.prefix_len()));
            prop_assert_eq!(count(p.host) + dhcp + docker, size - 1 - u64::from(p.docker.is_none()));
            if slice.prefix_len() <= 29 {
                let d = Split::default().plan(slice).unwrap();
                prop_assert!(d.dhcp.is_some() && d.docker.is_some(), "{}", d);
            }
        }
    }
}
