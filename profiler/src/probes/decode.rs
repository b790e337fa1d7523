//! Raw kernel events → what a user reads: the runtime's own wait-reason text, the object's
//! address, and the first user frame as function file:line (symbolized through pclntab).

use std::cell::RefCell;
use std::collections::HashMap;

use profiler_common::{Event, event_flag, event_kind as kind};
use serde::Serialize;

use crate::gobin::GoBinary;
use crate::gobin::pclntab::SourceLine;
use crate::model::contention::is_machinery;
use crate::model::waits::{RWMUTEX_READER_SEM, WaitKind};

/// One decoded event; also the JSON line `parkscope trace --json` prints.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TraceEvent {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The goroutine the event is about; for `wake` the waker (0 = the scheduler), for
    /// `create` the parent.
    pub goid: u64,
    pub event: &'static str,
    /// Hex address of the object (channel, mutex, semaphore, g), "" when none.
    pub object: String,
    /// The runtime's wait-reason text (park, sem_acquire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub function: String,
    pub file: String,
    pub line: u32,
    /// Raw return address the location came from.
    pub pc: String,
    /// wake: the woken goroutine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_goid: Option<u64>,
    /// create: the new goroutine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_goid: Option<u64>,
    /// chan_send / chan_recv / select: whether the operation may block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocking: Option<bool>,
    /// select: case index, number of cases, direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ncases: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<&'static str>,
    /// chan_make: capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// The whole user stack, innermost first ("function file:line", inlined frames included),
    /// for the probes that take stack ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
}

pub fn event_name(k: u16) -> &'static str {
    match k {
        kind::CREATE => "create",
        kind::EXIT => "exit",
        kind::PARK => "park",
        kind::WAKE => "wake",
        kind::CHAN_SEND => "chan_send",
        kind::CHAN_RECV => "chan_recv",
        kind::SELECT => "select",
        kind::CHAN_CLOSE => "chan_close",
        kind::CHAN_MAKE => "chan_make",
        kind::LOCK => "lock",
        kind::UNLOCK => "unlock",
        kind::RWLOCK => "rw_lock",
        kind::RWUNLOCK => "rw_unlock",
        kind::RLOCK_WAIT => "rlock_wait",
        kind::RUNLOCK_SLOW => "runlock_slow",
        kind::SEM_ACQUIRE => "sem_acquire",
        kind::SEM_RELEASE => "sem_release",
        _ => "unknown",
    }
}

/// What a consumer of raw events (contention accounting) needs from a [`Decoder`], as a trait
/// object so it can cross the session's sink without the decoder's lifetimes.
pub trait EventDecoder {
    fn decode(&self, e: &Event) -> TraceEvent;
    fn user_stack(&self, pcs: &[u64]) -> (Vec<SourceLine>, Option<SourceLine>);
    /// The runtime's wait-reason text of `code` (what [`TraceEvent::reason`] says).
    fn reason_text(&self, code: u8) -> String;
    /// The object's address as [`TraceEvent::object`] names it (0 when none), given the
    /// event's reason text: without building the whole decoded event.
    fn object_addr(&self, e: &Event, reason: Option<&str>) -> u64;
}

impl EventDecoder for Decoder<'_, '_> {
    fn decode(&self, e: &Event) -> TraceEvent {
        Decoder::decode(self, e)
    }
    fn user_stack(&self, pcs: &[u64]) -> (Vec<SourceLine>, Option<SourceLine>) {
        Decoder::user_stack(self, pcs)
    }
    fn reason_text(&self, code: u8) -> String {
        Decoder::reason_text(self, code)
    }
    fn object_addr(&self, e: &Event, reason: Option<&str>) -> u64 {
        Decoder::object_addr(self, e, reason)
    }
}

/// Everything needed to decode one target's events.
pub struct Decoder<'a, 'data> {
    binary: &'a GoBinary<'data>,
    load_bias: u64,
    /// Offset of hchan.lock: a channel park's lock argument minus this is the channel.
    hchan_lock: Option<u64>,
    /// Source lines per return address: a busy program repeats a few hundred PCs.
    lines_cache: RefCell<HashMap<u64, Vec<SourceLine>>>,
}

