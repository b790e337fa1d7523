//! Precise scanning of a parked goroutine's stack with the compiler's own stack maps, the way the
//! GC scans it: unwind frame by frame with the pcsp table, and in each frame take only the slots
//! the locals and args pointer maps mark live at `PCDATA_StackMapIndex(pc - 1)`, plus the
//! frame's stack objects (address-taken locals) that something live points into, and the defer
//! chain's closures.
//!
//! Dead locals and stale slots of a reused stack are what make a conservative scan miss leaks;
//! precision is only ever *less* marking, so whenever a frame cannot be decoded (unknown
//! function, missing table, implausible values, `asyncPreempt`) the rest of the stack from that
//! frame is scanned conservatively: a miss at worst, never a false verdict.

use crate::gobin::GoBinary;
use crate::gobin::pclntab::FuncInfo;
use crate::goruntime::goroutines::RawG;
use crate::remote::memory::Memory;

/// `PCDATA_StackMapIndex` (1), `FUNCDATA_ArgsPointerMaps` (0), `FUNCDATA_LocalsPointerMaps` (1),
/// `FUNCDATA_StackObjects` (2): internal/abi/symtab.go, checked in the 1.21 and 1.27 sources.
const PCDATA_STACK_MAP_INDEX: u32 = 1;
const FUNCDATA_ARGS_POINTER_MAPS: u32 = 0;
const FUNCDATA_LOCALS_POINTER_MAPS: u32 = 1;
const FUNCDATA_STACK_OBJECTS: u32 = 2;
const MAX_FRAMES: usize = 4096;
const MAX_STACK: u64 = 64 << 20;

/// How the stack was scanned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackScanStats {
    pub precise_frames: u64,
    /// Stacks (or stack tails) that fell back to conservative scanning.
    pub fallbacks: u64,
}

pub struct StackScanner<'a, 'd> {
    binary: &'a GoBinary<'d>,
    bias: u64,
    /// `_defer.fn` and `_defer.link` (1.21: 24/40; 1.22+: 24/32).
    defer_fn: u64,
    defer_link: u64,
}

struct StackMap<'d> {
    n: i32,
    nbit: i32,
    data: &'d [u8],
}

impl StackMap<'_> {
    /// Bit `i` of bitmap `index`.
    fn bitmap(&self, index: i32) -> Option<&[u8]> {
        if index < 0 || index >= self.n || self.nbit < 0 {
            return None;
        }
        let bytes = (self.nbit as usize).div_ceil(8);
        let at = index as usize * bytes;
        self.data.get(at..at + bytes)
    }
}

impl<'a, 'd> StackScanner<'a, 'd> {
    pub fn new(binary: &'a GoBinary<'d>, bias: u64) -> Self {
        let defer_link = if binary.version.at_least(1, 22) {
            32
        } else {
            40
        };
        StackScanner {
            binary,
            bias,
            defer_fn: 24,
            defer_link,
        }
    }

