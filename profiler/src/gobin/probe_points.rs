//! The Go runtime functions parkscope probes, located in one binary: entry address, file offset
//! (what a uprobe attaches to), the cheap attach point after the stack check, and RET offsets.

use serde::Serialize;

use crate::gobin::elf::ElfImage;
use crate::gobin::pclntab::{FuncInfo, Pclntab};
use crate::gobin::prologue::{self, AttachKind};
use iced_x86::Register;

/// One probe role and the symbol names that implement it across Go releases (first match wins).
pub struct ProbeSpec {
    pub role: &'static str,
    /// The probe group that uses it (see `parkscope trace --probes`).
    pub group: &'static str,
    pub symbols: &'static [&'static str],
}

pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        role: "gopark",
        group: "park",
        symbols: &["runtime.gopark"],
    },
    // goready is inlined from 1.21; ready is what both paths reach.
    ProbeSpec {
        role: "ready",
        group: "park",
        symbols: &["runtime.ready"],
    },
    ProbeSpec {
        role: "goready",
        group: "park",
        symbols: &["runtime.goready"],
    },
    ProbeSpec {
        role: "newproc1",
        group: "lifecycle",
        symbols: &["runtime.newproc1"],
    },
    ProbeSpec {
        role: "goexit1",
        group: "lifecycle",
        symbols: &["runtime.goexit1"],
    },
    ProbeSpec {
        role: "chansend",
        group: "channels",
        symbols: &["runtime.chansend"],
    },
    ProbeSpec {
        role: "chanrecv",
        group: "channels",
        symbols: &["runtime.chanrecv"],
    },
    ProbeSpec {
        role: "selectgo",
        group: "channels",
        symbols: &["runtime.selectgo"],
    },
    ProbeSpec {
        role: "closechan",
        group: "channels",
        symbols: &["runtime.closechan"],
    },
    ProbeSpec {
        role: "makechan",
        group: "channels",
        symbols: &["runtime.makechan"],
    },
    ProbeSpec {
        role: "semacquire1",
        group: "locks",
        symbols: &["runtime.semacquire1"],
    },
    ProbeSpec {
        role: "semrelease1",
        group: "locks",
        symbols: &["runtime.semrelease1"],
    },
    ProbeSpec {
        role: "mutex_lock_slow",
        group: "locks",
        symbols: &["internal/sync.(*Mutex).lockSlow", "sync.(*Mutex).lockSlow"],
    },
    ProbeSpec {
        role: "mutex_unlock_slow",
        group: "locks",
        symbols: &[
            "internal/sync.(*Mutex).unlockSlow",
            "sync.(*Mutex).unlockSlow",
        ],
    },
    ProbeSpec {
        role: "rwmutex_lock",
        group: "locks",
        symbols: &["sync.(*RWMutex).Lock"],
    },
    ProbeSpec {
        role: "rwmutex_unlock",
        group: "locks",
        symbols: &["sync.(*RWMutex).Unlock"],
    },
    ProbeSpec {
        role: "rwmutex_rlock_slow",
        group: "locks",
        symbols: &["sync.runtime_SemacquireRWMutexR"],
    },
    ProbeSpec {
        role: "rwmutex_runlock_slow",
        group: "locks",
        symbols: &["sync.(*RWMutex).rUnlockSlow"],
    },
    ProbeSpec {
        role: "cond_wait",
        group: "locks",
        symbols: &["sync.runtime_notifyListWait"],
    },
    ProbeSpec {
        role: "waitgroup_wait",
        group: "locks",
        symbols: &["sync.(*WaitGroup).Wait"],
    },
];

/// A probe role at a call site rather than a function: inside `caller`, the `call consumer`
/// that follows `call producer`, where `register` holds what the producer returned (see
/// `prologue::handoff_call`). Used where a RET probe would be the alternative: the kernel
/// single-steps a `ret`, but emulates a `call rel32`.
pub struct HandoffSpec {
    pub role: &'static str,
    pub group: &'static str,
    pub caller: &'static [&'static str],
    pub producer: &'static str,
    pub consumer: &'static str,
    pub register: Register,
}

pub const HANDOFFS: &[HandoffSpec] = &[
    // `go f()`: newproc runs newproc1 on the system stack (newproc.func1), then
    // runqput(pp, newg, true). Same rate as newproc1's RETs but for coroutines (newcoro calls
    // newproc1 itself: iter.Pull's goroutines are not seen here).
    HandoffSpec {
        role: "newproc_handoff",
        group: "lifecycle",
        caller: &["runtime.newproc.func1"],
        producer: "runtime.newproc1",
        consumer: "runtime.runqput",
        register: Register::RBX,
    },
];

