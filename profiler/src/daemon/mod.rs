//! `parkscope daemon`: follows Go processes as they come and go, keeps a fresh snapshot of each,
//! and serves metrics and the snapshot API over HTTP.
//!
//! One task rescans /proc; each followed process gets a snapshot on an interval with jitter
//! (taken on a blocking thread: memory reads are synchronous). The HTTP server only reads the
//! shared state.

pub mod discovery;
pub mod http;
pub mod metrics;
pub mod probes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::analysis::leaks::{self, LeakReport};
use crate::goruntime::snapshot::{self, Target};
use crate::model::Snapshot;
use crate::remote::process;
use discovery::{Candidate, GoBinaryCache, Selector};
use metrics::Metrics;

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub selector: Selector,
    pub listen: SocketAddr,
    /// How often /proc is rescanned for new and exited processes.
    pub discovery_interval: Duration,
    /// How often each process is snapshotted (± 10% jitter, so many processes don't align).
    pub snapshot_interval: Duration,
    /// Cardinality cap per metric.
    pub max_series: usize,
    /// Run the leak proof (two scans, 100 ms apart) with every snapshot.
    pub leaks: bool,
    /// Probe groups to attach to every followed process (empty: no probes, memory reads only).
    pub probes: Vec<crate::probes::ProbeGroup>,
    /// The probes' CPU budget per process, fraction of one core.
    pub probe_budget: f64,
    /// Send every probe event to userspace instead of timing waits in the kernel.
    pub probe_events: bool,
}

/// What the daemon knows about one followed process.
pub struct ProcessState {
    pub candidate: Candidate,
    pub go_version: String,
    pub snapshot: Option<Arc<Snapshot>>,
    pub leaks: Option<Arc<LeakReport>>,
    pub scan_seconds: f64,
    pub last_error: Option<String>,
    /// The probe session, with `--probes`; dropping it detaches the probes.
    pub probes: Option<probes::ProbeWatch>,
    next_scan: Instant,
}

#[derive(Default)]
pub struct Shared {
    /// Keyed by pid; the candidate's start time tells a reused pid apart.
    pub processes: HashMap<u32, ProcessState>,
    pub ready: bool,
}

pub type SharedState = Arc<Mutex<Shared>>;

pub async fn run(config: DaemonConfig) -> Result<(), crate::error::InspectError> {
    let state: SharedState = Arc::default();
    let metrics = Arc::new(Metrics::new(config.max_series));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            crate::error::InspectError::io(format!("listening on {}", config.listen), e)
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| crate::error::InspectError::io("reading the listen address", e))?;
    // Tests and supervisors read the bound address (port 0 picks a free one) from this line.
    println!("parkscope daemon listening on http://{local}");
    info!(listen = %local, "daemon started");
    let server = tokio::spawn(http::serve(listener, state.clone(), metrics.clone()));
    let mut cache = GoBinaryCache::default();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| crate::error::InspectError::io("installing the SIGTERM handler", e))?;
    let mut tick = tokio::time::interval(config.discovery_interval.min(config.snapshot_interval));
    'follow: loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        rescan(&config, &state, &mut cache);
        let due: Vec<u32> = {
            let shared = state.lock().unwrap();
            let now = Instant::now();
            shared
                .processes
                .iter()
                .filter(|(_, p)| p.next_scan <= now)
                .map(|(pid, _)| *pid)
                .collect()
        };
        for pid in due {
            let with_leaks = config.leaks;
            // A snapshot with its leak proof can take seconds on a big process: SIGTERM does
            // not wait for it (it only reads the target; the thread ends with the process).
            let taken = tokio::select! {
                taken = tokio::task::spawn_blocking(move || take_snapshot(pid, with_leaks)) => taken,
                _ = terminate.recv() => break 'follow,
                _ = tokio::signal::ctrl_c() => break 'follow,
            };
            let mut shared = state.lock().unwrap();
            let Some(p) = shared.processes.get_mut(&pid) else {
                continue;
            };
            p.next_scan = Instant::now() + jittered(config.snapshot_interval, pid);
            match taken {
                Ok(Ok((snap, report, seconds))) => {
                    metrics.count_scan(true);
                    if p.last_error.take().is_some() {
                        info!(pid, "snapshots work again");
                    }
                    if let Some(report) = &report {
                        log_finding_changes(pid, p.leaks.as_deref(), report);
                    }
                    p.snapshot = Some(Arc::new(snap));
                    p.leaks = report.map(Arc::new);
                    p.scan_seconds = seconds;
                }
                Ok(Err(err)) => {
                    metrics.count_scan(false);
                    if p.last_error.as_deref() != Some(err.as_str()) {
                        warn!(pid, error = %err, "snapshot failed");
                    }
                    p.last_error = Some(err);
                }
                Err(join) => warn!(pid, error = %join, "snapshot task failed"),
            }
        }
        state.lock().unwrap().ready = true;
    }
    info!("SIGTERM: detaching and exiting");
    server.abort();
    let followed: Vec<ProcessState> = state
        .lock()
        .unwrap()
        .processes
        .drain()
        .map(|(_, p)| p)
        .collect();
    drop(followed); // each probe session detaches as it is dropped
    Ok(())
}