/// Bound on the symbol cache (distinct PCs), so a long session cannot grow without limit.
const LINES_CACHE_MAX: usize = 1 << 16;

impl<'a, 'data> Decoder<'a, 'data> {
    pub fn new(binary: &'a GoBinary<'data>, load_bias: u64) -> Self {
        Decoder {
            binary,
            load_bias,
            hchan_lock: binary.offsets.get("hchan.lock").map(|f| f.value),
            lines_cache: RefCell::new(HashMap::new()),
        }
    }

    pub fn reason_text(&self, code: u8) -> String {
        self.binary
            .wait_reasons
            .as_ref()
            .and_then(|w| w.name(code))
            .map(str::to_string)
            .unwrap_or_else(|| format!("waitreason {code}"))
    }

    /// Source lines (innermost inlined first) of a return address, looked up at pc-1 so the
    /// call instruction's line is named.
    fn lines(&self, pc: u64) -> Vec<SourceLine> {
        if pc == 0 {
            return Vec::new();
        }
        if let Some(lines) = self.lines_cache.borrow().get(&pc) {
            return lines.clone();
        }
        let lines = self
            .binary
            .pclntab
            .frames(pc.wrapping_sub(self.load_bias).wrapping_sub(1));
        let mut cache = self.lines_cache.borrow_mut();
        if cache.len() >= LINES_CACHE_MAX {
            cache.clear();
        }
        cache.insert(pc, lines.clone());
        lines
    }

    /// The first frame that is the user's code; else the innermost frame; else nothing.
    pub fn locate(&self, pcs: &[u64]) -> (Option<SourceLine>, u64) {
        let mut first = None;
        for &pc in pcs {
            for line in self.lines(pc) {
                if !is_machinery(&line.function) {
                    return (Some(line), pc);
                }
                if first.is_none() {
                    first = Some((line, pc));
                }
            }
        }
        match first {
            Some((line, pc)) => (Some(line), pc),
            None => (None, pcs.first().copied().unwrap_or(0)),
        }
    }

    /// The frames from the first user frame outward (inlined frames included, innermost
    /// first), and the innermost frame of all (the fallback name when no user frame was
    /// captured). Used by contention accounting for sites and pprof stacks.
    pub fn user_stack(&self, pcs: &[u64]) -> (Vec<SourceLine>, Option<SourceLine>) {
        let mut innermost = None;
        let mut stack = Vec::new();
        for &pc in pcs {
            for line in self.lines(pc) {
                if innermost.is_none() {
                    innermost = Some(line.clone());
                }
                if !stack.is_empty() || !is_machinery(&line.function) {
                    stack.push(line);
                }
            }
        }
        (stack, innermost)
    }

    /// Every frame of a stack (from a stack id) as "function file:line", innermost first.
    pub fn stack_text(&self, pcs: &[u64]) -> Vec<String> {
        // The innermost entry is where the probe fired, not a return address.
        let mut out = Vec::new();
        for (i, &pc) in pcs.iter().enumerate() {
            let lines = if i == 0 {
                self.lines(pc.wrapping_add(1))
            } else {
                self.lines(pc)
            };
            out.extend(
                lines
                    .into_iter()
                    .map(|l| format!("{} {}:{}", l.function, l.file, l.line)),
            );
        }
        out
    }

    /// The object an event is about: a channel park's lock argument is turned into the
    /// channel, a blocked reader's semaphore into its RWMutex; else the raw address.
    pub fn object_addr(&self, e: &Event, reason: Option<&str>) -> u64 {
        match e.kind {
            // A channel park's lock is the channel's own (a select's is nil).
            kind::PARK
                if reason
                    .and_then(WaitKind::from_reason)
                    .is_some_and(|k| matches!(k, WaitKind::ChanRecv | WaitKind::ChanSend))
                    && e.object != 0 =>
            {
                match self.hchan_lock {
                    Some(lock_off) => e.object.wrapping_sub(lock_off),
                    None => e.object,
                }
            }
            kind::RLOCK_WAIT if e.object != 0 => e.object.wrapping_sub(RWMUTEX_READER_SEM),
            _ => e.object,
        }
    }

