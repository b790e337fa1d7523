//! Frame-pointer unwinding of a parked goroutine from its saved registers, and symbolization of
//! the program counters through pclntab (with inlined frames).

use std::collections::HashSet;
use std::hash::Hasher;

use crate::gobin::pclntab::{Pclntab, SourceLine};
use crate::goruntime::goroutines::{AddrHasher, AddrMap, RawG};
use crate::model::{Frame, Location, SharedStr};
use crate::remote::memory::{self, Memory};

pub const MAX_FRAMES: usize = 256;
/// We read at most this much of a stack in one go; deeper frames are read word by word.
const STACK_READ_LIMIT: u64 = 256 << 10;

/// Program counters of a parked goroutine, innermost first: sched.pc, then each saved return
/// address along the frame-pointer chain (`ret = *(bp+8); bp = *bp`) while bp stays inside the
/// goroutine's stack and moves towards its top.
pub fn unwind(mem: &dyn Memory, g: &RawG) -> Vec<u64> {
    let (lo, end) = stack_window(g);
    let window = mem.read_vec(lo, (end.saturating_sub(lo)) as usize).ok();
    let mut pcs = Vec::new();
    unwind_in(mem, g, window.as_deref(), &mut pcs);
    pcs
}

/// The part of a goroutine's stack read in one go: from its saved SP up (at most
/// `STACK_READ_LIMIT` bytes).
fn stack_window(g: &RawG) -> (u64, u64) {
    let lo = g.sched_sp.max(g.stack_lo);
    (lo, g.stack_hi.min(lo.saturating_add(STACK_READ_LIMIT)))
}

/// Stack bytes read per batch in [`unwind_many`]: bounds memory whatever the stacks' depth.
const STACK_BATCH_BYTES: u64 = 16 << 20;

/// [`unwind`] for many goroutines, their stack windows read in batched reads.
pub fn unwind_many(mem: &dyn Memory, gs: &[&RawG]) -> Vec<Vec<u64>> {
    let mut pcs = Vec::new();
    unwind_many_into(mem, gs, &mut pcs)
        .into_iter()
        .map(|range| pcs[range].to_vec())
        .collect()
}

/// [`unwind_many`] into one vector (no allocation per goroutine): each goroutine's PCs are
/// `pcs[range]`, ranges in `gs` order.
pub fn unwind_many_into(
    mem: &dyn Memory,
    gs: &[&RawG],
    pcs: &mut Vec<u64>,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::with_capacity(gs.len());
    let mut start = 0;
    while start < gs.len() {
        // Take goroutines until the byte budget is used (always at least one).
        let mut end = start;
        let mut bytes = 0u64;
        while end < gs.len() {
            let (lo, hi) = stack_window(gs[end]);
            let len = hi.saturating_sub(lo);
            if end > start && bytes + len > STACK_BATCH_BYTES {
                break;
            }
            bytes += len;
            end += 1;
        }
        let batch = &gs[start..end];
        let mut buffer = memory::scratch_buffer(bytes as usize);
        let mut requests: Vec<(u64, &mut [u8])> = Vec::with_capacity(batch.len());
        let mut rest = buffer.as_mut_slice();
        for g in batch {
            let (lo, hi) = stack_window(g);
            let (window, tail) = rest.split_at_mut(hi.saturating_sub(lo) as usize);
            requests.push((lo, window));
            rest = tail;
        }
        let results = mem.read_many(&mut requests);
        drop(requests);
        let mut offset = 0usize;
        for (g, result) in batch.iter().zip(results) {
            let (lo, hi) = stack_window(g);
            let len = hi.saturating_sub(lo) as usize;
            let window = result.is_ok().then(|| &buffer[offset..offset + len]);
            offset += len;
            let first = pcs.len();
            unwind_in(mem, g, window, pcs);
            out.push(first..pcs.len());
        }
        memory::give_back(buffer);
        start = end;
    }
    out
}

