//! One `trace` session: attach the chosen groups to one process, drain the ring buffer on a
//! timer, run the overhead governor, and detach everything when the time is up, on
//! SIGINT/SIGTERM, or when the target exits — saying which.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use profiler_common::{Event, WaitKey, WaitTotals, report_mode};
use serde::Serialize;

use crate::error::InspectError;
use crate::gobin::GoBinary;
use crate::probes::calibrate::HitCost;
use crate::probes::decode::{Decoder, EventDecoder, TraceEvent};
use crate::probes::governor::{Action, Governor, GovernorConfig, GroupLoad};
use crate::probes::groups::ProbeGroup;
use crate::probes::loader::{self, Plan, Probes};
use crate::remote::{maps, process};

/// Programs whose events carry a user stack id by default (see the README's overhead section
/// for the measurement behind the choice).
pub const DEFAULT_STACK_PROGRAMS: &[&str] = &[];

#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub pid: u32,
    pub groups: Vec<ProbeGroup>,
    pub duration: Option<Duration>,
    /// CPU budget for the probes, fraction of one core.
    pub budget: f64,
    /// First back-off after the governor detaches a group.
    pub backoff: Duration,
    /// How often the ring buffer is drained.
    pub drain_every: Duration,
    /// How often the governor looks at the rates.
    pub govern_every: Duration,
    /// Measure the per-hit floor at startup (else design.md's numbers).
    pub calibrate: bool,
    /// Hand the sink raw events (`Output::Raw`, with the decoder) instead of decoded ones.
    pub raw: bool,
    /// Set from outside (e.g. a key press in `top`) to end the session.
    pub stop: Option<Arc<AtomicBool>>,
    /// Programs (eBPF program names) whose events carry the user stack (bpf_get_stackid).
    pub stack_programs: Vec<String>,
    /// Benchmarks: the empty program at the same attach points instead of the real ones.
    pub floor: bool,
    /// Benchmarks: attach only these programs of the chosen groups.
    pub only_programs: Option<Vec<String>>,
    /// Time contended waits in the kernel and hand the sink their totals
    /// (`Output::KernelWaits`) instead of events: no ring-buffer traffic, and only the
    /// programs that aggregate are attached (the daemon's histograms need no more).
    pub aggregate: bool,
}

impl TraceOptions {
    pub fn new(pid: u32, groups: Vec<ProbeGroup>) -> Self {
        TraceOptions {
            pid,
            groups,
            duration: None,
            budget: GovernorConfig::default().budget,
            backoff: GovernorConfig::default().backoff,
            drain_every: Duration::from_millis(50),
            govern_every: Duration::from_millis(250),
            calibrate: true,
            raw: false,
            stop: None,
            stack_programs: DEFAULT_STACK_PROGRAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            floor: false,
            only_programs: None,
            aggregate: false,
        }
    }
}

/// Why the session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Duration,
    Signal(String),
    TargetExited,
    /// `TraceOptions::stop` was set (e.g. q pressed in `top`).
    Quit,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::Duration => f.write_str("the requested duration elapsed"),
            EndReason::Signal(s) => write!(f, "{s} received"),
            EndReason::TargetExited => f.write_str("the target process exited"),
            EndReason::Quit => f.write_str("quit requested"),
        }
    }
}