    pub fn decode(&self, e: &Event) -> TraceEvent {
        let mut out = TraceEvent {
            ts_ns: e.ts_ns,
            pid: e.pid,
            tid: e.tid,
            goid: e.goid,
            event: event_name(e.kind),
            object: hex(e.object),
            reason: None,
            function: String::new(),
            file: String::new(),
            line: 0,
            pc: String::new(),
            peer_goid: None,
            child_goid: None,
            blocking: None,
            case: None,
            ncases: None,
            dir: None,
            capacity: None,
            stack: Vec::new(),
        };
        let mut pcs: Vec<u64> = e.frames.to_vec();
        match e.kind {
            kind::CREATE => {
                out.child_goid = Some(e.peer_goid);
                // The creation site: the new g's gopc (the return address after `go`).
                pcs = vec![e.aux];
            }
            kind::WAKE => {
                out.peer_goid = Some(e.peer_goid);
            }
            kind::PARK => {
                let reason = self.reason_text(e.reason);
                out.object = hex(self.object_addr(e, Some(&reason)));
                out.reason = Some(reason);
            }
            kind::SEM_ACQUIRE => out.reason = Some(self.reason_text(e.reason)),
            kind::CHAN_SEND | kind::CHAN_RECV => {
                out.blocking = Some(e.flags & event_flag::BLOCKING != 0);
            }
            kind::SELECT => {
                out.blocking = Some(e.flags & event_flag::BLOCKING != 0);
                out.case = Some((e.aux & 0xffff) as u32);
                out.ncases = Some(((e.aux >> 16) & 0xffff) as u32);
                let nsends = (e.aux >> 32) & 0xffff;
                out.dir = Some(if (e.aux & 0xffff) < nsends {
                    "send"
                } else {
                    "recv"
                });
            }
            kind::CHAN_MAKE => out.capacity = Some(e.aux),
            kind::RLOCK_WAIT => out.object = hex(self.object_addr(e, None)),
            _ => {}
        }
        let (line, pc) = self.locate(&pcs);
        if let Some(line) = line {
            out.function = line.function;
            out.file = line.file;
            out.line = line.line;
        }
        out.pc = hex(pc);
        out
    }
}

pub fn hex(addr: u64) -> String {
    if addr == 0 {
        String::new()
    } else {
        format!("{addr:#x}")
    }
}

/// One line of text output.
pub fn render_text(e: &TraceEvent) -> String {
    let mut s = format!("{:>15} g{:<6} {:<12}", e.ts_ns, e.goid, e.event);
    if !e.object.is_empty() {
        s.push_str(&format!(" {}", e.object));
    }
    if let Some(r) = &e.reason {
        s.push_str(&format!(" [{r}]"));
    }
    if let Some(p) = e.peer_goid {
        s.push_str(&format!(" -> g{p}"));
    }
    if let Some(c) = e.child_goid {
        s.push_str(&format!(" child g{c}"));
    }
    if let (Some(c), Some(n), Some(d)) = (e.case, e.ncases, e.dir) {
        s.push_str(&format!(" case {c}/{n} {d}"));
    }
    if let Some(cap) = e.capacity {
        s.push_str(&format!(" cap {cap}"));
    }
    if e.blocking == Some(false) {
        s.push_str(" (non-blocking)");
    }
    if !e.function.is_empty() {
        s.push_str(&format!("  {} {}:{}", e.function, e.file, e.line));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_name() {
        for k in 1..=17u16 {
            assert_ne!(event_name(k), "unknown", "kind {k}");
        }
        assert_eq!(hex(0), "");
        assert_eq!(hex(0xc000010000), "0xc000010000");
    }
}
