//! Deadlocks: goroutines waiting for locks whose holders can never release them.
//!
//! The wait-for graph links a goroutine parked on a lock to the goroutines it waits for: the
//! holders known from their pending deferred unlocks ([`crate::analysis::holders`]) and, for an
//! RWMutex, the pending writer (which holds the embedded writer mutex and blocks new readers).
//! Every such wait is an AND wait (a Mutex has one holder; a writer needs every reader out; a
//! reader queued behind a writer needs that writer done), so a goroutine can never proceed when
//! it waits for one that never will: a member of a wait cycle, or a goroutine already proven
//! leaked. The deadlocked set is what is left after repeatedly removing waiters all of whose
//! known successors can still proceed.
//!
//! Only lock waits are edges: a goroutine blocked on a channel someone live could still reach
//! (a lock held across a send on a global channel) is not provably stuck, and stays `blocked`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::analysis::holders::{Held, Release};
use crate::model::ObjectKind;

/// How a goroutine waits on a lock, from the object kind and the wait reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWaitKind {
    /// `sync.Mutex.Lock` on a plain Mutex.
    Mutex,
    /// `RWMutex.Lock` still queued on the embedded writer mutex: waits for the current writer.
    RwWriterQueued,
    /// `RWMutex.Lock` holding the writer mutex, waiting for the readers to drain.
    RwWriterDraining,
    /// `RWMutex.RLock` queued behind a pending or active writer.
    RwReader,
}

impl LockWaitKind {
    pub fn of(kind: ObjectKind, wait_reason: &str) -> Option<Self> {
        match (kind, wait_reason) {
            (ObjectKind::Mutex, "sync.Mutex.Lock") => Some(LockWaitKind::Mutex),
            (ObjectKind::RwMutex, "sync.Mutex.Lock") => Some(LockWaitKind::RwWriterQueued),
            (ObjectKind::RwMutex, "sync.RWMutex.Lock") => Some(LockWaitKind::RwWriterDraining),
            (ObjectKind::RwMutex, "sync.RWMutex.RLock") => Some(LockWaitKind::RwReader),
            _ => None,
        }
    }
}

/// A goroutine parked on a lock.
#[derive(Clone, Debug)]
pub struct LockWait {
    pub goid: i64,
    pub addr: u64,
    pub kind: LockWaitKind,
}

/// `from` cannot proceed before `to` releases the lock at `addr`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WaitEdge {
    pub from: i64,
    pub to: i64,
    pub addr: u64,
    /// Why `to` is in the way, in words ("holds it (deferred Unlock in main.f)").
    pub because: String,
}

/// The wait-for edges between lock waiters and the goroutines in their way.
pub fn wait_for_edges(waits: &[LockWait], holders: &BTreeMap<i64, Vec<Held>>) -> Vec<WaitEdge> {
    let mut held: HashMap<u64, Vec<(i64, &Held)>> = HashMap::new();
    for (&goid, locks) in holders {
        for h in locks {
            held.entry(h.addr).or_default().push((goid, h));
        }
    }
    let mut pending_writer: HashMap<u64, Vec<i64>> = HashMap::new();
    for w in waits {
        if w.kind == LockWaitKind::RwWriterDraining {
            pending_writer.entry(w.addr).or_default().push(w.goid);
        }
    }
    let mut edges = BTreeSet::new();
    for w in waits {
        let holding = |release: Release| {
            held.get(&w.addr)
                .into_iter()
                .flatten()
                .filter(move |(_, h)| h.release == release)
        };
        let mut add = |to: i64, because: String| {
            edges.insert(WaitEdge {
                from: w.goid,
                to,
                addr: w.addr,
                because,
            });
        };
        let via_defer =
            |what: &str, h: &Held| format!("{what} (deferred release in {})", h.in_function);
        match w.kind {
            LockWaitKind::Mutex => {
                for (goid, h) in holding(Release::Mutex) {
                    add(*goid, via_defer("holds it", h));
                }
            }
            LockWaitKind::RwWriterQueued | LockWaitKind::RwReader => {
                for (goid, h) in holding(Release::RwWrite) {
                    add(*goid, via_defer("holds it for writing", h));
                }
                for &goid in pending_writer.get(&w.addr).into_iter().flatten() {
                    if goid != w.goid {
                        add(goid, "is the pending writer".to_string());
                    }
                }
            }
            LockWaitKind::RwWriterDraining => {
                for (goid, h) in holding(Release::RwRead) {
                    add(*goid, via_defer("holds it for reading", h));
                }
                for (goid, h) in holding(Release::RwWrite) {
                    add(*goid, via_defer("holds it for writing", h));
                }
            }
        }
    }
    edges.into_iter().collect()
}

/// Why a goroutine is deadlocked: the chain of waits from it to a goroutine that never
/// proceeds, ending in a cycle (the last edge leads back into the chain) or at a goroutine
/// proven leaked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadlock {
    pub chain: Vec<WaitEdge>,
    /// The chain ends in a cycle (else at a leaked goroutine).
    pub cycle: bool,
    /// This goroutine is itself on the cycle.
    pub on_cycle: bool,
}

