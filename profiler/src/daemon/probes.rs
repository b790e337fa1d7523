//! Probes in the daemon (`--probes`): one probe session per followed process, on its own thread,
//! under the overhead governor like `parkscope profile`, feeding cumulative wait-time histograms
//! per (kind, waiting site). Dropping the watch stops the session, which detaches every probe.
//!
//! By default the kernel times the waits and sums them per (reason, site addresses)
//! (`report_mode::AGGREGATE`): no event crosses the ring buffer, and the release-side probes
//! are not attached at all. `--probe-events` sends every event to userspace instead, as
//! `parkscope profile` does (the same histograms; for comparison).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::{info, warn};

use profiler_common::{WaitKey, WaitTotals};

use crate::analysis::contention::Accountant;
use crate::model::Location;
use crate::model::contention::UNKNOWN_SITE;
use crate::probes::ProbeGroup;
use crate::probes::governor::Action;
use crate::probes::observe::{Observer, kernel_wait_site};
use crate::probes::session::{self, Output, TraceOptions};

/// Upper bounds of the wait-time buckets, in seconds: a contended mutex hand-off is
/// microseconds, a slow holder milliseconds to seconds. The kernel's (`WAIT_BOUNDS_NS`), so
/// its counts are exported as they are.
pub const BUCKETS_S: [f64; 10] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0, 10.0];

/// Cumulative wait times of one (kind, site).
#[derive(Clone, Debug, Default)]
pub struct WaitHistogram {
    pub count: u64,
    pub sum_ns: u64,
    /// Waits at or under each bound of [`BUCKETS_S`] (cumulative, as Prometheus wants them).
    pub le: [u64; BUCKETS_S.len()],
}

impl WaitHistogram {
    pub fn observe(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        let s = ns as f64 / 1e9;
        for (i, bound) in BUCKETS_S.iter().enumerate() {
            if s <= *bound {
                self.le[i] += 1;
            }
        }
    }

    /// Add one in-kernel aggregate (its buckets are per bound, not cumulative). The count is
    /// the buckets' sum, not the kernel's count field: a per-CPU value read while a wait is
    /// being added may have one without the other, and Prometheus wants count == +Inf bucket.
    pub fn add(&mut self, totals: &WaitTotals) {
        self.count += totals.buckets.iter().sum::<u64>();
        self.sum_ns = self.sum_ns.saturating_add(totals.total_ns);
        let mut below = 0;
        for (le, n) in self.le.iter_mut().zip(totals.buckets) {
            below += n;
            *le += below;
        }
    }
}

/// The histogram key of a waiting site: "function file:line", or the unknown-site placeholder.
fn site_label(site: Option<&Location>) -> String {
    site.map(|f| format!("{} {}:{}", f.function, f.file, f.line))
        .unwrap_or_else(|| UNKNOWN_SITE.to_string())
}

/// What one process's probe session has seen so far.
#[derive(Clone, Debug, Default)]
pub struct ProbeStats {
    /// Keyed by (wait kind, "function file:line" of the waiting site).
    pub waits: BTreeMap<(&'static str, String), WaitHistogram>,
    pub events: u64,
    pub lost: u64,
    /// Kernel-timed mode: contended wake-ups whose park was not seen (see
    /// `Output::KernelWaits`).
    pub untimed: u64,
    /// Probe hits per group so far (every hit costs the target, event or not).
    pub hits: BTreeMap<&'static str, u64>,
    pub detaches: BTreeMap<&'static str, u64>,
    pub detached_now: BTreeSet<&'static str>,
    /// The session has attached its groups (after loading and calibrating) and not yet
    /// detached them: before that, a group is not attached, whatever the governor says.
    pub attached: bool,
    pub groups: Vec<&'static str>,
    /// Why the session ended early (it could not attach, or failed).
    pub error: Option<String>,
}

pub struct ProbeWatch {
    stop: Arc<AtomicBool>,
    pub stats: Arc<Mutex<ProbeStats>>,
    thread: Option<JoinHandle<()>>,
}

impl ProbeWatch {
    /// `aggregate`: time the waits in the kernel (see the module doc) rather than from events.
    /// With `aggregate`, groups the kernel-timed mode has no program of (lifecycle, channels)
    /// are left out: attached, they would report nothing.
    pub fn start(pid: u32, groups: Vec<ProbeGroup>, budget: f64, aggregate: bool) -> ProbeWatch {
        let groups: Vec<ProbeGroup> = groups
            .into_iter()
            .filter(|g| !aggregate || crate::probes::groups::aggregates(*g))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ProbeStats {
            groups: groups.iter().map(|g| g.name()).collect(),
            ..ProbeStats::default()
        }));
        let mut opts = TraceOptions::new(pid, groups);
        opts.raw = true;
        opts.aggregate = aggregate;
        opts.budget = budget;
        opts.stop = Some(stop.clone());
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("probes-{pid}"))
            .spawn(move || run(opts, shared))
            .ok();
        ProbeWatch {
            stop,
            stats,
            thread,
        }
    }
}

