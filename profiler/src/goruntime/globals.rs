//! Link-time addresses of the runtime globals the reader starts from. From `.symtab` when the
//! binary has one; in stripped binaries from the code that uses them, found by decoding the
//! instructions of runtime functions (whose addresses pclntab still has).

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

use crate::error::InspectError;
use crate::gobin::GoBinary;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalSource {
    Symbol,
    Code,
}

#[derive(Clone, Copy, Debug)]
pub struct Globals {
    /// `runtime.allgs`: a `[]*g` header.
    pub allgs: u64,
    /// `runtime.semtable`: 251 semaRoots (padded to a cache line each), when found.
    pub semtable: Option<u64>,
    /// `runtime.allp`: a `[]*p` header, when found (without it the leak proof scans p records
    /// like any heap object, which can only hide leaks).
    pub allp: Option<u64>,
    /// `runtime.allm`: the newest `*m`, head of the list of every m, when found (without it
    /// the leak proof finds only the m records of goroutines on a thread and those older).
    pub allm: Option<u64>,
    pub source: GlobalSource,
}

/// semTabSize in runtime/sema.go: a prime, unchanged since the table was introduced.
pub const SEMTABLE_SIZE: u64 = 251;

pub fn find(binary: &GoBinary<'_>) -> Result<Globals, InspectError> {
    if let Some(allgs) = binary.symbol("runtime.allgs") {
        return Ok(Globals {
            allgs: allgs.addr,
            semtable: binary.symbol("runtime.semtable").map(|s| s.addr),
            allp: binary.symbol("runtime.allp").map(|s| s.addr),
            allm: binary.symbol("runtime.allm").map(|s| s.addr),
            source: GlobalSource::Symbol,
        });
    }
    let allgs = function_code(binary, "runtime.allgadd")
        .and_then(|(code, entry)| slice_header_in(&decode(code, entry)))
        .ok_or_else(|| {
            InspectError::MissingSymbol(
                "runtime.allgs (stripped binary, and runtime.allgadd does not reveal it)".into(),
            )
        })?;
    let semtable = function_code(binary, "runtime.semacquire1")
        .and_then(|(code, entry)| semtable_in(&decode(code, entry)));
    Ok(Globals {
        allgs,
        semtable,
        allp: allp_from_code(binary),
        allm: function_code(binary, "runtime.mcommoninit")
            .and_then(|(code, entry)| loaded_and_addressed_in(&decode(code, entry))),
        source: GlobalSource::Code,
    })
}

/// `mcommoninit` links a new m in with `mp.alllink = allm` (a 64-bit load of the global) and
/// `atomicstorep(&allm, mp)` (its address taken for the xchg): the one global both loaded
/// and addressed there.
fn loaded_and_addressed_in(instructions: &[Instruction]) -> Option<u64> {
    let targets = |keep: &dyn Fn(&Instruction) -> bool| -> std::collections::BTreeSet<u64> {
        instructions
            .iter()
            .filter(|i| keep(i))
            .filter_map(rip_target)
            .collect()
    };
    let loaded = targets(&|i| {
        i.mnemonic() == Mnemonic::Mov
            && i.op0_kind() == OpKind::Register
            && i.memory_size() == iced_x86::MemorySize::UInt64
    });
    let addressed = targets(&|i| i.mnemonic() == Mnemonic::Lea);
    let both: Vec<u64> = loaded.intersection(&addressed).copied().collect();
    (both.len() == 1).then(|| both[0])
}

/// `runtime.(*m).snapshotAllp` (1.23+) copies the allp slice header and touches no other
/// slice; `runtime.gcMarkTinyAllocs` ranges over allp (pointer and length) and nothing else.
fn allp_from_code(binary: &GoBinary<'_>) -> Option<u64> {
    function_code(binary, "runtime.(*m).snapshotAllp")
        .and_then(|(code, entry)| slice_header_in(&decode(code, entry)))
        .or_else(|| {
            function_code(binary, "runtime.gcMarkTinyAllocs")
                .and_then(|(code, entry)| slice_ptr_len_in(&decode(code, entry)))
        })
}

pub(crate) fn function_code<'a>(binary: &'a GoBinary<'_>, name: &str) -> Option<(&'a [u8], u64)> {
    let f = binary.pclntab.func_by_name(name)?;
    let code = binary
        .image
        .bytes_at(f.entry, usize::try_from(f.end.checked_sub(f.entry)?).ok()?)?;
    Some((code, f.entry))
}

pub(crate) fn decode(code: &[u8], entry: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let i = decoder.decode();
        if i.is_invalid() {
            break;
        }
        out.push(i);
    }
    out
}

/// RIP-relative memory operand target of an instruction, if it has one.
pub(crate) fn rip_target(i: &Instruction) -> Option<u64> {
    (0..i.op_count())
        .any(|n| i.op_kind(n) == OpKind::Memory)
        .then_some(())
        .filter(|_| i.is_ip_rel_memory_operand())
        .map(|_| i.ip_rel_memory_address())
}

