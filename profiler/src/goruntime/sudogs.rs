//! Every sudog the runtime links: the runtime's back-links from goroutines to what they wait
//! on, which a reachability scan must never follow.

use std::collections::HashSet;

use crate::goruntime::globals::SEMTABLE_SIZE;
use crate::goruntime::goroutines::{self, RawG, read_sudog};
use crate::goruntime::snapshot::Target;
use crate::model::Status;
use crate::remote::memory::Memory;

/// The sudogs of every goroutine's `g.waiting` chain and of the semaphore table's treaps.
pub fn linked_sudogs(target: &Target<'_>, mem: &dyn Memory, gs: &[RawG]) -> HashSet<u64> {
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
