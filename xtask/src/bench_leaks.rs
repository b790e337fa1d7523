//! `cargo xtask bench leaks`: parkscope's leak verdicts side by side with Go's own goroutineleak
//! profile on every fixture, and what a verdict costs on a large live heap, in one run.
//!
//! 1. Agreement. For every fixture (plain variant; not the demo, which keeps leaking, nor the
//!    trace_* fixtures, which wait for the trace tests) of the newest release in
//!    target/fixtures/manifest.json whose runtime has Go's leak profile (1.26 is built with
//!    GOEXPERIMENT=goroutineleakprofile, 1.27 has it by default): start the fixture, take
//!    Go's verdicts from the goroutineleak-goroutines.txt it writes at its sync point (the
//!    runtime marks each goroutine it found leaked with "(leaked)" in its header), run
//!    `parkscope leaks --pid N --format json`, and judge both against the fixture's truth.json.
//!    Go's detector is a reachability proof only: it does not look for deadlocks on locks that
//!    stay reachable (AB-BA on a global, a double lock), so deadlocked verdicts are parkscope's
//!    alone.
//! 2. Scan cost. The bench_heap fixture with a 1 GiB live heap (PARKSCOPE_BENCH_HEAP_MB=1024: 4M
//!    256-byte nodes in linked shard chains with random cross-links, 4 leaked prefetchers):
//!    time to verdict (wall time of the whole `parkscope leaks` process, reading the executable
//!    and both scans 100 ms apart included), its peak RSS, and per scan the bytes scanned over the
//!    scan's time (GB/s, 10^9 bytes). For comparison, measured inside the target before its sync
//!    point: a forced GC cycle (runtime.GC) and Go's goroutineleak profile (its leak-detecting GC
//!    cycle), PARKSCOPE_BENCH_GO_TIMING times each. When the parkscope build has
//!    `leaks --freeze` (the target stopped for one consistent scan), one frozen run reports the
//!    target's pause; otherwise the report says it is not measured.
//!
//! parkscope is `PARKSCOPE_BIN` or a fresh `cargo build --release -p parkscope`.
//! `PARKSCOPE_BENCH_HEAP_MB` (default 1024) and `PARKSCOPE_BENCH_REPEATS` (parkscope runs on the
//! large heap, default 1) change the second part. Results go to target/bench/leaks.{md,json};
//! each fixture's work directory (truth.json, Go's dumps, parkscope's JSON) stays under
//! target/bench/leaks/.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use crate::bench::median;
use crate::bench_snapshot::release_parkscope;
use crate::cmd;

const HEAP_MIB: usize = 1024;
/// runtime.GC / goroutineleak profile timings taken inside bench_heap.
const GO_TIMING: usize = 3;

#[derive(Serialize, Default)]
struct FixtureRow {
    fixture: String,
    go_version: String,
    /// truth.json: goroutines expected leaked / deadlocked.
    truth_leaked: usize,
    truth_deadlocked: usize,
    /// Goids Go's goroutineleak profile marked "(leaked)"; None when the fixture wrote no profile.
    go_leaked: Option<Vec<i64>>,
    parkscope_leaked: Vec<i64>,
    parkscope_deadlocked: Vec<i64>,
    /// Leaked verdicts: flagged by both, by parkscope only, by Go only.
    both: usize,
    only_parkscope: usize,
    only_go: usize,
    /// truth.json expectations (leaked and deadlocked) parkscope met with the right verdict.
    parkscope_found: usize,
    parkscope_missed: Vec<String>,
    /// Verdicts truth.json does not expect (a not_leaked goroutine flagged, the wrong kind, a
    /// goroutine the fixture does not list).
    parkscope_false: Vec<String>,
    /// truth.json leaked goroutines Go flagged; Go flags that truth.json does not expect.
    go_found: usize,
    go_missed: Vec<String>,
    go_false: Vec<String>,
    parkscope_wall_ms: f64,
    scan_ms: Vec<f64>,
}

