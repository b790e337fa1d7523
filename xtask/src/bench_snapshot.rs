//! `cargo xtask bench snapshot`: what a one-shot snapshot costs, side by side with Go's own
//! goroutine dump, on the same target in the same run.
//!
//! For each size (1k, 10k, 100k parked goroutines; `PARKSCOPE_BENCH_SIZES=1000,10000` to change)
//! the bench_parked fixture is started (Go 1.26, built into target/bench/bin), and then, repeated
//! `PARKSCOPE_BENCH_REPEATS` times (default 5) and interleaved so that machine noise hits both
//! alike:
//!
//! - `parkscope snapshot --pid N --format text|json -o FILE` (the release build): wall time of
//!   the whole process (reading the binary included) and its peak RSS (`ru_maxrss` from wait4);
//! - `GET /debug/pprof/goroutine?debug=2` over HTTP from the target's own net/http/pprof: wall
//!   time until the last byte;
//! - an idle window of the same length;
//!
//! and for each, the largest gap the target's stall meter (a goroutine sleeping 1 ms in a loop)
//! saw while it ran: how long the target's other goroutines were held up. Results (medians, and
//! the ratios of the medians) go to target/bench/snapshot.{md,json}.
//!
//! `PARKSCOPE_BENCH_BASELINE=/path/to/an/older/parkscope` adds that binary's text and JSON
//! snapshots to the same rounds (same target, interleaved), for before/after numbers measured
//! side by side.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{cmd, fixtures};

const DEFAULT_SIZES: &[usize] = &[1_000, 10_000, 100_000];
const GOAL_MS: f64 = 300.0;
/// The Go release the fixture is built with (the machine's own toolchain in the matrix).
const TOOLCHAIN: &str = "go1.26.8";

#[derive(Serialize, Default, Clone)]
struct Sample {
    wall_ms: f64,
    /// Largest gap between the target's 1 ms ticks during the operation.
    target_max_gap_ms: f64,
    /// parkscope only: peak resident memory of the parkscope process.
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_mib: Option<f64>,
}

#[derive(Serialize)]
struct Summary {
    median_wall_ms: f64,
    median_target_max_gap_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    median_peak_rss_mib: Option<f64>,
    samples: Vec<Sample>,
}

#[derive(Serialize)]
struct SizeResult {
    goroutines_requested: usize,
    /// Goroutines in parkscope's last JSON snapshot (the target's own ones included).
    goroutines_reported: usize,
    /// Bytes of Go's debug=2 dump.
    go_dump_bytes: usize,
    /// Bytes of parkscope's text and JSON outputs.
    text_bytes: u64,
    json_bytes: u64,
    /// `parkscope snapshot --format text` (the default output).
    parkscope: Summary,
    /// `parkscope snapshot --format json` (every goroutine with its whole stack).
    parkscope_json: Summary,
    /// The same two with the `PARKSCOPE_BENCH_BASELINE` binary, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_json: Option<Summary>,
    go_debug2: Summary,
    idle: Summary,
    /// median Go endpoint time / median parkscope (text) time (> 1: parkscope is faster).
    speedup_vs_go: f64,
    meets_goal: bool,
}

#[derive(Serialize)]
struct Report {
    parkscope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<String>,
    fixture: String,
    cpus: usize,
    repeats: usize,
    goal: String,
    sizes: Vec<SizeResult>,
}

