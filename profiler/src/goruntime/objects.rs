//! The objects blocked goroutines wait on: channels (their state and wait queues) and the
//! semaphores behind sync.Mutex, RWMutex, WaitGroup and Cond.

use std::collections::HashMap;

use crate::goruntime::globals::SEMTABLE_SIZE;
use crate::goruntime::goroutines::{RawSudog, read_sudog};
use crate::goruntime::layout::{HchanLayout, SemaRootLayout, SudogLayout};
use crate::model::ChanState;
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
