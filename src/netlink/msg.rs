//! The netlink wire codec: a message builder and zero-copy parsers. No I/O, so every byte is
//! unit-tested here; the socket side lives in `mod.rs`.
//!
//! Layout (all native-endian): `nlmsghdr` (16 bytes), then a fixed family header (`ifinfomsg`,
//! `tcmsg`, ...) padded to 4, then attributes `{u16 len, u16 type, value}` each padded to 4.
//! `len` counts header and value but not the padding.

use std::fmt;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLA_HDRLEN: usize = 4;
/// Marks an attribute as a container. Strict kernel parsers (`nla_parse_nested`, e.g. vxlan's
/// VNI filter) refuse nests without it; older "deprecated" parsers ignore it.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
/// Send the created object back to the requester (rtnetlink links: Linux 6.3 and later; older
/// kernels ignore the flag).
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// NEWRULE: append to the chain instead of inserting at its top.
pub const NLM_F_APPEND: u16 = 0x800;
/// In an NLMSG_ERROR: the echoed request was cut down to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR or NLMSG_DONE: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Extended-ack attribute carrying the kernel's human-readable reason.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Rounds up to the 4-byte netlink alignment (`NLMSG_ALIGN`, `NLA_ALIGN`).
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Builds one request: header, fixed struct, attributes. Lengths are patched in `finish`.
#[derive(Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    /// Starts a message of type `ty`. `NLM_F_REQUEST` is always added.
    pub fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        MsgBuilder { buf }
    }

    /// The message type, for error context.
    pub fn ty(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    /// The flags as they will be sent.
    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    /// Adds flags after construction (the socket adds `NLM_F_ACK` itself).
    pub fn add_flags(&mut self, flags: u16) {
        let f = self.flags() | flags;
        self.buf[6..8].copy_from_slice(&f.to_ne_bytes());
    }

    /// Appends the family's fixed header (`ifinfomsg`, `tcmsg`, ...), padded to 4.
    pub fn header(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// An attribute with a raw value (MAC and IPv4 addresses are sent this way).
    pub fn bytes(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(NLA_HDRLEN + value.len()).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    /// A u8 attribute; its length is 5, padded to 8 (flags like IFLA_VXLAN_LEARNING).
    pub fn u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.bytes(ty, &[v])
    }

    pub fn u16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.bytes(ty, &v.to_ne_bytes())
    }

    /// A native-endian u32 (MTU, ifindex, VNI in a filter entry, fds).
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_ne_bytes())
    }

    /// A big-endian u16 (ports), as the kernel's `nla_get_be16` expects.
    pub fn be16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A big-endian u32: nf_tables sends every number this way.
    pub fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A big-endian u64 (nf_tables handles and counters).
    pub fn be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    /// A NUL-terminated string (`NLA_STRING`/`NLA_NUL_STRING` both accept the NUL).
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.bytes(ty, &v)
    }

    /// A nested attribute whose children `f` appends. Pass `ty | NLA_F_NESTED` where the
    /// kernel parses the nest strictly; plain `ty` reproduces what iproute2 sends.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        f(self);
        let len = u16::try_from(self.buf.len() - start).expect("netlink nest over 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Stamps length, sequence number and port id; returns the bytes to send.
    pub fn finish(mut self, seq: u32, pid: u32) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("netlink message over 4 GiB");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf[12..16].copy_from_slice(&pid.to_ne_bytes());
        self.buf
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }
}

/// A reply that does not parse: the kernel and we disagree about the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed netlink message: {}", self.0)
    }
}

/// One message of a receive buffer; `payload` starts after the `nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub payload: &'a [u8],
}

/// Iterates the messages of one datagram. Stops after the first malformed one.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

