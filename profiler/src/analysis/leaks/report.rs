//! The leak proof's report: verdicts per goroutine, findings grouped by site, and the suspect
//! clusters that are not proven.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::scan::{Flag, ScanStats, is_candidate_reason};
use crate::goruntime::snapshot;
use crate::model::{BlockedOn, Frame, Goroutine, Location, Snapshot};
use crate::remote::freeze::FreezeStats;

/// Why a goroutine was flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Blocked on primitives no runnable goroutine, global or reachable object refers to.
    Unreachable,
    /// Send or receive on a nil channel: blocks forever by definition.
    NilChannel,
    /// `select {}` outside main.
    SelectNoCases,
    /// Waits for a lock on a wait cycle: each member waits for a lock the next one holds.
    WaitCycle,
    /// Waits for a lock whose holder (or the writer it queues behind) never proceeds: it is
    /// on a wait cycle or leaked.
    BehindDeadlock,
    /// One of many goroutines parked at the same site for a long time; not proven.
    Cluster,
}

impl Why {
    pub fn evidence(self) -> &'static str {
        match self {
            Why::Unreachable => {
                "nothing that can still run refers to what it waits on: no global (.data/.bss), no \
                 stack of a runnable, running, sleeping or I/O-waiting goroutine, and no heap \
                 object reachable from those (nor from goroutines they could wake) points to it"
            }
            Why::NilChannel => "operation on a nil channel: it blocks forever",
            Why::SelectNoCases => "select {} with no cases: it blocks forever",
            Why::WaitCycle => {
                "it waits for a lock on a cycle of lock waits in which every member is parked; \
                 holders are known from their pending deferred unlocks"
            }
            Why::BehindDeadlock => {
                "it waits for a lock held (or queued for) by a goroutine that never proceeds; \
                 holders are known from their pending deferred unlocks"
            }
            Why::Cluster => {
                "many goroutines have been parked at this site for a long time; not proven \
                 leaked (something that can still run reaches what they wait on), but worth a \
                 look: a slow leak or an oversized pool"
            }
        }
    }

    /// The verdict this reason leads to.
    pub fn verdict(self) -> &'static str {
        match self {
            Why::WaitCycle | Why::BehindDeadlock => "deadlocked",
            Why::Cluster => "suspect",
            Why::Unreachable | Why::NilChannel | Why::SelectNoCases => "leaked",
        }
    }
}

/// A goroutine's verdict in the report.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub goid: i64,
    /// `leaked`, `deadlocked`, or the goroutine's state: `blocked` (parked on a primitive still reachable),
    /// `waiting`, `running`, `runnable`, `syscall`, ….
    pub verdict: String,
}

/// A group of leaked (or deadlocked) goroutines parked at the same place for the same reason.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub why: Why,
    pub wait_reason: String,
    /// The innermost frame outside the runtime and package sync: where the code blocks.
    pub site: Option<Location>,
    pub count: usize,
    pub goids: Vec<i64>,
    pub objects: Vec<BlockedOn>,
    pub evidence: String,
    /// Longest time any of them has been parked, when the runtime recorded it.
    pub parked_for_ns: Option<u64>,
    pub created_by: Option<Location>,
    /// The stack of the first goroutine of the group.
    pub stack: Vec<Frame>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeakReport {
    pub pid: u32,
    pub go_version: String,
    pub executable: String,
    pub taken_at: String,
    pub interval_ms: u64,
    pub scans: Vec<ScanStats>,
    pub goroutines: usize,
    pub leaked: usize,
    pub deadlocked: usize,
    /// In clusters that meet the suspect rule (not proven; no effect on the exit status).
    pub suspect: usize,
    pub findings: Vec<Finding>,
    pub verdicts: Vec<Verdict>,
    /// With `--freeze`: the one scan ran with the target stopped, for this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze: Option<FreezeStats>,
    /// What this version does not detect: stated, not silently missing.
    pub limitations: Vec<&'static str>,
}

pub const LIMITATIONS: &[&str] = &[
    "deadlocks are found through lock holders known from pending deferred unlocks \
     (`mu.Lock(); defer mu.Unlock()`); a lock released by an explicit Unlock later in the \
     function has no known holder, so its waiters stay `blocked`",
    "a wait that runs through a channel still reachable from a live goroutine (a lock held \
     across a send on a global channel) is not proven stuck: those goroutines stay `blocked`",
    "running goroutines' stacks are scanned whole and conservatively (their registers and \
     live frames are not knowable from outside): a stale pointer there can hide a leak, never \
     invent one",
    "a tiny mutex (8 bytes, in a 16-byte tiny-allocator block) is told apart from a live \
     neighbour only when it is the block's front half (a pointer to the back half cannot reach \
     it in safe Go); in the back half it may be a field of one 16-byte struct with the front, \
     so a live front keeps it reachable, as Go's own detector sees the whole block",
];

/// When a cluster of blocked goroutines becomes `suspect`. Defaults: 100 goroutines parked at
/// one site for 10 minutes. Idle worker pools park dozens of goroutines at one site for as long
/// as the service is quiet, so a smaller count would flag healthy pools; Go records how long a
/// goroutine has been parked only from the first GC after it parked, so a shorter time would
/// mostly read "unknown".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuspectRule {
    pub min_goroutines: usize,
    /// Every member must have been parked at least this long (0: the time may be unknown).
    pub min_parked_ns: u64,
}

