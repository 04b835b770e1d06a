//! A minimal eBPF instruction encoder and a label-resolving assembler, for the few forms
//! the fan program uses. Pure: it only builds the 8-byte `struct bpf_insn` records that
//! `BPF_PROG_LOAD` takes.
//!
//! Encodings follow the kernel's `include/uapi/linux/bpf.h` (opcode = class | op | source,
//! registers packed `dst | src << 4` as the little-endian bitfield lays them out).

use std::collections::HashMap;

/// The bitfield order of `bpf_insn.dst_reg`/`src_reg` and the byte order of `off`/`imm`
/// below are those of a little-endian kernel (x86_64, aarch64); fanlink targets no other.
const _: () = assert!(cfg!(target_endian = "little"), "the BPF encoder emits little-endian instructions");

/// A BPF register. R10 is the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);
pub const R10: Reg = Reg(10);

/// Instruction classes (low 3 bits of the opcode).
pub(crate) mod class {
    pub const LDX: u8 = 0x01;
    pub const ST: u8 = 0x02;
    pub const STX: u8 = 0x03;
    pub const ALU: u8 = 0x04;
    pub const JMP: u8 = 0x05;
    pub const JMP32: u8 = 0x06;
    pub const ALU64: u8 = 0x07;
}

/// `BPF_MEM`: the only addressing mode fanlink uses for loads and stores.
const MODE_MEM: u8 = 0x60;
/// `BPF_X`: the operand is `src_reg` rather than `imm`. For `BPF_END` it means `BPF_TO_BE`.
const SRC_X: u8 = 0x08;

/// Access width of a load or store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
    DW = 0x18,
}

/// Arithmetic operations (the `op` nibble of ALU/ALU64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Xor = 0xa0,
    Mov = 0xb0,
    End = 0xd0,
}

/// Jump conditions (the `op` nibble of JMP/JMP32). `S*` compare signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Set = 0x40,
    Ne = 0x50,
    Sgt = 0x60,
    Sge = 0x70,
    Lt = 0xa0,
    Le = 0xb0,
    Slt = 0xc0,
    Sle = 0xd0,
}

const JA: u8 = 0x00;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// `dst | src << 4`.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn { code, regs: dst.0 | (src.0 << 4), off, imm }
    }

    pub fn dst(&self) -> u8 {
        self.regs & 0x0f
    }

    pub fn src(&self) -> u8 {
        self.regs >> 4
    }

    /// The same instruction with another offset: how the assembler patches jump targets.
    pub fn with_off(self, off: i16) -> Insn {
        Insn { off, ..self }
    }

    /// The kernel's in-memory layout on a little-endian machine.
    pub fn to_bytes(&self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [self.code, self.regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3]]
    }

    pub fn is_jump(&self) -> bool {
        let class = self.code & 0x07;
        let op = self.code & 0xf0;
        (class == class::JMP || class == class::JMP32) && op != CALL && op != EXIT
    }
}

pub fn alu64_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
    Insn::new(class::ALU64 | op as u8, dst, R0, 0, imm)
}

pub fn alu64_reg(op: Alu, dst: Reg, src: Reg) -> Insn {
    Insn::new(class::ALU64 | op as u8 | SRC_X, dst, src, 0, 0)
}

/// 32-bit ALU: operates on the low halves and zero-extends, so `imm` is never sign-extended.
pub fn alu32_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
    Insn::new(class::ALU | op as u8, dst, R0, 0, imm)
}

pub fn alu32_reg(op: Alu, dst: Reg, src: Reg) -> Insn {
    Insn::new(class::ALU | op as u8 | SRC_X, dst, src, 0, 0)
}

/// `dst = imm`, sign-extended to 64 bits.
pub fn mov64_imm(dst: Reg, imm: i32) -> Insn {
    alu64_imm(Alu::Mov, dst, imm)
}

pub fn mov64_reg(dst: Reg, src: Reg) -> Insn {
    alu64_reg(Alu::Mov, dst, src)
}

/// `wdst = imm`, zero-extended to 64 bits.
pub fn mov32_imm(dst: Reg, imm: i32) -> Insn {
    alu32_imm(Alu::Mov, dst, imm)
}

pub fn mov32_reg(dst: Reg, src: Reg) -> Insn {
    alu32_reg(Alu::Mov, dst, src)
}

