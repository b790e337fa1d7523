//! Leak verdicts with proof, from outside: the GC's own rule (a goroutine blocked on a channel or
//! sync primitive that nothing able to run can reach will never wake) applied to a conservative
//! scan of the target's memory, plus what needs no proof (nil-channel waits, `select {}`).
//!
//! One scan:
//! 1. read every goroutine (the snapshot) and its raw `g` record;
//! 2. candidates: goroutines parked (`_Gwaiting`, or `_Gleaked` on Go 1.26+) on a channel, a
//!    select or a sync primitive whose address we know; nil-channel waits and `select {}` outside
//!    main are leaked outright; everything else is a root;
//! 3. roots: `.data` and `.bss`; the stacks of root goroutines (parked ones from `sched.sp`,
//!    running and syscall ones whole) and their g's pointer fields (`sched.ctxt`, `_defer`,
//!    `_panic`, `param`, `labels`, `timer`, `ancestors`), scanned conservatively;
//! 4. mark through the heap, never scanning g records (allgs) or sudogs (`g.waiting` chains and
//!    the semaphore table): those are the runtime's back-links to what goroutines wait on;
//! 5. fixpoint: a candidate whose blocking object got marked, or is not a heap object, can still
//!    be woken: its stack becomes a root; repeat. The candidates left are flagged, if their park
//!    key did not change during the scan.
//!
//! The target runs during a scan, so [`detect`] reports a goroutine only when every one of at
//! least two scans, some 100 ms apart, flagged it with the same park key (status, wait reason,
//! `trackingSeq`, `sched.sp`, `waiting`): a goroutine that ran in between is never reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::analysis::deadlocks::{self, LockWait, LockWaitKind};
use crate::analysis::holders::HolderFinder;
use crate::analysis::reach::{MarkStats, Marker};
use crate::analysis::stackscan::{StackScanStats, StackScanner};
use crate::error::InspectError;
use crate::goruntime::globals::SEMTABLE_SIZE;
use crate::goruntime::goroutines::{self, RawG, read_sudog};
use crate::goruntime::heap::{self, AddrSet, Heap, HeapLayout};
use crate::goruntime::layout::Field;
use crate::goruntime::snapshot::{self, Target};
use crate::model::{BlockedOn, Frame, Goroutine, Location, ObjectKind, Op, Snapshot, Status};
use crate::remote::freeze::FreezeStats;
use crate::remote::memory::{MemError, Memory};

/// What one scan needs beyond the snapshot's `Target`, resolved once.
pub struct LeakTarget<'t, 'd> {
    pub target: &'t Target<'d>,
    heap_layout: HeapLayout,
    /// Run-time address of `runtime.mheap_`.
    mheap: u64,
    /// Run-time `[lo, hi)` of `.data` and `.bss` (the pointer-bearing globals).
    globals: Vec<(u64, u64)>,
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
    text: std::ops::Range<u64>,
    g_size: usize,
    /// Scan parked goroutines' stacks with the compiler's stack maps (else conservatively).
    pub precise_stacks: bool,
    stacks: StackScanner<'t, 'd>,
}

impl<'t, 'd> LeakTarget<'t, 'd> {
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
            (md.data.wrapping_add(bias), md.edata.wrapping_add(bias)),
            (md.bss.wrapping_add(bias), md.ebss.wrapping_add(bias)),
        ];
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
        .filter_map(|k| binary.offsets.get(k))
        .map(|f| Field {
            offset: f.value as usize,
            size: 8,
        })
        .collect();
        let field = |k: &str| {
            binary.offsets.get(k).map(|f| Field {
                offset: f.value as usize,
                size: 8,
            })
        };
        Ok(LeakTarget {
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
            precise_stacks: true,
            stacks: StackScanner::new(binary, bias),
            target,
            heap_layout,
            mheap: mheap.wrapping_add(bias),
            globals,
            g_pointer_fields,
            g_size: target.layout.g.size,
        })
    }
}

/// Bound on the `allm` list (a torn read could make it cyclic).
const MAX_MS: usize = 100_000;

/// Offsets to find the `runtime.m` records (one per OS thread) and the one field of theirs that
/// can point at a user object.
///
/// An m is scanned field by field, not word by word: most of it is the runtime's own state
/// (saved registers, signal masks, profiling buffers, thread-local scratch) where stale words
/// that look like pointers would keep a leaked channel alive. Its pointer fields are g and p
/// records (skipped as everywhere), static function values, and `waitlock`: the lock a
/// goroutine is parking on, between gopark and the unlock that follows on the system stack.
struct MLayout {
    g_m: u64,
    alllink: u64,
    waitlock: Field,
    size: u64,
    /// Run-time address of `runtime.allm` (the newest m).
    allm: Option<u64>,
}

impl MLayout {
    fn resolve(offsets: &crate::gobin::offsets::RuntimeOffsets, allm: Option<u64>) -> Option<Self> {
        let at = |k: &str| offsets.get(k);
        Some(MLayout {
            g_m: at("g.m")?.value,
            alllink: at("m.alllink")?.value,
            waitlock: Field {
                offset: at("m.waitlock")?.value as usize,
                size: 8,
            },
            size: at("m.$size")?.size,
            allm,
        })
    }
}