/// A role with no function in this build: inlined everywhere, renamed, or unused by the program
/// (the linker drops unreachable functions, e.g. the RWMutex paths of a program without RWMutex).
pub const ABSENT_NOTE: &str =
    "not in the function table: inlined at every call site or not linked into this program";

#[derive(Clone, Debug, Serialize)]
pub struct ProbePoint {
    pub role: &'static str,
    pub group: &'static str,
    pub symbol: String,
    /// Link-time address of the function entry.
    pub addr: u64,
    pub size: u64,
    /// File offset of the entry (uprobe offset for an entry probe).
    pub file_offset: u64,
    /// Offset from the entry of the recommended attach point, and what it is.
    pub attach_offset: u64,
    pub attach_kind: AttachKindName,
    /// Offsets from the entry of each RET instruction.
    pub ret_offsets: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachKindName {
    AfterStackCheck,
    PushAtEntry,
    Entry,
    /// A `call rel32` inside the function (a handoff point): emulated like the push.
    EmulatedCall,
}

impl From<AttachKind> for AttachKindName {
    fn from(kind: AttachKind) -> Self {
        match kind {
            AttachKind::AfterStackCheck => AttachKindName::AfterStackCheck,
            AttachKind::PushAtEntry => AttachKindName::PushAtEntry,
            AttachKind::Entry => AttachKindName::Entry,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ProbeLookup {
    Present(ProbePoint),
    Absent {
        role: &'static str,
        group: &'static str,
        symbols: &'static [&'static str],
        note: &'static str,
    },
}

pub fn locate(image: &ElfImage<'_>, pclntab: &Pclntab<'_>, spec: &ProbeSpec) -> ProbeLookup {
    for symbol in spec.symbols {
        if let Some(func) = pclntab.func_by_name(symbol)
            && let Some(point) = describe(image, spec, &func)
        {
            return ProbeLookup::Present(point);
        }
    }
    ProbeLookup::Absent {
        role: spec.role,
        group: spec.group,
        symbols: spec.symbols,
        note: ABSENT_NOTE,
    }
}

pub fn locate_all(image: &ElfImage<'_>, pclntab: &Pclntab<'_>) -> Vec<ProbeLookup> {
    PROBES
        .iter()
        .map(|spec| locate(image, pclntab, spec))
        .chain(
            HANDOFFS
                .iter()
                .map(|spec| locate_handoff(image, pclntab, spec)),
        )
        .collect()
}

/// A handoff call site: `attach_offset` is the call's offset in the caller, kind
/// `EmulatedCall`; no RET offsets.
pub fn locate_handoff(
    image: &ElfImage<'_>,
    pclntab: &Pclntab<'_>,
    spec: &HandoffSpec,
) -> ProbeLookup {
    let found = || -> Option<ProbePoint> {
        let producer = pclntab.func_by_name(spec.producer)?.entry;
        let consumer = pclntab.func_by_name(spec.consumer)?.entry;
        spec.caller.iter().find_map(|symbol| {
            let func = pclntab.func_by_name(symbol)?;
            let size = func.end.checked_sub(func.entry)?;
            let code = image.bytes_at(func.entry, usize::try_from(size).ok()?)?;
            let at = prologue::handoff_call(code, func.entry, producer, consumer, spec.register)?;
            Some(ProbePoint {
                role: spec.role,
                group: spec.group,
                symbol: func.name.clone(),
                addr: func.entry,
                size,
                file_offset: image.file_offset(func.entry)?,
                attach_offset: at,
                attach_kind: AttachKindName::EmulatedCall,
                ret_offsets: Vec::new(),
            })
        })
    };
    match found() {
        Some(point) => ProbeLookup::Present(point),
        None => ProbeLookup::Absent {
            role: spec.role,
            group: spec.group,
            symbols: spec.caller,
            note: HANDOFF_ABSENT_NOTE,
        },
    }
}

pub const HANDOFF_ABSENT_NOTE: &str = "the call site pattern was not found in this build (the RET \
     probes of the producer are used instead)";

fn describe(image: &ElfImage<'_>, spec: &ProbeSpec, func: &FuncInfo) -> Option<ProbePoint> {
    let size = func.end.checked_sub(func.entry)?;
    let code = image.bytes_at(func.entry, usize::try_from(size).ok()?)?;
    let facts = prologue::analyze(code, func.entry);
    Some(ProbePoint {
        role: spec.role,
        group: spec.group,
        symbol: func.name.clone(),
        addr: func.entry,
        size,
        file_offset: image.file_offset(func.entry)?,
        attach_offset: facts.attach_offset,
        attach_kind: facts.attach_kind.into(),
        ret_offsets: facts.ret_offsets,
    })
}
