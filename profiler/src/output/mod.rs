//! Renderings of the model: text for people, JSON for programs, DOT/SVG for the wait-for graph,
//! pprof for `go tool pprof`.

pub mod dot;
pub mod leaks;
pub mod pprof;
pub mod text;

use crate::model::{Goroutine, Snapshot};

/// Goroutines with identical state and stack, as pprof's debug=1 groups them.
pub struct Group<'a> {
    pub members: Vec<&'a Goroutine>,
}

impl Group<'_> {
    pub fn representative(&self) -> &Goroutine {
        self.members[0]
    }

    pub fn longest_parked_ns(&self) -> Option<u64> {
        self.members.iter().filter_map(|g| g.parked_for_ns).max()
    }
}

/// Identity of a group: state, wait reason and the frames (function, file, line).
fn group_key(g: &Goroutine) -> (String, Option<String>, Vec<(String, String, u32)>) {
    (
        g.status.as_str().to_string(),
        g.wait_reason.clone(),
        g.stack
            .iter()
            .map(|f| (f.function.clone(), f.file.clone(), f.line))
            .collect(),
    )
}

/// Group identical goroutines; longest-parked, then largest groups first.
pub fn group(snapshot: &Snapshot) -> Vec<Group<'_>> {
    let mut index: std::collections::HashMap<_, usize> = std::collections::HashMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for g in &snapshot.goroutines {
        let key = group_key(g);
        match index.get(&key) {
            Some(&i) => groups[i].members.push(g),
            None => {
                index.insert(key, groups.len());
                groups.push(Group { members: vec![g] });
            }
        }
    }
    groups.sort_by(|a, b| {
        b.longest_parked_ns()
            .unwrap_or(0)
            .cmp(&a.longest_parked_ns().unwrap_or(0))
            .then(b.members.len().cmp(&a.members.len()))
            .then(a.representative().goid.cmp(&b.representative().goid))
    });
    groups
}

/// "3m12s", "450ms": durations the way people read them.
pub fn human_duration(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    match secs {
        0 => format!("{}ms", ns / 1_000_000),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}