    fn stack_map(&self, addr: u64) -> Option<StackMap<'d>> {
        let header = self.binary.image.bytes_at(addr, 8)?;
        let n = i32::from_le_bytes(header[0..4].try_into().ok()?);
        let nbit = i32::from_le_bytes(header[4..8].try_into().ok()?);
        if !(0..=1 << 20).contains(&n) || !(0..=1 << 24).contains(&nbit) {
            return None;
        }
        let len = n as usize * (nbit as usize).div_ceil(8);
        let data = self.binary.image.bytes_at(addr + 8, len)?;
        Some(StackMap { n, nbit, data })
    }

    /// Pointer values a parked goroutine's live frames hold; `defer_head` and `panic_head` are
    /// `g._defer` and `g._panic`. Words are pushed into `out`.
    pub fn live_words(
        &self,
        mem: &dyn Memory,
        g: &RawG,
        defer_head: u64,
        panic_head: u64,
        out: &mut Vec<u64>,
        stats: &mut StackScanStats,
    ) {
        let Some(stack) = LiveStack::read(mem, g) else {
            stats.fallbacks += 1;
            return;
        };
        let (lo, hi) = (stack.lo, stack.hi);
        let word = |addr: u64| stack.word(addr);
        let conservative = |from: u64, to: u64, out: &mut Vec<u64>| {
            let Some(mut at) = from.max(lo).checked_next_multiple_of(8) else {
                return;
            };
            while at.checked_add(8).is_some_and(|end| end <= to.min(hi)) {
                out.extend(word(at));
                at += 8;
            }
        };

        let first_word = out.len();
        let mut objects: Vec<StackObject> = Vec::new();
        let (mut pc, mut sp) = (g.sched_pc, g.sched_sp);
        for _ in 0..MAX_FRAMES {
            match self.frame(pc, sp, hi, &word, out, &mut objects) {
                Frame::Next {
                    pc: next_pc,
                    sp: next_sp,
                } => {
                    stats.precise_frames += 1;
                    pc = next_pc;
                    sp = next_sp;
                }
                Frame::Done => {
                    stats.precise_frames += 1;
                    break;
                }
                Frame::Undecodable(why) => {
                    if std::env::var_os("PARKSCOPE_LEAKS_DEBUG").is_some() {
                        let name = self
                            .binary
                            .pclntab
                            .func_for_pc(pc.wrapping_sub(self.bias))
                            .map(|f| f.name);
                        eprintln!(
                            "goroutine g={:#x}: undecodable frame {name:?} ({why}) pc={pc:#x} sp={sp:#x}",
                            g.addr
                        );
                    }
                    stats.fallbacks += 1;
                    conservative(sp, hi, out);
                    break;
                }
            }
        }

        // Deferred closures (stack-allocated _defer records are found only through g._defer),
        // as the GC's scanstack does; panics on the stack are scanned whole.
        let mut d = defer_head;
        for _ in 0..10_000 {
            if d == 0 {
                break;
            }
            out.push(d);
            let read = |a: u64| word(a).or_else(|| mem.read_u64(a).ok());
            out.extend(read(d + self.defer_fn));
            match read(d + self.defer_link) {
                Some(next) if next != d => d = next,
                _ => break,
            }
        }
        if panic_head != 0 {
            out.push(panic_head);
            if (lo..hi).contains(&panic_head) {
                conservative(panic_head, panic_head + 128, out);
            }
        }

        // Stack objects (address-taken locals) are live only when a live slot, or another live
        // stack object, points into them, as the GC decides: an object the function has not
        // initialised yet (or no longer uses) holds whatever an earlier frame left there.
        objects.sort_unstable_by_key(|o| o.base);
        let mut scanned = vec![false; objects.len()];
        let mut work: Vec<u64> = out[first_word..]
            .iter()
            .copied()
            .filter(|w| (lo..hi).contains(w))
            .collect();
        while let Some(w) = work.pop() {
            let i = objects.partition_point(|o| o.base <= w);
            let Some(o) = i.checked_sub(1).map(|i| (i, objects[i])) else {
                continue;
            };
            let (i, o) = o;
            if w >= o.base + o.size || scanned[i] {
                continue;
            }
            scanned[i] = true;
            let mut at = o.base.next_multiple_of(8);
            while at + 8 <= o.base + o.ptr_bytes {
                if let Some(v) = word(at) {
                    out.push(v);
                    if (lo..hi).contains(&v) {
                        work.push(v);
                    }
                }
                at += 8;
            }
        }
    }

    /// The live pointer slots (locals and arguments, by the stack maps) of the innermost frame
    /// of `function` on a parked goroutine's stack; empty when it is not there or the stack
    /// cannot be unwound to it.
    pub fn live_words_of(&self, mem: &dyn Memory, g: &RawG, function: &str) -> Vec<u64> {
        let Some(stack) = LiveStack::read(mem, g) else {
            return Vec::new();
        };
        let hi = stack.hi;
        let word = |addr: u64| stack.word(addr);
        let (mut pc, mut sp) = (g.sched_pc, g.sched_sp);
        let mut objects = Vec::new();
        for _ in 0..MAX_FRAMES {
            let is_it = self
                .binary
                .pclntab
                .func_for_pc(pc.wrapping_sub(self.bias))
                .is_some_and(|f| f.name == function);
            let mut words = Vec::new();
            match self.frame(pc, sp, hi, &word, &mut words, &mut objects) {
                _ if is_it => return words,
                Frame::Next {
                    pc: next_pc,
                    sp: next_sp,
                } => {
                    pc = next_pc;
                    sp = next_sp;
                }
                Frame::Done | Frame::Undecodable(_) => break,
            }
        }
        Vec::new()
    }

    /// The `fn` closure of every `_defer` record on the chain starting at `head` (`g._defer`):
    /// defers the compiler could not open-code (in loops, or too many in one function).
    pub fn deferred_closures(&self, mem: &dyn Memory, head: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut d = head;
        for _ in 0..10_000 {
            if d == 0 {
                break;
            }
            if let Ok(closure) = mem.read_u64(d + self.defer_fn)
                && closure != 0
            {
                out.push(closure);
            }
            match mem.read_u64(d + self.defer_link) {
                Ok(next) if next != d => d = next,
                _ => break,
            }
        }
        out
    }

    /// Where the frame at (`pc`, `sp`) lies, from the function's pcsp table, as the runtime's
    /// unwinder computes it: `fp` just above the return address, `varp` below the saved frame
    /// pointer.
    fn geometry(&self, pc: u64, sp: u64, hi: u64) -> Result<Geometry, &'static str> {
        let pclntab = &self.binary.pclntab;
        let link_pc = pc.wrapping_sub(self.bias);
        let func = pclntab.func_for_pc(link_pc).ok_or("u1")?;
        if func.name == "runtime.goexit" {
            return Ok(Geometry::Bottom);
        }
        if func.name == "runtime.asyncPreempt" || func.name.starts_with("runtime.debugCall") {
            return Err("u2");
        }
        let delta = pclntab.sp_delta(&func, link_pc).ok_or("u3")?;
        if delta < 0 {
            return Err("u4");
        }
        let fp = sp
            .checked_add(delta as u64 + 8)
            .filter(|&fp| fp <= hi)
            .ok_or("u5")?;
        let mut varp = fp - 8;
        if varp > sp {
            varp -= 8; // the saved frame pointer
        }
        Ok(Geometry::Frame {
            func,
            link_pc,
            fp,
            varp,
        })
    }

    /// The frames of a parked goroutine's stack, innermost first, as far as they can be
    /// unwound (a frame that cannot be decoded ends the list).
    pub fn frames(&self, mem: &dyn Memory, g: &RawG) -> Vec<FrameAt> {
        let mut out = Vec::new();
        let Some(stack) = LiveStack::read(mem, g) else {
            return out;
        };
        let hi = stack.hi;
        let (mut pc, mut sp) = (g.sched_pc, g.sched_sp);
        for _ in 0..MAX_FRAMES {
            let Ok(Geometry::Frame {
                func,
                link_pc,
                fp,
                varp,
            }) = self.geometry(pc, sp, hi)
            else {
                break;
            };
            let ret = stack.word(fp - 8).unwrap_or(0);
            out.push(FrameAt {
                func,
                pc: link_pc,
                sp,
                varp,
            });
            if ret == 0 {
                break;
            }
            pc = ret;
            sp = fp;
        }
        out
    }

    fn frame(
        &self,
        pc: u64,
        sp: u64,
        hi: u64,
        word: &dyn Fn(u64) -> Option<u64>,
        out: &mut Vec<u64>,
        objects: &mut Vec<StackObject>,
    ) -> Frame {
        let pclntab = &self.binary.pclntab;
        let (f, link_pc, fp, varp) = match self.geometry(pc, sp, hi) {
            Ok(Geometry::Frame {
                func,
                link_pc,
                fp,
                varp,
            }) => (func, link_pc, fp, varp),
            Ok(Geometry::Bottom) => return Frame::Done,
            Err(why) => return Frame::Undecodable(why),
        };
        let argp = fp;
        let index = if link_pc != f.entry {
            pclntab
                .pcdata(&f, PCDATA_STACK_MAP_INDEX, link_pc - 1)
                .unwrap_or(-1)
        } else {
            -1
        };
        let index = if index == -1 { 0 } else { index };

        // Locals.
        if varp > sp {
            let Some(map) = pclntab
                .funcdata_addr(&f, FUNCDATA_LOCALS_POINTER_MAPS)
                .and_then(|a| self.stack_map(a))
            else {
                return Frame::Undecodable("u6");
            };
            if map.nbit > 0 {
                let Some(bits) = map.bitmap(index) else {
                    return Frame::Undecodable("u7");
                };
                let size = map.nbit as u64 * 8;
                if size > varp - sp {
                    return Frame::Undecodable("u8");
                }
                push_marked(bits, map.nbit, varp - size, word, out);
            }
        }
        // Arguments (in the caller's frame, above the return address).
        if let Some(map) = pclntab
            .funcdata_addr(&f, FUNCDATA_ARGS_POINTER_MAPS)
            .and_then(|a| self.stack_map(a))
            && map.nbit > 0
        {
            let Some(bits) = map.bitmap(index) else {
                return Frame::Undecodable("u9");
            };
            if argp + map.nbit as u64 * 8 > hi {
                return Frame::Undecodable("u10");
            }
            push_marked(bits, map.nbit, argp, word, out);
        }
        // Stack objects: address-taken locals, scanned later if something live points at them.
        if let Some(addr) = pclntab.funcdata_addr(&f, FUNCDATA_STACK_OBJECTS) {
            let Some(n) = self
                .binary
                .image
                .bytes_at(addr, 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            else {
                return Frame::Undecodable("u11");
            };
            if n > 4096 {
                return Frame::Undecodable("u12");
            }
            let Some(records) = self.binary.image.bytes_at(addr + 8, n as usize * 16) else {
                return Frame::Undecodable("u13");
            };
            for r in records.as_chunks::<16>().0 {
                let off = i32::from_le_bytes(r[0..4].try_into().unwrap()) as i64;
                let size = i32::from_le_bytes(r[4..8].try_into().unwrap()) as i64;
                // ptrdata (negative when a GC program describes the type): only the prefix
                // up to the last pointer can hold one.
                let ptr_bytes =
                    i64::from(i32::from_le_bytes(r[8..12].try_into().unwrap()).unsigned_abs());
                let base = if off < 0 {
                    varp as i64 + off
                } else {
                    argp as i64 + off
                };
                if size <= 0 || base < sp as i64 || base + size > hi as i64 {
                    return Frame::Undecodable("u14");
                }
                objects.push(StackObject {
                    base: base as u64,
                    size: size as u64,
                    ptr_bytes: ptr_bytes.min(size) as u64,
                });
            }
        }
        match word(fp - 8) {
            Some(ret) if ret != 0 => Frame::Next { pc: ret, sp: fp },
            _ => Frame::Undecodable("u15"),
        }
    }
}

