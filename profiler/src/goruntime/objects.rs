//! The objects blocked goroutines wait on: channels (their state and wait queues) and the
//! semaphores behind sync.Mutex, RWMutex, WaitGroup and Cond.

use std::collections::HashMap;

use crate::goruntime::globals::SEMTABLE_SIZE;
use crate::goruntime::goroutines::{RawSudog, read_sudog};
use crate::goruntime::layout::{HchanLayout, SemaRootLayout, SudogLayout};
use crate::model::{ChanState, ObjectKind, Op};
use crate::remote::memory::Memory;

/// Bounds every queue and treap walk: a torn pointer can make a list cyclic.
const MAX_QUEUE: usize = 1 << 20;

/// A channel as read from memory: its state and the g records waiting in its queues.
#[derive(Clone, Debug, Default)]
pub struct RawChannel {
    pub state: ChanState,
    /// (g address, sudog address) of blocked senders and receivers.
    pub send_waiters: Vec<(u64, u64)>,
    pub recv_waiters: Vec<(u64, u64)>,
}

pub fn read_channel(
    mem: &dyn Memory,
    hchan: &HchanLayout,
    sudog: &SudogLayout,
    addr: u64,
) -> Option<RawChannel> {
    read_channel_with(mem, hchan, sudog, addr, &|_| None)
}

/// [`read_channel`], taking queue entries from `fresh` (sudogs just read in one batch, by
/// address) where it has them instead of reading them one by one: a channel with 100k waiters
/// has a 100k-long queue. Entries it lacks are read from memory.
pub fn read_channel_with(
    mem: &dyn Memory,
    hchan: &HchanLayout,
    sudog: &SudogLayout,
    addr: u64,
    fresh: &dyn Fn(u64) -> Option<RawSudog>,
) -> Option<RawChannel> {
    let record = mem.read_vec(addr, hchan.size).ok()?;
    let state = ChanState {
        cap: hchan.dataqsiz.read(&record)?,
        len: hchan.qcount.read(&record)?,
        closed: hchan.closed.read(&record)? != 0,
        elem_size: hchan.elemsize.read(&record)? as u16,
        elem_type: None,
    };
    if state.len > state.cap {
        return None; // torn
    }
    Some(RawChannel {
        send_waiters: queue(mem, sudog, hchan.sendq_first.read(&record)?, fresh),
        recv_waiters: queue(mem, sudog, hchan.recvq_first.read(&record)?, fresh),
        state,
    })
}

/// A channel wait queue: sudogs linked through `next`.
fn queue(
    mem: &dyn Memory,
    layout: &SudogLayout,
    first: u64,
    fresh: &dyn Fn(u64) -> Option<RawSudog>,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = first;
    while next != 0 && out.len() < MAX_QUEUE {
        let Some(s) = fresh(next).or_else(|| read_sudog(mem, layout, next)) else {
            break;
        };
        out.push((s.g, s.addr));
        next = s.next;
    }
    out
}

/// Which semaphore each waiting goroutine sleeps on, from the runtime's semaphore table:
/// 251 buckets, each a treap of sudogs (one per distinct address, children in prev/next) with
/// further waiters on the same address chained through `waitlink`.
pub fn semtable_waiters(
    mem: &dyn Memory,
    semtable: u64,
    root: &SemaRootLayout,
    sudog: &SudogLayout,
) -> HashMap<u64, u64> {
    let mut g_to_sema = HashMap::new();
    let mut visited = 0usize;
    for bucket in 0..SEMTABLE_SIZE {
        let entry = semtable + bucket * root.stride as u64;
        let Ok(top) = mem.read_u64(entry + root.treap.offset as u64) else {
            continue;
        };
        let mut stack = vec![top];
        while let Some(node) = stack.pop() {
            if node == 0 || visited >= MAX_QUEUE {
                continue;
            }
            visited += 1;
            let Some(s) = read_sudog(mem, sudog, node) else {
                continue;
            };
            record_waiters(mem, sudog, &s, &mut g_to_sema, &mut visited);
            stack.push(s.prev);
            stack.push(s.next);
        }
    }
    g_to_sema
}

