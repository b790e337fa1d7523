//! Types that cross the kernel/userspace boundary. Both sides compile this crate, so every type
//! here is `#[repr(C)]`, `Copy`, and free of pointers and padding surprises.
#![cfg_attr(not(test), no_std)]

/// Indices into the per-CPU probe hit counter array: one slot per eBPF program (attach-point
/// kind), so the overhead governor can price each probe group from kernel-side counts.
pub mod probe_slot {
    pub const GOPARK: u32 = 0;
    pub const READY: u32 = 1;
    pub const NEWPROC1_RET: u32 = 2;
    pub const GOEXIT1: u32 = 3;
    pub const CHANSEND: u32 = 4;
    pub const CHANRECV: u32 = 5;
    pub const SELECTGO: u32 = 6;
    pub const CLOSECHAN: u32 = 7;
    pub const MAKECHAN_RET: u32 = 8;
    pub const SEMACQUIRE1: u32 = 9;
    pub const SEMRELEASE1: u32 = 10;
    pub const MUTEX_LOCK_SLOW: u32 = 11;
    pub const MUTEX_UNLOCK_SLOW: u32 = 12;
    pub const RWMUTEX_LOCK: u32 = 13;
    pub const RWMUTEX_UNLOCK: u32 = 14;
    pub const RWMUTEX_RLOCK_SLOW: u32 = 15;
    pub const RWMUTEX_RUNLOCK_SLOW: u32 = 16;
    /// An empty program: the calibration's floor (trap + dispatch, no work). Attached with a
    /// cookie (`slot + 1`), the empty program counts into the slot of the real program whose
    /// attach points it shares instead (the benchmark's floor, probe by probe).
    pub const EMPTY: u32 = 17;
    /// The `call runtime.runqput` in runtime.newproc.func1: the new g in RBX, fully set up.
    pub const NEWPROC_HANDOFF: u32 = 18;
    /// Slots in use.
    pub const USED: u32 = 19;
    /// Size of the counter array (room to grow without changing the map).
    pub const COUNT: u32 = 32;
}

/// What an [`Event`] reports. Numbers are part of the kernel/userspace contract.
pub mod event_kind {
    /// A goroutine was created: `goid` = parent, `peer_goid` = child, `frames[0]` = `go` site.
    pub const CREATE: u16 = 1;
    /// A goroutine is about to exit (runtime.goexit1).
    pub const EXIT: u16 = 2;
    /// runtime.gopark: `reason` = wait reason code, `object` = the lock argument (for channel
    /// parks `&hchan.lock`), `aux` = the unlockf funcval's code pointer.
    pub const PARK: u16 = 3;
    /// runtime.ready: `goid` = waker (0 = the scheduler itself), `peer_goid` = the woken g.
    pub const WAKE: u16 = 4;
    /// runtime.chansend: `object` = hchan, `flags` bit 0 = blocking.
    pub const CHAN_SEND: u16 = 5;
    /// runtime.chanrecv: `object` = hchan, `flags` bit 0 = blocking.
    pub const CHAN_RECV: u16 = 6;
    /// One case of runtime.selectgo: `object` = the case's hchan (0 for a nil channel),
    /// `aux` = case index | ncases << 16 | nsends << 32 (cases below nsends are sends),
    /// `flags` bit 0 = blocking.
    pub const SELECT: u16 = 7;
    pub const CHAN_CLOSE: u16 = 8;
    /// runtime.makechan returned: `object` = new hchan, `aux` = capacity.
    pub const CHAN_MAKE: u16 = 9;
    /// Mutex slow path entered (contended Lock): `object` = the mutex.
    pub const LOCK: u16 = 10;
    /// Mutex slow-path unlock (there may be waiters): `object` = the mutex.
    pub const UNLOCK: u16 = 11;
    pub const RWLOCK: u16 = 12;
    pub const RWUNLOCK: u16 = 13;
    /// A reader blocks on an RWMutex (`object` = &rw.readerSem).
    pub const RLOCK_WAIT: u16 = 14;
    /// A reader unlock took the slow path (a writer waits): `object` = the RWMutex.
    pub const RUNLOCK_SLOW: u16 = 15;
    /// runtime.semacquire1: `object` = semaphore address, `reason` = wait reason code.
    pub const SEM_ACQUIRE: u16 = 16;
    /// runtime.semrelease1: `object` = semaphore address, `flags` bit 0 = handoff.
    pub const SEM_RELEASE: u16 = 17;
}

