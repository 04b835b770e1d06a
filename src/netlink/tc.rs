//! tc: the clsact qdisc and the cls_bpf filter that runs the fan program on the vxlan's
//! egress, plus the qdisc's drop counter (frames the program refused to map).
//!
//! The messages are the ones `tc qdisc add dev D clsact` and
//! `tc filter add dev D egress prio 1 handle 1 bpf da fd N name X` send.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::msg::{self, DecodeError, MsgBuilder, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use super::{Error, Netlink};

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STATS2: u16 = 7;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
/// The program's return value is the verdict (TC_ACT_*), no separate action needed.
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// clsact (like ingress) sits at this parent with handle ffff:.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const TC_H_MIN_INGRESS: u32 = 0xFFFF_FFF2;
const TC_H_MIN_EGRESS: u32 = 0xFFFF_FFF3;
const ETH_P_ALL: u16 = 0x0003;
/// fanlink's one filter per hook: fixed prio and handle, so a replace finds it.
pub const FILTER_PRIO: u16 = 1;
pub const FILTER_HANDLE: u32 = 1;
/// The shared vxlan's ingress: the fans' steering filters at `FILTER_PRIO` (each at its
/// VNI as handle), and after them, at this prio, the filter that drops what none took.
pub const LAST_PRIO: u16 = 2;
/// `sizeof(struct tcmsg)`.
const TCMSG_LEN: usize = 20;

/// A cls_bpf filter as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterInfo {
    /// TCA_BPF_NAME: what the loader called it (fanlink: "fan_egress").
    pub name: String,
    /// TCA_BPF_ID: the kernel's program id, as `bpftool prog show id N` takes.
    pub prog_id: Option<u32>,
    pub prio: u16,
    pub handle: u32,
    pub direct_action: bool,
}

fn tcmsg(index: u32, handle: u32, parent: u32, info: u32) -> [u8; TCMSG_LEN] {
    let mut h = [0; TCMSG_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&handle.to_ne_bytes());
    h[12..16].copy_from_slice(&parent.to_ne_bytes());
    h[16..20].copy_from_slice(&info.to_ne_bytes());
    h
}

fn hook(egress: bool) -> u32 {
    if egress {
        TC_H_MIN_EGRESS
    } else {
        TC_H_MIN_INGRESS
    }
}

/// tcm_info of a filter: priority in the upper half, protocol (network order) in the lower.
fn filter_info(prio: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(ETH_P_ALL.to_be())
}

pub fn clsact_msg(add: bool, index: u32) -> MsgBuilder {
    let (ty, flags) = if add { (RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL) } else { (RTM_DELQDISC, 0) };
    // Delete by parent alone: with no clsact left, a handle would make the kernel compare it
    // with the placeholder qdisc's and answer EINVAL "Invalid handle" instead of ENOENT.
    let handle = if add { CLSACT_HANDLE } else { 0 };
    let mut m = MsgBuilder::new(ty, flags).header(&tcmsg(index, handle, TC_H_CLSACT, 0));
    m.str(TCA_KIND, "clsact");
    m
}

/// Without `replace`, NLM_F_EXCL makes a second attach fail with EEXIST. With it, the
/// program behind the same prio/handle is swapped atomically (or the filter created).
pub fn attach_bpf_msg(index: u32, egress: bool, prog_fd: i32, name: &str, replace: bool) -> MsgBuilder {
    attach_bpf_at_msg(index, egress, (FILTER_PRIO, FILTER_HANDLE), prog_fd, name, replace)
}

/// Like `attach_bpf_msg`, at a given (prio, handle).
pub fn attach_bpf_at_msg(
    index: u32,
    egress: bool,
    (prio, handle): (u16, u32),
    prog_fd: i32,
    name: &str,
    replace: bool,
) -> MsgBuilder {
    let flags = NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
    let h = tcmsg(index, handle, hook(egress), filter_info(prio));
    let mut m = MsgBuilder::new(RTM_NEWTFILTER, flags).header(&h);
    m.str(TCA_KIND, "bpf").nest(TCA_OPTIONS, |m| {
        m.u32(TCA_BPF_FD, prog_fd as u32).str(TCA_BPF_NAME, name).u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT);
    });
    m
}

