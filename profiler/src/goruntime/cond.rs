//! Naming the `sync.Cond` a goroutine waits on, where its g record does not say.

use std::collections::HashMap;

use crate::goruntime::goroutines::{self, RawG, read_sudog};
use crate::goruntime::snapshot::Target;
use crate::goruntime::stackscan::StackScanner;
use crate::model::{BlockedOn, ObjectKind, Op, Snapshot};
use crate::remote::memory::Memory;

/// `Cond{noCopy; L Locker; notify notifyList; …}`: the notify list sits after the Locker
/// interface (unchanged since Go 1.0).
const COND_NOTIFY_OFFSET: u64 = 16;

/// Before Go 1.26 a goroutine in `sync.Cond.Wait` does not link its sudog from its g, so the
/// snapshot cannot name the Cond. Its `sync.(*Cond).Wait` frame keeps the receiver live (it
/// relocks `c.L` afterwards): the candidate whose notify list holds this goroutine's sudog is
/// the Cond it waits on. Adds it to the goroutine's `blocked_on`.
pub fn name_cond_waits(
    target: &Target<'_>,
    stacks: &StackScanner<'_, '_>,
    mem: &dyn Memory,
    snapshot: &mut Snapshot,
    raw_of: &HashMap<u64, &RawG>,
) {
    let Some(head) = target.binary.offsets.get("notifyList.head") else {
        return;
    };
    let sudog = &target.layout.sudog;
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
        let words = stacks.live_words_of(mem, raw, "sync.(*Cond).Wait");
        if let Some(&cond) = words.iter().find(|&&w| w != 0 && waits_on(w)) {
            g.blocked_on.push(BlockedOn {
                kind: ObjectKind::Cond,
                addr: cond,
                op: Op::Wait,
            });
        }
    }
}