pub mod event_flag {
    pub const BLOCKING: u8 = 1;
    pub const HANDOFF: u8 = 1;
}

/// Return addresses captured per event: `[rsp]` at entry, then up the frame-pointer chain.
pub const EVENT_FRAMES: usize = 4;

/// Distinct user stacks the STACKS map holds (per loaded session).
pub const STACK_ENTRIES: u32 = 16384;

/// Most select cases reported per selectgo call (the loop in the kernel is bounded by this).
pub const MAX_SELECT_CASES: u32 = 16;

/// One record in the ring buffer: 96 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The goroutine the event is about (for WAKE: the waker; for CREATE: the parent).
    pub goid: u64,
    /// The other goroutine (WAKE: woken; CREATE: child). 0 when none.
    pub peer_goid: u64,
    pub object: u64,
    pub aux: u64,
    /// Run-time return addresses, innermost first; 0 where unreadable.
    pub frames: [u64; EVENT_FRAMES],
    pub kind: u16,
    /// probe_slot of the program that emitted it.
    pub probe: u16,
    pub reason: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// 1 + the id of the user stack in the STACKS map, for the probes userspace asked stack
    /// ids of (`GoOffsets::stack_slots`); 0 = none taken or the map was full.
    pub stack_id: u32,
    pub _pad2: u32,
}

/// How the programs report what they see (`GoOffsets::mode`).
pub mod report_mode {
    /// Count hits only (benchmarks).
    pub const COUNT: u32 = 0;
    /// One ring-buffer event per hit (trace, profile, top).
    pub const EVENTS: u32 = 1;
    /// Contended waits are timed and summed in the kernel ([`WaitKey`](super::WaitKey) →
    /// [`WaitTotals`](super::WaitTotals)); nothing goes to the ring buffer.
    pub const AGGREGATE: u32 = 2;
}

/// What a wait reason means to the in-kernel aggregation (`GoOffsets::reason_track`, indexed by
/// the runtime's waitReason code, which differs between Go releases: userspace fills it in).
pub mod wait_track {
    /// Not contention (sleep, IO, GC, ...): not timed.
    pub const NONE: u8 = 0;
    /// Contention whose park's own return addresses name the site (channels, select, Cond).
    pub const PARK: u8 = 1;
    /// A sync wait (Mutex, RWMutex, WaitGroup, semaphore): its park is deep in the runtime and
    /// sync, so the goroutine's latest runtime.semacquire1 return addresses come along (they
    /// reach the user's frame).
    pub const PARK_OR_SEMACQUIRE: u8 = 2;
}

/// Reason codes `GoOffsets::reason_track` covers (Go has about 40).
pub const TRACKED_REASONS: usize = 64;

/// Upper bounds (ns) of the in-kernel wait-time buckets; one more bucket takes the rest. Also
/// the daemon's Prometheus buckets, so the kernel's counts are exported as they are.
pub const WAIT_BOUNDS_NS: [u64; 10] = [
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// The bucket of a wait of `ns`: the first bound it does not exceed, else the last bucket.
#[inline(always)]
pub fn wait_bucket(ns: u64) -> usize {
    let mut i = 0;
    while i < WAIT_BOUNDS_NS.len() {
        if ns <= WAIT_BOUNDS_NS[i] {
            return i;
        }
        i += 1;
    }
    WAIT_BOUNDS_NS.len()
}

/// One kind of contended wait as the kernel aggregates it: the wait reason and the return
/// addresses that name its site (userspace symbolizes them as it does events').
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WaitKey {
    /// The runtime's waitReason code.
    pub reason: u64,
    /// gopark's return addresses.
    pub park_frames: [u64; EVENT_FRAMES],
    /// The goroutine's latest runtime.semacquire1 return addresses, for sync waits
    /// (`wait_track::PARK_OR_SEMACQUIRE`); zero for the others.
    pub semacquire_frames: [u64; EVENT_FRAMES],
}

/// Wait times of one [`WaitKey`], per CPU: exact count, total and max; counts per bucket of
/// [`WAIT_BOUNDS_NS`] (not cumulative).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitTotals {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; WAIT_BOUNDS_NS.len() + 1],
}

