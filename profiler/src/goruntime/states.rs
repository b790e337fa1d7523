//! Goroutines by state, cheaply: one read of `runtime.allgs` and one batched read of the g
//! records (status, wait reason, start PC), no stacks, no sudogs, no objects. `top` calls it on
//! every refresh; a full snapshot reads an order of magnitude more memory.
//!
//! The labels are the ones Go's goroutine dump prints in its headers: the wait reason of a
//! parked goroutine ("chan receive", "sync.Mutex.Lock", … with " (leaked)" for a goroutine the
//! runtime's leak detector marked), else the status ("running", "runnable", "syscall"). Like the
//! dump, runtime-internal goroutines (GC workers, the sweeper, …) are counted apart.

use std::collections::BTreeMap;

use crate::goruntime::goroutines::{self, AddrMap};
use crate::goruntime::snapshot::Target;
use crate::goruntime::stack;
use crate::model::{self, Status};
use crate::remote::memory::{MemError, Memory};

/// One reading of the goroutine table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Label → goroutines in that state (user goroutines only, as in Go's dump).
    pub states: BTreeMap<String, u64>,
    /// User goroutines (the sum of `states`).
    pub total: u64,
    /// Runtime-internal goroutines, not in `states`.
    pub system: u64,
    /// Records that could not be read or decoded (torn by a concurrent change): not counted.
    pub unreadable: u64,
}

impl StateCounts {
    /// The states, largest first (ties by label).
    pub fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.states.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

/// Counts goroutines by state. `system_by_startpc` caches, per start PC, whether a goroutine
/// started there is runtime-internal (so a refresh symbolizes only start PCs it has not seen).
pub fn count(
    target: &Target<'_>,
    mem: &dyn Memory,
    system_by_startpc: &mut AddrMap<u64, bool>,
) -> Result<StateCounts, MemError> {
    let allgs = target.globals.allgs.wrapping_add(target.load_bias);
    let addrs = goroutines::read_pointer_slice(mem, allgs)?;
    let (gs, bad) = goroutines::read_gs(mem, &target.layout.g, &addrs);
    let reasons = target.binary.wait_reasons.as_ref();
    let mut out = StateCounts {
        unreadable: bad.len() as u64,
        ..StateCounts::default()
    };
    for g in gs.iter().filter(|g| g.status != Status::Dead) {
        let system = *system_by_startpc.entry(g.startpc).or_insert_with(|| {
            let start = stack::location(&target.binary.pclntab, target.load_bias, g.startpc);
            model::is_system_start(start.as_ref().map(|l| l.function.as_str()))
        });
        if system {
            out.system += 1;
            continue;
        }
        out.total += 1;
        let label = match g.status {
            Status::Waiting | Status::Leaked => {
                let reason = reasons
                    .and_then(|w| w.name(g.wait_reason))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("waitreason {}", g.wait_reason));
                if g.status == Status::Leaked {
                    format!("{reason} (leaked)")
                } else {
                    reason
                }
            }
            other => other.as_str().to_string(),
        };
        *out.states.entry(label).or_default() += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_is_largest_first_then_by_label() {
        let mut c = StateCounts::default();
        for (s, n) in [
            ("select", 3),
            ("chan receive", 6),
            ("syscall", 1),
            ("sleep", 1),
        ] {
            c.states.insert(s.into(), n);
        }
        assert_eq!(
            c.sorted(),
            vec![
                ("chan receive", 6),
                ("select", 3),
                ("sleep", 1),
                ("syscall", 1)
            ]
        );
    }
}