/// Every m record the runtime links: from `allm` (by symbol, or found in code), and from the g
/// records of goroutines on a thread (should `allm` not be found, the newest idle ms may be
/// missed; they are then scanned as plain heap objects, which can hide a leak but never invent
/// one). Each is followed along `alllink`, which ends at `m0`.
fn m_records(layout: &MLayout, mem: &dyn Memory, gs: &[RawG]) -> Vec<u64> {
    let mut starts: Vec<u64> = layout
        .allm
        .and_then(|allm| mem.read_u64(allm).ok())
        .into_iter()
        .collect();
    let on_thread: Vec<u64> = gs
        .iter()
        .filter(|g| matches!(g.status, Status::Running | Status::Syscall))
        .map(|g| g.addr + layout.g_m)
        .collect();
    let mut words = vec![[0u8; 8]; on_thread.len()];
    let mut requests: Vec<(u64, &mut [u8])> = on_thread
        .iter()
        .zip(words.iter_mut())
        .map(|(&a, w)| (a, w.as_mut_slice()))
        .collect();
    let results = mem.read_many(&mut requests);
    drop(requests);
    starts.extend(
        words
            .iter()
            .zip(results)
            .filter(|(_, r)| r.is_ok())
            .map(|(w, _)| u64::from_le_bytes(*w)),
    );
    let mut seen = AddrSet::default();
    let mut out = Vec::new();
    for start in starts {
        let mut m = start;
        while m != 0 && m % 8 == 0 && out.len() < MAX_MS && seen.insert(m) {
            out.push(m);
            m = mem.read_u64(m + layout.alllink).unwrap_or(0);
        }
    }
    out
}

/// Bound on one span's special list (a torn read could make it cyclic).
const MAX_SPECIALS_PER_SPAN: usize = 100_000;

/// Offsets to walk `mheap_.allspans` and each span's specials.
struct SpecialsLayout {
    mheap_allspans: u64,
    span_specials: u64,
    span_start: u64,
    next: u64,
    offset: Field,
    finalizer_fn: u64,
}

impl SpecialsLayout {
    fn resolve(offsets: &crate::gobin::offsets::RuntimeOffsets) -> Option<Self> {
        let at = |k: &str| offsets.get(k).map(|f| f.value);
        let offset = offsets.get("special.offset")?;
        Some(SpecialsLayout {
            mheap_allspans: at("mheap.allspans")?,
            span_specials: at("mspan.specials")?,
            span_start: at("mspan.startAddr")?,
            next: at("special.next")?,
            offset: Field {
                offset: offset.value as usize,
                size: offset.size as usize,
            },
            finalizer_fn: at("specialfinalizer.fn")?,
        })
    }
}

/// Why a goroutine was flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Blocked on primitives no runnable goroutine, global or reachable object refers to.
    Unreachable,
    /// Send or receive on a nil channel: blocks forever by definition.
    NilChannel,
    /// `select {}` outside main.
    SelectNoCases,
    /// Waits for a lock on a wait cycle: each member waits for a lock the next one holds.
    WaitCycle,
    /// Waits for a lock whose holder (or the writer it queues behind) never proceeds: it is
    /// on a wait cycle or leaked.
    BehindDeadlock,
    /// One of many goroutines parked at the same site for a long time; not proven.
    Cluster,
}

impl Why {
    pub fn evidence(self) -> &'static str {
        match self {
            Why::Unreachable => {
                "nothing that can still run refers to what it waits on: no global (.data/.bss), no \
                 stack of a runnable, running, sleeping or I/O-waiting goroutine, and no heap \
                 object reachable from those (nor from goroutines they could wake) points to it"
            }
            Why::NilChannel => "operation on a nil channel: it blocks forever",
            Why::SelectNoCases => "select {} with no cases: it blocks forever",
            Why::WaitCycle => {
                "it waits for a lock on a cycle of lock waits in which every member is parked; \
                 holders are known from their pending deferred unlocks"
            }
            Why::BehindDeadlock => {
                "it waits for a lock held (or queued for) by a goroutine that never proceeds; \
                 holders are known from their pending deferred unlocks"
            }
            Why::Cluster => {
                "many goroutines have been parked at this site for a long time; not proven \
                 leaked (something that can still run reaches what they wait on), but worth a \
                 look: a slow leak or an oversized pool"
            }
        }
    }

    /// The verdict this reason leads to.
    pub fn verdict(self) -> &'static str {
        match self {
            Why::WaitCycle | Why::BehindDeadlock => "deadlocked",
            Why::Cluster => "suspect",
            Why::Unreachable | Why::NilChannel | Why::SelectNoCases => "leaked",
        }
    }
}

/// One goroutine flagged by one scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub goid: i64,
    pub g_addr: u64,
    pub park_key: (u32, u8, u64, u64, Option<u64>),
    pub why: Why,
    /// For a deadlock: the chain of waits, in words.
    pub detail: Option<String>,
}

