//! Contention accounting over decoded probe events: for every contended wait (Mutex, RWMutex
//! read/write, WaitGroup, Cond, semaphores, channel send/receive/select) the time from park to
//! wake-up, the waiting site (first user frame above runtime/sync frames), the object, and the
//! waker (the goroutine whose release readied the waiter, and the site of that release: for a
//! contended lock, the holder that made everyone wait). Aggregated per (kind, waiting site), per
//! (kind, waker site) and per object into histograms (count, total, max, p50/p90/p99).
//!
//! Pure: it consumes [`Obs`] records (built from kernel events by [`observe`]) and never touches
//! the target. Windows where the governor detached a group are recorded as gaps: waits that
//! straddle a gap are dropped (their start or end is unknown) and the window is marked partial.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use profiler_common::{
    EVENT_FRAMES, Event, TRACKED_REASONS, WaitKey, event_kind as kind, wait_track,
};
use serde::Serialize;

use crate::probes::decode::{EventDecoder, hex};

/// A source position; also the key of a site.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.file.is_empty() {
            return f.write_str(&self.function);
        }
        let file = self.file.rsplit('/').next().unwrap_or(&self.file);
        write!(f, "{} {}:{}", self.function, file, self.line)
    }
}

/// What a contended wait was on, from the runtime's own wait reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    Mutex,
    RwmutexRead,
    RwmutexWrite,
    Waitgroup,
    Cond,
    Semaphore,
    ChanRecv,
    ChanSend,
    Select,
}

impl WaitKind {
    /// The contention kinds Go's block profile also counts; other parks (sleep, IO wait, GC,
    /// nil-channel waits that never end) are not contention.
    pub fn from_reason(reason: &str) -> Option<WaitKind> {
        Some(match reason {
            "sync.Mutex.Lock" => WaitKind::Mutex,
            "sync.RWMutex.RLock" => WaitKind::RwmutexRead,
            "sync.RWMutex.Lock" => WaitKind::RwmutexWrite,
            "sync.WaitGroup.Wait" => WaitKind::Waitgroup,
            "sync.Cond.Wait" => WaitKind::Cond,
            "semacquire" => WaitKind::Semaphore,
            "chan receive" => WaitKind::ChanRecv,
            "chan send" => WaitKind::ChanSend,
            "select" => WaitKind::Select,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            WaitKind::Mutex => "mutex",
            WaitKind::RwmutexRead => "rwmutex_read",
            WaitKind::RwmutexWrite => "rwmutex_write",
            WaitKind::Waitgroup => "waitgroup",
            WaitKind::Cond => "cond",
            WaitKind::Semaphore => "semaphore",
            WaitKind::ChanRecv => "chan_recv",
            WaitKind::ChanSend => "chan_send",
            WaitKind::Select => "select",
        }
    }
}

/// The in-kernel aggregation's view of each wait reason code (`GoOffsets::reason_track`):
/// which parks are contention (the kinds of [`WaitKind::from_reason`], as [`Accountant::feed`]
/// counts them), and which need the goroutine's semacquire1 return addresses to name their site
/// (the sync waits; WaitGroup waits before Go 1.24 park as "semacquire").
pub fn reason_track(reason_text: impl Fn(u8) -> String) -> [u8; TRACKED_REASONS] {
    let mut track = [wait_track::NONE; TRACKED_REASONS];
    for (code, t) in track.iter_mut().enumerate() {
        *t = match WaitKind::from_reason(&reason_text(code as u8)) {
            None => wait_track::NONE,
            Some(
                WaitKind::Mutex
                | WaitKind::RwmutexRead
                | WaitKind::RwmutexWrite
                | WaitKind::Waitgroup
                | WaitKind::Semaphore,
            ) => wait_track::PARK_OR_SEMACQUIRE,
            Some(WaitKind::Cond | WaitKind::ChanRecv | WaitKind::ChanSend | WaitKind::Select) => {
                wait_track::PARK
            }
        };
    }
    track
}

/// The (kind, waiting site) of one in-kernel aggregate: the first user frame of the park's
/// own return addresses, else of the semacquire1 that led to it (a sync wait's park is too deep
/// in the runtime for four return addresses to reach the user; the accountant uses the slow-path
/// entry's for the same reason, and both name the first frame outside runtime and sync). The
/// site is None when neither reaches a user frame; the kind is None for a reason that is not
/// contention (the kernel aggregates none).
pub fn kernel_wait_site(
    decoder: &dyn EventDecoder,
    key: &WaitKey,
) -> Option<(WaitKind, Option<Frame>)> {
    let park = symbolize(decoder, &key.park_frames);
    let reason = refine_reason(decoder.reason_text(key.reason as u8), park.in_wait_group);
    let kind = WaitKind::from_reason(&reason)?;
    let site = match park.stack.first() {
        Some(f) => Some(f.clone()),
        None if key.semacquire_frames.iter().any(|&pc| pc != 0) => {
            symbolize(decoder, &key.semacquire_frames)
                .stack
                .first()
                .cloned()
        }
        None => None,
    };
    Some((kind, site))
}

/// What a goroutine announced it is about to block on (slow-path entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Mutex lockSlow (object = the mutex).
    Mutex,
    /// RWMutex.Lock (object = the RWMutex).
    RwWrite,
    /// A reader blocks (object = the RWMutex).
    RwRead,
    /// semacquire1 (object = the semaphore).
    Sema,
}

/// One observation, the part of a kernel event contention accounting uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// gopark with the runtime's wait-reason text; object = the channel for channel parks.
    Park {
        reason: String,
        object: String,
    },
    /// runtime.ready: the observed goroutine (the waker, 0 = scheduler) readied `woken`.
    Wake {
        woken: u64,
    },
    Intent {
        intent: Intent,
        object: String,
    },
    /// The goroutine released something a waiter may be waiting for (unlock, semrelease,
    /// channel operation, close).
    Release {
        object: String,
    },
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obs {
    pub ts_ns: u64,
    pub goid: u64,
    pub op: Op,
    /// From the first user frame outward; empty when the event captured no user frame.
    /// Shared: every event with the same return addresses has the same stack.
    pub stack: Arc<[Frame]>,
    /// Innermost frame of all (a runtime function when `stack` is empty).
    pub innermost: Option<Arc<Frame>>,
}

