//! One scan of the leak proof: read the goroutines, sort them into roots and candidates, mark
//! the heap from the runtime's roots and the roots' stacks, wake candidates to a fixpoint, and
//! flag what is left (if it held still while we looked).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::mark::{MarkStats, Marker};
use super::report::Why;
use crate::analysis::deadlocks::{self, LockWait, LockWaitKind};
use crate::analysis::holders::HolderFinder;
use crate::goruntime::cond;
use crate::goruntime::goroutines::{self, RawG};
use crate::goruntime::roots::{GoroutineRoots, RootFinder};
use crate::goruntime::snapshot;
use crate::goruntime::stackscan::StackScanStats;
use crate::model::{Goroutine, ObjectKind, Snapshot};
use crate::remote::memory::{MemError, Memory};

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
    pub(super) fn agrees_with(&self, other: &Flag) -> bool {
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
pub(super) enum Role {
    Root,
    Candidate,
    Flagged(Why),
}

pub(super) fn role(g: &Goroutine, main_goid: i64) -> Role {
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

/// Wait reasons of a goroutine parked on a channel or a sync primitive: what reachability can
/// prove leaked.
pub(super) fn is_candidate_reason(reason: &str) -> bool {
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

/// One scan: a snapshot and the goroutines reachability (or the wait itself) proves leaked.
pub fn scan_once(roots: &RootFinder<'_, '_>, mem: &dyn Memory) -> Result<Scan, MemError> {
    scan_once_with_roots(roots, mem, &[])
}

/// [`scan_once`] with extra root words: the registers of the target's threads, when it is
/// frozen (a running goroutine's live pointers may be only there).
pub fn scan_once_with_roots(
    finder: &RootFinder<'_, '_>,
    mem: &dyn Memory,
    registers: &[u64],
) -> Result<Scan, MemError> {
    let started = Instant::now();
    let target = finder.target;
    let g_layout = &target.layout.g;
    let g_addrs =
        goroutines::read_pointer_slice(mem, target.globals.allgs.wrapping_add(target.load_bias))?;
    let (raw, unreadable) = goroutines::read_gs(mem, g_layout, &g_addrs);
    let mut snapshot = snapshot::read(target, mem, snapshot::monotonic_ns())?;
    let raw_of: HashMap<u64, &RawG> = raw.iter().map(|g| (g.addr, g)).collect();
    cond::name_cond_waits(target, &finder.stacks, mem, &mut snapshot, &raw_of);

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

    let Some(mut heap) = finder.heap(mem) else {
        return Err(MemError::Unmapped {
            addr: finder.mheap,
            len: 8,
        });
    };
    let runtime = finder.runtime_roots(mem, &mut heap, &g_addrs, &raw);
    stats.m_records = runtime.m_records;
    stats.finalizers = runtime.finalizers.len();
    let mut marker = Marker::new(mem, &mut heap, runtime.opaque);
    if std::env::var_os("PARKSCOPE_LEAKS_DEBUG").is_some() {
        marker.record_origins();
    }
    for range in &runtime.globals {
        marker.scan_globals(range.start, range.end, &runtime.blank);
    }
    for &(root, word) in &runtime.words {
        marker.root = root;
        marker.mark_word(word);
    }
    marker.root = "thread registers";
    for &word in registers {
        marker.mark_word(word);
    }
    marker.root = "finalizer";
    for f in &runtime.finalizers {
        marker.mark_word(f.closure);
        marker.scan_object_contents(f.object);
    }
    let mut stack_stats = StackScanStats::default();
    for g in &roots {
        marker.root = "goroutine";
        marker.root_id = g.goid;
        scan_goroutine(
            finder,
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
                finder,
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
    let deadlocked = find_deadlocks(finder, mem, &snapshot, &raw_of, &leaked, &mut stats);

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
    finder: &RootFinder<'_, '_>,
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
    let holder_finder = HolderFinder::new(
        &finder.target.binary,
        finder.target.load_bias,
        &finder.stacks,
    );
    let mut holders = BTreeMap::new();
    for g in &snapshot.goroutines {
        if !g.status.is_parked() || g.unstable {
            continue;
        }
        let Some(raw) = raw_of.get(&g.g_addr) else {
            continue;
        };
        let defer_head = finder.defer_head(mem, raw.addr);
        let held = holder_finder.held_by(mem, raw, defer_head);
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
    finder: &RootFinder<'_, '_>,
    mem: &dyn Memory,
    marker: &mut Marker<'_, '_>,
    raw: Option<&RawG>,
    g: &Goroutine,
    stack_stats: &mut StackScanStats,
) {
    let Some(raw) = raw else {
        return;
    };
    let GoroutineRoots { words, ranges } = finder.goroutine_roots(mem, raw, g.status, stack_stats);
    for w in words {
        marker.mark_word(w);
    }
    for range in ranges {
        marker.scan_range(range.start, range.end);
    }
}