/// The live part of a parked goroutine's stack, `[sched.sp, stack.hi)`, read in one piece.
struct LiveStack {
    lo: u64,
    hi: u64,
    bytes: Vec<u8>,
}

impl LiveStack {
    /// None when the saved bounds are implausible (a torn read) or the stack cannot be read.
    fn read(mem: &dyn Memory, g: &RawG) -> Option<LiveStack> {
        let (lo, hi) = (g.sched_sp, g.stack_hi);
        if lo < g.stack_lo || lo >= hi || hi - lo > MAX_STACK || lo % 8 != 0 {
            return None;
        }
        let bytes = mem.read_vec(lo, (hi - lo) as usize).ok()?;
        Some(LiveStack { lo, hi, bytes })
    }

    /// The word at `addr`, if it lies inside.
    fn word(&self, addr: u64) -> Option<u64> {
        if addr < self.lo || addr.checked_add(8).is_none_or(|end| end > self.hi) {
            return None;
        }
        let i = (addr - self.lo) as usize;
        Some(u64::from_le_bytes(self.bytes[i..i + 8].try_into().ok()?))
    }
}

/// One unwound frame of a goroutine's stack.
#[derive(Clone, Debug)]
pub struct FrameAt {
    pub func: FuncInfo,
    /// Link-time pc (the return address for every frame but the innermost).
    pub pc: u64,
    pub sp: u64,
    /// Base of the frame's locals (the runtime's `varp`): open-coded defer slots are below it.
    pub varp: u64,
}

/// An address-taken local of some frame: `[base, base+size)`, pointers only in the first
/// `ptr_bytes`.
#[derive(Clone, Copy, Debug)]
struct StackObject {
    base: u64,
    size: u64,
    ptr_bytes: u64,
}

enum Geometry {
    /// `runtime.goexit`: the bottom of every goroutine stack.
    Bottom,
    Frame {
        func: FuncInfo,
        link_pc: u64,
        fp: u64,
        varp: u64,
    },
}

enum Frame {
    Next { pc: u64, sp: u64 },
    Done,
    Undecodable(&'static str),
}

fn push_marked(
    bits: &[u8],
    nbit: i32,
    base: u64,
    word: &dyn Fn(u64) -> Option<u64>,
    out: &mut Vec<u64>,
) {
    for i in 0..nbit as u64 {
        if bits[(i / 8) as usize] >> (i % 8) & 1 == 1 {
            out.extend(word(base + i * 8));
        }
    }
}
