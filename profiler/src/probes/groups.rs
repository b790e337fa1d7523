//! Probe groups and the eBPF program behind each Go runtime function.

use std::fmt;
use std::str::FromStr;

use profiler_common::probe_slot as slot;
use serde::Serialize;

/// A set of probes that is attached, priced and detached together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeGroup {
    /// Goroutine creation (newproc1 RETs) and exit (goexit1).
    Lifecycle,
    /// gopark (wait reason, lock/channel) and ready (who woke whom).
    Park,
    /// chansend, chanrecv, selectgo, closechan, makechan.
    Channels,
    /// Mutex/RWMutex slow paths, semacquire1/semrelease1.
    Locks,
}

impl ProbeGroup {
    pub const ALL: [ProbeGroup; 4] = [
        ProbeGroup::Lifecycle,
        ProbeGroup::Park,
        ProbeGroup::Channels,
        ProbeGroup::Locks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProbeGroup::Lifecycle => "lifecycle",
            ProbeGroup::Park => "park",
            ProbeGroup::Channels => "channels",
            ProbeGroup::Locks => "locks",
        }
    }
}

impl fmt::Display for ProbeGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProbeGroup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProbeGroup::ALL
            .into_iter()
            .find(|g| g.name() == s)
            .ok_or_else(|| format!("unknown probe group {s:?} (lifecycle, park, channels, locks)"))
    }
}

/// Where on the function the program goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachAt {
    /// The cheap entry point `gobin::probe_points` found (push %rbp after the stack check).
    Entry,
    /// Every RET instruction (to read a result without a uretprobe).
    Rets,
    /// A handoff call site (`gobin::probe_points::HANDOFFS`): the result of one function
    /// passed to the next, at an emulated `call`.
    Handoff,
}

/// One eBPF program and the runtime function (probe role) it attaches to.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// Role name in `gobin::probe_points::PROBES`.
    pub role: &'static str,
    pub slot: u32,
    pub at: AttachAt,
    pub group: ProbeGroup,
    /// Not attached when this other program (same data, cheaper attach point) could be planned.
    pub fallback_of: Option<&'static str>,
}

const fn spec(
    program: &'static str,
    role: &'static str,
    slot: u32,
    at: AttachAt,
    group: ProbeGroup,
) -> ProgramSpec {
    ProgramSpec {
        program,
        role,
        slot,
        at,
        group,
        fallback_of: None,
    }
}

use AttachAt::{Entry, Handoff, Rets};
use ProbeGroup::{Channels, Lifecycle, Locks, Park};

pub const PROGRAMS: &[ProgramSpec] = &[
    // Goroutine creation: at the emulated `call runqput` that hands the new g over (~1 µs a
    // hit here), else at newproc1's RETs (single-stepped: ~20-30x that on this VM).
    spec(
        "newproc_handoff",
        "newproc_handoff",
        slot::NEWPROC_HANDOFF,
        Handoff,
        Lifecycle,
    ),
    ProgramSpec {
        fallback_of: Some("newproc_handoff"),
        ..spec(
            "newproc1_ret",
            "newproc1",
            slot::NEWPROC1_RET,
            Rets,
            Lifecycle,
        )
    },
    spec("goexit1", "goexit1", slot::GOEXIT1, Entry, Lifecycle),
    spec("gopark", "gopark", slot::GOPARK, Entry, Park),
    spec("ready", "ready", slot::READY, Entry, Park),
    spec("chansend", "chansend", slot::CHANSEND, Entry, Channels),
    spec("chanrecv", "chanrecv", slot::CHANRECV, Entry, Channels),
    spec("selectgo", "selectgo", slot::SELECTGO, Entry, Channels),
    spec("closechan", "closechan", slot::CLOSECHAN, Entry, Channels),
    spec(
        "makechan_ret",
        "makechan",
        slot::MAKECHAN_RET,
        Rets,
        Channels,
    ),
    spec(
        "semacquire1",
        "semacquire1",
        slot::SEMACQUIRE1,
        Entry,
        Locks,
    ),
    spec(
        "semrelease1",
        "semrelease1",
        slot::SEMRELEASE1,
        Entry,
        Locks,
    ),
    spec(
        "mutex_lock_slow",
        "mutex_lock_slow",
        slot::MUTEX_LOCK_SLOW,
        Entry,
        Locks,
    ),
    spec(
        "mutex_unlock_slow",
        "mutex_unlock_slow",
        slot::MUTEX_UNLOCK_SLOW,
        Entry,
        Locks,
    ),
    spec(
        "rwmutex_lock",
        "rwmutex_lock",
        slot::RWMUTEX_LOCK,
        Entry,
        Locks,
    ),
    spec(
        "rwmutex_unlock",
        "rwmutex_unlock",
        slot::RWMUTEX_UNLOCK,
        Entry,
        Locks,
    ),
    spec(
        "rwmutex_rlock_slow",
        "rwmutex_rlock_slow",
        slot::RWMUTEX_RLOCK_SLOW,
        Entry,
        Locks,
    ),
    spec(
        "rwmutex_runlock_slow",
        "rwmutex_runlock_slow",
        slot::RWMUTEX_RUNLOCK_SLOW,
        Entry,
        Locks,
    ),
];

