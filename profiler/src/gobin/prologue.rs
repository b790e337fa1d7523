//! Instruction-level facts about a Go function's machine code (amd64), found by decoding it
//! instruction by instruction — never by searching for byte patterns, which would match inside
//! other instructions' immediates.
//!
//! * The probe point: Go functions with a frame start with a stack-bound check
//!   (`cmp 0x10(%r14),%rsp; jbe morestack` — or via `lea -N(%rsp),%r12` for large frames) and
//!   then `push %rbp`. A uprobe on that `push` is emulated by the kernel (no single-step: ~7×
//!   cheaper on this VM), still sees the argument registers and R14, and does not fire a second
//!   time when the function re-enters after growing its stack.
//! * RET offsets: where a return value can be read without a uretprobe (which would corrupt
//!   goroutine stacks Go later moves).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// How many instructions of the prologue we look at before giving up on the pattern.
const PROLOGUE_SCAN_LIMIT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachKind {
    /// The `push %rbp` after the stack check: emulated, fires once per call.
    AfterStackCheck,
    /// The function has no stack check (nosplit / frameless) but starts with `push %rbp`.
    PushAtEntry,
    /// Pattern not recognised: the symbol's entry (single-stepped, may double-fire).
    Entry,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeFacts {
    /// Offset from the function entry where the probe should go.
    pub attach_offset: u64,
    pub attach_kind: AttachKind,
    /// Offsets from the function entry of every RET instruction.
    pub ret_offsets: Vec<u64>,
}

/// Decode `code` (a whole function, starting at link-time address `entry`).
pub fn analyze(code: &[u8], entry: u64) -> CodeFacts {
    let instructions = decode_all(code, entry);
    let (attach_offset, attach_kind) = find_attach_point(&instructions, entry);
    let ret_offsets = instructions
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Ret)
        .map(|i| i.ip() - entry)
        .collect();
    CodeFacts {
        attach_offset,
        attach_kind,
        ret_offsets,
    }
}

/// What a small function's body consists of: the address of every instruction and the target
/// of every direct `call`. Enough to tell what a deferred-call wrapper does, together with the
/// inline tree at each instruction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeShape {
    pub instructions: Vec<u64>,
    pub call_targets: Vec<u64>,
}

/// Decode `code` (a whole function at link-time address `entry`) into its [`CodeShape`].
pub fn shape(code: &[u8], entry: u64) -> CodeShape {
    let instructions = decode_all(code, entry);
    CodeShape {
        call_targets: instructions
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Call && i.op0_kind() == OpKind::NearBranch64)
            .map(|i| i.near_branch64())
            .collect(),
        instructions: instructions.iter().map(|i| i.ip()).collect(),
    }
}

/// The offset from `entry` of the `call consumer` that directly follows a `call producer` in
/// `code`, when at that call `reg` holds the producer's result: RAX after `call producer` is
/// moved into `reg` (`mov reg, rax`), and nothing between the two calls branches, writes RAX
/// before that move, or writes `reg` after it. A uprobe there reads the producer's result
/// without a RET probe: the kernel emulates `call rel32` and single-steps `ret` (both checked
/// in arch/x86/kernel/uprobes.c: branch_setup_xol_ops handles jmp/call/jcc/nops, push_setup_xol_ops
/// `push reg`; everything else, `ret` included, is executed out of line).
pub fn handoff_call(
    code: &[u8],
    entry: u64,
    producer: u64,
    consumer: u64,
    reg: Register,
) -> Option<u64> {
    let instructions = decode_all(code, entry);
    let is_call_to = |i: &Instruction, target: u64| {
        i.mnemonic() == Mnemonic::Call
            && i.op0_kind() == OpKind::NearBranch64
            && i.near_branch64() == target
    };
    let start = instructions.iter().position(|i| is_call_to(i, producer))?;
    let mut moved = false;
    for i in &instructions[start + 1..] {
        if i.mnemonic() == Mnemonic::Call {
            return (is_call_to(i, consumer) && moved).then(|| i.ip() - entry);
        }
        let branches = matches!(
            i.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ) || matches!(
            i.mnemonic(),
            Mnemonic::Jmp | Mnemonic::Ret | Mnemonic::Int3 | Mnemonic::Ud2
        );
        if branches {
            return None;
        }
        let writes = |r: Register| {
            i.op_count() > 0
                && i.op0_kind() == OpKind::Register
                && full_gpr(i.op0_register()) == r
                && !matches!(
                    i.mnemonic(),
                    Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Push
                )
        };
        if i.mnemonic() == Mnemonic::Mov
            && i.op0_kind() == OpKind::Register
            && i.op0_register() == reg
            && i.op1_kind() == OpKind::Register
            && i.op1_register() == Register::RAX
            && !moved
        {
            moved = true;
        } else if writes(Register::RAX) && !moved {
            return None;
        } else if writes(reg) {
            moved = false;
        }
    }
    None
}