/// Append the goroutine's PCs to `pcs`.
fn unwind_in(mem: &dyn Memory, g: &RawG, window: Option<&[u8]>, pcs: &mut Vec<u64>) {
    let first = pcs.len();
    pcs.push(g.sched_pc);
    let (lo, window_end) = stack_window(g);
    let word = |addr: u64| -> Option<u64> {
        if let Some(w) = window
            && addr >= lo
            && addr.checked_add(8).is_some_and(|end| end <= window_end)
        {
            let i = (addr - lo) as usize;
            return Some(u64::from_le_bytes(w.get(i..i + 8)?.try_into().ok()?));
        }
        mem.read_u64(addr).ok()
    };
    let mut bp = g.sched_bp;
    while pcs.len() - first < MAX_FRAMES {
        // A torn read can hand us any bp: no arithmetic on it before it is bounded.
        if bp < g.stack_lo
            || bp.checked_add(16).is_none_or(|end| end > g.stack_hi)
            || !bp.is_multiple_of(8)
        {
            break;
        }
        let (Some(next_bp), Some(ret)) = (word(bp), word(bp + 8)) else {
            break;
        };
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        if next_bp <= bp {
            break;
        }
        bp = next_bp;
    }
}

/// Turn run-time PCs into frames. The first PC is where the goroutine stopped; the rest are
/// return addresses, looked up at `pc - 1` so they name the call instruction's line.
///
/// Compiler-generated wrappers (the closure a `go f(x)` statement compiles to, method value
/// wrappers) are left out, as Go's own tracebacks leave them out: `wrapper_func_id` is the
/// binary's `abi.FuncIDWrapper` (see [`wrapper_func_id`]).
pub fn symbolize(
    pclntab: &Pclntab<'_>,
    load_bias: u64,
    wrapper_func_id: Option<u8>,
    pcs: &[u64],
) -> Vec<Frame> {
    Symbolizer::new(pclntab, load_bias, wrapper_func_id).symbolize(pcs)
}

/// Append the frames of one PC; true when the last one is `runtime.goexit` (the stack's end).
fn push_frames(frames: &mut Vec<Frame>, at: &[Frame]) -> bool {
    frames.extend_from_slice(at);
    !at.is_empty()
        && frames
            .last()
            .is_some_and(|f| f.function == "runtime.goexit")
}

/// One shared copy of each function and file name.
#[derive(Default)]
struct Interner(HashSet<SharedStr>);

impl Interner {
    fn intern(&mut self, s: String) -> SharedStr {
        if let Some(shared) = self.0.get(s.as_str()) {
            return shared.clone();
        }
        let shared = SharedStr::from(s);
        self.0.insert(shared.clone());
        shared
    }

    fn location(&mut self, line: SourceLine) -> Location {
        Location {
            function: self.intern(line.function),
            file: self.intern(line.file),
            line: line.line,
        }
    }
}

/// The frames one PC stands for (several when calls were inlined; none for a hidden wrapper).
/// `is_return` PCs are return addresses, looked up at `pc - 1`.
fn frames_at(
    pclntab: &Pclntab<'_>,
    load_bias: u64,
    wrapper_func_id: Option<u8>,
    strings: &mut Interner,
    pc: u64,
    is_return: bool,
) -> Vec<Frame> {
    let lookup = pc
        .wrapping_sub(load_bias)
        .wrapping_sub(u64::from(is_return));
    let mut lines = pclntab.frames(lookup);
    // A wrapper's own frame is hidden, but what was inlined into it is real user code (a
    // `go f(x)` wrapper often has f inlined).
    let is_wrapper = wrapper_func_id.is_some()
        && is_return
        && pclntab
            .func_for_pc(lookup)
            .is_some_and(|func| pclntab.func_id(&func) == wrapper_func_id);
    if is_wrapper {
        lines.pop();
        if lines.is_empty() {
            return Vec::new();
        }
    }
    if lines.is_empty() {
        return vec![Frame {
            function: format!("?{pc:#x}").into(),
            file: strings.intern(String::new()),
            line: 0,
            pc,
            inlined: false,
        }];
    }
    let outermost = lines.len() - 1;
    lines
        .into_iter()
        .enumerate()
        .map(|(depth, line)| {
            let at = strings.location(line);
            Frame {
                function: at.function,
                file: at.file,
                line: at.line,
                pc,
                // The last line of a wrapper's frame was inlined into the (hidden) wrapper.
                inlined: depth < outermost || is_wrapper,
            }
        })
        .collect()
}

