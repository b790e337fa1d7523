//! `cargo xtask bench probes`: what each probe group costs a Go program on this machine.
//!
//! Side by side, so that a noisy machine (shared cores, other builds) hits both sides alike: for
//! each workload one fixture process runs throughout, and each round measures, per probe group,
//! a baseline window (nothing attached), the group's real programs through `parkscope trace`
//! (budget 100%, so the governor stays out of the way), another baseline window, and the empty
//! eBPF program (one counter increment) at exactly the same attach points (`trace --floor`):
//! the floor a uprobe costs on those very instructions. Probes that fire often enough are then
//! measured alone the same way (`--only-programs`), and a few stack-id variants (the same group
//! with `--stack-ids`) against the plain group. A window is 2 s of the fixture's rate.log,
//! starting 0.5 s after the attach (or after the previous detach, for a baseline).
//!
//! Cost per hit comes from the target's CPU time (every thread's schedstat run time, which
//! includes the traps and the BPF programs, run in the target's context) per unit of work,
//! against the baseline window just before: see `METHOD`. Throughput ratios (window / its
//! baseline) are reported too. Workloads: trace_pingpong (channel ping-pong, the worst case for
//! channel probes), bench_mutex (one contended sync.Mutex) and bench_http (a JSON API on
//! net/http under in-process keep-alive load: a mutex-protected cache, a fan-out handler).
//! Results go to target/bench/probes.{md,json}.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::cmd;

/// Rounds (PARKSCOPE_BENCH_ROUNDS overrides: 1 for a quick look; PARKSCOPE_BENCH_WORKLOAD
/// runs one workload only).
const ROUNDS: usize = 3;
/// Left out of every window: attach, the first probe hits, the previous detach.
pub(crate) const SKIP: Duration = Duration::from_millis(500);
pub(crate) const WINDOW: Duration = Duration::from_secs(2);
/// A probe is also measured alone (real and empty) when its group window saw at least this
/// many hits/s of it: below that its cost is within this machine's noise.
const ALONE_MIN_HITS_PER_S: f64 = 5000.0;

/// (fixture, unit of its rate.log, probe groups measured on it)
const WORKLOADS: &[(&str, &str, &[&str])] = &[
    (
        "trace_pingpong",
        "rallies",
        &["lifecycle", "park", "channels", "locks"],
    ),
    ("bench_mutex", "increments", &["lifecycle", "park", "locks"]),
    (
        "bench_http",
        "requests",
        &["lifecycle", "park", "channels", "locks"],
    ),
];

/// ns/hit is left out of the markdown below this rate (the JSON keeps it).
const NS_PER_HIT_MIN_HITS_PER_S: f64 = 2000.0;

/// Probes always measured alone besides the busy ones: (workload, group, program). newproc1_ret
/// is the fallback of newproc_handoff (the same creates, at newproc1's RETs: single-stepped).
const EXTRA_ALONE: &[(&str, &str, &str)] = &[("bench_http", "lifecycle", "newproc1_ret")];

/// Stack-id variants: (workload, group, programs given stack ids): measured against the same
/// group without stack ids in the same round.
const STACK_VARIANTS: &[(&str, &str, &[&str])] = &[
    ("bench_mutex", "locks", &["semacquire1"]),
    ("bench_http", "locks", &["semacquire1"]),
    ("bench_http", "park", &["gopark"]),
];

/// One measured window: the target's throughput and CPU time, and per-program hit rates.
#[derive(Clone, Debug, Default, Serialize)]
struct Window {
    /// Work units per second (rate.log).
    units_per_s: f64,
    /// Target CPU (all threads, user + system: uprobe traps and BPF programs run in the
    /// target's context) in ns per second of the window.
    cpu_ns_per_s: f64,
    /// (program, hits/s, the program's own BPF run time per hit when reported).
    hits: Vec<(String, f64, Option<f64>)>,
    governor_detached: bool,
}

impl Window {
    fn hits_per_s(&self) -> f64 {
        self.hits.iter().map(|h| h.1).sum()
    }