/// Decodes an RTM_NEWTFILTER payload. None for the per-priority header entry the kernel
/// emits before the filters (handle 0, no options) and for non-bpf filters.
pub fn parse_filter(payload: &[u8]) -> Result<Option<FilterInfo>, DecodeError> {
    let (hdr, attrs) = msg::split(payload, TCMSG_LEN)?;
    let handle = msg::ne_u32(&hdr[8..12]);
    let prio = (msg::ne_u32(&hdr[16..20]) >> 16) as u16;
    let (mut kind, mut options) = (None, None);
    for a in attrs {
        let a = a?;
        match a.ty {
            TCA_KIND => kind = Some(a.str()),
            TCA_OPTIONS => options = Some(a),
            _ => {}
        }
    }
    let (Some("bpf"), Some(options)) = (kind, options) else { return Ok(None) };
    let mut f = FilterInfo { name: String::new(), prog_id: None, prio, handle, direct_action: false };
    for a in options.nested() {
        let a = a?;
        match a.ty {
            TCA_BPF_NAME => f.name = a.str().to_owned(),
            TCA_BPF_ID => f.prog_id = a.u32(),
            TCA_BPF_FLAGS => f.direct_action = a.u32().is_some_and(|v| v & TCA_BPF_FLAG_ACT_DIRECT != 0),
            _ => {}
        }
    }
    Ok(Some(f))
}

