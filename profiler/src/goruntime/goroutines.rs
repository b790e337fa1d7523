//! Reading the goroutine table (`runtime.allgs`) of a running process, record by record.
//!
//! The target keeps running: a `g` can change between our reads. Every record is validated, and
//! a goroutine whose park key (status, sched.sp, waiting, wait reason) changed between the first
//! read and a confirming re-read is retried, then dropped — never reported half-read.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::goruntime::layout::{GLayout, SudogLayout};
use crate::model::Status;
use crate::remote::memory::{self, MemError, Memory};

/// Far above real programs (millions of goroutines are rare) and bounds the allgs read.
pub const MAX_GOROUTINES: u64 = 4_000_000;
/// A select has one sudog per case; Go caps select cases at 65536.
pub const MAX_SUDOG_CHAIN: usize = 65_536;
const READ_ATTEMPTS: usize = 3;

/// Hasher for the addresses and PCs the snapshot keys its maps by: a multiply and a fold. They
/// come from the target, but a slow map only slows our own snapshot (SipHash's resistance to
/// chosen keys buys nothing here and costs a lot at 100k goroutines).
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A HashMap keyed by addresses (or PCs), with [`AddrHasher`].
pub type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// One `runtime.g` as read from memory, before symbolization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawG {
    pub addr: u64,
    pub goid: i64,
    pub status: Status,
    pub raw_status: u32,
    pub wait_reason: u8,
    pub waitsince: i64,
    pub stack_lo: u64,
    pub stack_hi: u64,
    pub sched_sp: u64,
    pub sched_pc: u64,
    pub sched_bp: u64,
    pub waiting: u64,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: Option<i64>,
    pub tracking_seq: Option<u64>,
}

impl RawG {
    /// What must not change while we read everything else about a parked goroutine.
    pub fn park_key(&self) -> (u32, u8, u64, u64, Option<u64>) {
        (
            self.raw_status & !0x1000,
            self.wait_reason,
            self.sched_sp,
            self.waiting,
            self.tracking_seq,
        )
    }
}

/// Decode one g record; None when it is not plausible (torn, or not a g).
pub fn decode_g(layout: &GLayout, addr: u64, record: &[u8]) -> Option<RawG> {
    let raw_status = layout.status.read(record)? as u32;
    let g = RawG {
        addr,
        goid: layout.goid.read(record)? as i64,
        status: Status::from_raw(raw_status),
        raw_status,
        wait_reason: layout.waitreason.read(record)? as u8,
        waitsince: layout.waitsince.and_then(|f| f.read(record)).unwrap_or(0) as i64,
        stack_lo: layout.stack_lo.read(record)?,
        stack_hi: layout.stack_hi.read(record)?,
        sched_sp: layout.sched_sp.read(record)?,
        sched_pc: layout.sched_pc.read(record)?,
        sched_bp: layout.sched_bp.read(record)?,
        waiting: layout.waiting.read(record)?,
        gopc: layout.gopc.read(record)?,
        startpc: layout.startpc.read(record)?,
        parent_goid: layout
            .parent_goid
            .and_then(|f| f.read(record))
            .map(|v| v as i64),
        tracking_seq: layout.tracking_seq.and_then(|f| f.read(record)),
    };
    plausible(&g).then_some(g)
}

fn plausible(g: &RawG) -> bool {
    if g.status == Status::Unknown || g.goid < 0 {
        return false;
    }
    if g.status == Status::Dead {
        return true;
    }
    // A live goroutine has a stack, and a parked one saved an SP inside it.
    if g.stack_lo == 0 || g.stack_hi <= g.stack_lo || g.stack_hi - g.stack_lo > (1 << 30) {
        return false;
    }
    if g.status.is_parked() && !(g.stack_lo..=g.stack_hi).contains(&g.sched_sp) {
        return false;
    }
    true
}