    /// Extra target CPU per probe hit against `base`: (CPU per unit here − CPU per unit in
    /// the baseline) × units / hits.
    fn ns_per_hit(&self, base: &Window) -> Option<f64> {
        let hits = self.hits_per_s();
        (hits > 0.0 && base.units_per_s > 0.0).then(|| {
            (self.cpu_ns_per_s - self.units_per_s * base.cpu_ns_per_s / base.units_per_s) / hits
        })
    }
}

/// One measured thing (a group, or one probe alone) in one workload: real programs and the
/// empty program at the same attach points, each against the baseline window just before it.
#[derive(Serialize)]
struct Measured {
    workload: String,
    /// The group, and for a probe measured alone its program.
    group: String,
    probe: Option<String>,
    /// "real", "empty" (same attach points), or "stack ids: P" (real, P with stack ids).
    rounds: Vec<Round>,
    median_hits_per_s: f64,
    median_ratio_real: f64,
    median_ratio_empty: f64,
    median_ns_per_hit_real: Option<f64>,
    median_ns_per_hit_empty: Option<f64>,
    /// The real programs' own run time per hit (BPF run-time stats; the trap is not in it).
    median_bpf_run_ns: Option<f64>,
}

#[derive(Serialize)]
struct Round {
    base_real: Window,
    real: Window,
    base_empty: Window,
    empty: Window,
}

/// (group, programs with stack ids, rounds of (baseline, without, with)).
type StackRounds = (
    &'static str,
    &'static [&'static str],
    Vec<(Window, Window, Window)>,
);

#[derive(Serialize)]
struct StackVariant {
    workload: String,
    group: String,
    stack_programs: Vec<String>,
    median_hits_per_s: f64,
    median_ns_per_hit_without: Option<f64>,
    median_ns_per_hit_with: Option<f64>,
    median_ratio_without: f64,
    median_ratio_with: f64,
    /// BPF run time per hit of the programs with stack ids, without and with.
    median_bpf_run_ns_without: Option<f64>,
    median_bpf_run_ns_with: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    floor: String,
    method: String,
    rounds: usize,
    window_s: f64,
    skip_s: f64,
    /// Median baseline throughput per workload, in its rate.log unit per second.
    baselines: Vec<(String, String, f64)>,
    measured: Vec<Measured>,
    stack_ids: Vec<StackVariant>,
}

const METHOD: &str = "ns per hit = (target CPU per unit of work with the probes − the same in \
the baseline window just before) × units / hits. Target CPU is the sum of every thread's \
schedstat run time (user and system: a uprobe's trap, the kernel's emulation or single-step \
and the BPF program all run in the target's context); units are the fixture's rate.log. The \
real programs and the empty program (one per-CPU counter increment, attached with \
`parkscope trace --floor` at exactly the same file offsets) are measured in the same round, \
each right after its own baseline window. BPF run ns is the kernel's own accounting of the \
real programs' run time (bpf_stats), without the trap.";

pub fn run(what: &str) -> anyhow::Result<()> {
    match what {
        "probes" => probes(),
        "contention" => crate::bench_contention::run(),
        "snapshot" => crate::bench_snapshot::run(),
        "leaks" => crate::bench_leaks::run(),
        other => bail!("unknown benchmark {other:?} (known: probes, contention, snapshot, leaks)"),
    }
}

pub(crate) fn parkscope_bin() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("PARKSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let release = cmd::repo_root().join("target/release/parkscope");
            if release.exists() {
                release
            } else {
                cmd::repo_root().join("target/debug/parkscope")
            }
        });
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build parkscope",
        bin.display()
    );
    Ok(bin)
}

pub(crate) fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we started; no memory is shared.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// A fixture process from target/fixtures/1.26/plain, writing rate.log ("unix_ns count" per
/// 100 ms) into its own directory under target/bench. Killed on drop.
pub(crate) struct Fixture {
    child: Child,
    log: PathBuf,
}