/// The 64-bit register a general-purpose register name is part of (RAX for EAX/AX/AL/AH, …);
/// other registers map to themselves.
fn full_gpr(r: Register) -> Register {
    use Register::*;
    const FAMILIES: &[[Register; 5]] = &[
        [RAX, EAX, AX, AL, AH],
        [RBX, EBX, BX, BL, BH],
        [RCX, ECX, CX, CL, CH],
        [RDX, EDX, DX, DL, DH],
        [RSI, ESI, SI, SIL, SIL],
        [RDI, EDI, DI, DIL, DIL],
        [R8, R8D, R8W, R8L, R8L],
        [R9, R9D, R9W, R9L, R9L],
        [R10, R10D, R10W, R10L, R10L],
        [R11, R11D, R11W, R11L, R11L],
    ];
    FAMILIES.iter().find(|f| f.contains(&r)).map_or(r, |f| f[0])
}

fn decode_all(code: &[u8], entry: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            // Padding (int3) decodes fine; an invalid opcode means data or a wrong length:
            // stop rather than resynchronise mid-instruction.
            break;
        }
        out.push(instruction);
    }
    out
}

fn is_push_rbp(i: &Instruction) -> bool {
    i.code() == Code::Push_r64 && i.op0_register() == Register::RBP
}

/// `cmp rsp|r12, [r14+0x10]` (stackguard0 compare) in either operand order.
fn is_stack_guard_compare(i: &Instruction) -> bool {
    if i.mnemonic() != Mnemonic::Cmp || i.op_count() != 2 {
        return false;
    }
    let (reg_op, mem_op) = match (i.op0_kind(), i.op1_kind()) {
        (OpKind::Register, OpKind::Memory) => (i.op0_register(), 1),
        (OpKind::Memory, OpKind::Register) => (i.op1_register(), 0),
        _ => return false,
    };
    let _ = mem_op;
    matches!(reg_op, Register::RSP | Register::R12)
        && i.memory_base() == Register::R14
        && i.memory_index() == Register::None
        && i.memory_displacement64() == 0x10
}