impl Default for SuspectRule {
    fn default() -> Self {
        SuspectRule {
            min_goroutines: 100,
            min_parked_ns: 10 * 60 * 1_000_000_000,
        }
    }
}

/// The goroutines of clusters that meet `rule`: parked on a channel or sync primitive, not
/// flagged, `rule.min_goroutines` or more at one (wait reason, site), all parked long enough.
pub(super) fn suspects(
    goroutines: &[Goroutine],
    flagged: &HashMap<i64, Flag>,
    rule: &SuspectRule,
) -> HashSet<i64> {
    let mut clusters: HashMap<(&str, Option<Location>), Vec<&Goroutine>> = HashMap::new();
    for g in goroutines {
        if flagged.contains_key(&g.goid) || !g.status.is_parked() {
            continue;
        }
        let Some(reason) = g.wait_reason.as_deref().filter(|r| is_candidate_reason(r)) else {
            continue;
        };
        clusters
            .entry((reason, site(&g.stack)))
            .or_default()
            .push(g);
    }
    clusters
        .into_values()
        .filter(|gs| gs.len() >= rule.min_goroutines.max(1))
        .filter(|gs| {
            rule.min_parked_ns == 0
                || gs
                    .iter()
                    .all(|g| g.parked_for_ns.is_some_and(|ns| ns >= rule.min_parked_ns))
        })
        .flatten()
        .map(|g| g.goid)
        .collect()
}

pub(super) fn report(
    mut snapshot: Snapshot,
    confirmed: &HashMap<i64, Flag>,
    scans: Vec<ScanStats>,
    interval_ms: u64,
    suspect: &SuspectRule,
) -> LeakReport {
    snapshot.taken_at = snapshot::now_rfc3339();
    let suspected = suspects(&snapshot.goroutines, confirmed, suspect);
    let cluster_flag = |g: &Goroutine| Flag {
        goid: g.goid,
        g_addr: g.g_addr,
        park_key: (0, 0, 0, 0, None),
        why: Why::Cluster,
        detail: None,
    };
    let mut verdicts = Vec::new();
    let mut groups: BTreeMap<(Why, String, Option<Location>), Vec<&Goroutine>> = BTreeMap::new();
    for g in &snapshot.goroutines {
        let cluster = suspected.contains(&g.goid).then(|| cluster_flag(g));
        let verdict = match confirmed.get(&g.goid).or(cluster.as_ref()) {
            Some(flag) => {
                groups
                    .entry((
                        flag.why,
                        g.wait_reason.clone().unwrap_or_default(),
                        site(&g.stack),
                    ))
                    .or_default()
                    .push(g);
                flag.why.verdict().to_string()
            }
            None if g.status.is_parked()
                && g.wait_reason.as_deref().is_some_and(is_candidate_reason) =>
            {
                "blocked".to_string()
            }
            None => g.status.as_str().to_string(),
        };
        verdicts.push(Verdict {
            goid: g.goid,
            verdict,
        });
    }
    let mut findings: Vec<Finding> = groups
        .into_iter()
        .map(|((why, wait_reason, site), gs)| {
            let mut objects: Vec<BlockedOn> = gs
                .iter()
                .flat_map(|g| g.blocked_on.iter().cloned())
                .collect();
            objects.sort_by_key(|b| b.addr);
            objects.dedup();
            let detail = confirmed
                .get(&gs[0].goid)
                .and_then(|f| f.detail.as_deref())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            Finding {
                kind: why.verdict(),
                why,
                wait_reason,
                site,
                count: gs.len(),
                goids: gs.iter().map(|g| g.goid).collect(),
                objects,
                evidence: format!("{}{detail}", why.evidence()),
                parked_for_ns: gs.iter().filter_map(|g| g.parked_for_ns).max(),
                created_by: gs[0].created_by.clone(),
                stack: gs[0].stack.clone(),
            }
        })
        .collect();
    // Proven findings first, then the suspect clusters; most goroutines first within each.
    findings.sort_by(|a, b| {
        (a.why == Why::Cluster)
            .cmp(&(b.why == Why::Cluster))
            .then(b.count.cmp(&a.count))
            .then(a.goids.cmp(&b.goids))
    });
    LeakReport {
        pid: snapshot.pid,
        go_version: snapshot.go_version,
        executable: snapshot.executable,
        taken_at: snapshot.taken_at,
        interval_ms,
        scans,
        goroutines: snapshot.goroutines.len(),
        leaked: confirmed
            .values()
            .filter(|f| f.why.verdict() == "leaked")
            .count(),
        deadlocked: confirmed
            .values()
            .filter(|f| f.why.verdict() == "deadlocked")
            .count(),
        suspect: suspected.len(),
        findings,
        verdicts,
        freeze: None,
        limitations: LIMITATIONS.to_vec(),
    }
}

/// Where a goroutine blocks in its own code: the innermost frame outside the runtime and the
/// sync packages.
pub fn site(stack: &[Frame]) -> Option<Location> {
    let internal = |f: &str| {
        f.starts_with("runtime.") || f.starts_with("sync.") || f.starts_with("internal/sync.")
    };
    stack
        .iter()
        .find(|f| !internal(&f.function))
        .or(stack.last())
        .map(|f| Location {
            function: f.function.clone(),
            file: f.file.clone(),
            line: f.line,
        })
}
