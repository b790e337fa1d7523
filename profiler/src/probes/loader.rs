//! Loading parkscope's eBPF object for one target process, attaching and detaching probe groups,
//! and reading the kernel-side counters and the event ring buffer.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap};
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::{Ebpf, EbpfLoader};
use profiler_common::{
    EVENT_FRAMES, Event, GoOffsets, PendingWait, TRACKED_REASONS, WaitKey, WaitTotals, drop_slot,
    probe_slot, report_mode,
};

use crate::error::InspectError;
use crate::gobin::GoBinary;
use crate::gobin::probe_points::{self, AttachKindName, ProbeLookup};
use crate::probes::groups::{AttachAt, PROGRAMS, ProbeGroup, ProgramSpec};

/// The compiled eBPF programs (profiler-ebpf, built by build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Where one program attaches in one binary.
#[derive(Clone, Debug)]
pub struct PlannedProgram {
    pub spec: ProgramSpec,
    pub symbol: String,
    /// File offsets of the attach points.
    pub file_offsets: Vec<u64>,
    /// How the entry point was chosen (RET probes report `Entry`: they are single-stepped).
    pub attach_kind: AttachKindName,
}

/// Roles of a group absent from this binary (inlined or not linked), for the output.
#[derive(Clone, Debug)]
pub struct MissingRole {
    pub group: ProbeGroup,
    pub role: &'static str,
}

/// The attach plan for one binary: pure, computed from the binary's bytes.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub programs: Vec<PlannedProgram>,
    pub missing: Vec<MissingRole>,
    /// Fallbacks not used because their preferred program could be planned (attached only when
    /// a benchmark names them with `--only-programs`, to compare the two).
    pub unused_fallbacks: Vec<PlannedProgram>,
}

impl Plan {
    pub fn for_binary(binary: &GoBinary<'_>) -> Plan {
        let lookups = probe_points::locate_all(&binary.image, &binary.pclntab);
        let mut plan = Plan::default();
        for spec in PROGRAMS {
            let point = lookups.iter().find_map(|l| match l {
                ProbeLookup::Present(p) if p.role == spec.role => Some(p),
                _ => None,
            });
            let Some(point) = point else {
                plan.missing.push(MissingRole {
                    group: spec.group,
                    role: spec.role,
                });
                continue;
            };
            let (file_offsets, attach_kind) = match spec.at {
                AttachAt::Entry | AttachAt::Handoff => (
                    vec![point.file_offset + point.attach_offset],
                    point.attach_kind,
                ),
                AttachAt::Rets => (
                    point
                        .ret_offsets
                        .iter()
                        .map(|r| point.file_offset + r)
                        .collect(),
                    AttachKindName::Entry,
                ),
            };
            if file_offsets.is_empty() {
                plan.missing.push(MissingRole {
                    group: spec.group,
                    role: spec.role,
                });
                continue;
            }
            plan.programs.push(PlannedProgram {
                spec: *spec,
                symbol: point.symbol.clone(),
                file_offsets,
                attach_kind,
            });
        }
        // A fallback goes when its preferred program could be planned; a preferred program
        // that could not be planned is not missing when its fallback stands in.
        let planned: Vec<&'static str> = plan.programs.iter().map(|p| p.spec.program).collect();
        let (programs, unused): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.programs)
            .into_iter()
            .partition(|p| {
                p.spec
                    .fallback_of
                    .is_none_or(|other| !planned.contains(&other))
            });
        plan.programs = programs;
        plan.unused_fallbacks = unused;
        let programs = plan.programs.clone();
        plan.missing.retain(|m| {
            !programs.iter().any(|p| {
                p.spec
                    .fallback_of
                    .and_then(|other| PROGRAMS.iter().find(|q| q.program == other))
                    .is_some_and(|q| q.role == m.role)
            })
        });
        plan
    }

    pub fn programs_of(&self, group: ProbeGroup) -> impl Iterator<Item = &PlannedProgram> {
        self.programs.iter().filter(move |p| p.spec.group == group)
    }
}

/// The runtime offsets the programs need, from the binary's DWARF or the per-release table;
/// `mode` is a `profiler_common::report_mode` value.
pub fn go_offsets(binary: &GoBinary<'_>, mode: u32) -> Result<GoOffsets, InspectError> {
    let get = |key: &str| -> Result<u32, InspectError> {
        binary
            .offsets
            .get(key)
            .map(|f| f.value as u32)
            .ok_or_else(|| {
                InspectError::MissingSymbol(format!(
                    "offset of {key} (not in DWARF nor in the table for Go {})",
                    binary.offsets.release
                ))
            })
    };
    Ok(GoOffsets {
        g_goid: get("g.goid")?,
        g_m: get("g.m")?,
        g_parent_goid: get("g.parentGoid")?,
        g_gopc: get("g.gopc")?,
        g_waitreason: get("g.waitreason")?,
        m_curg: get("m.curg")?,
        hchan_dataqsiz: get("hchan.dataqsiz")?,
        mode,
        stack_slots: 0,
        reason_track: [0; TRACKED_REASONS],
    })
}