/// The drop counter of a qdisc message if it is the clsact of `index`.
fn parse_clsact_drops(payload: &[u8], index: u32) -> Result<Option<u64>, DecodeError> {
    let (hdr, attrs) = msg::split(payload, TCMSG_LEN)?;
    if msg::ne_u32(&hdr[4..8]) != index || msg::ne_u32(&hdr[12..16]) != TC_H_CLSACT {
        return Ok(None);
    }
    let (mut kind, mut drops) = (None, None);
    for a in attrs {
        let a = a?;
        match a.ty {
            TCA_KIND => kind = Some(a.str()),
            TCA_STATS2 => {
                for s in a.nested() {
                    let s = s?;
                    // struct gnet_stats_queue { qlen, backlog, drops, requeues, overlimits }.
                    if s.ty == TCA_STATS_QUEUE {
                        drops = s.value.get(8..12).map(|d| u64::from(msg::ne_u32(d)));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(if kind == Some("clsact") { Some(drops.unwrap_or(0)) } else { None })
}

impl Netlink {
    /// Adds the clsact qdisc (both hooks) to link `index`; EEXIST if it has one.
    pub fn add_clsact(&mut self, index: u32) -> Result<(), Error> {
        self.request(clsact_msg(true, index)).map_err(|e| e.context("add clsact qdisc", None))
    }

    /// Removes the clsact qdisc and with it every filter; ENOENT if there is none.
    pub fn delete_clsact(&mut self, index: u32) -> Result<(), Error> {
        match self.request(clsact_msg(false, index)) {
            // The kernel says EINVAL "Invalid qdisc name" both when there is no qdisc and when
            // another kind (ingress) sits there; only the first is "already gone".
            Err(e) if e.errno == Errno::EINVAL && self.qdisc_drops(index)?.is_none() => {
                Err(Error { errno: Errno::ENOENT, ..e }.context("delete clsact qdisc", None))
            }
            r => r.map_err(|e| e.context("delete clsact qdisc", None)),
        }
    }

    /// Attaches the program behind `prog_fd` as a direct-action cls_bpf filter. The filter
    /// holds its own reference to the program, so the fd may be closed afterwards.
    pub fn attach_bpf(
        &mut self,
        index: u32,
        egress: bool,
        prog_fd: BorrowedFd<'_>,
        name: &str,
        replace: bool,
    ) -> Result<(), Error> {
        let m = attach_bpf_msg(index, egress, prog_fd.as_raw_fd(), name, replace);
        self.request(m).map_err(|e| e.context(format!("attach bpf filter {name}"), None))
    }

    /// `attach_bpf` at a given (prio, handle), always replacing what is there.
    pub fn attach_bpf_at(
        &mut self,
        index: u32,
        egress: bool,
        at: (u16, u32),
        prog_fd: BorrowedFd<'_>,
        name: &str,
    ) -> Result<(), Error> {
        let m = attach_bpf_at_msg(index, egress, at, prog_fd.as_raw_fd(), name, true);
        self.request(m).map_err(|e| e.context(format!("attach bpf filter {name}"), None))
    }

    /// Removes the one filter at (prio, handle) from a hook; ENOENT if absent.
    pub fn detach_bpf_at(
        &mut self,
        index: u32,
        egress: bool,
        (prio, handle): (u16, u32),
    ) -> Result<(), Error> {
        let h = tcmsg(index, handle, hook(egress), filter_info(prio));
        let mut m = MsgBuilder::new(RTM_DELTFILTER, 0).header(&h);
        m.str(TCA_KIND, "bpf");
        self.request(m).map_err(|e| e.context("detach bpf filter", None))
    }

    /// Removes fanlink's filter (its whole priority) from a hook; ENOENT if absent.
    pub fn detach_bpf(&mut self, index: u32, egress: bool) -> Result<(), Error> {
        // Handle 0 with a priority deletes that priority's filter chain, which is ours alone.
        let h = tcmsg(index, 0, hook(egress), filter_info(FILTER_PRIO));
        let m = MsgBuilder::new(RTM_DELTFILTER, 0).header(&h);
        self.request(m).map_err(|e| e.context("detach bpf filter", None))
    }

    /// The cls_bpf filters on one hook of link `index`.
    pub fn bpf_filters(&mut self, index: u32, egress: bool) -> Result<Vec<FilterInfo>, Error> {
        let m = MsgBuilder::new(RTM_GETTFILTER, 0).header(&tcmsg(index, 0, hook(egress), 0));
        let replies = self.dump(m).map_err(|e| e.context("list filters", None))?;
        let mut out = Vec::new();
        for p in &replies {
            out.extend(parse_filter(p).map_err(|e| super::malformed("list filters", e))?);
        }
        Ok(out)
    }

    /// Frames dropped at link `index`'s clsact hooks (the fan program's verdicts), or None
    /// if the link has no clsact qdisc.
    pub fn qdisc_drops(&mut self, index: u32) -> Result<Option<u64>, Error> {
        let m = MsgBuilder::new(RTM_GETQDISC, 0).header(&tcmsg(index, 0, 0, 0));
        // Whether a qdisc dump honours tcm_ifindex has varied by kernel; filter here too.
        let replies = self.dump(m).map_err(|e| e.context("list qdiscs", None))?;
        for p in &replies {
            if let Some(d) = parse_clsact_drops(p, index).map_err(|e| super::malformed("list qdiscs", e))? {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn clsact_bytes_match_tc() {
        let mut m = clsact_msg(true, 2);
        m.add_flags(msg::NLM_F_ACK);
        let b = m.finish(1, 0);
        #[rustfmt::skip]
        assert_eq!(&b[4..], [
            36, 0, 0x05, 0x06, 1, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xF1, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0,
            11, 0, 1, 0, b'c', b'l', b's', b'a', b'c', b't', 0, 0,
        ]);
    }

    #[test]
    fn filter_bytes_and_round_trip() {
        let b = attach_bpf_msg(2, true, 5, "fan", true).finish(1, 0);
        #[rustfmt::skip]
        assert_eq!(&b[4..], [
            44, 0, 0x01, 0x05, 1, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0xF3, 0xFF, 0xFF, 0xFF, 0x00, 0x03, 0x01, 0x00,
            8, 0, 1, 0, b'b', b'p', b'f', 0,
            28, 0, 2, 0,
            8, 0, 6, 0, 5, 0, 0, 0,
            8, 0, 7, 0, b'f', b'a', b'n', 0,
            8, 0, 8, 0, 1, 0, 0, 0,
        ]);
        let f = parse_filter(&b[msg::NLMSG_HDRLEN..]).unwrap().unwrap();
        let want = FilterInfo { name: "fan".into(), prog_id: None, prio: 1, handle: 1, direct_action: true };
        assert_eq!(f, want);
    }

    #[test]
    fn drops_come_from_stats2_queue() {
        let mut m = MsgBuilder::new(RTM_NEWQDISC, 0).header(&tcmsg(2, CLSACT_HANDLE, TC_H_CLSACT, 0));
        m.str(TCA_KIND, "clsact").nest(TCA_STATS2, |m| {
            m.bytes(1, &[0; 16])
                .bytes(TCA_STATS_QUEUE, &[0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        });
        let b = m.finish(1, 0);
        assert_eq!(parse_clsact_drops(&b[msg::NLMSG_HDRLEN..], 2), Ok(Some(7)));
        assert_eq!(parse_clsact_drops(&b[msg::NLMSG_HDRLEN..], 3), Ok(None));
    }
}
