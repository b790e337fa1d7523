//! `cargo xtask bench contention`: what contention profiling costs a Go program, parkscope's
//! against Go's own, on a contended mutex and on an HTTP service under load, in the same run.
//!
//! Per workload, two processes of the same fixture: one plain, one with Go's in-process mutex and
//! block profiling at rate 1 (BENCH_GO_PROFILING=1). Only one runs at a time (the other is
//! SIGSTOPped), and each round measures, one after the other: the plain process alone
//! (baseline), the plain process with `parkscope profile --probes park,locks` attached, and the
//! Go-profiling process. Windows as in `bench probes`; the report gives the median over rounds of
//! each window against the baseline of its round. Workloads: bench_mutex (4 workers on one
//! sync.Mutex) and bench_http (a JSON API on net/http with a mutex-protected cache and a fan-out
//! handler, loaded by 8 in-process keep-alive clients). Results go to
//! target/bench/contention.{md,json}.
//!
//! Not covered yet: accuracy against Go's profiles (the oracle test does that for one run).

use serde::Serialize;

use crate::bench::{Fixture, SKIP, WINDOW, median, parkscope_bin};
use crate::cmd;

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
    parkscope_ratios: Vec<f64>,
    go_profiling_ratios: Vec<f64>,
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
    let (mut baselines, mut ours, mut gos) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let base = plain.baseline()?;
        let (with_parkscope, _) = plain.attached(parkscope, &args)?;
        plain.pause(true);
        go_prof.pause(false);
        let with_go = go_prof.baseline()?;
        go_prof.pause(true);
        plain.pause(false);
        eprintln!(
            "bench: {name} round {round}: baseline {base:.0} {unit}/s, parkscope {:.0}%, \
             Go profiling {:.0}%",
            with_parkscope / base * 100.0,
            with_go / base * 100.0
        );
        baselines.push(base);
        ours.push(with_parkscope / base);
        gos.push(with_go / base);
    }
    Ok(WorkloadResult {
        fixture: name.into(),
        description: description.into(),
        unit: unit.into(),
        median_baseline_per_s: median(&baselines),
        median_parkscope_ratio: median(&ours),
        median_go_profiling_ratio: median(&gos),
        parkscope_ratios: ours,
        go_profiling_ratios: gos,
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
             | {} | Go mutex+block profiling at rate 1 | {:.0}% | {} |\n",
            w.fixture,
            w.median_parkscope_ratio * 100.0,
            percents(&w.parkscope_ratios),
            w.fixture,
            w.median_go_profiling_ratio * 100.0,
            percents(&w.go_profiling_ratios),
        ));
    }
    std::fs::write(out.join("contention.md"), &md)?;
    print!("{md}");
    Ok(())
}
