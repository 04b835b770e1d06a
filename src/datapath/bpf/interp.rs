//! A test-only interpreter for the instructions fanlink emits, so the fan program's
//! verdicts can be property-tested against `FanMap` without a kernel.
//!
//! It models what the program can touch: the `__sk_buff` fields `len`, `data` and
//! `data_end`, a linear packet area that `bpf_skb_pull_data` can grow, a 512-byte stack
//! whose unwritten bytes may not be read, and `bpf_skb_set_tunnel_key`, which it records.
//! Anything else (an unknown opcode, a read past `data_end`, a register clobbered by a
//! call and then used) is an error, which is stricter than needed and never looser than
//! the verifier on these points.

use super::insn::{class, Insn};
use super::program::{
    HELPER_REDIRECT, HELPER_SKB_GET_TUNNEL_KEY, HELPER_SKB_LOAD_BYTES, HELPER_SKB_PULL_DATA,
    HELPER_SKB_SET_TUNNEL_KEY, SKB_DATA, SKB_DATA_END, SKB_LEN, TC_ACT_REDIRECT, TUNNEL_KEY_SIZE,
};

/// Disjoint fake addresses for the three regions, far apart so a stray pointer hits nothing.
const CTX: u64 = 0x1000_0000;
const PKT: u64 = 0x2000_0000;
const FP: u64 = 0x3000_0000;
const STACK_SIZE: usize = 512;
/// What r1-r5 hold after a call: not an address of any region.
const CLOBBERED: u64 = 0xdead_beef_dead_beef;
const STEP_LIMIT: usize = 4096;
const ENOMEM: i64 = 12;

/// The frame a program sees, and how much of it is linear.
#[derive(Debug, Clone)]
pub struct Skb {
    pub frame: Vec<u8>,
    pub linear: usize,
    /// What `bpf_skb_set_tunnel_key` returns.
    pub set_key_result: i64,
    /// The received frame's tunnel id (VNI), for `bpf_skb_get_tunnel_key`; `None`: the
    /// frame carries no tunnel metadata and the helper fails.
    pub tunnel_id: Option<u32>,
}

impl Skb {
    /// A frame with all of it linear and no tunnel metadata.
    pub fn linear(frame: Vec<u8>) -> Skb {
        let linear = frame.len();
        Skb { frame, linear, set_key_result: 0, tunnel_id: None }
    }
}

/// `struct bpf_tunnel_key` as the helper received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelKey {
    pub tunnel_id: u32,
    pub remote_ipv4: u32,
    pub tos: u8,
    pub ttl: u8,
    pub ext: u16,
    pub label: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub r0: u64,
    pub key: Option<TunnelKey>,
    /// The `len` argument of each `bpf_skb_pull_data` call.
    pub pulls: Vec<u32>,
    /// The (offset, len) of each `bpf_skb_load_bytes` call.
    pub loads: Vec<(u32, u32)>,
    /// The `(ifindex, flags)` of a `bpf_redirect` call.
    pub redirect: Option<(u32, u64)>,
}

struct Machine<'a> {
    regs: [u64; 11],
    stack: [Option<u8>; STACK_SIZE],
    skb: &'a mut Skb,
    out: Outcome,
}

pub fn run(prog: &[Insn], skb: &mut Skb) -> Result<Outcome, String> {
    let mut m = Machine {
        regs: [CLOBBERED; 11],
        stack: [None; STACK_SIZE],
        skb,
        out: Outcome { r0: 0, key: None, pulls: Vec::new(), loads: Vec::new(), redirect: None },
    };
    m.regs[1] = CTX;
    m.regs[10] = FP;
    let mut pc = 0usize;
    for _ in 0..STEP_LIMIT {
        let insn = *prog.get(pc).ok_or(format!("pc {pc} outside the program"))?;
        match m.step(insn).map_err(|e| format!("insn {pc} {insn:?}: {e}"))? {
            Flow::Next => pc += 1,
            Flow::Jump(off) => pc = (pc as i64 + 1 + i64::from(off)) as usize,
            Flow::Exit => {
                m.out.r0 = m.regs[0];
                return Ok(m.out);
            }
        }
    }
    Err("step limit reached".to_string())
}

enum Flow {
    Next,
    Jump(i16),
    Exit,
}

