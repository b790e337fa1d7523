//! `cargo xtask bench contention`: what contention profiling costs a Go program, parkscope's
//! against Go's own, on a contended mutex and on an HTTP service under load, in the same run.
//!
//! Per workload, two processes of the same fixture: one plain, one with Go's in-process mutex and
//! block profiling at rate 1 (BENCH_GO_PROFILING=1). Only one runs at a time (the other is
//! SIGSTOPped), and each round measures, one after the other: the plain process alone
//! (baseline); the plain process with `parkscope profile --probes park,locks` attached; under
//! `parkscope daemon --probes locks,park` (waits timed in the kernel); under the same daemon with
//! `--probe-events` (every event to userspace); and the Go-profiling process. Windows as in
//! `bench probes`; the report gives the median over rounds of each window against the baseline
//! of its round. Workloads: bench_mutex (4 workers on one sync.Mutex) and bench_http (a JSON
//! API on net/http with a mutex-protected cache and a fan-out handler, loaded by 8 in-process
//! keep-alive clients). Results go to
//! target/bench/contention.{md,json}.
//!
//! Accuracy, in the same run: per workload, ACCURACY_ROUNDS fresh processes with Go's profiling
//! off until the window (BENCH_GO_PROFILING=window): `parkscope profile` is attached, Go's block
//! and mutex profiling are turned on (SIGUSR1) when it reports the attach, and ACCURACY_WINDOW
//! later turned off (SIGUSR2, which also writes the profiles of that window) right before
//! parkscope gets its SIGINT. The
//! sites are compared as the contention e2e tests do (first frame outside runtime, sync and
//! internal, through `go tool pprof -traces`): how many of Go's top-5 waiting sites (block
//! profile) are in parkscope's top 5, and parkscope/Go total delay of each of Go's top-5 sites;
//! likewise parkscope's holder sites of sync waits against Go's mutex profile (Unlock stacks).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::bench::{Fixture, SKIP, WINDOW, median, parkscope_bin};
use crate::cmd;

/// Fresh processes per workload for the accuracy comparison (Go's profiles only accumulate).
const ACCURACY_ROUNDS: usize = 3;
/// Each accuracy window: from parkscope's attach to its SIGINT.
const ACCURACY_WINDOW: Duration = Duration::from_secs(3);
/// Sites compared per profile.
const TOP: usize = 5;

const ROUNDS: usize = 5;

/// (fixture, unit of its rate.log, what it is)
const WORKLOADS: &[(&str, &str, &str)] = &[
    (
        "bench_mutex",
        "increments",
        "contended mutex: 4 workers on one sync.Mutex",
    ),
    (
        "bench_http",
        "requests",
        "HTTP service: JSON API on net/http (mutex-protected cache, fan-out handler), \
         8 in-process keep-alive clients",
    ),
];

#[derive(Serialize)]
struct WorkloadResult {
    fixture: String,
    description: String,
    unit: String,
    median_baseline_per_s: f64,
    /// parkscope profile --probes park,locks attached, against the baseline.
    median_parkscope_ratio: f64,
    /// Go's mutex+block profiling at rate 1, against the baseline.
    median_go_profiling_ratio: f64,
    /// `parkscope daemon --probes locks,park`: waits timed in the kernel, no events.
    median_daemon_kernel_ratio: f64,
    /// The same daemon with `--probe-events` (every event to userspace).
    median_daemon_events_ratio: f64,
    parkscope_ratios: Vec<f64>,
    go_profiling_ratios: Vec<f64>,
    daemon_kernel_ratios: Vec<f64>,
    daemon_events_ratios: Vec<f64>,
    accuracy: Accuracy,
}

/// One site of Go's profile against parkscope's over the same windows.
#[derive(Serialize, Clone)]
struct SiteRatio {
    site: String,
    /// Go's delay at the site, summed over the rounds (ns).
    go_ns: f64,
    parkscope_ns: f64,
    /// parkscope / Go, per round (NaN-free: 0 when parkscope did not see the site).
    ratios: Vec<f64>,
    median_ratio: f64,
}