/// Loaded programs and maps, scoped to one process.
pub struct Probes {
    ebpf: Ebpf,
    pid: u32,
    exe: PathBuf,
    plan: Plan,
    attached: BTreeMap<ProbeGroup, Vec<(&'static str, UProbeLinkId)>>,
    events: RingBuf<MapData>,
    hits: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    stacks: Option<StackTraceMap<MapData>>,
    /// The in-kernel aggregation's maps (report_mode::AGGREGATE).
    waits: PerCpuHashMap<MapData, WaitKey, WaitTotals>,
    pending: HashMap<MapData, u64, PendingWait>,
    semacquires: HashMap<MapData, u64, [u64; EVENT_FRAMES]>,
    logger: Option<aya_log::EbpfLogger<TracingLog>>,
    /// Benchmarks: the empty program at every attach point instead of the real ones.
    floor: bool,
    /// Benchmarks: attach only these programs of a group.
    only: Option<Vec<String>>,
}

impl Probes {
    /// Load every program (nothing attached yet). `exe` is the path uprobes attach through:
    /// /proc/PID/exe, which names the very inode the process runs, even in a container.
    pub fn load(
        pid: u32,
        exe: &Path,
        plan: Plan,
        offsets: GoOffsets,
    ) -> Result<Probes, InspectError> {
        let mut loader = EbpfLoader::new();
        loader.override_global("GO_OFFSETS", &offsets, true);
        // The maps of the other report mode stay at one entry (a page for the ring): the
        // in-kernel aggregation's tables in event mode, the ring and the stack map when waits
        // are timed in the kernel. Per followed process, that is megabytes of kernel memory.
        if offsets.mode == report_mode::AGGREGATE {
            loader
                .map_max_entries("EVENTS", 4096)
                .map_max_entries("STACKS", 1);
        } else {
            loader
                .map_max_entries("PENDING", 1)
                .map_max_entries("SEMACQUIRES", 1)
                .map_max_entries("WAITS", 1);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| bpf_error("loading the eBPF programs", &e))?;
        let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, TracingLog).ok();
        for (name, program) in ebpf.programs_mut() {
            let uprobe: &mut UProbe = program
                .try_into()
                .map_err(|e| bpf_error(&format!("program {name}"), &e))?;
            uprobe
                .load()
                .map_err(|e| bpf_error(&format!("loading program {name}"), &e))?;
        }
        let events = take_map(&mut ebpf, "EVENTS")?;
        let hits = take_map(&mut ebpf, "PROBE_HITS")?;
        let drops = take_map(&mut ebpf, "EVENT_DROPS")?;
        let stacks = ebpf
            .take_map("STACKS")
            .and_then(|m| StackTraceMap::try_from(m).ok());
        let waits = take_map(&mut ebpf, "WAITS")?;
        let pending = take_map(&mut ebpf, "PENDING")?;
        let semacquires = take_map(&mut ebpf, "SEMACQUIRES")?;
        Ok(Probes {
            ebpf,
            pid,
            exe: exe.to_path_buf(),
            plan,
            attached: BTreeMap::new(),
            events,
            hits,
            drops,
            stacks,
            waits,
            pending,
            semacquires,
            logger,
            floor: false,
            only: None,
        })
    }

    /// Benchmarks: attach the empty program (one counter increment) at exactly the attach
    /// points of the real programs, each counting into its real program's slot.
    pub fn set_floor(&mut self, floor: bool) {
        self.floor = floor;
    }

    /// Benchmarks: attach only the named programs of each group.
    pub fn set_only(&mut self, programs: Option<Vec<String>>) {
        self.only = programs;
    }

