//! `cargo xtask bench probes`: what each probe group costs a Go program on this machine.
//!
//! Starts the trace_pingpong fixture (Go 1.26; the worst case: a token bounced over unbuffered
//! channels as fast as the CPU allows), measures its throughput alone, then with each probe
//! group attached through `parkscope trace` (budget 100%, so the governor stays out of the
//! way), and records hits/s per group, the uprobe floor parkscope measured at startup, and the
//! throughput ratio. Results go to target/bench/probes.{md,json}.
//!
//! Not covered yet: the contended-mutex and HTTP workloads, and ns per hit of each program
//! against an empty uprobe on the same function (the startup floor is measured on our own
//! process instead).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::cmd;

const GROUPS: &[&str] = &["lifecycle", "park", "channels", "locks"];
const WINDOW: Duration = Duration::from_secs(3);

#[derive(Serialize)]
struct GroupResult {
    group: String,
    hits_per_s: f64,
    rallies_per_s: f64,
    throughput_vs_baseline: f64,
}

#[derive(Serialize)]
struct Report {
    fixture: String,
    floor: String,
    baseline_rallies_per_s: f64,
    groups: Vec<GroupResult>,
}

pub fn run(what: &str) -> anyhow::Result<()> {
    match what {
        "probes" => probes(),
        "snapshot" => crate::bench_snapshot::run(),
        other => bail!("unknown benchmark {other:?} (known: probes, snapshot)"),
    }
}

fn parkscope_bin() -> PathBuf {
    std::env::var_os("PARKSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let release = cmd::repo_root().join("target/release/parkscope");
            if release.exists() {
                release
            } else {
                cmd::repo_root().join("target/debug/parkscope")
            }
        })
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Mean rallies per second over rate.log samples taken in (from, to].
fn rate(log: &Path, from: u128, to: u128) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(log)?;
    let samples: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let (t, n) = l.split_once(' ')?;
            let t: u128 = t.parse().ok()?;
            if t > from && t <= to {
                n.parse().ok()
            } else {
                None
            }
        })
        .collect();
    anyhow::ensure!(!samples.is_empty(), "no throughput samples in the window");
    // Samples are per 100 ms.
    Ok(samples.iter().sum::<f64>() / samples.len() as f64 * 10.0)
}

struct Fixture(Child);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probes() -> anyhow::Result<()> {
    let fixture = cmd::repo_root().join("target/fixtures/1.26/plain/trace_pingpong");
    anyhow::ensure!(
        fixture.exists(),
        "{} is missing: run `cargo xtask fixtures --releases 1.26`",
        fixture.display()
    );
    let parkscope = parkscope_bin();
    anyhow::ensure!(
        parkscope.exists(),
        "{} is missing: build parkscope",
        parkscope.display()
    );
    let out = cmd::repo_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let work = out.join("pingpong");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let child = Command::new(&fixture)
        .env("PARKSCOPE_FIXTURE_OUT", &work)
        .stdout(Stdio::null())
        .spawn()
        .context("starting trace_pingpong")?;
    let pid = child.id();
    let _guard = Fixture(child);
    let log = work.join("rate.log");
    std::thread::sleep(Duration::from_secs(2));
    let t0 = now_ns();
    std::thread::sleep(WINDOW);
    let baseline = rate(&log, t0, now_ns())?;
    eprintln!("bench: baseline {baseline:.0} rallies/s");

    let mut groups = Vec::new();
    let mut floor = String::new();
    for group in GROUPS {
        let start = now_ns();
        let output = Command::new(&parkscope)
            .args(["trace", "--pid", &pid.to_string(), "--probes", group])
            .args(["--budget-percent", "100", "--duration", "3s"])
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("running {}", parkscope.display()))?;
        let end = now_ns();
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(
            output.status.success(),
            "parkscope trace --probes {group}: {stderr}"
        );
        if floor.is_empty()
            && let Some(line) = stderr.lines().find(|l| l.contains("uprobe floor"))
        {
            floor = line.trim_start_matches("parkscope: ").to_string();
        }
        // "... channels 339102 hits (112914/s) ..."
        let hits_per_s = stderr
            .lines()
            .find(|l| l.contains("ended after"))
            .and_then(|l| {
                let after = l.split(&format!("{group} ")).nth(1)?;
                let open = after.find('(')?;
                let close = after.find("/s)")?;
                after[open + 1..close].parse::<f64>().ok()
            })
            .unwrap_or(0.0);
        // Skip the first second (attach, calibration).
        let during = rate(&log, start + 1_500_000_000, end)?;
        eprintln!("bench: {group}: {hits_per_s:.0} hits/s, {during:.0} rallies/s");
        groups.push(GroupResult {
            group: group.to_string(),
            hits_per_s,
            rallies_per_s: during,
            throughput_vs_baseline: during / baseline,
        });
        std::thread::sleep(Duration::from_secs(1));
    }
    let report = Report {
        fixture: "trace_pingpong (Go 1.26, 2 pairs)".into(),
        floor,
        baseline_rallies_per_s: baseline,
        groups,
    };
    std::fs::write(
        out.join("probes.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut md = format!(
        "# Probe cost: channel ping-pong\n\n{}\n\nBaseline: {:.0} rallies/s.\n\n\
         | group | hits/s | rallies/s | throughput vs baseline |\n|---|---|---|---|\n",
        report.floor, report.baseline_rallies_per_s
    );
    for g in &report.groups {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0}% |\n",
            g.group,
            g.hits_per_s,
            g.rallies_per_s,
            g.throughput_vs_baseline * 100.0
        ));
    }
    std::fs::write(out.join("probes.md"), &md)?;
    print!("{md}");
    Ok(())
}