impl Fixture {
    pub(crate) fn start(name: &str, dir: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = cmd::repo_root()
            .join("target/fixtures/1.26/plain")
            .join(name);
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run `cargo xtask fixtures --releases 1.26`",
            bin.display()
        );
        let work = cmd::repo_root().join("target/bench").join(dir);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let mut child = Command::new(&bin)
            .env("PARKSCOPE_FIXTURE_OUT", &work)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut ready = String::new();
        BufReader::new(child.stdout.take().context("fixture stdout")?).read_line(&mut ready)?;
        anyhow::ensure!(
            ready.starts_with("PARKSCOPE_READY"),
            "{name} did not get ready"
        );
        let fixture = Fixture {
            child,
            log: work.join("rate.log"),
        };
        std::thread::sleep(Duration::from_secs(1));
        Ok(fixture)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP/SIGCONT: keeps a second instance off the CPUs while another one is measured.
    pub(crate) fn pause(&self, paused: bool) {
        signal(
            self.pid(),
            if paused { libc::SIGSTOP } else { libc::SIGCONT },
        );
    }

    /// Throughput (per second) over one window with nothing attached.
    pub(crate) fn baseline(&self) -> anyhow::Result<f64> {
        let start = now_ns();
        std::thread::sleep(SKIP + WINDOW);
        rate(&self.log, start + SKIP.as_nanos(), now_ns())
    }

    /// Runs parkscope with `args` (plus --pid) and measures one window after it reports the
    /// attach; then stops it with SIGINT. Returns the throughput and parkscope's stderr.
    pub(crate) fn attached(
        &self,
        parkscope: &Path,
        args: &[&str],
    ) -> anyhow::Result<(f64, String)> {
        let mut child = Command::new(parkscope)
            .args(args)
            .args(["--pid", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", parkscope.display()))?;
        let (tx, rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().context("parkscope stderr")?);
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send((now_ns(), line));
            }
        });
        let mut lines = Vec::new();
        let mut attach = None;
        while attach.is_none() {
            let Ok((t, line)) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                bail!("parkscope {args:?} did not attach: {lines:?}");
            };
            // `profile`/`trace` print "parkscope: attached …"; the daemon logs the same notice.
            if line.starts_with("parkscope: attached") || line.contains(" uprobes) to pid ") {
                attach = Some(t);
            }
            lines.push((t, line));
        }
        let from = attach.unwrap_or_default() + SKIP.as_nanos();
        std::thread::sleep(SKIP + WINDOW);
        let mut to = now_ns();
        signal(child.id(), libc::SIGINT);
        let status = child.wait()?;
        let _ = reader.join();
        lines.extend(rx.try_iter());
        // A governor detach inside the window ends the window there.
        if let Some((t, l)) = lines
            .iter()
            .find(|(t, l)| *t < to && l.contains("detached group"))
        {
            eprintln!("bench: window cut short: {l}");
            to = *t;
        }
        let stderr: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
        let stderr = stderr.join("\n");
        anyhow::ensure!(status.success(), "parkscope {args:?}: {stderr}");
        Ok((rate(&self.log, from, to)?, stderr))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        signal(self.pid(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mean count per second over rate.log samples taken in (from, to].
fn rate(log: &Path, from: u128, to: u128) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(log)?;
    let samples: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let (t, n) = l.split_once(' ')?;
            let t: u128 = t.parse().ok()?;
            (t > from && t <= to).then(|| n.parse().ok())?
        })
        .collect();
    anyhow::ensure!(!samples.is_empty(), "no throughput samples in the window");
    // Samples are per 100 ms.
    Ok(samples.iter().sum::<f64>() / samples.len() as f64 * 10.0)
}

/// CPU time of every thread of `pid` so far, in ns (schedstat's run time).
fn target_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One window with nothing attached.
fn base_window(fixture: &Fixture) -> anyhow::Result<Window> {
    std::thread::sleep(SKIP);
    let (t0, c0) = (now_ns(), target_cpu_ns(fixture.pid()));
    std::thread::sleep(WINDOW);
    let (t1, c1) = (now_ns(), target_cpu_ns(fixture.pid()));
    Ok(Window {
        units_per_s: rate(&fixture.log, t0, t1)?,
        cpu_ns_per_s: c1.saturating_sub(c0) as f64 / ((t1 - t0) as f64 / 1e9),
        ..Window::default()
    })
}