impl Flag {
    /// Two scans agree on a goroutine when it held still and was flagged for the same reason.
    fn agrees_with(&self, other: &Flag) -> bool {
        self.park_key == other.park_key && self.why == other.why
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScanStats {
    pub took_ms: f64,
    pub goroutines: usize,
    /// Blocked on a channel/sync object (before the fixpoint).
    pub candidates: usize,
    /// Candidates found wakeable by the fixpoint.
    pub promoted: usize,
    pub flagged: usize,
    /// Finalizer and cleanup records whose closures and referents were roots.
    pub finalizers: usize,
    /// Goroutines parked on a Mutex or RWMutex, and the locks found held through pending
    /// deferred unlocks.
    pub lock_waiters: usize,
    pub locks_held: usize,
    /// Flagged by reachability but changed under the reader: not flagged.
    pub moved: usize,
    /// g records that could not be decoded (their stacks are not roots in this scan).
    pub unreadable_gs: usize,
    /// m records found on the `allm` list, rooted field by field.
    pub m_records: usize,
    pub mark: MarkStats,
    pub heap_metadata_bytes: u64,
    /// Frames scanned with the compiler's stack maps.
    pub precise_frames: u64,
    /// Stacks (or stack tails) scanned conservatively because a frame could not be decoded.
    pub stack_fallbacks: u64,
}

pub struct Scan {
    pub snapshot: Snapshot,
    pub flags: Vec<Flag>,
    pub stats: ScanStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Root,
    Candidate,
    Flagged(Why),
}

fn role(g: &Goroutine, main_goid: i64) -> Role {
    if !g.status.is_parked() || g.unstable {
        return Role::Root;
    }
    match g.wait_reason.as_deref() {
        Some("chan send (nil chan)" | "chan receive (nil chan)") => Role::Flagged(Why::NilChannel),
        Some("select (no cases)") if g.goid != main_goid => Role::Flagged(Why::SelectNoCases),
        // A blocking object we could not identify could be anything: the goroutine stays a root.
        Some(reason) if is_candidate_reason(reason) && !g.blocked_on.is_empty() => Role::Candidate,
        _ => Role::Root,
    }
}

fn is_candidate_reason(reason: &str) -> bool {
    matches!(
        reason,
        "chan send"
            | "chan receive"
            | "select"
            | "sync.Mutex.Lock"
            | "sync.RWMutex.RLock"
            | "sync.RWMutex.Lock"
            | "sync.WaitGroup.Wait"
            | "sync.Cond.Wait"
            | "semacquire"
    )
}

/// Finalizer and cleanup records (span specials) are roots, as for the GC: the closure, and
/// what the object with the finalizer points to (not the object itself). A special whose third
/// word points to a closure (a funcval: its first word is in the text) is one of those; the
/// other kinds (profile, weak handle, pin counter, reachable) carry no code pointer there.
/// Returns how many were found.
fn scan_finalizers(
    lt: &LeakTarget<'_, '_>,
    mem: &dyn Memory,
    marker: &mut Marker<'_, '_>,
) -> usize {
    let Some(sp) = &lt.specials else {
        return 0;
    };
    let Ok(spans) = goroutines::read_pointer_slice(mem, lt.mheap + sp.mheap_allspans) else {
        return 0;
    };
    let text = &lt.text;
    let mut found = 0;
    for span in spans {
        let Ok(mut special) = mem.read_u64(span + sp.span_specials) else {
            continue;
        };
        let Ok(start) = mem.read_u64(span + sp.span_start) else {
            continue;
        };
        for _ in 0..MAX_SPECIALS_PER_SPAN {
            if special == 0 {
                break;
            }
            let Ok(fn_value) = mem.read_u64(special + sp.finalizer_fn) else {
                break;
            };
            let code = (fn_value != 0)
                .then(|| mem.read_u64(fn_value).ok())
                .flatten();
            if code.is_some_and(|pc| text.contains(&pc))
                && let Ok(offset) = mem.read_vec(special + sp.offset.offset as u64, sp.offset.size)
            {
                let mut word = [0u8; 8];
                word[..offset.len().min(8)].copy_from_slice(&offset[..offset.len().min(8)]);
                found += 1;
                marker.mark_word(fn_value);
                marker.scan_object_contents(start + u64::from_le_bytes(word));
            }
            match mem.read_u64(special + sp.next) {
                Ok(next) if next != special => special = next,
                _ => break,
            }
        }
    }
    marker.drain();
    found
}

/// `Cond{noCopy; L Locker; notify notifyList; …}`: the notify list sits after the Locker
/// interface (unchanged since Go 1.0).
const COND_NOTIFY_OFFSET: u64 = 16;

/// Before Go 1.26 a goroutine in `sync.Cond.Wait` does not link its sudog from its g, so the
/// snapshot cannot name the Cond. Its `sync.(*Cond).Wait` frame keeps the receiver live (it
/// relocks `c.L` afterwards): the candidate whose notify list holds this goroutine's sudog is
/// the Cond it waits on.
fn name_cond_waits(
    lt: &LeakTarget<'_, '_>,
    mem: &dyn Memory,
    snapshot: &mut Snapshot,
    raw_of: &HashMap<u64, &RawG>,
) {
    let Some(head) = lt.target.binary.offsets.get("notifyList.head") else {
        return;
    };
    let sudog = &lt.target.layout.sudog;
    for g in snapshot.goroutines.iter_mut() {
        if !g.status.is_parked()
            || g.wait_reason.as_deref() != Some("sync.Cond.Wait")
            || !g.blocked_on.is_empty()
        {
            continue;
        }
        let Some(raw) = raw_of.get(&g.g_addr) else {
            continue;
        };
        let waits_on = |cond: u64| {
            let Ok(mut s) = mem.read_u64(cond + COND_NOTIFY_OFFSET + head.value) else {
                return false;
            };
            for _ in 0..goroutines::MAX_SUDOG_CHAIN {
                match read_sudog(mem, sudog, s) {
                    Some(found) if found.g == g.g_addr => return true,
                    Some(found) if found.next != 0 && found.next != s => s = found.next,
                    _ => return false,
                }
            }
            false
        };
        let words = lt.stacks.live_words_of(mem, raw, "sync.(*Cond).Wait");
        if let Some(&cond) = words.iter().find(|&&w| w != 0 && waits_on(w)) {
            g.blocked_on.push(BlockedOn {
                kind: ObjectKind::Cond,
                addr: cond,
                op: Op::Wait,
            });
        }
    }
}

/// The `runtime.p` records of `allp`, when the binary says where allp is.
fn p_records(lt: &LeakTarget<'_, '_>, mem: &dyn Memory) -> Vec<u64> {
    let (Some(allp), Some(_)) = (lt.target.globals.allp, lt.p_timers) else {
        return Vec::new();
    };
    goroutines::read_pointer_slice(mem, allp.wrapping_add(lt.target.load_bias)).unwrap_or_default()
}

/// Every sudog the runtime links from goroutines and the semaphore table.
fn sudogs(target: &Target<'_>, mem: &dyn Memory, gs: &[RawG]) -> HashSet<u64> {
    let layout = &target.layout.sudog;
    let mut out = HashSet::new();
    for g in gs {
        if g.waiting != 0 && g.status != Status::Dead {
            out.extend(
                goroutines::waiting_chain(mem, layout, g)
                    .iter()
                    .map(|s| s.addr),
            );
        }
    }
    if let (Some(table), Some(root)) = (target.globals.semtable, &target.layout.sema_root) {
        let table = table.wrapping_add(target.load_bias);
        for bucket in 0..SEMTABLE_SIZE {
            let Ok(top) =
                mem.read_u64(table + bucket * root.stride as u64 + root.treap.offset as u64)
            else {
                continue;
            };
            let mut stack = vec![top];
            while let Some(node) = stack.pop() {
                if node == 0 || out.len() > goroutines::MAX_SUDOG_CHAIN * 16 || !out.insert(node) {
                    continue;
                }
                if let Some(s) = read_sudog(mem, layout, node) {
                    stack.extend([s.prev, s.next, s.waitlink]);
                }
            }
        }
    }
    out.remove(&0);
    out
}

/// One scan: a snapshot and the goroutines reachability (or the wait itself) proves leaked.
pub fn scan_once(lt: &LeakTarget<'_, '_>, mem: &dyn Memory) -> Result<Scan, MemError> {
    scan_once_with_roots(lt, mem, &[])
}

/// [`scan_once`] with extra root words: the registers of the target's threads, when it is
/// frozen (a running goroutine's live pointers may be only there).
pub fn scan_once_with_roots(
    lt: &LeakTarget<'_, '_>,
    mem: &dyn Memory,
    registers: &[u64],
) -> Result<Scan, MemError> {
    let started = Instant::now();
    let target = lt.target;
    let g_layout = &target.layout.g;
    let g_addrs =
        goroutines::read_pointer_slice(mem, target.globals.allgs.wrapping_add(target.load_bias))?;
    let (raw, unreadable) = goroutines::read_gs(mem, g_layout, &g_addrs);
    let mut snapshot = snapshot::read(target, mem, snapshot::monotonic_ns())?;
    let raw_of: HashMap<u64, &RawG> = raw.iter().map(|g| (g.addr, g)).collect();
    name_cond_waits(lt, mem, &mut snapshot, &raw_of);

    let mut skip: AddrSet = g_addrs.iter().copied().collect();
    skip.extend(sudogs(target, mem, &raw));

    let main_goid = 1;
    let mut roots: Vec<&Goroutine> = Vec::new();
    let mut candidates: Vec<&Goroutine> = Vec::new();
    let mut outright: Vec<(&Goroutine, Why)> = Vec::new();
    for g in &snapshot.goroutines {
        match role(g, main_goid) {
            Role::Root => roots.push(g),
            Role::Candidate => candidates.push(g),
            Role::Flagged(why) => outright.push((g, why)),
        }
    }
    let mut stats = ScanStats {
        goroutines: snapshot.goroutines.len(),
        candidates: candidates.len(),
        unreadable_gs: unreadable.len(),
        ..ScanStats::default()
    };

    let Some(mut heap) = Heap::new(mem, lt.heap_layout.clone(), lt.mheap) else {
        return Err(MemError::Unmapped {
            addr: lt.mheap,
            len: 8,
        });
    };
    // The p records: scanned like any heap object they would root everything in their
    // write-barrier buffers and GC work caches (stale pointers). Only their timer heaps are
    // roots (time.After channels, AfterFunc closures).
    let ps = p_records(lt, mem);
    skip.extend(ps.iter().filter_map(|&p| heap.object_of(p).map(|o| o.base)));
    // The m records: heap ones marked but not scanned, m0 (a global) left out of the globals'
    // words; only their `waitlock` is a root.
    let ms = lt
        .ms
        .as_ref()
        .map(|layout| m_records(layout, mem, &raw))
        .unwrap_or_default();
    stats.m_records = ms.len();
    let mut m_globals: Vec<std::ops::Range<u64>> = Vec::new();
    for &m in &ms {
        match heap.object_of(m) {
            Some(object) if object.base == m => {
                skip.insert(object.base);
            }
            Some(_) => {}
            None => m_globals.extend(lt.ms.as_ref().map(|l| m..m + l.size)),
        }
    }
    let mut marker = Marker::new(mem, &mut heap, skip);
    if std::env::var_os("PARKSCOPE_LEAKS_DEBUG").is_some() {
        marker.record_origins();
    }
    for &(lo, hi) in &lt.globals {
        marker.scan_globals(lo, hi, &m_globals);
    }
    if let Some(layout) = &lt.ms {
        marker.root = "m waitlock";
        for &m in &ms {
            if let Ok(word) = mem.read_u64(m + layout.waitlock.offset as u64) {
                marker.mark_word(word);
            }
        }
    }
    if let Some(timers) = lt.p_timers {
        marker.root = "p timers";
        for &p in &ps {
            if let Ok(heap_array) = mem.read_u64(p + timers.offset as u64) {
                marker.mark_word(heap_array);
            }
        }
    }
    marker.root = "thread registers";
    for &word in registers {
        marker.mark_word(word);
    }
    marker.root = "finalizer";
    stats.finalizers = scan_finalizers(lt, mem, &mut marker);
    let mut stack_stats = StackScanStats::default();
    for g in &roots {
        marker.root = "goroutine";
        marker.root_id = g.goid;
        scan_goroutine(
            lt,
            mem,
            &mut marker,
            raw_of.get(&g.g_addr).copied(),
            g,
            &mut stack_stats,
        );
    }
    marker.drain();

    // Fixpoint: wake whatever can be woken, until nothing changes.
    let mut blocked: Vec<&Goroutine> = candidates;
    loop {
        let (wakeable, still): (Vec<&Goroutine>, Vec<&Goroutine>) =
            blocked.into_iter().partition(|g| {
                g.blocked_on
                    .iter()
                    .any(|b| marker.may_reach(b.addr, value_size(b.kind)))
            });
        blocked = still;
        if wakeable.is_empty() {
            break;
        }
        stats.promoted += wakeable.len();
        if std::env::var_os("PARKSCOPE_LEAKS_DEBUG").is_some() {
            for g in &wakeable {
                for b in &g.blocked_on {
                    eprintln!(
                        "goid {} woken via {:#x}: {:?}",
                        g.goid,
                        b.addr,
                        marker.path_to(b.addr)
                    );
                }
            }
        }
        for g in wakeable {
            marker.root = "woken goroutine";
            marker.root_id = g.goid;
            scan_goroutine(
                lt,
                mem,
                &mut marker,
                raw_of.get(&g.g_addr).copied(),
                g,
                &mut stack_stats,
            );
        }
        marker.drain();
    }
    stats.mark = marker.stats;
    stats.precise_frames = stack_stats.precise_frames;
    stats.stack_fallbacks = stack_stats.fallbacks;
    drop(marker);
    stats.heap_metadata_bytes = heap.bytes_read;

    let leaked: Vec<(&Goroutine, Why, Option<String>)> = blocked
        .into_iter()
        .map(|g| (g, Why::Unreachable, None))
        .chain(outright.into_iter().map(|(g, why)| (g, why, None)))
        .collect();
    let deadlocked = find_deadlocks(lt, mem, &snapshot, &raw_of, &leaked, &mut stats);

    // Only what held still while we looked.
    let mut flags = Vec::new();
    for (g, why, detail) in leaked.into_iter().chain(deadlocked) {
        let Some(before) = raw_of.get(&g.g_addr) else {
            stats.moved += 1;
            continue;
        };
        match goroutines::reread_g(mem, g_layout, g.g_addr) {
            Some(after) if after.park_key() == before.park_key() && after.goid == g.goid => {
                flags.push(Flag {
                    goid: g.goid,
                    g_addr: g.g_addr,
                    park_key: after.park_key(),
                    why,
                    detail,
                });
            }
            _ => stats.moved += 1,
        }
    }
    stats.flagged = flags.len();
    stats.took_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(Scan {
        snapshot,
        flags,
        stats,
    })
}

/// The size of the value a goroutine waits on, where it is fixed and small enough to matter
/// inside a tiny-allocator block (`sync.Mutex`: two 32-bit words in every supported release);
/// `u64::MAX` when the whole heap object counts.
fn value_size(kind: ObjectKind) -> u64 {
    match kind {
        ObjectKind::Mutex => 8,
        _ => u64::MAX,
    }
}

/// Lock waiters that can never proceed: on a wait cycle through lock holders, or behind a
/// goroutine that is on one or leaked. Holders come from pending deferred unlocks of parked
/// goroutines (a running goroutine's stack is not stable enough to read; it can proceed anyway).
fn find_deadlocks<'s>(
    lt: &LeakTarget<'_, '_>,
    mem: &dyn Memory,
    snapshot: &'s Snapshot,
    raw_of: &HashMap<u64, &RawG>,
    leaked: &[(&Goroutine, Why, Option<String>)],
    stats: &mut ScanStats,
) -> Vec<(&'s Goroutine, Why, Option<String>)> {
    let waits: Vec<LockWait> = snapshot
        .goroutines
        .iter()
        .filter(|g| g.status.is_parked() && !g.unstable && g.blocked_on.len() == 1)
        .filter_map(|g| {
            let on = &g.blocked_on[0];
            let kind = LockWaitKind::of(on.kind, g.wait_reason.as_deref()?)?;
            Some(LockWait {
                goid: g.goid,
                addr: on.addr,
                kind,
            })
        })
        .collect();
    stats.lock_waiters = waits.len();
    if waits.is_empty() {
        return Vec::new();
    }
    let finder = HolderFinder::new(&lt.target.binary, lt.target.load_bias, &lt.stacks);
    let mut holders = BTreeMap::new();
    for g in &snapshot.goroutines {
        if !g.status.is_parked() || g.unstable {
            continue;
        }
        let Some(raw) = raw_of.get(&g.g_addr) else {
            continue;
        };
        let defer_head = lt
            .g_defer
            .and_then(|f| mem.read_u64(raw.addr + f.offset as u64).ok())
            .unwrap_or(0);
        let held = finder.held_by(mem, raw, defer_head);
        if !held.is_empty() {
            stats.locks_held += held.len();
            holders.insert(g.goid, held);
        }
    }
    let edges = deadlocks::wait_for_edges(&waits, &holders);
    let leaked_goids: HashSet<i64> = leaked.iter().map(|(g, _, _)| g.goid).collect();
    let found = deadlocks::deadlocked(&edges, &leaked_goids);
    let kind_of: HashMap<u64, &'static str> = snapshot
        .goroutines
        .iter()
        .flat_map(|g| g.blocked_on.iter().map(|b| (b.addr, b.kind.as_str())))
        .collect();
    snapshot
        .goroutines
        .iter()
        .filter_map(|g| {
            let d = found.get(&g.goid)?;
            let why = if d.on_cycle {
                Why::WaitCycle
            } else {
                Why::BehindDeadlock
            };
            let text = deadlocks::describe(g.goid, d, |addr| {
                kind_of.get(&addr).copied().unwrap_or("lock")
            });
            Some((g, why, Some(text)))
        })
        .collect()
}

/// A goroutine that can run (or be woken): its stack and its g's pointer fields are roots.
fn scan_goroutine(
    lt: &LeakTarget<'_, '_>,
    mem: &dyn Memory,
    marker: &mut Marker<'_, '_>,
    raw: Option<&RawG>,
    g: &Goroutine,
    stack_stats: &mut StackScanStats,
) {
    let Some(raw) = raw else {
        return;
    };
    let record = mem.read_vec(raw.addr, lt.g_size).ok();
    let field = |f: Option<Field>| -> u64 {
        match (f, &record) {
            (Some(f), Some(r)) => f.read(r).unwrap_or(0),
            _ => 0,
        }
    };
    if let Some(record) = &record {
        for f in &lt.g_pointer_fields {
            if let Some(word) = f.read(record) {
                marker.mark_word(word);
            }
        }
    }
    // A goroutine in a system call saved where it entered it: from there its frames unwind
    // like a parked one's (the GC does the same). Scanning them whole would read the stale
    // slots a reused stack keeps from the goroutine that ran on it before.
    let syscallsp = field(lt.g_syscallsp);
    let syscallpc = field(lt.g_syscallpc);
    let at_syscall = (g.status == Status::Syscall
        && syscallpc != 0
        && syscallsp > raw.stack_lo
        && syscallsp < raw.stack_hi)
        .then(|| RawG {
            sched_pc: syscallpc,
            sched_sp: syscallsp,
            ..raw.clone()
        });
    let unwind_from = if g.status.is_parked() || g.status == Status::Runnable {
        Some(raw)
    } else {
        at_syscall.as_ref()
    };
    if lt.precise_stacks
        && let Some(unwind_from) = unwind_from
    {
        let mut words = Vec::new();
        let before = stack_stats.fallbacks;
        lt.stacks.live_words(
            mem,
            unwind_from,
            field(lt.g_defer),
            field(lt.g_panic),
            &mut words,
            stack_stats,
        );
        // A stack that could not even be read is scanned conservatively below (it fails
        // the same way, or the goroutine moved and the next scan will tell).
        if stack_stats.fallbacks == before || !words.is_empty() {
            for w in words {
                marker.mark_word(w);
            }
            return;
        }
    }
    // Registers of a running goroutine are invisible and its saved SP is stale: scan the whole
    // stack. A parked (or runnable, preempted) one saved its SP, one in a system call its
    // syscallsp: nothing below those is live (stale frames of earlier calls live there).
    let lo = if g.status.is_parked() || g.status == Status::Runnable {
        raw.sched_sp.clamp(raw.stack_lo, raw.stack_hi)
    } else if g.status == Status::Syscall && syscallsp > raw.stack_lo && syscallsp < raw.stack_hi {
        syscallsp
    } else {
        raw.stack_lo
    };
    marker.scan_range(lo, raw.stack_hi);
}

/// A goroutine's verdict in the report.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub goid: i64,
    /// `leaked`, `deadlocked`, or the goroutine's state: `blocked` (parked on a primitive still reachable),
    /// `waiting`, `running`, `runnable`, `syscall`, ….
    pub verdict: String,
}

