//! Prometheus metrics, rebuilt from the daemon's current picture at every scrape, so a process
//! that exits disappears from /metrics at once. Every metric is documented in docs/metrics.md.

use std::collections::{BTreeMap, HashSet};

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::daemon::ProcessState;
use crate::daemon::probes::{WaitHistogram, render_wait_histograms};

/// The label value that stands for every series past a metric's cardinality cap.
pub const OVERFLOW: &str = "__overflow__";

pub struct Metrics {
    registry: Registry,
    goroutines: IntGaugeVec,
    leaked: IntGaugeVec,
    deadlocked: IntGaugeVec,
    suspect: IntGaugeVec,
    process_info: IntGaugeVec,
    scan_duration: GaugeVec,
    unstable: IntGaugeVec,
    processes: IntGaugeVec,
    scans: IntCounterVec,
    series_dropped: IntCounterVec,
    probe_events: IntCounterVec,
    probe_hits: IntCounterVec,
    probe_lost: IntCounterVec,
    probe_untimed: IntCounterVec,
    governor_detaches: IntCounterVec,
    probe_group_attached: IntGaugeVec,
    max_series: usize,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

impl Metrics {
    pub fn new(max_series: usize) -> Metrics {
        let registry = Registry::new();
        let goroutines = gauge_vec(
            &registry,
            "parkscope_goroutines",
            "Goroutines by state (the wait reason for parked ones, as Go's dump prints it).",
            &["pid", "executable", "container", "state"],
        );
        let leaked = gauge_vec(
            &registry,
            "parkscope_leaked_goroutines",
            "Goroutines proven leaked (confirmed by two scans), by the site they are parked at.",
            &["pid", "executable", "container", "site"],
        );
        let deadlocked = gauge_vec(
            &registry,
            "parkscope_deadlocked_goroutines",
            "Goroutines deadlocked on locks (a wait cycle through lock holders, or waiting behind one; confirmed by two scans), by the site they are parked at.",
            &["pid", "executable", "container", "site"],
        );
        let suspect = gauge_vec(
            &registry,
            "parkscope_suspect_goroutines",
            "Goroutines in suspect clusters (many parked at one site for long, not proven leaked), by site.",
            &["pid", "executable", "container", "site"],
        );
        let process_info = gauge_vec(
            &registry,
            "parkscope_process_info",
            "One series per followed Go process, always 1.",
            &["pid", "ns_pid", "executable", "container", "go_version"],
        );
        let scan_duration = GaugeVec::new(
            Opts::new(
                "parkscope_scan_duration_seconds",
                "Wall time of the last memory snapshot of the process.",
            ),
            &["pid", "executable"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(scan_duration.clone()))
            .expect("unique metric");
        let unstable = gauge_vec(
            &registry,
            "parkscope_unstable_goroutines",
            "Goroutines that kept changing during the last snapshot (reported without stacks).",
            &["pid", "executable"],
        );
        let processes = gauge_vec(
            &registry,
            "parkscope_processes",
            "Followed Go processes, by whether the last snapshot succeeded.",
            &["result"],
        );
        let scans = IntCounterVec::new(
            Opts::new(
                "parkscope_scans_total",
                "Memory snapshots taken, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(scans.clone()))
            .expect("unique metric");
        let series_dropped = IntCounterVec::new(
            Opts::new(
                "parkscope_series_overflow_total",
                "Series folded into the __overflow__ label because a metric hit its cardinality cap.",
            ),
            &["metric"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(series_dropped.clone()))
            .expect("unique metric");
        let probe_events = counter_vec(
            &registry,
            "parkscope_probe_events_total",
            "Events the probes delivered (with --probes).",
            &["pid", "executable"],
        );
        let probe_hits = counter_vec(
            &registry,
            "parkscope_probe_hits_total",
            "Uprobe hits per probe group (with --probes): each one costs the target a trap.",
            &["pid", "executable", "group"],
        );
        let probe_lost = counter_vec(
            &registry,
            "parkscope_probe_events_lost_total",
            "Events lost because the ring buffer was full (with --probes).",
            &["pid", "executable"],
        );
        let probe_untimed = counter_vec(
            &registry,
            "parkscope_probe_waits_untimed_total",
            "Contended wake-ups whose park the kernel did not see (with --probes, waits timed in \
             the kernel): parked before the probes attached, during a governor gap, or evicted \
             from the kernel's table of pending parks.",
            &["pid", "executable"],
        );
        let governor_detaches = counter_vec(
            &registry,
            "parkscope_governor_detaches_total",
            "Times the overhead governor detached a probe group for going over its CPU budget.",
            &["pid", "executable", "group"],
        );
        let probe_group_attached = gauge_vec(
            &registry,
            "parkscope_probe_group_attached",
            "1 while a probe group is attached, 0 while the governor holds it off.",
            &["pid", "executable", "group"],
        );
        Metrics {
            registry,
            probe_events,
            probe_hits,
            probe_lost,
            probe_untimed,
            governor_detaches,
            probe_group_attached,
            goroutines,
            leaked,
            deadlocked,
            suspect,
            process_info,
            scan_duration,
            unstable,
            processes,
            scans,
            series_dropped,
            max_series,
        }
    }

    pub fn count_scan(&self, ok: bool) {
        self.scans
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Prometheus text exposition of the current state of every followed process.
    pub fn render(&self, processes: &[&ProcessState]) -> String {
        self.goroutines.reset();
        self.leaked.reset();
        self.deadlocked.reset();
        self.suspect.reset();
        self.probe_events.reset();
        self.probe_hits.reset();
        self.probe_lost.reset();
        self.probe_untimed.reset();
        self.governor_detaches.reset();
        self.probe_group_attached.reset();
        let mut wait_series = CappedSeries::new(self.max_series);
        let mut waits: BTreeMap<(String, String, &'static str, String), WaitHistogram> =
            BTreeMap::new();
        self.process_info.reset();
        self.scan_duration.reset();
        self.unstable.reset();
        self.processes.reset();

        let mut goroutine_series = CappedSeries::new(self.max_series);
        let mut leak_series = CappedSeries::new(self.max_series);
        for p in processes {
            let pid = p.candidate.id.pid.to_string();
            let container = p.candidate.container_id.clone().unwrap_or_default();
            let ns_pid = p
                .candidate
                .ns_pid
                .map(|n| n.to_string())
                .unwrap_or_default();
            self.process_info
                .with_label_values(&[
                    pid.as_str(),
                    ns_pid.as_str(),
                    p.candidate.exe.as_str(),
                    container.as_str(),
                    p.go_version.as_str(),
                ])
                .set(1);
            let result = if p.last_error.is_some() {
                "error"
            } else {
                "ok"
            };
            self.processes.with_label_values(&[result]).inc();
            if let Some(report) = &p.leaks {
                let mut by_site: BTreeMap<(&str, String), i64> = BTreeMap::new();
                for f in &report.findings {
                    let site = f
                        .site
                        .as_ref()
                        .map(|s| format!("{} {}:{}", s.function, s.file, s.line))
                        .unwrap_or_else(|| f.wait_reason.clone());
                    *by_site.entry((f.kind, site)).or_default() += f.count as i64;
                }
                for ((kind, site), count) in by_site {
                    let site = leak_series.admit(&[&pid, kind, &site], &site);
                    let gauge = match kind {
                        "deadlocked" => &self.deadlocked,
                        "suspect" => &self.suspect,
                        _ => &self.leaked,
                    };
                    gauge
                        .with_label_values(&[
                            pid.as_str(),
                            p.candidate.exe.as_str(),
                            container.as_str(),
                            site.as_str(),
                        ])
                        .add(count);
                }
            }
            if let Some(watch) = &p.probes {
                let stats = watch.stats.lock().unwrap().clone();
                let exe = p.candidate.exe.as_str();
                self.probe_events
                    .with_label_values(&[pid.as_str(), exe])
                    .inc_by(stats.events);
                self.probe_lost
                    .with_label_values(&[pid.as_str(), exe])
                    .inc_by(stats.lost);
                self.probe_untimed
                    .with_label_values(&[pid.as_str(), exe])
                    .inc_by(stats.untimed);
                for group in &stats.groups {
                    self.probe_hits
                        .with_label_values(&[pid.as_str(), exe, group])
                        .inc_by(stats.hits.get(group).copied().unwrap_or(0));
                    self.governor_detaches
                        .with_label_values(&[pid.as_str(), exe, group])
                        .inc_by(stats.detaches.get(group).copied().unwrap_or(0));
                    self.probe_group_attached
                        .with_label_values(&[pid.as_str(), exe, group])
                        .set(i64::from(
                            stats.attached
                                && stats.error.is_none()
                                && !stats.detached_now.contains(group),
                        ));
                }
                for ((kind, site), h) in stats.waits {
                    let site = wait_series.admit(&[&pid, kind, &site], &site);
                    let merged = waits
                        .entry((pid.clone(), exe.to_string(), kind, site))
                        .or_default();
                    merged.count += h.count;
                    merged.sum_ns += h.sum_ns;
                    for (m, n) in merged.le.iter_mut().zip(h.le) {
                        *m += n;
                    }
                }
            }
            let Some(snapshot) = &p.snapshot else {
                continue;
            };
            self.scan_duration
                .with_label_values(&[pid.as_str(), p.candidate.exe.as_str()])
                .set(p.scan_seconds);
            self.unstable
                .with_label_values(&[pid.as_str(), p.candidate.exe.as_str()])
                .set(snapshot.skipped_unstable as i64);
            let mut by_state: BTreeMap<String, i64> = BTreeMap::new();
            for g in &snapshot.goroutines {
                let state = g
                    .wait_reason
                    .clone()
                    .unwrap_or_else(|| g.status.as_str().to_string());
                *by_state.entry(state).or_default() += 1;
            }
            for (state, count) in by_state {
                let state = goroutine_series.admit(&[&pid, &state], &state);
                self.goroutines
                    .with_label_values(&[
                        pid.as_str(),
                        p.candidate.exe.as_str(),
                        container.as_str(),
                        state.as_str(),
                    ])
                    .add(count);
            }
        }
        if leak_series.overflowed > 0 {
            self.series_dropped
                .with_label_values(&["parkscope_leaked_goroutines"])
                .inc_by(leak_series.overflowed);
        }
        if goroutine_series.overflowed > 0 {
            self.series_dropped
                .with_label_values(&["parkscope_goroutines"])
                .inc_by(goroutine_series.overflowed);
        }
        if wait_series.overflowed > 0 {
            self.series_dropped
                .with_label_values(&["parkscope_wait_seconds"])
                .inc_by(wait_series.overflowed);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        let mut text = String::from_utf8(out).expect("prometheus text is UTF-8");
        text.push_str(&render_wait_histograms(&waits));
        text
    }
}

/// The Prometheus text exposition rewritten as OpenMetrics text: a counter family is named
/// without its `_total` suffix in `# TYPE`/`# HELP` (its samples keep it), and the exposition
/// ends with `# EOF`. Everything else (gauges, labels, escaping of our help texts) reads the
/// same in both formats.
pub fn to_openmetrics(prometheus_text: &str) -> String {
    let mut counters: HashSet<&str> = HashSet::new();
    for line in prometheus_text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name);
        }
    }
    let family = |name: &str| -> String {
        if counters.contains(name) {
            name.strip_suffix("_total").unwrap_or(name).to_string()
        } else {
            name.to_string()
        }
    };
    let mut out = String::with_capacity(prometheus_text.len() + 8);
    for line in prometheus_text.lines() {
        let rewritten = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            Some(format!("{prefix}{} {tail}", family(name)))
        });
        match rewritten {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

/// Admits label sets up to a cap; past it, the variable label becomes `__overflow__`.
pub struct CappedSeries {
    seen: HashSet<String>,
    cap: usize,
    pub overflowed: u64,
}

impl CappedSeries {
    pub fn new(cap: usize) -> CappedSeries {
        CappedSeries {
            seen: HashSet::new(),
            cap,
            overflowed: 0,
        }
    }

    /// `key` identifies the series; returns the value to use for its variable label.
    pub fn admit(&mut self, key: &[&str], value: &str) -> String {
        let key = key.join("\u{1f}");
        if self.seen.contains(&key) {
            return value.to_string();
        }
        if self.seen.len() >= self.cap {
            self.overflowed += 1;
            return OVERFLOW.to_string();
        }
        self.seen.insert(key);
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = "\
# HELP parkscope_scans_total Memory snapshots taken, by result.
# TYPE parkscope_scans_total counter
parkscope_scans_total{result=\"ok\"} 3
# HELP parkscope_goroutines Goroutines by state.
# TYPE parkscope_goroutines gauge
parkscope_goroutines{pid=\"7\",state=\"chan send\"} 2
";
        let om = to_openmetrics(text);
        assert_eq!(
            om,
            "\
# HELP parkscope_scans Memory snapshots taken, by result.
# TYPE parkscope_scans counter
parkscope_scans_total{result=\"ok\"} 3
# HELP parkscope_goroutines Goroutines by state.
# TYPE parkscope_goroutines gauge
parkscope_goroutines{pid=\"7\",state=\"chan send\"} 2
# EOF
"
        );
    }

    #[test]
    fn caps_series_with_an_overflow_bucket() {
        let mut capped = CappedSeries::new(2);
        assert_eq!(capped.admit(&["1", "a"], "a"), "a");
        assert_eq!(capped.admit(&["1", "b"], "b"), "b");
        assert_eq!(capped.admit(&["1", "a"], "a"), "a");
        assert_eq!(capped.admit(&["1", "c"], "c"), OVERFLOW);
        assert_eq!(capped.overflowed, 1);
    }
}