#[derive(Serialize)]
struct ScanSample {
    took_ms: f64,
    bytes_scanned: u64,
    objects_marked: u64,
    heap_metadata_bytes: u64,
    /// bytes_scanned / took (10^9 bytes per second).
    gb_per_s: f64,
}

#[derive(Serialize)]
struct HeapRun {
    frozen: bool,
    /// Wall time of the whole `parkscope leaks` process.
    time_to_verdict_ms: f64,
    peak_rss_mib: f64,
    leaked: usize,
    deadlocked: usize,
    scans: Vec<ScanSample>,
    /// `freeze` of the JSON report (pause_ms, threads) in a frozen run.
    #[serde(skip_serializing_if = "Option::is_none")]
    freeze: Option<Value>,
}

#[derive(Serialize)]
struct HeapResult {
    go_version: String,
    requested_mib: usize,
    /// heap.json written by the fixture: nodes, node size, HeapAlloc/HeapObjects after a GC.
    heap: Value,
    truth_leaked: usize,
    go_leaked: Option<usize>,
    /// Every truth.json expectation met, nothing else flagged, in every run.
    verdicts_match_truth: bool,
    runs: Vec<HeapRun>,
    median_time_to_verdict_ms: f64,
    median_scan_ms: f64,
    median_gb_per_s: f64,
    /// Measured inside the target: forced GC cycles and goroutineleak profiles (ms).
    go_gc_ms: Vec<f64>,
    go_leakprofile_ms: Vec<f64>,
    /// Whether `parkscope leaks --help` offers --freeze.
    freeze_supported: bool,
}

#[derive(Serialize)]
struct Report {
    parkscope: String,
    release: String,
    cpus: usize,
    fixtures: Vec<FixtureRow>,
    totals: Totals,
    heap: HeapResult,
}

#[derive(Serialize, Default)]
struct Totals {
    truth_leaked: usize,
    truth_deadlocked: usize,
    go_leaked: usize,
    parkscope_leaked: usize,
    parkscope_deadlocked: usize,
    both: usize,
    only_parkscope: usize,
    only_go: usize,
    parkscope_found: usize,
    parkscope_false: usize,
    go_found: usize,
    go_false: usize,
}