impl Obs {
    pub fn site(&self) -> Option<&Frame> {
        self.stack.first()
    }
}

/// An event's return addresses, symbolized for contention accounting.
#[derive(Clone, Debug)]
struct Symbolized {
    stack: Arc<[Frame]>,
    innermost: Option<Arc<Frame>>,
    /// One of the addresses is in `sync.(*WaitGroup).Wait` (see [`refine_reason`]).
    in_wait_group: bool,
}

fn symbolize(decoder: &dyn EventDecoder, frames: &[u64]) -> Symbolized {
    let (stack, innermost) = decoder.user_stack(frames);
    let conv = |l: crate::gobin::pclntab::SourceLine| Frame {
        function: l.function,
        file: l.file,
        line: l.line,
    };
    let in_wait_group = frames.iter().any(|&pc| {
        pc != 0
            && decoder
                .user_stack(&[pc])
                .1
                .is_some_and(|f| f.function == "sync.(*WaitGroup).Wait")
    });
    Symbolized {
        stack: unwrap_deferwraps(stack.into_iter().map(conv).collect()).into(),
        innermost: innermost.map(|l| Arc::new(conv(l))),
        in_wait_group,
    }
}

/// Kernel events → observations for one session (one decoder), with the symbolized stacks
/// cached per distinct set of return addresses: a busy program repeats a few hundred of them,
/// and a contended lock's slow path fires hundreds of thousands of times a second.
#[derive(Debug, Default)]
pub struct Observer {
    stacks: HashMap<[u64; EVENT_FRAMES], Symbolized>,
}

/// Bound on the stack cache (distinct return-address sets), so a long session cannot grow
/// without limit.
const OBSERVER_CACHE_MAX: usize = 1 << 16;

impl Observer {
    pub fn new() -> Self {
        Observer::default()
    }

    /// The same observation as [`observe`], from the cache when these return addresses were
    /// seen before. Only for events of the decoder's own target (one session).
    pub fn observe(&mut self, decoder: &dyn EventDecoder, e: &Event) -> Obs {
        let sym = match self.stacks.get(&e.frames) {
            Some(sym) => sym.clone(),
            None => {
                let sym = symbolize(decoder, &e.frames);
                if self.stacks.len() >= OBSERVER_CACHE_MAX {
                    self.stacks.clear();
                }
                self.stacks.insert(e.frames, sym.clone());
                sym
            }
        };
        obs_of(decoder, e, sym)
    }
}

/// Kernel event → observation, symbolized by the target's decoder.
pub fn observe(decoder: &dyn EventDecoder, e: &Event) -> Obs {
    obs_of(decoder, e, symbolize(decoder, &e.frames))
}

fn obs_of(decoder: &dyn EventDecoder, e: &Event, sym: Symbolized) -> Obs {
    let object = || hex(decoder.object_addr(e, None));
    let op = match e.kind {
        kind::PARK => {
            let reason = decoder.reason_text(e.reason);
            let object = hex(decoder.object_addr(e, Some(&reason)));
            Op::Park {
                reason: refine_reason(reason, sym.in_wait_group),
                object,
            }
        }
        kind::WAKE => Op::Wake { woken: e.peer_goid },
        kind::LOCK => Op::Intent {
            intent: Intent::Mutex,
            object: object(),
        },
        kind::RWLOCK => Op::Intent {
            intent: Intent::RwWrite,
            object: object(),
        },
        kind::RLOCK_WAIT => Op::Intent {
            intent: Intent::RwRead,
            object: object(),
        },
        kind::SEM_ACQUIRE => Op::Intent {
            intent: Intent::Sema,
            object: object(),
        },
        kind::UNLOCK
        | kind::RWUNLOCK
        | kind::RUNLOCK_SLOW
        | kind::SEM_RELEASE
        | kind::CHAN_SEND
        | kind::CHAN_RECV
        | kind::CHAN_CLOSE
        | kind::SELECT => Op::Release { object: object() },
        _ => Op::Other,
    };
    Obs {
        ts_ns: e.ts_ns,
        goid: e.goid,
        op,
        stack: sym.stack,
        innermost: sym.innermost,
    }
}

/// `X.deferwrapN` is the compiler's wrapper for a `defer` in X: it runs as X returns, and Go's
/// own tracebacks (so its profiles) hide it. Its frame is X's site (the defer statement's line)
/// unless X's own frame follows, which then stands alone.
fn unwrap_deferwraps(stack: Vec<Frame>) -> Vec<Frame> {
    fn parent(function: &str) -> Option<&str> {
        let (parent, tail) = function.rsplit_once(".deferwrap")?;
        (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())).then_some(parent)
    }
    let mut out: Vec<Frame> = Vec::with_capacity(stack.len());
    let mut frames = stack.into_iter().peekable();
    while let Some(mut f) = frames.next() {
        if let Some(p) = parent(&f.function).map(str::to_string) {
            if frames.peek().is_some_and(|next| next.function == p) {
                continue;
            }
            f.function = p;
        }
        out.push(f);
    }
    out
}

/// Before Go 1.24 a goroutine in `(*sync.WaitGroup).Wait` parks as plain "semacquire" (1.24
/// added "sync.WaitGroup.Wait"): the park's own frames tell the two apart.
fn refine_reason(reason: String, in_wait_group: bool) -> String {
    if reason == "semacquire" && in_wait_group {
        "sync.WaitGroup.Wait".to_string()
    } else {
        reason
    }
}

/// Log-linear histogram of nanoseconds: 16 sub-buckets per power of two, so a quantile is
/// within 1/16 (6%) of the true value; exact count, total and max.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    buckets: BTreeMap<u32, u64>,
}

const SUB_BITS: u32 = 4;