/// The goroutines that can never proceed: waiters left after removing, again and again, every
/// waiter whose successors can all proceed. `leaked` goroutines never proceed.
pub fn deadlocked(edges: &[WaitEdge], leaked: &HashSet<i64>) -> BTreeMap<i64, Deadlock> {
    let mut successors: BTreeMap<i64, Vec<&WaitEdge>> = BTreeMap::new();
    let mut predecessors: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    for e in edges {
        successors.entry(e.from).or_default().push(e);
        predecessors.entry(e.to).or_default().insert(e.from);
    }
    // A successor that is neither a waiter nor leaked (running, sleeping, on a channel) can
    // proceed; count only the distinct successors that might not.
    let blocking = |to: i64| successors.contains_key(&to) || leaked.contains(&to);
    let mut remaining: HashMap<i64, usize> = successors
        .iter()
        .map(|(&g, out)| {
            let distinct: BTreeSet<i64> =
                out.iter().map(|e| e.to).filter(|&t| blocking(t)).collect();
            (g, distinct.len())
        })
        .collect();
    let mut free: Vec<i64> = remaining
        .iter()
        .filter(|&(g, &n)| n == 0 && !leaked.contains(g))
        .map(|(&g, _)| g)
        .collect();
    let mut proceeds: HashSet<i64> = HashSet::new();
    while let Some(g) = free.pop() {
        if !proceeds.insert(g) {
            continue;
        }
        for &p in predecessors.get(&g).into_iter().flatten() {
            if let Some(n) = remaining.get_mut(&p) {
                *n = n.saturating_sub(1);
                if *n == 0 && !leaked.contains(&p) && !proceeds.contains(&p) {
                    free.push(p);
                }
            }
        }
    }
    let stuck =
        |g: i64| !proceeds.contains(&g) && (successors.contains_key(&g) || leaked.contains(&g));

    let mut out = BTreeMap::new();
    for &g in successors.keys() {
        if proceeds.contains(&g) || leaked.contains(&g) {
            continue;
        }
        // Follow the first stuck successor until a goroutine repeats or a leaked one is hit.
        let mut chain: Vec<WaitEdge> = Vec::new();
        let mut seen: Vec<i64> = vec![g];
        let mut at = g;
        let mut cycle = false;
        while let Some(e) = successors
            .get(&at)
            .and_then(|out| out.iter().find(|e| stuck(e.to)))
        {
            chain.push((*e).clone());
            if seen.contains(&e.to) {
                cycle = true;
                break;
            }
            if leaked.contains(&e.to) {
                break;
            }
            seen.push(e.to);
            at = e.to;
        }
        let on_cycle = cycle && chain.last().is_some_and(|e| e.to == g);
        out.insert(
            g,
            Deadlock {
                chain,
                cycle,
                on_cycle,
            },
        );
    }
    out
}

