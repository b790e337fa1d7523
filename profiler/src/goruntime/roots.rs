//! Where a reachability scan starts, as the runtime defines it: the globals, the runtime's own
//! records that can hold a user pointer (m `waitlock`s, p timer heaps, finalizers and cleanups),
//! and the live words of every goroutine that can run. Also the runtime records a scan must
//! mark but never look inside (g records, sudogs, m and p records): their words are back-links
//! and caches, not references a program could follow.
//!
//! Everything here decodes; nothing marks. The leak proof (`analysis::leaks`) feeds these roots
//! to its marker, and a scan that re-reads roots after stopping the target (a mostly-concurrent
//! mark) asks the same functions again.

use std::ops::Range;

use crate::error::InspectError;
use crate::goruntime::goroutines::{self, RawG};
use crate::goruntime::heap::{self, AddrSet, Heap, HeapLayout};
use crate::goruntime::layout::Field;
use crate::goruntime::snapshot::Target;
use crate::goruntime::specials::{Finalizer, SpecialsLayout};
use crate::goruntime::stackscan::{StackScanStats, StackScanner};
use crate::goruntime::sudogs;
use crate::goruntime::threads::MLayout;
use crate::model::Status;
use crate::remote::memory::Memory;

/// Everything needed to find the roots of one process, resolved once.
pub struct RootFinder<'t, 'd> {
    pub target: &'t Target<'d>,
    pub heap_layout: HeapLayout,
    /// Run-time address of `runtime.mheap_`.
    pub mheap: u64,
    /// Run-time `[lo, hi)` of `.data` and `.bss` (the pointer-bearing globals).
    globals: Vec<Range<u64>>,
    /// Pointer fields of a g that keep things alive for a goroutine that can run.
    g_pointer_fields: Vec<Field>,
    g_defer: Option<Field>,
    g_panic: Option<Field>,
    g_syscallsp: Option<Field>,
    g_syscallpc: Option<Field>,
    /// `p.timers` (the timer heap's slice header).
    p_timers: Option<Field>,
    /// Where finalizer records are, when this Go's layout is known.
    specials: Option<SpecialsLayout>,
    /// How to find and read the `runtime.m` records, when this Go's layout is known.
    ms: Option<MLayout>,
    /// Run-time range of the executable's code (closures point into it).
    text: Range<u64>,
    g_size: usize,
    /// Precise stack scanning with the compiler's stack maps.
    pub stacks: StackScanner<'t, 'd>,
}

/// The roots outside goroutines, read once per scan.
#[derive(Debug, Default)]
pub struct RuntimeRoots {
    /// `.data` and `.bss`: scanned whole, but for `blank` and the `stack.hi` words of g
    /// records held there (see `stack_end_words`).
    pub globals: Vec<Range<u64>>,
    /// Runtime records that are globals (`m0`): rooted field by field through `words`, so
    /// left out of the globals' scan.
    pub blank: Vec<Range<u64>>,
    /// Single root words, each with what it is: m `waitlock`s, p timer heaps.
    pub words: Vec<(&'static str, u64)>,
    /// Finalizers and cleanups: their closure is a root and so is what their object points to
    /// (not the object itself).
    pub finalizers: Vec<Finalizer>,
    /// Heap objects to mark but never scan (by base address): g records, sudogs, heap m and p
    /// records.
    pub opaque: AddrSet,
    /// m records found.
    pub m_records: usize,
}

/// The roots of one goroutine that can run (or be woken).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GoroutineRoots {
    /// Live pointer words: the g's pointer fields and, where its stack could be decoded, the
    /// slots the compiler's stack maps mark live.
    pub words: Vec<u64>,
    /// Stack ranges to scan conservatively (registers of a running goroutine are invisible,
    /// and a stack that cannot be decoded is scanned whole from where decoding stopped).
    pub ranges: Vec<Range<u64>>,
}