/// Iterator returned by `messages`.
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Msg<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        if b.len() < NLMSG_HDRLEN {
            self.rest = &[];
            return Some(Err(DecodeError("short nlmsghdr")));
        }
        let len = ne_u32(&b[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.rest = &[];
            return Some(Err(DecodeError("bad nlmsg_len")));
        }
        let msg = Msg {
            ty: ne_u16(&b[4..6]),
            flags: ne_u16(&b[6..8]),
            seq: ne_u32(&b[8..12]),
            pid: ne_u32(&b[12..16]),
            payload: &b[NLMSG_HDRLEN..len],
        };
        self.rest = &b[align(len).min(b.len())..];
        Some(Ok(msg))
    }
}

/// What a control message (NLMSG_ERROR or NLMSG_DONE) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// 0 for an ack or a clean DONE, else a positive errno.
    pub errno: i32,
    /// The kernel's extended-ack text (`NLMSGERR_ATTR_MSG`), if it gave one.
    pub ext_ack: Option<String>,
}

/// Decodes an NLMSG_ERROR payload: `int error; struct nlmsghdr request[; request body]; TLVs`.
/// The body is echoed unless the kernel capped it (NETLINK_CAP_ACK, or always for acks).
pub fn parse_error(msg: &Msg<'_>) -> Result<Status, DecodeError> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(DecodeError("short nlmsgerr"));
    }
    let errno = -(ne_u32(&p[0..4]) as i32);
    let echoed = if msg.flags & NLM_F_CAPPED != 0 { NLMSG_HDRLEN } else { ne_u32(&p[4..8]) as usize };
    let tlvs = p.get(align(4 + echoed)..).unwrap_or(&[]);
    Ok(Status { errno, ext_ack: ext_ack(msg.flags, tlvs) })
}

/// Decodes an NLMSG_DONE payload: `int error` (non-zero when a dump failed midway), TLVs.
pub fn parse_done(msg: &Msg<'_>) -> Status {
    let p = msg.payload;
    let errno = if p.len() >= 4 { -(ne_u32(&p[0..4]) as i32) } else { 0 };
    Status { errno, ext_ack: ext_ack(msg.flags, p.get(4..).unwrap_or(&[])) }
}

fn ext_ack(flags: u16, tlvs: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    attrs(tlvs).flatten().find(|a| a.ty == NLMSGERR_ATTR_MSG).map(|a| a.str().to_owned())
}

/// One attribute; `ty` has the NESTED/BYTEORDER flag bits stripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub ty: u16,
    pub value: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn u8(&self) -> Option<u8> {
        self.value.first().copied()
    }

    pub fn u16(&self) -> Option<u16> {
        Some(u16::from_ne_bytes(self.value.get(..2)?.try_into().ok()?))
    }

    pub fn be16(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.value.get(..2)?.try_into().ok()?))
    }

    pub fn u32(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.value.get(..4)?.try_into().ok()?))
    }

    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.value.get(..8)?.try_into().ok()?))
    }

    pub fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.value.get(..4)?.try_into().ok()?))
    }

    pub fn be64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.value.get(..8)?.try_into().ok()?))
    }

    /// The value up to its first NUL; non-UTF-8 bytes are replaced, as names are ASCII.
    pub fn str(&self) -> &'a str {
        let end = self.value.iter().position(|&c| c == 0).unwrap_or(self.value.len());
        std::str::from_utf8(&self.value[..end]).unwrap_or("\u{fffd}")
    }

    /// The children of a nested attribute (the value parsed as attributes).
    pub fn nested(&self) -> Attrs<'a> {
        attrs(self.value)
    }
}

/// Iterates the attributes in `buf` (a payload after its fixed header, or a nest's value).
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

/// Iterator returned by `attrs`; a malformed attribute ends it with one `Err`.
#[derive(Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Fewer than a header's worth of bytes is trailing padding, not an attribute.
        if self.rest.len() < NLA_HDRLEN {
            return None;
        }
        let b = self.rest;
        let len = ne_u16(&b[0..2]) as usize;
        if len < NLA_HDRLEN || len > b.len() {
            self.rest = &[];
            return Some(Err(DecodeError("bad nla_len")));
        }
        let attr = Attr { ty: ne_u16(&b[2..4]) & NLA_TYPE_MASK, value: &b[NLA_HDRLEN..len] };
        self.rest = &b[align(len).min(b.len())..];
        Some(Ok(attr))
    }
}