/// A stack's PCs and their frames.
type StackEntry = (Box<[u64]>, Vec<Frame>);

/// [`symbolize`], [`location`] and [`creation_site`] with a per-PC cache, for one snapshot:
/// a hundred thousand goroutines share a few hundred distinct PCs, and their frames share one
/// copy of each name (cloning a frame copies no string).
pub struct Symbolizer<'a, 'data> {
    pclntab: &'a Pclntab<'data>,
    load_bias: u64,
    wrapper_func_id: Option<u8>,
    strings: Interner,
    frames: AddrMap<(u64, bool), Vec<Frame>>,
    /// Whole stacks, by a hash of their PCs (hashed a word at a time): goroutines parked at
    /// the same place have the same PCs.
    stacks: AddrMap<u64, Vec<StackEntry>>,
    locations: AddrMap<u64, Option<Location>>,
    creation_sites: AddrMap<u64, Option<Location>>,
}

impl<'a, 'data> Symbolizer<'a, 'data> {
    pub fn new(
        pclntab: &'a Pclntab<'data>,
        load_bias: u64,
        wrapper_func_id: Option<u8>,
    ) -> Symbolizer<'a, 'data> {
        Symbolizer {
            pclntab,
            load_bias,
            wrapper_func_id,
            strings: Interner::default(),
            frames: AddrMap::default(),
            stacks: AddrMap::default(),
            locations: AddrMap::default(),
            creation_sites: AddrMap::default(),
        }
    }

    pub fn symbolize(&mut self, pcs: &[u64]) -> Vec<Frame> {
        let mut hasher = AddrHasher::default();
        pcs.iter().for_each(|&pc| hasher.write_u64(pc));
        let key = hasher.finish() ^ pcs.len() as u64;
        if let Some((_, frames)) = self
            .stacks
            .get(&key)
            .and_then(|same| same.iter().find(|(p, _)| **p == *pcs))
        {
            return frames.clone();
        }
        let frames = self.symbolize_pcs(pcs);
        self.stacks
            .entry(key)
            .or_default()
            .push((pcs.into(), frames.clone()));
        frames
    }

    fn symbolize_pcs(&mut self, pcs: &[u64]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for (i, &pc) in pcs.iter().enumerate() {
            let at = self.frames.entry((pc, i > 0)).or_insert_with(|| {
                frames_at(
                    self.pclntab,
                    self.load_bias,
                    self.wrapper_func_id,
                    &mut self.strings,
                    pc,
                    i > 0,
                )
            });
            if push_frames(&mut frames, at) {
                break;
            }
        }
        frames
    }

    pub fn location(&mut self, pc: u64) -> Option<Location> {
        self.locations
            .entry(pc)
            .or_insert_with(|| {
                source_line(self.pclntab, self.load_bias, pc).map(|l| self.strings.location(l))
            })
            .clone()
    }

    pub fn creation_site(&mut self, gopc: u64) -> Option<Location> {
        self.creation_sites
            .entry(gopc)
            .or_insert_with(|| {
                creation_line(self.pclntab, self.load_bias, gopc).map(|l| self.strings.location(l))
            })
            .clone()
    }
}

