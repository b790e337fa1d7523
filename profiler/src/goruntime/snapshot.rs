//! One consistent-enough picture of a running Go process, read from its memory with no probe and
//! no pause: every goroutine, what it waits on, and the objects in between.

use std::collections::{BTreeMap, HashMap};

use crate::error::InspectError;
use crate::gobin::GoBinary;
use crate::goruntime::globals::{self, Globals};
use crate::goruntime::goroutines::{self, AddrMap, RawG, RawSudog};
use crate::goruntime::layout::Layout;
use crate::goruntime::objects::{self, RawChannel};
use crate::goruntime::stack;
use crate::model::{self, BlockedOn, Goroutine, Object, ObjectKind, Op, Snapshot, Status};
use crate::remote::maps;
use crate::remote::memory::{MemError, Memory, ProcessMemory};
use crate::remote::process;

/// How often a goroutine that changes under the reader is re-read before it is left out.
const CONFIRM_ATTEMPTS: usize = 5;

/// Everything needed to read one process, prepared once.
pub struct Target<'data> {
    pub pid: u32,
    pub binary: GoBinary<'data>,
    pub layout: Layout,
    pub globals: Globals,
    /// Run-time address − link-time address (0 for non-PIE).
    pub load_bias: u64,
    pub executable: String,
    /// `abi.FuncIDWrapper` of this binary: frames Go's tracebacks hide.
    pub wrapper_func_id: Option<u8>,
}

impl<'data> Target<'data> {
    pub fn open(pid: u32, exe_bytes: &'data [u8]) -> Result<Target<'data>, InspectError> {
        let binary = GoBinary::parse(exe_bytes)?;
        let layout = Layout::resolve(&binary.offsets)?;
        let globals = globals::find(&binary)?;
        let load_bias = maps::executable_load_bias(pid, &binary.image)?;
        let wrapper_func_id = stack::wrapper_func_id(&binary.pclntab);
        Ok(Target {
            wrapper_func_id,
            pid,
            binary,
            layout,
            globals,
            load_bias,
            executable: process::exe_display_name(pid).unwrap_or_default(),
        })
    }

    fn runtime_addr(&self, link_addr: u64) -> u64 {
        link_addr.wrapping_add(self.load_bias)
    }
}

pub fn mem_error(pid: u32, err: MemError) -> InspectError {
    match err {
        MemError::Gone => InspectError::ProcessGone { pid },
        MemError::PermissionDenied => InspectError::PermissionDenied(format!(
            "reading the memory of process {pid} needs root or CAP_SYS_PTRACE"
        )),
        other => InspectError::io(
            format!("reading the memory of process {pid}"),
            std::io::Error::other(other.to_string()),
        ),
    }
}

/// Take a snapshot of a live process.
pub fn take(target: &Target<'_>) -> Result<Snapshot, InspectError> {
    let mem = ProcessMemory::new(target.pid);
    let taken_at = now_rfc3339();
    let now_mono = monotonic_ns();
    let snapshot = read(target, &mem, now_mono).map_err(|e| mem_error(target.pid, e))?;
    Ok(Snapshot {
        taken_at,
        ..snapshot
    })
}

/// The reading itself, over any `Memory` (tests use recordings).
pub fn read(target: &Target<'_>, mem: &dyn Memory, now_mono: i64) -> Result<Snapshot, MemError> {
    let layout = &target.layout;
    let started = std::time::Instant::now();
    let g_addrs = goroutines::read_allgs(mem, target.runtime_addr(target.globals.allgs))?;
    let (raw_gs, mut unreadable) = goroutines::read_gs(mem, &layout.g, &g_addrs);
    let t_gs = started.elapsed();
    let sema_of_g = match (target.globals.semtable, &layout.sema_root) {
        (Some(table), Some(root)) => {
            objects::semtable_waiters(mem, target.runtime_addr(table), root, &layout.sudog)
        }
        _ => HashMap::new(),
    };

    let t_semtable = started.elapsed();
    let mut symbols = stack::Symbolizer::new(
        &target.binary.pclntab,
        target.load_bias,
        target.wrapper_func_id,
    );
    // One slot per g record, in allgs order: the goroutine as confirmed (or given up on), and
    // the sudogs of its waiting chain.
    let mut slots: Vec<Option<(Described, Vec<u64>)>> = Vec::new();
    slots.resize_with(raw_gs.len(), || None);
    let mut pending: Vec<(usize, RawG)> = raw_gs
        .into_iter()
        .enumerate()
        .filter(|(_, g)| g.status != Status::Dead)
        .collect();
    // Goroutines that kept changing (or whose record became unreadable): the last whole record.
    let mut moving: Vec<(usize, RawG)> = Vec::new();
    for _ in 0..CONFIRM_ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        let mut changed = Vec::new();
        for batch in pending.chunks(DESCRIBE_BATCH) {
            let gs: Vec<&RawG> = batch.iter().map(|(_, g)| g).collect();
            let prefetched = prefetch(target, mem, &gs);
            let described: Vec<(Described, Vec<u64>)> = gs
                .iter()
                .zip(prefetched)
                .map(|(g, pre)| {
                    let sudogs = pre.chain.iter().map(|s| s.addr).collect();
                    (
                        describe(target, &pre, g, &sema_of_g, now_mono, &mut symbols),
                        sudogs,
                    )
                })
                .collect();
            // Confirm the goroutines did not move while we followed their pointers.
            let addrs: Vec<u64> = gs.iter().map(|g| g.addr).collect();
            let again = goroutines::reread_gs(mem, &layout.g, &addrs);
            for (((index, current), described), again) in batch.iter().zip(described).zip(again) {
                match again {
                    // A goroutine that is not parked changes all the time: what matters is that
                    // the record still belongs to the same goroutine (g records are reused).
                    Some(again) if !current.status.is_parked() && again.goid == current.goid => {
                        slots[*index] = Some(described);
                    }
                    Some(again) if again.park_key() == current.park_key() => {
                        slots[*index] = Some(described);
                    }
                    Some(again) if again.status == Status::Dead => {}
                    Some(again) => changed.push((*index, again)),
                    None => moving.push((*index, current.clone())),
                }
            }
        }
        pending = changed;
    }
    moving.extend(pending);
    let t_goroutines = started.elapsed();
    let skipped_unstable = moving.len();
    for (index, current) in moving {
        // It kept moving (a busy goroutine parks and wakes thousands of times a second): report
        // what one whole record says, without the stack and objects we could not confirm.
        let (mut g, _, _) = describe(
            target,
            &Prefetched::default(),
            &current,
            &sema_of_g,
            now_mono,
            &mut symbols,
        );
        g.stack.clear();
        g.blocked_on.clear();
        g.unstable = true;
        slots[index] = Some(((g, Vec::new(), None), Vec::new()));
    }