pub fn run() -> anyhow::Result<()> {
    let out = cmd::repo_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let parkscope = release_parkscope()?;
    let help = cmd::output(Command::new(&parkscope).args(["leaks", "--help"]))?;
    let freeze_supported = help.contains("--freeze");
    let (release, binaries) = newest_with_leak_profile()?;
    eprintln!(
        "bench: Go {release} fixtures, {} of them; --freeze {}",
        binaries.len(),
        if freeze_supported {
            "available"
        } else {
            "not available in this parkscope build"
        }
    );
    let work = out.join("leaks");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let mut fixtures = Vec::new();
    for (name, path) in &binaries {
        let row =
            agreement(&parkscope, name, path, &work).with_context(|| format!("fixture {name}"))?;
        eprintln!(
            "bench: {name}: Go {} leaked, parkscope {} leaked {} deadlocked; truth {}/{} met, \
             {} false",
            row.go_leaked
                .as_ref()
                .map_or("-".into(), |g| g.len().to_string()),
            row.parkscope_leaked.len(),
            row.parkscope_deadlocked.len(),
            row.parkscope_found,
            row.truth_leaked + row.truth_deadlocked,
            row.parkscope_false.len()
        );
        fixtures.push(row);
    }
    let totals = totals(&fixtures);

    let heap_bin = binaries
        .iter()
        .find(|(n, _)| n == "bench_heap")
        .map(|(_, p)| p.clone())
        .context("bench_heap is not in the manifest: run `cargo xtask fixtures`")?;
    let mib = env_usize("PARKSCOPE_BENCH_HEAP_MB").unwrap_or(HEAP_MIB);
    let repeats = env_usize("PARKSCOPE_BENCH_REPEATS").unwrap_or(1).max(1);
    let heap = heap_bench(&parkscope, &heap_bin, &work, mib, repeats, freeze_supported)?;

    let report = Report {
        parkscope: parkscope.display().to_string(),
        release,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        fixtures,
        totals,
        heap,
    };
    std::fs::write(
        out.join("leaks.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    let md = markdown(&report);
    std::fs::write(out.join("leaks.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// The newest release of the manifest whose fixtures have Go's leak profile (1.26 with the
/// experiment, which `cargo xtask fixtures` sets, or 1.27+), and its plain fixtures.
fn newest_with_leak_profile() -> anyhow::Result<(String, Vec<(String, PathBuf)>)> {
    let manifest_path = cmd::repo_root().join("target/fixtures/manifest.json");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).with_context(|| {
            format!("{}: run `cargo xtask fixtures`", manifest_path.display())
        })?)?;
    let binaries = manifest["binaries"]
        .as_array()
        .context("manifest.json has no binaries")?;
    let minor = |release: &str| -> u32 {
        release
            .strip_prefix("1.")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    };
    let release = binaries
        .iter()
        .filter_map(|b| b["release"].as_str())
        .filter(|r| minor(r) >= 26)
        .max_by_key(|r| minor(r))
        .context("no Go 1.26+ fixtures in the manifest: run `cargo xtask fixtures`")?
        .to_string();
    let mut list: Vec<(String, PathBuf)> = binaries
        .iter()
        .filter(|b| b["release"] == release.as_str() && b["variant"] == "plain")
        .filter_map(|b| {
            Some((
                b["fixture"].as_str()?.to_string(),
                PathBuf::from(b["path"].as_str()?),
            ))
        })
        .filter(|(name, _)| name != "demo" && !name.starts_with("trace_"))
        .collect();
    list.sort();
    anyhow::ensure!(!list.is_empty(), "no plain fixtures for Go {release}");
    Ok((release, list))
}

/// A fixture process up to its sync point; SIGTERM on drop.
struct Target {
    child: Child,
    dir: PathBuf,
}

impl Target {
    fn start(
        bin: &Path,
        dir: PathBuf,
        env: &[(&str, String)],
        timeout: Duration,
    ) -> anyhow::Result<Target> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new(bin)
            .env("PARKSCOPE_FIXTURE_OUT", &dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("fixture stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let target = Target { child, dir };
        match rx.recv_timeout(timeout) {
            Ok(line) if line.starts_with("PARKSCOPE_READY") => Ok(target),
            Ok(line) => bail!("{} did not get ready: {line:?}", bin.display()),
            Err(_) => bail!("{} did not get ready within {timeout:?}", bin.display()),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn truth(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            self.dir.join("truth.json"),
        )?)?)
    }

    /// Goids Go's leak profile marked "(leaked)", when the fixture wrote it.
    fn go_leaked(&self) -> Option<BTreeSet<i64>> {
        let text = std::fs::read_to_string(self.dir.join("goroutineleak-goroutines.txt")).ok()?;
        Some(parse_go_leaked(&text))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child we started and have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Goids whose header in a debug=2 goroutine dump says "(leaked)":
/// `goroutine 9 [chan send (leaked)]:`.
fn parse_go_leaked(dump: &str) -> BTreeSet<i64> {
    dump.lines()
        .filter_map(|l| l.strip_prefix("goroutine "))
        .filter(|l| l.contains("(leaked)"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

struct ParkscopeRun {
    wall: Duration,
    rss_kib: u64,
    report: Value,
}

/// `parkscope leaks --pid N --format json [extra]` to completion: wall time, peak RSS (KiB, from
/// wait4) and the JSON report. Exit status 0 (nothing found) and 3 (found) are both success.
fn run_leaks(
    parkscope: &Path,
    pid: u32,
    extra: &[&str],
    save: &Path,
) -> anyhow::Result<ParkscopeRun> {
    let stderr_path = save.with_extension("stderr");
    let started = Instant::now();
    let mut child = Command::new(parkscope)
        .args(["leaks", "--pid", &pid.to_string(), "--format", "json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("starting {}", parkscope.display()))?;
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .context("parkscope stdout")?
        .read_to_end(&mut stdout)?;
    let mut status = 0i32;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaps exactly the child we spawned (std's Child is not waited on afterwards).
    let reaped = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    anyhow::ensure!(reaped > 0, "wait4: {}", std::io::Error::last_os_error());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    anyhow::ensure!(
        matches!(code, Some(0 | 3)),
        "parkscope leaks {extra:?} failed (status {status:#x}): {}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    std::fs::write(save, &stdout)?;
    Ok(ParkscopeRun {
        wall,
        rss_kib: usage.ru_maxrss as u64,
        report: serde_json::from_slice(&stdout).context("parkscope's JSON report")?,
    })
}

fn verdicts(report: &Value, wanted: &str) -> BTreeSet<i64> {
    report["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["verdict"] == wanted)
        .filter_map(|v| v["goid"].as_i64())
        .collect()
}

/// Expectation of each goroutine truth.json lists: goid → (expect, description).
fn expectations(truth: &Value) -> HashMap<i64, (String, String)> {
    truth["goroutines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| {
            Some((
                g["goid"].as_i64()?,
                (
                    g["expect"].as_str()?.to_string(),
                    format!(
                        "goid {} [{}] {}",
                        g["goid"],
                        g["wait_reason"].as_str().unwrap_or(""),
                        g["role"].as_str().unwrap_or("")
                    ),
                ),
            ))
        })
        .collect()
}

fn judge(
    row: &mut FixtureRow,
    truth: &Value,
    leaked: &BTreeSet<i64>,
    deadlocked: &BTreeSet<i64>,
    go: Option<&BTreeSet<i64>>,
) {
    let expect = expectations(truth);
    let says = |goid: i64| {
        if leaked.contains(&goid) {
            "leaked"
        } else if deadlocked.contains(&goid) {
            "deadlocked"
        } else {
            "-"
        }
    };
    for (goid, (want, what)) in &expect {
        let ours = says(*goid);
        match want.as_str() {
            "leaked" | "deadlocked" => {
                if want == "leaked" {
                    row.truth_leaked += 1;
                } else {
                    row.truth_deadlocked += 1;
                }
                if ours == want {
                    row.parkscope_found += 1;
                } else if ours == "-" {
                    row.parkscope_missed
                        .push(format!("{what} (expected {want})"));
                } else {
                    row.parkscope_false
                        .push(format!("{what}: {ours}, expected {want}"));
                }
            }
            _ if ours != "-" => row
                .parkscope_false
                .push(format!("{what}: {ours}, expected {want}")),
            _ => {}
        }
    }
    for goid in leaked.union(deadlocked) {
        if !expect.contains_key(goid) {
            row.parkscope_false.push(format!(
                "goid {goid}: {} (not in truth.json: runtime/library)",
                says(*goid)
            ));
        }
    }
    row.parkscope_leaked = leaked.iter().copied().collect();
    row.parkscope_deadlocked = deadlocked.iter().copied().collect();
    let Some(go) = go else { return };
    row.go_leaked = Some(go.iter().copied().collect());
    row.both = go.intersection(leaked).count();
    row.only_parkscope = leaked.difference(go).count();
    row.only_go = go.difference(leaked).count();
    for (goid, (want, what)) in &expect {
        match (want.as_str(), go.contains(goid)) {
            ("leaked", true) => row.go_found += 1,
            ("leaked", false) => row.go_missed.push(what.clone()),
            (_, true) => row
                .go_false
                .push(format!("{what}: leaked, expected {want}")),
            _ => {}
        }
    }
    for goid in go.iter().filter(|g| !expect.contains_key(g)) {
        row.go_false
            .push(format!("goid {goid}: leaked (not in truth.json)"));
    }
}

fn agreement(parkscope: &Path, name: &str, bin: &Path, work: &Path) -> anyhow::Result<FixtureRow> {
    let dir = work.join(name);
    let target = Target::start(bin, dir.clone(), &[], Duration::from_secs(60))?;
    let truth = target.truth()?;
    let run = run_leaks(
        parkscope,
        target.pid(),
        &[],
        &dir.join("parkscope-leaks.json"),
    )?;
    let go = target.go_leaked();
    drop(target);
    let mut row = FixtureRow {
        fixture: name.to_string(),
        go_version: truth["go_version"].as_str().unwrap_or("").to_string(),
        parkscope_wall_ms: run.wall.as_secs_f64() * 1e3,
        scan_ms: scan_samples(&run.report)
            .iter()
            .map(|s| s.took_ms)
            .collect(),
        ..Default::default()
    };
    judge(
        &mut row,
        &truth,
        &verdicts(&run.report, "leaked"),
        &verdicts(&run.report, "deadlocked"),
        go.as_ref(),
    );
    Ok(row)
}

fn totals(rows: &[FixtureRow]) -> Totals {
    let mut t = Totals::default();
    for r in rows {
        t.truth_leaked += r.truth_leaked;
        t.truth_deadlocked += r.truth_deadlocked;
        t.go_leaked += r.go_leaked.as_ref().map_or(0, Vec::len);
        t.parkscope_leaked += r.parkscope_leaked.len();
        t.parkscope_deadlocked += r.parkscope_deadlocked.len();
        t.both += r.both;
        t.only_parkscope += r.only_parkscope;
        t.only_go += r.only_go;
        t.parkscope_found += r.parkscope_found;
        t.parkscope_false += r.parkscope_false.len();
        t.go_found += r.go_found;
        t.go_false += r.go_false.len();
    }
    t
}

fn scan_samples(report: &Value) -> Vec<ScanSample> {
    report["scans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let took_ms = s["took_ms"].as_f64().unwrap_or(0.0);
            let bytes_scanned = s["mark"]["bytes_scanned"].as_u64().unwrap_or(0);
            ScanSample {
                took_ms,
                bytes_scanned,
                objects_marked: s["mark"]["objects_marked"].as_u64().unwrap_or(0),
                heap_metadata_bytes: s["heap_metadata_bytes"].as_u64().unwrap_or(0),
                gb_per_s: bytes_scanned as f64 / (took_ms.max(1e-6) * 1e-3) / 1e9,
            }
        })
        .collect()
}

fn heap_bench(
    parkscope: &Path,
    bin: &Path,
    work: &Path,
    mib: usize,
    repeats: usize,
    freeze_supported: bool,
) -> anyhow::Result<HeapResult> {
    eprintln!("bench: starting bench_heap with a {mib} MiB heap");
    let dir = work.join(format!("bench_heap-{mib}"));
    let target = Target::start(
        bin,
        dir.clone(),
        &[
            ("PARKSCOPE_BENCH_HEAP_MB", mib.to_string()),
            ("PARKSCOPE_BENCH_GO_TIMING", GO_TIMING.to_string()),
        ],
        Duration::from_secs(600),
    )?;
    let truth = target.truth()?;
    let heap: Value = serde_json::from_slice(&std::fs::read(dir.join("heap.json"))?)?;
    let timing: Value = serde_json::from_slice(&std::fs::read(dir.join("go-timing.json"))?)?;
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    let go = target.go_leaked();
    let mut runs = Vec::new();
    let mut matches = true;
    let mut truth_leaked = 0;
    let modes: Vec<bool> = std::iter::repeat_n(false, repeats)
        .chain(freeze_supported.then_some(true))
        .collect();
    for (i, frozen) in modes.into_iter().enumerate() {
        let extra: &[&str] = if frozen { &["--freeze"] } else { &[] };
        let run = run_leaks(
            parkscope,
            target.pid(),
            extra,
            &dir.join(format!("parkscope-leaks-{i}.json")),
        )?;
        let mut row = FixtureRow::default();
        let (leaked, deadlocked) = (
            verdicts(&run.report, "leaked"),
            verdicts(&run.report, "deadlocked"),
        );
        judge(&mut row, &truth, &leaked, &deadlocked, None);
        truth_leaked = row.truth_leaked;
        matches &= row.parkscope_missed.is_empty() && row.parkscope_false.is_empty();
        let scans = scan_samples(&run.report);
        let hr = HeapRun {
            frozen,
            time_to_verdict_ms: run.wall.as_secs_f64() * 1e3,
            peak_rss_mib: run.rss_kib as f64 / 1024.0,
            leaked: leaked.len(),
            deadlocked: deadlocked.len(),
            freeze: run.report.get("freeze").filter(|f| !f.is_null()).cloned(),
            scans,
        };
        eprintln!(
            "bench: bench_heap {mib} MiB{}: verdict in {:.1} s ({} leaked), scans {}, {:.0} MiB RSS",
            if frozen { " --freeze" } else { "" },
            hr.time_to_verdict_ms / 1e3,
            hr.leaked,
            hr.scans
                .iter()
                .map(|s| format!("{:.1} s {:.3} GB/s", s.took_ms / 1e3, s.gb_per_s))
                .collect::<Vec<_>>()
                .join(", "),
            hr.peak_rss_mib
        );
        runs.push(hr);
    }
    drop(target);
    let unfrozen: Vec<&HeapRun> = runs.iter().filter(|r| !r.frozen).collect();
    let all_scans: Vec<&ScanSample> = unfrozen.iter().flat_map(|r| &r.scans).collect();
    Ok(HeapResult {
        go_version: truth["go_version"].as_str().unwrap_or("").to_string(),
        requested_mib: mib,
        heap,
        truth_leaked,
        go_leaked: go.map(|g| g.len()),
        verdicts_match_truth: matches,
        median_time_to_verdict_ms: median(
            &unfrozen
                .iter()
                .map(|r| r.time_to_verdict_ms)
                .collect::<Vec<_>>(),
        ),
        median_scan_ms: median(&all_scans.iter().map(|s| s.took_ms).collect::<Vec<_>>()),
        median_gb_per_s: median(&all_scans.iter().map(|s| s.gb_per_s).collect::<Vec<_>>()),
        runs,
        go_gc_ms: floats(&timing["gc_ms"]),
        go_leakprofile_ms: floats(&timing["leakprofile_ms"]),
        freeze_supported,
    })
}

fn markdown(report: &Report) -> String {
    let t = &report.totals;
    let mut md = format!(
        "# Leak detection: parkscope vs Go's goroutineleak profile\n\n\
         Go {} fixtures (plain builds; not the demo or the trace_* fixtures), {} CPUs, one run. \
         Per fixture: goroutines truth.json expects leaked / deadlocked; goroutines Go's own \
         goroutineleak profile marked \"(leaked)\" (from the dump the fixture takes right after \
         the profile at its sync point); parkscope's `leaked` and `deadlocked` verdicts \
         (`parkscope leaks --format json`, two scans 100 ms apart); agreement on leaked \
         verdicts; and each side against truth.json. Go's detector is a reachability proof \
         only: it does not find deadlocks on locks that stay reachable (AB-BA on a global, a \
         double lock, RWMutex R-W-R), so the deadlocked column has no Go counterpart.\n\n\
         | fixture | truth leaked / deadlocked | Go leaked | parkscope leaked | parkscope deadlocked | both | only parkscope | only Go | parkscope vs truth (found, false) | Go vs truth (leaked found, false) | parkscope wall |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        report.release, report.cpus
    );
    for r in &report.fixtures {
        let go = r.go_leaked.as_ref();
        md.push_str(&format!(
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {}/{}, {} | {} | {:.0} ms |\n",
            r.fixture,
            r.truth_leaked,
            r.truth_deadlocked,
            go.map_or("no profile".into(), |g| g.len().to_string()),
            r.parkscope_leaked.len(),
            r.parkscope_deadlocked.len(),
            r.both,
            r.only_parkscope,
            r.only_go,
            r.parkscope_found,
            r.truth_leaked + r.truth_deadlocked,
            r.parkscope_false.len(),
            go.map_or("-".into(), |_| format!(
                "{}/{}, {}",
                r.go_found,
                r.truth_leaked,
                r.go_false.len()
            )),
            r.parkscope_wall_ms,
        ));
    }
    md.push_str(&format!(
        "| **total** | {} / {} | {} | {} | {} | {} | {} | {} | {}/{}, {} | {}/{}, {} | |\n",
        t.truth_leaked,
        t.truth_deadlocked,
        t.go_leaked,
        t.parkscope_leaked,
        t.parkscope_deadlocked,
        t.both,
        t.only_parkscope,
        t.only_go,
        t.parkscope_found,
        t.truth_leaked + t.truth_deadlocked,
        t.parkscope_false,
        t.go_found,
        t.truth_leaked,
        t.go_false,
    ));
    let mut notes = Vec::new();
    for r in &report.fixtures {
        for m in &r.parkscope_missed {
            notes.push(format!("- {}: parkscope missed {m}", r.fixture));
        }
        for f in &r.parkscope_false {
            notes.push(format!("- {}: parkscope FALSE {f}", r.fixture));
        }
        for m in &r.go_missed {
            notes.push(format!("- {}: Go missed {m}", r.fixture));
        }
        for f in &r.go_false {
            notes.push(format!("- {}: Go FALSE {f}", r.fixture));
        }
    }
    if !notes.is_empty() {
        md.push_str("\nDifferences from truth.json:\n\n");
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }

    let h = &report.heap;
    let gib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1u64 << 30) as f64;
    md.push_str(&format!(
        "\n## Scan cost on a large live heap\n\n\
         bench_heap ({}) with PARKSCOPE_BENCH_HEAP_MB={}: {} nodes of {} bytes in {} linked \
         shard chains with 3 random cross-links each; live heap after a GC {:.2} GiB in {} \
         objects (the runtime's HeapAlloc/HeapObjects); truth.json expects {} leaked \
         prefetchers, Go's profile marked {}. parkscope's verdicts {} truth.json in every run.\n\n\
         | run | time to verdict | scans (time, GB scanned, GB/s) | objects marked | heap metadata read | parkscope peak RSS | target pause (--freeze) |\n\
         |---|---|---|---|---|---|---|\n",
        h.go_version,
        h.requested_mib,
        h.heap["nodes"],
        h.heap["node_bytes"],
        h.heap["shards"],
        gib(&h.heap["heap_alloc_bytes"]),
        h.heap["heap_objects"],
        h.truth_leaked,
        h.go_leaked.map_or("nothing (no profile)".into(), |n| n.to_string()),
        if h.verdicts_match_truth {
            "matched"
        } else {
            "did NOT match"
        },
    ));
    for r in &h.runs {
        let pause = match (&r.freeze, r.frozen) {
            (Some(f), _) => format!(
                "{:.0} ms ({} threads stopped)",
                f["pause_ms"].as_f64().unwrap_or(f64::NAN),
                f["threads"]
            ),
            (None, true) => "no `freeze` in the report".into(),
            (None, false) => "- (not frozen)".into(),
        };
        md.push_str(&format!(
            "| `parkscope leaks{}` | {:.1} s | {} | {} | {:.1} MiB | {:.0} MiB | {} |\n",
            if r.frozen { " --freeze" } else { "" },
            r.time_to_verdict_ms / 1e3,
            r.scans
                .iter()
                .map(|s| format!(
                    "{:.1} s, {:.2} GB, {:.3} GB/s",
                    s.took_ms / 1e3,
                    s.bytes_scanned as f64 / 1e9,
                    s.gb_per_s
                ))
                .collect::<Vec<_>>()
                .join("; "),
            r.scans.first().map_or(0, |s| s.objects_marked),
            r.scans.first().map_or(0, |s| s.heap_metadata_bytes) as f64 / (1u64 << 20) as f64,
            r.peak_rss_mib,
            pause,
        ));
    }
    if !h.freeze_supported {
        md.push_str(
            "| `parkscope leaks --freeze` | TODO | TODO | | | | TODO: this parkscope build has no \
             `leaks --freeze` yet; the bench runs it when `parkscope leaks --help` lists it |\n",
        );
    }
    let heap_gb = h.heap["heap_alloc_bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let go_line = |label: &str, ms: &[f64]| {
        if ms.is_empty() {
            format!("- {label}: not available in this runtime\n")
        } else {
            let m = median(ms);
            format!(
                "- {label}: median {:.0} ms over {} ({}), i.e. {:.2} GB/s of live heap\n",
                m,
                ms.len(),
                ms.iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                heap_gb / (m / 1e3)
            )
        }
    };
    md.push_str(&format!(
        "\nMedians: time to verdict {:.1} s, scan {:.1} s, {:.3} GB/s. Time to verdict is the \
         whole `parkscope leaks` process: reading the executable, two full scans (each marks \
         the heap from the globals and the runnable goroutines' stacks to a fixpoint) 100 ms \
         apart, and the report. GB/s is the scan's `mark.bytes_scanned` (heap objects, \
         globals, stacks; 10^9 bytes) over its `took_ms`, which also covers reading the heap \
         metadata (spans, bitmaps) and the goroutines.\n\n\
         Go's own, measured inside the target before its sync point (same process, same heap; \
         its GC marks only each object's pointer prefix, 48 of the 256 bytes of a node, and runs \
         concurrently with the program):\n\n",
        h.median_time_to_verdict_ms / 1e3,
        h.median_scan_ms / 1e3,
        h.median_gb_per_s
    ));
    md.push_str(&go_line("forced GC cycle (runtime.GC)", &h.go_gc_ms));
    md.push_str(&go_line(
        "goroutineleak profile (WriteTo: a leak-detecting GC cycle)",
        &h.go_leakprofile_ms,
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_leaked_goids_come_from_dump_headers() {
        let dump = "goroutine 1 [chan receive]:\nmain.main()\n\n\
                    goroutine 9 [chan send (leaked)]:\nmain.worker()\n\n\
                    goroutine 12 [sync.Mutex.Lock (leaked), 3 minutes]:\n";
        assert_eq!(parse_go_leaked(dump), BTreeSet::from([9, 12]));
    }

    #[test]
    fn judge_splits_agreement_and_truth() {
        let truth = serde_json::json!({"goroutines": [
            {"goid": 1, "expect": "not_leaked", "wait_reason": "chan receive", "role": "main"},
            {"goid": 5, "expect": "leaked", "wait_reason": "chan send", "role": "w"},
            {"goid": 6, "expect": "leaked", "wait_reason": "chan send", "role": "w"},
            {"goid": 7, "expect": "deadlocked", "wait_reason": "sync.Mutex.Lock", "role": "d"},
        ]});
        let mut row = FixtureRow::default();
        judge(
            &mut row,
            &truth,
            &BTreeSet::from([5, 40]),
            &BTreeSet::from([7]),
            Some(&BTreeSet::from([5, 6])),
        );
        assert_eq!((row.truth_leaked, row.truth_deadlocked), (2, 1));
        assert_eq!((row.both, row.only_parkscope, row.only_go), (1, 1, 1));
        assert_eq!(row.parkscope_found, 2);
        assert_eq!(row.parkscope_missed.len(), 1);
        assert_eq!(row.parkscope_false.len(), 1); // goid 40, not in truth.json
        assert_eq!((row.go_found, row.go_false.len()), (2, 0));
    }
}