type Taken = (Snapshot, Option<LeakReport>, f64);

fn take_snapshot(pid: u32, with_leaks: bool) -> Result<Taken, String> {
    let started = Instant::now();
    let exe = process::read_exe(pid).map_err(|e| e.to_string())?;
    let target = Target::open(pid, &exe).map_err(|e| e.to_string())?;
    let snap = snapshot::take(&target).map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    let report = with_leaks
        .then(|| leaks::prove(&target, &leaks::Proof::default()))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok((snap, report, seconds))
}

/// One log line per finding that appeared or was resolved since the last scan.
fn log_finding_changes(pid: u32, before: Option<&LeakReport>, now: &LeakReport) {
    let key = |f: &leaks::Finding| {
        let site = f
            .site
            .as_ref()
            .map(|s| format!("{} {}:{}", s.function, s.file, s.line))
            .unwrap_or_default();
        (f.kind, f.wait_reason.clone(), site)
    };
    let old: std::collections::HashSet<_> = before
        .map(|r| r.findings.iter().map(key).collect())
        .unwrap_or_default();
    let new: std::collections::HashSet<_> = now.findings.iter().map(key).collect();
    for (kind, reason, site) in new.difference(&old) {
        let count: usize = now
            .findings
            .iter()
            .filter(|f| key(f) == (*kind, reason.clone(), site.clone()))
            .map(|f| f.count)
            .sum();
        warn!(pid, kind, wait_reason = %reason, site = %site, goroutines = count, "new finding");
    }
    for (kind, reason, site) in old.difference(&new) {
        info!(pid, kind, wait_reason = %reason, site = %site, "finding resolved");
    }
}

/// The interval ± 10%, spread by pid so processes started together are not scanned together.
fn jittered(interval: Duration, pid: u32) -> Duration {
    let spread = interval.as_millis() as u64 / 5;
    if spread == 0 {
        return interval;
    }
    let offset = u64::from(pid).wrapping_mul(2_654_435_761) % spread;
    interval - Duration::from_millis(spread / 2) + Duration::from_millis(offset)
}

/// Add processes that appeared, drop those that exited (or whose pid was reused).
fn rescan(config: &DaemonConfig, state: &SharedState, cache: &mut GoBinaryCache) {
    let candidates = discovery::scan_proc();
    let mut shared = state.lock().unwrap();
    let alive: HashMap<u32, &Candidate> = candidates.iter().map(|c| (c.id.pid, c)).collect();
    let left: Vec<u32> = shared
        .processes
        .iter()
        .filter(|(pid, p)| !alive.get(pid).is_some_and(|c| c.id == p.candidate.id))
        .map(|(pid, _)| *pid)
        .collect();
    let mut gone = Vec::new();
    for pid in left {
        if let Some(p) = shared.processes.remove(&pid) {
            info!(pid, exe = %p.candidate.exe, "process left");
            gone.push(p);
        }
    }
    for candidate in candidates {
        if shared.processes.contains_key(&candidate.id.pid) || !config.selector.wants(&candidate) {
            continue;
        }
        let Some(go_version) = cache.go_version(&candidate) else {
            if config.selector.pids.contains(&candidate.id.pid) {
                warn!(pid = candidate.id.pid, exe = %candidate.exe, "not a Go binary: not followed");
            }
            continue;
        };
        info!(
            pid = candidate.id.pid,
            exe = %candidate.exe,
            go = %go_version,
            container = candidate.container_id.as_deref().unwrap_or(""),
            "process attached"
        );
        let watch = (!config.probes.is_empty()).then(|| {
            probes::ProbeWatch::start(
                candidate.id.pid,
                config.probes.clone(),
                config.probe_budget,
                !config.probe_events,
            )
        });
        shared.processes.insert(
            candidate.id.pid,
            ProcessState {
                candidate,
                go_version,
                snapshot: None,
                leaks: None,
                scan_seconds: 0.0,
                last_error: None,
                probes: watch,
                next_scan: Instant::now(),
            },
        );
    }
    // Stopping a probe session waits for it to detach (one drain period): not under the lock.
    drop(shared);
    drop(gone);
}