/// Something the session tells the user besides events.
#[derive(Clone, Debug, Serialize)]
pub struct Notice {
    pub ts_ns: u64,
    /// "attached", "missing", "calibration", "governor", "detached", "drops".
    pub notice: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

pub enum Output<'a> {
    Event(&'a TraceEvent),
    Notice(&'a Notice),
    /// With `TraceOptions::raw`: the kernel's record and the decoder to symbolize it.
    Raw {
        event: &'a Event,
        decoder: &'a dyn EventDecoder,
    },
    /// After each drain of the ring buffer (every `drain_every`), events or not.
    Tick {
        ts_ns: u64,
    },
    /// Every governor period: hits so far per probe group (cumulative since attach).
    Hits(&'a BTreeMap<ProbeGroup, u64>),
    /// With `TraceOptions::aggregate`, every governor period and once after the detach: the
    /// kernel's wait totals so far (cumulative since attach), and the decoder to name them.
    KernelWaits {
        waits: &'a [(WaitKey, WaitTotals)],
        /// Contended wake-ups whose park was not seen (cumulative): parked before the attach,
        /// in a governor gap, or evicted from the kernel's table of pending parks.
        untimed: u64,
        decoder: &'a dyn EventDecoder,
    },
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupStats {
    pub hits: u64,
    pub detached_by_governor: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub pid: u32,
    pub end: EndReason,
    pub elapsed_s: f64,
    pub events: u64,
    pub drops: u64,
    pub hit_cost: HitCost,
    pub groups: BTreeMap<ProbeGroup, GroupStats>,
    /// Per attached program (eBPF program name), over the whole session: hits, and the
    /// program's own mean run time per hit from the kernel's BPF run-time stats (when on).
    pub program_hits: Vec<(&'static str, u64, Option<f64>)>,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall filling a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// True while the process exists and is not a zombie.
pub fn target_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Load bias of the target's executable (0 for non-PIE).
fn load_bias(pid: u32, binary: &GoBinary<'_>) -> Result<u64, InspectError> {
    maps::executable_load_bias(pid, &binary.image)
}

/// Most events decoded per drain: a batch, between which the session looks at its signals,
/// deadline and governor. A drain that fills its batch is followed at once by another (after
/// that look), so the batch bounds latency, not throughput; the reader's own speed does.
const MAX_EVENTS_PER_DRAIN: usize = 20_000;

/// Per-program counters from the previous governor tick.
struct Meter {
    last_hits: Vec<u64>,
    last_stats: BTreeMap<&'static str, (u64, u64)>,
    /// Recent ns per run of each program (BPF run-time stats), when available.
    run_ns: BTreeMap<&'static str, f64>,
    last_at: Instant,
    attached_at: BTreeMap<ProbeGroup, Instant>,
}

/// Run a session. `sink` receives events and notices as they come.
pub fn run(opts: &TraceOptions, mut sink: impl FnMut(Output<'_>)) -> Result<Summary, InspectError> {
    let pid = opts.pid;
    let exe_bytes = process::read_exe(pid)?;
    let binary = GoBinary::parse(&exe_bytes)?;
    let bias = load_bias(pid, &binary)?;
    let exe_path = process::exe_path(pid)?;
    let plan = Plan::for_binary(&binary);
    let decoder = Decoder::new(&binary, bias);
    let mut offsets;
    let mut only_programs = opts.only_programs.clone();
    if opts.aggregate {
        offsets = loader::go_offsets(&binary, report_mode::AGGREGATE)?;
        offsets.reason_track =
            crate::probes::observe::reason_track(|code| decoder.reason_text(code));
        only_programs.get_or_insert_with(|| {
            crate::probes::groups::AGGREGATING_PROGRAMS
                .iter()
                .map(|p| p.to_string())
                .collect()
        });
    } else {
        offsets = loader::go_offsets(&binary, report_mode::EVENTS)?;
        offsets.stack_slots = crate::probes::groups::PROGRAMS
            .iter()
            .filter(|p| opts.stack_programs.iter().any(|s| s == p.program))
            .fold(0, |mask, p| mask | (1 << p.slot));
    }
    let mut probes = Probes::load(pid, &exe_path, plan, offsets)?;
    probes.set_floor(opts.floor);
    probes.set_only(only_programs);
    let mut stacks: std::collections::HashMap<u32, Vec<String>> = Default::default();

    let notice = |notice: &'static str, message: String, action: Option<Action>| Notice {
        ts_ns: monotonic_ns(),
        notice,
        message,
        action,
    };

    // BPF run-time stats price each program's own work; the fd keeps them on.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let hit_cost = if opts.calibrate {
        probes.calibrate()
    } else {
        HitCost::default()
    };
    sink(Output::Notice(&notice(
        "calibration",
        format!(
            "uprobe floor on this machine ({}): {:.0} ns per hit on an emulated push, {:.0} ns \
             single-stepped",
            hit_cost.source, hit_cost.emulated_ns, hit_cost.stepped_ns
        ),
        None,
    )));

    for m in &probes.plan().missing {
        if opts.groups.contains(&m.group) {
            sink(Output::Notice(&notice(
                "missing",
                format!(
                    "group {}: {} not probed ({})",
                    m.group,
                    m.role,
                    crate::gobin::probe_points::ABSENT_NOTE
                ),
                None,
            )));
        }
    }

    let mut meter = Meter {
        last_hits: probes.hits(),
        last_stats: BTreeMap::new(),
        run_ns: BTreeMap::new(),
        last_at: Instant::now(),
        attached_at: BTreeMap::new(),
    };
    let mut points = 0;
    for &group in &opts.groups {
        points += probes.attach_group(group)?;
        meter.attached_at.insert(group, Instant::now());
    }
    let names: Vec<&str> = opts.groups.iter().map(|g| g.name()).collect();
    sink(Output::Notice(&notice(
        "attached",
        format!(
            "attached {} ({points} uprobes) to pid {pid}, budget {:.2}% of a core",
            names.join(","),
            opts.budget * 100.0
        ),
        None,
    )));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .map_err(|e| InspectError::io("starting the tokio runtime", e))?;

    let mut governor = Governor::new(GovernorConfig {
        budget: opts.budget,
        backoff: opts.backoff,
        ..GovernorConfig::default()
    });
    let mut stats: BTreeMap<ProbeGroup, GroupStats> = opts
        .groups
        .iter()
        .map(|g| (*g, GroupStats::default()))
        .collect();
    let started = Instant::now();
    let mut events_total = 0u64;
    let mut raw = Vec::new();
    let mut last_drops = 0u64;
    let mut last_overflow = 0u64;
    let kernel_waits = |probes: &Probes, sink: &mut dyn FnMut(Output<'_>)| {
        if opts.aggregate {
            sink(Output::KernelWaits {
                waits: &probes.wait_totals(),
                untimed: probes.untimed_waits(),
                decoder: &decoder,
            });
        }
    };

    let end = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt())
            .map_err(|e| InspectError::io("installing the SIGINT handler", e))?;
        let mut sigterm = signal(SignalKind::terminate())
            .map_err(|e| InspectError::io("installing the SIGTERM handler", e))?;
        let mut drain = tokio::time::interval(opts.drain_every);
        // A late drain is not followed by a burst of ticks: the backlog is taken in batches
        // (below), each after a turn of the runtime's drivers.
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut govern = tokio::time::interval(opts.govern_every);
        govern.tick().await;
        let deadline = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut flush =
            |probes: &mut Probes, raw: &mut Vec<Event>, sink: &mut dyn FnMut(Output<'_>)| {
                raw.clear();
                probes.drain(raw, MAX_EVENTS_PER_DRAIN);
                raw.sort_by_key(|e| e.ts_ns);
                for e in raw.iter() {
                    if opts.raw {
                        sink(Output::Raw {
                            event: e,
                            decoder: &decoder,
                        });
                    } else {
                        let mut decoded = decoder.decode(e);
                        if e.stack_id != 0 {
                            decoded.stack = stacks
                                .entry(e.stack_id)
                                .or_insert_with(|| {
                                    probes
                                        .stack(e.stack_id)
                                        .map(|pcs| decoder.stack_text(&pcs))
                                        .unwrap_or_default()
                                })
                                .clone();
                        }
                        sink(Output::Event(&decoded));
                    }
                }
                events_total += raw.len() as u64;
                raw.len() >= MAX_EVENTS_PER_DRAIN
            };
        let result = 'session: loop {
            tokio::select! {
                _ = drain.tick() => {
                    let backlog = flush(&mut probes, &mut raw, &mut sink);
                    sink(Output::Tick { ts_ns: monotonic_ns() });
                    if backlog {
                        // More is queued: drain again at once, but only after the runtime has
                        // polled its signal and timer drivers (a ready interval never yields,
                        // so a reader behind the probes would otherwise see SIGINT, its deadline
                        // and the governor only once it caught up).
                        drain.reset_immediately();
                        tokio::task::yield_now().await;
                    }
                    if !target_alive(pid) {
                        break Ok::<EndReason, InspectError>(EndReason::TargetExited);
                    }
                    if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                        break Ok(EndReason::Quit);
                    }
                }
                _ = govern.tick() => {
                    let drops = probes.drops();
                    if drops > last_drops {
                        sink(Output::Notice(&notice(
                            "drops",
                            format!("{} events lost: the ring buffer was full", drops - last_drops),
                            None,
                        )));
                        last_drops = drops;
                    }
                    let overflow = probes.aggregate_overflow();
                    if overflow > last_overflow {
                        sink(Output::Notice(&notice(
                            "drops",
                            format!(
                                "{} waits lost: the in-kernel wait map was full",
                                overflow - last_overflow
                            ),
                            None,
                        )));
                        last_overflow = overflow;
                    }
                    kernel_waits(&probes, &mut sink);
                    let loads = measure(&probes, &mut meter, &hit_cost, &mut stats);
                    let hits = probes.hits();
                    let per_group: BTreeMap<ProbeGroup, u64> = stats
                        .keys()
                        .map(|g| {
                            let n = probes
                                .plan()
                                .programs_of(*g)
                                .map(|p| hits[p.spec.slot as usize])
                                .sum();
                            (*g, n)
                        })
                        .collect();
                    sink(Output::Hits(&per_group));
                    for action in governor.tick(Instant::now(), &loads) {
                        match &action {
                            Action::Detach { group, hits_per_s, cost, budget, backoff_s } => {
                                // Link by link, taking one batch of what its programs
                                // queue meanwhile (one: the detach must not wait for a
                                // reader that is behind, which is why the group goes).
                                while probes.detach_next(Some(*group)) {
                                    flush(&mut probes, &mut raw, &mut sink);
                                }
                                meter.attached_at.remove(group);
                                if let Some(s) = stats.get_mut(group) {
                                    s.detached_by_governor += 1;
                                }
                                sink(Output::Notice(&notice(
                                    "governor",
                                    format!(
                                        "detached group {group}: {hits_per_s:.0} hits/s cost \
                                         ~{:.2}% of a core, over the {:.2}% budget; \
                                         re-attaching in {backoff_s:.0}s",
                                        cost * 100.0,
                                        budget * 100.0
                                    ),
                                    Some(action.clone()),
                                )));
                            }
                            Action::Reattach { group } => {
                                match group {
                                    ProbeGroup::Park => probes.forget_pending_waits(),
                                    ProbeGroup::Locks => probes.forget_semacquires(),
                                    _ => {}
                                }
                                match probes.attach_group(*group) {
                                    Ok(_) => {
                                        meter.attached_at.insert(*group, Instant::now());
                                        sink(Output::Notice(&notice(
                                            "governor",
                                            format!("re-attached group {group} after back-off"),
                                            Some(action.clone()),
                                        )));
                                    }
                                    Err(InspectError::ProcessGone { .. }) => {}
                                    Err(e) => break 'session Err(e),
                                }
                            }
                        }
                    }
                }
                _ = sigint.recv() => break Ok(EndReason::Signal("SIGINT".into())),
                _ = sigterm.recv() => break Ok(EndReason::Signal("SIGTERM".into())),
                _ = &mut deadline => break Ok(EndReason::Duration),
            }
        };
        // Detach first, then take what the programs queued before they went. Detaching takes
        // the kernel ~0.1 s per uprobe: the queue is drained between them, or a busy target
        // overflows it meanwhile.
        // One batch per link: a reader far behind would otherwise hold every detach up (the
        // rest is taken below, once nothing more can arrive).
        while probes.detach_next(None) {
            flush(&mut probes, &mut raw, &mut sink);
        }
        for _ in 0..64 {
            if !flush(&mut probes, &mut raw, &mut sink) {
                break;
            }
        }
        kernel_waits(&probes, &mut sink);
        result
    })?;

