//! Finalizer and cleanup records: the span specials whose closure the runtime will call.

use crate::gobin::offsets::RuntimeOffsets;
use crate::goruntime::goroutines;
use crate::goruntime::layout::Field;
use crate::remote::memory::Memory;

/// Bound on one span's special list (a torn read could make it cyclic).
const MAX_SPECIALS_PER_SPAN: usize = 100_000;

/// A finalizer or cleanup: for the GC, the closure and what the object points to are live (the
/// object itself is not, or it could never be finalized).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finalizer {
    /// The funcval the runtime will call.
    pub closure: u64,
    /// An address inside the object the finalizer is attached to.
    pub object: u64,
}

/// Offsets to walk `mheap_.allspans` and each span's specials.
#[derive(Clone, Debug)]
pub struct SpecialsLayout {
    mheap_allspans: u64,
    span_specials: u64,
    span_start: u64,
    next: u64,
    offset: Field,
    finalizer_fn: u64,
}

impl SpecialsLayout {
    pub fn resolve(offsets: &RuntimeOffsets) -> Option<Self> {
        let at = |k: &str| offsets.get(k).map(|f| f.value);
        let offset = offsets.get("special.offset")?;
        Some(SpecialsLayout {
            mheap_allspans: at("mheap.allspans")?,
            span_specials: at("mspan.specials")?,
            span_start: at("mspan.startAddr")?,
            next: at("special.next")?,
            offset: Field {
                offset: offset.value as usize,
                size: offset.size as usize,
            },
            finalizer_fn: at("specialfinalizer.fn")?,
        })
    }

    /// Every finalizer and cleanup of the heap whose `mheap_` is at `mheap` (run time). A
    /// special whose third word points to a closure (a funcval: its first word is in `text`,
    /// the executable's code) is one of those; the other kinds (profile, weak handle, pin
    /// counter, reachable) carry no code pointer there.
    pub fn finalizers(
        &self,
        mem: &dyn Memory,
        mheap: u64,
        text: &std::ops::Range<u64>,
    ) -> Vec<Finalizer> {
        let Ok(spans) = goroutines::read_pointer_slice(mem, mheap + self.mheap_allspans) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for span in spans {
            let Ok(mut special) = mem.read_u64(span + self.span_specials) else {
                continue;
            };
            let Ok(start) = mem.read_u64(span + self.span_start) else {
                continue;
            };
            for _ in 0..MAX_SPECIALS_PER_SPAN {
                if special == 0 {
                    break;
                }
                let Ok(fn_value) = mem.read_u64(special + self.finalizer_fn) else {
                    break;
                };
                let code = (fn_value != 0)
                    .then(|| mem.read_u64(fn_value).ok())
                    .flatten();
                if code.is_some_and(|pc| text.contains(&pc))
                    && let Ok(offset) =
                        mem.read_vec(special + self.offset.offset as u64, self.offset.size)
                {
                    let mut word = [0u8; 8];
                    word[..offset.len().min(8)].copy_from_slice(&offset[..offset.len().min(8)]);
                    found.push(Finalizer {
                        closure: fn_value,
                        object: start + u64::from_le_bytes(word),
                    });
                }
                match mem.read_u64(special + self.next) {
                    Ok(next) if next != special => special = next,
                    _ => break,
                }
            }
        }
        found
    }
}
