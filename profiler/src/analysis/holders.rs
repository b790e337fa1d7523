//! Who holds a lock, read from memory: a goroutine that locked a Mutex or RWMutex with the
//! idiomatic `mu.Lock(); defer mu.Unlock()` carries a pending deferred call that will release
//! it. Go records pending defers where its own panic machinery finds them:
//!
//! * open-coded defers (the common case): per frame, `FUNCDATA_OpenCodedDeferInfo` gives the
//!   offsets below the frame's `varp` of a bitmask byte (which defers are armed) and of the
//!   closure slots; the compiler wraps `defer mu.Unlock()` in a closure whose first captured
//!   word is `&mu` (the receiver is evaluated at the defer statement);
//! * `_defer` records on `g._defer` (defers in loops), whose `fn` is that same closure.
//!
//! What a closure does is decided from its code: the functions inlined into it (the inline
//! tree at each instruction) and the targets of its direct calls must release exactly one kind
//! of lock. A lock released any other way (explicit `Unlock` later in the function) leaves no
//! trace: the holder is then unknown, which costs a deadlock verdict, never invents one.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Serialize;

use crate::gobin::GoBinary;
use crate::gobin::prologue;
use crate::goruntime::goroutines::RawG;
use crate::goruntime::stackscan::StackScanner;
use crate::remote::memory::Memory;

/// `FUNCDATA_OpenCodedDeferInfo` (internal/abi/symtab.go, 1.21 through 1.27).
const FUNCDATA_OPEN_CODED_DEFER_INFO: u32 = 4;
/// A defer wrapper is a handful of instructions; anything longer is not one we classify.
const MAX_WRAPPER_BYTES: u64 = 4096;
/// Go open-codes at most 8 defers per function (one bit each in the defer bits byte).
const MAX_OPEN_DEFERS: usize = 8;

/// How a pending deferred call releases a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// `sync.Mutex.Unlock` (or the internal/sync Mutex it wraps since 1.24).
    Mutex,
    /// `sync.RWMutex.Unlock`: the goroutine holds the write lock.
    RwWrite,
    /// `sync.RWMutex.RUnlock`: the goroutine holds a read lock.
    RwRead,
}

/// A lock a goroutine holds, with the frame whose deferred call will release it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    /// Address of the Mutex or RWMutex.
    pub addr: u64,
    pub release: Release,
    /// The function whose pending defer releases it.
    pub in_function: String,
}

/// What the functions named in a deferred closure's body release, if exactly one kind of lock.
/// The RWMutex names win over the Mutex ones they call internally.
pub fn release_of<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Release> {
    let (mut read, mut write, mut mutex) = (false, false, false);
    for name in names {
        match name {
            "sync.(*RWMutex).RUnlock" | "sync.(*RWMutex).rUnlockSlow" => read = true,
            "sync.(*RWMutex).Unlock" => write = true,
            "sync.(*Mutex).Unlock"
            | "sync.(*Mutex).unlockSlow"
            | "internal/sync.(*Mutex).Unlock"
            | "internal/sync.(*Mutex).unlockSlow" => mutex = true,
            _ => {}
        }
    }
    match (read, write, mutex) {
        (true, false, _) => Some(Release::RwRead),
        (false, true, _) => Some(Release::RwWrite),
        (false, false, true) => Some(Release::Mutex),
        _ => None,
    }
}

/// Where a frame's open-coded defers live, as offsets below its `varp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenDefers {
    pub bits_offset: u64,
    /// (bit, closure slot offset) for each open-coded defer.
    pub slots: Vec<(u8, u64)>,
}

/// Decode `FUNCDATA_OpenCodedDeferInfo`. Go 1.22+: uvarint bits offset, uvarint offset of slot 0
/// (slot i is 8·i above it). Go 1.21: bits offset, defer count n, then the closure offset of
/// defer n-1 down to defer 0.
pub fn parse_open_defers(info: &[u8], slots_contiguous: bool) -> Option<OpenDefers> {
    let mut at = 0;
    let bits_offset = uvarint(info, &mut at)?;
    if slots_contiguous {
        let first = uvarint(info, &mut at)?;
        let slots = (0..MAX_OPEN_DEFERS as u8)
            .filter_map(|i| Some((i, first.checked_sub(8 * u64::from(i))?)))
            .filter(|&(_, offset)| offset > 0)
            .collect();
        return Some(OpenDefers { bits_offset, slots });
    }
    let n = uvarint(info, &mut at)? as usize;
    if n > MAX_OPEN_DEFERS {
        return None;
    }
    let mut slots = Vec::with_capacity(n);
    for i in (0..n).rev() {
        slots.push((i as u8, uvarint(info, &mut at)?));
    }
    Some(OpenDefers { bits_offset, slots })
}

fn uvarint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub struct HolderFinder<'a, 'd> {
    binary: &'a GoBinary<'d>,
    bias: u64,
    stacks: &'a StackScanner<'a, 'd>,
    /// Release kind of each deferred closure function, by link-time entry.
    releases: RefCell<HashMap<u64, Option<(Release, String)>>>,
}

impl<'a, 'd> HolderFinder<'a, 'd> {
    pub fn new(binary: &'a GoBinary<'d>, bias: u64, stacks: &'a StackScanner<'a, 'd>) -> Self {
        HolderFinder {
            binary,
            bias,
            stacks,
            releases: RefCell::new(HashMap::new()),
        }
    }