fn size_of(code: u8) -> usize {
    match code & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

impl Machine<'_> {
    fn reg(&self, r: u8) -> Result<u64, String> {
        match self.regs.get(usize::from(r)) {
            Some(&CLOBBERED) => Err(format!("r{r} read while uninitialized or clobbered")),
            Some(&v) => Ok(v),
            None => Err(format!("no register r{r}")),
        }
    }

    fn set(&mut self, r: u8, v: u64) -> Result<(), String> {
        if r >= 10 {
            return Err(format!("write to r{r}"));
        }
        self.regs[usize::from(r)] = v;
        Ok(())
    }

    fn step(&mut self, i: Insn) -> Result<Flow, String> {
        let (dst, src) = (i.dst(), i.src());
        let op = i.code & 0xf0;
        let use_reg = i.code & 0x08 != 0;
        match i.code & 0x07 {
            c @ (class::ALU | class::ALU64) => {
                let wide = c == class::ALU64;
                if op == 0xd0 {
                    return self.endian(i).map(|()| Flow::Next);
                }
                let b = if use_reg { self.reg(src)? } else { i64::from(i.imm) as u64 };
                let a = if op == 0xb0 { 0 } else { self.reg(dst)? };
                let (a, b) = if wide { (a, b) } else { (a & 0xffff_ffff, b & 0xffff_ffff) };
                let bits = if wide { 64 } else { 32 };
                let v = match op {
                    0x00 => a.wrapping_add(b),
                    0x10 => a.wrapping_sub(b),
                    0x40 => a | b,
                    0x50 => a & b,
                    0x60 if b < bits => a << b,
                    0x70 if b < bits => a >> b,
                    0xa0 => a ^ b,
                    0xb0 => b,
                    _ => return Err("unsupported ALU operation".into()),
                };
                self.set(dst, if wide { v } else { v & 0xffff_ffff })?;
                Ok(Flow::Next)
            }
            class::LDX if i.code & 0xe0 == 0x60 => {
                let addr = self.reg(src)?.wrapping_add(i64::from(i.off) as u64);
                let v = self.load(addr, size_of(i.code))?;
                self.set(dst, v)?;
                Ok(Flow::Next)
            }
            c @ (class::ST | class::STX) if i.code & 0xe0 == 0x60 => {
                let addr = self.reg(dst)?.wrapping_add(i64::from(i.off) as u64);
                let v = if c == class::STX { self.reg(src)? } else { i64::from(i.imm) as u64 };
                self.store(addr, size_of(i.code), v)?;
                Ok(Flow::Next)
            }
            c @ (class::JMP | class::JMP32) => match op {
                0x00 if c == class::JMP => Ok(Flow::Jump(i.off)),
                0x80 if c == class::JMP => self.call(i.imm).map(|()| Flow::Next),
                0x90 if c == class::JMP => {
                    self.reg(0)?;
                    Ok(Flow::Exit)
                }
                _ => {
                    let a = self.reg(dst)?;
                    let b = if use_reg { self.reg(src)? } else { i64::from(i.imm) as u64 };
                    let taken = if c == class::JMP {
                        compare(op, a, b, a as i64, b as i64)?
                    } else {
                        let (a, b) = (a as u32, b as u32);
                        compare(op, u64::from(a), u64::from(b), i64::from(a as i32), i64::from(b as i32))?
                    };
                    Ok(if taken { Flow::Jump(i.off) } else { Flow::Next })
                }
            },
            _ => Err("unsupported instruction class or mode".into()),
        }
    }

    /// `BPF_END`: only `be16/32/64` (to big endian), which on a little-endian machine swap.
    fn endian(&mut self, i: Insn) -> Result<(), String> {
        if i.code != (class::ALU | 0xd0 | 0x08) {
            return Err("only BPF_TO_BE is modelled".into());
        }
        let v = self.reg(i.dst())?;
        let v = match i.imm {
            16 => u64::from((v as u16).swap_bytes()),
            32 => u64::from((v as u32).swap_bytes()),
            64 => v.swap_bytes(),
            _ => return Err("bad endian width".into()),
        };
        self.set(i.dst(), v)
    }

    fn load(&self, addr: u64, size: usize) -> Result<u64, String> {
        if (CTX..CTX + 192).contains(&addr) {
            if size != 4 {
                return Err("context fields are read as u32".into());
            }
            return match (addr - CTX) as i16 {
                SKB_LEN => Ok(self.skb.frame.len() as u64),
                SKB_DATA => Ok(PKT),
                SKB_DATA_END => Ok(PKT + self.skb.linear as u64),
                off => Err(format!("context offset {off} is not modelled")),
            };
        }
        let bytes: Vec<u8> = if addr >= PKT && addr + size as u64 <= PKT + self.skb.linear as u64 {
            let at = (addr - PKT) as usize;
            self.skb.frame[at..at + size].to_vec()
        } else {
            let at = self.stack_index(addr, size)?;
            let bytes: Option<Vec<u8>> = self.stack[at..at + size].iter().copied().collect();
            bytes.ok_or(format!("read of unwritten stack at fp{:+}", addr as i64 - FP as i64))?
        };
        Ok(bytes.iter().rev().fold(0, |v, &b| v << 8 | u64::from(b)))
    }

    fn store(&mut self, addr: u64, size: usize, v: u64) -> Result<(), String> {
        let at = self.stack_index(addr, size)?;
        for (k, byte) in v.to_le_bytes()[..size].iter().enumerate() {
            self.stack[at + k] = Some(*byte);
        }
        Ok(())
    }

    fn stack_index(&self, addr: u64, size: usize) -> Result<usize, String> {
        let bottom = FP - STACK_SIZE as u64;
        if addr >= bottom && addr + size as u64 <= FP {
            Ok((addr - bottom) as usize)
        } else {
            Err(format!("access of {size} bytes at {addr:#x} is outside packet and stack"))
        }
    }

    fn call(&mut self, helper: i32) -> Result<(), String> {
        if helper != HELPER_REDIRECT && self.reg(1)? != CTX {
            return Err("helper's first argument is not the context".into());
        }
        let r0 = match helper {
            HELPER_SKB_GET_TUNNEL_KEY => {
                let (key, size, flags) = (self.reg(2)?, self.reg(3)?, self.reg(4)?);
                if size != TUNNEL_KEY_SIZE as u64 || flags != 0 {
                    return Err(format!("get_tunnel_key size {size} flags {flags}"));
                }
                // Like the kernel: the key is filled on success and zeroed on failure.
                let id = self.skb.tunnel_id;
                for off in 0..size {
                    let byte = match (id, off) {
                        (Some(id), 0..=3) => id.to_le_bytes()[off as usize],
                        _ => 0,
                    };
                    self.store(key + off, 1, u64::from(byte))?;
                }
                if id.is_some() {
                    0
                } else {
                    (-22i64) as u64
                }
            }
            HELPER_REDIRECT => {
                let (ifindex, flags) = (self.reg(1)?, self.reg(2)?);
                if ifindex > u64::from(u32::MAX) {
                    return Err(format!("redirect to ifindex {ifindex:#x}"));
                }
                self.out.redirect = Some((ifindex as u32, flags));
                TC_ACT_REDIRECT as u64
            }
            HELPER_SKB_SET_TUNNEL_KEY => {
                let (key, size, flags) = (self.reg(2)?, self.reg(3)?, self.reg(4)?);
                if size != TUNNEL_KEY_SIZE as u64 || flags != 0 {
                    return Err(format!("set_tunnel_key size {size} flags {flags}"));
                }
                // Like the verifier: all `size` bytes must be initialized stack.
                for off in 0..size {
                    self.stack_index(key + off, 1)?;
                    self.load(key + off, 1)?;
                }
                let field = |off: u64, n: usize| self.load(key + off, n);
                self.out.key = Some(TunnelKey {
                    tunnel_id: field(0, 4)? as u32,
                    remote_ipv4: field(4, 4)? as u32,
                    tos: field(20, 1)? as u8,
                    ttl: field(21, 1)? as u8,
                    ext: field(22, 2)? as u16,
                    label: field(24, 4)? as u32,
                });
                self.skb.set_key_result as u64
            }
            HELPER_SKB_LOAD_BYTES => {
                let (from, to, len) = (self.reg(2)? as usize, self.reg(3)?, self.reg(4)? as usize);
                // Like the kernel: the whole frame, linear or not; zeroes on a short frame.
                let bytes = self.skb.frame.get(from..from + len).map(<[u8]>::to_vec);
                for (k, byte) in bytes.clone().unwrap_or_else(|| vec![0; len]).into_iter().enumerate() {
                    self.store(to + k as u64, 1, u64::from(byte))?;
                }
                self.out.loads.push((from as u32, len as u32));
                if bytes.is_some() {
                    0
                } else {
                    (-14i64) as u64
                }
            }
            HELPER_SKB_PULL_DATA => {
                let len = self.reg(2)? as u32;
                self.out.pulls.push(len);
                if len as usize > self.skb.frame.len() {
                    (-ENOMEM) as u64
                } else {
                    self.skb.linear = self.skb.linear.max(len as usize);
                    0
                }
            }
            _ => return Err(format!("helper {helper} is not modelled")),
        };
        self.regs[1..=5].fill(CLOBBERED);
        self.regs[0] = r0;
        Ok(())
    }
}