pub fn add64_imm(dst: Reg, imm: i32) -> Insn {
    alu64_imm(Alu::Add, dst, imm)
}

/// `dst = be32 dst`: network to host order for a 32-bit load (a byte swap here).
pub fn be32(dst: Reg) -> Insn {
    Insn::new(class::ALU | Alu::End as u8 | SRC_X, dst, R0, 0, 32)
}

/// `dst = *(size *)(src + off)`.
pub fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
    Insn::new(class::LDX | MODE_MEM | size as u8, dst, src, off, 0)
}

/// `*(size *)(dst + off) = imm`.
pub fn st_imm(size: Size, dst: Reg, off: i16, imm: i32) -> Insn {
    Insn::new(class::ST | MODE_MEM | size as u8, dst, R0, off, imm)
}

/// `*(size *)(dst + off) = src`.
pub fn stx(size: Size, dst: Reg, off: i16, src: Reg) -> Insn {
    Insn::new(class::STX | MODE_MEM | size as u8, dst, src, off, 0)
}

/// Unconditional jump; the offset is set by [`Insn::with_off`] or the assembler.
pub fn ja() -> Insn {
    Insn::new(class::JMP | JA, R0, R0, 0, 0)
}

/// `if dst <cond> imm` on 64 bits (`imm` sign-extended).
pub fn jmp_imm(cond: Cond, dst: Reg, imm: i32) -> Insn {
    Insn::new(class::JMP | cond as u8, dst, R0, 0, imm)
}

pub fn jmp_reg(cond: Cond, dst: Reg, src: Reg) -> Insn {
    Insn::new(class::JMP | cond as u8 | SRC_X, dst, src, 0, 0)
}

/// `if wdst <cond> imm` on the low 32 bits: full 32-bit constants without sign-extension.
pub fn jmp32_imm(cond: Cond, dst: Reg, imm: i32) -> Insn {
    Insn::new(class::JMP32 | cond as u8, dst, R0, 0, imm)
}

pub fn jmp32_reg(cond: Cond, dst: Reg, src: Reg) -> Insn {
    Insn::new(class::JMP32 | cond as u8 | SRC_X, dst, src, 0, 0)
}

/// Call a kernel helper by its number (`enum bpf_func_id`).
pub fn call(helper: i32) -> Insn {
    Insn::new(class::JMP | CALL, R0, R0, 0, helper)
}

pub fn exit() -> Insn {
    Insn::new(class::JMP | EXIT, R0, R0, 0, 0)
}

