//! The wait-for graph in Graphviz DOT: goroutine groups (boxes) wait on objects (ellipses).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::error::InspectError;

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
        // Proven leaks stand out in red, deadlocks in orange, suspect clusters in yellow.
        let has = |verdict: &str| {
            group
                .members
                .iter()
                .any(|m| m.verdict.as_deref() == Some(verdict))
        };
        let style = if has("leaked") {
            ", style=filled, fillcolor=\"#f4a6a6\", color=\"#b00000\""
        } else if has("deadlocked") {
            ", style=filled, fillcolor=\"#f8c888\", color=\"#b05000\""
        } else if has("suspect") {
            ", style=filled, fillcolor=\"#fff2a8\", color=\"#a08000\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  g{i} [shape=box{style}, label=\"{} × [{}]\\n{site}\"];",
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

/// Render DOT to SVG with Graphviz's `dot`, saying how to get it when it is missing.
pub fn render_svg(dot: &str) -> Result<Vec<u8>, InspectError> {
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InspectError::io(
                "--format svg needs Graphviz's `dot` (Debian/Ubuntu: apt-get install graphviz); \
                 --format dot writes the graph without it",
                e,
            ));
        }
        Err(e) => return Err(InspectError::io("starting Graphviz dot", e)),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(dot.as_bytes())
        .map_err(|e| InspectError::io("feeding Graphviz dot", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| InspectError::io("running Graphviz dot", e))?;
    if !out.status.success() {
        return Err(InspectError::io(
            "Graphviz dot failed",
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(out.stdout)
}