fn compare(op: u8, a: u64, b: u64, sa: i64, sb: i64) -> Result<bool, String> {
    Ok(match op {
        0x10 => a == b,
        0x20 => a > b,
        0x30 => a >= b,
        0x40 => a & b != 0,
        0x50 => a != b,
        0x60 => sa > sb,
        0x70 => sa >= sb,
        0xa0 => a < b,
        0xb0 => a <= b,
        0xc0 => sa < sb,
        0xd0 => sa <= sb,
        _ => return Err("unsupported jump".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::insn::*;
    use super::*;

    /// Runs `prog` on a 4-byte frame `01 02 03 04`, all linear.
    fn eval(prog: &[Insn]) -> Result<u64, String> {
        let mut skb = Skb::linear(vec![1, 2, 3, 4]);
        run(prog, &mut skb).map(|o| o.r0)
    }

    /// The oracle must get the semantics that the fan program relies on exactly right.
    #[test]
    fn semantics_the_program_relies_on() {
        assert_eq!(eval(&[mov64_imm(R0, -1), exit()]), Ok(u64::MAX), "imm sign-extends");
        assert_eq!(eval(&[mov32_imm(R0, -1), exit()]), Ok(0xffff_ffff), "ALU32 zero-extends");
        let w_add = [mov64_imm(R0, -1), alu32_imm(Alu::Add, R0, 1), exit()];
        assert_eq!(eval(&w_add), Ok(0), "32-bit wrap, upper half cleared");
        let be = [ldx(Size::W, R2, R1, 76), ldx(Size::W, R0, R2, 0), be32(R0), exit()];
        assert_eq!(eval(&be), Ok(0x0102_0304), "little-endian load, then be32");
        // 1 if the jump is taken, 0 if not.
        let taken = |jump: Insn| {
            eval(&[mov64_imm(R0, 1), mov64_imm(R1, -1), jump.with_off(1), mov64_imm(R0, 0), exit()])
        };
        assert_eq!(taken(jmp32_imm(Cond::Eq, R1, -1)), Ok(1));
        assert_eq!(taken(jmp32_imm(Cond::Eq, R1, 0xffff)), Ok(0));
        assert_eq!(taken(jmp_imm(Cond::Eq, R1, -1)), Ok(1), "64-bit compare sign-extends imm");
        assert_eq!(taken(jmp_imm(Cond::Gt, R1, 1)), Ok(1), "unsigned: 2^64-1 > 1");
        assert_eq!(taken(jmp_imm(Cond::Sgt, R1, 1)), Ok(0), "signed: -1 < 1");
        assert_eq!(taken(jmp_imm(Cond::Slt, R1, 0)), Ok(1));
    }

    #[test]
    fn rejects_what_the_verifier_would() {
        let unwritten = eval(&[ldx(Size::W, R0, R10, -4), exit()]).unwrap_err();
        assert!(unwritten.contains("unwritten stack"), "{unwritten}");
        let past_end = eval(&[ldx(Size::W, R2, R1, 76), ldx(Size::W, R0, R2, 1), exit()]).unwrap_err();
        assert!(past_end.contains("outside packet and stack"), "{past_end}");
        let clobbered =
            [mov64_reg(R6, R1), mov64_imm(R2, 0), call(HELPER_SKB_PULL_DATA), mov64_reg(R0, R2), exit()];
        assert!(eval(&clobbered).unwrap_err().contains("r2 read while uninitialized or clobbered"));
        assert!(eval(&[exit()]).unwrap_err().contains("r0 read"));
    }
}
