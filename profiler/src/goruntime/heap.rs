//! The Go heap's own metadata, read from outside: address → heap arena → span → object.
//!
//! linux/amd64 only (`arenaL1Bits` = 0, so `mheap_.arenas[0]` is the one L2 array of
//! `1 << 22` `*heapArena`; arenas are 64 MiB, pages 8 KiB). Every record is validated before it
//! is trusted (span in use, `start ≤ addr < limit`, sizes consistent): the target keeps running,
//! and a torn or stale read must give "not a heap object", never a wrong object.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::InspectError;
use crate::gobin::GoBinary;
use crate::gobin::offsets::RuntimeOffsets;
use crate::goruntime::globals::{decode, function_code, rip_target};
use crate::goruntime::layout::Field;
use crate::remote::memory::Memory;
use iced_x86::{MemorySize, Mnemonic, OpKind};

pub const PAGE_SIZE: u64 = 8 << 10;
pub const ARENA_BYTES: u64 = 64 << 20;
pub const PAGES_PER_ARENA: u64 = ARENA_BYTES / PAGE_SIZE;
/// `arenaL2Bits` on linux/amd64.
pub const ARENA_L2_ENTRIES: u64 = 1 << 22;
/// `-arenaBaseOffset`: addresses are shifted by 2^47 before indexing.
const ARENA_BASE_SHIFT: u64 = 1 << 47;
/// `mSpanInUse`: a span of ordinary heap objects (stacks are `mSpanManual`, 2).
pub const SPAN_IN_USE: u8 = 1;

/// Offsets of the heap metadata fields, resolved once per target.
#[derive(Clone, Debug)]
pub struct HeapLayout {
    pub mheap_arenas: u64,
    pub heap_arena_spans: u64,
    pub span_size: usize,
    pub start_addr: Field,
    pub npages: Field,
    pub nelems: Field,
    pub spanclass: Field,
    pub state: Field,
    pub elemsize: Field,
    pub limit: Field,
}

impl HeapLayout {
    pub fn resolve(offsets: &RuntimeOffsets) -> Result<HeapLayout, InspectError> {
        let field = |key: &str| -> Result<Field, InspectError> {
            offsets
                .get(key)
                .map(|f| Field {
                    offset: f.value as usize,
                    size: f.size as usize,
                })
                .ok_or_else(|| {
                    InspectError::MissingSymbol(format!(
                        "offset of {key} (heap metadata; not in DWARF nor in the table for Go {})",
                        offsets.release
                    ))
                })
        };
        Ok(HeapLayout {
            mheap_arenas: field("mheap.arenas")?.offset as u64,
            heap_arena_spans: field("heapArena.spans")?.offset as u64,
            span_size: field("mspan.$size")?.size,
            start_addr: field("mspan.startAddr")?,
            npages: field("mspan.npages")?,
            nelems: field("mspan.nelems")?,
            spanclass: field("mspan.spanclass")?,
            state: field("mspan.state")?,
            elemsize: field("mspan.elemsize")?,
            limit: field("mspan.limit")?,
        })
    }
}

/// Link-time address of `runtime.mheap_`: its symbol, or (stripped binaries) the RIP-relative
/// load of `mheap_.arenas[0]` in the runtime's address-to-span code, minus the field's offset.
pub fn find_mheap(binary: &GoBinary<'_>, layout: &HeapLayout) -> Option<u64> {
    if let Some(sym) = binary.symbol("runtime.mheap_") {
        return Some(sym.addr);
    }
    let md = binary.pclntab.moduledata()?;
    let in_bss =
        |a: u64| (md.bss..md.ebss).contains(&a) || (md.noptrbss..md.enoptrbss).contains(&a);
    let mut votes: HashMap<u64, usize> = HashMap::new();
    // Each of these inlines spanOf/spanOfHeap: `mov mheap_+off(arenas)(%rip), %reg`.
    for name in ["runtime.findObject", "runtime.spanOfHeap", "runtime.spanOf"] {
        let Some((code, entry)) = function_code(binary, name) else {
            continue;
        };
        for i in decode(code, entry) {
            // An 8-byte load into a register, not the `cmpl $0, runtime.debug+N(%rip)` checks
            // around it.
            let loads_pointer = i.mnemonic() == Mnemonic::Mov
                && i.op0_kind() == OpKind::Register
                && i.memory_size() == MemorySize::UInt64;
            if loads_pointer
                && let Some(target) = rip_target(&i)
                && let Some(base) = target.checked_sub(layout.mheap_arenas)
                && in_bss(base)
            {
                *votes.entry(base).or_default() += 1;
            }
        }
    }
    votes
        .into_iter()
        .max_by_key(|&(addr, n)| (n, addr))
        .map(|(a, _)| a)
}