/// A group of leaked (or deadlocked) goroutines parked at the same place for the same reason.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub why: Why,
    pub wait_reason: String,
    /// The innermost frame outside the runtime and package sync: where the code blocks.
    pub site: Option<Location>,
    pub count: usize,
    pub goids: Vec<i64>,
    pub objects: Vec<BlockedOn>,
    pub evidence: String,
    /// Longest time any of them has been parked, when the runtime recorded it.
    pub parked_for_ns: Option<u64>,
    pub created_by: Option<Location>,
    /// The stack of the first goroutine of the group.
    pub stack: Vec<Frame>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeakReport {
    pub pid: u32,
    pub go_version: String,
    pub executable: String,
    pub taken_at: String,
    pub interval_ms: u64,
    pub scans: Vec<ScanStats>,
    pub goroutines: usize,
    pub leaked: usize,
    pub deadlocked: usize,
    /// In clusters that meet the suspect rule (not proven; no effect on the exit status).
    pub suspect: usize,
    pub findings: Vec<Finding>,
    pub verdicts: Vec<Verdict>,
    /// With `--freeze`: the one scan ran with the target stopped, for this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze: Option<FreezeStats>,
    /// What this version does not detect: stated, not silently missing.
    pub limitations: Vec<&'static str>,
}