    let mut goroutines_out = Vec::new();
    let mut channels: BTreeMap<u64, Vec<(u64, Op)>> = BTreeMap::new();
    let mut sync_objects: BTreeMap<u64, (ObjectKind, u64, Vec<u64>)> = BTreeMap::new();
    let mut queued_sudogs = Vec::new();
    for ((g, chan_waits, sync_wait), sudogs) in slots.into_iter().flatten() {
        for (chan, op) in chan_waits {
            channels.entry(chan).or_default().push((g.g_addr, op));
        }
        if let Some((kind, addr, sema)) = sync_wait {
            let entry = sync_objects.entry(addr).or_insert((kind, sema, Vec::new()));
            entry.2.push(g.g_addr);
        }
        queued_sudogs.extend(sudogs);
        goroutines_out.push(g);
    }
    unreadable.clear();

    // The channels' wait queues link the sudogs we just saw in the goroutines' waiting chains:
    // read them again in one batch, so a long queue is not walked one read at a time.
    let fresh: AddrMap<u64, RawSudog> = goroutines::read_sudogs(mem, &layout.sudog, &queued_sudogs)
        .into_iter()
        .flatten()
        .map(|s| (s.addr, s))
        .collect();

    let goid_of: AddrMap<u64, i64> = goroutines_out.iter().map(|g| (g.g_addr, g.goid)).collect();
    let goids = |addrs: &mut dyn Iterator<Item = u64>| -> Vec<i64> {
        let mut v: Vec<i64> = addrs.filter_map(|a| goid_of.get(&a).copied()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };

    let mut objects_out = Vec::new();
    for (addr, waiters) in &channels {
        let mut object = Object::new(*addr, ObjectKind::Chan);
        let raw: Option<RawChannel> =
            objects::read_channel_with(mem, &layout.hchan, &layout.sudog, *addr, &fresh);
        if let Some(raw) = &raw {
            object.chan = Some(raw.state.clone());
            object.senders = goids(&mut raw.send_waiters.iter().map(|(g, _)| *g));
            object.receivers = goids(&mut raw.recv_waiters.iter().map(|(g, _)| *g));
        }
        // Waiters whose queue entry we did not see (the queue moved) still wait here.
        object.waiters = goids(&mut waiters.iter().map(|(g, _)| *g));
        objects_out.push(object);
    }
    for (addr, (kind, sema, waiters)) in &sync_objects {
        let mut object = Object::new(*addr, *kind);
        object.sema_addr = Some(*sema);
        object.waiters = goids(&mut waiters.iter().copied());
        objects_out.push(object);
    }

    // A select case's direction is known once we saw which queue holds the goroutine.
    let object_at: AddrMap<u64, usize> = objects_out
        .iter()
        .enumerate()
        .map(|(i, o)| (o.addr, i))
        .collect();
    for g in &mut goroutines_out {
        for b in &mut g.blocked_on {
            if b.op != Op::Select {
                continue;
            }
            if let Some(o) = object_at.get(&b.addr).map(|&i| &objects_out[i]) {
                // senders and receivers are sorted (see `goids`).
                if o.senders.binary_search(&g.goid).is_ok() {
                    b.op = Op::Send;
                } else if o.receivers.binary_search(&g.goid).is_ok() {
                    b.op = Op::Recv;
                }
            }
        }
    }

    let edges = model::derive_edges(&goroutines_out, &objects_out);
    tracing::debug!(
        "snapshot read: {} g records in {t_gs:.1?}, semtable by {t_semtable:.1?}, goroutines \
         described and confirmed by {t_goroutines:.1?}, objects and edges by {:.1?}",
        g_addrs.len(),
        started.elapsed()
    );
    Ok(Snapshot {
        pid: target.pid,
        go_version: target.binary.version.raw.clone(),
        executable: target.executable.clone(),
        taken_at: String::new(),
        goroutines: goroutines_out,
        objects: objects_out,
        edges,
        skipped_unstable,
    })
}

type Described = (Goroutine, Vec<(u64, Op)>, Option<(ObjectKind, u64, u64)>);

/// Goroutines described per batch: their stacks and waiting chains are read in batched reads.
const DESCRIBE_BATCH: usize = 4096;

/// What [`describe`] needs from the target's memory besides the g record, read for a whole batch
/// of goroutines at once.
#[derive(Default)]
struct Prefetched {
    /// Stack PCs (empty for a goroutine on a CPU: its saved registers are stale).
    pcs: Vec<u64>,
    /// Its `g.waiting` sudog chain.
    chain: Vec<RawSudog>,
}

fn prefetch(target: &Target<'_>, mem: &dyn Memory, gs: &[&RawG]) -> Vec<Prefetched> {
    let off_cpu: Vec<&RawG> = gs
        .iter()
        .copied()
        .filter(|g| g.status != Status::Running)
        .collect();
    let mut stacks = stack::unwind_many(mem, &off_cpu).into_iter();
    let chains = goroutines::waiting_chains(mem, &target.layout.sudog, gs);
    gs.iter()
        .zip(chains)
        .map(|(g, chain)| Prefetched {
            pcs: if g.status == Status::Running {
                Vec::new()
            } else {
                stacks.next().unwrap_or_default()
            },
            chain,
        })
        .collect()
}

fn describe(
    target: &Target<'_>,
    pre: &Prefetched,
    g: &RawG,
    sema_of_g: &HashMap<u64, u64>,
    now_mono: i64,
    symbols: &mut stack::Symbolizer<'_, '_>,
) -> Described {
    let parked = g.status.is_parked();
    let wait_reason = if parked {
        target
            .binary
            .wait_reasons
            .as_ref()
            .and_then(|w| w.name(g.wait_reason))
            .map(str::to_string)
            .or_else(|| Some(format!("waitreason {}", g.wait_reason)))
    } else {
        None
    };
    let on_cpu = matches!(g.status, Status::Running);
    // A running goroutine's saved registers are stale: show no stack rather than a wrong one.
    let stack = if on_cpu {
        Vec::new()
    } else {
        symbols.symbolize(&pre.pcs)
    };

    let mut blocked_on = Vec::new();
    let mut chan_waits = Vec::new();
    let mut sync_wait = None;
    if let Some(reason) = wait_reason.as_deref() {
        if let Some(op) = objects::channel_op(reason) {
            for sudog in &pre.chain {
                if sudog.c != 0 {
                    chan_waits.push((sudog.c, op));
                    blocked_on.push(BlockedOn {
                        kind: ObjectKind::Chan,
                        addr: sudog.c,
                        op,
                    });
                }
            }
        } else if objects::is_sync_reason(reason) {
            // Go 1.26 links sync waits through g.waiting; older releases only through the
            // semaphore table.
            let sema = pre
                .chain
                .first()
                .map(|s| s.elem)
                .filter(|&e| e != 0)
                .or_else(|| sema_of_g.get(&g.addr).copied());
            let functions: Vec<&str> = stack.iter().map(|f| f.function.as_str()).collect();
            if let Some(sema) = sema
                && let Some((kind, addr, op)) =
                    objects::classify_sync_wait(reason, &functions, sema)
            {
                blocked_on.push(BlockedOn { kind, addr, op });
                sync_wait = Some((kind, addr, sema));
            }
        }
    }

    let parked_for_ns = (parked && g.waitsince > 0 && now_mono > g.waitsince)
        .then(|| (now_mono - g.waitsince) as u64);
    let start = symbols.location(g.startpc);
    let system = model::is_system_start(start.as_ref().map(|l| l.function.as_str()));
    let goroutine = Goroutine {
        system,
        goid: g.goid,
        status: g.status,
        wait_reason,
        parked_for_ns,
        start,
        // Like Go's own traceback: main's creator is the runtime's bootstrap, not worth a line.
        created_by: if g.goid == 1 {
            None
        } else {
            symbols.creation_site(g.gopc)
        },
        parent_goid: g.parent_goid,
        stack,
        blocked_on,
        g_addr: g.addr,
        on_cpu,
        unstable: false,
        verdict: None,
    };
    (goroutine, chan_waits, sync_wait)
}

/// CLOCK_MONOTONIC in ns: the clock Go's nanotime (and so g.waitsince) uses.
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(now.as_secs() as i64, now.subsec_millis())
}

/// UTC civil time from Unix seconds (Howard Hinnant's days-to-civil algorithm).
pub fn format_rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_795_475_655, 42),
            "2026-11-23T23:14:15.042Z"
        );
        assert_eq!(format_rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    }
}