/// One window with `parkscope trace ARGS --pid PID` attached (from SKIP after it reports the
/// attach); then SIGINT and the per-program hits from its last lines.
fn attached_window(fixture: &Fixture, parkscope: &Path, args: &[&str]) -> anyhow::Result<Window> {
    let mut child = Command::new(parkscope)
        .args(args)
        .args(["--pid", &fixture.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", parkscope.display()))?;
    let (tx, rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().context("parkscope stderr")?);
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send((now_ns(), line));
        }
    });
    let mut lines = Vec::new();
    loop {
        let Ok((t, line)) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            bail!("parkscope {args:?} did not attach: {lines:?}");
        };
        let attached = line.starts_with("parkscope: attached");
        lines.push((t, line));
        if attached {
            break;
        }
    }
    std::thread::sleep(SKIP);
    let (t0, c0) = (now_ns(), target_cpu_ns(fixture.pid()));
    std::thread::sleep(WINDOW);
    let (t1, c1) = (now_ns(), target_cpu_ns(fixture.pid()));
    signal(child.id(), libc::SIGINT);
    let status = child.wait()?;
    let _ = reader.join();
    lines.extend(rx.try_iter());
    let stderr: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
    let stderr = stderr.join("\n");
    anyhow::ensure!(status.success(), "parkscope {args:?}: {stderr}");
    let detached = lines
        .iter()
        .any(|(t, l)| *t < t1 && l.contains("detached group"));
    if detached {
        eprintln!("bench: governor detached a group inside the window: {args:?}");
    }
    Ok(Window {
        units_per_s: rate(&fixture.log, t0, t1)?,
        cpu_ns_per_s: c1.saturating_sub(c0) as f64 / ((t1 - t0) as f64 / 1e9),
        hits: program_hits(&stderr),
        governor_detached: detached,
    })
}

/// Per-program hits/s from `parkscope trace`'s last lines: "... ended after 3.1s ..." and
/// "hits per probe: gopark 1234 (210 ns/run), ready 99".
fn program_hits(stderr: &str) -> Vec<(String, f64, Option<f64>)> {
    let elapsed: f64 = stderr
        .lines()
        .find_map(|l| {
            let rest = &l[l.find("ended after ")? + "ended after ".len()..];
            rest[..rest.find('s')?].parse().ok()
        })
        .unwrap_or(0.0);
    let Some(list) = stderr
        .lines()
        .find_map(|l| Some(l[l.find("hits per probe")?..].split_once(": ")?.1))
    else {
        return Vec::new();
    };
    list.split(", ")
        .filter_map(|item| {
            let mut words = item.split_whitespace();
            let name = words.next()?.to_string();
            let hits: f64 = words.next()?.parse().ok()?;
            let run_ns = words
                .next()
                .and_then(|w| w.trim_start_matches('(').parse::<f64>().ok());
            Some((name, hits / elapsed.max(1e-3), run_ns))
        })
        .collect()
}

