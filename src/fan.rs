//! Fan address arithmetic: which overlay slice an underlay address owns, and where an
//! overlay address lives on the underlay. Pure; the formulas of the kernel's fan patch,
//! for any prefix pair that can work (not only LXD's /8 + /16).

use ipnet::Ipv4Net;
use std::fmt;
use std::net::Ipv4Addr;

/// UDP port of every Ubuntu fan: Linux's legacy vxlan default, which fanctl and LXD use.
pub const FAN_UDP_PORT: u16 = 8472;

/// Encapsulation overhead of vxlan over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Ranges an overlay must not touch, with the reason a user gets.
const RESERVED: [(Ipv4Addr, u8, &str); 3] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
];

/// A validated overlay/underlay pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FanMap {
    overlay: Ipv4Net,
    underlay: Ipv4Net,
}

/// Why an underlay address cannot own a slice of a fan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceError {
    NotInUnderlay { address: Ipv4Addr, underlay: Ipv4Net },
    HostPartZero { address: Ipv4Addr, underlay: Ipv4Net },
    HostPartOnes { address: Ipv4Addr, underlay: Ipv4Net },
}

impl fmt::Display for SliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SliceError::NotInUnderlay { address, underlay } => {
                write!(f, "{address} is not inside the underlay {underlay}")
            }
            SliceError::HostPartZero { address, underlay } => write!(
                f,
                "{address} is the network address of {underlay}; its host part is all zeros and owns no slice"
            ),
            SliceError::HostPartOnes { address, underlay } => write!(
                f,
                "{address} is the broadcast address of {underlay}; its host part is all ones and owns no slice"
            ),
        }
    }
}

impl std::error::Error for SliceError {}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn check_aligned(what: &str, net: Ipv4Net) -> Result<(), String> {
    if net.addr() == net.network() {
        Ok(())
    } else {
        Err(format!("{what} {net} has host bits set; did you mean {}?", net.trunc()))
    }
}

impl FanMap {
    /// Checks everything that makes a pair unusable, and says what would be right.
    pub fn new(overlay: Ipv4Net, underlay: Ipv4Net) -> Result<FanMap, String> {
        check_aligned("overlay", overlay)?;
        check_aligned("underlay", underlay)?;
        for (addr, len, why) in RESERVED {
            let reserved = Ipv4Net::new(addr, len).expect("static prefix");
            if reserved.contains(&overlay.network()) || overlay.contains(&addr) {
                return Err(format!(
                    "overlay {overlay} overlaps {reserved} ({why}); use an unused range such as 240.0.0.0/8 to 254.0.0.0/8"
                ));
            }
        }
        if underlay.prefix_len() > 30 {
            return Err(format!(
                "underlay {underlay} leaves fewer than 2 host bits, so no host can own a slice; use /30 or wider"
            ));
        }
        if overlay.contains(&underlay.network()) || underlay.contains(&overlay.network()) {
            return Err(format!("overlay {overlay} and underlay {underlay} overlap"));
        }
        let map = FanMap { overlay, underlay };
        let slice = map.slice_prefix_len();
        if slice > 30 {
            let widest = i32::from(underlay.prefix_len()) - 2;
            let hint = if widest >= 1 {
                format!("an overlay of /{widest} or wider")
            } else {
                "a narrower underlay".to_string()
            };
            return Err(format!(
                "overlay {overlay} over underlay {underlay} gives each host a /{slice} slice, \
                 narrower than /30; use {hint}"
            ));
        }
        Ok(map)
    }

    pub fn overlay(&self) -> Ipv4Net {
        self.overlay
    }

    pub fn underlay(&self) -> Ipv4Net {
        self.underlay
    }

    /// Width of each host's slice: overlay prefix + underlay host bits.
    pub fn slice_prefix_len(&self) -> u8 {
        self.overlay.prefix_len() + (32 - self.underlay.prefix_len())
    }

    /// How far a host part moves between its underlay and its overlay position.
    fn shift(&self) -> u32 {
        u32::from(self.underlay.prefix_len() - self.overlay.prefix_len())
    }