pub fn run() -> anyhow::Result<()> {
    let root = cmd::repo_root();
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let parkscope = release_parkscope()?;
    let baseline = std::env::var_os("PARKSCOPE_BENCH_BASELINE").map(PathBuf::from);
    let fixture = build_fixture(&out)?;
    let sizes = env_list("PARKSCOPE_BENCH_SIZES").unwrap_or_else(|| DEFAULT_SIZES.to_vec());
    let repeats = env_list("PARKSCOPE_BENCH_REPEATS")
        .and_then(|v| v.first().copied())
        .unwrap_or(5)
        .max(1);

    let mut results = Vec::new();
    for &n in &sizes {
        results.push(bench_size(
            &parkscope,
            baseline.as_deref(),
            &fixture,
            &out,
            n,
            repeats,
        )?);
    }
    let report = Report {
        parkscope: parkscope.display().to_string(),
        baseline: baseline.map(|b| b.display().to_string()),
        fixture: format!("bench_parked ({TOOLCHAIN})"),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        repeats,
        goal: format!("{GOAL_MS} ms at 100k goroutines, no stall of the target"),
        sizes: results,
    };
    std::fs::write(
        out.join("snapshot.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    let md = markdown(&report);
    std::fs::write(out.join("snapshot.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn env_list(name: &str) -> Option<Vec<usize>> {
    let v = std::env::var(name).ok()?;
    let list: Vec<usize> = v
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .collect();
    (!list.is_empty()).then_some(list)
}

/// `PARKSCOPE_BIN`, or a fresh release build. Shared by the benches that run `parkscope`.
pub(crate) fn release_parkscope() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PARKSCOPE_BIN") {
        return Ok(PathBuf::from(path));
    }
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(cmd::repo_root())
            .args(["build", "--release", "-p", "parkscope"]),
    )?;
    Ok(cmd::repo_root().join("target/release/parkscope"))
}

fn build_fixture(out: &Path) -> anyhow::Result<PathBuf> {
    let dir = out.join("bin");
    std::fs::create_dir_all(&dir)?;
    cmd::run(
        fixtures::go_command(TOOLCHAIN)
            .env("CGO_ENABLED", "0")
            .arg("build")
            .arg("-o")
            .arg(format!("{}/", dir.display()))
            .arg("./bench_parked"),
    )?;
    Ok(dir.join("bench_parked"))
}

/// The fixture process; killed on drop.
struct Target {
    child: Child,
    addr: String,
    work: PathBuf,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn start_target(fixture: &Path, out: &Path, n: usize) -> anyhow::Result<Target> {
    let work = out.join(format!("snapshot-{n}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut child = Command::new(fixture)
        .env("PARKSCOPE_FIXTURE_OUT", &work)
        .env("PARKSCOPE_BENCH_GOROUTINES", n.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bench_parked")?;
    let stdout = child.stdout.take().expect("piped");
    let mut target = Target {
        child,
        addr: String::new(),
        work,
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("PARKSCOPE_READY") {
        bail!("bench_parked with {n} goroutines never became ready");
    }
    target.addr = std::fs::read_to_string(target.work.join("addr.txt"))?
        .trim()
        .to_string();
    Ok(target)
}

/// A minimal HTTP/1.0 GET: the whole response body.
fn http_get(addr: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(response[split + 4..].to_vec())
}

/// Largest gap (ms) the stall meter saw since the previous call; starts a new window.
fn stall_window(addr: &str) -> anyhow::Result<f64> {
    let body: serde_json::Value = serde_json::from_slice(&http_get(addr, "/stall")?)?;
    Ok(body["max_gap_ns"].as_f64().unwrap_or(0.0) / 1e6)
}

/// Run parkscope to completion: wall time and peak RSS (KiB, from wait4's rusage).
fn run_parkscope(
    parkscope: &Path,
    pid: u32,
    format: &str,
    file: &Path,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut child = Command::new(parkscope)
        .args([
            "snapshot",
            "--pid",
            &pid.to_string(),
            "--format",
            format,
            "-o",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", parkscope.display()))?;
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)?;
    let mut status = 0i32;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaps exactly the child we spawned (std's Child is not waited on afterwards).
    let reaped = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    anyhow::ensure!(reaped > 0, "wait4: {}", std::io::Error::last_os_error());
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "parkscope snapshot failed (status {status:#x}): {stderr}"
    );
    Ok((wall, usage.ru_maxrss as u64))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn summarize(samples: Vec<Sample>) -> Summary {
    let rss: Vec<f64> = samples.iter().filter_map(|s| s.peak_rss_mib).collect();
    Summary {
        median_wall_ms: median(samples.iter().map(|s| s.wall_ms).collect()),
        median_target_max_gap_ms: median(samples.iter().map(|s| s.target_max_gap_ms).collect()),
        median_peak_rss_mib: (!rss.is_empty()).then(|| median(rss)),
        samples,
    }
}

/// After an operation: let the stall meter tick a few times so a pause at the very end is seen.
const SETTLE: Duration = Duration::from_millis(30);

fn bench_size(
    parkscope: &Path,
    baseline: Option<&Path>,
    fixture: &Path,
    out: &Path,
    n: usize,
    repeats: usize,
) -> anyhow::Result<SizeResult> {
    eprintln!("bench: starting bench_parked with {n} parked goroutines");
    let target = start_target(fixture, out, n)?;
    let pid = target.child.id();
    let addr = target.addr.clone();
    let file = target.work.join("snapshot.json");
    let text_file = target.work.join("snapshot.txt");
    let dump_path = "/debug/pprof/goroutine?debug=2";

    // Warm-up (page cache, the target's HTTP server and dump buffers); not measured.
    run_parkscope(parkscope, pid, "json", &file)?;
    run_parkscope(parkscope, pid, "text", &text_file)?;
    let baseline_file = target.work.join("baseline.out");
    if let Some(baseline) = baseline {
        run_parkscope(baseline, pid, "text", &baseline_file)?;
    }
    let go_dump_bytes = http_get(&addr, dump_path)?.len();
    std::thread::sleep(Duration::from_millis(200));

    let (mut ours, mut ours_json, mut go, mut idle) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut base, mut base_json) = (Vec::new(), Vec::new());
    for round in 0..repeats {
        // Alternate which goes first, so drift (GC, other load) does not favour one side.
        for step in 0..2 {
            let parkscope_now = (round + step) % 2 == 0;
            stall_window(&addr)?;
            if parkscope_now {
                let mut runs = vec![
                    (parkscope, "text", &text_file, &mut ours),
                    (parkscope, "json", &file, &mut ours_json),
                ];
                if let Some(baseline) = baseline {
                    runs.push((baseline, "text", &baseline_file, &mut base));
                    runs.push((baseline, "json", &baseline_file, &mut base_json));
                    // Alternate which binary goes first.
                    if round % 2 == 1 {
                        runs.rotate_left(2);
                    }
                }
                for (binary, format, path, samples) in runs {
                    stall_window(&addr)?;
                    let (wall, rss_kib) = run_parkscope(binary, pid, format, path)?;
                    std::thread::sleep(SETTLE);
                    samples.push(Sample {
                        wall_ms: wall.as_secs_f64() * 1e3,
                        target_max_gap_ms: stall_window(&addr)?,
                        peak_rss_mib: Some(rss_kib as f64 / 1024.0),
                    });
                }
            } else {
                let started = Instant::now();
                http_get(&addr, dump_path)?;
                let wall = started.elapsed();
                std::thread::sleep(SETTLE);
                go.push(Sample {
                    wall_ms: wall.as_secs_f64() * 1e3,
                    target_max_gap_ms: stall_window(&addr)?,
                    peak_rss_mib: None,
                });
            }
        }
        // An idle window as long as our snapshot was: the meter's noise floor.
        let last = ours.last().map_or(100.0, |s: &Sample| s.wall_ms);
        stall_window(&addr)?;
        std::thread::sleep(Duration::from_secs_f64(last / 1e3) + SETTLE);
        idle.push(Sample {
            wall_ms: last,
            target_max_gap_ms: stall_window(&addr)?,
            peak_rss_mib: None,
        });
        if let (Some(text), Some(json)) = (base.last(), base_json.last()) {
            eprintln!(
                "bench: {n}: baseline text {:.1} ms, json {:.1} ms",
                text.wall_ms, json.wall_ms
            );
        }
        eprintln!(
            "bench: {n}: parkscope text {:.1} ms (gap {:.1} ms, {:.0} MiB), json {:.1} ms, go debug=2 {:.1} ms (gap {:.1} ms), idle gap {:.1} ms",
            ours.last().unwrap().wall_ms,
            ours.last().unwrap().target_max_gap_ms,
            ours.last().unwrap().peak_rss_mib.unwrap_or(0.0),
            ours_json.last().unwrap().wall_ms,
            go.last().unwrap().wall_ms,
            go.last().unwrap().target_max_gap_ms,
            idle.last().unwrap().target_max_gap_ms,
        );
    }
    let snapshot: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    let goroutines_reported = snapshot["goroutines"].as_array().map_or(0, |g| g.len());
    anyhow::ensure!(
        goroutines_reported >= n,
        "parkscope reported {goroutines_reported} goroutines, the target has more than {n}"
    );
    let text_bytes = std::fs::metadata(&text_file)?.len();
    let json_bytes = std::fs::metadata(&file)?.len();
    let parkscope = summarize(ours);
    let parkscope_json = summarize(ours_json);
    let go_debug2 = summarize(go);
    let speedup_vs_go = go_debug2.median_wall_ms / parkscope.median_wall_ms.max(1e-9);
    Ok(SizeResult {
        goroutines_requested: n,
        goroutines_reported,
        go_dump_bytes,
        text_bytes,
        json_bytes,
        meets_goal: parkscope.median_wall_ms <= GOAL_MS
            && parkscope.median_target_max_gap_ms <= idle_median_plus(&idle, 5.0),
        parkscope,
        parkscope_json,
        baseline: baseline.map(|_| summarize(base)),
        baseline_json: baseline.map(|_| summarize(base_json)),
        go_debug2,
        idle: summarize(idle),
        speedup_vs_go,
    })
}

/// The stall a run may show and still count as "no stall": the idle noise floor plus `slack` ms.
fn idle_median_plus(idle: &[Sample], slack: f64) -> f64 {
    median(idle.iter().map(|s| s.target_max_gap_ms).collect()) + slack
}

fn markdown(report: &Report) -> String {
    let mut md = format!(
        "# Snapshot cost: parkscope vs Go's own goroutine dump\n\n\
         Target: {} on {} CPUs; {} repeats per size, interleaved; medians. \
         \"Target stall\" is the largest gap between the target's 1 ms sleeps while the operation ran \
         (idle: the same window with nothing running). Goal: {}.\n\n\
         | goroutines | parkscope (text) | parkscope (json) | parkscope peak RSS (text / json) | target stall (parkscope text / json) | Go debug=2 over HTTP | target stall (Go debug=2) | idle stall | Go / parkscope text time | Go / parkscope json time |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        report.fixture, report.cpus, report.repeats, report.goal
    );
    for s in &report.sizes {
        md.push_str(&format!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} / {:.1} MiB | {:.1} / {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x | {:.2}x |\n",
            s.goroutines_requested,
            s.parkscope.median_wall_ms,
            s.parkscope_json.median_wall_ms,
            s.parkscope.median_peak_rss_mib.unwrap_or(0.0),
            s.parkscope_json.median_peak_rss_mib.unwrap_or(0.0),
            s.parkscope.median_target_max_gap_ms,
            s.parkscope_json.median_target_max_gap_ms,
            s.go_debug2.median_wall_ms,
            s.go_debug2.median_target_max_gap_ms,
            s.idle.median_target_max_gap_ms,
            s.speedup_vs_go,
            s.go_debug2.median_wall_ms / s.parkscope_json.median_wall_ms.max(1e-9),
        ));
    }
    if let Some(baseline) = &report.baseline {
        md.push_str(&format!(
            "\nBefore and after, same rounds (baseline: `{baseline}`):\n\n\
             | goroutines | baseline (text) | parkscope (text) | speedup | baseline (json) | parkscope (json) | speedup | peak RSS text, baseline / parkscope |\n\
             |---|---|---|---|---|---|---|---|\n"
        ));
        for s in &report.sizes {
            let (Some(b), Some(bj)) = (&s.baseline, &s.baseline_json) else {
                continue;
            };
            md.push_str(&format!(
                "| {} | {:.1} ms | {:.1} ms | {:.2}x | {:.1} ms | {:.1} ms | {:.2}x | {:.1} / {:.1} MiB |\n",
                s.goroutines_requested,
                b.median_wall_ms,
                s.parkscope.median_wall_ms,
                b.median_wall_ms / s.parkscope.median_wall_ms.max(1e-9),
                bj.median_wall_ms,
                s.parkscope_json.median_wall_ms,
                bj.median_wall_ms / s.parkscope_json.median_wall_ms.max(1e-9),
                b.median_peak_rss_mib.unwrap_or(0.0),
                s.parkscope.median_peak_rss_mib.unwrap_or(0.0),
            ));
        }
    }
    md.push_str(
        "\nparkscope time is the whole `parkscope snapshot --format text|json -o FILE` process \
         (reading and parsing the executable, reading the goroutines, rendering and writing the \
         output); Go's is the HTTP request until its last byte. \"Go / parkscope\" above 1 means \
         parkscope was faster. The goal is checked on the text snapshot.\n",
    );
    md
}
