//! One consistent-enough picture of a running Go process, read from its memory with no probe and
//! no pause: every goroutine, what it waits on, and the objects in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::InspectError;
use crate::gobin::GoBinary;
use crate::goruntime::globals::{self, Globals};
use crate::goruntime::goroutines::{self, AddrMap, RawG, RawSudog};
use crate::goruntime::layout::Layout;
use crate::goruntime::objects::{self, RawChannel};
use crate::goruntime::stack;
use crate::model::waits::{self, WaitKind};
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
    let snapshot = read_with(target, Reader::Shared(&mem, reader_threads()), now_mono)
        .map_err(|e| mem_error(target.pid, e))?;
    Ok(Snapshot {
        taken_at,
        ..snapshot
    })
}

/// The reading itself, over any `Memory` (tests use recordings).
pub fn read(target: &Target<'_>, mem: &dyn Memory, now_mono: i64) -> Result<Snapshot, MemError> {
    read_with(target, Reader::Serial(mem), now_mono)
}

/// Threads that read batches of goroutines at once: most of a snapshot's time is the kernel
/// copying g records, stacks and sudogs out of the target page by page, which goes as fast as
/// the CPUs that ask.
const MAX_READER_THREADS: usize = 4;

fn reader_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_READER_THREADS))
}

/// The memory a snapshot reads, and whether it may be read from several threads.
#[derive(Clone, Copy)]
enum Reader<'m> {
    Serial(&'m dyn Memory),
    Shared(&'m (dyn Memory + Sync), usize),
}

impl Reader<'_> {
    fn mem(&self) -> &dyn Memory {
        match *self {
            Reader::Serial(mem) => mem,
            Reader::Shared(mem, _) => mem,
        }
    }

    /// `f` over `jobs` jobs, on as many threads as the reader allows, each thread taking the
    /// next job until none is left; `state` makes what one thread keeps between its jobs. The
    /// results in job order.
    fn run<S, T: Send>(
        &self,
        jobs: usize,
        state: impl Fn() -> S + Sync,
        f: impl Fn(&dyn Memory, &mut S, usize) -> T + Sync,
    ) -> Vec<T> {
        let (mem, threads) = match *self {
            Reader::Shared(mem, threads) if threads > 1 && jobs > 1 => (mem, threads.min(jobs)),
            _ => {
                let mut state = state();
                return (0..jobs).map(|n| f(self.mem(), &mut state, n)).collect();
            }
        };
        let next = AtomicUsize::new(0);
        let work = || {
            let mut state = state();
            let mut done = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    return done;
                }
                done.push((n, f(mem, &mut state, n)));
            }
        };
        let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut done = work();
            for helper in helpers {
                match helper.join() {
                    Ok(theirs) => done.extend(theirs),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            done
        });
        done.sort_unstable_by_key(|(n, _)| *n);
        done.into_iter().map(|(_, t)| t).collect()
    }
}

/// What describing one batch of goroutines came to, besides the goroutines it confirmed.
#[derive(Default)]
struct BatchOut {
    /// The sudogs of the confirmed goroutines' waiting chains.
    sudogs: Vec<u64>,
    /// Changed under the reader: the newer record, to be read again.
    changed: Vec<(usize, RawG)>,
    /// Unreadable on the confirming re-read: the record we had.
    moving: Vec<(usize, RawG)>,
}

/// Which semaphore a goroutine sleeps on, from `runtime.semtable`: read once, when the first
/// goroutine needs it (Go 1.26 links sync waits through g.waiting, older releases only there).
struct Semtable<'t, 'data> {
    target: &'t Target<'data>,
    waiters: OnceLock<HashMap<u64, u64>>,
}

impl Semtable<'_, '_> {
    fn sema_of(&self, mem: &dyn Memory, g_addr: u64) -> Option<u64> {
        let layout = &self.target.layout;
        self.waiters
            .get_or_init(|| match (self.target.globals.semtable, &layout.sema_root) {
                (Some(table), Some(root)) => objects::semtable_waiters(
                    mem,
                    self.target.runtime_addr(table),
                    root,
                    &layout.sudog,
                ),
                _ => HashMap::new(),
            })
            .get(&g_addr)
            .copied()
    }
}

/// What every batch needs besides its goroutines.
struct Context<'t, 'data> {
    target: &'t Target<'data>,
    semtable: Semtable<'t, 'data>,
    now_mono: i64,
}

impl<'t, 'data> Context<'t, 'data> {
    fn symbolizer(&self) -> stack::Symbolizer<'t, 'data> {
        stack::Symbolizer::new(
            &self.target.binary.pclntab,
            self.target.load_bias,
            self.target.wrapper_func_id,
        )
    }