    /// The user stack behind an event's `stack_id` (innermost first), when still in the map.
    pub fn stack(&self, stack_id: u32) -> Option<Vec<u64>> {
        let id = stack_id.checked_sub(1)?;
        let trace = self.stacks.as_ref()?.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn is_attached(&self, group: ProbeGroup) -> bool {
        self.attached.contains_key(&group)
    }

    pub fn attached_groups(&self) -> Vec<ProbeGroup> {
        self.attached.keys().copied().collect()
    }

    /// Attach every program of `group`; returns how many attach points. On failure, the
    /// group's programs attached so far are detached again.
    pub fn attach_group(&mut self, group: ProbeGroup) -> Result<usize, InspectError> {
        if self.attached.contains_key(&group) {
            return Ok(0);
        }
        let pid = NonZeroU32::new(self.pid).ok_or(InspectError::ProcessGone { pid: 0 })?;
        let named_fallbacks = self.plan.unused_fallbacks.iter().filter(|p| {
            p.spec.group == group
                && self
                    .only
                    .as_ref()
                    .is_some_and(|only| only.iter().any(|o| o == p.spec.program))
        });
        let planned: Vec<PlannedProgram> = self
            .plan
            .programs_of(group)
            .chain(named_fallbacks)
            .filter(|p| {
                self.only
                    .as_ref()
                    .is_none_or(|only| only.iter().any(|o| o == p.spec.program))
            })
            .cloned()
            .collect();
        let exe = self.exe.clone();
        let floor = self.floor;
        let mut links = Vec::new();
        let mut points = 0;
        for p in &planned {
            let program = if floor { "empty" } else { p.spec.program };
            // The empty program learns whose slot to count into from the cookie.
            let cookie = floor.then_some(u64::from(p.spec.slot) + 1);
            let result = self.uprobe(program).and_then(|prog| {
                prog.attach(
                    p.file_offsets.iter().map(|&o| UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(o),
                        cookie,
                    }),
                    &exe,
                    UProbeScope::OneProcess(pid),
                )
                .map_err(|e| bpf_error(&format!("attaching to {}", p.symbol), &e))
            });
            match result {
                Ok(link) => {
                    links.push((program, link));
                    points += p.file_offsets.len();
                }
                Err(err) => {
                    self.detach_links(links);
                    if !std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
                        return Err(InspectError::ProcessGone { pid: self.pid });
                    }
                    return Err(err);
                }
            }
        }
        self.attached.insert(group, links);
        Ok(points)
    }

    pub fn detach_group(&mut self, group: ProbeGroup) {
        if let Some(links) = self.attached.remove(&group) {
            self.detach_links(links);
        }
    }

    /// Detach one link of `group` (of any group when None); false when none was left.
    /// Closing a uprobe takes the kernel tens of milliseconds (one RCU grace period each), in
    /// which the programs still at work may fill the ring buffer: the caller can drain it
    /// between links.
    pub fn detach_next(&mut self, group: Option<ProbeGroup>) -> bool {
        let Some(group) = group.or_else(|| self.attached.keys().next().copied()) else {
            return false;
        };
        let Some(links) = self.attached.get_mut(&group) else {
            return false;
        };
        let link = links.pop();
        if links.is_empty() {
            self.attached.remove(&group);
        }
        match link {
            Some(link) => {
                self.detach_links(vec![link]);
                true
            }
            None => false,
        }
    }

    pub fn detach_all(&mut self) {
        let groups: Vec<ProbeGroup> = self.attached.keys().copied().collect();
        for g in groups {
            self.detach_group(g);
        }
    }

    fn detach_links(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (program, link) in links {
            match self.uprobe(program) {
                Ok(prog) => {
                    if let Err(e) = prog.detach(link) {
                        tracing::warn!("detaching {program}: {e}");
                    }
                }
                Err(e) => tracing::warn!("detaching {program}: {e}"),
            }
        }
    }

    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe, InspectError> {
        let program = self.ebpf.program_mut(name).ok_or_else(|| {
            InspectError::io(
                "the eBPF object",
                std::io::Error::other(format!("program {name} missing")),
            )
        })?;
        program
            .try_into()
            .map_err(|e: aya::programs::ProgramError| bpf_error(name, &e))
    }

    /// Measure the per-hit floor of a uprobe on this machine (see `calibrate`).
    pub fn calibrate(&mut self) -> crate::probes::calibrate::HitCost {
        match self.uprobe("empty") {
            Ok(program) => crate::probes::calibrate::measure_hit_cost(program),
            Err(_) => crate::probes::calibrate::HitCost::default(),
        }
    }

    /// Hits per probe slot, summed over CPUs.
    pub fn hits(&self) -> Vec<u64> {
        (0..probe_slot::COUNT)
            .map(|i| {
                self.hits
                    .get(&i, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Events the kernel side could not queue (ring buffer full).
    pub fn drops(&self) -> u64 {
        self.dropped(drop_slot::RING_FULL)
    }

    /// Waits the in-kernel aggregation could not count (its wait-key map was full).
    pub fn aggregate_overflow(&self) -> u64 {
        self.dropped(drop_slot::AGGREGATE_OVERFLOW)
    }

    /// Contended wake-ups whose park the in-kernel aggregation did not see (`drop_slot::UNTIMED`).
    pub fn untimed_waits(&self) -> u64 {
        self.dropped(drop_slot::UNTIMED)
    }

    fn dropped(&self, slot: u32) -> u64 {
        self.drops
            .get(&slot, 0)
            .map(|v| v.iter().sum::<u64>())
            .unwrap_or(0)
    }

    /// The in-kernel aggregation's totals so far (cumulative since load), summed over CPUs.
    /// A key deleted by nobody cannot vanish mid-iteration; an unreadable entry is skipped.
    pub fn wait_totals(&self) -> Vec<(WaitKey, WaitTotals)> {
        self.waits
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, sum_per_cpu(per_cpu.iter())))
            .collect()
    }

    /// Forget the parks the kernel waits to see readied: after a detached window their
    /// wake-ups may have gone unseen, and a later wake-up must not be timed from them.
    pub fn forget_pending_waits(&mut self) {
        clear_map(&mut self.pending);
    }

    /// Forget the goroutines' latest semacquire1 return addresses: after a detached window they
    /// may be stale, and would name a later sync wait's site wrongly.
    pub fn forget_semacquires(&mut self) {
        clear_map(&mut self.semacquires);
    }

    /// Move up to `max` queued events into `out` (bounded, so a flood cannot starve the
    /// governor; what stays queued is taken next time, and the kernel counts what overflows).
    pub fn drain(&mut self, out: &mut Vec<Event>, max: usize) {
        while out.len() < max {
            let Some(item) = self.events.next() else {
                break;
            };
            if let Some(event) = event_from_bytes(&item) {
                out.push(event);
            }
        }
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    /// Cumulative (run count, run time ns) of a program, when BPF run-time stats are enabled.
    pub fn program_stats(&self, program: &str) -> Option<(u64, u64)> {
        let info = self.ebpf.program(program)?.info().ok()?;
        Some((info.run_count(), info.run_time().as_nanos() as u64))
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Take one of the object's maps as its typed handle.
fn take_map<M>(ebpf: &mut Ebpf, name: &str) -> Result<M, InspectError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| {
        InspectError::io(
            "the eBPF object",
            std::io::Error::other(format!("map {name} missing")),
        )
    })?;
    M::try_from(map).map_err(|e| bpf_error(&format!("map {name}"), &e))
}

/// Delete every entry of a hash map keyed by g address (keys first: deleting while iterating
/// would skip entries).
fn clear_map<V: aya::Pod>(map: &mut HashMap<MapData, u64, V>) {
    let keys: Vec<u64> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = map.remove(&key);
    }
}

/// One key's totals over CPUs: counts and totals add up, the max is the largest.
pub fn sum_per_cpu<'a>(values: impl Iterator<Item = &'a WaitTotals>) -> WaitTotals {
    let mut sum = WaitTotals::default();
    for v in values {
        sum.count += v.count;
        sum.total_ns = sum.total_ns.saturating_add(v.total_ns);
        sum.max_ns = sum.max_ns.max(v.max_ns);
        for (s, b) in sum.buckets.iter_mut().zip(v.buckets) {
            *s += b;
        }
    }
    sum
}