    /// The VXLAN network identifier Ubuntu's fan uses: the overlay network's top 24 bits.
    pub fn vni(&self) -> u32 {
        u32::from(self.overlay.network()) >> 8
    }

    /// The host part of an underlay address, if it can own a slice.
    pub fn host_part(&self, address: Ipv4Addr) -> Result<u32, SliceError> {
        let underlay = self.underlay;
        if !underlay.contains(&address) {
            return Err(SliceError::NotInUnderlay { address, underlay });
        }
        let host_mask = !mask(underlay.prefix_len());
        match u32::from(address) & host_mask {
            0 => Err(SliceError::HostPartZero { address, underlay }),
            h if h == host_mask => Err(SliceError::HostPartOnes { address, underlay }),
            h => Ok(h),
        }
    }

    /// The overlay slice owned by the host with this underlay address.
    pub fn slice(&self, address: Ipv4Addr) -> Result<Ipv4Net, SliceError> {
        let host = self.host_part(address)?;
        let network = u32::from(self.overlay.network()) | (host << self.shift());
        Ok(Ipv4Net::new(Ipv4Addr::from(network), self.slice_prefix_len()).expect("prefix <= 30"))
    }

    /// The bridge's address: the slice's first address with the overlay's prefix length,
    /// so the whole overlay is on-link (as LXD and fanctl configure it).
    pub fn bridge_address(&self, address: Ipv4Addr) -> Result<Ipv4Net, SliceError> {
        let slice = self.slice(address)?;
        let first = Ipv4Addr::from(u32::from(slice.network()) + 1);
        Ok(Ipv4Net::new(first, self.overlay.prefix_len()).expect("valid prefix"))
    }

    /// Where an overlay address lives: the underlay address of the host owning its slice.
    /// `None` for addresses outside the overlay and for host parts that own no slice
    /// (all zeros or all ones: those would go to the underlay's network or broadcast address).
    pub fn underlay_of(&self, overlay_address: Ipv4Addr) -> Option<Ipv4Addr> {
        if !self.overlay.contains(&overlay_address) {
            return None;
        }
        let host = (u32::from(overlay_address) & !mask(self.overlay.prefix_len())) >> self.shift();
        let underlay = Ipv4Addr::from(u32::from(self.underlay.network()) | host);
        self.host_part(underlay).ok().map(|_| underlay)
    }
}