    /// Read the g records at `addrs` (allgs positions from `first`): the live ones.
    fn read_gs(&self, mem: &dyn Memory, first: usize, addrs: &[u64]) -> Vec<(usize, RawG)> {
        goroutines::read_gs_settled(mem, &self.target.layout.g, addrs, CONFIRM_ATTEMPTS)
            .into_iter()
            .enumerate()
            .filter_map(|(i, g)| Some((first + i, g?)))
            .filter(|(_, g)| g.status != Status::Dead)
            .collect()
    }

    /// Follow the batch's stacks and waiting chains, then confirm each goroutine did not move
    /// while we did (one more read of its record) and describe it: `place` gets each confirmed
    /// goroutine with its position in allgs.
    fn describe_batch(
        &self,
        mem: &dyn Memory,
        batch: &[(usize, RawG)],
        symbols: &mut stack::Symbolizer<'_, '_>,
        out: &mut BatchOut,
        place: &mut dyn FnMut(usize, Described),
    ) {
        let gs: Vec<&RawG> = batch.iter().map(|(_, g)| g).collect();
        let prefetched = prefetch(self.target, mem, &gs);
        let addrs: Vec<u64> = gs.iter().map(|g| g.addr).collect();
        let again = goroutines::reread_gs(mem, &self.target.layout.g, &addrs);
        for (i, ((index, g), again)) in batch.iter().zip(again).enumerate() {
            let pre = prefetched.get(i);
            match again {
                // A goroutine that is not parked changes all the time: what matters is that the
                // record still belongs to the same goroutine (g records are reused).
                Some(again)
                    if (!g.status.is_parked() && again.goid == g.goid)
                        || again.park_key() == g.park_key() =>
                {
                    out.sudogs.extend(pre.chain.iter().map(|s| s.addr));
                    let sema_of = |g_addr| self.semtable.sema_of(mem, g_addr);
                    let described = describe(self.target, pre, g, &sema_of, self.now_mono, symbols);
                    place(*index, described);
                }
                Some(again) if again.status == Status::Dead => {}
                Some(again) => out.changed.push((*index, again)),
                None => out.moving.push((*index, g.clone())),
            }
        }
    }
}

