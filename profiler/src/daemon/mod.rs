//! `parkscope daemon`: follows Go processes as they come and go, keeps a fresh snapshot of each,
//! and serves metrics and the snapshot API over HTTP.
//!
//! One task rescans /proc; each followed process gets a snapshot on an interval with jitter
//! (taken on a blocking thread: memory reads are synchronous). The HTTP server only reads the
//! shared state.

pub mod discovery;
pub mod http;
pub mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

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
}

/// What the daemon knows about one followed process.
pub struct ProcessState {
    pub candidate: Candidate,
    pub go_version: String,
    pub snapshot: Option<Arc<Snapshot>>,
    pub scan_seconds: f64,
    pub last_error: Option<String>,
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
    loop {
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
            let taken = tokio::task::spawn_blocking(move || take_snapshot(pid)).await;
            let mut shared = state.lock().unwrap();
            let Some(p) = shared.processes.get_mut(&pid) else {
                continue;
            };
            p.next_scan = Instant::now() + jittered(config.snapshot_interval, pid);
            match taken {
                Ok(Ok((snap, seconds))) => {
                    metrics.count_scan(true);
                    if p.last_error.take().is_some() {
                        info!(pid, "snapshots work again");
                    }
                    p.snapshot = Some(Arc::new(snap));
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
    Ok(())
}

fn take_snapshot(pid: u32) -> Result<(Snapshot, f64), String> {
    let started = Instant::now();
    let exe = process::read_exe(pid).map_err(|e| e.to_string())?;
    let target = Target::open(pid, &exe).map_err(|e| e.to_string())?;
    let snap = snapshot::take(&target).map_err(|e| e.to_string())?;
    Ok((snap, started.elapsed().as_secs_f64()))
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
    shared.processes.retain(|pid, p| {
        let same = alive.get(pid).is_some_and(|c| c.id == p.candidate.id);
        if !same {
            info!(pid, exe = %p.candidate.exe, "process left");
        }
        same
    });
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
        shared.processes.insert(
            candidate.id.pid,
            ProcessState {
                candidate,
                go_version,
                snapshot: None,
                scan_seconds: 0.0,
                last_error: None,
                next_scan: Instant::now(),
            },
        );
    }
}