impl fmt::Display for FanMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} over {}", self.overlay, self.underlay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(o: &str, u: &str) -> FanMap {
        FanMap::new(o.parse().unwrap(), u.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn fan_md_examples() {
        let m = map("250.0.0.0/8", "10.0.0.0/16");
        assert_eq!(m.slice(ip("10.0.3.4")).unwrap().to_string(), "250.3.4.0/24");
        assert_eq!(m.bridge_address(ip("10.0.3.4")).unwrap().to_string(), "250.3.4.1/8");
        assert_eq!(m.underlay_of(ip("250.6.7.8")), Some(ip("10.0.6.7")));
        assert_eq!(m.vni(), 16_384_000);

        let m = map("250.0.0.0/8", "192.168.1.0/24");
        assert_eq!(m.slice(ip("192.168.1.178")).unwrap().to_string(), "250.178.0.0/16");
        assert_eq!(m.bridge_address(ip("192.168.1.178")).unwrap().to_string(), "250.178.0.1/8");

        let m = map("100.64.0.0/10", "10.224.220.0/24");
        assert_eq!(m.slice(ip("10.224.220.10")).unwrap().to_string(), "100.66.128.0/18");
        assert_eq!(m.underlay_of(ip("100.66.200.5")), Some(ip("10.224.220.11")));

        assert_eq!(map("240.0.0.0/8", "10.0.0.0/16").vni(), 15_728_640);
    }

    #[test]
    fn unmappable_addresses() {
        let m = map("250.0.0.0/8", "10.0.0.0/16");
        assert_eq!(m.underlay_of(ip("251.0.0.1")), None);
        assert_eq!(m.underlay_of(ip("250.255.255.255")), None, "underlay broadcast hole");
        assert_eq!(m.underlay_of(ip("250.0.0.5")), None, "underlay network address");
        assert!(matches!(m.slice(ip("10.0.0.0")), Err(SliceError::HostPartZero { .. })));
        assert!(matches!(m.slice(ip("10.0.255.255")), Err(SliceError::HostPartOnes { .. })));
        assert!(matches!(m.slice(ip("10.1.0.1")), Err(SliceError::NotInUnderlay { .. })));
    }

    #[test]
    fn invalid_pairs_say_why() {
        let err = |o: &str, u: &str| FanMap::new(o.parse().unwrap(), u.parse().unwrap()).unwrap_err();
        assert_eq!(
            err("250.1.0.0/8", "10.0.0.0/16"),
            "overlay 250.1.0.0/8 has host bits set; did you mean 250.0.0.0/8?"
        );
        assert!(err("127.0.0.0/8", "10.0.0.0/16").contains("loopback"));
        assert!(err("0.0.0.0/8", "10.0.0.0/16").contains("this network"));
        assert!(err("230.0.0.0/8", "10.0.0.0/16").contains("multicast"));
        assert!(err("250.0.0.0/16", "10.0.0.0/16")
            .contains("/32 slice, narrower than /30; use an overlay of /14 or wider"));
        assert!(err("10.0.0.0/8", "10.1.0.0/16").contains("overlap"));
        assert!(err("250.0.0.0/8", "10.0.0.0/31").contains("fewer than 2 host bits"));
    }

    /// Any valid pair: (overlay prefix, underlay prefix) with a slice of /30 or wider.
    fn pair() -> impl Strategy<Value = (FanMap, Ipv4Addr)> {
        (1u8..=28, any::<u32>(), any::<u32>())
            .prop_flat_map(|(o, onet, unet)| ((o + 2).max(9)..=30).prop_map(move |u| (o, u, onet, unet)))
            .prop_filter_map("valid pair", |(o, u, onet, unet)| {
                let overlay = Ipv4Net::new(Ipv4Addr::from(onet | 0xF000_0000), o).ok()?.trunc();
                let underlay = Ipv4Net::new(Ipv4Addr::from(unet & 0x7FFF_FFFF), u).ok()?.trunc();
                let m = FanMap::new(overlay, underlay).ok()?;
                Some((m, Ipv4Addr::from(unet)))
            })
            .prop_filter_map("host in underlay", |(m, seed)| {
                let host_bits = 32 - m.underlay().prefix_len();
                let host = u32::from(seed) & !mask(32 - host_bits);
                let a = Ipv4Addr::from(u32::from(m.underlay().network()) | host);
                m.host_part(a).ok().map(|_| (m, a))
            })
    }

    proptest! {
        /// Every address of a host's slice maps back to that host, and nothing else does.
        #[test]
        fn round_trip((m, host) in pair(), offset in any::<u32>()) {
            let slice = m.slice(host).unwrap();
            prop_assert!(m.overlay().contains(&slice));
            let inside = u32::from(slice.network()) | (offset & !mask(slice.prefix_len()));
            prop_assert_eq!(m.underlay_of(Ipv4Addr::from(inside)), Some(host));
            let bridge = m.bridge_address(host).unwrap();
            prop_assert!(slice.contains(&bridge.addr()));
            prop_assert_eq!(bridge.prefix_len(), m.overlay().prefix_len());
            prop_assert_eq!(m.vni() << 8, u32::from(m.overlay().network()) & 0xFFFF_FF00);
        }

        /// Any overlay address maps to a host whose slice contains it.
        #[test]
        fn inverse((m, _host) in pair(), x in any::<u32>()) {
            let overlay_mask = mask(m.overlay().prefix_len());
            let addr = Ipv4Addr::from(u32::from(m.overlay().network()) | (x & !overlay_mask));
            if let Some(u) = m.underlay_of(addr) {
                prop_assert!(m.slice(u).unwrap().contains(&addr));
            }
        }
    }
}