/// A slice header global is loaded as three words X, X+8, X+16 (ptr, len, cap) — in
/// `runtime.allgadd` only `allgs` is (allglen and allgptr are single words).
fn slice_header_in(instructions: &[Instruction]) -> Option<u64> {
    let mut movs: HashMap<u64, usize> = HashMap::new();
    for i in instructions {
        if i.mnemonic() == Mnemonic::Mov
            && let Some(target) = rip_target(i)
        {
            *movs.entry(target).or_default() += 1;
        }
    }
    let mut candidates: Vec<u64> = movs
        .keys()
        .copied()
        .filter(|a| movs.contains_key(&(a + 8)) && movs.contains_key(&(a + 16)))
        .collect();
    candidates.sort_unstable();
    // Exactly one triple, or we are not looking at the code we think we are.
    (candidates.len() == 1).then(|| candidates[0])
}

/// A slice global ranged over: loaded as two words X, X+8 (pointer, length); exactly one such
/// pair in the function.
fn slice_ptr_len_in(instructions: &[Instruction]) -> Option<u64> {
    let loads: std::collections::BTreeSet<u64> = instructions
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Mov)
        .filter_map(rip_target)
        .collect();
    let pairs: Vec<u64> = loads
        .iter()
        .copied()
        .filter(|a| loads.contains(&(a + 8)))
        .collect();
    (pairs.len() == 1).then(|| pairs[0])
}

/// `semtable.rootFor(addr)` is inlined into semacquire1: `imul $251` for the hash bucket, then
/// `lea runtime.semtable(%rip)`.
fn semtable_in(instructions: &[Instruction]) -> Option<u64> {
    let imul = instructions.iter().position(|i| {
        i.mnemonic() == Mnemonic::Imul
            && (0..i.op_count()).any(|n| {
                matches!(
                    i.op_kind(n),
                    OpKind::Immediate8to32
                        | OpKind::Immediate32
                        | OpKind::Immediate8to64
                        | OpKind::Immediate32to64
                ) && i.immediate(n) == SEMTABLE_SIZE
            })
    })?;
    instructions[imul..]
        .iter()
        .take(16)
        .find(|i| i.mnemonic() == Mnemonic::Lea)
        .and_then(rip_target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbins;

    fn section_relative(binary: &GoBinary<'_>, addr: u64) -> Option<(String, u64)> {
        binary
            .image
            .sections()
            .into_iter()
            .filter(|(name, s)| {
                matches!(name.as_str(), ".data" | ".bss" | ".noptrdata" | ".noptrbss")
                    && addr >= s.addr
                    && (name.ends_with("bss") || addr < s.addr + s.data.len() as u64)
            })
            .max_by_key(|(_, s)| s.addr)
            .map(|(name, s)| (name, addr - s.addr))
    }

    #[test]
    fn stripped_binaries_reveal_the_same_globals_as_their_symbols() {
        for (bin, twin) in testbins::stripped_twins() {
            let (stripped_bytes, plain_bytes) = (
                std::fs::read(&bin.path).unwrap(),
                std::fs::read(&twin.path).unwrap(),
            );
            let stripped = GoBinary::parse(&stripped_bytes).unwrap();
            let plain = GoBinary::parse(&plain_bytes).unwrap();
            let from_code = find(&stripped).unwrap();
            let from_symbols = find(&plain).unwrap();
            assert_eq!(from_code.source, GlobalSource::Code);
            assert_eq!(from_symbols.source, GlobalSource::Symbol);
            // -ldflags=-s -w lengthens the build info, which shifts the data sections: compare
            // positions within their section.
            let ctx = format!("{} {}", bin.go, bin.variant);
            assert_eq!(
                section_relative(&stripped, from_code.allgs),
                section_relative(&plain, from_symbols.allgs),
                "{ctx}"
            );
            assert!(from_symbols.semtable.is_some(), "{ctx}");
            assert!(from_symbols.allp.is_some(), "{ctx}");
            assert_eq!(
                from_code.allp.and_then(|a| section_relative(&stripped, a)),
                from_symbols.allp.and_then(|a| section_relative(&plain, a)),
                "{ctx} allp"
            );
            assert!(from_symbols.allm.is_some(), "{ctx}");
            assert_eq!(
                from_code.allm.and_then(|a| section_relative(&stripped, a)),
                from_symbols.allm.and_then(|a| section_relative(&plain, a)),
                "{ctx} allm"
            );
            assert_eq!(
                from_code
                    .semtable
                    .and_then(|a| section_relative(&stripped, a)),
                from_symbols
                    .semtable
                    .and_then(|a| section_relative(&plain, a)),
                "{ctx}"
            );
        }
    }
}