/// One span, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Address of the mspan record itself.
    pub addr: u64,
    pub start: u64,
    pub npages: u64,
    pub nelems: u64,
    pub elemsize: u64,
    pub limit: u64,
    /// Pointer-free size class: nothing inside needs scanning.
    pub noscan: bool,
}

impl Span {
    /// Base of the object slot containing `addr` (which must lie in `[start, limit)`).
    pub fn object_base(&self, addr: u64) -> u64 {
        self.start + (addr - self.start) / self.elemsize * self.elemsize
    }

    /// End of the object at `base`, bounded by the span's limit (never the bitmaps after it).
    pub fn object_end(&self, base: u64) -> u64 {
        (base + self.elemsize).min(self.limit)
    }
}

/// A heap object: its slot and the span it lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapObject {
    pub base: u64,
    pub span: Span,
}

/// A hasher for addresses: one multiply and a fold. The marker does millions of set operations
/// per scan; SipHash's DoS resistance buys nothing for addresses read from a process we scan.
#[derive(Clone, Copy, Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Aligned addresses have zero low bits: the fold brings the product's high bits down,
        // where the table takes its bucket index.
        let x = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type AddrMap<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;
pub type AddrSet = HashSet<u64, BuildHasherDefault<AddrHasher>>;

/// Address lookups through `mheap_.arenas`, with everything read cached for one scan.
pub struct Heap<'a> {
    mem: &'a dyn Memory,
    layout: HeapLayout,
    /// Run-time address of the L2 array (`mheap_.arenas[0]`).
    l2: u64,
    /// Arena index → the arena's span table (one `*mspan` per page), None when not a heap arena.
    arenas: AddrMap<Option<Vec<u64>>>,
    spans: AddrMap<Option<Span>>,
    /// The span of the last lookup: consecutive addresses mostly fall in the same span.
    last: Option<Span>,
    pub bytes_read: u64,
    pub reads: u64,
}