/// The uprobe floor parkscope measures at startup, from one short calibration run.
fn floor(parkscope: &Path, pid: u32) -> anyhow::Result<String> {
    let output = Command::new(parkscope)
        .args(["trace", "--pid", &pid.to_string(), "--probes", "lifecycle"])
        .args(["--duration", "200ms"])
        .stdout(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    Ok(stderr
        .lines()
        .find(|l| l.contains("uprobe floor"))
        .unwrap_or("uprobe floor: not reported")
        .trim_start_matches("parkscope: ")
        .to_string())
}

fn rounds() -> usize {
    std::env::var("PARKSCOPE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(ROUNDS)
}

fn trace_args<'a>(group: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["trace", "--probes", group, "--budget-percent", "100"];
    args.extend(["--no-calibrate", "--stack-ids", "none"]);
    args.extend(extra);
    args
}

/// Baseline, real, baseline, empty: one round of one measured thing.
fn measure_round(
    fixture: &Fixture,
    parkscope: &Path,
    group: &str,
    only: Option<&str>,
) -> anyhow::Result<Round> {
    let only_args: Vec<&str> = only.map(|p| vec!["--only-programs", p]).unwrap_or_default();
    let base_real = base_window(fixture)?;
    let real = attached_window(fixture, parkscope, &trace_args(group, &only_args))?;
    let base_empty = base_window(fixture)?;
    let mut floor_args = only_args.clone();
    floor_args.push("--floor");
    let empty = attached_window(fixture, parkscope, &trace_args(group, &floor_args))?;
    Ok(Round {
        base_real,
        real,
        base_empty,
        empty,
    })
}

fn median_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(&v))
}

fn summarize(workload: &str, group: &str, probe: Option<&str>, rounds: Vec<Round>) -> Measured {
    let valid = |r: &&Round| !r.real.governor_detached && !r.empty.governor_detached;
    let ns_real = median_opt(
        rounds
            .iter()
            .filter(valid)
            .map(|r| r.real.ns_per_hit(&r.base_real)),
    );
    let ns_empty = median_opt(
        rounds
            .iter()
            .filter(valid)
            .map(|r| r.empty.ns_per_hit(&r.base_empty)),
    );
    let bpf_run = median_opt(rounds.iter().map(|r| {
        let hits = r.real.hits_per_s();
        let ns: f64 = r.real.hits.iter().map(|h| h.1 * h.2.unwrap_or(0.0)).sum();
        (hits > 0.0).then(|| ns / hits)
    }));
    let ratios = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Measured {
        workload: workload.into(),
        group: group.into(),
        probe: probe.map(str::to_string),
        median_hits_per_s: ratios(|r| r.real.hits_per_s()),
        median_ratio_real: ratios(|r| r.real.units_per_s / r.base_real.units_per_s),
        median_ratio_empty: ratios(|r| r.empty.units_per_s / r.base_empty.units_per_s),
        median_ns_per_hit_real: ns_real,
        median_ns_per_hit_empty: ns_empty,
        median_bpf_run_ns: bpf_run,
        rounds,
    }
}

fn log_round(workload: &str, what: &str, round: usize, r: &Round) {
    let ns = |w: &Window, b: &Window| {
        w.ns_per_hit(b)
            .map_or("-".to_string(), |n| format!("{n:.0}"))
    };
    eprintln!(
        "bench: {workload} {what} round {round}: real {:.0} hits/s, {:.0}% of baseline, {} ns/hit; \
         empty {:.0} hits/s, {:.0}%, {} ns/hit",
        r.real.hits_per_s(),
        r.real.units_per_s / r.base_real.units_per_s * 100.0,
        ns(&r.real, &r.base_real),
        r.empty.hits_per_s(),
        r.empty.units_per_s / r.base_empty.units_per_s * 100.0,
        ns(&r.empty, &r.base_empty),
    );
}