    let final_hits = probes.hits();
    for (group, s) in stats.iter_mut() {
        s.hits = probes
            .plan()
            .programs_of(*group)
            .map(|p| final_hits[p.spec.slot as usize])
            .sum();
    }
    let program_hits = probes
        .plan()
        .programs
        .iter()
        .map(|p| (p, false))
        .chain(probes.plan().unused_fallbacks.iter().map(|p| (p, true)))
        .filter(|(p, _)| stats.contains_key(&p.spec.group))
        .filter(|(p, fallback)| {
            let named = |only: &Vec<String>| only.iter().any(|o| o == p.spec.program);
            match &opts.only_programs {
                Some(only) => named(only),
                None => !fallback,
            }
        })
        .map(|(p, _)| p)
        .map(|p| {
            let run_ns = probes
                .program_stats(p.spec.program)
                .filter(|(runs, _)| *runs > 0 && !opts.floor)
                .map(|(runs, ns)| ns as f64 / runs as f64);
            (p.spec.program, final_hits[p.spec.slot as usize], run_ns)
        })
        .collect();
    let drops = probes.drops();
    sink(Output::Notice(&notice(
        "detached",
        format!("detached all probes from pid {pid}: {end}"),
        None,
    )));
    Ok(Summary {
        pid,
        end,
        elapsed_s: started.elapsed().as_secs_f64(),
        events: events_total,
        drops,
        hit_cost,
        groups: stats,
        program_hits,
    })
}