fn read_with(target: &Target<'_>, reader: Reader<'_>, now_mono: i64) -> Result<Snapshot, MemError> {
    let mem = reader.mem();
    let layout = &target.layout;
    let started = std::time::Instant::now();
    let g_addrs = goroutines::read_pointer_slice(mem, target.runtime_addr(target.globals.allgs))?;
    let context = Context {
        target,
        semtable: Semtable {
            target,
            waiters: OnceLock::new(),
        },
        now_mono,
    };
    // Each goroutine goes to the slot of its position in allgs (so they come out in that order
    // whichever thread or attempt confirmed them), with the semaphore of its sync wait.
    let mut slots: Vec<Option<Goroutine>> = Vec::with_capacity(g_addrs.len());
    slots.resize_with(g_addrs.len(), || None);
    let mut semas: Vec<Option<u64>> = vec![None; g_addrs.len()];
    // The first reading of every goroutine, batch by batch: each batch's g records are read
    // right before its stacks and its confirming re-read (still in cache by then).
    let chunks: Vec<&[u64]> = g_addrs.chunks(DESCRIBE_BATCH).collect();
    type Part<'a> = Option<(&'a mut [Option<Goroutine>], &'a mut [Option<u64>])>;
    let parts: Vec<Mutex<Part<'_>>> = slots
        .chunks_mut(DESCRIBE_BATCH)
        .zip(semas.chunks_mut(DESCRIBE_BATCH))
        .map(|part| Mutex::new(Some(part)))
        .collect();
    let mut first: Vec<BatchOut> = reader.run(
        chunks.len(),
        || context.symbolizer(),
        |mem, symbols, n| {
            let base = n * DESCRIBE_BATCH;
            let batch = context.read_gs(mem, base, chunks[n]);
            let (slots, semas) = parts[n]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .expect("each batch is read once");
            let mut out = BatchOut::default();
            context.describe_batch(mem, &batch, symbols, &mut out, &mut |index, (g, sema)| {
                slots[index - base] = Some(g);
                semas[index - base] = sema;
            });
            out
        },
    );
    drop(parts);
    let t_first = started.elapsed();

    // Goroutines that changed under the reader are read again, up to CONFIRM_ATTEMPTS times in
    // all; those that kept changing, or whose record became unreadable, are reported from
    // their last whole record.
    let mut symbols = context.symbolizer();
    let mut retried = BatchOut::default();
    let mut changed: Vec<(usize, RawG)> = Vec::new();
    for out in &mut first {
        changed.append(&mut out.changed);
        retried.moving.append(&mut out.moving);
        retried.sudogs.append(&mut out.sudogs);
    }
    let mut place = |index: usize, (g, sema): Described| {
        slots[index] = Some(g);
        semas[index] = sema;
    };
    for _ in 1..CONFIRM_ATTEMPTS {
        if changed.is_empty() {
            break;
        }
        for batch in std::mem::take(&mut changed).chunks(DESCRIBE_BATCH) {
            context.describe_batch(mem, batch, &mut symbols, &mut retried, &mut place);
        }
        changed.append(&mut retried.changed);
    }
    let mut moving = retried.moving;
    moving.append(&mut changed);
    let skipped_unstable = moving.len();
    for (index, current) in moving {
        // It kept moving (a busy goroutine parks and wakes thousands of times a second): report
        // what one whole record says, without the stack and objects we could not confirm.
        let (mut g, _) = describe(
            target,
            Prefetched::default(),
            &current,
            &|_| None,
            now_mono,
            &mut symbols,
        );
        g.stack.clear();
        g.blocked_on.clear();
        g.unstable = true;
        place(index, (g, None));
    }
    let queued_sudogs = retried.sudogs;

    let mut channels: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut sync_objects: BTreeMap<u64, (ObjectKind, u64, Vec<u64>)> = BTreeMap::new();
    for (g, sema) in slots.iter().zip(&semas) {
        let Some(g) = g else { continue };
        for b in &g.blocked_on {
            if b.kind == ObjectKind::Chan {
                channels.entry(b.addr).or_default().push(g.g_addr);
            } else if let Some(sema) = *sema {
                let entry = sync_objects
                    .entry(b.addr)
                    .or_insert((b.kind, sema, Vec::new()));
                entry.2.push(g.g_addr);
            }
        }
    }
    // Collected in place (`filter_map` reuses the allocation, `flatten` would not): no second
    // copy of a hundred thousand goroutines.
    #[allow(clippy::filter_map_identity)]
    let mut goroutines_out: Vec<Goroutine> = slots.into_iter().filter_map(|g| g).collect();
    let t_goroutines = started.elapsed();

    // The channels' wait queues link the sudogs we just saw in the goroutines' waiting chains:
    // read them again in batches, so a long queue is not walked one read at a time.
    let sudog_chunks: Vec<&[u64]> = queued_sudogs.chunks(SUDOG_BATCH).collect();
    let read_fresh = || {
        reader.run(
            sudog_chunks.len(),
            || (),
            |mem, _, n| goroutines::read_sudogs(mem, &layout.sudog, sudog_chunks[n]),
        )
    };
    let goid_of =
        || -> AddrMap<u64, i64> { goroutines_out.iter().map(|g| (g.g_addr, g.goid)).collect() };
    // Each g record's goid is mapped while the sudogs are read, when threads are allowed.
    let (fresh_sudogs, goid_of) = match reader {
        Reader::Shared(_, threads) if threads > 1 => std::thread::scope(|scope| {
            let goids = scope.spawn(goid_of);
            let fresh = read_fresh();
            match goids.join() {
                Ok(goids) => (fresh, goids),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }),
        _ => (read_fresh(), goid_of()),
    };
    // By address: where it is in `fresh_sudogs`.
    let mut fresh_at: AddrMap<u64, u32> =
        AddrMap::with_capacity_and_hasher(queued_sudogs.len(), Default::default());
    fresh_at.extend(
        queued_sudogs
            .iter()
            .enumerate()
            .map(|(i, &a)| (a, i as u32)),
    );
    let fresh = |addr: u64| -> Option<RawSudog> {
        let i = *fresh_at.get(&addr)? as usize;
        fresh_sudogs[i / SUDOG_BATCH][i % SUDOG_BATCH]
    };
    let t_sudogs = started.elapsed();

    let goids = |addrs: &mut dyn ExactSizeIterator<Item = u64>| -> Vec<i64> {
        let mut v: Vec<i64> = Vec::with_capacity(addrs.len());
        v.extend(addrs.filter_map(|a| goid_of.get(&a).copied()));
        v.sort_unstable();
        v.dedup();
        v
    };

    // Channels one per job: a channel with a long queue is a long walk.
    let channel_list: Vec<(u64, &Vec<u64>)> = channels.iter().map(|(a, w)| (*a, w)).collect();
    let mut objects_out: Vec<Object> = reader.run(
        channel_list.len(),
        || (),
        |mem, _, n| {
            let (addr, waiters) = channel_list[n];
            let mut object = Object::new(addr, ObjectKind::Chan);
            let raw: Option<RawChannel> =
                objects::read_channel_with(mem, &layout.hchan, &layout.sudog, addr, &fresh);
            if let Some(raw) = &raw {
                object.chan = Some(raw.state.clone());
                object.senders = goids(&mut raw.send_waiters.iter().map(|(g, _)| *g));
                object.receivers = goids(&mut raw.recv_waiters.iter().map(|(g, _)| *g));
            }
            // Waiters whose queue entry we did not see (the queue moved) still wait here.
            object.waiters = goids(&mut waiters.iter().copied());
            object
        },
    );
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
        "snapshot read: {} g records read, described and confirmed by {t_first:.1?} (the \
         first time), in order by {t_goroutines:.1?}, queued sudogs by {t_sudogs:.1?}, objects \
         and edges by {:.1?}",
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

/// A goroutine, and the semaphore it sleeps on when it waits on a sync object.
type Described = (Goroutine, Option<u64>);

/// Goroutines described per batch: their stacks and waiting chains are read in batched reads.
const DESCRIBE_BATCH: usize = 4096;
/// Queued sudogs re-read per batch.
const SUDOG_BATCH: usize = 16384;

/// What [`describe`] needs from the target's memory besides the g record.
#[derive(Default, Clone, Copy)]
struct Prefetched<'a> {
    /// Stack PCs (empty for a goroutine on a CPU: its saved registers are stale).
    pcs: &'a [u64],
    /// Its `g.waiting` sudog chain.
    chain: &'a [RawSudog],
}

/// [`Prefetched`] for a whole batch of goroutines, read in batched reads into one vector each.
struct BatchPrefetch {
    pcs: Vec<u64>,
    /// Per goroutine of the batch: its range of `pcs` (empty when on a CPU).
    stacks: Vec<std::ops::Range<usize>>,
    sudogs: Vec<RawSudog>,
    /// Per goroutine: its range of `sudogs`.
    chains: Vec<std::ops::Range<usize>>,
}

impl BatchPrefetch {
    fn get(&self, i: usize) -> Prefetched<'_> {
        Prefetched {
            pcs: &self.pcs[self.stacks[i].clone()],
            chain: &self.sudogs[self.chains[i].clone()],
        }
    }
}