fn find_attach_point(instructions: &[Instruction], entry: u64) -> (u64, AttachKind) {
    let head = &instructions[..instructions.len().min(PROLOGUE_SCAN_LIMIT)];
    if let Some(first) = head.first()
        && is_push_rbp(first)
    {
        return (0, AttachKind::PushAtEntry);
    }
    let Some(cmp_index) = head.iter().position(is_stack_guard_compare) else {
        return (0, AttachKind::Entry);
    };
    // Everything before the compare must be the optional `lea -N(%rsp),%r12` (large frames):
    // anything else means this is not the standard prologue.
    if !head[..cmp_index]
        .iter()
        .all(|i| i.mnemonic() == Mnemonic::Lea && i.op0_register() == Register::R12)
    {
        return (0, AttachKind::Entry);
    }
    let jump = head.get(cmp_index + 1);
    let push = head.get(cmp_index + 2);
    match (jump, push) {
        (Some(j), Some(p)) if j.mnemonic() == Mnemonic::Jbe && is_push_rbp(p) => {
            (p.ip() - entry, AttachKind::AfterStackCheck)
        }
        _ => (0, AttachKind::Entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_lists_instructions_and_direct_call_targets() {
        // mov 0x8(%rdx),%rax ; call rel32 (+0x10 past its end) ; ret
        let code = [
            0x48, 0x8b, 0x42, 0x08, // mov rax,[rdx+8]
            0xe8, 0x10, 0x00, 0x00, 0x00, // call
            0xc3, // ret
        ];
        let s = shape(&code, 0x1000);
        assert_eq!(s.instructions, vec![0x1000, 0x1004, 0x1009]);
        assert_eq!(s.call_targets, vec![0x1009 + 0x10]);
    }

    #[test]
    fn finds_push_after_small_frame_stack_check() {
        // cmp 0x10(%r14),%rsp ; jbe +0x40 ; push %rbp ; mov %rsp,%rbp ; ... ; pop %rbp ; ret
        let code = [
            0x49, 0x3b, 0x66, 0x10, // cmp rsp,[r14+10h]
            0x76, 0x40, // jbe
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp,rsp
            0x5d, // pop rbp
            0xc3, // ret
        ];
        let facts = analyze(&code, 0x401000);
        assert_eq!(facts.attach_kind, AttachKind::AfterStackCheck);
        assert_eq!(facts.attach_offset, 6);
        assert_eq!(facts.ret_offsets, vec![11]);
    }

    #[test]
    fn finds_push_after_large_frame_stack_check() {
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0xc0, 0xfe, 0xff, 0xff, // lea r12,[rsp-140h]
            0x4d, 0x3b, 0x66, 0x10, // cmp r12,[r14+10h]
            0x0f, 0x86, 0x00, 0x01, 0x00, 0x00, // jbe rel32
            0x55, // push rbp
            0xc3, // ret
        ];
        let facts = analyze(&code, 0x10);
        assert_eq!(facts.attach_kind, AttachKind::AfterStackCheck);
        assert_eq!(facts.attach_offset, 18);
        assert_eq!(facts.ret_offsets, vec![19]);
    }

    #[test]
    fn ret_byte_inside_an_immediate_is_not_a_ret() {
        // mov eax,0xc3c3c3c3 ; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3];
        let facts = analyze(&code, 0);
        assert_eq!(facts.attach_kind, AttachKind::Entry);
        assert_eq!(facts.ret_offsets, vec![5]);
    }

    /// runtime.newproc.func1 of Go 1.26 (bench_http fixture), from `call newproc1` on.
    const NEWPROC_FUNC1_TAIL: [u8; 37] = [
        0xe8, 0x5b, 0x00, 0x00, 0x00, // call newproc1 (0x1060)
        0x49, 0x8b, 0x56, 0x30, // mov rdx,[r14+30h]
        0x48, 0x8b, 0x92, 0xd0, 0x00, 0x00, 0x00, // mov rdx,[rdx+0d0h]
        0x48, 0x89, 0xc3, // mov rbx,rax
        0xb9, 0x01, 0x00, 0x00, 0x00, // mov ecx,1
        0x48, 0x89, 0xd0, // mov rax,rdx
        0x0f, 0x1f, 0x44, 0x00, 0x00, // nop
        0xe8, 0x7b, 0x51, 0x00, 0x00, // call runqput (0x61a0)
    ];

    #[test]
    fn finds_the_call_that_hands_the_result_over() {
        let at = handoff_call(&NEWPROC_FUNC1_TAIL, 0x1000, 0x1060, 0x61a0, Register::RBX);
        assert_eq!(at, Some(32));
        // Another consumer, or the result in another register: no attach point.
        assert_eq!(
            handoff_call(&NEWPROC_FUNC1_TAIL, 0x1000, 0x1060, 0x7000, Register::RBX),
            None
        );
        assert_eq!(
            handoff_call(&NEWPROC_FUNC1_TAIL, 0x1000, 0x1060, 0x61a0, Register::RCX),
            None
        );
    }

    #[test]
    fn a_clobbered_result_is_no_handoff() {
        let mut code = NEWPROC_FUNC1_TAIL;
        // mov rbx,rax -> mov rbx,rdx: RBX no longer holds the result.
        code[17] = 0x89;
        code[18] = 0xd3;
        assert_eq!(
            handoff_call(&code, 0x1000, 0x1060, 0x61a0, Register::RBX),
            None
        );
    }

    #[test]
    fn frameless_function_probes_its_entry() {
        let code = [0x48, 0x89, 0xc3, 0xc3]; // mov rbx,rax ; ret
        let facts = analyze(&code, 0);
        assert_eq!(
            (facts.attach_offset, facts.attach_kind),
            (0, AttachKind::Entry)
        );
    }
}
