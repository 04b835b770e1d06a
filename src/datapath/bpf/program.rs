//! The fan's tc egress program, emitted from a fan's parameters: the Ubuntu kernel patch's
//! per-frame mapping redone with `bpf_skb_set_tunnel_key` on a collect_md vxlan.
//!
//! The program is the one in `design/bpf-prototype.md`, generalized to any valid prefix
//! pair, reading the headers with `bpf_skb_load_bytes` (linear or not, and without the packet
//! pointer comparisons Linux 5.10 refuses under the unit's capabilities), and key size 28 so
//! that kernels before 6.0 (no `local_ipv4`) accept it. The fan's parameters are
//! only immediates: no maps, no relocations.

use super::insn::*;
use crate::fan::FanMap;
use std::net::Ipv4Addr;

/// tc verdicts (`TC_ACT_*`) in direct-action mode.
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
/// `bpf_redirect`'s verdict; `TC_ACT_UNSPEC` passes the frame to the hook's next filter.
pub const TC_ACT_REDIRECT: i32 = 7;
pub const TC_ACT_UNSPEC: i32 = -1;

/// Helper numbers from `enum bpf_func_id`.
pub const HELPER_SKB_GET_TUNNEL_KEY: i32 = 20;
pub const HELPER_SKB_SET_TUNNEL_KEY: i32 = 21;
pub const HELPER_REDIRECT: i32 = 23;
pub const HELPER_SKB_LOAD_BYTES: i32 = 26;
/// `bpf_redirect` flag: into the device's receive path rather than out of it.
pub const BPF_F_INGRESS: i32 = 1;
pub const HELPER_SKB_PULL_DATA: i32 = 39;

/// Offsets in the uapi `struct __sk_buff`; the verifier rewrites these context loads into
/// the real `struct sk_buff` offsets (the prototype's listing shows data as `+200`).
#[cfg(test)]
pub(crate) const SKB_LEN: i16 = 0;
#[cfg(test)]
pub(crate) const SKB_DATA: i16 = 76;
#[cfg(test)]
pub(crate) const SKB_DATA_END: i16 = 80;

/// `offsetof(struct bpf_tunnel_key, local_ipv4)`: the whole key before 6.0, and still
/// accepted as a legacy size since. fanlink never sets a tunnel source address.
pub const TUNNEL_KEY_SIZE: i32 = 28;
/// Where the key lives on the stack (8-byte aligned, 28 bytes rounded up to 32).
const KEY: i16 = -32;
/// `offsetof(struct bpf_tunnel_key, tunnel_ttl)`; tunnel_id is at 0, remote_ipv4 at 4.
const KEY_TUNNEL_TTL: i16 = 21;
/// A VNI is 24 bits; masked so that the 64-bit OR's sign extension cannot reach remote_ipv4.
const VNI_MASK: u32 = 0x00ff_ffff;

/// Frame layout: Ethernet header, then the IPv4 destination or the ARP target address.
const ETH_TYPE: i16 = 12;
const IPV4_DST: i16 = 14 + 16;
const ARP_HEADER: i16 = 14;
const ARP_HLEN: i16 = 14 + 4;
const ARP_TPA: i16 = 14 + 24;
/// Frame bytes 10..34 (the ethertype, the IPv4 header or the ARP header up to its sender
/// address) are copied to the stack at HEAD, three whole slots; the ARP target to TPA.
const HEAD_FROM: i32 = 10;
const HEAD_LEN: i32 = 24;
const HEAD: i16 = -64;
const TPA: i16 = -40;

/// Header fields as a little-endian load sees them (bytes in wire order).
const ETH_P_IP: i32 = u16::from_le_bytes([0x08, 0x00]) as i32;
const ETH_P_ARP: i32 = u16::from_le_bytes([0x08, 0x06]) as i32;
/// htype 1 (Ethernet) and ptype 0x0800 (IPv4), loaded as one u32.
const ARP_ETHER_IP: i32 = u32::from_le_bytes([0x00, 0x01, 0x08, 0x00]) as i32;
/// hlen 6 and plen 4, loaded as one u16.
const ARP_LENS: i32 = u16::from_le_bytes([6, 4]) as i32;

/// What one fan's egress program is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanProgram {
    pub map: FanMap,
    /// This host's underlay address: frames that would map back to it are dropped.
    pub local: Ipv4Addr,
    pub vni: u32,
    /// Outer TTL; the vxlan device's own setting does not apply to metadata TX.
    pub ttl: u8,
    /// The shared datapath: the program runs on the fan's veth and sends each frame on
    /// into the host's one `external` vxlan, this ifindex. `None`: it runs on the fan's
    /// own vxlan, which sends the frame itself.
    pub redirect: Option<u32>,
}

impl FanProgram {
    /// The parameters of an Ubuntu fan: VNI from the overlay network, outer TTL 64.
    pub fn new(map: FanMap, local: Ipv4Addr) -> FanProgram {
        FanProgram { map, local, vni: map.vni(), ttl: 64, redirect: None }
    }