/// One ring-buffer record → Event (None when the size does not match).
pub fn event_from_bytes(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain old data (repr(C), integers only) and the slice is long enough.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// aya-log records from the eBPF side → the `tracing` log.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(target: "parkscope::ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "parkscope::ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "parkscope::ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "parkscope::ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "parkscope::ebpf", "{msg}"),
        }
    }
    fn flush(&self) {}
}

/// An aya error → InspectError: EPERM/EACCES anywhere in the chain means missing privileges.
pub fn bpf_error(context: &str, err: &(dyn std::error::Error + 'static)) -> InspectError {
    let mut chain = Some(err);
    let mut text = String::new();
    let mut denied = false;
    while let Some(e) = chain {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&e.to_string());
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            denied = true;
        }
        chain = e.source();
    }
    // The verifier refuses some programs with EACCES too: its log says so, not a privilege.
    let verifier = text.contains("processed ") && text.contains(" insns");
    if !verifier
        && (denied
            || text.contains("Operation not permitted")
            || text.contains("Permission denied"))
    {
        return permission(context);
    }
    InspectError::io(context.to_string(), std::io::Error::other(text))
}

fn permission(context: &str) -> InspectError {
    InspectError::PermissionDenied(format!(
        "{context}: eBPF uprobes need root, or CAP_BPF and CAP_PERFMON (and CAP_SYS_PTRACE to \
         read the target)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_records_round_trip() {
        let event = Event {
            ts_ns: 7,
            goid: 42,
            kind: 3,
            ..Event::default()
        };
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&event as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        };
        assert_eq!(event_from_bytes(bytes), Some(event));
        assert_eq!(event_from_bytes(&bytes[..10]), None);
        assert_eq!(std::mem::size_of::<Event>(), 96);
    }

    #[test]
    fn permission_errors_are_recognised() {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(matches!(
            bpf_error("x", &e),
            InspectError::PermissionDenied(_)
        ));
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(matches!(bpf_error("x", &e), InspectError::Io { .. }));
    }
}
