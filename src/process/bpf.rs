//! A small assembler for classic BPF seccomp programs: instructions with symbolic jump targets,
//! resolved to the relative offsets the kernel wants; and (for tests) an interpreter of the
//! same subset, so a filter's decisions are checked without installing it.

use super::{ProcessError, Result};

/// One instruction as the kernel reads it (struct sock_filter).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcodes (linux/bpf_common.h): class | operation | source.
pub const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
pub const JA: u16 = 0x05; // BPF_JMP | BPF_JA
pub const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
pub const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
pub const JSET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
pub const RET: u16 = 0x06; // BPF_RET | BPF_K

/// A jump target: the next instruction, or a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    Next,
    Label(usize),
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Op { code: u16, k: u32, jt: To, jf: To },
    Label(usize),
}

/// A program being written.
#[derive(Debug, Default)]
pub struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    pub fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }

    /// Places `label` before the next instruction.
    pub fn bind(&mut self, label: usize) {
        self.items.push(Item::Label(label));
    }

    pub fn load(&mut self, offset: u32) {
        self.op(LD_W_ABS, offset, To::Next, To::Next);
    }

    pub fn ret(&mut self, action: u32) {
        self.op(RET, action, To::Next, To::Next);
    }

    pub fn jump(&mut self, to: usize) {
        self.op(JA, 0, To::Label(to), To::Next);
    }

    /// A conditional jump (`JEQ`, `JGE`, `JSET` against `k`).
    pub fn cond(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.op(code, k, jt, jf);
    }

    fn op(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.items.push(Item::Op { code, k, jt, jf });
    }

    /// Resolves the labels. Fails when a conditional jump spans more than 255 instructions or
    /// a label is missing.
    pub fn assemble(&self) -> Result<Vec<Insn>> {
        let mut at = vec![None; self.labels];
        let mut pos = 0usize;
        for item in &self.items {
            match item {
                Item::Label(l) => at[*l] = Some(pos),
                Item::Op { .. } => pos += 1,
            }
        }
        let error = |what: &str| ProcessError::Seccomp(format!("assembling the filter: {what}"));
        let mut out = Vec::with_capacity(pos);
        for item in &self.items {
            let Item::Op { code, k, jt, jf } = *item else {
                continue;
            };
            let here = out.len() + 1;
            let offset = |to: To| -> Result<usize> {
                match to {
                    To::Next => Ok(0),
                    To::Label(l) => at[l]
                        .and_then(|target: usize| target.checked_sub(here))
                        .ok_or_else(|| error("a jump goes backwards or to no label")),
                }
            };
            let insn = if code == JA {
                Insn {
                    code,
                    jt: 0,
                    jf: 0,
                    k: offset(jt)? as u32,
                }
            } else {
                let short =
                    |o: usize| u8::try_from(o).map_err(|_| error("a jump is longer than 255"));
                Insn {
                    code,
                    jt: short(offset(jt)?)?,
                    jf: short(offset(jf)?)?,
                    k,
                }
            };
            out.push(insn);
        }
        if out.len() > 4096 {
            return Err(error("more than 4096 instructions"));
        }
        Ok(out)
    }
}

/// Runs `program` on a struct seccomp_data laid out as the kernel does (nr, arch, ip, args)
/// and returns the action. Only the subset [`Asm`] emits.
#[cfg(test)]
pub fn run(program: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = vec![nr, arch, 0, 0];
    for a in args {
        data.push(a as u32); // little endian: low half first
        data.push((a >> 32) as u32);
    }
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = program[pc];
        pc += 1;
        let taken = |cond: bool| if cond { i.jt } else { i.jf } as usize;
        match i.code {
            LD_W_ABS => acc = data[i.k as usize / 4],
            JA => pc += i.k as usize,
            JEQ => pc += taken(acc == i.k),
            JGE => pc += taken(acc >= i.k),
            JSET => pc += taken(acc & i.k != 0),
            RET => return i.k,
            other => panic!("opcode {other:#x} not emitted by Asm"),
        }
    }
}