/// The non-nil pointers of a `[]*T` slice whose header is at `header_addr`: runtime.allgs
/// (every g ever created; g's are never freed), allp, mheap_.allspans. A header torn by a
/// concurrent append, or an array freed under us after one, is read again.
pub fn read_pointer_slice(mem: &dyn Memory, header_addr: u64) -> Result<Vec<u64>, MemError> {
    for _ in 0..READ_ATTEMPTS {
        let ptr = mem.read_u64(header_addr)?;
        let len = mem.read_u64(header_addr + 8)?;
        let cap = mem.read_u64(header_addr + 16)?;
        if ptr == 0 || len == 0 || len > cap || len > MAX_GOROUTINES {
            continue;
        }
        let bytes = match mem.read_vec(ptr, (len * 8) as usize) {
            Ok(bytes) => bytes,
            // An append grew the array and the old one was freed under us: read again.
            Err(MemError::Unmapped { .. }) => continue,
            Err(e) => return Err(e),
        };
        return Ok(bytes
            .as_chunks::<8>()
            .0
            .iter()
            .map(|c| u64::from_le_bytes(*c))
            .filter(|&p| p != 0)
            .collect());
    }
    Err(MemError::Unmapped {
        addr: header_addr,
        len: 24,
    })
}

/// Read and decode every g record; records that fail to decode are returned as addresses.
pub fn read_gs(mem: &dyn Memory, layout: &GLayout, addrs: &[u64]) -> (Vec<RawG>, Vec<u64>) {
    let mut good = Vec::with_capacity(addrs.len());
    let mut bad = Vec::new();
    for_each_record(mem, decoded_len(layout), addrs, |addr, record| match record
        .and_then(|r| decode_g(layout, addr, r))
    {
        Some(g) => good.push(g),
        None => bad.push(addr),
    });
    (good, bad)
}

/// The bytes of a g record [`decode_g`] looks at: from its start to the end of the last field
/// it decodes (about two thirds of the record).
fn decoded_len(layout: &GLayout) -> usize {
    [
        Some(layout.stack_lo),
        Some(layout.stack_hi),
        Some(layout.sched_sp),
        Some(layout.sched_pc),
        Some(layout.sched_bp),
        Some(layout.status),
        Some(layout.goid),
        layout.waitsince,
        Some(layout.waitreason),
        Some(layout.waiting),
        Some(layout.gopc),
        Some(layout.startpc),
        layout.parent_goid,
        layout.tracking_seq,
    ]
    .into_iter()
    .flatten()
    .map(|f| f.offset + f.size)
    .max()
    .unwrap_or(0)
    .min(layout.size)
}

pub fn reread_g(mem: &dyn Memory, layout: &GLayout, addr: u64) -> Option<RawG> {
    let record = mem.read_vec(addr, layout.size).ok()?;
    decode_g(layout, addr, &record)
}

/// [`reread_g`] for many records at once (batched reads); None where a record is unreadable or
/// not plausible.
pub fn reread_gs(mem: &dyn Memory, layout: &GLayout, addrs: &[u64]) -> Vec<Option<RawG>> {
    let mut out = Vec::with_capacity(addrs.len());
    for_each_record(mem, decoded_len(layout), addrs, |addr, record| {
        out.push(record.and_then(|r| decode_g(layout, addr, r)));
    });
    out
}

/// [`reread_gs`], reading again (up to `attempts` reads in all) the records that came out
/// unreadable or torn. A busy goroutine's record is copied while it changes: a parked status
/// with the SP of its running self (which gogo zeroes) is not a goroutine we may drop, only one
/// to read again. allgs never holds anything but g records, so a record that stays implausible
/// is one that is not a goroutine yet (a `_Gidle` g without a stack).
pub fn read_gs_settled(
    mem: &dyn Memory,
    layout: &GLayout,
    addrs: &[u64],
    attempts: usize,
) -> Vec<Option<RawG>> {
    let mut gs = reread_gs(mem, layout, addrs);
    for _ in 1..attempts {
        let torn: Vec<usize> = (0..gs.len()).filter(|&i| gs[i].is_none()).collect();
        if torn.is_empty() {
            break;
        }
        let again: Vec<u64> = torn.iter().map(|&i| addrs[i]).collect();
        for (i, g) in torn.into_iter().zip(reread_gs(mem, layout, &again)) {
            gs[i] = g;
        }
    }
    gs
}

/// Records per batch: bounds the buffer (g records are ~400 bytes).
const RECORD_BATCH: usize = 8192;

