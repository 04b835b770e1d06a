//! The fan's tc-BPF datapath: an instruction encoder (`insn`), the egress program built
//! from a fan's parameters (`program`), and the `bpf(2)` calls that load and pin it
//! (`load`). Attaching it to the vxlan device is netlink's job, elsewhere.
//!
//! The program replaces the Ubuntu kernel's fan patch on a stock kernel: on an `external`
//! vxlan, it picks each frame's underlay destination with `bpf_skb_set_tunnel_key`, so
//! the kernel holds no per-peer fdb, neighbour or route entries. See
//! `design/bpf-prototype.md` for the prototype it follows.

pub mod insn;
mod load;
mod program;

#[cfg(test)]
mod interp;
#[cfg(test)]
mod tests;

pub use insn::Insn;
pub use load::{load, load_fan, pin, prog_id, prog_info, supports_jmp32, LoadError, ProgInfo};
pub use program::{
    drop_all, fan_egress, fan_steer, steer_prog_name, FanProgram, BPF_F_INGRESS, HELPER_REDIRECT,
    HELPER_SKB_GET_TUNNEL_KEY, HELPER_SKB_LOAD_BYTES, HELPER_SKB_PULL_DATA, HELPER_SKB_SET_TUNNEL_KEY,
    TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, TUNNEL_KEY_SIZE,
};
