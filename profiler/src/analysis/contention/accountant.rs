//! Contention accounting over the probes' event stream: for every contended wait (Mutex,
//! RWMutex read/write, WaitGroup, Cond, semaphores, channel send/receive/select) the time from
//! park to wake-up, the waiting site, the object, and the waker (the goroutine whose release
//! readied the waiter, and the site of that release: for a contended lock, the holder that made
//! everyone wait). Aggregated per (kind, waiting site), per (kind, waker site) and per object
//! into histograms.
//!
//! Pure: it consumes the model's observations (built from kernel events by
//! `probes::observe`) and never touches the target. Windows where the governor detached a
//! group are recorded as gaps: waits that straddle a gap are dropped (their start or end is
//! unknown) and the window is marked partial.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::analysis::contention::histogram::Histogram;
use crate::model::Location;
use crate::model::contention::{
    Intent, Obs, Observed, SCHEDULER_SITE, UNKNOWN_CHANNEL_WAKER, UNKNOWN_SITE, site_of,
};
use crate::model::waits::WaitKind;

/// One finished wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub kind: WaitKind,
    pub goid: u64,
    pub object: String,
    pub start_ns: u64,
    pub delay_ns: u64,
    /// The waiting site and its callers (as far as captured).
    pub stack: Vec<Location>,
    pub waker_goid: u64,
    /// The waker's release site and its callers; empty when unknown.
    pub waker_stack: Vec<Location>,
}

/// The holder/waker site key of a wake: the release site, the scheduler, or why it is unknown
/// (a channel waker's site comes from the channels group's events only: runtime.ready runs on
/// the system stack, too deep below the user's frame for the event's few return addresses).
pub fn waker_site(kind: WaitKind, waker_goid: u64, stack: &[Location]) -> Location {
    if waker_goid == 0 {
        return site_of(&[], SCHEDULER_SITE);
    }
    let unknown = match kind {
        WaitKind::ChanRecv | WaitKind::ChanSend | WaitKind::Select => UNKNOWN_CHANNEL_WAKER,
        _ => UNKNOWN_SITE,
    };
    site_of(stack, unknown)
}

#[derive(Clone, Debug)]
struct Pending {
    kind: WaitKind,
    start_ns: u64,
    object: String,
    stack: Arc<[Location]>,
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
    pub waiting_site: Location,
    pub waker_goid: u64,
    /// The release site and its callers; empty when unknown.
    pub waker_stack: Vec<Location>,
    pub ns: u64,
}

#[derive(Clone, Debug, Default)]
struct GState {
    pending: Option<Pending>,
    /// A park of this goroutine was seen (its later wakes are not from before the window).
    park_seen: bool,
    /// Latest slow-path intents: (object, stack) per intent kind.
    intents: HashMap<u8, (String, Arc<[Location]>)>,
    /// Latest release in the current run slice: (ts, stack).
    release: Option<(u64, Arc<[Location]>)>,
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
    pub peers: HashMap<Location, u64>,
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
    pub by_site: HashMap<(WaitKind, Location), SiteStats>,
    pub by_holder: HashMap<(WaitKind, Location), SiteStats>,
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
fn code_of(stack: &[Location]) -> Vec<Location> {
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
            if !code.is_empty() || matches!(o.op, Observed::Park { .. }) {
                for mut c in self.deferred.remove(&o.goid).unwrap_or_default() {
                    c.waker_stack = code.clone();
                    self.charge(c);
                }
            }
        }
        match &o.op {
            Observed::Park { kind, object } => {
                self.goroutines.entry(o.goid).or_default().park_seen = true;
                let Some(kind) = *kind else {
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
            Observed::Intent { intent, object } => {
                let g = self.goroutines.entry(o.goid).or_default();
                g.intents
                    .insert(intent_slot(*intent), (object.clone(), o.stack.clone()));
            }
            Observed::Release { .. } => {
                let g = self.goroutines.entry(o.goid).or_default();
                if !o.stack.is_empty() {
                    g.release = Some((o.ts_ns, o.stack.clone()));
                }
            }
            Observed::Wake { woken } => {
                let waker_stack: Arc<[Location]> = if o.goid == 0 {
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
            Observed::Other => {}
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
    pub fn waiting_now(&self) -> BTreeMap<(WaitKind, Location), (u64, u64)> {
        let mut out: BTreeMap<(WaitKind, Location), (u64, u64)> = BTreeMap::new();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str, line: u32) -> Location {
        Location {
            function: f.into(),
            file: "/src/app/main.go".into(),
            line,
        }
    }

    fn obs(ts: u64, goid: u64, op: Observed, site: Option<Location>) -> Obs {
        Obs {
            ts_ns: ts,
            goid,
            op,
            stack: site.into_iter().collect(),
        }
    }

    fn park(ts: u64, g: u64, reason: &str, site: Option<Location>) -> Obs {
        obs(
            ts,
            g,
            Observed::Park {
                kind: WaitKind::from_reason(reason),
                object: "0xroot".into(),
            },
            site,
        )
    }

    fn wake(ts: u64, waker: u64, woken: u64) -> Obs {
        obs(ts, waker, Observed::Wake { woken }, None)
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
                Observed::Intent {
                    intent: Intent::Mutex,
                    object: "0xmu".into(),
                },
                Some(wait_site.clone()),
            ),
            obs(
                101,
                2,
                Observed::Intent {
                    intent: Intent::Sema,
                    object: "0xmu4".into(),
                },
                Some(wait_site.clone()),
            ),
            park(102, 2, "sync.Mutex.Lock", None),
            obs(
                200,
                3,
                Observed::Intent {
                    intent: Intent::Mutex,
                    object: "0xmu".into(),
                },
                Some(wait_site.clone()),
            ),
            park(202, 3, "sync.Mutex.Lock", Some(wait_site.clone())),
            obs(
                1000,
                1,
                Observed::Release {
                    object: "0xmu".into(),
                },
                Some(holder_site.clone()),
            ),
            wake(1002, 1, 2),
            // g2 runs its critical section and unlocks: its release names main.post.
            obs(
                1500,
                2,
                Observed::Release {
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
            Observed::Release {
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
}
