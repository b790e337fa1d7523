//! parkscope's eBPF programs: entry uprobes on the Go runtime (never uretprobes: Go moves
//! goroutine stacks, and a rewritten return address crashes the target). Where a result is
//! needed (newproc1's new g, makechan's channel) userspace attaches a plain uprobe at each RET.
//!
//! Go's register ABI (amd64, Go ≥ 1.17): arguments in RAX, RBX, RCX, RDI, RSI, R8..R11; the
//! current g in R14. Userspace attaches at the `push %rbp` after the stack-bound check, where
//! those registers and RSP are still the entry values (and the kernel emulates the instruction).
//! Functions that run on the system stack (newproc1, ready) see g0 in R14 and get their g from
//! explicit arguments or from g0.m.curg.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        Global,
        bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_RB_NO_WAKEUP, pt_regs},
        helpers::{
            bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        },
        macros::{map, uprobe},
        maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
        programs::{ProbeContext, tracing::StackIdContext},
    };
    use profiler_common::{
        EVENT_FRAMES, Event, GoOffsets, MAX_SELECT_CASES, PENDING_WAITS, PendingWait,
        SEMACQUIRE_ENTRIES, STACK_ENTRIES, TRACKED_REASONS, WAIT_KEYS, WaitKey, WaitTotals,
        drop_slot, event_flag, event_kind as kind, probe_slot as slot, report_mode, wait_bucket,
        wait_track,
    };

    /// Set by userspace at load time from the target's own offsets.
    #[unsafe(no_mangle)]
    static GO_OFFSETS: Global<GoOffsets> = Global::new(GoOffsets::EMPTY);

    /// Hits per program, per CPU. Userspace sums them to price each probe group.
    #[map]
    static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(slot::COUNT, 0);

    /// What could not be reported, per CPU, by `drop_slot`: events the ring buffer had no room
    /// for, waits the wait-key map had no room for.
    #[map]
    static EVENT_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_slot::COUNT, 0);

    /// AGGREGATE mode: each goroutine's contended park (by g address) until runtime.ready.
    #[map]
    static PENDING: LruHashMap<u64, PendingWait> = LruHashMap::with_max_entries(PENDING_WAITS, 0);

    /// AGGREGATE mode: each goroutine's latest runtime.semacquire1 return addresses: they
    /// name a sync wait's site, which the park's own frames may not reach.
    #[map]
    static SEMACQUIRES: LruHashMap<u64, [u64; EVENT_FRAMES]> =
        LruHashMap::with_max_entries(SEMACQUIRE_ENTRIES, 0);

    /// AGGREGATE mode: wait times per (reason, site addresses), read by userspace. Not
    /// preallocated (BPF_F_NO_PREALLOC): a per-CPU value per key per possible CPU adds up on
    /// big machines, and a process has far fewer sites than the cap.
    #[map]
    static WAITS: PerCpuHashMap<WaitKey, WaitTotals> =
        PerCpuHashMap::with_max_entries(WAIT_KEYS, BPF_F_NO_PREALLOC);

    /// User stacks of the events whose probe userspace asked stack ids of (frame-pointer walk
    /// by the kernel; Go keeps frame pointers). Ids are reused for identical stacks.
    #[map]
    static STACKS: StackTrace = StackTrace::with_max_entries(STACK_ENTRIES, 0);

    /// Drained by userspace on a timer; submitted without wakeups.
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

    #[inline(always)]
    fn bump(map: &PerCpuArray<u64>, index: u32) {
        if let Some(counter) = map.get_ptr_mut(index) {
            // Per-CPU slot: no other CPU writes it, and a uprobe cannot preempt itself.
            unsafe { *counter += 1 };
        }
    }

    #[inline(always)]
    fn regs(ctx: &ProbeContext) -> &pt_regs {
        unsafe { &*ctx.regs }
    }

    #[inline(always)]
    fn read_u64(addr: u64) -> u64 {
        if addr == 0 {
            return 0;
        }
        unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
    }

    #[inline(always)]
    fn goid_of(g: u64, off: &GoOffsets) -> u64 {
        if g == 0 {
            return 0;
        }
        read_u64(g + off.g_goid as u64)
    }

    /// Count the hit; return the offsets when events are wanted.
    #[inline(always)]
    fn enter(probe: u32) -> Option<GoOffsets> {
        bump(&PROBE_HITS, probe);
        let off = GO_OFFSETS.load();
        if off.mode == report_mode::EVENTS {
            Some(off)
        } else {
            None
        }
    }

    /// For the programs that also serve the in-kernel aggregation: count the hit; return the
    /// offsets unless only counting.
    #[inline(always)]
    fn enter_wait(probe: u32) -> Option<GoOffsets> {
        bump(&PROBE_HITS, probe);
        let off = GO_OFFSETS.load();
        if off.mode == report_mode::COUNT {
            None
        } else {
            Some(off)
        }
    }

    /// Return addresses: `[rsp]`, then up the frame-pointer chain.
    #[inline(always)]
    fn frames_at(r: &pt_regs) -> [u64; EVENT_FRAMES] {
        let mut frames = [0u64; EVENT_FRAMES];
        // [rsp] is the return address: at a function's entry (or at the push %rbp right after
        // its stack check) and at its RETs alike. Then up the frame-pointer chain: RBP still
        // holds the caller's frame pointer here.
        frames[0] = read_u64(r.rsp);
        let mut bp = r.rbp;
        let mut i = 1;
        while i < EVENT_FRAMES {
            if bp == 0 {
                break;
            }
            frames[i] = read_u64(bp + 8);
            bp = read_u64(bp);
            i += 1;
        }
        frames
    }

    /// AGGREGATE mode, at semacquire1 of the running goroutine `g`.
    #[inline(always)]
    fn remember_semacquire(r: &pt_regs, g: u64) {
        let _ = SEMACQUIRES.insert(&g, &frames_at(r), 0);
    }

    /// `GoOffsets::reason_track[reason]`, read in place: a copy on the stack could not be
    /// indexed by a variable (the verifier refuses variable stack offsets), the global's map
    /// value can.
    #[inline(always)]
    fn reason_track(reason: u8) -> u8 {
        let index = reason as usize;
        if index >= TRACKED_REASONS {
            return wait_track::NONE;
        }
        // The mask the verifier needs to bound the offset: black_box keeps the compiler from
        // dropping it as redundant after the check above (which it rewrites as a bit test the
        // verifier cannot bound).
        let index = core::hint::black_box(index) & (TRACKED_REASONS - 1);
        // SAFETY: Global is repr(transparent) over the (always initialised) GoOffsets.
        unsafe {
            let offsets = &GO_OFFSETS as *const Global<GoOffsets> as *const GoOffsets;
            let table = core::ptr::addr_of!((*offsets).reason_track) as *const u8;
            core::ptr::read_volatile(table.add(index))
        }
    }

    /// AGGREGATE mode, at gopark of `g`: remember a contended park until its wake-up; any
    /// other park ends what was remembered (its wake-up went unseen).
    #[inline(always)]
    fn start_wait(r: &pt_regs, g: u64, reason: u8) {
        let track = reason_track(reason);
        if track == wait_track::NONE {
            // Most parks (IO, sleep) have nothing pending: a lookup is cheaper than a delete,
            // which takes the bucket's lock.
            if PENDING.get_ptr(&g).is_some() {
                let _ = PENDING.remove(&g);
            }
            return;
        }
        let mut pending = PendingWait {
            start_ns: unsafe { bpf_ktime_get_ns() },
            key: WaitKey {
                reason: u64::from(reason),
                park_frames: frames_at(r),
                semacquire_frames: [0; EVENT_FRAMES],
            },
        };
        if track == wait_track::PARK_OR_SEMACQUIRE
            && let Some(frames) = SEMACQUIRES.get_ptr(&g)
        {
            // SAFETY: a map value of this type, read once.
            pending.key.semacquire_frames = unsafe { *frames };
        }
        let _ = PENDING.insert(&g, &pending, 0);
    }

    /// AGGREGATE mode, at runtime.ready(gp): the end of gp's contended wait, if one is pending;
    /// a contended wait whose park was not seen is counted as untimed (g.waitreason still holds
    /// the park's reason here: only gdestroy clears it).
    #[inline(always)]
    fn finish_wait(gp: u64, off: &GoOffsets) {
        let Some(entry) = PENDING.get_ptr(&gp) else {
            if gp != 0 {
                let reason =
                    unsafe { bpf_probe_read_user((gp + off.g_waitreason as u64) as *const u8) }
                        .unwrap_or(0);
                if reason_track(reason) != wait_track::NONE {
                    bump(&EVENT_DROPS, drop_slot::UNTIMED);
                }
            }
            return;
        };
        // SAFETY: a map value of this type, copied before the entry goes.
        let pending = unsafe { *entry };
        let _ = PENDING.remove(&gp);
        let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(pending.start_ns);
        if WAITS.get_ptr(&pending.key).is_none() {
            let zero = WaitTotals::default();
            // BPF_NOEXIST: another CPU may have added the key meanwhile; then use theirs.
            let _ = WAITS.insert(&pending.key, &zero, 1);
        }
        let Some(totals) = WAITS.get_ptr_mut(&pending.key) else {
            bump(&EVENT_DROPS, drop_slot::AGGREGATE_OVERFLOW);
            return;
        };
        // SAFETY: this CPU's value of a per-CPU map; a uprobe program cannot preempt itself.
        unsafe {
            let t = &mut *totals;
            t.count += 1;
            t.total_ns += ns;
            if ns > t.max_ns {
                t.max_ns = ns;
            }
            if let Some(b) = t.buckets.get_mut(wait_bucket(ns)) {
                *b += 1;
            }
        }
    }

    /// 1 + the user stack's id in STACKS when userspace asked for this probe's stacks.
    #[inline(always)]
    fn stack_id(ctx: &ProbeContext, probe: u32) -> u32 {
        let off = GO_OFFSETS.load();
        if probe >= 32 || off.stack_slots & (1 << probe) == 0 {
            return 0;
        }
        // BPF_F_USER_STACK; no BPF_F_REUSE_STACKID: a hash collision then fails (-EEXIST)
        // rather than overwriting another event's stack.
        match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => id as u32 + 1,
            Err(_) => 0,
        }
    }

    /// An event with the common fields filled in: time, pid/tid, return addresses.
    #[inline(always)]
    fn base_event(ctx: &ProbeContext, probe: u32, event_kind: u16) -> Event {
        let stack_id = stack_id(ctx, probe);
        let frames = frames_at(regs(ctx));
        let pid_tgid = bpf_get_current_pid_tgid();
        Event {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            goid: 0,
            peer_goid: 0,
            object: 0,
            aux: 0,
            frames,
            kind: event_kind,
            probe: probe as u16,
            reason: 0,
            flags: 0,
            _pad: [0; 2],
            stack_id,
            _pad2: 0,
        }
    }

    /// Queue one event without waking the reader (it drains on a timer).
    #[inline(always)]
    fn submit(event: &Event) {
        match EVENTS.reserve::<Event>(0) {
            Some(mut entry) => {
                entry.write(*event);
                entry.submit(BPF_RB_NO_WAKEUP as u64);
            }
            None => bump(&EVENT_DROPS, drop_slot::RING_FULL),
        }
    }

    /// Build, fill and submit one event. `fill` sets the event-specific fields.
    #[inline(always)]
    fn emit(ctx: &ProbeContext, probe: u32, event_kind: u16, fill: impl FnOnce(&mut Event)) {
        let mut event = base_event(ctx, probe, event_kind);
        fill(&mut event);
        submit(&event);
    }

    /// An event about the running goroutine (R14) and one object argument.
    #[inline(always)]
    fn simple(ctx: &ProbeContext, probe: u32, event_kind: u16, object: u64, flags: u8) -> u32 {
        let Some(off) = enter(probe) else { return 0 };
        let goid = goid_of(regs(ctx).r14, &off);
        emit(ctx, probe, event_kind, |e| {
            e.goid = goid;
            e.object = object;
            e.flags = flags;
        });
        0
    }

    /// The floor: a program that only counts. The startup calibration attaches it without a
    /// cookie (counts into EMPTY); the benchmark attaches it at a real program's attach points
    /// with cookie `slot + 1`, so it counts into that program's slot (which is then idle).
    #[uprobe]
    pub fn empty(ctx: ProbeContext) -> u32 {
        let cookie = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
        let slot = if cookie == 0 || cookie > slot::COUNT as u64 {
            slot::EMPTY
        } else {
            (cookie - 1) as u32
        };
        bump(&PROBE_HITS, slot);
        0
    }

    /// runtime.gopark(unlockf RAX, lock RBX, reason CL, traceReason DIL, traceskip RSI).
    #[uprobe]
    pub fn gopark(ctx: ProbeContext) -> u32 {
        let Some(off) = enter_wait(slot::GOPARK) else {
            return 0;
        };
        let r = regs(&ctx);
        if off.mode == report_mode::AGGREGATE {
            start_wait(r, r.r14, r.rcx as u8);
            return 0;
        }
        let goid = goid_of(r.r14, &off);
        let (lock, reason, unlockf) = (r.rbx, r.rcx as u8, r.rax);
        // unlockf is a *funcval: its first word is the code pointer (chanparkcommit, ...).
        let unlock_pc = read_u64(unlockf);
        emit(&ctx, slot::GOPARK, kind::PARK, |e| {
            e.goid = goid;
            e.object = lock;
            e.reason = reason;
            e.aux = unlock_pc;
        });
        0
    }

    /// runtime.ready(gp RAX, traceskip RBX, next CL), on the system stack: the waker is
    /// g0.m.curg (0 when the scheduler itself readies gp, e.g. from netpoll or timers).
    #[uprobe]
    pub fn ready(ctx: ProbeContext) -> u32 {
        let Some(off) = enter_wait(slot::READY) else {
            return 0;
        };
        let r = regs(&ctx);
        if off.mode == report_mode::AGGREGATE {
            finish_wait(r.rax, &off);
            return 0;
        }
        let woken = goid_of(r.rax, &off);
        let m = read_u64(r.r14 + off.g_m as u64);
        let curg = if m == 0 {
            0
        } else {
            read_u64(m + off.m_curg as u64)
        };
        let waker = goid_of(curg, &off);
        emit(&ctx, slot::READY, kind::WAKE, |e| {
            e.goid = waker;
            e.peer_goid = woken;
            e.object = r.rax;
        });
        0
    }

    /// At each RET of runtime.newproc1: RAX = the new g, already filled in (goid, parentGoid,
    /// gopc). R14 is g0 here, so the parent comes from newg.parentGoid.
    #[uprobe]
    pub fn newproc1_ret(ctx: ProbeContext) -> u32 {
        let Some(off) = enter(slot::NEWPROC1_RET) else {
            return 0;
        };
        let newg = regs(&ctx).rax;
        if newg == 0 {
            return 0;
        }
        let child = goid_of(newg, &off);
        let parent = read_u64(newg + off.g_parent_goid as u64);
        let gopc = read_u64(newg + off.g_gopc as u64);
        emit(&ctx, slot::NEWPROC1_RET, kind::CREATE, |e| {
            e.goid = parent;
            e.peer_goid = child;
            e.object = newg;
            e.aux = gopc;
        });
        0
    }

    /// At the `call runtime.runqput` of runtime.newproc.func1 (an emulated call, where a RET
    /// probe would be single-stepped): runqput(pp RAX, newg RBX, next CL), newg returned by
    /// newproc1 and already filled in (goid, parentGoid, gopc). R14 is g0 here.
    #[uprobe]
    pub fn newproc_handoff(ctx: ProbeContext) -> u32 {
        let Some(off) = enter(slot::NEWPROC_HANDOFF) else {
            return 0;
        };
        let newg = regs(&ctx).rbx;
        if newg == 0 {
            return 0;
        }
        let child = goid_of(newg, &off);
        let parent = read_u64(newg + off.g_parent_goid as u64);
        let gopc = read_u64(newg + off.g_gopc as u64);
        emit(&ctx, slot::NEWPROC_HANDOFF, kind::CREATE, |e| {
            e.goid = parent;
            e.peer_goid = child;
            e.object = newg;
            e.aux = gopc;
        });
        0
    }

    /// runtime.goexit1: R14 is the exiting g, still on its own stack.
    #[uprobe]
    pub fn goexit1(ctx: ProbeContext) -> u32 {
        let g = regs(&ctx).r14;
        simple(&ctx, slot::GOEXIT1, kind::EXIT, g, 0)
    }

    /// runtime.chansend(c RAX, ep RBX, block CL, callerpc RDI).
    #[uprobe]
    pub fn chansend(ctx: ProbeContext) -> u32 {
        let r = regs(&ctx);
        let flags = if r.rcx as u8 != 0 {
            event_flag::BLOCKING
        } else {
            0
        };
        simple(&ctx, slot::CHANSEND, kind::CHAN_SEND, r.rax, flags)
    }

    /// runtime.chanrecv(c RAX, ep RBX, block CL).
    #[uprobe]
    pub fn chanrecv(ctx: ProbeContext) -> u32 {
        let r = regs(&ctx);
        let flags = if r.rcx as u8 != 0 {
            event_flag::BLOCKING
        } else {
            0
        };
        simple(&ctx, slot::CHANRECV, kind::CHAN_RECV, r.rax, flags)
    }

    /// runtime.selectgo(cas0 RAX, order0 RBX, pc0 RCX, nsends RDI, nrecvs RSI, block R8B):
    /// one event per case; cas0 is [nsends+nrecvs]scase{c, elem}, sends first.
    #[uprobe]
    pub fn selectgo(ctx: ProbeContext) -> u32 {
        let Some(off) = enter(slot::SELECTGO) else {
            return 0;
        };
        let r = regs(&ctx);
        let goid = goid_of(r.r14, &off);
        let (cas0, nsends, nrecvs) = (r.rax, r.rdi, r.rsi);
        let ncases = nsends.wrapping_add(nrecvs);
        let blocking = if r.r8 as u8 != 0 {
            event_flag::BLOCKING
        } else {
            0
        };
        let mut event = base_event(&ctx, slot::SELECTGO, kind::SELECT);
        event.goid = goid;
        event.flags = blocking;
        let mut i: u32 = 0;
        while i < MAX_SELECT_CASES {
            if (i as u64) >= ncases {
                break;
            }
            event.object = read_u64(cas0 + 16 * i as u64);
            // No branch on the direction here: diverging stack contents in every iteration
            // would keep the verifier from pruning (2^cases paths). Userspace derives the
            // direction from the case index and nsends.
            event.aux = (i as u64) | ((ncases & 0xffff) << 16) | ((nsends & 0xffff) << 32);
            submit(&event);
            i += 1;
        }
        0
    }

    /// runtime.closechan(c RAX).
    #[uprobe]
    pub fn closechan(ctx: ProbeContext) -> u32 {
        let c = regs(&ctx).rax;
        simple(&ctx, slot::CLOSECHAN, kind::CHAN_CLOSE, c, 0)
    }

    /// At each RET of runtime.makechan: RAX = the new hchan; its capacity is hchan.dataqsiz.
    #[uprobe]
    pub fn makechan_ret(ctx: ProbeContext) -> u32 {
        let Some(off) = enter(slot::MAKECHAN_RET) else {
            return 0;
        };
        let r = regs(&ctx);
        let c = r.rax;
        let goid = goid_of(r.r14, &off);
        let cap = read_u64(c + off.hchan_dataqsiz as u64);
        emit(&ctx, slot::MAKECHAN_RET, kind::CHAN_MAKE, |e| {
            e.goid = goid;
            e.object = c;
            e.aux = cap;
        });
        0
    }

    /// runtime.semacquire1(addr RAX, lifo BL, profile CL, skipframes RDI, reason SIL).
    #[uprobe]
    pub fn semacquire1(ctx: ProbeContext) -> u32 {
        let Some(off) = enter_wait(slot::SEMACQUIRE1) else {
            return 0;
        };
        let r = regs(&ctx);
        if off.mode == report_mode::AGGREGATE {
            remember_semacquire(r, r.r14);
            return 0;
        }
        let goid = goid_of(r.r14, &off);
        emit(&ctx, slot::SEMACQUIRE1, kind::SEM_ACQUIRE, |e| {
            e.goid = goid;
            e.object = r.rax;
            e.reason = r.rsi as u8;
        });
        0
    }

    /// runtime.semrelease1(addr RAX, handoff BL, skipframes RCX).
    #[uprobe]
    pub fn semrelease1(ctx: ProbeContext) -> u32 {
        let r = regs(&ctx);
        let flags = if r.rbx as u8 != 0 {
            event_flag::HANDOFF
        } else {
            0
        };
        simple(&ctx, slot::SEMRELEASE1, kind::SEM_RELEASE, r.rax, flags)
    }

    /// (*Mutex).lockSlow(m RAX): Lock found the mutex held.
    #[uprobe]
    pub fn mutex_lock_slow(ctx: ProbeContext) -> u32 {
        let m = regs(&ctx).rax;
        simple(&ctx, slot::MUTEX_LOCK_SLOW, kind::LOCK, m, 0)
    }

    /// (*Mutex).unlockSlow(m RAX, new EBX).
    #[uprobe]
    pub fn mutex_unlock_slow(ctx: ProbeContext) -> u32 {
        let m = regs(&ctx).rax;
        simple(&ctx, slot::MUTEX_UNLOCK_SLOW, kind::UNLOCK, m, 0)
    }

    /// sync.(*RWMutex).Lock(rw RAX).
    #[uprobe]
    pub fn rwmutex_lock(ctx: ProbeContext) -> u32 {
        let rw = regs(&ctx).rax;
        simple(&ctx, slot::RWMUTEX_LOCK, kind::RWLOCK, rw, 0)
    }

    /// sync.(*RWMutex).Unlock(rw RAX).
    #[uprobe]
    pub fn rwmutex_unlock(ctx: ProbeContext) -> u32 {
        let rw = regs(&ctx).rax;
        simple(&ctx, slot::RWMUTEX_UNLOCK, kind::RWUNLOCK, rw, 0)
    }

    /// sync.runtime_SemacquireRWMutexR(addr RAX = &rw.readerSem, lifo BL, skipframes RCX).
    #[uprobe]
    pub fn rwmutex_rlock_slow(ctx: ProbeContext) -> u32 {
        let sema = regs(&ctx).rax;
        simple(&ctx, slot::RWMUTEX_RLOCK_SLOW, kind::RLOCK_WAIT, sema, 0)
    }

    /// sync.(*RWMutex).rUnlockSlow(rw RAX, r EBX).
    #[uprobe]
    pub fn rwmutex_runlock_slow(ctx: ProbeContext) -> u32 {
        let rw = regs(&ctx).rax;
        simple(&ctx, slot::RWMUTEX_RUNLOCK_SLOW, kind::RUNLOCK_SLOW, rw, 0)
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