pub const LIMITATIONS: &[&str] = &[
    "deadlocks are found through lock holders known from pending deferred unlocks \
     (`mu.Lock(); defer mu.Unlock()`); a lock released by an explicit Unlock later in the \
     function has no known holder, so its waiters stay `blocked`",
    "a wait that runs through a channel still reachable from a live goroutine (a lock held \
     across a send on a global channel) is not proven stuck: those goroutines stay `blocked`",
    "running goroutines' stacks are scanned whole and conservatively (their registers and \
     live frames are not knowable from outside): a stale pointer there can hide a leak, never \
     invent one",
    "a tiny mutex (8 bytes, in a 16-byte tiny-allocator block) is told apart from a live \
     neighbour only when it is the block's front half (a pointer to the back half cannot reach \
     it in safe Go); in the back half it may be a field of one 16-byte struct with the front, \
     so a live front keeps it reachable, as Go's own detector sees the whole block",
];

/// When a cluster of blocked goroutines becomes `suspect`. Defaults: 100 goroutines parked at
/// one site for 10 minutes. Idle worker pools park dozens of goroutines at one site for as long
/// as the service is quiet, so a smaller count would flag healthy pools; Go records how long a
/// goroutine has been parked only from the first GC after it parked, so a shorter time would
/// mostly read "unknown".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuspectRule {
    pub min_goroutines: usize,
    /// Every member must have been parked at least this long (0: the time may be unknown).
    pub min_parked_ns: u64,
}

