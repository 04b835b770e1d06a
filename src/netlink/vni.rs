//! VNI filter entries of a `vnifilter` vxlan (RTM_*TUNNEL, kernel ≥ 5.18): which VNIs the
//! device accepts. Several fans share UDP port 8472 this way, one VNI per fan.

use std::ops::RangeInclusive;

use nix::errno::Errno;

use super::msg::{self, DecodeError, MsgBuilder, NLA_F_NESTED};
use super::{Error, Netlink};

const RTM_NEWTUNNEL: u16 = 120;
const RTM_DELTUNNEL: u16 = 121;
const RTM_GETTUNNEL: u16 = 122;
const AF_BRIDGE: u8 = libc::AF_BRIDGE as u8;
const VXLAN_VNIFILTER_ENTRY: u16 = 1;
const VXLAN_VNIFILTER_ENTRY_START: u16 = 1;
const VXLAN_VNIFILTER_ENTRY_END: u16 = 2;
/// `sizeof(struct tunnel_msg)`: family, flags, reserved u16, ifindex u32.
const TUNNEL_MSG_LEN: usize = 8;

fn tunnel_msg(index: u32) -> [u8; TUNNEL_MSG_LEN] {
    let mut h = [AF_BRIDGE, 0, 0, 0, 0, 0, 0, 0];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// The same bytes as `bridge vni add|del dev DEV vni VNI`. The entry must carry
/// NLA_F_NESTED: vxlan parses it with the strict `nla_parse_nested`.
pub fn vni_msg(add: bool, index: u32, vni: u32) -> MsgBuilder {
    let ty = if add { RTM_NEWTUNNEL } else { RTM_DELTUNNEL };
    let mut m = MsgBuilder::new(ty, 0).header(&tunnel_msg(index));
    m.nest(VXLAN_VNIFILTER_ENTRY | NLA_F_NESTED, |m| {
        m.u32(VXLAN_VNIFILTER_ENTRY_START, vni);
    });
    m
}

/// Decodes one RTM_NEWTUNNEL dump message into (ifindex, VNI ranges). The kernel folds
/// consecutive VNIs with the same remote into one entry with START and END.
pub fn parse_vnis(payload: &[u8]) -> Result<(u32, Vec<RangeInclusive<u32>>), DecodeError> {
    let (hdr, attrs) = msg::split(payload, TUNNEL_MSG_LEN)?;
    let mut out = Vec::new();
    for a in attrs {
        let a = a?;
        if a.ty != VXLAN_VNIFILTER_ENTRY {
            continue;
        }
        let (mut start, mut end) = (None, None);
        for e in a.nested() {
            let e = e?;
            match e.ty {
                VXLAN_VNIFILTER_ENTRY_START => start = e.u32(),
                VXLAN_VNIFILTER_ENTRY_END => end = e.u32(),
                _ => {}
            }
        }
        let start = start.ok_or(DecodeError("VNI entry without START"))?;
        out.push(start..=end.unwrap_or(start));
    }
    Ok((msg::ne_u32(&hdr[4..8]), out))
}

impl Netlink {
    /// Lets vnifilter device `index` accept `vni`. Adding a VNI the device already has
    /// succeeds, so this is idempotent by itself. EADDRINUSE ("VNI in use") if another
    /// device in the namespace has it, even while both are down.
    pub fn add_vni(&mut self, index: u32, vni: u32) -> Result<(), Error> {
        self.request(vni_msg(true, index, vni)).map_err(|e| {
            let e = e.context(format!("add vni {vni}"), None);
            // The kernel reports the conflict as EEXIST. Since a re-add to the same device is
            // not an error, EEXIST here always means "another device has it", and must not
            // be tolerated as "already done" by `exists_ok`.
            if e.is_exists() {
                Error { errno: Errno::EADDRINUSE, ..e }
            } else {
                e
            }
        })
    }

    /// Stops accepting `vni`; ENOENT if the device does not have it.
    pub fn delete_vni(&mut self, index: u32, vni: u32) -> Result<(), Error> {
        self.request(vni_msg(false, index, vni)).map_err(|e| e.context(format!("delete vni {vni}"), None))
    }

    /// The VNI ranges device `index` accepts, as the kernel reports them.
    pub fn vni_ranges(&mut self, index: u32) -> Result<Vec<RangeInclusive<u32>>, Error> {
        let m = MsgBuilder::new(RTM_GETTUNNEL, 0).header(&tunnel_msg(index));
        let replies = self.dump(m).map_err(|e| e.context("list vnis", None))?;
        let mut out = Vec::new();
        for p in &replies {
            let (ifindex, ranges) = parse_vnis(p).map_err(|e| super::malformed("list vnis", e))?;
            // The kernel filters by ifindex already; this guards against one that does not.
            if ifindex == index {
                out.extend(ranges);
            }
        }
        Ok(out)
    }

    /// Whether this kernel's vxlan has `vnifilter` (RTM_*TUNNEL, Linux 5.18, and backports):
    /// a dump of every device's VNIs. A kernel without it has no handler for the message and
    /// answers EOPNOTSUPP, as does one whose vxlan module is not loaded yet: then the module
    /// is loaded and the question asked again.
    pub fn has_vnifilter(&mut self) -> Result<bool, Error> {
        for attempt in 0..2 {
            let m = MsgBuilder::new(RTM_GETTUNNEL, 0).header(&tunnel_msg(0));
            match self.dump(m) {
                Ok(_) => return Ok(true),
                Err(e) if e.errno == Errno::EOPNOTSUPP && attempt == 0 => {
                    let answer = self.load_vxlan();
                    log::debug!("RTM_GETTUNNEL: EOPNOTSUPP; loading vxlan: {answer}");
                }
                Err(e) if e.errno == Errno::EOPNOTSUPP => return Ok(false),
                Err(e) => return Err(e.context("probe vxlan vnifilter", None)),
            }
        }
        Ok(false)
    }

    /// The VNIs device `index` accepts, ranges expanded. A fan device has one or a few.
    pub fn vnis(&mut self, index: u32) -> Result<Vec<u32>, Error> {
        Ok(self.vni_ranges(index)?.into_iter().flatten().collect())
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn parses_single_vnis_and_ranges() {
        let mut m = MsgBuilder::new(RTM_NEWTUNNEL, 0).header(&tunnel_msg(4));
        m.nest(VXLAN_VNIFILTER_ENTRY | NLA_F_NESTED, |m| {
            m.u32(VXLAN_VNIFILTER_ENTRY_START, 16_384_000);
        });
        m.nest(VXLAN_VNIFILTER_ENTRY | NLA_F_NESTED, |m| {
            m.u32(VXLAN_VNIFILTER_ENTRY_START, 10).u32(VXLAN_VNIFILTER_ENTRY_END, 12);
        });
        let b = m.finish(1, 0);
        let (idx, r) = parse_vnis(&b[msg::NLMSG_HDRLEN..]).unwrap();
        assert_eq!((idx, r), (4, vec![16_384_000..=16_384_000, 10..=12]));
    }
}
