//! The text snapshot: like pprof's goroutine debug=1, grouped, with the object each group waits
//! on and who is on the other side. Readable at 100k goroutines because it prints groups.

use std::fmt::Write;

use crate::model::{Object, ObjectKind, Snapshot};
use crate::output::{group, human_duration};

/// `show_system`: include the runtime's own goroutines, which Go's dump also hides by default.
pub fn render(snapshot: &Snapshot, show_system: bool) -> String {
    let mut out = String::new();
    let groups: Vec<_> = group(snapshot)
        .into_iter()
        .filter(|g| show_system || !g.representative().system)
        .collect();
    let hidden = snapshot.goroutines.iter().filter(|g| g.system).count();
    let _ = writeln!(
        out,
        "pid {} ({}) {} — {} goroutines in {} groups, taken {}",
        snapshot.pid,
        snapshot.executable,
        snapshot.go_version,
        snapshot.goroutines.len(),
        groups.len(),
        snapshot.taken_at
    );
    if !show_system && hidden > 0 {
        let _ = writeln!(
            out,
            "({hidden} runtime goroutines not shown: --system shows them)"
        );
    }
    if snapshot.skipped_unstable > 0 {
        let _ = writeln!(
            out,
            "({} goroutines kept changing under the reader: shown without stacks)",
            snapshot.skipped_unstable
        );
    }
    for group in &groups {
        let g = group.representative();
        let state = g
            .wait_reason
            .clone()
            .unwrap_or_else(|| g.status.as_str().to_string());
        let parked = group
            .longest_parked_ns()
            .map(|ns| format!(", up to {}", human_duration(ns)))
            .unwrap_or_default();
        let mut goids: Vec<i64> = group.members.iter().map(|g| g.goid).collect();
        goids.sort_unstable();
        let shown: Vec<String> = goids.iter().take(8).map(i64::to_string).collect();
        let more = if goids.len() > 8 {
            format!(" +{}", goids.len() - 8)
        } else {
            String::new()
        };
        let with_verdict = |verdict: &str| {
            group
                .members
                .iter()
                .filter(|m| m.verdict.as_deref() == Some(verdict))
                .count()
        };
        let tag = match (with_verdict("leaked"), with_verdict("deadlocked")) {
            (0, 0) => String::new(),
            (leaked, 0) => format!("LEAKED ({leaked}) "),
            (0, deadlocked) => format!("DEADLOCKED ({deadlocked}) "),
            (leaked, deadlocked) => format!("LEAKED ({leaked}) DEADLOCKED ({deadlocked}) "),
        };
        let _ = writeln!(
            out,
            "\n{tag}{} goroutine{} [{state}{parked}]  goid {}{more}",
            group.members.len(),
            if group.members.len() == 1 { "" } else { "s" },
            shown.join(",")
        );
        for b in &g.blocked_on {
            let object = snapshot.objects.iter().find(|o| o.addr == b.addr);
            let _ = writeln!(
                out,
                "  waits to {:?} on {} {:#x}{}",
                b.op,
                b.kind.as_str(),
                b.addr,
                object
                    .map(|o| describe_object(o, g.goid))
                    .unwrap_or_default()
            );
        }
        if g.on_cpu {
            let _ = writeln!(out, "  (running on a CPU: no stable stack)");
        }
        for frame in &g.stack {
            let _ = writeln!(
                out,
                "  {}{}\n      {}:{}",
                frame.function,
                if frame.inlined { " (inlined)" } else { "" },
                frame.file,
                frame.line
            );
        }
        if let Some(created) = &g.created_by {
            let parent = g
                .parent_goid
                .map(|p| format!(" in goroutine {p}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  created by {}{parent}\n      {}:{}",
                created.function, created.file, created.line
            );
        }
    }
    out
}

fn list(goids: &[i64], me: i64) -> String {
    // Comma-separated, written straight into one string: a channel can have 100k waiters.
    let mut out = String::new();
    for g in goids.iter().filter(|&&g| g != me) {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{g}");
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

fn describe_object(o: &Object, me: i64) -> String {
    match (&o.kind, &o.chan) {
        (ObjectKind::Chan, Some(c)) => format!(
            " (cap {}, len {}{}; blocked senders: {}; blocked receivers: {})",
            c.cap,
            c.len,
            if c.closed { ", closed" } else { "" },
            list(&o.senders, me),
            list(&o.receivers, me)
        ),
        _ if !o.waiters.is_empty() => format!(" (other waiters: {})", list(&o.waiters, me)),
        _ => String::new(),
    }
}
