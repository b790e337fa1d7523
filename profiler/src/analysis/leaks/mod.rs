//! Leak verdicts with proof, from outside: the GC's own rule (a goroutine blocked on a channel or
//! sync primitive that nothing able to run can reach will never wake) applied to a scan of the
//! target's memory, plus what needs no proof (nil-channel waits, `select {}`).
//!
//! One scan ([`scan`]):
//! 1. read every goroutine (the snapshot) and its raw `g` record;
//! 2. candidates: goroutines parked (`_Gwaiting`, or `_Gleaked` on Go 1.26+) on a channel, a
//!    select or a sync primitive whose address we know; nil-channel waits and `select {}` outside
//!    main are leaked outright; everything else is a root;
//! 3. roots (found by `goruntime::roots`): `.data` and `.bss`, m `waitlock`s, p timer heaps,
//!    finalizers; the stacks of root goroutines (parked ones precisely with the compiler's
//!    stack maps, running ones whole and conservatively) and their g's pointer fields
//!    (`sched.ctxt`, `_defer`, `_panic`, `param`, `labels`, `timer`, `ancestors`);
//! 4. mark through the heap ([`mark`]), never scanning g records (allgs) or sudogs (`g.waiting`
//!    chains and the semaphore table): those are the runtime's back-links to what goroutines
//!    wait on;
//! 5. fixpoint: a candidate whose blocking object got marked, or is not a heap object, can still
//!    be woken: its stack becomes a root; repeat. The candidates left are flagged, if their park
//!    key did not change during the scan.
//!
//! The target runs during a scan, so a verdict is confirmed ([`confirm`]): reported only when
//! every one of at least two scans, some 100 ms apart, flagged it with the same park key
//! (status, wait reason, `trackingSeq`, `sched.sp`, `waiting`): a goroutine that ran in between
//! is never reported. Or the one scan runs with the target stopped (`--freeze`).
//!
//! [`prove`] is the one way in, for the CLI and the daemon alike.

pub mod confirm;
pub mod mark;
pub mod report;
pub mod scan;

use std::time::Duration;

pub use confirm::{detect, frozen_report};
pub use report::{Finding, LIMITATIONS, LeakReport, SuspectRule, Verdict, Why, site};
pub use scan::{Flag, Scan, ScanStats, scan_once, scan_once_with_roots};

use crate::error::InspectError;
use crate::goruntime::roots::RootFinder;
use crate::goruntime::snapshot::{self, Target};
use crate::remote::freeze::Frozen;
use crate::remote::memory::ProcessMemory;

/// How to confirm verdicts against a target that keeps running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Scans of the running target, `interval` apart; a verdict every one agrees on stands.
    Scans { scans: usize, interval: Duration },
    /// One scan with every thread of the target stopped (registers are roots too).
    Freeze,
}

/// What to prove and how.
#[derive(Clone, Copy, Debug)]
pub struct Proof {
    pub mode: Mode,
    pub suspect: SuspectRule,
}

impl Default for Proof {
    /// Two scans 100 ms apart, default suspect rule: what `parkscope leaks` does by default.
    fn default() -> Self {
        Proof {
            mode: Mode::Scans {
                scans: 2,
                interval: Duration::from_millis(100),
            },
            suspect: SuspectRule::default(),
        }
    }
}