fn bucket_of(v: u64) -> u32 {
    if v < (1 << SUB_BITS) {
        return v as u32;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let mantissa = ((v >> shift) as u32) & ((1 << SUB_BITS) - 1);
    ((exp - SUB_BITS + 1) << SUB_BITS) | mantissa
}

/// Upper bound of a bucket.
fn bucket_high(b: u32) -> u64 {
    if b < (1 << SUB_BITS) {
        return u64::from(b);
    }
    let exp = (b >> SUB_BITS) + SUB_BITS - 1;
    let mantissa = u64::from(b & ((1 << SUB_BITS) - 1));
    let shift = exp - SUB_BITS;
    (((1u64 << SUB_BITS) | mantissa) << shift) + ((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        *self.buckets.entry(bucket_of(ns)).or_default() += 1;
    }

    /// The q-quantile (0..=1), as the upper bound of its bucket (never above max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return bucket_high(*b).min(self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn summary(&self) -> HistSummary {
        HistSummary {
            count: self.count,
            total_ns: self.total_ns,
            max_ns: self.max_ns,
            p50_ns: self.quantile(0.5),
            p90_ns: self.quantile(0.9),
            p99_ns: self.quantile(0.99),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistSummary {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
}

/// One finished wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub kind: WaitKind,
    pub goid: u64,
    pub object: String,
    pub start_ns: u64,
    pub delay_ns: u64,
    /// The waiting site and its callers (as far as captured).
    pub stack: Vec<Frame>,
    pub waker_goid: u64,
    /// The waker's release site and its callers; empty when unknown.
    pub waker_stack: Vec<Frame>,
}

/// A site key: the user frame, or a named placeholder when none was captured.
fn site_of(stack: &[Frame], fallback: &str) -> Frame {
    stack.first().cloned().unwrap_or_else(|| Frame {
        function: fallback.to_string(),
        file: String::new(),
        line: 0,
    })
}

pub const UNKNOWN_SITE: &str = "(unknown site)";
pub const UNKNOWN_CHANNEL_WAKER: &str = "(channel operation: the channels probe group names it)";

/// The holder/waker site key of a wake: the release site, the scheduler, or why it is unknown
/// (a channel waker's site comes from the channels group's events only: runtime.ready runs on
/// the system stack, too deep below the user's frame for the event's few return addresses).
pub fn waker_site(kind: WaitKind, waker_goid: u64, stack: &[Frame]) -> Frame {
    if waker_goid == 0 {
        return site_of(&[], SCHEDULER_SITE);
    }
    let unknown = match kind {
        WaitKind::ChanRecv | WaitKind::ChanSend | WaitKind::Select => UNKNOWN_CHANNEL_WAKER,
        _ => UNKNOWN_SITE,
    };
    site_of(stack, unknown)
}
pub const SCHEDULER_SITE: &str = "(scheduler: timer or netpoll)";

#[derive(Clone, Debug)]
struct Pending {
    kind: WaitKind,
    start_ns: u64,
    object: String,
    stack: Arc<[Frame]>,
    /// Waiting before this was already charged to an earlier holder of the same object.
    charged_until: u64,
}

/// Waiting time charged to the goroutine whose release ended it: each interval of a wait is
/// charged to the release that ended the interval on that object (a release that woke another
/// waiter of the same object ends an interval for every waiter of it), so a lock held long
/// charges the whole queue's waiting to its holder, as Go's mutex profile does (Go ≥ 1.22).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    pub kind: WaitKind,
    pub object: String,
    pub waiting_site: Frame,
    pub waker_goid: u64,
    /// The release site and its callers; empty when unknown.
    pub waker_stack: Vec<Frame>,
    pub ns: u64,
}

#[derive(Clone, Debug, Default)]
struct GState {
    pending: Option<Pending>,
    /// A park of this goroutine was seen (its later wakes are not from before the window).
    park_seen: bool,
    /// Latest slow-path intents: (object, stack) per intent kind.
    intents: HashMap<u8, (String, Arc<[Frame]>)>,
    /// Latest release in the current run slice: (ts, stack).
    release: Option<(u64, Arc<[Frame]>)>,
    /// When this goroutine was last readied: releases before it belong to an earlier slice.
    woken_at: u64,
}

fn intent_slot(i: Intent) -> u8 {
    match i {
        Intent::Mutex => 0,
        Intent::RwWrite => 1,
        Intent::RwRead => 2,
        Intent::Sema => 3,
    }
}

/// A window in which a probe group was detached (accounting there is incomplete).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gap {
    pub group: String,
    pub from_ns: u64,
    /// None while still detached.
    pub to_ns: Option<u64>,
}

/// Aggregates per (kind, site).
#[derive(Clone, Debug, Default)]
pub struct SiteStats {
    pub hist: Histogram,
    /// Delay per waker/holder site (for the waiting view) or per waiting site (holder view).
    pub peers: HashMap<Frame, u64>,
    pub objects: HashMap<String, u64>,
}

/// The accountant: feed it observations in time order; read aggregates any time.
#[derive(Debug, Default)]
pub struct Accountant {
    goroutines: HashMap<u64, GState>,
    /// Finished waits, kept when `keep_waits` (pprof stacks need them).
    pub waits: Vec<Wait>,
    pub keep_waits: bool,
    /// Holder charges, kept when `keep_waits`.
    pub charges: Vec<Charge>,
    /// object → goroutines with a pending wait on it.
    waiters: HashMap<String, Vec<u64>>,
    pub by_site: HashMap<(WaitKind, Frame), SiteStats>,
    pub by_holder: HashMap<(WaitKind, Frame), SiteStats>,
    pub by_object: HashMap<(WaitKind, String), SiteStats>,
    pub total: Histogram,
    /// Wakes of goroutines whose park we did not see (parked before attach or in a gap).
    pub unmatched_wakes: u64,
    pub gaps: Vec<Gap>,
    /// Charges whose waker released nothing a probe sees (Cond Signal/Broadcast), by waker
    /// goroutine: charged once the waker's next event names the code it runs (see `feed`).
    deferred: HashMap<u64, Vec<Charge>>,
}

/// Waker goroutines whose charges may wait for their next event at once.
const MAX_DEFERRED_WAKERS: usize = 1024;

/// Kinds whose waker site may come from the waker's next event: no probe sees the release
/// itself (a Cond's Signal and Broadcast readies the waiters directly). Channel wakers are named
/// by the channels group instead.
fn waker_site_deferrable(kind: WaitKind) -> bool {
    !matches!(
        kind,
        WaitKind::ChanRecv | WaitKind::ChanSend | WaitKind::Select
    )
}

/// The waker's code from one of its later events: its stack without the blocking machinery
/// it may have entered since (time.Sleep, runtime, sync).
fn code_of(stack: &[Frame]) -> Vec<Frame> {
    let skip = stack
        .iter()
        .take_while(|f| {
            f.function.starts_with("time.")
                || f.function.starts_with("runtime.")
                || f.function.starts_with("sync.")
                || f.function.starts_with("internal/")
        })
        .count();
    stack[skip..].to_vec()
}

impl Accountant {
    pub fn new(keep_waits: bool) -> Self {
        Accountant {
            keep_waits,
            ..Accountant::default()
        }
    }

    pub fn feed(&mut self, o: &Obs) {
        // A waker whose release no probe saw: its next event in the same run slice (the next
        // one with a user stack, or its park) names the code it was running when it woke them.
        if o.goid != 0 && self.deferred.contains_key(&o.goid) {
            let code = code_of(&o.stack);
            if !code.is_empty() || matches!(o.op, Op::Park { .. }) {
                for mut c in self.deferred.remove(&o.goid).unwrap_or_default() {
                    c.waker_stack = code.clone();
                    self.charge(c);
                }
            }
        }
        match &o.op {
            Op::Park { reason, object } => {
                self.goroutines.entry(o.goid).or_default().park_seen = true;
                let Some(kind) = WaitKind::from_reason(reason) else {
                    // Not contention: forget any earlier wait of this goroutine.
                    self.clear_pending(o.goid);
                    return;
                };
                self.clear_pending(o.goid);
                let g = self.goroutines.entry(o.goid).or_default();
                let intent = match kind {
                    WaitKind::Mutex => Some(Intent::Mutex),
                    WaitKind::RwmutexWrite => Some(Intent::RwWrite),
                    WaitKind::RwmutexRead => Some(Intent::RwRead),
                    WaitKind::Waitgroup | WaitKind::Semaphore => Some(Intent::Sema),
                    _ => None,
                };
                let from_intent = intent.and_then(|i| g.intents.get(&intent_slot(i)));
                let object = match from_intent {
                    Some((obj, _)) if !obj.is_empty() => obj.clone(),
                    _ => object.clone(),
                };
                // The park's own frames name the site when they reach user code; else the
                // slow-path entry's (closer to the caller).
                let stack = if !o.stack.is_empty() {
                    o.stack.clone()
                } else if let Some((_, s)) = from_intent.filter(|(_, s)| !s.is_empty()) {
                    s.clone()
                } else {
                    Vec::new().into()
                };
                if !object.is_empty() {
                    self.waiters.entry(object.clone()).or_default().push(o.goid);
                }
                g.pending = Some(Pending {
                    kind,
                    start_ns: o.ts_ns,
                    object,
                    stack,
                    charged_until: o.ts_ns,
                });
            }
            Op::Intent { intent, object } => {
                let g = self.goroutines.entry(o.goid).or_default();
                g.intents
                    .insert(intent_slot(*intent), (object.clone(), o.stack.clone()));
            }
            Op::Release { .. } => {
                let g = self.goroutines.entry(o.goid).or_default();
                if !o.stack.is_empty() {
                    g.release = Some((o.ts_ns, o.stack.clone()));
                }
            }
            Op::Wake { woken } => {
                let waker_stack: Arc<[Frame]> = if o.goid == 0 {
                    Vec::new().into()
                } else {
                    let g = self.goroutines.entry(o.goid).or_default();
                    match &g.release {
                        Some((ts, stack)) if *ts >= g.woken_at => stack.clone(),
                        _ => o.stack.clone(),
                    }
                };
                let woken_state = self.goroutines.entry(*woken).or_default();
                woken_state.woken_at = o.ts_ns;
                let Some(object) = woken_state.pending.as_ref().map(|p| p.object.clone()) else {
                    if !woken_state.park_seen {
                        self.unmatched_wakes += 1;
                    }
                    return;
                };
                // Every waiter of the object waited through the interval this release ended.
                let mut queue = if object.is_empty() {
                    vec![*woken]
                } else {
                    self.waiters.get(&object).cloned().unwrap_or_default()
                };
                if !queue.contains(woken) {
                    queue.push(*woken);
                }
                for goid in queue {
                    let Some(q) = self
                        .goroutines
                        .get_mut(&goid)
                        .and_then(|g| g.pending.as_mut())
                    else {
                        continue;
                    };
                    let ns = o.ts_ns.saturating_sub(q.charged_until);
                    q.charged_until = o.ts_ns;
                    let charge = Charge {
                        kind: q.kind,
                        object: q.object.clone(),
                        waiting_site: site_of(&q.stack, UNKNOWN_SITE),
                        waker_goid: o.goid,
                        waker_stack: waker_stack.to_vec(),
                        ns,
                    };
                    if waker_stack.is_empty() && o.goid != 0 && waker_site_deferrable(q.kind) {
                        // Bounded: wakers that exit without another event are charged unknown.
                        if self.deferred.len() >= MAX_DEFERRED_WAKERS {
                            self.flush_deferred();
                        }
                        self.deferred.entry(o.goid).or_default().push(charge);
                    } else {
                        self.charge(charge);
                    }
                }
                self.clear_pending_keep(*woken);
                let Some(p) = self
                    .goroutines
                    .get_mut(woken)
                    .and_then(|g| g.pending.take())
                else {
                    return;
                };
                let wait = Wait {
                    kind: p.kind,
                    goid: *woken,
                    object: p.object,
                    start_ns: p.start_ns,
                    delay_ns: o.ts_ns.saturating_sub(p.start_ns),
                    stack: p.stack.to_vec(),
                    waker_goid: o.goid,
                    waker_stack: waker_stack.to_vec(),
                };
                self.account(wait);
            }
            Op::Other => {}
        }
    }

    fn account(&mut self, w: Wait) {
        let site = site_of(&w.stack, UNKNOWN_SITE);
        self.total.record(w.delay_ns);
        let s = self.by_site.entry((w.kind, site.clone())).or_default();
        s.hist.record(w.delay_ns);
        *s.objects.entry(w.object.clone()).or_default() += w.delay_ns;
        let ob = self
            .by_object
            .entry((w.kind, w.object.clone()))
            .or_default();
        ob.hist.record(w.delay_ns);
        *ob.peers.entry(site).or_default() += w.delay_ns;
        if self.keep_waits {
            self.waits.push(w);
        }
    }

    fn charge(&mut self, c: Charge) {
        let holder = waker_site(c.kind, c.waker_goid, &c.waker_stack);
        *self
            .by_site
            .entry((c.kind, c.waiting_site.clone()))
            .or_default()
            .peers
            .entry(holder.clone())
            .or_default() += c.ns;
        let h = self.by_holder.entry((c.kind, holder)).or_default();
        h.hist.record(c.ns);
        *h.peers.entry(c.waiting_site.clone()).or_default() += c.ns;
        *h.objects.entry(c.object.clone()).or_default() += c.ns;
        if self.keep_waits {
            self.charges.push(c);
        }
    }

    /// Remove a goroutine from the waiters index (its pending wait stays).
    fn clear_pending_keep(&mut self, goid: u64) {
        let Some(object) = self
            .goroutines
            .get(&goid)
            .and_then(|g| g.pending.as_ref())
            .map(|p| p.object.clone())
        else {
            return;
        };
        if let Some(list) = self.waiters.get_mut(&object) {
            list.retain(|g| *g != goid);
            if list.is_empty() {
                self.waiters.remove(&object);
            }
        }
    }

    fn clear_pending(&mut self, goid: u64) {
        self.clear_pending_keep(goid);
        if let Some(g) = self.goroutines.get_mut(&goid) {
            g.pending = None;
        }
    }

    /// Charge what still waits for its waker's next event to the unknown site (end of a
    /// profile; a gap in the park group).
    pub fn flush_deferred(&mut self) {
        let mut deferred: Vec<(u64, Vec<Charge>)> = self.deferred.drain().collect();
        deferred.sort_by_key(|(goid, _)| *goid);
        for c in deferred.into_iter().flat_map(|(_, cs)| cs) {
            self.charge(c);
        }
    }

    /// A probe group went away at `ts_ns`: waits in flight can no longer be timed.
    pub fn gap_start(&mut self, group: &str, ts_ns: u64) {
        if group == "park" {
            self.flush_deferred();
            self.waiters.clear();
            for g in self.goroutines.values_mut() {
                g.pending = None;
                g.park_seen = false;
                g.release = None;
            }
        }
        self.gaps.push(Gap {
            group: group.to_string(),
            from_ns: ts_ns,
            to_ns: None,
        });
    }

    pub fn gap_end(&mut self, group: &str, ts_ns: u64) {
        if let Some(g) = self
            .gaps
            .iter_mut()
            .rev()
            .find(|g| g.group == group && g.to_ns.is_none())
        {
            g.to_ns = Some(ts_ns);
        }
    }

    /// Goroutines parked in a contended wait right now: (kind, site) → (count, oldest start).
    pub fn waiting_now(&self) -> BTreeMap<(WaitKind, Frame), (u64, u64)> {
        let mut out: BTreeMap<(WaitKind, Frame), (u64, u64)> = BTreeMap::new();
        for g in self.goroutines.values() {
            if let Some(p) = &g.pending {
                let e = out
                    .entry((p.kind, site_of(&p.stack, UNKNOWN_SITE)))
                    .or_insert((0, u64::MAX));
                e.0 += 1;
                e.1 = e.1.min(p.start_ns);
            }
        }
        out
    }

    /// Start a new window (for `top`): aggregates reset, waits in flight kept.
    pub fn reset_window(&mut self) {
        self.waits.clear();
        self.charges.clear();
        self.by_site.clear();
        self.by_holder.clear();
        self.by_object.clear();
        self.total = Histogram::default();
        self.unmatched_wakes = 0;
        self.gaps.retain(|g| g.to_ns.is_none());
    }

    pub fn report(&self, top: usize) -> Report {
        fn rows<K: Clone>(
            map: &HashMap<(WaitKind, K), SiteStats>,
            top: usize,
            label: impl Fn(&K) -> String,
        ) -> Vec<Row> {
            let mut v: Vec<Row> = map
                .iter()
                .map(|((kind, key), s)| {
                    let mut peers: Vec<(&Frame, &u64)> = s.peers.iter().collect();
                    peers.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                    let mut objects: Vec<(&String, &u64)> = s.objects.iter().collect();
                    objects.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                    Row {
                        kind: *kind,
                        key: label(key),
                        stats: s.hist.summary(),
                        peers: peers
                            .into_iter()
                            .take(3)
                            .map(|(f, ns)| Peer {
                                site: f.to_string(),
                                function: f.function.clone(),
                                delay_ns: *ns,
                            })
                            .collect(),
                        objects: objects
                            .into_iter()
                            .take(3)
                            .map(|(o, _)| o.clone())
                            .collect(),
                    }
                })
                .collect();
            v.sort_by(|a, b| {
                b.stats
                    .total_ns
                    .cmp(&a.stats.total_ns)
                    .then(a.key.cmp(&b.key))
            });
            v.truncate(top);
            v
        }
        Report {
            total: self.total.summary(),
            sites: rows(&self.by_site, top, |f: &Frame| f.to_string()),
            holders: rows(&self.by_holder, top, |f: &Frame| f.to_string()),
            objects: rows(&self.by_object, top, |o: &String| o.clone()),
            unmatched_wakes: self.unmatched_wakes,
            gaps: self.gaps.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Peer {
    pub site: String,
    pub function: String,
    pub delay_ns: u64,
}

/// One aggregate line: a waiting site, a holder/waker site, or an object.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub kind: WaitKind,
    /// "function file:line" for sites, the address for objects.
    pub key: String,
    #[serde(flatten)]
    pub stats: HistSummary,
    /// sites: top holder/waker sites; holders: top waiting sites; objects: top waiting sites.
    pub peers: Vec<Peer>,
    pub objects: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub total: HistSummary,
    pub sites: Vec<Row>,
    pub holders: Vec<Row>,
    pub objects: Vec<Row>,
    pub unmatched_wakes: u64,
    /// Windows where a probe group was detached by the governor: totals there are partial.
    pub gaps: Vec<Gap>,
}

pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.2}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1}µs", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str, line: u32) -> Frame {
        Frame {
            function: f.into(),
            file: "/src/app/main.go".into(),
            line,
        }
    }

    fn obs(ts: u64, goid: u64, op: Op, site: Option<Frame>) -> Obs {
        Obs {
            ts_ns: ts,
            goid,
            op,
            stack: site.into_iter().collect(),
            innermost: None,
        }
    }

    fn park(ts: u64, g: u64, reason: &str, site: Option<Frame>) -> Obs {
        obs(
            ts,
            g,
            Op::Park {
                reason: reason.into(),
                object: "0xroot".into(),
            },
            site,
        )
    }

    fn wake(ts: u64, waker: u64, woken: u64) -> Obs {
        obs(ts, waker, Op::Wake { woken }, None)
    }

    /// Symbolizes pc N as the function `fn` named in `names[N % len]`, line N.
    struct Lines(&'static [&'static str]);

    impl EventDecoder for Lines {
        fn decode(&self, _: &Event) -> crate::probes::decode::TraceEvent {
            unreachable!("observations do not build whole decoded events")
        }
        fn user_stack(
            &self,
            pcs: &[u64],
        ) -> (
            Vec<crate::gobin::pclntab::SourceLine>,
            Option<crate::gobin::pclntab::SourceLine>,
        ) {
            let line = |pc: u64| crate::gobin::pclntab::SourceLine {
                function: self.0[pc as usize % self.0.len()].to_string(),
                file: "/src/app/main.go".into(),
                line: pc as u32,
            };
            let lines: Vec<_> = pcs
                .iter()
                .filter(|&&pc| pc != 0)
                .map(|&pc| line(pc))
                .collect();
            let innermost = lines.first().cloned();
            let skip = lines
                .iter()
                .take_while(|l| crate::probes::decode::is_runtime_frame(&l.function))
                .count();
            (lines[skip..].to_vec(), innermost)
        }
        fn reason_text(&self, code: u8) -> String {
            [
                "semacquire",
                "sync.Mutex.Lock",
                "chan receive",
                "sleep",
                "select",
            ]
            .get(code as usize)
            .unwrap_or(&"GC worker (idle)")
            .to_string()
        }
        fn object_addr(&self, e: &Event, reason: Option<&str>) -> u64 {
            e.object - u64::from(reason == Some("chan receive")) * 8
        }
    }

    #[test]
    fn reason_track_marks_contention_and_sync_waits() {
        let decoder = Lines(&["main.run"]);
        let track = reason_track(|code| decoder.reason_text(code));
        assert_eq!(
            track[..6],
            [
                wait_track::PARK_OR_SEMACQUIRE,
                wait_track::PARK_OR_SEMACQUIRE,
                wait_track::PARK,
                wait_track::NONE,
                wait_track::PARK,
                wait_track::NONE,
            ]
        );
        assert!(track[6..].iter().all(|&t| t == wait_track::NONE));
    }

    /// A kernel aggregate is named by the first user frame of its park, else of its
    /// semacquire1; a WaitGroup wait parked as "semacquire" is told by its park's frames, as
    /// the accountant tells it from the same park event.
    #[test]
    fn kernel_aggregates_are_named_by_their_first_user_frame() {
        let decoder = Lines(&[
            "runtime.gopark",
            "runtime.semacquire1",
            "sync.(*Mutex).lockSlow",
            "sync.(*WaitGroup).Wait",
            "main.run",
            "main.serve",
            "main.serve.deferwrap1",
        ]);
        let key = |reason: u8, park_frames, semacquire_frames| WaitKey {
            reason: u64::from(reason),
            park_frames,
            semacquire_frames,
        };
        let site = |f: &str, line| Some(frame(f, line));
        let cases = [
            // A Mutex park whose own frames stay in the runtime: semacquire1's name the site.
            (
                key(1, [7, 8, 9, 0], [8, 9, 4, 5]),
                WaitKind::Mutex,
                site("main.run", 4),
            ),
            // One whose own frames reach user code.
            (
                key(1, [7, 8, 9, 5], [8, 12, 0, 0]),
                WaitKind::Mutex,
                site("main.serve", 5),
            ),
            // A WaitGroup wait parked as plain "semacquire"; a plain semaphore.
            (
                key(0, [7, 8, 3, 4], [8, 3, 4, 0]),
                WaitKind::Waitgroup,
                site("main.run", 4),
            ),
            (
                key(0, [7, 8, 9, 0], [8, 13, 0, 0]),
                WaitKind::Semaphore,
                site("main.serve", 13),
            ),
            // A channel receive; a park with no user frame at all.
            (
                key(2, [7, 12, 0, 0], [0; EVENT_FRAMES]),
                WaitKind::ChanRecv,
                site("main.serve", 12),
            ),
            (
                key(2, [7, 8, 0, 0], [0; EVENT_FRAMES]),
                WaitKind::ChanRecv,
                None,
            ),
        ];
        for (k, kind, site) in cases {
            assert_eq!(kernel_wait_site(&decoder, &k), Some((kind, site)), "{k:?}");
            // The accountant names the park event with the same frames alike.
            let park = observe(
                &decoder,
                &Event {
                    kind: kind::PARK,
                    reason: k.reason as u8,
                    frames: k.park_frames,
                    object: 0x1000,
                    ..Event::default()
                },
            );
            if let Op::Park { reason, .. } = &park.op {
                assert_eq!(WaitKind::from_reason(reason), Some(kind), "{k:?}");
            }
        }
        assert_eq!(
            kernel_wait_site(&decoder, &key(3, [7, 12, 0, 0], [0; 4])),
            None
        );
    }

    #[test]
    fn cached_observations_equal_uncached_ones() {
        let decoder = Lines(&[
            "runtime.gopark",
            "sync.(*WaitGroup).Wait",
            "main.run",
            "main.run.deferwrap1",
        ]);
        let event = |kind: u16, reason: u8, frames: [u64; EVENT_FRAMES]| Event {
            ts_ns: 7,
            goid: 3,
            peer_goid: 4,
            object: 0x1000,
            kind,
            reason,
            frames,
            ..Event::default()
        };
        let events = [
            event(kind::PARK, 0, [4, 5, 6, 0]),
            event(kind::PARK, 0, [4, 6, 0, 0]),
            event(kind::PARK, 2, [4, 6, 0, 0]),
            event(kind::LOCK, 0, [4, 7, 6, 0]),
            event(kind::UNLOCK, 0, [4, 7, 6, 0]),
            event(kind::WAKE, 0, [0; EVENT_FRAMES]),
            event(kind::RLOCK_WAIT, 0, [4, 5, 6, 0]),
        ];
        let mut observer = Observer::new();
        for _ in 0..2 {
            for e in &events {
                assert_eq!(observer.observe(&decoder, e), observe(&decoder, e));
            }
        }
        let o = observer.observe(&decoder, &events[0]);
        assert_eq!(
            o.op,
            Op::Park {
                reason: "sync.WaitGroup.Wait".into(),
                object: "0x1000".into()
            }
        );
        assert_eq!(*o.stack, [frame("main.run", 6)]);
        // The defer wrapper followed by its function: the function's frame alone.
        let o = observer.observe(&decoder, &events[3]);
        assert_eq!(*o.stack, [frame("main.run", 6)]);
        let o = observer.observe(&decoder, &events[2]);
        assert!(matches!(o.op, Op::Park { ref object, .. } if object == "0xff8"));
    }

    #[test]
    fn deferred_unlock_wrappers_are_their_functions_sites() {
        let stack = vec![
            frame("net/http.(*Transport).queueForIdleConn.deferwrap1", 10),
            frame("net/http.(*Transport).queueForIdleConn", 12),
            frame("net/http.(*Transport).getConn", 40),
        ];
        let names = |s: Vec<Frame>| s.into_iter().map(|f| f.function).collect::<Vec<_>>();
        assert_eq!(
            names(unwrap_deferwraps(stack)),
            vec![
                "net/http.(*Transport).queueForIdleConn",
                "net/http.(*Transport).getConn"
            ]
        );
        // Run by deferreturn: the wrapper's caller is out of the captured frames.
        let stack = vec![
            frame("net/http.(*Transport).tryPutIdleConn.deferwrap2", 20),
            frame("runtime.deferreturn", 1),
        ];
        assert_eq!(
            names(unwrap_deferwraps(stack)),
            vec![
                "net/http.(*Transport).tryPutIdleConn",
                "runtime.deferreturn"
            ]
        );
        let plain = vec![frame("main.deferwrapper", 1), frame("main.f.func1", 2)];
        assert_eq!(names(unwrap_deferwraps(plain.clone())), names(plain));
    }

    #[test]
    fn cond_waker_site_is_the_wakers_code_at_its_next_stop() {
        let mut a = Accountant::new(true);
        // Two subscribers wait on a Cond; goroutine 9 broadcasts (no release event: nothing
        // probes Signal/Broadcast), then sleeps in its loop.
        a.feed(&park(
            100,
            1,
            "sync.Cond.Wait",
            Some(frame("main.await", 10)),
        ));
        a.feed(&park(
            110,
            2,
            "sync.Cond.Wait",
            Some(frame("main.await", 10)),
        ));
        a.feed(&wake(500, 9, 1));
        a.feed(&wake(510, 9, 2));
        assert!(
            a.by_holder.is_empty(),
            "charged once the waker's code is known"
        );
        assert_eq!(
            a.by_site.len(),
            1,
            "the waits themselves are accounted at once"
        );
        let sleep = Obs {
            stack: vec![frame("time.Sleep", 1), frame("main.publish", 30)].into(),
            ..park(520, 9, "sleep", None)
        };
        a.feed(&sleep);
        let holders: Vec<(&str, u64)> = a
            .by_holder
            .iter()
            .map(|((_, f), s)| (f.function.as_str(), s.hist.total_ns))
            .collect();
        assert_eq!(holders, vec![("main.publish", 400 + 390 + 10)]);
        // A waker that never shows up again is charged to the unknown site at the end.
        a.feed(&park(
            600,
            3,
            "sync.Cond.Wait",
            Some(frame("main.await", 10)),
        ));
        a.feed(&wake(700, 11, 3));
        a.flush_deferred();
        assert!(
            a.by_holder
                .keys()
                .any(|(k, f)| *k == WaitKind::Cond && f.function == UNKNOWN_SITE)
        );
    }

    #[test]
    fn histogram_buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 31, 32, 1000, 123_456, 10_000_000_000] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            last = b;
            let hi = bucket_high(b);
            assert!(hi >= v, "{v} above its bucket's bound {hi}");
            assert!(
                hi as f64 <= v as f64 * (1.0 + 1.0 / 16.0) + 1.0,
                "{v}: {hi}"
            );
        }
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count, 1000);
        assert_eq!(h.max_ns, 1_000_000);
        assert_eq!(h.total_ns, 500_500_000);
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.07, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.07, "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    /// A holder takes a mutex; two waiters block in lockSlow; the holder's unlock wakes one,
    /// whose unlock wakes the other.
    #[test]
    fn mutex_waits_are_charged_to_the_waiting_site_and_the_releasing_holder() {
        let mut a = Accountant::new(true);
        let wait_site = frame("main.post", 10);
        let holder_site = frame("main.compact", 20);
        let seq = vec![
            obs(
                100,
                2,
                Op::Intent {
                    intent: Intent::Mutex,
                    object: "0xmu".into(),
                },
                Some(wait_site.clone()),
            ),
            obs(
                101,
                2,
                Op::Intent {
                    intent: Intent::Sema,
                    object: "0xmu4".into(),
                },
                Some(wait_site.clone()),
            ),
            park(102, 2, "sync.Mutex.Lock", None),
            obs(
                200,
                3,
                Op::Intent {
                    intent: Intent::Mutex,
                    object: "0xmu".into(),
                },
                Some(wait_site.clone()),
            ),
            park(202, 3, "sync.Mutex.Lock", Some(wait_site.clone())),
            obs(
                1000,
                1,
                Op::Release {
                    object: "0xmu".into(),
                },
                Some(holder_site.clone()),
            ),
            wake(1002, 1, 2),
            // g2 runs its critical section and unlocks: its release names main.post.
            obs(
                1500,
                2,
                Op::Release {
                    object: "0xmu".into(),
                },
                Some(frame("main.post", 12)),
            ),
            wake(1502, 2, 3),
        ];
        for o in &seq {
            a.feed(o);
        }
        assert_eq!(a.waits.len(), 2);
        assert_eq!(a.waits[0].delay_ns, 900);
        assert_eq!(a.waits[0].object, "0xmu");
        assert_eq!(a.waits[0].waker_goid, 1);
        assert_eq!(a.waits[1].delay_ns, 1300);
        let r = a.report(10);
        assert_eq!(r.sites.len(), 1);
        assert_eq!(r.sites[0].kind, WaitKind::Mutex);
        assert_eq!(r.sites[0].stats.count, 2);
        assert_eq!(r.sites[0].stats.total_ns, 2200);
        assert_eq!(r.sites[0].stats.max_ns, 1300);
        assert!(r.sites[0].key.starts_with("main.post main.go:10"));
        // Holders: compact held the lock while both waited (900 + 800); post (line 12) only
        // while g3 waited after compact's release (500).
        assert_eq!(r.holders.len(), 2);
        assert!(r.holders[0].key.starts_with("main.compact"));
        assert_eq!(r.holders[0].stats.total_ns, 1700);
        assert_eq!(r.holders[0].stats.count, 2);
        assert!(r.holders[1].key.starts_with("main.post main.go:12"));
        assert_eq!(r.holders[1].stats.total_ns, 500);
        assert_eq!(a.charges.len(), 3);
        let charged: u64 = a.charges.iter().map(|c| c.ns).sum();
        assert_eq!(charged, 2200, "every waited ns charged once");
        assert_eq!(r.objects[0].key, "0xmu");
        assert_eq!(r.objects[0].stats.total_ns, 2200);
    }

    #[test]
    fn non_contention_parks_and_unmatched_wakes_are_not_counted() {
        let mut a = Accountant::new(true);
        a.feed(&park(10, 5, "sleep", Some(frame("main.tick", 1))));
        a.feed(&wake(20, 0, 5));
        // Parked before we attached: no start.
        a.feed(&wake(30, 4, 6));
        assert!(a.waits.is_empty());
        assert_eq!(a.unmatched_wakes, 1);
        // A contended wait replaced by a sleep park (e.g. a missed wake): dropped.
        a.feed(&park(40, 7, "chan receive", Some(frame("main.loop", 3))));
        a.feed(&park(50, 7, "sleep", None));
        a.feed(&wake(60, 0, 7));
        assert!(a.waits.is_empty());
    }

    #[test]
    fn channel_waits_use_the_park_site_and_a_stale_release_is_not_the_waker_site() {
        let mut a = Accountant::new(true);
        // The producer released something long ago, then was woken (new run slice).
        a.feed(&obs(
            5,
            9,
            Op::Release {
                object: "0xold".into(),
            },
            Some(frame("main.old", 1)),
        ));
        a.feed(&wake(8, 0, 9));
        a.feed(&park(
            10,
            8,
            "chan receive",
            Some(frame("main.consume", 30)),
        ));
        let mut w = wake(110, 9, 8);
        w.stack = vec![frame("main.produce", 40)].into();
        a.feed(&w);
        assert_eq!(a.waits.len(), 1);
        assert_eq!(a.waits[0].kind, WaitKind::ChanRecv);
        assert_eq!(a.waits[0].delay_ns, 100);
        assert_eq!(a.waits[0].waker_stack, vec![frame("main.produce", 40)]);
        assert_eq!(a.waits[0].object, "0xroot");
    }

    #[test]
    fn a_gap_drops_waits_in_flight_and_is_reported() {
        let mut a = Accountant::new(true);
        a.feed(&park(10, 2, "sync.Mutex.Lock", Some(frame("main.a", 1))));
        a.feed(&park(12, 3, "sync.Mutex.Lock", Some(frame("main.a", 1))));
        assert_eq!(a.waiting_now().values().next(), Some(&(2, 10)));
        a.gap_start("park", 20);
        a.gap_end("park", 50);
        a.feed(&wake(60, 1, 2));
        assert!(a.waits.is_empty());
        let r = a.report(5);
        assert_eq!(
            r.gaps,
            vec![Gap {
                group: "park".into(),
                from_ns: 20,
                to_ns: Some(50)
            }]
        );
        assert_eq!(r.unmatched_wakes, 1);
    }

    #[test]
    fn wake_by_the_scheduler_is_attributed_to_the_scheduler() {
        let mut a = Accountant::new(false);
        a.feed(&park(10, 2, "select", Some(frame("main.loop", 7))));
        a.feed(&wake(510, 0, 2));
        let r = a.report(5);
        assert_eq!(r.holders[0].key, SCHEDULER_SITE);
        assert_eq!(r.sites[0].peers[0].delay_ns, 500);
        assert!(a.waits.is_empty(), "not kept");
    }

    #[test]
    fn every_blocking_reason_maps_to_a_kind() {
        for (r, k) in [
            ("sync.Mutex.Lock", WaitKind::Mutex),
            ("sync.RWMutex.RLock", WaitKind::RwmutexRead),
            ("sync.RWMutex.Lock", WaitKind::RwmutexWrite),
            ("sync.WaitGroup.Wait", WaitKind::Waitgroup),
            ("sync.Cond.Wait", WaitKind::Cond),
            ("semacquire", WaitKind::Semaphore),
            ("chan receive", WaitKind::ChanRecv),
            ("chan send", WaitKind::ChanSend),
            ("select", WaitKind::Select),
        ] {
            assert_eq!(WaitKind::from_reason(r), Some(k));
        }
        for r in [
            "sleep",
            "IO wait",
            "chan receive (nil chan)",
            "select (no cases)",
        ] {
            assert_eq!(WaitKind::from_reason(r), None, "{r}");
        }
    }
}