/// The evidence for one deadlocked goroutine, in words.
pub fn describe(goid: i64, d: &Deadlock, kind_of: impl Fn(u64) -> &'static str) -> String {
    let steps: Vec<String> = d
        .chain
        .iter()
        .map(|e| {
            format!(
                "goroutine {} waits for {} {:#x}, goroutine {} {}",
                e.from,
                kind_of(e.addr),
                e.addr,
                e.to,
                e.because
            )
        })
        .collect();
    let end = match (d.cycle, d.on_cycle, d.chain.last()) {
        (true, true, _) if d.chain.len() == 1 => {
            "so it waits for itself: a one-goroutine wait cycle".to_string()
        }
        (true, true, _) => format!("a wait cycle back to goroutine {goid}"),
        (true, false, Some(e)) => {
            format!("goroutine {} is on a wait cycle: it never proceeds", e.to)
        }
        (_, _, Some(e)) => format!("goroutine {} is leaked: it never proceeds", e.to),
        _ => String::new(),
    };
    format!("{}; {end}", steps.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(addr: u64, release: Release) -> Held {
        Held {
            addr,
            release,
            in_function: "main.f".into(),
        }
    }

    fn wait(goid: i64, addr: u64, kind: LockWaitKind) -> LockWait {
        LockWait { goid, addr, kind }
    }

    const A: u64 = 0xa0;
    const B: u64 = 0xb0;

    #[test]
    fn abba_is_a_two_goroutine_cycle() {
        let waits = [
            wait(1, B, LockWaitKind::Mutex),
            wait(2, A, LockWaitKind::Mutex),
        ];
        let holders = BTreeMap::from([
            (1, vec![held(A, Release::Mutex)]),
            (2, vec![held(B, Release::Mutex)]),
        ]);
        let edges = wait_for_edges(&waits, &holders);
        assert_eq!(edges.len(), 2);
        let d = deadlocked(&edges, &HashSet::new());
        assert_eq!(d.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(d[&1].on_cycle && d[&2].on_cycle);
        let text = describe(1, &d[&1], |_| "mutex");
        assert!(
            text.contains("goroutine 1 waits for mutex 0xb0, goroutine 2 holds it"),
            "{text}"
        );
        assert!(text.ends_with("a wait cycle back to goroutine 1"), "{text}");
    }

    #[test]
    fn self_relock_and_the_goroutines_behind_it() {
        // 1 holds A and locks it again; 3 waits for A; 4 waits for B held by 3.
        let waits = [
            wait(1, A, LockWaitKind::Mutex),
            wait(3, A, LockWaitKind::Mutex),
            wait(4, B, LockWaitKind::Mutex),
        ];
        let holders = BTreeMap::from([
            (1, vec![held(A, Release::Mutex)]),
            (3, vec![held(B, Release::Mutex)]),
        ]);
        let d = deadlocked(&wait_for_edges(&waits, &holders), &HashSet::new());
        assert_eq!(d.keys().copied().collect::<Vec<_>>(), vec![1, 3, 4]);
        assert!(d[&1].on_cycle && d[&1].chain.len() == 1);
        assert!(d[&3].cycle && !d[&3].on_cycle);
        // 4 → 3 → 1, then 1's own edge closes the cycle.
        assert_eq!(d[&4].chain.len(), 3);
        assert!(
            describe(4, &d[&4], |_| "mutex")
                .ends_with("goroutine 1 is on a wait cycle: it never proceeds")
        );
        assert!(describe(1, &d[&1], |_| "mutex").contains("waits for itself"));
    }

    #[test]
    fn reader_writer_reader() {
        // 1 holds a read lock and RLocks again behind writer 2, who waits for readers to drain;
        // 3 RLocks behind writer 2.
        let waits = [
            wait(1, A, LockWaitKind::RwReader),
            wait(2, A, LockWaitKind::RwWriterDraining),
            wait(3, A, LockWaitKind::RwReader),
        ];
        let holders = BTreeMap::from([(1, vec![held(A, Release::RwRead)])]);
        let d = deadlocked(&wait_for_edges(&waits, &holders), &HashSet::new());
        assert_eq!(d.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(d[&1].on_cycle && d[&2].on_cycle && !d[&3].on_cycle);
    }

    #[test]
    fn a_holder_that_can_proceed_frees_everyone() {
        // 2 holds A but is not waiting on a lock (it sleeps, or waits on a reachable channel).
        let waits = [
            wait(1, A, LockWaitKind::Mutex),
            wait(3, A, LockWaitKind::Mutex),
        ];
        let holders = BTreeMap::from([(2, vec![held(A, Release::Mutex)])]);
        let edges = wait_for_edges(&waits, &holders);
        assert_eq!(edges.len(), 2);
        assert!(deadlocked(&edges, &HashSet::new()).is_empty());
        // Unless that holder is proven leaked.
        let d = deadlocked(&edges, &HashSet::from([2]));
        assert_eq!(d.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert!(!d[&1].cycle);
        assert!(
            describe(1, &d[&1], |_| "mutex").ends_with("goroutine 2 is leaked: it never proceeds")
        );
    }

    #[test]
    fn a_chain_into_a_live_holder_is_not_a_deadlock() {
        // 1 waits for A held by 2; 2 waits for B held by 3, which can run: both proceed.
        let waits = [
            wait(1, A, LockWaitKind::Mutex),
            wait(2, B, LockWaitKind::Mutex),
        ];
        let holders = BTreeMap::from([
            (2, vec![held(A, Release::Mutex)]),
            (3, vec![held(B, Release::Mutex)]),
        ]);
        assert!(deadlocked(&wait_for_edges(&waits, &holders), &HashSet::new()).is_empty());
        // A waiter with no known holder is never deadlocked.
        let lone = [wait(1, A, LockWaitKind::Mutex)];
        assert!(deadlocked(&wait_for_edges(&lone, &BTreeMap::new()), &HashSet::new()).is_empty());
    }

    #[test]
    fn read_holders_do_not_block_readers_and_kinds_must_match() {
        // A reader waits; another goroutine holds a read lock (readers share): no edge.
        let waits = [wait(1, A, LockWaitKind::RwReader)];
        let holders = BTreeMap::from([(2, vec![held(A, Release::RwRead)])]);
        assert!(wait_for_edges(&waits, &holders).is_empty());
        // A Mutex waiter and an RWMutex read holder at the same address: no edge.
        let waits = [wait(1, A, LockWaitKind::Mutex)];
        assert!(wait_for_edges(&waits, &holders).is_empty());
        assert_eq!(
            LockWaitKind::of(ObjectKind::RwMutex, "sync.Mutex.Lock"),
            Some(LockWaitKind::RwWriterQueued)
        );
        assert_eq!(LockWaitKind::of(ObjectKind::Chan, "chan send"), None);
    }
}