impl Default for SuspectRule {
    fn default() -> Self {
        SuspectRule {
            min_goroutines: 100,
            min_parked_ns: 10 * 60 * 1_000_000_000,
        }
    }
}

/// The goroutines of clusters that meet `rule`: parked on a channel or sync primitive, not
/// flagged, `rule.min_goroutines` or more at one (wait reason, site), all parked long enough.
fn suspects(
    goroutines: &[Goroutine],
    flagged: &HashMap<i64, Flag>,
    rule: &SuspectRule,
) -> HashSet<i64> {
    let mut clusters: HashMap<(&str, Option<Location>), Vec<&Goroutine>> = HashMap::new();
    for g in goroutines {
        if flagged.contains_key(&g.goid) || !g.status.is_parked() {
            continue;
        }
        let Some(reason) = g.wait_reason.as_deref().filter(|r| is_candidate_reason(r)) else {
            continue;
        };
        clusters
            .entry((reason, site(&g.stack)))
            .or_default()
            .push(g);
    }
    clusters
        .into_values()
        .filter(|gs| gs.len() >= rule.min_goroutines.max(1))
        .filter(|gs| {
            rule.min_parked_ns == 0
                || gs
                    .iter()
                    .all(|g| g.parked_for_ns.is_some_and(|ns| ns >= rule.min_parked_ns))
        })
        .flatten()
        .map(|g| g.goid)
        .collect()
}

