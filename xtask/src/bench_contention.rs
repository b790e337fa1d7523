//! `cargo xtask bench contention`: what contention profiling costs a contended-mutex program,
//! parkscope's against Go's own.
//!
//! Two bench_mutex processes: one plain, one with Go's in-process mutex and block profiling at
//! rate 1 (BENCH_GO_PROFILING=1). Only one runs at a time (the other is SIGSTOPped), and each
//! round measures, one after the other: the plain process alone (baseline), the plain process
//! with `parkscope profile --probes park,locks` attached, and the Go-profiling process. Windows as
//! in `bench probes`; the report gives the median over rounds of each window against the
//! baseline of its round. Results go to target/bench/contention.{md,json}.
//!
//! Not covered yet: the HTTP workload, and accuracy against Go's profiles (the oracle test does
//! that for one run).

use serde::Serialize;

use crate::bench::{Fixture, median, parkscope_bin};
use crate::cmd;

const ROUNDS: usize = 5;

#[derive(Serialize)]
struct Report {
    fixture: String,
    rounds: usize,
    median_baseline_per_s: f64,
    /// parkscope profile --probes park,locks attached, against the baseline.
    median_parkscope_ratio: f64,
    /// Go's mutex+block profiling at rate 1, against the baseline.
    median_go_profiling_ratio: f64,
    parkscope_ratios: Vec<f64>,
    go_profiling_ratios: Vec<f64>,
}

pub fn run() -> anyhow::Result<()> {
    let parkscope = parkscope_bin()?;
    let out = cmd::repo_root().join("target/bench");
    let go_prof = Fixture::start(
        "bench_mutex",
        "contention-goprof",
        &[("BENCH_GO_PROFILING", "1")],
    )?;
    go_prof.pause(true);
    let plain = Fixture::start("bench_mutex", "contention-plain", &[])?;
    let profile_out = out.join("contention-profile.json");
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
        let (with_parkscope, _) = plain.attached(&parkscope, &args)?;
        plain.pause(true);
        go_prof.pause(false);
        let with_go = go_prof.baseline()?;
        go_prof.pause(true);
        plain.pause(false);
        eprintln!(
            "bench: round {round}: baseline {base:.0} increments/s, parkscope {:.0}%, Go profiling {:.0}%",
            with_parkscope / base * 100.0,
            with_go / base * 100.0
        );
        baselines.push(base);
        ours.push(with_parkscope / base);
        gos.push(with_go / base);
    }
    let report = Report {
        fixture: "bench_mutex (Go 1.26, 4 workers on one sync.Mutex)".into(),
        rounds: ROUNDS,
        median_baseline_per_s: median(&baselines),
        median_parkscope_ratio: median(&ours),
        median_go_profiling_ratio: median(&gos),
        parkscope_ratios: ours,
        go_profiling_ratios: gos,
    };
    std::fs::write(
        out.join("contention.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = format!(
        "# Contention profiling cost: contended mutex\n\n{}: baseline {:.0} increments/s; {} \
         interleaved rounds, medians.\n\n| mode | throughput vs baseline |\n|---|---|\n\
         | parkscope profile --probes park,locks | {:.0}% |\n\
         | Go mutex+block profiling at rate 1 | {:.0}% |\n",
        report.fixture,
        report.median_baseline_per_s,
        report.rounds,
        report.median_parkscope_ratio * 100.0,
        report.median_go_profiling_ratio * 100.0
    );
    std::fs::write(out.join("contention.md"), &md)?;
    print!("{md}");
    Ok(())
}