/// Builds a program from instructions and named jump targets, so the source can read like
/// a listing: `a.jump(jmp_reg(Cond::Gt, R4, R3), "drop")` ... `a.label("drop")`.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<&'static str, usize>,
    fixups: Vec<(usize, &'static str)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    pub fn emit(&mut self, insn: Insn) -> &mut Asm {
        self.insns.push(insn);
        self
    }

    /// Emits a jump whose offset is resolved to `label` by [`Asm::finish`].
    pub fn jump(&mut self, insn: Insn, label: &'static str) -> &mut Asm {
        assert!(insn.is_jump(), "not a jump: {insn:?}");
        self.fixups.push((self.insns.len(), label));
        self.emit(insn)
    }

    /// Names the position of the next instruction.
    pub fn label(&mut self, label: &'static str) -> &mut Asm {
        let previous = self.labels.insert(label, self.insns.len());
        assert!(previous.is_none(), "label {label:?} defined twice");
        self
    }

    /// Resolves every jump. A missing label or an offset beyond ±32767 is a bug in the
    /// program's source, not a runtime condition, hence the panic.
    pub fn finish(mut self) -> Vec<Insn> {
        for &(at, label) in &self.fixups {
            let target = *self.labels.get(label).unwrap_or_else(|| panic!("undefined label {label:?}"));
            let off = target as i64 - at as i64 - 1;
            let off = i16::try_from(off).unwrap_or_else(|_| panic!("jump to {label:?} out of range"));
            self.insns[at] = self.insns[at].with_off(off);
        }
        self.insns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(insn: Insn) -> String {
        insn.to_bytes().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
    }

    /// Byte-exact encodings. The opcode byte of each is the one `bpftool prog dump xlated`
    /// prints in the prototype's listing (bpf-prototype.md), which the kernel accepted.
    #[test]
    fn encodings() {
        let table: &[(Insn, &str)] = &[
            (mov64_imm(R0, 2), "b7 00 00 00 02 00 00 00"),
            (ldx(Size::DW, R2, R1, 200), "79 12 c8 00 00 00 00 00"),
            (ldx(Size::W, R2, R1, 76), "61 12 4c 00 00 00 00 00"),
            (ldx(Size::H, R5, R2, 12), "69 25 0c 00 00 00 00 00"),
            (mov64_reg(R4, R2), "bf 24 00 00 00 00 00 00"),
            (add64_imm(R4, 34), "07 04 00 00 22 00 00 00"),
            (add64_imm(R2, -48), "07 02 00 00 d0 ff ff ff"),
            (jmp_reg(Cond::Gt, R4, R3).with_off(40), "2d 34 28 00 00 00 00 00"),
            (jmp_reg(Cond::Le, R4, R3).with_off(1), "bd 34 01 00 00 00 00 00"),
            (jmp_imm(Cond::Eq, R5, 8).with_off(9), "15 05 09 00 08 00 00 00"),
            (jmp_imm(Cond::Ne, R5, 0x608).with_off(37), "55 05 25 00 08 06 00 00"),
            (jmp_imm(Cond::Slt, R1, 0).with_off(1), "c5 01 01 00 00 00 00 00"),
            (jmp32_imm(Cond::Ne, R5, 0x80100).with_off(33), "56 05 21 00 00 01 08 00"),
            (jmp32_imm(Cond::Eq, R5, 0xffff).with_off(20), "16 05 14 00 ff ff 00 00"),
            (jmp32_imm(Cond::Lt, R2, 42).with_off(1), "a6 02 01 00 2a 00 00 00"),
            (jmp32_reg(Cond::Eq, R1, R2).with_off(-1), "1e 21 ff ff 00 00 00 00"),
            (ja().with_off(1), "05 00 01 00 00 00 00 00"),
            (be32(R5), "dc 05 00 00 20 00 00 00"),
            (mov32_reg(R4, R5), "bc 54 00 00 00 00 00 00"),
            (mov32_imm(R2, 42), "b4 02 00 00 2a 00 00 00"),
            (alu32_imm(Alu::And, R4, 0xff00_0000_u32 as i32), "54 04 00 00 00 00 00 ff"),
            (alu32_imm(Alu::Rsh, R5, 8), "74 05 00 00 08 00 00 00"),
            (alu32_imm(Alu::Or, R5, 0x0a63_0000), "44 05 00 00 00 00 63 0a"),
            (st_imm(Size::DW, R10, -48, 0), "7a 0a d0 ff 00 00 00 00"),
            (st_imm(Size::W, R10, -48, 16_384_000), "62 0a d0 ff 00 00 fa 00"),
            (st_imm(Size::B, R10, -27, 64), "72 0a e5 ff 40 00 00 00"),
            (stx(Size::W, R10, -44, R5), "63 5a d4 ff 00 00 00 00"),
            (call(21), "85 00 00 00 15 00 00 00"),
            (exit(), "95 00 00 00 00 00 00 00"),
        ];
        for (insn, want) in table {
            assert_eq!(hex(*insn), *want, "{insn:?}");
        }
    }

    #[test]
    fn registers_and_offsets_round_trip() {
        let i = stx(Size::W, R10, -44, R5);
        assert_eq!((i.dst(), i.src(), i.off), (10, 5, -44));
        assert!(jmp32_imm(Cond::Ne, R1, 0).is_jump() && ja().is_jump());
        assert!(!call(1).is_jump() && !exit().is_jump() && !mov64_imm(R0, 0).is_jump());
    }

    #[test]
    fn assembler_resolves_forward_and_backward_labels() {
        let mut a = Asm::new();
        a.label("top").emit(mov64_imm(R0, 0));
        a.jump(jmp_imm(Cond::Eq, R1, 0), "out");
        a.emit(mov64_imm(R0, 1)).jump(ja(), "top");
        a.label("out").emit(exit());
        let p = a.finish();
        assert_eq!(p.len(), 5);
        assert_eq!(p[1].off, 2, "1 + 1 + 2 = 4, the exit");
        assert_eq!(p[3].off, -4, "3 + 1 - 4 = 0, the top");
    }

    #[test]
    #[should_panic(expected = "undefined label \"nowhere\"")]
    fn undefined_label_panics() {
        let mut a = Asm::new();
        a.jump(ja(), "nowhere");
        a.finish();
    }
}