fn record_waiters(
    mem: &dyn Memory,
    layout: &SudogLayout,
    node: &RawSudog,
    out: &mut HashMap<u64, u64>,
    visited: &mut usize,
) {
    let sema = node.elem;
    out.insert(node.g, sema);
    let mut next = node.waitlink;
    while next != 0 && *visited < MAX_QUEUE {
        *visited += 1;
        let Some(s) = read_sudog(mem, layout, next) else {
            break;
        };
        out.insert(s.g, sema);
        next = s.waitlink;
    }
}

/// What a sync wait blocks on, from the runtime's wait-reason text (and, where the reason is
/// generic, the call site) and the semaphore address it sleeps on.
///
/// Positions of the semaphore words inside the sync types (unchanged 1.18–1.27; sync.Mutex
/// wraps internal/sync.Mutex at offset 0 since 1.24): Mutex{state int32; sema uint32},
/// RWMutex{w Mutex; writerSem; readerSem; …}, WaitGroup{noCopy; state uint64; sema uint32},
/// Cond{noCopy; L Locker; notify notifyList; …}.
pub fn classify_sync_wait(
    reason: &str,
    stack_functions: &[&str],
    sema: u64,
) -> Option<(ObjectKind, u64, Op)> {
    let in_stack = |name: &str| stack_functions.contains(&name);
    match reason {
        // RWMutex.Lock first takes its embedded writer Mutex, which sits at the RWMutex's
        // address: the call site tells the two apart.
        "sync.Mutex.Lock" if in_stack("sync.(*RWMutex).Lock") => {
            Some((ObjectKind::RwMutex, sema.checked_sub(4)?, Op::Lock))
        }
        "sync.Mutex.Lock" => Some((ObjectKind::Mutex, sema.checked_sub(4)?, Op::Lock)),
        "sync.RWMutex.RLock" => Some((ObjectKind::RwMutex, sema.checked_sub(12)?, Op::RLock)),
        "sync.RWMutex.Lock" => Some((ObjectKind::RwMutex, sema.checked_sub(8)?, Op::Lock)),
        "sync.WaitGroup.Wait" => Some((ObjectKind::WaitGroup, sema.checked_sub(8)?, Op::Wait)),
        "sync.Cond.Wait" => Some((ObjectKind::Cond, sema.checked_sub(16)?, Op::Wait)),
        "semacquire" if in_stack("sync.(*WaitGroup).Wait") => {
            Some((ObjectKind::WaitGroup, sema.checked_sub(8)?, Op::Wait))
        }
        "semacquire" => Some((ObjectKind::Sema, sema, Op::Acquire)),
        _ => None,
    }
}

/// Reasons whose object is a channel (or several, for select).
pub fn channel_op(reason: &str) -> Option<Op> {
    match reason {
        "chan send" => Some(Op::Send),
        "chan receive" => Some(Op::Recv),
        "select" => Some(Op::Select),
        _ => None,
    }
}

pub fn is_sync_reason(reason: &str) -> bool {
    matches!(
        reason,
        "sync.Mutex.Lock"
            | "sync.RWMutex.RLock"
            | "sync.RWMutex.Lock"
            | "sync.WaitGroup.Wait"
            | "sync.Cond.Wait"
            | "semacquire"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_waits_map_semaphores_to_their_objects() {
        assert_eq!(
            classify_sync_wait("sync.Mutex.Lock", &[], 0xc000010004),
            Some((ObjectKind::Mutex, 0xc000010000, Op::Lock))
        );
        assert_eq!(
            classify_sync_wait("sync.RWMutex.RLock", &[], 0xc00001000c),
            Some((ObjectKind::RwMutex, 0xc000010000, Op::RLock))
        );
        assert_eq!(
            classify_sync_wait(
                "semacquire",
                &["runtime.semacquire1", "sync.(*WaitGroup).Wait"],
                0x1008
            ),
            Some((ObjectKind::WaitGroup, 0x1000, Op::Wait))
        );
        assert_eq!(
            classify_sync_wait("semacquire", &["main.f"], 0x1008),
            Some((ObjectKind::Sema, 0x1008, Op::Acquire))
        );
        assert_eq!(classify_sync_wait("chan send", &[], 0x1008), None);
        assert_eq!(classify_sync_wait("sync.Mutex.Lock", &[], 2), None);
    }
}
