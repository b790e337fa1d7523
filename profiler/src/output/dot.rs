//! The wait-for graph in Graphviz DOT: goroutine groups (boxes) wait on objects (ellipses).

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::model::Snapshot;
use crate::output::group;

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph waitfor {{");
    let _ = writeln!(
        out,
        "  rankdir=LR;\n  node [fontname=\"monospace\", fontsize=10];"
    );
    let _ = writeln!(
        out,
        "  label=\"pid {} {} — {} goroutines\";",
        snapshot.pid,
        escape(&snapshot.go_version),
        snapshot.goroutines.len()
    );
    let mut used_objects = BTreeSet::new();
    for (i, group) in group(snapshot).iter().enumerate() {
        let g = group.representative();
        // Only goroutines that wait on something belong in a wait-for graph.
        if g.blocked_on.is_empty() {
            continue;
        }
        let site = g
            .stack
            .iter()
            .find(|f| !f.function.starts_with("runtime.") && !f.function.starts_with("sync."))
            .map(|f| {
                format!(
                    "{}\\n{}:{}",
                    escape(&f.function),
                    escape(short(&f.file)),
                    f.line
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  g{i} [shape=box, label=\"{} × [{}]\\n{site}\"];",
            group.members.len(),
            escape(g.wait_reason.as_deref().unwrap_or(g.status.as_str()))
        );
        for b in &g.blocked_on {
            used_objects.insert(b.addr);
            let _ = writeln!(out, "  g{i} -> o{:x} [label=\"{:?}\"];", b.addr, b.op);
        }
    }
    for o in snapshot
        .objects
        .iter()
        .filter(|o| used_objects.contains(&o.addr))
    {
        let detail = o
            .chan
            .as_ref()
            .map(|c| {
                format!(
                    "\\ncap {} len {}{}",
                    c.cap,
                    c.len,
                    if c.closed { " closed" } else { "" }
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  o{:x} [shape=ellipse, label=\"{} {:#x}{detail}\"];",
            o.addr,
            o.kind.as_str(),
            o.addr
        );
    }
    let _ = writeln!(out, "}}");
    out
}

fn short(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}