fn prefetch(target: &Target<'_>, mem: &dyn Memory, gs: &[&RawG]) -> BatchPrefetch {
    let off_cpu: Vec<&RawG> = gs
        .iter()
        .copied()
        .filter(|g| g.status != Status::Running)
        .collect();
    let mut pcs = Vec::with_capacity(off_cpu.len() * 8);
    let mut off_cpu_stacks = stack::unwind_many_into(mem, &off_cpu, &mut pcs).into_iter();
    let stacks = gs
        .iter()
        .map(|g| {
            if g.status == Status::Running {
                0..0
            } else {
                off_cpu_stacks.next().unwrap_or(0..0)
            }
        })
        .collect();
    let (sudogs, chains) = goroutines::waiting_chains_flat(mem, &target.layout.sudog, gs);
    BatchPrefetch {
        pcs,
        stacks,
        sudogs,
        chains,
    }
}

fn describe(
    target: &Target<'_>,
    pre: Prefetched<'_>,
    g: &RawG,
    sema_of_g: &dyn Fn(u64) -> Option<u64>,
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
        symbols.symbolize(pre.pcs)
    };

    let mut blocked_on = Vec::new();
    let mut sync_sema = None;
    let kind = wait_reason.as_deref().and_then(WaitKind::from_reason);
    if let (Some(reason), Some(kind)) = (wait_reason.as_deref(), kind) {
        if let Some(op) = kind.channel_op() {
            for sudog in pre.chain {
                if sudog.c != 0 {
                    blocked_on.push(BlockedOn {
                        kind: ObjectKind::Chan,
                        addr: sudog.c,
                        op,
                    });
                }
            }
        } else if kind.is_sync() {
            // Go 1.26 links sync waits through g.waiting; older releases only through the
            // semaphore table.
            let sema = pre
                .chain
                .first()
                .map(|s| s.elem)
                .filter(|&e| e != 0)
                .or_else(|| sema_of_g(g.addr));
            let functions: Vec<&str> = stack.iter().map(|f| f.function.as_str()).collect();
            if let Some(sema) = sema
                && let Some((kind, addr, op)) = waits::sync_object(reason, &functions, sema)
            {
                blocked_on.push(BlockedOn { kind, addr, op });
                sync_sema = Some(sema);
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
    (goroutine, sync_sema)
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