/// Run `scans` scans `interval` apart and report the goroutines every one of them flagged with
/// an unchanged park key.
pub fn detect(
    lt: &LeakTarget<'_, '_>,
    mem: &dyn Memory,
    scans: usize,
    interval: Duration,
    suspect: &SuspectRule,
) -> Result<LeakReport, MemError> {
    let scans = scans.max(2);
    let mut stats = Vec::with_capacity(scans);
    let mut confirmed: Option<HashMap<i64, Flag>> = None;
    let mut last = None;
    for i in 0..scans {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let scan = scan_once(lt, mem)?;
        let flags: HashMap<i64, Flag> = scan.flags.iter().map(|f| (f.goid, f.clone())).collect();
        confirmed = Some(match confirmed {
            None => flags,
            Some(prev) => prev
                .into_iter()
                .filter(|(goid, f)| flags.get(goid).is_some_and(|now| now.agrees_with(f)))
                .collect(),
        });
        stats.push(scan.stats.clone());
        last = Some(scan);
    }
    let scan = last.expect("at least two scans");
    let confirmed = confirmed.unwrap_or_default();
    Ok(report(
        scan.snapshot,
        &confirmed,
        stats,
        interval.as_millis() as u64,
        suspect,
    ))
}

/// The report of one scan taken with the target stopped (`--freeze`): nothing moved while it
/// was read, so every flag stands without a second scan.
pub fn frozen_report(scan: Scan, freeze: FreezeStats, suspect: &SuspectRule) -> LeakReport {
    let confirmed: HashMap<i64, Flag> = scan.flags.iter().map(|f| (f.goid, f.clone())).collect();
    let mut report = report(scan.snapshot, &confirmed, vec![scan.stats], 0, suspect);
    report.freeze = Some(freeze);
    report
}

fn report(
    mut snapshot: Snapshot,
    confirmed: &HashMap<i64, Flag>,
    scans: Vec<ScanStats>,
    interval_ms: u64,
    suspect: &SuspectRule,
) -> LeakReport {
    snapshot.taken_at = snapshot::now_rfc3339();
    let suspected = suspects(&snapshot.goroutines, confirmed, suspect);
    let cluster_flag = |g: &Goroutine| Flag {
        goid: g.goid,
        g_addr: g.g_addr,
        park_key: (0, 0, 0, 0, None),
        why: Why::Cluster,
        detail: None,
    };
    let mut verdicts = Vec::new();
    let mut groups: BTreeMap<(Why, String, Option<Location>), Vec<&Goroutine>> = BTreeMap::new();
    for g in &snapshot.goroutines {
        let cluster = suspected.contains(&g.goid).then(|| cluster_flag(g));
        let verdict = match confirmed.get(&g.goid).or(cluster.as_ref()) {
            Some(flag) => {
                groups
                    .entry((
                        flag.why,
                        g.wait_reason.clone().unwrap_or_default(),
                        site(&g.stack),
                    ))
                    .or_default()
                    .push(g);
                flag.why.verdict().to_string()
            }
            None if g.status.is_parked()
                && g.wait_reason.as_deref().is_some_and(is_candidate_reason) =>
            {
                "blocked".to_string()
            }
            None => g.status.as_str().to_string(),
        };
        verdicts.push(Verdict {
            goid: g.goid,
            verdict,
        });
    }
    let mut findings: Vec<Finding> = groups
        .into_iter()
        .map(|((why, wait_reason, site), gs)| {
            let mut objects: Vec<BlockedOn> = gs
                .iter()
                .flat_map(|g| g.blocked_on.iter().cloned())
                .collect();
            objects.sort_by_key(|b| b.addr);
            objects.dedup();
            let detail = confirmed
                .get(&gs[0].goid)
                .and_then(|f| f.detail.as_deref())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            Finding {
                kind: why.verdict(),
                why,
                wait_reason,
                site,
                count: gs.len(),
                goids: gs.iter().map(|g| g.goid).collect(),
                objects,
                evidence: format!("{}{detail}", why.evidence()),
                parked_for_ns: gs.iter().filter_map(|g| g.parked_for_ns).max(),
                created_by: gs[0].created_by.clone(),
                stack: gs[0].stack.clone(),
            }
        })
        .collect();
    // Proven findings first, then the suspect clusters; most goroutines first within each.
    findings.sort_by(|a, b| {
        (a.why == Why::Cluster)
            .cmp(&(b.why == Why::Cluster))
            .then(b.count.cmp(&a.count))
            .then(a.goids.cmp(&b.goids))
    });
    LeakReport {
        pid: snapshot.pid,
        go_version: snapshot.go_version,
        executable: snapshot.executable,
        taken_at: snapshot.taken_at,
        interval_ms,
        scans,
        goroutines: snapshot.goroutines.len(),
        leaked: confirmed
            .values()
            .filter(|f| f.why.verdict() == "leaked")
            .count(),
        deadlocked: confirmed
            .values()
            .filter(|f| f.why.verdict() == "deadlocked")
            .count(),
        suspect: suspected.len(),
        findings,
        verdicts,
        freeze: None,
        limitations: LIMITATIONS.to_vec(),
    }
}

