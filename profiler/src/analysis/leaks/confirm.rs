//! Confirmation: a scan of a running target races with it, so a verdict stands only when the
//! target could not have changed it under the reader: every one of at least two scans flagged
//! the goroutine with an unchanged park key, or the one scan ran with the target stopped.

use std::collections::HashMap;
use std::time::Duration;

use super::report::{LeakReport, SuspectRule, report};
use super::scan::{Flag, Scan, scan_once};
use crate::goruntime::roots::RootFinder;
use crate::remote::freeze::FreezeStats;
use crate::remote::memory::{MemError, Memory};

/// Run `scans` scans `interval` apart and report the goroutines every one of them flagged with
/// an unchanged park key.
pub fn detect(
    finder: &RootFinder<'_, '_>,
    mem: &dyn Memory,
    scans: usize,
    interval: Duration,
    suspect: &SuspectRule,
) -> Result<LeakReport, MemError> {
    let scans = scans.max(2);
    let mut stats = Vec::with_capacity(scans);
    let mut confirmed: Option<HashMap<i64, Flag>> = None;
    let mut last = None;
    for i in 0..scans {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let scan = scan_once(finder, mem)?;
        let flags: HashMap<i64, Flag> = scan.flags.iter().map(|f| (f.goid, f.clone())).collect();
        confirmed = Some(match confirmed {
            None => flags,
            Some(prev) => prev
                .into_iter()
                .filter(|(goid, f)| flags.get(goid).is_some_and(|now| now.agrees_with(f)))
                .collect(),
        });
        stats.push(scan.stats.clone());
        last = Some(scan);
    }
    let scan = last.expect("at least two scans");
    let confirmed = confirmed.unwrap_or_default();
    Ok(report(
        scan.snapshot,
        &confirmed,
        stats,
        interval.as_millis() as u64,
        suspect,
    ))
}

/// The report of one scan taken with the target stopped (`--freeze`): nothing moved while it
/// was read, so every flag stands without a second scan.
pub fn frozen_report(scan: Scan, freeze: FreezeStats, suspect: &SuspectRule) -> LeakReport {
    let confirmed: HashMap<i64, Flag> = scan.flags.iter().map(|f| (f.goid, f.clone())).collect();
    let mut report = report(scan.snapshot, &confirmed, vec![scan.stats], 0, suspect);
    report.freeze = Some(freeze);
    report
}
