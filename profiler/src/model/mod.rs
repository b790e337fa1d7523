//! The one shared picture of a Go process: goroutines, the objects they wait on, and the edges
//! between them. The snapshot builds it from memory, the event pipeline will update it, and
//! analysis and outputs only read it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;

pub mod contention;
pub mod waits;

pub use waits::WaitKind;

/// Goroutine scheduling state (`g.atomicstatus` with the GC's scan bit masked off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Idle,
    Runnable,
    Running,
    Syscall,
    Waiting,
    Dead,
    Copystack,
    Preempted,
    /// Go 1.26+: marked by the runtime's own leak detector.
    Leaked,
    Unknown,
}

impl Status {
    pub fn from_raw(raw: u32) -> Status {
        match raw & !0x1000 {
            0 => Status::Idle,
            1 => Status::Runnable,
            2 => Status::Running,
            3 => Status::Syscall,
            4 => Status::Waiting,
            5 | 6 | 11 => Status::Dead,
            8 => Status::Copystack,
            9 => Status::Preempted,
            10 => Status::Leaked,
            _ => Status::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Runnable => "runnable",
            Status::Running => "running",
            Status::Syscall => "syscall",
            Status::Waiting => "waiting",
            Status::Dead => "dead",
            Status::Copystack => "copystack",
            Status::Preempted => "preempted",
            Status::Leaked => "leaked",
            Status::Unknown => "unknown",
        }
    }

    /// Parked: its saved registers and stack are stable while it stays parked.
    pub fn is_parked(self) -> bool {
        matches!(self, Status::Waiting | Status::Leaked)
    }
}

/// An immutable, cheaply cloned string: function and file names, which a hundred thousand
/// goroutines share. One pointer wide (frames stay small); serializes, compares, hashes and
/// orders as the `str` it holds.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SharedStr(Arc<Box<str>>);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> SharedStr {
        SharedStr(Arc::new(s.into()))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> SharedStr {
        SharedStr(Arc::new(s.into_boxed_str()))
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> SharedStr {
        SharedStr::from(s.as_str())
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> String {
        s.as_str().to_string()
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        self.as_str() == other.as_str()
    }
}

/// A source position: function, file, line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub struct Location {
    pub function: SharedStr,
    pub file: SharedStr,
    pub line: u32,
}

/// "function file:line" with the file's base name: how sites read in tables.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            return f.write_str(&self.function);
        }
        let file = self.file.rsplit('/').next().unwrap_or(&self.file);
        write!(f, "{} {}:{}", self.function, file, self.line)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    pub function: SharedStr,
    pub file: SharedStr,
    pub line: u32,
    /// Run-time program counter (the call site for return addresses).
    #[serde(serialize_with = "hex")]
    pub pc: u64,
    /// True for a frame the compiler inlined into its caller.
    pub inlined: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Chan,
    Mutex,
    RwMutex,
    WaitGroup,
    Cond,
    /// A runtime semaphore whose owner type is unknown.
    Sema,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Chan => "chan",
            ObjectKind::Mutex => "mutex",
            ObjectKind::RwMutex => "rwmutex",
            ObjectKind::WaitGroup => "waitgroup",
            ObjectKind::Cond => "cond",
            ObjectKind::Sema => "sema",
        }
    }
}

