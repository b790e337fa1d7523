//! The `runtime.m` records (one per OS thread), found through `allm` and the goroutines on a
//! thread, and the one field of theirs that can point at a user object.

use crate::gobin::offsets::RuntimeOffsets;
use crate::goruntime::goroutines::RawG;
use crate::goruntime::heap::AddrSet;
use crate::goruntime::layout::Field;
use crate::model::Status;
use crate::remote::memory::Memory;

/// Bound on the `allm` list (a torn read could make it cyclic).
const MAX_MS: usize = 100_000;

/// Offsets to find the m records and read their `waitlock`.
///
/// A reachability scan roots an m field by field, not word by word: most of it is the
/// runtime's own state (saved registers, signal masks, profiling buffers, thread-local
/// scratch) where stale words that look like pointers would keep a leaked channel alive. Its
/// pointer fields are g and p records (never scanned), static function values, and `waitlock`:
/// the lock a goroutine is parking on, between gopark and the unlock that follows on the
/// system stack.
#[derive(Clone, Debug)]
pub struct MLayout {
    g_m: u64,
    alllink: u64,
    waitlock: Field,
    /// Size of an m record.
    pub size: u64,
    /// Run-time address of `runtime.allm` (the newest m).
    allm: Option<u64>,
}

impl MLayout {
    /// `allm` is the run-time address of `runtime.allm`, when the binary reveals it.
    pub fn resolve(offsets: &RuntimeOffsets, allm: Option<u64>) -> Option<Self> {
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

    /// Every m record the runtime links: from `allm`, and from the g records of goroutines on
    /// a thread (should `allm` not be found, the newest idle ms may be missed; they are then
    /// scanned as plain heap objects, which can hide a leak but never invent one). Each is
    /// followed along `alllink`, which ends at `m0`.
    pub fn records(&self, mem: &dyn Memory, gs: &[RawG]) -> Vec<u64> {
        let mut starts: Vec<u64> = self
            .allm
            .and_then(|allm| mem.read_u64(allm).ok())
            .into_iter()
            .collect();
        let on_thread: Vec<u64> = gs
            .iter()
            .filter(|g| matches!(g.status, Status::Running | Status::Syscall))
            .map(|g| g.addr + self.g_m)
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
                m = mem.read_u64(m + self.alllink).unwrap_or(0);
            }
        }
        out
    }

    /// The `waitlock` of each m record that could be read: a root word.
    pub fn waitlocks(&self, mem: &dyn Memory, ms: &[u64]) -> Vec<u64> {
        ms.iter()
            .filter_map(|&m| mem.read_u64(m + self.waitlock.offset as u64).ok())
            .collect()
    }
}
