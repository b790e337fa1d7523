//! Frame-pointer unwinding of a parked goroutine from its saved registers, and symbolization of
//! the program counters through pclntab (with inlined frames).

use crate::gobin::pclntab::Pclntab;
use crate::goruntime::goroutines::RawG;
use crate::model::{Frame, Location};
use crate::remote::memory::Memory;

pub const MAX_FRAMES: usize = 256;
/// We read at most this much of a stack in one go; deeper frames are read word by word.
const STACK_READ_LIMIT: u64 = 256 << 10;

/// Program counters of a parked goroutine, innermost first: sched.pc, then each saved return
/// address along the frame-pointer chain (`ret = *(bp+8); bp = *bp`) while bp stays inside the
/// goroutine's stack and moves towards its top.
pub fn unwind(mem: &dyn Memory, g: &RawG) -> Vec<u64> {
    let mut pcs = vec![g.sched_pc];
    let lo = g.sched_sp.max(g.stack_lo);
    let window_end = g.stack_hi.min(lo.saturating_add(STACK_READ_LIMIT));
    let window = mem
        .read_vec(lo, (window_end.saturating_sub(lo)) as usize)
        .ok();
    let word = |addr: u64| -> Option<u64> {
        if let Some(w) = &window
            && addr >= lo
            && addr + 8 <= window_end
        {
            let i = (addr - lo) as usize;
            return Some(u64::from_le_bytes(w[i..i + 8].try_into().ok()?));
        }
        mem.read_u64(addr).ok()
    };
    let mut bp = g.sched_bp;
    while pcs.len() < MAX_FRAMES {
        if bp < g.stack_lo || bp + 16 > g.stack_hi || bp % 8 != 0 {
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
    pcs
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
    let mut frames = Vec::new();
    for (i, &pc) in pcs.iter().enumerate() {
        let lookup = pc.wrapping_sub(load_bias).wrapping_sub(u64::from(i > 0));
        let mut lines = pclntab.frames(lookup);
        // A wrapper's own frame is hidden, but what was inlined into it is real user code (a
        // `go f(x)` wrapper often has f inlined).
        let is_wrapper = wrapper_func_id.is_some()
            && i > 0
            && pclntab
                .func_for_pc(lookup)
                .is_some_and(|func| pclntab.func_id(&func) == wrapper_func_id);
        if is_wrapper {
            lines.pop();
            if lines.is_empty() {
                continue;
            }
        }
        if lines.is_empty() {
            frames.push(Frame {
                function: format!("?{pc:#x}"),
                file: String::new(),
                line: 0,
                pc,
                inlined: false,
            });
            continue;
        }
        let outermost = lines.len() - 1;
        for (depth, line) in lines.into_iter().enumerate() {
            frames.push(Frame {
                function: line.function,
                file: line.file,
                line: line.line,
                pc,
                // The last line of a wrapper's frame was inlined into the (hidden) wrapper.
                inlined: depth < outermost || is_wrapper,
            });
        }
        if frames
            .last()
            .is_some_and(|f| f.function == "runtime.goexit")
        {
            break;
        }
    }
    frames
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
    if pc == 0 {
        return None;
    }
    let line = pclntab.source_line(pc.wrapping_sub(load_bias))?;
    Some(Location {
        function: line.function,
        file: line.file,
        line: line.line,
    })
}

/// `gopc` is the return address after the `go` statement's call: its line is at `gopc - 1`,
/// reported through inlining like the runtime's own "created by".
pub fn creation_site(pclntab: &Pclntab<'_>, load_bias: u64, gopc: u64) -> Option<Location> {
    if gopc == 0 {
        return None;
    }
    let lines = pclntab.frames(gopc.wrapping_sub(load_bias).wrapping_sub(1));
    let line = lines.into_iter().next()?;
    Some(Location {
        function: line.function,
        file: line.file,
        line: line.line,
    })
}