/// What a blocked goroutine is doing to the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Send,
    Recv,
    /// One case of a select (direction unknown from memory alone).
    Select,
    Lock,
    RLock,
    Wait,
    Acquire,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BlockedOn {
    pub kind: ObjectKind,
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    pub op: Op,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChanState {
    pub cap: u64,
    pub len: u64,
    pub closed: bool,
    pub elem_size: u16,
    pub elem_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Object {
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    pub kind: ObjectKind,
    /// Channels only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub chan: Option<ChanState>,
    /// The runtime semaphore word goroutines sleep on (locks, wait groups).
    #[serde(serialize_with = "opt_hex", skip_serializing_if = "Option::is_none")]
    pub sema_addr: Option<u64>,
    /// Goroutines blocked sending / receiving (channels), or waiting (locks).
    pub senders: Vec<i64>,
    pub receivers: Vec<i64>,
    pub waiters: Vec<i64>,
}

impl Object {
    pub fn new(addr: u64, kind: ObjectKind) -> Object {
        Object {
            addr,
            kind,
            chan: None,
            sema_addr: None,
            senders: Vec::new(),
            receivers: Vec::new(),
            waiters: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Goroutine {
    pub goid: i64,
    pub status: Status,
    /// The runtime's own text, exactly as Go's goroutine dump prints it; None when not waiting.
    pub wait_reason: Option<String>,
    /// How long it has been parked, when Go recorded it (g.waitsince).
    pub parked_for_ns: Option<u64>,
    pub start: Option<Location>,
    pub created_by: Option<Location>,
    pub parent_goid: Option<i64>,
    pub stack: Vec<Frame>,
    pub blocked_on: Vec<BlockedOn>,
    /// Address of the runtime.g record.
    #[serde(serialize_with = "hex")]
    pub g_addr: u64,
    /// Running on a CPU at the instant of the read: its saved stack is stale and not shown.
    pub on_cpu: bool,
    /// It kept changing while we read it: status and wait reason come from one whole record,
    /// stack and objects are left out rather than guessed.
    pub unstable: bool,
    /// A runtime-internal goroutine (GC workers, sweeper, finalizers…), which Go's own goroutine
    /// dump leaves out too.
    pub system: bool,
    /// The leak proof's verdict (`leaked`, `blocked`, `waiting`, `running`, …) when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// Go's rule (runtime.isSystemGoroutine, simplified): started in a runtime function other than
/// runtime.main.
pub fn is_system_start(start_function: Option<&str>) -> bool {
    start_function.is_some_and(|f| f.starts_with("runtime.") && f != "runtime.main")
}

/// Edges of the wait-for graph. Derivable from goroutines and objects; kept explicit so outputs
/// and analysis share one definition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Edge {
    /// Goroutine waits on an object.
    WaitsOn {
        goid: i64,
        #[serde(serialize_with = "hex")]
        object: u64,
        op: Op,
    },
    /// A goroutine on the other side of the same object could complete the wait (e.g. a
    /// receiver blocked on the channel a sender waits on).
    CouldWake {
        waker: i64,
        #[serde(serialize_with = "hex")]
        object: u64,
        wakee: i64,
    },
    CreatedBy {
        goid: i64,
        parent: i64,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub pid: u32,
    pub go_version: String,
    pub executable: String,
    /// Unix time of the read, RFC 3339.
    pub taken_at: String,
    pub goroutines: Vec<Goroutine>,
    pub objects: Vec<Object>,
    pub edges: Vec<Edge>,
    /// Goroutines that kept changing under the reader: reported without stack and objects.
    pub skipped_unstable: usize,
}

pub fn hex<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(hex_digits(*value, &mut [0; 18]))
}

pub fn opt_hex<S: serde::Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_str(hex_digits(*v, &mut [0; 18])),
        None => s.serialize_none(),
    }
}

/// `format!("{value:#x}")` without the allocation (a snapshot writes a few million of them).
fn hex_digits(value: u64, buf: &mut [u8; 18]) -> &str {
    let digits = (64 - value.leading_zeros() as usize).div_ceil(4).max(1);
    buf[0] = b'0';
    buf[1] = b'x';
    for i in 0..digits {
        let nibble = (value >> (4 * (digits - 1 - i))) & 0xf;
        buf[2 + i] = b"0123456789abcdef"[nibble as usize];
    }
    std::str::from_utf8(&buf[..2 + digits]).expect("ASCII")
}

/// Derive the wait-for edges from goroutines and objects.
pub fn derive_edges(goroutines: &[Goroutine], objects: &[Object]) -> Vec<Edge> {
    let count = goroutines
        .iter()
        .map(|g| g.blocked_on.len() + usize::from(g.parent_goid.is_some_and(|p| p != 0)))
        .sum::<usize>()
        .saturating_add(
            objects
                .iter()
                .map(|o| o.senders.len().saturating_mul(o.receivers.len()))
                .fold(0usize, |a, n| a.saturating_add(n.saturating_mul(2))),
        );
    // An upper bound (a goroutine on both sides of a channel gets no edge to itself).
    let mut edges = Vec::with_capacity(count.min(1 << 22));
    for g in goroutines {
        for b in &g.blocked_on {
            edges.push(Edge::WaitsOn {
                goid: g.goid,
                object: b.addr,
                op: b.op,
            });
        }
        if let Some(parent) = g.parent_goid
            && parent != 0
        {
            edges.push(Edge::CreatedBy {
                goid: g.goid,
                parent,
            });
        }
    }
    for o in objects {
        // A blocked receiver is exactly what a blocked sender needs, and vice versa.
        for &s in &o.senders {
            for &r in &o.receivers {
                if s != r {
                    edges.push(Edge::CouldWake {
                        waker: r,
                        object: o.addr,
                        wakee: s,
                    });
                    edges.push(Edge::CouldWake {
                        waker: s,
                        object: o.addr,
                        wakee: r,
                    });
                }
            }
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_match_format() {
        for v in [0, 1, 0xf, 0x10, 0x00c0_0001_0020, u64::MAX, 1 << 63] {
            assert_eq!(hex_digits(v, &mut [0; 18]), format!("{v:#x}"));
        }
    }

    #[test]
    fn shared_strings_behave_like_strings() {
        let a = SharedStr::from("main.worker");
        let b = SharedStr::from(String::from("main.worker"));
        assert_eq!(a, b);
        assert!(a == "main.worker" && "main.worker" == a && a == *"main.worker");
        assert_eq!(String::from(a.clone()), "main.worker");
        let (x, y) = (SharedStr::from("main.a"), SharedStr::from("main.b"));
        assert!(x < y && y.cmp(&x).is_gt());
        let set: std::collections::HashSet<SharedStr> = [a.clone()].into();
        assert!(set.contains("main.worker"));
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"main.worker\"");
        assert_eq!(format!("{a} {a:?}"), "main.worker \"main.worker\"");
        // One pointer: frames stay small.
        assert_eq!(
            std::mem::size_of::<SharedStr>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn status_masks_the_gc_scan_bit() {
        assert_eq!(Status::from_raw(0x1004), Status::Waiting);
        assert_eq!(Status::from_raw(2), Status::Running);
        assert_eq!(Status::from_raw(10), Status::Leaked);
        assert_eq!(Status::from_raw(77), Status::Unknown);
    }
}