/// Prove leaks and deadlocks in the process `target` was opened on.
pub fn prove(target: &Target<'_>, proof: &Proof) -> Result<LeakReport, InspectError> {
    let finder = RootFinder::new(target)?;
    let mem = ProcessMemory::new(target.pid);
    let mem_error = |e| snapshot::mem_error(target.pid, e);
    match proof.mode {
        Mode::Scans { scans, interval } => {
            detect(&finder, &mem, scans, interval, &proof.suspect).map_err(mem_error)
        }
        Mode::Freeze => {
            let frozen = Frozen::stop(target.pid).map_err(|e| e.into_inspect_error(target.pid))?;
            let scan = scan_once_with_roots(&finder, &mem, &frozen.register_words());
            let pause = frozen.resume();
            Ok(frozen_report(
                scan.map_err(mem_error)?,
                pause,
                &proof.suspect,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::report::suspects;
    use super::scan::{Role, role};
    use super::*;
    use crate::model::{BlockedOn, Frame, Goroutine, ObjectKind, Op, Status};

    fn g(goid: i64, status: Status, reason: &str, blocked: bool) -> Goroutine {
        Goroutine {
            goid,
            status,
            wait_reason: Some(reason.to_string()),
            parked_for_ns: None,
            start: None,
            created_by: None,
            parent_goid: None,
            stack: Vec::new(),
            blocked_on: if blocked {
                vec![BlockedOn {
                    kind: ObjectKind::Chan,
                    addr: 0xc000010000,
                    op: Op::Send,
                }]
            } else {
                Vec::new()
            },
            g_addr: 0x1000,
            on_cpu: false,
            unstable: false,
            system: false,
            verdict: None,
        }
    }

    #[test]
    fn classifies_goroutines() {
        use Status::*;
        assert_eq!(role(&g(7, Waiting, "chan send", true), 1), Role::Candidate);
        // Go 1.26's own detector moved it to _Gleaked: still ours to prove.
        assert_eq!(role(&g(7, Leaked, "chan send", true), 1), Role::Candidate);
        assert_eq!(role(&g(7, Waiting, "chan send", false), 1), Role::Root);
        assert_eq!(role(&g(7, Waiting, "sleep", false), 1), Role::Root);
        assert_eq!(role(&g(7, Running, "chan send", true), 1), Role::Root);
        assert_eq!(
            role(&g(7, Waiting, "chan receive (nil chan)", false), 1),
            Role::Flagged(Why::NilChannel)
        );
        assert_eq!(
            role(&g(7, Waiting, "select (no cases)", false), 1),
            Role::Flagged(Why::SelectNoCases)
        );
        assert_eq!(
            role(&g(1, Waiting, "select (no cases)", false), 1),
            Role::Root
        );
        let mut unstable = g(7, Waiting, "chan send", true);
        unstable.unstable = true;
        assert_eq!(role(&unstable, 1), Role::Root);
    }

    #[test]
    fn suspect_clusters_need_the_count_and_the_time() {
        let at = |goid: i64, function: &str, parked_s: Option<u64>| {
            let mut g = g(goid, Status::Waiting, "chan receive", true);
            g.stack = vec![Frame {
                function: function.into(),
                file: "w.go".into(),
                line: 9,
                pc: 0,
                inlined: false,
            }];
            g.parked_for_ns = parked_s.map(|s| s * 1_000_000_000);
            g
        };
        let gs = vec![
            at(1, "main.worker", Some(900)),
            at(2, "main.worker", Some(700)),
            at(3, "main.worker", Some(650)),
            at(4, "main.other", Some(900)),
        ];
        let rule = |n: usize, s: u64| SuspectRule {
            min_goroutines: n,
            min_parked_ns: s * 1_000_000_000,
        };
        let none = HashMap::new();
        assert_eq!(
            suspects(&gs, &none, &rule(3, 600)),
            HashSet::from([1, 2, 3])
        );
        // One member parked too briefly, or too few members: no cluster.
        assert!(suspects(&gs, &none, &rule(3, 680)).is_empty());
        assert!(suspects(&gs, &none, &rule(4, 0)).is_empty());
        // Unknown parked time counts only when no minimum time is asked for.
        let mut unknown = gs.clone();
        unknown[0].parked_for_ns = None;
        assert!(suspects(&unknown, &none, &rule(3, 600)).is_empty());
        assert_eq!(suspects(&unknown, &none, &rule(3, 0)).len(), 3);
        // Goroutines already proven leaked are not also suspect.
        let flagged = HashMap::from([(
            1,
            Flag {
                goid: 1,
                g_addr: 0,
                park_key: (0, 0, 0, 0, None),
                why: Why::Unreachable,
                detail: None,
            },
        )]);
        assert!(suspects(&gs, &flagged, &rule(3, 600)).is_empty());
    }

    #[test]
    fn site_skips_runtime_and_sync_frames() {
        let frame = |f: &str| Frame {
            function: f.into(),
            file: "x.go".into(),
            line: 3,
            pc: 0,
            inlined: false,
        };
        let stack = [
            frame("runtime.gopark"),
            frame("sync.(*Mutex).Lock"),
            frame("main.worker"),
            frame("runtime.goexit"),
        ];
        assert_eq!(site(&stack).unwrap().function, "main.worker");
    }
}