#[derive(Serialize, Default)]
struct Accuracy {
    rounds: usize,
    window_s: f64,
    /// Per round: of Go's top-5 waiting sites (block profile), how many are in parkscope's
    /// top 5 (of `top5_of`: fewer when Go saw fewer sites).
    top5_common: Vec<usize>,
    top5_of: Vec<usize>,
    /// Go's top-5 waiting sites over all rounds, parkscope/Go delay.
    waiting: Vec<SiteRatio>,
    /// Per round, as `top5_common`, for holder sites (kinds mutex and rwmutex) against Go's
    /// mutex profile.
    holders_top5_common: Vec<usize>,
    holders_top5_of: Vec<usize>,
    holders: Vec<SiteRatio>,
    /// Rounds in which the governor detached a group (their numbers are partial, kept).
    partial_rounds: usize,
    /// Per round: events parkscope read, and events the ring buffer dropped (waits lost).
    events: Vec<u64>,
    dropped: Vec<u64>,
    /// Per round: seconds from parkscope's SIGINT to its end notice (it detaches at the
    /// first turn of its loop after the signal, then drains the queue): an upper bound of how
    /// much longer than Go's window parkscope's was.
    end_lag_s: Vec<f64>,
}

/// One accuracy window: (waiting sites, holder sites) per profile, Go's and parkscope's.
struct Window {
    go_block: BTreeMap<String, f64>,
    ours: BTreeMap<String, f64>,
    go_mutex: BTreeMap<String, f64>,
    our_holders: BTreeMap<String, f64>,
    partial: bool,
    end_lag_s: f64,
    events: u64,
    dropped: u64,
}

/// "…: 1234 events, 56 dropped, …" of parkscope profile's last line.
fn events_and_drops(stderr: &str) -> (u64, u64) {
    let number_before = |word: &str| -> u64 {
        stderr
            .lines()
            .rev()
            .find_map(|l| {
                let at = l.find(word)?;
                l[..at].split_whitespace().last()?.parse().ok()
            })
            .unwrap_or(0)
    };
    (number_before(" events,"), number_before(" dropped"))
}

fn is_machinery(function: &str) -> bool {
    function.starts_with("runtime.")
        || function.starts_with("sync.")
        || function.starts_with("internal/")
}

fn parse_value(v: &str) -> anyhow::Result<f64> {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("value {v:?}"))?;
    Ok(n * match unit {
        "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" | "" => 1.0,
        "m" | "min" | "mins" => 60e9,
        "hrs" => 3600e9,
        _ => anyhow::bail!("unit {unit:?} in {v:?}"),
    })
}

/// `go tool pprof -traces -sample_index=delay`: delay (ns) per first user frame, only of the
/// samples whose `kind` label is in `kinds` (None: every sample; Go's profiles have no label).
fn delay_by_site(
    profile: &Path,
    go: &str,
    kinds: Option<&[&str]>,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = cmd::output(
        Command::new("go")
            .args(["tool", "pprof", "-traces", "-sample_index=delay"])
            .arg(profile)
            .env("GOTOOLCHAIN", go),
    )?;
    let mut sites = BTreeMap::new();
    for block in text.split("-----------+").skip(1) {
        let (mut value, mut site, mut kind) = (None, None, String::new());
        for line in block.lines().skip(1) {
            let t = line.trim();
            if let Some(k) = t.strip_prefix("kind:") {
                kind = k.trim().trim_matches(['[', ']']).to_string();
                continue;
            }
            if t.is_empty() || t.contains(":  ") || t.starts_with("---") {
                continue;
            }
            let function = if value.is_none() {
                let (v, f) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
                value = Some(parse_value(v)?);
                f.trim()
            } else {
                t
            };
            let function = function.trim_end_matches(" (inline)");
            if site.is_none() && !function.is_empty() && !is_machinery(function) {
                site = Some(function.to_string());
            }
        }
        if kinds.is_some_and(|k| !k.contains(&kind.as_str())) {
            continue;
        }
        if let (Some(v), Some(s)) = (value, site) {
            *sites.entry(s).or_insert(0.0) += v;
        }
    }
    Ok(sites)
}

fn top(sites: &BTreeMap<String, f64>, n: usize) -> Vec<String> {
    let mut v: Vec<(&String, &f64)> = sites.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    v.into_iter().take(n).map(|(s, _)| s.clone()).collect()
}

/// How many of Go's top-n sites are in parkscope's top n, of how many Go has.
fn common_top(ours: &BTreeMap<String, f64>, go: &BTreeMap<String, f64>) -> (usize, usize) {
    let (a, b) = (top(ours, TOP), top(go, TOP));
    (b.iter().filter(|s| a.contains(s)).count(), b.len())
}