/// Loads of the attached groups since the last tick: hits/s × (uprobe floor for the attach
/// point + the program's own measured run time).
fn measure(
    probes: &Probes,
    meter: &mut Meter,
    cost: &HitCost,
    _stats: &mut BTreeMap<ProbeGroup, GroupStats>,
) -> Vec<GroupLoad> {
    let now = Instant::now();
    let hits = probes.hits();
    let window = now.duration_since(meter.last_at);
    let mut loads = Vec::new();
    for group in probes.attached_groups() {
        // A group attached mid-window has only been counting since then.
        let since = meter
            .attached_at
            .get(&group)
            .map_or(window, |t| now.duration_since(*t).min(window));
        let secs = since.as_secs_f64().max(1e-3);
        let mut group_hits = 0.0;
        let mut group_cost = 0.0;
        for p in probes.plan().programs_of(group) {
            let slot = p.spec.slot as usize;
            let delta = hits[slot].saturating_sub(meter.last_hits[slot]) as f64;
            if let Some((runs, ns)) = probes.program_stats(p.spec.program) {
                let (last_runs, last_ns) = meter
                    .last_stats
                    .insert(p.spec.program, (runs, ns))
                    .unwrap_or((runs, ns));
                if runs > last_runs {
                    let per_run = (ns - last_ns) as f64 / (runs - last_runs) as f64;
                    meter.run_ns.insert(p.spec.program, per_run);
                }
            }
            let run_ns = meter.run_ns.get(p.spec.program).copied().unwrap_or(0.0);
            let per_hit = cost.for_kind(p.attach_kind) + run_ns;
            group_hits += delta / secs;
            group_cost += delta / secs * per_hit;
        }
        loads.push(GroupLoad {
            group,
            hits_per_s: group_hits,
            cost_ns_per_s: group_cost,
        });
    }
    meter.last_hits = hits;
    meter.last_at = now;
    loads
}
