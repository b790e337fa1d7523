//! Renderings of the model: text for people, JSON for programs, DOT/SVG for the wait-for graph,
//! pprof for `go tool pprof`.

pub mod contention;
pub mod dot;
pub mod leaks;
pub mod pprof;
pub mod text;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hash, Hasher};

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
struct GroupKey<'a>(&'a Goroutine);

impl Hash for GroupKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let g = self.0;
        g.status.hash(h);
        g.wait_reason.hash(h);
        h.write_usize(g.stack.len());
        for f in &g.stack {
            // Lines and the names' ends tell frames apart well enough for a hash (equal keys
            // still hash alike); `eq` compares the names whole.
            h.write_u32(f.line);
            hash_ends(&f.function, h);
            hash_ends(&f.file, h);
        }
    }
}

/// A string's length and its first and last 8 bytes.
fn hash_ends<H: Hasher>(s: &str, h: &mut H) {
    let b = s.as_bytes();
    let word = |part: &[u8]| {
        let mut w = [0u8; 8];
        w[..part.len()].copy_from_slice(part);
        u64::from_le_bytes(w)
    };
    h.write_usize(b.len());
    h.write_u64(word(&b[..b.len().min(8)]));
    h.write_u64(word(&b[b.len().saturating_sub(8)..]));
}

impl PartialEq for GroupKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0, other.0);
        a.status == b.status
            && a.wait_reason == b.wait_reason
            && a.stack.len() == b.stack.len()
            && a.stack
                .iter()
                .zip(&b.stack)
                .all(|(x, y)| x.line == y.line && x.function == y.function && x.file == y.file)
    }
}

impl Eq for GroupKey<'_> {}

/// Word-at-a-time FxHash-style hashing for the group keys (function and file names of every
/// frame of every goroutine: a lot of bytes at 100k goroutines). Not DoS-resistant, and needs
/// not be: a slow map only slows our own output.
#[derive(Default)]
struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let (words, rest) = bytes.as_chunks::<8>();
        for w in words {
            self.add(u64::from_le_bytes(*w));
        }
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// Group identical goroutines; longest-parked, then largest groups first.
pub fn group(snapshot: &Snapshot) -> Vec<Group<'_>> {
    let mut index: HashMap<GroupKey<'_>, usize, BuildHasherDefault<KeyHasher>> = HashMap::default();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for g in &snapshot.goroutines {
        match index.entry(GroupKey(g)) {
            Entry::Occupied(i) => groups[*i.get()].members.push(g),
            Entry::Vacant(slot) => {
                slot.insert(groups.len());
                groups.push(Group { members: vec![g] });
            }
        }
    }
    // Longest-parked first, then largest, then by goid (each key worked out once per group).
    groups.sort_by_cached_key(|g| {
        (
            std::cmp::Reverse(g.longest_parked_ns().unwrap_or(0)),
            std::cmp::Reverse(g.members.len()),
            g.representative().goid,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Frame, Status};

    fn goroutine(goid: i64, parked_for_ns: u64, lines: &[u32]) -> Goroutine {
        Goroutine {
            goid,
            status: Status::Waiting,
            wait_reason: Some("chan receive".into()),
            parked_for_ns: Some(parked_for_ns),
            start: None,
            created_by: None,
            parent_goid: None,
            // Fresh strings for every goroutine: grouping compares names, not allocations.
            stack: lines
                .iter()
                .map(|&line| Frame {
                    function: format!("main.f{line}").into(),
                    file: String::from("/src/main.go").into(),
                    line,
                    pc: 0x1000 + u64::from(line),
                    inlined: false,
                })
                .collect(),
            blocked_on: Vec::new(),
            g_addr: 0,
            on_cpu: false,
            unstable: false,
            system: false,
            verdict: None,
        }
    }

    #[test]
    fn groups_identical_stacks_longest_parked_then_largest_first() {
        let snapshot = Snapshot {
            pid: 1,
            go_version: String::new(),
            executable: String::new(),
            taken_at: String::new(),
            goroutines: vec![
                goroutine(1, 5, &[10, 20]),
                goroutine(2, 5, &[10, 21]),
                goroutine(3, 7, &[10, 20]),
                goroutine(4, 1, &[10, 21]),
                goroutine(5, 1, &[10, 21]),
                goroutine(6, 7, &[11]),
            ],
            objects: Vec::new(),
            edges: Vec::new(),
            skipped_unstable: 0,
        };
        let groups: Vec<Vec<i64>> = group(&snapshot)
            .iter()
            .map(|g| g.members.iter().map(|m| m.goid).collect())
            .collect();
        assert_eq!(groups, vec![vec![1, 3], vec![6], vec![2, 4, 5]]);
    }
}