/// Where a goroutine blocks in its own code: the innermost frame outside the runtime and the
/// sync packages.
pub fn site(stack: &[Frame]) -> Option<Location> {
    let internal = |f: &str| {
        f.starts_with("runtime.") || f.starts_with("sync.") || f.starts_with("internal/sync.")
    };
    stack
        .iter()
        .find(|f| !internal(&f.function))
        .or(stack.last())
        .map(|f| Location {
            function: f.function.clone(),
            file: f.file.clone(),
            line: f.line,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectKind, Op};

    fn g(goid: i64, status: Status, reason: &str, blocked: bool) -> Goroutine {
        Goroutine {
            goid,
            status,
            wait_reason: Some(reason.to_string()),
            parked_for_ns: None,
            start: None,
            created_by: None,
            parent_goid: None,
            stack: Vec::new(),
            blocked_on: if blocked {
                vec![BlockedOn {
                    kind: ObjectKind::Chan,
                    addr: 0xc000010000,
                    op: Op::Send,
                }]
            } else {
                Vec::new()
            },
            g_addr: 0x1000,
            on_cpu: false,
            unstable: false,
            system: false,
            verdict: None,
        }
    }

    #[test]
    fn classifies_goroutines() {
        use Status::*;
        assert_eq!(role(&g(7, Waiting, "chan send", true), 1), Role::Candidate);
        // Go 1.26's own detector moved it to _Gleaked: still ours to prove.
        assert_eq!(role(&g(7, Leaked, "chan send", true), 1), Role::Candidate);
        assert_eq!(role(&g(7, Waiting, "chan send", false), 1), Role::Root);
        assert_eq!(role(&g(7, Waiting, "sleep", false), 1), Role::Root);
        assert_eq!(role(&g(7, Running, "chan send", true), 1), Role::Root);
        assert_eq!(
            role(&g(7, Waiting, "chan receive (nil chan)", false), 1),
            Role::Flagged(Why::NilChannel)
        );
        assert_eq!(
            role(&g(7, Waiting, "select (no cases)", false), 1),
            Role::Flagged(Why::SelectNoCases)
        );
        assert_eq!(
            role(&g(1, Waiting, "select (no cases)", false), 1),
            Role::Root
        );
        let mut unstable = g(7, Waiting, "chan send", true);
        unstable.unstable = true;
        assert_eq!(role(&unstable, 1), Role::Root);
    }

    #[test]
    fn suspect_clusters_need_the_count_and_the_time() {
        let at = |goid: i64, function: &str, parked_s: Option<u64>| {
            let mut g = g(goid, Status::Waiting, "chan receive", true);
            g.stack = vec![Frame {
                function: function.into(),
                file: "w.go".into(),
                line: 9,
                pc: 0,
                inlined: false,
            }];
            g.parked_for_ns = parked_s.map(|s| s * 1_000_000_000);
            g
        };
        let gs = vec![
            at(1, "main.worker", Some(900)),
            at(2, "main.worker", Some(700)),
            at(3, "main.worker", Some(650)),
            at(4, "main.other", Some(900)),
        ];
        let rule = |n: usize, s: u64| SuspectRule {
            min_goroutines: n,
            min_parked_ns: s * 1_000_000_000,
        };
        let none = HashMap::new();
        assert_eq!(
            suspects(&gs, &none, &rule(3, 600)),
            HashSet::from([1, 2, 3])
        );
        // One member parked too briefly, or too few members: no cluster.
        assert!(suspects(&gs, &none, &rule(3, 680)).is_empty());
        assert!(suspects(&gs, &none, &rule(4, 0)).is_empty());
        // Unknown parked time counts only when no minimum time is asked for.
        let mut unknown = gs.clone();
        unknown[0].parked_for_ns = None;
        assert!(suspects(&unknown, &none, &rule(3, 600)).is_empty());
        assert_eq!(suspects(&unknown, &none, &rule(3, 0)).len(), 3);
        // Goroutines already proven leaked are not also suspect.
        let flagged = HashMap::from([(
            1,
            Flag {
                goid: 1,
                g_addr: 0,
                park_key: (0, 0, 0, 0, None),
                why: Why::Unreachable,
                detail: None,
            },
        )]);
        assert!(suspects(&gs, &flagged, &rule(3, 600)).is_empty());
    }

    #[test]
    fn site_skips_runtime_and_sync_frames() {
        let frame = |f: &str| Frame {
            function: f.into(),
            file: "x.go".into(),
            line: 3,
            pc: 0,
            inlined: false,
        };
        let stack = [
            frame("runtime.gopark"),
            frame("sync.(*Mutex).Lock"),
            frame("main.worker"),
            frame("runtime.goexit"),
        ];
        assert_eq!(site(&stack).unwrap().function, "main.worker");
    }
}