/// Go's top sites over all windows, with parkscope/Go per window.
fn site_ratios(
    windows: &[Window],
    go_of: impl Fn(&Window) -> &BTreeMap<String, f64>,
    ours_of: impl Fn(&Window) -> &BTreeMap<String, f64>,
) -> Vec<SiteRatio> {
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for w in windows {
        for (s, v) in go_of(w) {
            *total.entry(s.clone()).or_default() += v;
        }
    }
    top(&total, TOP)
        .into_iter()
        .map(|site| {
            let mut ratios = Vec::new();
            let (mut go_ns, mut parkscope_ns) = (0.0, 0.0);
            for w in windows {
                let go = go_of(w).get(&site).copied().unwrap_or(0.0);
                let ours = ours_of(w).get(&site).copied().unwrap_or(0.0);
                go_ns += go;
                parkscope_ns += ours;
                if go > 0.0 {
                    ratios.push(ours / go);
                }
            }
            SiteRatio {
                median_ratio: if ratios.is_empty() {
                    0.0
                } else {
                    median(&ratios)
                },
                site,
                go_ns,
                parkscope_ns,
                ratios,
            }
        })
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a process we started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// One accuracy window on a fresh process of `name`.
fn accuracy_window(parkscope: &Path, name: &str, go: &str) -> anyhow::Result<Window> {
    let dir_name = format!("contention-{name}-accuracy");
    let fixture = Fixture::start(name, &dir_name, &[("BENCH_GO_PROFILING", "window")])?;
    let dir = cmd::repo_root().join("target/bench").join(&dir_name);
    let out = dir.join("parkscope.pb.gz");
    let mut child = Command::new(parkscope)
        .args([
            "profile",
            "--probes",
            "park,locks",
            "--budget-percent",
            "100",
        ])
        .args(["--no-calibrate", "--duration", "10m", "-o"])
        .arg(&out)
        .args(["--pid", &fixture.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", parkscope.display()))?;
    let stderr = BufReader::new(child.stderr.take().context("parkscope stderr")?);
    let mut lines = Vec::new();
    // Go's window opens when parkscope reports the attach; both end together, the fixture's
    // SIGUSR2 right before parkscope's SIGINT (its own end notice comes only after it drained
    // what the probes queued, which can take a while on a loaded machine).
    let (fixture_pid, parkscope_pid) = (fixture.pid(), child.id());
    let mut closer = None;
    let mut detached_at = None;
    for line in stderr.lines().map_while(Result::ok) {
        if closer.is_none() && line.starts_with("parkscope: attached") {
            signal(fixture_pid, libc::SIGUSR1);
            closer = Some(std::thread::spawn(move || {
                std::thread::sleep(ACCURACY_WINDOW);
                signal(fixture_pid, libc::SIGUSR2);
                signal(parkscope_pid, libc::SIGINT);
                Instant::now()
            }));
        }
        if line.contains("detached all probes") {
            detached_at = Some(Instant::now());
        }
        lines.push(line);
    }
    let stopped_at = closer.and_then(|c| c.join().ok());
    // From the SIGINT to parkscope's end notice: it detaches at the first turn of its loop
    // after the signal, then drains what the probes queued; this bounds how much longer than
    // Go's its window may have been.
    let end_lag_s = match (stopped_at, detached_at) {
        (Some(s), Some(d)) => d.saturating_duration_since(s).as_secs_f64(),
        _ => 0.0,
    };
    let status = child.wait()?;
    let stderr = lines.join("\n");
    anyhow::ensure!(status.success(), "parkscope profile on {name}: {stderr}");
    let done = dir.join("profiles.done");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done.exists() {
        anyhow::ensure!(Instant::now() < deadline, "{name} never wrote its profiles");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sync_kinds: &[&str] = &["mutex", "rwmutex_read", "rwmutex_write"];
    Ok(Window {
        go_block: delay_by_site(&dir.join("block.pprof"), go, None)?,
        ours: delay_by_site(&out, go, None)?,
        go_mutex: delay_by_site(&dir.join("mutex.pprof"), go, None)?,
        our_holders: delay_by_site(&dir.join("parkscope.holders.pb.gz"), go, Some(sync_kinds))?,
        partial: stderr.contains("partial window"),
        end_lag_s,
        events: events_and_drops(&stderr).0,
        dropped: events_and_drops(&stderr).1,
    })
}

fn accuracy(parkscope: &Path, name: &str) -> anyhow::Result<Accuracy> {
    let go = std::fs::read_to_string(cmd::repo_root().join("target/fixtures/1.26/go-version"))
        .context("target/fixtures/1.26/go-version: run `cargo xtask fixtures`")?
        .trim()
        .to_string();
    let mut windows = Vec::new();
    let mut acc = Accuracy {
        rounds: ACCURACY_ROUNDS,
        window_s: ACCURACY_WINDOW.as_secs_f64(),
        ..Accuracy::default()
    };
    for round in 1..=ACCURACY_ROUNDS {
        let w = accuracy_window(parkscope, name, &go)?;
        let (common, of) = common_top(&w.ours, &w.go_block);
        let (h_common, h_of) = common_top(&w.our_holders, &w.go_mutex);
        eprintln!(
            "bench: {name} accuracy round {round}: top-{TOP} waiting sites in common {common}/{of}, \
             holder sites {h_common}/{h_of}; {} events, {} dropped, end lag {:.2} s{}",
            w.events,
            w.dropped,
            w.end_lag_s,
            if w.partial { " (partial window)" } else { "" }
        );
        acc.top5_common.push(common);
        acc.top5_of.push(of);
        acc.holders_top5_common.push(h_common);
        acc.holders_top5_of.push(h_of);
        acc.partial_rounds += usize::from(w.partial);
        acc.events.push(w.events);
        acc.dropped.push(w.dropped);
        acc.end_lag_s.push(w.end_lag_s);
        windows.push(w);
    }
    acc.waiting = site_ratios(&windows, |w| &w.go_block, |w| &w.ours);
    acc.holders = site_ratios(&windows, |w| &w.go_mutex, |w| &w.our_holders);
    Ok(acc)
}

#[derive(Serialize)]
struct Report {
    go_release: String,
    rounds: usize,
    window_s: f64,
    skip_s: f64,
    workloads: Vec<WorkloadResult>,
}

fn workload(
    parkscope: &std::path::Path,
    name: &str,
    unit: &str,
    description: &str,
) -> anyhow::Result<WorkloadResult> {
    let out = cmd::repo_root().join("target/bench");
    let go_prof = Fixture::start(
        name,
        &format!("contention-{name}-goprof"),
        &[("BENCH_GO_PROFILING", "1")],
    )?;
    go_prof.pause(true);
    let plain = Fixture::start(name, &format!("contention-{name}-plain"), &[])?;
    let profile_out = out.join(format!("contention-{name}-profile.json"));
    let profile_out = profile_out.to_string_lossy();
    let args = [
        "profile",
        "--probes",
        "park,locks",
        "--budget-percent",
        "100",
        "--no-calibrate",
        "--duration",
        "10m",
        "--format",
        "json",
        "-o",
        &profile_out,
    ];
    let daemon = |events: bool| {
        let mut args = vec![
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--no-leaks",
            "--snapshot-interval",
            "3600",
            "--probes",
            "locks,park",
            "--probe-budget-percent",
            "100",
        ];
        if events {
            args.push("--probe-events");
        }
        args
    };
    let (daemon_kernel_args, daemon_events_args) = (daemon(false), daemon(true));
    let (mut baselines, mut ours, mut gos) = (Vec::new(), Vec::new(), Vec::new());
    let (mut kernel_timed, mut event_timed) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let base = plain.baseline()?;
        let (with_parkscope, _) = plain.attached(parkscope, &args)?;
        let (with_daemon_kernel, _) = plain.attached(parkscope, &daemon_kernel_args)?;
        let (with_daemon_events, _) = plain.attached(parkscope, &daemon_events_args)?;
        plain.pause(true);
        go_prof.pause(false);
        let with_go = go_prof.baseline()?;
        go_prof.pause(true);
        plain.pause(false);
        eprintln!(
            "bench: {name} round {round}: baseline {base:.0} {unit}/s, parkscope {:.0}%, \
             Go profiling {:.0}%, daemon kernel-timed {:.0}%, daemon with events {:.0}%",
            with_parkscope / base * 100.0,
            with_go / base * 100.0,
            with_daemon_kernel / base * 100.0,
            with_daemon_events / base * 100.0
        );
        baselines.push(base);
        ours.push(with_parkscope / base);
        gos.push(with_go / base);
        kernel_timed.push(with_daemon_kernel / base);
        event_timed.push(with_daemon_events / base);
    }
    drop(plain);
    drop(go_prof);
    let accuracy = accuracy(parkscope, name)?;
    Ok(WorkloadResult {
        accuracy,
        fixture: name.into(),
        description: description.into(),
        unit: unit.into(),
        median_baseline_per_s: median(&baselines),
        median_parkscope_ratio: median(&ours),
        median_go_profiling_ratio: median(&gos),
        median_daemon_kernel_ratio: median(&kernel_timed),
        median_daemon_events_ratio: median(&event_timed),
        parkscope_ratios: ours,
        go_profiling_ratios: gos,
        daemon_kernel_ratios: kernel_timed,
        daemon_events_ratios: event_timed,
    })
}

pub fn run() -> anyhow::Result<()> {
    let parkscope = parkscope_bin()?;
    let out = cmd::repo_root().join("target/bench");
    let mut report = Report {
        go_release: "1.26".into(),
        rounds: ROUNDS,
        window_s: WINDOW.as_secs_f64(),
        skip_s: SKIP.as_secs_f64(),
        workloads: Vec::new(),
    };
    for &(name, unit, description) in WORKLOADS {
        report
            .workloads
            .push(workload(&parkscope, name, unit, description)?);
    }
    std::fs::write(
        out.join("contention.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let percents = |ratios: &[f64]| {
        ratios
            .iter()
            .map(|r| format!("{:.0}%", r * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut md = format!(
        "# Contention profiling cost, side by side\n\nGo {} fixtures; per workload, {} \
         interleaved rounds of baseline / parkscope / Go-profiling windows ({} s each, the first \
         {} s after attach skipped); medians over rounds, each window against the baseline of \
         its round.\n\n",
        report.go_release, report.rounds, report.window_s, report.skip_s
    );
    for w in &report.workloads {
        md.push_str(&format!(
            "- {} ({}): baseline {:.0} {}/s\n",
            w.fixture, w.description, w.median_baseline_per_s, w.unit
        ));
    }
    md.push_str("\n| workload | mode | throughput vs baseline | rounds |\n|---|---|---|---|\n");
    for w in &report.workloads {
        md.push_str(&format!(
            "| {} | parkscope profile --probes park,locks | {:.0}% | {} |\n\
             | {} | Go mutex+block profiling at rate 1 | {:.0}% | {} |\n\
             | {} | parkscope daemon --probes locks,park (waits timed in the kernel) | {:.0}% | {} |\n\
             | {} | parkscope daemon --probes locks,park --probe-events | {:.0}% | {} |\n",
            w.fixture,
            w.median_parkscope_ratio * 100.0,
            percents(&w.parkscope_ratios),
            w.fixture,
            w.median_go_profiling_ratio * 100.0,
            percents(&w.go_profiling_ratios),
            w.fixture,
            w.median_daemon_kernel_ratio * 100.0,
            percents(&w.daemon_kernel_ratios),
            w.fixture,
            w.median_daemon_events_ratio * 100.0,
            percents(&w.daemon_events_ratios),
        ));
    }
    md.push_str(&format!(
        "\n## Accuracy against Go's own profiles\n\nPer workload, {} fresh processes; in each, Go's \
         block and mutex profiling at rate 1 run while `parkscope profile --probes \
         park,locks` is attached, from its attach for {} s, then both stop. Sites are first frames outside runtime, sync and \
         internal. Waiting sites: parkscope's waiting-site profile against Go's block profile; \
         holder sites: parkscope's holder profile (mutex and rwmutex waits) against Go's mutex \
         profile. Ratios are parkscope/Go total delay at each of Go's top-5 sites (median over \
         the rounds, then each round).\n\n| workload | profile | top-5 sites in common (per round) \
         | parkscope/Go delay at Go's top-5 sites |\n|---|---|---|---|\n",
        ACCURACY_ROUNDS,
        ACCURACY_WINDOW.as_secs_f64()
    ));
    let agreement = |common: &[usize], of: &[usize]| {
        common
            .iter()
            .zip(of)
            .map(|(c, o)| format!("{c}/{o}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratios = |sites: &[SiteRatio]| {
        sites
            .iter()
            .map(|s| {
                format!(
                    "`{}` {:.0}% ({})",
                    s.site,
                    s.median_ratio * 100.0,
                    percents(&s.ratios)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    for w in &report.workloads {
        let a = &w.accuracy;
        md.push_str(&format!(
            "| {} | waiting sites vs block profile | {} | {} |\n\
             | {} | holder sites vs mutex profile | {} | {} |\n",
            w.fixture,
            agreement(&a.top5_common, &a.top5_of),
            ratios(&a.waiting),
            w.fixture,
            agreement(&a.holders_top5_common, &a.holders_top5_of),
            ratios(&a.holders),
        ));
        md.push_str(&format!(
            "| {} | events read / dropped by the ring buffer / end lag (per round) | {} | |\n",
            w.fixture,
            a.events
                .iter()
                .zip(&a.dropped)
                .zip(&a.end_lag_s)
                .map(|((e, d), l)| format!("{e} / {d} / {l:.2} s"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for w in report
        .workloads
        .iter()
        .filter(|w| w.accuracy.partial_rounds > 0)
    {
        md.push_str(&format!(
            "\n{}: the governor detached a group in {} of the accuracy rounds (partial).\n",
            w.fixture, w.accuracy.partial_rounds
        ));
    }
    std::fs::write(out.join("contention.md"), &md)?;
    print!("{md}");
    Ok(())
}