/// A goroutine's contended park the kernel waits to see readied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingWait {
    pub start_ns: u64,
    pub key: WaitKey,
}

/// Distinct wait keys the kernel aggregates per session; waits of further keys are counted in
/// `EVENT_DROPS[AGGREGATE_OVERFLOW]` instead.
pub const WAIT_KEYS: u32 = 4096;
/// Contended parks awaiting their wake-up (LRU: the oldest, e.g. leaked goroutines or idle
/// workers in a select, go first; their wake-ups are then counted in
/// `EVENT_DROPS[UNTIMED]`).
pub const PENDING_WAITS: u32 = 65536;
/// Goroutines whose latest semacquire1 return addresses are remembered (LRU).
pub const SEMACQUIRE_ENTRIES: u32 = 8192;

/// Slots of the EVENT_DROPS counters.
pub mod drop_slot {
    /// An event the ring buffer had no room for.
    pub const RING_FULL: u32 = 0;
    /// A wait not aggregated: the wait-key map was full.
    pub const AGGREGATE_OVERFLOW: u32 = 1;
    /// A contended wait whose park was not seen: it began before the probes attached, in a
    /// governor gap, or its pending entry was evicted (more parked than `PENDING_WAITS`).
    pub const UNTIMED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Offsets into the Go runtime's structures that the eBPF programs need. Filled in by userspace
/// from the target's DWARF or the per-release table before loading; never hard-coded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoOffsets {
    pub g_goid: u32,
    pub g_m: u32,
    pub g_parent_goid: u32,
    pub g_gopc: u32,
    /// g.waitreason (one byte): still the park's reason when runtime.ready runs.
    pub g_waitreason: u32,
    pub m_curg: u32,
    pub hchan_dataqsiz: u32,
    /// A [`report_mode`] value.
    pub mode: u32,
    /// Bit n set: the program of probe slot n takes a user stack id (bpf_get_stackid).
    pub stack_slots: u32,
    /// Per waitReason code, a [`wait_track`] value (AGGREGATE mode only).
    pub reason_track: [u8; TRACKED_REASONS],
}

impl GoOffsets {
    /// Nothing known yet, only counting: the eBPF object's initial value (a const, which
    /// `Default` is not), overridden by userspace at load time.
    pub const EMPTY: GoOffsets = GoOffsets {
        g_goid: 0,
        g_m: 0,
        g_parent_goid: 0,
        g_gopc: 0,
        g_waitreason: 0,
        m_curg: 0,
        hchan_dataqsiz: 0,
        mode: report_mode::COUNT,
        stack_slots: 0,
        reason_track: [wait_track::NONE; TRACKED_REASONS],
    };
}

impl Default for GoOffsets {
    fn default() -> Self {
        GoOffsets::EMPTY
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for GoOffsets {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for WaitKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for WaitTotals {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PendingWait {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_fall_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        assert_eq!(wait_bucket(0), 0);
        assert_eq!(wait_bucket(1_000), 0);
        assert_eq!(wait_bucket(1_001), 1);
        assert_eq!(wait_bucket(50_000_000), 5);
        assert_eq!(wait_bucket(10_000_000_000), 9);
        assert_eq!(wait_bucket(10_000_000_001), 10);
        assert_eq!(wait_bucket(u64::MAX), WAIT_BOUNDS_NS.len());
    }

    #[test]
    fn kernel_records_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<WaitKey>(), 8 + 2 * 8 * EVENT_FRAMES);
        assert_eq!(
            core::mem::size_of::<WaitTotals>(),
            8 * (3 + WAIT_BOUNDS_NS.len() + 1)
        );
        assert_eq!(core::mem::size_of::<GoOffsets>(), 9 * 4 + TRACKED_REASONS);
    }
}