/// Read a `size`-byte record at each address with batched reads, calling `f` in order with the
/// record, or None where the read failed.
pub fn for_each_record(
    mem: &dyn Memory,
    size: usize,
    addrs: &[u64],
    mut f: impl FnMut(u64, Option<&[u8]>),
) {
    if size == 0 {
        addrs.iter().for_each(|&a| f(a, None));
        return;
    }
    let mut buffer = memory::scratch_buffer(size * addrs.len().min(RECORD_BATCH));
    for chunk in addrs.chunks(RECORD_BATCH) {
        let buffer = &mut buffer[..size * chunk.len()];
        let mut requests: Vec<(u64, &mut [u8])> = chunk
            .iter()
            .copied()
            .zip(buffer.chunks_exact_mut(size))
            .collect();
        let results = mem.read_many(&mut requests);
        drop(requests);
        for ((&addr, record), result) in chunk.iter().zip(buffer.chunks_exact(size)).zip(results) {
            f(addr, result.is_ok().then_some(record));
        }
    }
    memory::give_back(buffer);
}

/// One sudog of a `g.waiting` chain or a channel queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSudog {
    pub addr: u64,
    pub g: u64,
    pub next: u64,
    pub prev: u64,
    pub elem: u64,
    pub c: u64,
    pub waitlink: u64,
    pub is_select: bool,
}

pub fn read_sudog(mem: &dyn Memory, layout: &SudogLayout, addr: u64) -> Option<RawSudog> {
    let record = mem.read_vec(addr, layout.size).ok()?;
    decode_sudog(layout, addr, &record)
}

pub fn decode_sudog(layout: &SudogLayout, addr: u64, record: &[u8]) -> Option<RawSudog> {
    Some(RawSudog {
        addr,
        g: layout.g.read(record)?,
        next: layout.next.read(record)?,
        prev: layout.prev.read(record)?,
        elem: layout.elem.read(record)?,
        c: layout.c.read(record)?,
        waitlink: layout.waitlink.read(record)?,
        is_select: layout.is_select.read(record)? & 0xff != 0,
    })
}

/// [`read_sudog`] for many addresses (batched reads).
pub fn read_sudogs(mem: &dyn Memory, layout: &SudogLayout, addrs: &[u64]) -> Vec<Option<RawSudog>> {
    let mut out = Vec::with_capacity(addrs.len());
    for_each_record(mem, layout.size, addrs, |addr, record| {
        out.push(record.and_then(|r| decode_sudog(layout, addr, r)));
    });
    out
}

/// Follow `g.waiting` → sudog → `waitlink` (one sudog per select case, or one for a plain
/// channel operation). Bounded; stops at a sudog that does not belong to `g`.
pub fn waiting_chain(mem: &dyn Memory, layout: &SudogLayout, g: &RawG) -> Vec<RawSudog> {
    let mut chain = Vec::new();
    let mut next = g.waiting;
    while next != 0 && chain.len() < MAX_SUDOG_CHAIN {
        let Some(sudog) = read_sudog(mem, layout, next) else {
            break;
        };
        if sudog.g != g.addr {
            break;
        }
        next = sudog.waitlink;
        chain.push(sudog);
    }
    chain
}

/// [`waiting_chain`] of many goroutines at once: the chains are followed in rounds, one batched
/// read per round for every chain that goes on (a select with k cases takes k rounds).
pub fn waiting_chains(mem: &dyn Memory, layout: &SudogLayout, gs: &[&RawG]) -> Vec<Vec<RawSudog>> {
    let (sudogs, chains) = waiting_chains_flat(mem, layout, gs);
    chains.into_iter().map(|c| sudogs[c].to_vec()).collect()
}

