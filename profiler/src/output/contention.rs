//! Contention for people and for `go tool pprof`: the text tables of `profile` and `top`, the
//! partial-window lines, the goroutines-by-state block, and the stack samples of the pprof files
//! (Go's block/mutex conventions: one sample per distinct stack, contentions and delay).

use std::collections::HashMap;

use crate::analysis::contention::{Accountant, Report, Row, waker_site};
use crate::goruntime::states::StateCounts;
use crate::model::Location;
use crate::model::contention::UNKNOWN_SITE;
use crate::output::pprof::StackSample;
use crate::remote::memory::MemError;

pub fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{:.2}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1}µs", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

/// Gaps as human text, relative to the session start.
pub fn gap_lines(report: &Report, start_ns: u64) -> Vec<String> {
    report
        .gaps
        .iter()
        .map(|g| {
            let from = g.from_ns.saturating_sub(start_ns) as f64 / 1e9;
            match g.to_ns {
                Some(to) => format!(
                    "partial window: probe group {} detached by the governor from {from:.1}s to \
                     {:.1}s",
                    g.group,
                    to.saturating_sub(start_ns) as f64 / 1e9
                ),
                None => format!(
                    "partial window: probe group {} detached by the governor from {from:.1}s to \
                     the end",
                    g.group
                ),
            }
        })
        .collect()
}

/// The three tables (waiting sites, holder/waker sites, objects) under a totals line.
pub fn render_text(report: &Report, partial: &[String]) -> String {
    let mut s = String::new();
    let t = &report.total;
    s.push_str(&format!(
        "contended waits: {}  total delay {}  max {}  p50 {}  p90 {}  p99 {}\n",
        t.count,
        fmt_ns(t.total_ns),
        fmt_ns(t.max_ns),
        fmt_ns(t.p50_ns),
        fmt_ns(t.p90_ns),
        fmt_ns(t.p99_ns)
    ));
    for p in partial {
        s.push_str(&format!("PARTIAL: {p}\n"));
    }
    let table = |s: &mut String, title: &str, rows: &[Row], peer: &str| {
        s.push_str(&format!(
            "\n{title}\n{:>10} {:>7} {:>9} {:>9} {:>9} {:>9}  {:<13} {}\n",
            "total", "count", "max", "p50", "p90", "p99", "kind", "site"
        ));
        for r in rows {
            s.push_str(&format!(
                "{:>10} {:>7} {:>9} {:>9} {:>9} {:>9}  {:<13} {}\n",
                fmt_ns(r.stats.total_ns),
                r.stats.count,
                fmt_ns(r.stats.max_ns),
                fmt_ns(r.stats.p50_ns),
                fmt_ns(r.stats.p90_ns),
                fmt_ns(r.stats.p99_ns),
                r.kind.name(),
                r.key
            ));
            if let Some(p) = r.peers.first() {
                s.push_str(&format!(
                    "{:>58}{peer} {} ({})\n",
                    "",
                    p.site,
                    fmt_ns(p.delay_ns)
                ));
            }
        }
    };
    table(&mut s, "WAITING SITES", &report.sites, "held by");
    table(&mut s, "HOLDER / WAKER SITES", &report.holders, "made wait");
    table(&mut s, "OBJECTS", &report.objects, "waited at");
    s
}

/// A stack for a pprof sample: its frames, or the placeholder frame when none was captured.
pub fn pprof_frames(stack: &[Location], fallback: &str) -> Vec<(String, String, u32)> {
    if stack.is_empty() {
        return vec![(fallback.to_string(), String::new(), 0)];
    }
    stack
        .iter()
        .map(|f| (f.function.to_string(), f.file.to_string(), f.line))
        .collect()
}

/// Samples keyed by (kind label, stack), summed: one contention and its delay per entry of
/// `entries`. Largest delay first.
pub fn stack_samples(
    entries: impl IntoIterator<Item = (&'static str, Vec<(String, String, u32)>, u64)>,
) -> Vec<StackSample> {
    type Key = (&'static str, Vec<(String, String, u32)>);
    let mut agg: HashMap<Key, (i64, i64)> = HashMap::new();
    for (kind, frames, ns) in entries {
        let e = agg.entry((kind, frames)).or_default();
        e.0 += 1;
        e.1 += ns as i64;
    }
    let mut out: Vec<StackSample> = agg
        .into_iter()
        .map(|((kind, frames), (n, d))| StackSample {
            frames,
            contentions: n,
            delay_ns: d,
            labels: vec![("kind".into(), kind.into())],
        })
        .collect();
    out.sort_by(|a, b| b.delay_ns.cmp(&a.delay_ns).then(a.frames.cmp(&b.frames)));
    out
}

/// The accountant's pprof samples: waiting stacks (one per finished wait) or, with `holders`,
/// holder/waker stacks (one per charged interval).
pub fn accountant_samples(acc: &Accountant, holders: bool) -> Vec<StackSample> {
    if holders {
        stack_samples(acc.charges.iter().map(|c| {
            let frames = if c.waker_stack.is_empty() {
                let f = waker_site(c.kind, c.waker_goid, &[]);
                pprof_frames(&[], &f.function)
            } else {
                pprof_frames(&c.waker_stack, UNKNOWN_SITE)
            };
            (c.kind.name(), frames, c.ns)
        }))
    } else {
        stack_samples(acc.waits.iter().map(|w| {
            (
                w.kind.name(),
                pprof_frames(&w.stack, UNKNOWN_SITE),
                w.delay_ns,
            )
        }))
    }
}

/// The "goroutines by state" block of a `top` refresh.
pub fn render_states(counts: &Result<StateCounts, MemError>, rows: usize) -> String {
    let counts = match counts {
        Ok(c) => c,
        Err(e) => return format!("goroutines by state: unavailable ({e})\n"),
    };
    let mut s = format!(
        "goroutines by state: {} (runtime-internal: {}{})\n",
        counts.total,
        counts.system,
        if counts.unreadable > 0 {
            format!(
                "; {} records changed while read, not counted",
                counts.unreadable
            )
        } else {
            String::new()
        }
    );
    let sorted = counts.sorted();
    // Every state when there are few; else the largest and one line for the rest.
    let shown = if sorted.len() <= rows + 1 {
        sorted.len()
    } else {
        rows
    };
    for (state, n) in &sorted[..shown] {
        s.push_str(&format!("  {n:>7} {state}\n"));
    }
    if shown < sorted.len() {
        let rest: u64 = sorted[shown..].iter().map(|(_, n)| n).sum();
        s.push_str(&format!(
            "  {rest:>7} in {} other states\n",
            sorted.len() - shown
        ));
    }
    s
}