    /// The locks a parked goroutine holds, as far as its pending defers tell. `defer_head` is
    /// its `g._defer`.
    pub fn held_by(&self, mem: &dyn Memory, g: &RawG, defer_head: u64) -> Vec<Held> {
        let mut out = Vec::new();
        let slots_contiguous = self.binary.version.at_least(1, 22);
        for frame in self.stacks.frames(mem, g) {
            let Some(info) = self
                .binary
                .pclntab
                .funcdata_addr(&frame.func, FUNCDATA_OPEN_CODED_DEFER_INFO)
                .and_then(|a| {
                    self.binary
                        .image
                        .bytes_at(a, 16)
                        .or_else(|| self.binary.image.bytes_at(a, 4))
                })
                .and_then(|b| parse_open_defers(b, slots_contiguous))
            else {
                continue;
            };
            let Some(bits_at) = frame.varp.checked_sub(info.bits_offset) else {
                continue;
            };
            let Ok(bits) = mem.read_vec(bits_at, 1).map(|b| b[0]) else {
                continue;
            };
            for (bit, slot_offset) in info.slots {
                if bits & (1 << bit) == 0 {
                    continue;
                }
                let Some(slot) = frame.varp.checked_sub(slot_offset) else {
                    continue;
                };
                if let Ok(closure) = mem.read_u64(slot)
                    && let Some(held) = self.released_by(mem, closure, &frame.func.name)
                {
                    out.push(held);
                }
            }
        }
        for closure in self.stacks.deferred_closures(mem, defer_head) {
            if let Some(held) = self.released_by(mem, closure, "(deferred in a loop)") {
                out.push(held);
            }
        }
        out
    }

    /// The lock a deferred closure releases: its code says which kind, its first captured word
    /// which one.
    fn released_by(&self, mem: &dyn Memory, closure: u64, in_function: &str) -> Option<Held> {
        if closure == 0 {
            return None;
        }
        let fn_pc = mem.read_u64(closure).ok()?.wrapping_sub(self.bias);
        let f = self.binary.pclntab.func_for_pc(fn_pc)?;
        if f.entry != fn_pc {
            return None;
        }
        let (release, _) = self
            .releases
            .borrow_mut()
            .entry(f.entry)
            .or_insert_with(|| self.classify(&f).map(|r| (r, f.name.clone())))
            .clone()?;
        let addr = mem.read_u64(closure + 8).ok()?;
        (addr != 0).then(|| Held {
            addr,
            release,
            in_function: in_function.to_string(),
        })
    }

    fn classify(&self, f: &crate::gobin::pclntab::FuncInfo) -> Option<Release> {
        let len = f.end.checked_sub(f.entry)?;
        if len > MAX_WRAPPER_BYTES {
            return None;
        }
        let code = self.binary.image.bytes_at(f.entry, len as usize)?;
        let shape = prologue::shape(code, f.entry);
        let pclntab = &self.binary.pclntab;
        let mut names: Vec<String> = Vec::new();
        for &pc in &shape.instructions {
            names.extend(pclntab.frames_in(f, pc).into_iter().map(|l| l.function));
        }
        for &target in &shape.call_targets {
            names.extend(pclntab.func_for_pc(target).map(|t| t.name));
        }
        release_of(names.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_a_deferred_closure_releases() {
        // 1.27 `defer mu.Unlock()`: internal/sync Unlock inlined, its slow path called.
        assert_eq!(
            release_of([
                "main.(*cache).Put.deferwrap1",
                "sync.(*Mutex).Unlock",
                "internal/sync.(*Mutex).Unlock",
                "internal/sync.(*Mutex).unlockSlow",
                "runtime.morestack_noctxt",
            ]),
            Some(Release::Mutex)
        );
        // RUnlock inlined with its slow path; RWMutex.Unlock called (it unlocks rw.w inside).
        assert_eq!(
            release_of(["sync.(*RWMutex).RUnlock", "sync.(*RWMutex).rUnlockSlow"]),
            Some(Release::RwRead)
        );
        assert_eq!(
            release_of(["sync.(*RWMutex).Unlock", "sync.(*Mutex).Unlock"]),
            Some(Release::RwWrite)
        );
        // Lock, not Unlock (the unlock-then-relock idiom), or two kinds at once: unknown.
        assert_eq!(release_of(["sync.(*Mutex).Lock"]), None);
        assert_eq!(
            release_of(["sync.(*RWMutex).Unlock", "sync.(*RWMutex).RUnlock"]),
            None
        );
    }

    #[test]
    fn parses_open_coded_defer_info_of_both_formats() {
        // 1.22+: bits at varp-0x31, slot 0 at varp-0x8.
        let new = parse_open_defers(&[0x31, 0x08], true).unwrap();
        assert_eq!(new.bits_offset, 0x31);
        assert_eq!(new.slots[0], (0, 8));
        // Slots at or past the frame's varp are not produced.
        assert_eq!(new.slots, vec![(0, 8)]);
        // 1.21: bits at 0x41, two defers, defer 1's closure at 0x10, defer 0's at 0x18.
        let old = parse_open_defers(&[0x41, 0x02, 0x10, 0x18], false).unwrap();
        assert_eq!(old.bits_offset, 0x41);
        assert_eq!(old.slots, vec![(1, 0x10), (0, 0x18)]);
        // A multi-byte varint, and truncated input.
        assert_eq!(
            parse_open_defers(&[0x80, 0x01, 0x08], true)
                .unwrap()
                .bits_offset,
            128
        );
        assert_eq!(parse_open_defers(&[0x41, 0x02, 0x10], false), None);
        assert_eq!(parse_open_defers(&[0x41, 0x09], false), None);
    }
}