impl<'a> Heap<'a> {
    /// `mheap` is the run-time address of `runtime.mheap_`.
    pub fn new(mem: &'a dyn Memory, layout: HeapLayout, mheap: u64) -> Option<Heap<'a>> {
        let l2 = mem.read_u64(mheap + layout.mheap_arenas).ok()?;
        if l2 == 0 || l2 % 8 != 0 {
            return None;
        }
        Some(Heap {
            mem,
            layout,
            l2,
            arenas: AddrMap::default(),
            spans: AddrMap::default(),
            last: None,
            bytes_read: 8,
            reads: 1,
        })
    }

    pub fn arena_index(addr: u64) -> u64 {
        addr.wrapping_add(ARENA_BASE_SHIFT) >> 26
    }

    fn span_table(&mut self, idx: u64) -> Option<&Vec<u64>> {
        if !self.arenas.contains_key(&idx) {
            let table = self.read_span_table(idx);
            self.arenas.insert(idx, table);
        }
        self.arenas.get(&idx).and_then(Option::as_ref)
    }

    fn read_span_table(&mut self, idx: u64) -> Option<Vec<u64>> {
        if idx >= ARENA_L2_ENTRIES {
            return None;
        }
        self.reads += 1;
        self.bytes_read += 8;
        let arena = self.mem.read_u64(self.l2 + idx * 8).ok()?;
        if arena == 0 {
            return None;
        }
        let bytes = self
            .mem
            .read_vec(
                arena + self.layout.heap_arena_spans,
                (PAGES_PER_ARENA * 8) as usize,
            )
            .ok()?;
        self.reads += 1;
        self.bytes_read += bytes.len() as u64;
        Some(
            bytes
                .as_chunks::<8>()
                .0
                .iter()
                .map(|c| u64::from_le_bytes(*c))
                .collect(),
        )
    }

    fn span_record(&mut self, span_addr: u64) -> Option<Span> {
        if let Some(s) = self.spans.get(&span_addr) {
            return *s;
        }
        let span = self
            .mem
            .read_vec(span_addr, self.layout.span_size)
            .ok()
            .and_then(|record| decode_span(&self.layout, span_addr, &record));
        self.reads += 1;
        self.bytes_read += self.layout.span_size as u64;
        self.spans.insert(span_addr, span);
        span
    }

    /// The in-use span containing `addr`; None when `addr` is not in an ordinary heap span.
    pub fn span_of(&mut self, addr: u64) -> Option<Span> {
        if let Some(last) = self.last
            && last.start <= addr
            && addr < last.limit
        {
            return Some(last);
        }
        let idx = Self::arena_index(addr);
        let page = (addr / PAGE_SIZE) % PAGES_PER_ARENA;
        let span_addr = *self.span_table(idx)?.get(page as usize)?;
        if span_addr == 0 {
            return None;
        }
        let span = self.span_record(span_addr)?;
        let hit = (span.start <= addr && addr < span.limit).then_some(span);
        if hit.is_some() {
            self.last = hit;
        }
        hit
    }

    /// The heap object whose slot contains `addr`.
    pub fn object_of(&mut self, addr: u64) -> Option<HeapObject> {
        let span = self.span_of(addr)?;
        let base = span.object_base(addr);
        // Slots past nelems are the span's tail (bitmaps, inline mark bits), not objects.
        ((base - span.start) / span.elemsize < span.nelems).then_some(HeapObject { base, span })
    }
}

/// A span record, accepted only when it is in use and self-consistent.
pub fn decode_span(layout: &HeapLayout, addr: u64, record: &[u8]) -> Option<Span> {
    let state = layout.state.read(record)? as u8;
    if state != SPAN_IN_USE {
        return None;
    }
    let start = layout.start_addr.read(record)?;
    let npages = layout.npages.read(record)?;
    let nelems = layout.nelems.read(record)?;
    let elemsize = layout.elemsize.read(record)?;
    let limit = layout.limit.read(record)?;
    let spanclass = layout.spanclass.read(record)? as u8;
    let bytes = npages.checked_mul(PAGE_SIZE)?;
    let ok = start != 0
        && start % PAGE_SIZE == 0
        && npages > 0
        && npages <= PAGES_PER_ARENA * 1024
        && elemsize > 0
        && elemsize <= bytes
        && nelems > 0
        && limit > start
        && limit <= start.checked_add(bytes)?
        && nelems.checked_mul(elemsize)? <= bytes;
    ok.then_some(Span {
        addr,
        start,
        npages,
        nelems,
        elemsize,
        limit,
        noscan: spanclass & 1 == 1,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::remote::memory::RecordedMemory;

    fn f(offset: usize, size: usize) -> Field {
        Field { offset, size }
    }

    /// The Go 1.22–1.27 mspan layout (also used by the reachability tests).
    pub(crate) fn layout() -> HeapLayout {
        HeapLayout {
            mheap_arenas: 0x100,
            heap_arena_spans: 0,
            span_size: 160,
            start_addr: f(24, 8),
            npages: f(32, 8),
            nelems: f(50, 2),
            spanclass: f(98, 1),
            state: f(99, 1),
            elemsize: f(104, 8),
            limit: f(112, 8),
        }
    }

    fn span_record(start: u64, npages: u64, nelems: u16, elemsize: u64, class: u8) -> Vec<u8> {
        let mut r = vec![0u8; 160];
        r[24..32].copy_from_slice(&start.to_le_bytes());
        r[32..40].copy_from_slice(&npages.to_le_bytes());
        r[50..52].copy_from_slice(&nelems.to_le_bytes());
        r[98] = class;
        r[99] = SPAN_IN_USE;
        r[104..112].copy_from_slice(&elemsize.to_le_bytes());
        r[112..120].copy_from_slice(&(start + u64::from(nelems) * elemsize).to_le_bytes());
        r
    }

    #[test]
    fn maps_addresses_to_objects_through_arenas_and_spans() {
        let heap_base: u64 = 0xc000000000;
        let idx = Heap::arena_index(heap_base);
        let (mheap, l2, arena, span) = (0x10000u64, 0x20000u64, 0x40000000u64, 0x30000u64);
        let mut mem = RecordedMemory::new();
        mem.write_u64(mheap + 0x100, l2);
        mem.write_u64(l2 + idx * 8, arena);
        // Pages 2..4 of the arena belong to one 2-page span of 48-byte scan objects.
        let mut table = vec![0u8; (PAGES_PER_ARENA * 8) as usize];
        for page in 2..4usize {
            table[page * 8..page * 8 + 8].copy_from_slice(&span.to_le_bytes());
        }
        mem.add(arena, table);
        let start = heap_base + 2 * PAGE_SIZE;
        mem.add(span, span_record(start, 2, 341, 48, 5 << 1));
        let mut heap = Heap::new(&mem, layout(), mheap).unwrap();
        let o = heap.object_of(start + 100).unwrap();
        assert_eq!(o.base, start + 96);
        assert_eq!(o.span.object_end(o.base), start + 144);
        assert!(!o.span.noscan);
        // The tail past nelems*elemsize (bitmaps) is not an object.
        assert!(heap.object_of(start + 341 * 48 + 8).is_none());
        // Pages with no span, and addresses outside any arena.
        assert!(heap.object_of(heap_base + 8).is_none());
        assert!(heap.object_of(0x7fff_0000_0000).is_none());
    }

    #[test]
    fn rejects_spans_not_in_use_or_inconsistent() {
        let l = layout();
        let good = span_record(0xc000002000, 1, 512, 16, 2 << 1 | 1);
        let s = decode_span(&l, 1, &good).unwrap();
        assert!(s.noscan);
        let mut manual = good.clone();
        manual[99] = 2; // mSpanManual: goroutine stacks
        assert!(decode_span(&l, 1, &manual).is_none());
        let mut torn = good.clone();
        torn[104..112].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_span(&l, 1, &torn).is_none());
        let mut too_many = good;
        too_many[50..52].copy_from_slice(&1000u16.to_le_bytes());
        assert!(decode_span(&l, 1, &too_many).is_none());
    }

    /// Stripped binaries find `mheap_` from code at the same place the symbol names.
    #[test]
    fn stripped_binaries_find_mheap_where_the_symbol_is() {
        use crate::testbins;
        for (bin, twin) in testbins::stripped_twins() {
            let (sb, pb) = (
                std::fs::read(&bin.path).unwrap(),
                std::fs::read(&twin.path).unwrap(),
            );
            let (stripped, plain) = (GoBinary::parse(&sb).unwrap(), GoBinary::parse(&pb).unwrap());
            let ctx = format!("{} {}", bin.go, bin.variant);
            let from_symbol = find_mheap(&plain, &HeapLayout::resolve(&plain.offsets).unwrap());
            let from_code = find_mheap(&stripped, &HeapLayout::resolve(&stripped.offsets).unwrap());
            // -s -w shifts the data sections: compare offsets from .bss / .noptrbss.
            let rel = |b: &GoBinary<'_>, a: Option<u64>| {
                let md = b.pclntab.moduledata().unwrap();
                a.map(|a| {
                    if a >= md.noptrbss {
                        (1, a - md.noptrbss)
                    } else {
                        (0, a - md.bss)
                    }
                })
            };
            assert!(from_symbol.is_some(), "{ctx}");
            assert_eq!(rel(&stripped, from_code), rel(&plain, from_symbol), "{ctx}");
        }
    }
}