impl<'t, 'd> RootFinder<'t, 'd> {
    pub fn new(target: &'t Target<'d>) -> Result<Self, InspectError> {
        let binary = &target.binary;
        let heap_layout = HeapLayout::resolve(&binary.offsets)?;
        let mheap = heap::find_mheap(binary, &heap_layout).ok_or_else(|| {
            InspectError::MissingSymbol(
                "runtime.mheap_ (no symbol, and runtime.findObject does not reveal it)".into(),
            )
        })?;
        let md = binary.pclntab.moduledata().ok_or_else(|| {
            InspectError::MissingSymbol("runtime.firstmoduledata (data and bss bounds)".into())
        })?;
        let bias = target.load_bias;
        let globals = vec![
            md.data.wrapping_add(bias)..md.edata.wrapping_add(bias),
            md.bss.wrapping_add(bias)..md.ebss.wrapping_add(bias),
        ];
        let field = |k: &str| {
            binary.offsets.get(k).map(|f| Field {
                offset: f.value as usize,
                size: 8,
            })
        };
        // `sched.ctxt` holds the closure of a goroutine created but not yet run (and of one
        // parked in morestack): its captured channels and wait groups are live.
        let g_pointer_fields = [
            "g.sched.ctxt",
            "g._defer",
            "g._panic",
            "g.param",
            "g.labels",
            "g.timer",
            "g.ancestors",
        ]
        .iter()
        .filter_map(|k| field(k))
        .collect();
        Ok(RootFinder {
            g_defer: field("g._defer"),
            g_panic: field("g._panic"),
            g_syscallsp: field("g.syscallsp"),
            g_syscallpc: field("g.syscallpc"),
            p_timers: field("p.timers"),
            specials: SpecialsLayout::resolve(&binary.offsets),
            ms: MLayout::resolve(
                &binary.offsets,
                binary.symbol("runtime.allm").map(|s| s.addr + bias),
            ),
            text: binary.pclntab.text_start().wrapping_add(bias)
                ..binary.pclntab.text_end().wrapping_add(bias),
            stacks: StackScanner::new(binary, bias),
            target,
            heap_layout,
            mheap: mheap.wrapping_add(bias),
            globals,
            g_pointer_fields,
            g_size: target.layout.g.size,
        })
    }