/// The programs the in-kernel aggregation needs (`report_mode::AGGREGATE`): the park and its
/// wake-up time a wait, semacquire1 names a sync wait's site. The others would only cost the
/// target their hits (the Mutex slow path fires hundreds of thousands of times a second on a
/// contended lock, mostly without blocking): in that mode they report nothing.
pub const AGGREGATING_PROGRAMS: &[&str] = &["gopark", "ready", "semacquire1"];

/// Whether `group` has a program the in-kernel aggregation uses (park and locks do).
pub fn aggregates(group: ProbeGroup) -> bool {
    PROGRAMS
        .iter()
        .any(|p| p.group == group && AGGREGATING_PROGRAMS.contains(&p.program))
}

/// Parse "lifecycle,park" (or "all").
pub fn parse_groups(list: &str) -> Result<Vec<ProbeGroup>, String> {
    if list.trim() == "all" {
        return Ok(ProbeGroup::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let group: ProbeGroup = name.parse()?;
        if !out.contains(&group) {
            out.push(group);
        }
    }
    if out.is_empty() {
        return Err("no probe group named".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobin::probe_points::{HANDOFFS, PROBES};

    #[test]
    fn every_program_names_a_known_role_of_its_group() {
        for p in PROGRAMS {
            let group = PROBES
                .iter()
                .find(|r| r.role == p.role)
                .map(|r| r.group)
                .or_else(|| HANDOFFS.iter().find(|r| r.role == p.role).map(|r| r.group))
                .unwrap_or_else(|| panic!("program {} names unknown role {}", p.program, p.role));
            assert_eq!(group, p.group.name(), "{}", p.program);
            if let Some(other) = p.fallback_of {
                assert!(PROGRAMS.iter().any(|q| q.program == other), "{other}");
            }
        }
        let mut slots: Vec<u32> = PROGRAMS.iter().map(|p| p.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), PROGRAMS.len(), "slots are unique");
        assert!(slots.iter().all(|s| *s < slot::USED));
    }

    #[test]
    fn aggregating_programs_exist() {
        for name in AGGREGATING_PROGRAMS {
            assert!(PROGRAMS.iter().any(|p| p.program == *name), "{name}");
        }
        let kernel_timed: Vec<ProbeGroup> = ProbeGroup::ALL
            .into_iter()
            .filter(|g| aggregates(*g))
            .collect();
        assert_eq!(kernel_timed, vec![Park, Locks]);
    }

    #[test]
    fn parses_group_lists() {
        assert_eq!(parse_groups("park, locks,park").unwrap(), vec![Park, Locks]);
        assert_eq!(parse_groups("all").unwrap().len(), 4);
        assert!(parse_groups("bogus").is_err());
        assert!(parse_groups("").is_err());
    }
}