/// `abi.FuncIDWrapper` is the last value of the runtime's FuncID enum, and every Go program has
/// wrappers (type equality functions, method wrappers), so it is the largest funcID in the
/// table. Its number changes between releases as special functions are added; this finds it
/// without a per-release table.
pub fn wrapper_func_id(pclntab: &Pclntab<'_>) -> Option<u8> {
    pclntab
        .functions()
        .filter_map(|f| pclntab.func_id(&f))
        .max()
        .filter(|&id| id > 0)
}

/// The function, file and line of one PC (a function entry, or `gopc - 1` for "created by").
pub fn location(pclntab: &Pclntab<'_>, load_bias: u64, pc: u64) -> Option<Location> {
    source_line(pclntab, load_bias, pc).map(|l| Interner::default().location(l))
}

fn source_line(pclntab: &Pclntab<'_>, load_bias: u64, pc: u64) -> Option<SourceLine> {
    if pc == 0 {
        return None;
    }
    pclntab.source_line(pc.wrapping_sub(load_bias))
}

/// `gopc` is the return address after the `go` statement's call: its line is at `gopc - 1`,
/// reported through inlining like the runtime's own "created by".
pub fn creation_site(pclntab: &Pclntab<'_>, load_bias: u64, gopc: u64) -> Option<Location> {
    creation_line(pclntab, load_bias, gopc).map(|l| Interner::default().location(l))
}

fn creation_line(pclntab: &Pclntab<'_>, load_bias: u64, gopc: u64) -> Option<SourceLine> {
    if gopc == 0 {
        return None;
    }
    let lines = pclntab.frames(gopc.wrapping_sub(load_bias).wrapping_sub(1));
    lines.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;
    use crate::remote::memory::RecordedMemory;

    fn parked(addr: u64, lo: u64, hi: u64, sp: u64, bp: u64, pc: u64) -> RawG {
        RawG {
            addr,
            goid: 1,
            status: Status::Waiting,
            raw_status: 4,
            wait_reason: 0,
            waitsince: 0,
            stack_lo: lo,
            stack_hi: hi,
            sched_sp: sp,
            sched_pc: pc,
            sched_bp: bp,
            waiting: 0,
            gopc: 0,
            startpc: 0,
            parent_goid: None,
            tracking_seq: None,
        }
    }

    /// A stack whose frame-pointer chain is bp → (next bp, return address) pairs.
    fn stack(lo: u64, hi: u64, frames: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut bytes = vec![0u8; (hi - lo) as usize];
        for &(bp, next, ret) in frames {
            let i = (bp - lo) as usize;
            bytes[i..i + 8].copy_from_slice(&next.to_le_bytes());
            bytes[i + 8..i + 16].copy_from_slice(&ret.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn batched_unwinding_matches_one_by_one() {
        let mut mem = RecordedMemory::new();
        mem.add(
            0x10000,
            stack(
                0x10000,
                0x12000,
                &[(0x11f00, 0x11f40, 0x401), (0x11f40, 0, 0x402)],
            ),
        );
        mem.add(
            0x20000,
            stack(0x20000, 0x22000, &[(0x21e00, 0x21e00, 0x501)]),
        );
        let gs = [
            parked(0xa000, 0x10000, 0x12000, 0x11e00, 0x11f00, 0x400),
            parked(0xb000, 0x20000, 0x22000, 0x21d00, 0x21e00, 0x500),
            // Its stack is not readable: only the saved PC.
            parked(0xc000, 0x30000, 0x32000, 0x31d00, 0x31e00, 0x600),
        ];
        let refs: Vec<&RawG> = gs.iter().collect();
        let batched = unwind_many(&mem, &refs);
        for (g, pcs) in gs.iter().zip(&batched) {
            assert_eq!(pcs, &unwind(&mem, g));
        }
        assert_eq!(
            batched,
            vec![vec![0x400, 0x401, 0x402], vec![0x500, 0x501], vec![0x600]]
        );
    }
}