impl Drop for ProbeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The session notices within one drain period (50 ms) and detaches its probes.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(opts: TraceOptions, stats: Arc<Mutex<ProbeStats>>) {
    let pid = opts.pid;
    let mut acc = Accountant::new(true);
    let mut obs = Observer::new();
    // Kernel wait keys are few (return-address sets), named once each.
    let mut names: HashMap<WaitKey, Option<(&'static str, String)>> = HashMap::new();
    let result = session::run(&opts, |item| {
        match &item {
            Output::KernelWaits {
                waits,
                untimed,
                decoder,
            } => {
                // Cumulative in the kernel: the histograms are rebuilt from the totals.
                let mut by_site: BTreeMap<(&'static str, String), WaitHistogram> = BTreeMap::new();
                for (key, totals) in waits.iter() {
                    let named = names.entry(*key).or_insert_with(|| {
                        kernel_wait_site(*decoder, key)
                            .map(|(kind, site)| (kind.name(), site_label(site.as_ref())))
                    });
                    if let Some(site) = named.clone() {
                        by_site.entry(site).or_default().add(totals);
                    }
                }
                let mut s = stats.lock().unwrap();
                s.waits = by_site;
                s.untimed = *untimed;
            }
            Output::Raw { event, decoder } => {
                acc.feed(&obs.observe(*decoder, event));
                stats.lock().unwrap().events += 1;
            }
            Output::Notice(n) => {
                let mut s = stats.lock().unwrap();
                match &n.action {
                    Some(Action::Detach { group, .. }) => {
                        *s.detaches.entry(group.name()).or_default() += 1;
                        s.detached_now.insert(group.name());
                        warn!(pid, group = group.name(), "{}", n.message);
                    }
                    Some(Action::Reattach { group }) => {
                        s.detached_now.remove(group.name());
                        info!(pid, group = group.name(), "{}", n.message);
                    }
                    None if n.notice == "drops" => {
                        s.lost += leading_number(&n.message);
                    }
                    None if n.notice == "attached" => {
                        s.attached = true;
                        info!(pid, "{}", n.message);
                    }
                    None if n.notice == "detached" => s.attached = false,
                    None => {}
                }
            }
            Output::Tick { .. } => {
                // Finished waits go into the histograms; the accountant keeps none of them.
                let finished = std::mem::take(&mut acc.waits);
                acc.charges.clear();
                if !finished.is_empty() {
                    let mut s = stats.lock().unwrap();
                    for w in finished {
                        let site = site_label(w.stack.first());
                        s.waits
                            .entry((w.kind.name(), site))
                            .or_default()
                            .observe(w.delay_ns);
                    }
                }
            }
            Output::Hits(per_group) => {
                let mut s = stats.lock().unwrap();
                for (group, n) in per_group.iter() {
                    s.hits.insert(group.name(), *n);
                }
            }
            Output::Event(_) => {}
        }
    });
    match result {
        Ok(summary) => info!(pid, end = %summary.end, events = summary.events, "probes detached"),
        Err(e) => {
            warn!(pid, error = %e, "probes not attached");
            stats.lock().unwrap().error = Some(e.to_string());
        }
    }
}

/// "123 events lost: …" → 123.
fn leading_number(message: &str) -> u64 {
    message
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Prometheus text for the wait histograms, keyed by (pid, executable, kind, site). Written by
/// hand: the series are rebuilt from the daemon's state at each scrape, which the client
/// library's histograms (observe-only) cannot do.
pub fn render_wait_histograms(
    waits: &BTreeMap<(String, String, &'static str, String), WaitHistogram>,
) -> String {
    let mut out = String::new();
    if waits.is_empty() {
        return out;
    }
    out.push_str(
        "# HELP parkscope_wait_seconds Time goroutines waited on contended locks, channels, \
         wait groups and conds (park to wake-up, from the probes), by kind and waiting site.\n",
    );
    out.push_str("# TYPE parkscope_wait_seconds histogram\n");
    for ((pid, exe, kind, site), h) in waits {
        let labels = format!(
            "pid=\"{}\",executable=\"{}\",kind=\"{}\",site=\"{}\"",
            escape(pid),
            escape(exe),
            escape(kind),
            escape(site)
        );
        for (bound, n) in BUCKETS_S.iter().zip(h.le) {
            let _ = writeln!(
                out,
                "parkscope_wait_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "parkscope_wait_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "parkscope_wait_seconds_sum{{{labels}}} {}",
            h.sum_ns as f64 / 1e9
        );
        let _ = writeln!(out, "parkscope_wait_seconds_count{{{labels}}} {}", h.count);
    }
    out
}

/// Label value escaping of the text format: backslash, double quote, newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's per-bucket counts become the same cumulative histogram as the waits
    /// observed one by one in userspace.
    #[test]
    fn kernel_totals_add_up_like_observed_waits() {
        let waits = [0, 500, 1_000, 1_001, 2_000_000, 50_000_000, 20_000_000_000];
        let mut observed = WaitHistogram::default();
        let mut totals = WaitTotals::default();
        for ns in waits {
            observed.observe(ns);
            totals.count += 1;
            totals.total_ns += ns;
            totals.buckets[profiler_common::wait_bucket(ns)] += 1;
        }
        let mut added = WaitHistogram::default();
        added.add(&totals);
        assert_eq!(
            (added.count, added.sum_ns, added.le),
            (observed.count, observed.sum_ns, observed.le)
        );
        for (s, ns) in BUCKETS_S.iter().zip(profiler_common::WAIT_BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
    }

    #[test]
    fn histograms_are_cumulative_and_render_as_prometheus_text() {
        let mut h = WaitHistogram::default();
        h.observe(500); // 0.5 µs
        h.observe(2_000_000); // 2 ms
        h.observe(20_000_000_000); // 20 s: only +Inf
        assert_eq!(h.count, 3);
        assert_eq!(h.le[0], 1);
        assert_eq!(h.le[3], 1); // ≤ 1 ms
        assert_eq!(h.le[4], 2); // ≤ 10 ms
        assert_eq!(h.le[BUCKETS_S.len() - 1], 2);
        let waits = BTreeMap::from([(
            (
                "7".to_string(),
                "/bin/svc".to_string(),
                "mutex",
                "main.post \"x\".go:9".to_string(),
            ),
            h,
        )]);
        let text = render_wait_histograms(&waits);
        assert!(text.starts_with("# HELP parkscope_wait_seconds "), "{text}");
        assert!(
            text.contains(
                "parkscope_wait_seconds_bucket{pid=\"7\",executable=\"/bin/svc\",kind=\"mutex\",site=\"main.post \\\"x\\\".go:9\",le=\"0.01\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains(",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("parkscope_wait_seconds_sum{"), "{text}");
        assert!(render_wait_histograms(&BTreeMap::new()).is_empty());
        assert_eq!(
            leading_number("12 events lost: the ring buffer was full"),
            12
        );
    }
}