/// [`waiting_chains`] in one vector (no allocation per goroutine): goroutine `i`'s chain is
/// `sudogs[chains[i]]`.
pub fn waiting_chains_flat(
    mem: &dyn Memory,
    layout: &SudogLayout,
    gs: &[&RawG],
) -> (Vec<RawSudog>, Vec<std::ops::Range<usize>>) {
    // Every sudog found, with its goroutine, in the order found (round by round).
    let mut found: Vec<(usize, RawSudog)> = Vec::new();
    let mut lengths = vec![0usize; gs.len()];
    // (index into gs, next sudog address)
    let mut frontier: Vec<(usize, u64)> = gs
        .iter()
        .enumerate()
        .filter(|(_, g)| g.waiting != 0)
        .map(|(i, g)| (i, g.waiting))
        .collect();
    for _ in 0..MAX_SUDOG_CHAIN {
        if frontier.is_empty() {
            break;
        }
        let addrs: Vec<u64> = frontier.iter().map(|&(_, a)| a).collect();
        let sudogs = read_sudogs(mem, layout, &addrs);
        let mut next = Vec::new();
        for ((i, _), sudog) in frontier.into_iter().zip(sudogs) {
            // Stops at an unreadable sudog or one that does not belong to the goroutine.
            let Some(sudog) = sudog.filter(|s| s.g == gs[i].addr) else {
                continue;
            };
            found.push((i, sudog));
            lengths[i] += 1;
            if sudog.waitlink != 0 && lengths[i] < MAX_SUDOG_CHAIN {
                next.push((i, sudog.waitlink));
            }
        }
        frontier = next;
    }
    // Each goroutine's sudogs together, in chain order (the order they were found in).
    let mut chains = Vec::with_capacity(gs.len());
    let mut start = 0;
    for len in &lengths {
        chains.push(start..start + len);
        start += len;
    }
    let mut next_slot: Vec<usize> = chains.iter().map(|c| c.start).collect();
    let mut sudogs: Vec<RawSudog> = found.iter().map(|&(_, s)| s).collect();
    for (i, sudog) in found {
        sudogs[next_slot[i]] = sudog;
        next_slot[i] += 1;
    }
    (sudogs, chains)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goruntime::layout::Field;
    use crate::remote::memory::RecordedMemory;

    fn f(offset: usize, size: usize) -> Field {
        Field { offset, size }
    }

    fn layout() -> GLayout {
        GLayout {
            size: 64,
            stack_lo: f(0, 8),
            stack_hi: f(8, 8),
            sched_sp: f(16, 8),
            sched_pc: f(24, 8),
            sched_bp: f(32, 8),
            status: f(40, 4),
            waitreason: f(44, 1),
            goid: f(48, 8),
            waiting: f(56, 8),
            waitsince: None,
            gopc: f(24, 8),
            startpc: f(24, 8),
            parent_goid: None,
            tracking_seq: None,
        }
    }

    fn record(lo: u64, hi: u64, sp: u64, status: u32, goid: u64) -> Vec<u8> {
        let mut r = vec![0u8; 64];
        r[0..8].copy_from_slice(&lo.to_le_bytes());
        r[8..16].copy_from_slice(&hi.to_le_bytes());
        r[16..24].copy_from_slice(&sp.to_le_bytes());
        r[40..44].copy_from_slice(&status.to_le_bytes());
        r[44] = 14;
        r[48..56].copy_from_slice(&goid.to_le_bytes());
        r
    }

    /// Memory whose record at 0x1000 reads torn the first `torn` times.
    struct Settling {
        torn: std::cell::Cell<usize>,
    }

    impl Memory for Settling {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
            let record = if self.torn.get() > 0 {
                self.torn.set(self.torn.get() - 1);
                record(0x8000, 0x9000, 0, 4, 7) // parked, with the running SP (0)
            } else {
                record(0x8000, 0x9000, 0x8f00, 4, 7)
            };
            let at = (addr - 0x1000) as usize;
            let n = buf.len().min(record.len().saturating_sub(at));
            buf[..n].copy_from_slice(&record[at..at + n]);
            buf[n..].fill(0);
            Ok(())
        }
    }

    #[test]
    fn torn_records_are_read_again_not_dropped() {
        let l = layout();
        let settles = Settling {
            torn: std::cell::Cell::new(2),
        };
        let gs = read_gs_settled(&settles, &l, &[0x1000], 5);
        assert_eq!(gs[0].as_ref().map(|g| g.goid), Some(7));
        let never = Settling {
            torn: std::cell::Cell::new(usize::MAX),
        };
        assert!(read_gs_settled(&never, &l, &[0x1000], 5)[0].is_none());
    }

    #[test]
    fn decodes_a_parked_g_and_rejects_torn_ones() {
        let l = layout();
        let g = decode_g(&l, 0x1000, &record(0x8000, 0x9000, 0x8f00, 0x1004, 7)).unwrap();
        assert_eq!((g.goid, g.status, g.wait_reason), (7, Status::Waiting, 14));
        // SP outside the stack: a torn read of a goroutine that moved its stack.
        assert!(decode_g(&l, 0x1000, &record(0x8000, 0x9000, 0x100, 4, 7)).is_none());
        // Garbage status.
        assert!(decode_g(&l, 0x1000, &record(0x8000, 0x9000, 0x8f00, 77, 7)).is_none());
        // Dead g's need no stack.
        assert!(decode_g(&l, 0x1000, &record(0, 0, 0, 6, 0)).is_some());
        // A short record never panics.
        assert!(decode_g(&l, 0x1000, &[0u8; 10]).is_none());
    }

    #[test]
    fn reads_the_allgs_slice() {
        let mut mem = RecordedMemory::new();
        mem.write_u64(0x500, 0x9000)
            .write_u64(0x508, 2)
            .write_u64(0x510, 4);
        mem.add(
            0x9000,
            [0xa000u64.to_le_bytes(), 0xb000u64.to_le_bytes()].concat(),
        );
        assert_eq!(
            read_pointer_slice(&mem, 0x500).unwrap(),
            vec![0xa000, 0xb000]
        );
        // len > cap is a torn header: never trusted.
        let mut torn = RecordedMemory::new();
        torn.write_u64(0x500, 0x9000)
            .write_u64(0x508, 9)
            .write_u64(0x510, 4);
        assert!(read_pointer_slice(&torn, 0x500).is_err());
    }

    #[test]
    fn batched_waiting_chains_match_one_by_one() {
        let layout = SudogLayout {
            size: 64,
            g: f(0, 8),
            next: f(8, 8),
            prev: f(16, 8),
            elem: f(24, 8),
            c: f(32, 8),
            waitlink: f(40, 8),
            is_select: f(48, 1),
        };
        let sudog = |g: u64, c: u64, waitlink: u64| {
            let mut r = vec![0u8; 64];
            r[0..8].copy_from_slice(&g.to_le_bytes());
            r[32..40].copy_from_slice(&c.to_le_bytes());
            r[40..48].copy_from_slice(&waitlink.to_le_bytes());
            r
        };
        let mut mem = RecordedMemory::new();
        // g 0xa000: a three-case select; g 0xb000: one send; g 0xc000: its chain's second sudog
        // belongs to someone else (torn), so the chain stops there.
        mem.add(0x1000, sudog(0xa000, 0x11, 0x1100))
            .add(0x1100, sudog(0xa000, 0x12, 0x1200))
            .add(0x1200, sudog(0xa000, 0x13, 0))
            .add(0x2000, sudog(0xb000, 0x21, 0))
            .add(0x3000, sudog(0xc000, 0x31, 0x3100))
            .add(0x3100, sudog(0xdead, 0x32, 0));
        let g = |addr: u64, waiting: u64| RawG {
            addr,
            goid: 1,
            status: Status::Waiting,
            raw_status: 4,
            wait_reason: 0,
            waitsince: 0,
            stack_lo: 0,
            stack_hi: 0,
            sched_sp: 0,
            sched_pc: 0,
            sched_bp: 0,
            waiting,
            gopc: 0,
            startpc: 0,
            parent_goid: None,
            tracking_seq: None,
        };
        let gs = [
            g(0xa000, 0x1000),
            g(0xb000, 0x2000),
            g(0xc000, 0x3000),
            g(0xe000, 0),
        ];
        let refs: Vec<&RawG> = gs.iter().collect();
        let batched = waiting_chains(&mem, &layout, &refs);
        for (g, chain) in gs.iter().zip(&batched) {
            assert_eq!(chain, &waiting_chain(&mem, &layout, g));
        }
        let channels: Vec<Vec<u64>> = batched
            .iter()
            .map(|c| c.iter().map(|s| s.c).collect())
            .collect();
        assert_eq!(
            channels,
            vec![vec![0x11, 0x12, 0x13], vec![0x21], vec![0x31], vec![]]
        );
    }
}