/// Splits a payload into its fixed header (of `size` bytes) and its attributes.
pub fn split(payload: &[u8], size: usize) -> Result<(&[u8], Attrs<'_>), DecodeError> {
    if payload.len() < size {
        return Err(DecodeError("short family header"));
    }
    Ok((&payload[..size], attrs(payload.get(align(size)..).unwrap_or(&[]))))
}

/// Reads a native-endian u16 from the first two bytes (callers have checked the length).
pub fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

/// Reads a native-endian u32 from the first four bytes (callers have checked the length).
pub fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

// Expected bytes are written out for little-endian hosts, where they were checked against
// strace of iproute2.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn header_only_message() {
        let b = MsgBuilder::new(18, NLM_F_ACK).header(&[1, 2, 3]).finish(7, 0);
        #[rustfmt::skip]
        assert_eq!(b, [
            20, 0, 0, 0, 18, 0, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0,
            1, 2, 3, 0,
        ]);
    }

    #[test]
    fn scalar_attributes_are_padded() {
        let mut m = MsgBuilder::new(16, 0);
        m.u8(1, 0xAB).u16(2, 0x1234).u32(3, 0xDEADBEEF).be16(4, 8472).str(5, "ab").bytes(6, &[]);
        m.be32(7, 0x0102_0304).be64(8, 5);
        let b = m.finish(1, 0);
        let a: Vec<_> = attrs(&b[NLMSG_HDRLEN..]).map(Result::unwrap).collect();
        assert_eq!((a[6].be32(), a[7].be64(), a[6].be64()), (Some(0x0102_0304), Some(5), None));
        #[rustfmt::skip]
        assert_eq!(&b[NLMSG_HDRLEN..], [
            5, 0, 1, 0, 0xAB, 0, 0, 0,
            6, 0, 2, 0, 0x34, 0x12, 0, 0,
            8, 0, 3, 0, 0xEF, 0xBE, 0xAD, 0xDE,
            6, 0, 4, 0, 0x21, 0x18, 0, 0,
            7, 0, 5, 0, b'a', b'b', 0, 0,
            4, 0, 6, 0,
            8, 0, 7, 0, 1, 2, 3, 4,
            12, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 5,
        ]);
    }

    #[test]
    fn vni_filter_entry_matches_bridge_vni_add() {
        // strace of `bridge vni add dev fan-vx vni 16384000` (ifindex 2).
        let mut m = MsgBuilder::new(120, NLM_F_ACK).header(&[7, 0, 0, 0, 2, 0, 0, 0]);
        m.nest(1 | NLA_F_NESTED, |m| {
            m.u32(1, 16_384_000);
        });
        let b = m.finish(0x6B07_4F49, 0);
        #[rustfmt::skip]
        assert_eq!(b, [
            36, 0, 0, 0, 120, 0, 5, 0, 0x49, 0x4F, 0x07, 0x6B, 0, 0, 0, 0,
            7, 0, 0, 0, 2, 0, 0, 0,
            12, 0, 1, 0x80, 8, 0, 1, 0, 0, 0, 0xFA, 0,
        ]);
    }

    #[test]
    fn nests_nest_and_flags_stack() {
        let mut m = MsgBuilder::new(16, NLM_F_CREATE | NLM_F_EXCL);
        m.add_flags(NLM_F_ACK);
        assert_eq!((m.ty(), m.flags()), (16, 0x605));
        m.nest(18, |m| {
            m.str(1, "vxlan").nest(2, |m| {
                m.u8(25, 1);
            });
        });
        #[rustfmt::skip]
        assert_eq!(&m.finish(1, 0)[NLMSG_HDRLEN..], [
            28, 0, 18, 0,
            10, 0, 1, 0, b'v', b'x', b'l', b'a', b'n', 0, 0, 0,
            12, 0, 2, 0, 5, 0, 25, 0, 1, 0, 0, 0,
        ]);
    }

    #[test]
    fn parses_attributes_and_nests() {
        let mut m = MsgBuilder::new(16, 0);
        m.str(3, "fan-vx").nest(18 | NLA_F_NESTED, |m| {
            m.be16(15, 8472).u32(4, 9);
        });
        let b = m.finish(1, 0);
        let msg = messages(&b).next().unwrap().unwrap();
        let a: Vec<_> = attrs(msg.payload).map(Result::unwrap).collect();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].ty, a[0].str()), (3, "fan-vx"));
        assert_eq!(a[1].ty, 18, "flag bits are stripped");
        let inner: Vec<_> = a[1].nested().map(Result::unwrap).collect();
        assert_eq!(inner[0].be16(), Some(8472));
        assert_eq!(inner[1].u32(), Some(9));
        assert_eq!(inner[1].u64(), None);
    }

    #[test]
    fn iterates_messages_and_rejects_bad_lengths() {
        let mut buf = MsgBuilder::new(16, NLM_F_MULTI).header(&[1]).finish(5, 99);
        buf.extend(MsgBuilder::new(NLMSG_DONE, NLM_F_MULTI).header(&[0; 4]).finish(5, 99));
        let ms: Vec<_> = messages(&buf).map(Result::unwrap).collect();
        assert_eq!(ms.len(), 2);
        assert_eq!((ms[0].ty, ms[0].seq, ms[0].pid, ms[0].payload), (16, 5, 99, &[1, 0, 0, 0][..]));
        assert_eq!(parse_done(&ms[1]), Status { errno: 0, ext_ack: None });

        buf[0] = 200;
        assert_eq!(messages(&buf).next(), Some(Err(DecodeError("bad nlmsg_len"))));
        assert!(attrs(&[3, 0, 1, 0]).next().unwrap().is_err());
        assert_eq!(attrs(&[0, 0]).next(), None, "a short tail is padding");
    }

    #[test]
    fn error_with_echoed_request_and_ext_ack() {
        // NLMSG_ERROR, flags ACK_TLVS: error -98 (EADDRINUSE), the echoed 24-byte request,
        // then NLMSGERR_ATTR_MSG "VNI in use" and NLMSGERR_ATTR_OFFS.
        let request = MsgBuilder::new(120, NLM_F_ACK).header(&[7, 0, 0, 0, 2, 0, 0, 0]).finish(3, 0);
        let mut m =
            MsgBuilder::new(NLMSG_ERROR, NLM_F_ACK_TLVS).header(&(-98i32).to_ne_bytes()).header(&request);
        m.str(NLMSGERR_ATTR_MSG, "VNI in use").u32(2, 24);
        let b = m.finish(3, 0);
        let msg = messages(&b).next().unwrap().unwrap();
        let st = parse_error(&msg).unwrap();
        assert_eq!(st, Status { errno: 98, ext_ack: Some("VNI in use".into()) });
    }

    #[test]
    fn capped_ack_without_tlvs() {
        let request = MsgBuilder::new(16, 0).header(&[0; 16]).finish(3, 0);
        let b = MsgBuilder::new(NLMSG_ERROR, NLM_F_CAPPED)
            .header(&0i32.to_ne_bytes())
            .header(&request[..NLMSG_HDRLEN])
            .finish(3, 0);
        let msg = messages(&b).next().unwrap().unwrap();
        assert_eq!(parse_error(&msg).unwrap(), Status { errno: 0, ext_ack: None });
        let short = MsgBuilder::new(NLMSG_ERROR, 0).header(&[0; 8]).finish(3, 0);
        assert!(parse_error(&messages(&short).next().unwrap().unwrap()).is_err());
    }

    #[test]
    fn split_skips_the_padded_family_header() {
        let b = [1, 2, 3, 4, 5, 0, 0, 0, 5, 0, 9, 0, 7, 0, 0, 0];
        let (hdr, mut a) = split(&b, 5).unwrap();
        assert_eq!(hdr, [1, 2, 3, 4, 5]);
        assert_eq!(a.next().unwrap().unwrap().u8(), Some(7));
        assert!(split(&b[..3], 5).is_err());
    }
}
