//! The text leak report: findings first (most goroutines first), each with its site, the
//! objects, the evidence and one stack; then the scan figures and what was not checked.

use std::fmt::Write;

use crate::analysis::leaks::LeakReport;
use crate::output::human_duration;

pub fn render(report: &LeakReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pid {} ({}) {} — {} goroutines, {} leaked, {} deadlocked, {} suspect in {} finding(s), taken {}",
        report.pid,
        report.executable,
        report.go_version,
        report.goroutines,
        report.leaked,
        report.deadlocked,
        report.suspect,
        report.findings.len(),
        report.taken_at
    );
    for (i, f) in report.findings.iter().enumerate() {
        let site = f
            .site
            .as_ref()
            .map(|s| format!("{} ({}:{})", s.function, s.file, s.line))
            .unwrap_or_else(|| "unknown site".into());
        let parked = f
            .parked_for_ns
            .map(|ns| format!(", parked up to {}", human_duration(ns)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n#{} {} ×{} [{}] at {site}{parked}",
            i + 1,
            f.kind,
            f.count,
            f.wait_reason
        );
        let goids: Vec<String> = f.goids.iter().map(|g| g.to_string()).collect();
        let _ = writeln!(out, "   goroutines: {}", goids.join(" "));
        for o in &f.objects {
            let _ = writeln!(
                out,
                "   waits on: {} {:#x} ({:?})",
                o.kind.as_str(),
                o.addr,
                o.op
            );
        }
        let _ = writeln!(out, "   why: {}", f.evidence);
        if let Some(c) = &f.created_by {
            let _ = writeln!(out, "   created by {} ({}:{})", c.function, c.file, c.line);
        }
        for frame in &f.stack {
            let _ = writeln!(
                out,
                "     {}\n       {}:{}",
                frame.function, frame.file, frame.line
            );
        }
    }
    if report.findings.is_empty() {
        let _ = writeln!(out, "\nno leaked or deadlocked goroutine found");
    }
    let times: Vec<String> = report
        .scans
        .iter()
        .map(|s| format!("{:.1} ms ({} objects)", s.took_ms, s.mark.objects_marked))
        .collect();
    match &report.freeze {
        Some(f) => {
            let _ = writeln!(
                out,
                "\n1 scan with the target frozen ({} threads stopped for {:.1} ms): {}",
                f.threads,
                f.pause_ms,
                times.join(", ")
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\n{} scans {} ms apart, a verdict only when all agree: {}",
                report.scans.len(),
                report.interval_ms,
                times.join(", ")
            );
        }
    }
    let _ = writeln!(out, "not checked:");
    for l in &report.limitations {
        let _ = writeln!(out, "  - {l}");
    }
    out
}