fn probes() -> anyhow::Result<()> {
    let parkscope = parkscope_bin()?;
    let out = cmd::repo_root().join("target/bench");
    let rounds = rounds();
    let mut report = Report {
        floor: String::new(),
        method: METHOD.into(),
        rounds,
        window_s: WINDOW.as_secs_f64(),
        skip_s: SKIP.as_secs_f64(),
        baselines: Vec::new(),
        measured: Vec::new(),
        stack_ids: Vec::new(),
    };
    let only_workload = std::env::var("PARKSCOPE_BENCH_WORKLOAD").ok();
    for &(name, unit, groups) in WORKLOADS {
        if only_workload.as_deref().is_some_and(|w| w != name) {
            continue;
        }
        let fixture = Fixture::start(name, name, &[])?;
        if report.floor.is_empty() {
            report.floor = floor(&parkscope, fixture.pid())?;
            eprintln!("bench: {}", report.floor);
        }
        // Groups first; the probes that fired often enough in round 1 are then measured alone.
        let mut per_group: Vec<Vec<Round>> = groups.iter().map(|_| Vec::new()).collect();
        let mut alone: Vec<(String, String, Vec<Round>)> = EXTRA_ALONE
            .iter()
            .filter(|e| e.0 == name)
            .map(|e| (e.1.to_string(), e.2.to_string(), Vec::new()))
            .collect();
        let mut variants: Vec<StackRounds> = STACK_VARIANTS
            .iter()
            .filter(|v| v.0 == name)
            .map(|v| (v.1, v.2, Vec::new()))
            .collect();
        for round in 1..=rounds {
            for (i, group) in groups.iter().enumerate() {
                let r = measure_round(&fixture, &parkscope, group, None)?;
                log_round(name, group, round, &r);
                if round == 1 {
                    for (program, hits, _) in &r.real.hits {
                        if *hits >= ALONE_MIN_HITS_PER_S {
                            alone.push((group.to_string(), program.clone(), Vec::new()));
                        }
                    }
                }
                per_group[i].push(r);
            }
            for (group, program, rounds) in alone.iter_mut() {
                let r = measure_round(&fixture, &parkscope, group, Some(program))?;
                log_round(name, program, round, &r);
                rounds.push(r);
            }
            for (group, programs, rounds) in variants.iter_mut() {
                let list = programs.join(",");
                let base = base_window(&fixture)?;
                let without = attached_window(&fixture, &parkscope, &trace_args(group, &[]))?;
                let mut args = trace_args(group, &[]);
                args.retain(|a| *a != "--stack-ids" && *a != "none");
                args.extend(["--stack-ids", &list]);
                let with = attached_window(&fixture, &parkscope, &args)?;
                eprintln!(
                    "bench: {name} {group} stack ids on {list} round {round}: without {} ns/hit, \
                     with {} ns/hit",
                    without.ns_per_hit(&base).unwrap_or(f64::NAN),
                    with.ns_per_hit(&base).unwrap_or(f64::NAN),
                );
                rounds.push((base, without, with));
            }
        }
        let baselines: Vec<f64> = per_group
            .iter()
            .flatten()
            .flat_map(|r| [r.base_real.units_per_s, r.base_empty.units_per_s])
            .collect();
        report
            .baselines
            .push((name.into(), unit.into(), median(&baselines)));
        for (group, rounds) in groups.iter().zip(per_group) {
            report.measured.push(summarize(name, group, None, rounds));
        }
        for (group, program, rounds) in alone {
            report
                .measured
                .push(summarize(name, &group, Some(&program), rounds));
        }
        for (group, programs, rounds) in variants {
            let run_ns = |w: &Window| -> Option<f64> {
                let picked: Vec<_> = w
                    .hits
                    .iter()
                    .filter(|h| programs.contains(&h.0.as_str()))
                    .collect();
                let hits: f64 = picked.iter().map(|h| h.1).sum();
                (hits > 0.0)
                    .then(|| picked.iter().map(|h| h.1 * h.2.unwrap_or(0.0)).sum::<f64>() / hits)
            };
            report.stack_ids.push(StackVariant {
                workload: name.into(),
                group: group.into(),
                stack_programs: programs.iter().map(|p| p.to_string()).collect(),
                median_hits_per_s: median(
                    &rounds.iter().map(|r| r.2.hits_per_s()).collect::<Vec<_>>(),
                ),
                median_ns_per_hit_without: median_opt(rounds.iter().map(|r| r.1.ns_per_hit(&r.0))),
                median_ns_per_hit_with: median_opt(rounds.iter().map(|r| r.2.ns_per_hit(&r.0))),
                median_ratio_without: median(
                    &rounds
                        .iter()
                        .map(|r| r.1.units_per_s / r.0.units_per_s)
                        .collect::<Vec<_>>(),
                ),
                median_ratio_with: median(
                    &rounds
                        .iter()
                        .map(|r| r.2.units_per_s / r.0.units_per_s)
                        .collect::<Vec<_>>(),
                ),
                median_bpf_run_ns_without: median_opt(rounds.iter().map(|r| run_ns(&r.1))),
                median_bpf_run_ns_with: median_opt(rounds.iter().map(|r| run_ns(&r.2))),
            });
        }
    }
    std::fs::write(
        out.join("probes.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&report);
    std::fs::write(out.join("probes.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn markdown(report: &Report) -> String {
    let ns = |v: Option<f64>| v.map_or("-".to_string(), |n| format!("{n:.0}"));
    let mut md = format!(
        "# Probe cost, side by side\n\n{}\n\n{} rounds; each round measures, per workload and \
         group (then per probe alone, for the probes with at least {} hits/s), a baseline \
         window, the real programs, another baseline window, and the empty program at the same \
         attach points ({} s windows, the first {} s after attach or detach skipped); medians \
         over rounds (rounds where the governor detached a group are left out of ns/hit; \
         ns/hit is not shown below {} hits/s, where it is noise over few hits).\n\n\
         Method: {}\n\n",
        report.floor,
        report.rounds,
        ALONE_MIN_HITS_PER_S,
        report.window_s,
        report.skip_s,
        NS_PER_HIT_MIN_HITS_PER_S,
        report.method
    );
    for (name, unit, base) in &report.baselines {
        md.push_str(&format!("- {name}: baseline {base:.0} {unit}/s\n"));
    }
    md.push_str(
        "\n| workload | group | probe | hits/s | throughput: real | throughput: empty | \
         ns/hit: real | ns/hit: empty (floor) | real − empty | BPF run ns/hit |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in &report.measured {
        // Below this rate the CPU difference per hit is this machine's noise divided by few hits.
        let ns = |v: Option<f64>| {
            if m.median_hits_per_s < NS_PER_HIT_MIN_HITS_PER_S {
                "-".to_string()
            } else {
                ns(v)
            }
        };
        let diff = match (m.median_ns_per_hit_real, m.median_ns_per_hit_empty) {
            _ if m.median_hits_per_s < NS_PER_HIT_MIN_HITS_PER_S => "-".into(),
            (Some(r), Some(e)) => format!("{:.0}", r - e),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0}% | {:.0}% | {} | {} | {} | {} |\n",
            m.workload,
            m.group,
            m.probe.as_deref().unwrap_or("(group)"),
            m.median_hits_per_s,
            m.median_ratio_real * 100.0,
            m.median_ratio_empty * 100.0,
            ns(m.median_ns_per_hit_real),
            ns(m.median_ns_per_hit_empty),
            diff,
            ns(m.median_bpf_run_ns),
        ));
    }
    md.push_str(
        "\n## User stack ids (bpf_get_stackid, frame-pointer walk in the kernel)\n\n\
         | workload | group | stack ids on | hits/s | ns/hit without | ns/hit with | \
         throughput without | with | BPF run ns/hit without | with |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for v in &report.stack_ids {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.0}% | {:.0}% | {} | {} |\n",
            v.workload,
            v.group,
            v.stack_programs.join(","),
            v.median_hits_per_s,
            ns(v.median_ns_per_hit_without),
            ns(v.median_ns_per_hit_with),
            v.median_ratio_without * 100.0,
            v.median_ratio_with * 100.0,
            ns(v.median_bpf_run_ns_without),
            ns(v.median_bpf_run_ns_with),
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::program_hits;

    #[test]
    fn program_hits_are_rates_over_the_session() {
        let stderr = "parkscope: trace of pid 7 ended after 2.0s (SIGINT received): 10 events, \
                      0 dropped; park 300 hits (150/s)\n\
                      parkscope: hits per probe: gopark 200 (180 ns/run), ready 100";
        let hits = program_hits(stderr);
        assert_eq!(
            hits,
            vec![
                ("gopark".to_string(), 100.0, Some(180.0)),
                ("ready".to_string(), 50.0, None)
            ]
        );
        assert!(program_hits("nothing").is_empty());
    }
}
