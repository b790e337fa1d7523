//! `cargo xtask bench probes`: what each probe group costs a Go program on this machine.
//!
//! Side by side, so that a noisy machine (shared cores, other builds) hits both sides alike: for
//! each workload one fixture process runs throughout, and each round alternates a baseline window
//! (nothing attached) with a window of one probe group attached through `parkscope trace`
//! (budget 100%, so the governor stays out of the way). A window is 2 s of the fixture's
//! rate.log, starting 0.5 s after the attach (or after the previous detach, for a baseline). The
//! report gives, per group, the median over rounds of (group window / adjacent baseline window)
//! and of hits/s, plus the uprobe floor parkscope measures at startup (one calibration run; the
//! measured windows use --no-calibrate, so a noisy calibration cannot make the governor detach a
//! group mid-window). Workloads: trace_pingpong (channel ping-pong, the worst case for channel
//! probes), bench_mutex (one contended sync.Mutex) and bench_http (a JSON API on net/http under
//! in-process keep-alive load: a mutex-protected cache, a fan-out handler). Results go to
//! target/bench/probes.{md,json}.
//!
//! Not covered yet: ns per hit of each program against an empty uprobe on the same function (the
//! startup floor is measured on our own process instead).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::cmd;

const ROUNDS: usize = 5;
/// Left out of every window: attach, the first probe hits, the previous detach.
pub(crate) const SKIP: Duration = Duration::from_millis(500);
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

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

#[derive(Serialize)]
struct GroupResult {
    workload: String,
    group: String,
    median_hits_per_s: f64,
    median_ratio: f64,
    /// (group window / baseline window) of each round.
    ratios: Vec<f64>,
    /// Rounds in which the governor detached the group inside the window (the window then ends
    /// at the detach).
    governor_detached: usize,
}

#[derive(Serialize)]
struct Report {
    floor: String,
    rounds: usize,
    window_s: f64,
    skip_s: f64,
    /// Median baseline throughput per workload, in its rate.log unit per second.
    baselines: Vec<(String, String, f64)>,
    groups: Vec<GroupResult>,
}

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
            if line.starts_with("parkscope: attached") {
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

/// Hits per second of `group` while attached: the governor's figure when it detached the group
/// (the final line of `parkscope trace` averages over the detached time too), else the final
/// line's "... channels 339102 hits (112914/s) ...".
fn hits_per_s(stderr: &str, group: &str) -> f64 {
    let number_before = |l: &str, end: &str| -> Option<f64> {
        let head = &l[..l.find(end)?];
        head.rsplit([' ', '(']).next()?.parse().ok()
    };
    let governor = format!("detached group {group}: ");
    if let Some(hits) = stderr
        .lines()
        .find(|l| l.contains(&governor))
        .and_then(|l| number_before(l, " hits/s"))
    {
        return hits;
    }
    stderr
        .lines()
        .find(|l| l.contains("ended after"))
        .and_then(|l| number_before(l.split(&format!(" {group} ")).nth(1)?, "/s)"))
        .unwrap_or(0.0)
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

fn probes() -> anyhow::Result<()> {
    let parkscope = parkscope_bin()?;
    let out = cmd::repo_root().join("target/bench");
    let mut report = Report {
        floor: String::new(),
        rounds: ROUNDS,
        window_s: WINDOW.as_secs_f64(),
        skip_s: SKIP.as_secs_f64(),
        baselines: Vec::new(),
        groups: Vec::new(),
    };
    for &(name, unit, groups) in WORKLOADS {
        let fixture = Fixture::start(name, name, &[])?;
        if report.floor.is_empty() {
            report.floor = floor(&parkscope, fixture.pid())?;
            eprintln!("bench: {}", report.floor);
        }
        let mut baselines = Vec::new();
        let mut per_group: Vec<(Vec<f64>, Vec<f64>, usize)> =
            vec![Default::default(); groups.len()];
        for round in 1..=ROUNDS {
            for (i, group) in groups.iter().enumerate() {
                let base = fixture.baseline()?;
                let args = ["trace", "--probes", group, "--budget-percent", "100"];
                let (during, stderr) =
                    fixture.attached(&parkscope, &[&args[..], &["--no-calibrate"]].concat())?;
                let hits = hits_per_s(&stderr, group);
                eprintln!(
                    "bench: {name} round {round} {group}: baseline {base:.0} {unit}/s, \
                     attached {during:.0} ({:.0}%), {hits:.0} hits/s",
                    during / base * 100.0
                );
                baselines.push(base);
                per_group[i].0.push(during / base);
                per_group[i].1.push(hits);
                per_group[i].2 += usize::from(stderr.contains("detached group"));
            }
        }
        report
            .baselines
            .push((name.into(), unit.into(), median(&baselines)));
        for (group, (ratios, hits, detached)) in groups.iter().zip(per_group) {
            report.groups.push(GroupResult {
                workload: name.into(),
                group: group.to_string(),
                median_hits_per_s: median(&hits),
                median_ratio: median(&ratios),
                ratios,
                governor_detached: detached,
            });
        }
    }
    std::fs::write(
        out.join("probes.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut md = format!(
        "# Probe cost, side by side\n\n{}\n\n{} interleaved rounds of baseline / group windows \
         ({} s each, the first {} s after attach skipped); medians over rounds. Budget 100%: where the governor still detached a group (its \
         estimate of the cost went over one core), the window ends at the detach and hits/s is \
         the governor's figure.\n\n",
        report.floor, report.rounds, report.window_s, report.skip_s
    );
    for (name, unit, base) in &report.baselines {
        md.push_str(&format!("- {name}: baseline {base:.0} {unit}/s\n"));
    }
    md.push_str(
        "\n| workload | group | hits/s | throughput vs baseline | rounds | governor detached |\n\
         |---|---|---|---|---|---|\n",
    );
    for g in &report.groups {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0}% | {} | {} |\n",
            g.workload,
            g.group,
            g.median_hits_per_s,
            g.median_ratio * 100.0,
            g.ratios
                .iter()
                .map(|r| format!("{:.0}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(" "),
            g.governor_detached
        ));
    }
    std::fs::write(out.join("probes.md"), &md)?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::hits_per_s;

    #[test]
    fn hits_per_s_prefers_the_governor_figure() {
        let end = "parkscope: trace of pid 7 ended after 2.0s (the requested duration elapsed): \
                   251708 events, 1 dropped; park 362942 hits (181150/s), locks 5 hits (2/s)";
        let governor = "parkscope: detached group park: 427177 hits/s cost ~114.64% of a core, \
                        over the 100.00% budget; re-attaching in 5s";
        assert_eq!(hits_per_s(end, "park"), 181150.0);
        assert_eq!(hits_per_s(end, "locks"), 2.0);
        assert_eq!(hits_per_s(&format!("{governor}\n{end}"), "park"), 427177.0);
        assert_eq!(hits_per_s(end, "channels"), 0.0);
    }
}