    /// A view of the target's heap metadata, None when `mheap_.arenas` cannot be read.
    pub fn heap<'m>(&self, mem: &'m dyn Memory) -> Option<Heap<'m>> {
        Heap::new(mem, self.heap_layout.clone(), self.mheap)
    }

    /// The roots outside goroutines. `g_addrs` are the g records of `allgs`, `gs` the ones
    /// that decoded; `heap` tells heap records (never scanned) from global ones (left out of
    /// the globals).
    pub fn runtime_roots(
        &self,
        mem: &dyn Memory,
        heap: &mut Heap<'_>,
        g_addrs: &[u64],
        gs: &[RawG],
    ) -> RuntimeRoots {
        let mut opaque: AddrSet = g_addrs.iter().copied().collect();
        opaque.extend(sudogs::linked_sudogs(self.target, mem, gs));
        let mut words = Vec::new();
        // The p records: scanned like any heap object they would root everything in their
        // write-barrier buffers and GC work caches (stale pointers). Only their timer heaps are
        // roots (time.After channels, AfterFunc closures).
        let ps = self.p_records(mem);
        opaque.extend(ps.iter().filter_map(|&p| heap.object_of(p).map(|o| o.base)));
        // The m records: heap ones marked but not scanned, m0 (a global) left out of the
        // globals' words; only their `waitlock` is a root.
        let ms = self
            .ms
            .as_ref()
            .map(|layout| layout.records(mem, gs))
            .unwrap_or_default();
        let mut blank = Vec::new();
        for &m in &ms {
            match heap.object_of(m) {
                Some(object) if object.base == m => {
                    opaque.insert(object.base);
                }
                Some(_) => {}
                None => blank.extend(self.ms.as_ref().map(|l| m..m + l.size)),
            }
        }
        if let Some(layout) = &self.ms {
            words.extend(
                layout
                    .waitlocks(mem, &ms)
                    .into_iter()
                    .map(|w| ("m waitlock", w)),
            );
        }
        if let Some(timers) = self.p_timers {
            words.extend(
                ps.iter()
                    .filter_map(|&p| mem.read_u64(p + timers.offset as u64).ok())
                    .map(|w| ("p timers", w)),
            );
        }
        let finalizers = self
            .specials
            .as_ref()
            .map(|s| s.finalizers(mem, self.mheap, &self.text))
            .unwrap_or_default();
        RuntimeRoots {
            globals: self.globals.clone(),
            blank,
            words,
            finalizers,
            opaque,
            m_records: ms.len(),
        }
    }

    /// The `runtime.p` records of `allp`, when the binary says where allp is.
    fn p_records(&self, mem: &dyn Memory) -> Vec<u64> {
        let (Some(allp), Some(_)) = (self.target.globals.allp, self.p_timers) else {
            return Vec::new();
        };
        goroutines::read_pointer_slice(mem, allp.wrapping_add(self.target.load_bias))
            .unwrap_or_default()
    }

    /// The roots of a goroutine that can run (or be woken), whose status the caller saw as
    /// `status`: its g's pointer fields, and its stack, precisely where the compiler's stack
    /// maps decode it, else conservatively.
    pub fn goroutine_roots(
        &self,
        mem: &dyn Memory,
        raw: &RawG,
        status: Status,
        stack_stats: &mut StackScanStats,
    ) -> GoroutineRoots {
        let mut roots = GoroutineRoots::default();
        let record = mem.read_vec(raw.addr, self.g_size).ok();
        let field = |f: Option<Field>| -> u64 {
            match (f, &record) {
                (Some(f), Some(r)) => f.read(r).unwrap_or(0),
                _ => 0,
            }
        };
        if let Some(record) = &record {
            roots
                .words
                .extend(self.g_pointer_fields.iter().filter_map(|f| f.read(record)));
        }
        // A goroutine in a system call saved where it entered it: from there its frames unwind
        // like a parked one's (the GC does the same). Scanning them whole would read the stale
        // slots a reused stack keeps from the goroutine that ran on it before.
        let syscallsp = field(self.g_syscallsp);
        let syscallpc = field(self.g_syscallpc);
        let at_syscall = (status == Status::Syscall
            && syscallpc != 0
            && syscallsp > raw.stack_lo
            && syscallsp < raw.stack_hi)
            .then(|| RawG {
                sched_pc: syscallpc,
                sched_sp: syscallsp,
                ..raw.clone()
            });
        let stopped = status.is_parked() || status == Status::Runnable;
        let unwind_from = if stopped {
            Some(raw)
        } else {
            at_syscall.as_ref()
        };
        if let Some(unwind_from) = unwind_from {
            let mut words = Vec::new();
            let before = stack_stats.fallbacks;
            self.stacks.live_words(
                mem,
                unwind_from,
                field(self.g_defer),
                field(self.g_panic),
                &mut words,
                stack_stats,
            );
            // A stack that could not even be read is scanned conservatively below (it fails
            // the same way, or the goroutine moved and the next scan will tell).
            if stack_stats.fallbacks == before || !words.is_empty() {
                roots.words.extend(words);
                return roots;
            }
        }
        // Registers of a running goroutine are invisible and its saved SP is stale: scan the
        // whole stack. A parked (or runnable, preempted) one saved its SP, one in a system call
        // its syscallsp: nothing below those is live (stale frames of earlier calls live there).
        let lo = if stopped {
            raw.sched_sp.clamp(raw.stack_lo, raw.stack_hi)
        } else if status == Status::Syscall && syscallsp > raw.stack_lo && syscallsp < raw.stack_hi
        {
            syscallsp
        } else {
            raw.stack_lo
        };
        roots.ranges.push(lo..raw.stack_hi);
        roots
    }

    /// `g._defer` of a g record (0 when unknown or unreadable).
    pub fn defer_head(&self, mem: &dyn Memory, g: u64) -> u64 {
        self.g_defer
            .and_then(|f| mem.read_u64(g + f.offset as u64).ok())
            .unwrap_or(0)
    }
}