    /// A stable description of the parameters, for the tc filter name, so that a reader of
    /// `tc filter show` (and fanlink's own observe step) can tell which fan a program maps.
    /// At most 84 bytes; VNI and TTL appear only when they differ from the fan's defaults.
    pub fn tag(&self) -> String {
        let mut tag = format!("fanlink {} {} {}", self.map.overlay(), self.map.underlay(), self.local);
        if self.vni != self.map.vni() {
            tag.push_str(&format!(" vni {}", self.vni));
        }
        if self.ttl != 64 {
            tag.push_str(&format!(" ttl {}", self.ttl));
        }
        if let Some(ifindex) = self.redirect {
            tag.push_str(&format!(" via {ifindex}"));
        }
        tag
    }

    /// The kernel's program name (at most 15 characters of `[A-Za-z0-9_.]`), as
    /// `bpftool prog show` lists it: `fanlink_` and the VNI in hex, e.g. `fanlink_fa0000`.
    pub fn prog_name(&self) -> String {
        format!("fanlink_{:06x}", self.vni & 0x00ff_ffff)
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Reinterprets a 32-bit constant for an ALU32/JMP32 immediate, where it is used as is.
fn imm(value: u32) -> i32 {
    value as i32
}

/// `bpf_skb_load_bytes(skb, from, fp + to, len)`; a frame too short for it is dropped
/// (r0 is TC_ACT_SHOT at every jump to `out` before the key is set).
fn load_bytes(a: &mut Asm, from: i32, to: i16, len: i32) {
    a.emit(mov64_reg(R1, R6)).emit(mov64_imm(R2, from));
    a.emit(mov64_reg(R3, R10)).emit(add64_imm(R3, i32::from(to)));
    a.emit(mov64_imm(R4, len)).emit(call(HELPER_SKB_LOAD_BYTES));
    a.emit(mov64_reg(R1, R0)).emit(mov64_imm(R0, TC_ACT_SHOT));
    a.jump(jmp_imm(Cond::Slt, R1, 0), "out");
}

/// The egress program for `fan-vx`: maps each frame's IPv4 destination (or ARP target) to
/// its owner's underlay address and sets the tunnel key; drops what has no owner.
pub fn fan_egress(p: &FanProgram) -> Vec<Insn> {
    let overlay = p.map.overlay();
    let underlay = p.map.underlay();
    let overlay_mask = prefix_mask(overlay.prefix_len());
    let host_mask = !prefix_mask(underlay.prefix_len());
    let shift = i32::from(underlay.prefix_len() - overlay.prefix_len());

    let mut a = Asm::new();
    // r6 keeps the context: helper calls clobber r1-r5.
    a.emit(mov64_reg(R6, R1));
    // The headers are copied to the stack with bpf_skb_load_bytes rather than read in
    // place: comparing packet pointers needs CAP_PERFMON on Linux 5.10 ("pointer
    // comparison prohibited"), which the unit does not grant, and the helper also reads
    // headers that are not linear. Frame bytes 10..34 land 8-aligned, so every field is
    // read aligned (the verifier insists on stack accesses).
    load_bytes(&mut a, HEAD_FROM, HEAD, HEAD_LEN);
    a.emit(ldx(Size::H, R5, R10, HEAD + ETH_TYPE - HEAD_FROM as i16));
    a.jump(jmp_imm(Cond::Eq, R5, ETH_P_IP), "ipv4");
    a.jump(jmp_imm(Cond::Ne, R5, ETH_P_ARP), "out");
    a.emit(ldx(Size::W, R5, R10, HEAD + ARP_HEADER - HEAD_FROM as i16));
    a.jump(jmp32_imm(Cond::Ne, R5, ARP_ETHER_IP), "out");
    a.emit(ldx(Size::H, R5, R10, HEAD + ARP_HLEN - HEAD_FROM as i16));
    a.jump(jmp_imm(Cond::Ne, R5, ARP_LENS), "out");
    // Like the kernel patch: an ARP request or reply goes where its target lives.
    load_bytes(&mut a, i32::from(ARP_TPA), TPA, 4);
    a.emit(ldx(Size::W, R5, R10, TPA));
    a.jump(ja(), "map");
    a.label("ipv4");
    a.emit(ldx(Size::W, R5, R10, HEAD + IPV4_DST - HEAD_FROM as i16));

    // From here on in host order, 32-bit operations only, so masks need no ld_imm64.
    a.label("map");
    a.emit(be32(R5));
    a.emit(mov32_reg(R4, R5)).emit(alu32_imm(Alu::And, R4, imm(overlay_mask)));
    a.jump(jmp32_imm(Cond::Ne, R4, imm(u32::from(overlay.network()))), "out");
    a.emit(alu32_imm(Alu::And, R5, imm(!overlay_mask)));
    a.emit(alu32_imm(Alu::Rsh, R5, shift));
    // The underlay-broadcast hole: host parts all zeros or all ones would go to the
    // underlay's network or broadcast address and flood every host.
    a.jump(jmp32_imm(Cond::Eq, R5, 0), "out");
    a.jump(jmp32_imm(Cond::Eq, R5, imm(host_mask)), "out");
    a.emit(alu32_imm(Alu::Or, R5, imm(u32::from(underlay.network()))));
    // Our own slice is local: the bridge delivers it, the tunnel must not loop it back.
    a.jump(jmp32_imm(Cond::Eq, R5, imm(u32::from(p.local))), "out");

    // The key, built in registers and written one whole 8-byte stack slot per store: the
    // helper rejects a non-zero tunnel_ext, so every byte is written. Two narrower stores
    // into one slot are refused before Linux 6.2 without CAP_PERFMON ("attempt to corrupt
    // spilled pointer on stack"), which the unit does not grant.
    // Slot 0: tunnel_id, then remote_ipv4 in host order (the helper converts it with
    // cpu_to_be32); w5's upper half is zero after the 32-bit operations above.
    a.emit(alu64_imm(Alu::Lsh, R5, 32));
    a.emit(alu64_imm(Alu::Or, R5, imm(p.vni & VNI_MASK)));
    a.emit(stx(Size::DW, R10, KEY, R5));
    // Slot 1: the rest of remote_ipv6, unused.
    a.emit(st_imm(Size::DW, R10, KEY + 8, 0));
    // Slot 2: tunnel_tos 0, tunnel_ttl, tunnel_ext 0.
    a.emit(mov64_imm(R4, i32::from(p.ttl)));
    a.emit(alu64_imm(Alu::Lsh, R4, 8 * i32::from(KEY_TUNNEL_TTL - 16)));
    a.emit(stx(Size::DW, R10, KEY + 16, R4));
    // Slot 3: tunnel_label 0 and 4 bytes past the key's 28.
    a.emit(st_imm(Size::DW, R10, KEY + 24, 0));
    a.emit(mov64_reg(R1, R6));
    a.emit(mov64_reg(R2, R10)).emit(add64_imm(R2, i32::from(KEY)));
    a.emit(mov64_imm(R3, TUNNEL_KEY_SIZE));
    a.emit(mov64_imm(R4, 0));
    a.emit(call(HELPER_SKB_SET_TUNNEL_KEY));
    a.emit(mov64_reg(R1, R0));
    a.emit(mov64_imm(R0, TC_ACT_SHOT));
    a.jump(jmp_imm(Cond::Slt, R1, 0), "out");
    match p.redirect {
        None => a.emit(mov64_imm(R0, TC_ACT_OK)),
        // The key travels with the frame (a metadata dst) into the shared vxlan's xmit.
        Some(ifindex) => {
            a.emit(mov32_imm(R1, imm(ifindex))).emit(mov64_imm(R2, 0)).emit(call(HELPER_REDIRECT))
        }
    };
    a.label("out");
    a.emit(exit());
    a.finish()
}

/// One fan's filter on the ingress of the host's shared vxlan (the datapath for kernels
/// without vnifilter, which deliver every VNI to that one device): a frame whose tunnel id
/// is the fan's VNI goes into the receive path of the fan's veth, a port of its bridge;
/// any other goes on to the next filter (another fan's, and last `drop_all`).
pub fn fan_steer(vni: u32, port_ifindex: u32) -> Vec<Insn> {
    let mut a = Asm::new();
    // The helper fills the key (the verifier counts it as written); kernels before 6.0 take
    // exactly this size, later ones still accept it.
    a.emit(mov64_reg(R2, R10)).emit(add64_imm(R2, i32::from(KEY)));
    a.emit(mov64_imm(R3, TUNNEL_KEY_SIZE));
    a.emit(mov64_imm(R4, 0));
    a.emit(call(HELPER_SKB_GET_TUNNEL_KEY));
    a.emit(mov64_reg(R1, R0));
    a.emit(mov64_imm(R0, TC_ACT_UNSPEC));
    a.jump(jmp_imm(Cond::Slt, R1, 0), "out");
    a.emit(ldx(Size::W, R1, R10, KEY)); // tunnel_id, first in the key
    a.jump(jmp32_imm(Cond::Ne, R1, imm(vni & VNI_MASK)), "out");
    a.emit(mov32_imm(R1, imm(port_ifindex)));
    a.emit(mov64_imm(R2, BPF_F_INGRESS));
    a.emit(call(HELPER_REDIRECT));
    a.label("out");
    a.emit(exit());
    a.finish()
}

/// The last filter on the shared vxlan's ingress: a frame no fan claimed (a VNI that is no
/// fan's on this host) is dropped, never handed to the host's stack.
pub fn drop_all() -> Vec<Insn> {
    vec![mov64_imm(R0, TC_ACT_SHOT), exit()]
}

/// The kernel's name of a fan's steering program, e.g. `fansteer_fa0000`.
pub fn steer_prog_name(vni: u32) -> String {
    format!("fansteer_{:06x}", vni & VNI_MASK)
}
