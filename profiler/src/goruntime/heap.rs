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

/// One span, validated: only what address lookups need, 32 bytes, so that the span table the
/// marker hits at random stays small in cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub elemsize: u64,
    pub limit: u64,
    /// `mspan.nelems` is a uint16.
    pub nelems: u32,
    /// Pointer-free size class: nothing inside needs scanning.
    pub noscan: bool,
}

impl Span {
    /// End of the object at `base`, bounded by the span's limit (never the bitmaps after it).
    pub fn object_end(&self, base: u64) -> u64 {
        (base + self.elemsize).min(self.limit)
    }
}

/// Index of a span in the order [`Heap`] first resolved it: dense, so per-span state (the
/// marker's mark bits) lives in plain vectors rather than hash maps keyed by address.
pub type SpanId = u32;

/// A heap object: its slot, its index in the span, and the span it lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapObject {
    pub base: u64,
    pub span: Span,
    pub span_id: SpanId,
    /// Slot number within the span (`(base - start) / elemsize`).
    pub index: u64,
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

/// A page's entry in [`ArenaPages::slots`]: not looked up yet, no in-use span, or a span id + 2.
const PAGE_UNRESOLVED: u32 = 0;
const PAGE_NO_SPAN: u32 = 1;
const PAGE_FIRST_SPAN: u32 = 2;

/// One heap arena's page → span table as read from the target, and which span each page
/// resolved to.
struct ArenaPages {
    /// `heapArena.spans`: the `*mspan` of every page.
    span_ptrs: Box<[u64]>,
    /// `PAGE_*` or span id + `PAGE_FIRST_SPAN`, per page.
    slots: Box<[u32]>,
}

/// Address lookups through `mheap_.arenas`, with everything read cached for one scan.
///
/// The marker asks for the span of every word that might be a pointer, millions of times per
/// scan, so the hot path is array indexing: arena (hash of a handful of entries, or the last
/// one) → page slot → span by dense id.
pub struct Heap<'a> {
    mem: &'a dyn Memory,
    layout: HeapLayout,
    /// Run-time address of the L2 array (`mheap_.arenas[0]`).
    l2: u64,
    /// Arena index → position in `arena_pages`, None when not a heap arena.
    arena_index: AddrMap<Option<u32>>,
    arena_pages: Vec<ArenaPages>,
    /// The arena of the last lookup (index, position).
    last_arena: Option<(u64, u32)>,
    /// The arena index of the last lookup that found no heap arena: most words that are not
    /// pointers (counters, lengths, hashes) share a few arena indices.
    last_miss_arena: Option<u64>,
    /// Spans by id, and `*mspan` → id (None: not an in-use, consistent span).
    spans: Vec<Span>,
    span_ids: AddrMap<Option<SpanId>>,
    /// The span of the last lookup: consecutive addresses mostly fall in the same span.
    last: Option<(SpanId, Span)>,
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
            arena_index: AddrMap::default(),
            arena_pages: Vec::new(),
            last_arena: None,
            last_miss_arena: None,
            spans: Vec::new(),
            span_ids: AddrMap::default(),
            last: None,
            bytes_read: 8,
            reads: 1,
        })
    }

    pub fn arena_index(addr: u64) -> u64 {
        addr.wrapping_add(ARENA_BASE_SHIFT) >> 26
    }

    /// How many spans have ids so far (every id is below this).
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Position in `arena_pages` of arena `idx`, reading its span table the first time.
    fn arena(&mut self, idx: u64) -> Option<u32> {
        if let Some((last, pos)) = self.last_arena
            && last == idx
        {
            return Some(pos);
        }
        if self.last_miss_arena == Some(idx) {
            return None;
        }
        let pos = match self.arena_index.get(&idx) {
            Some(pos) => *pos,
            None => {
                let pos = self.read_span_table(idx).map(|span_ptrs| {
                    let slots = vec![PAGE_UNRESOLVED; span_ptrs.len()].into_boxed_slice();
                    self.arena_pages.push(ArenaPages { span_ptrs, slots });
                    (self.arena_pages.len() - 1) as u32
                });
                self.arena_index.insert(idx, pos);
                pos
            }
        };
        let Some(pos) = pos else {
            self.last_miss_arena = Some(idx);
            return None;
        };
        self.last_arena = Some((idx, pos));
        Some(pos)
    }

    fn read_span_table(&mut self, idx: u64) -> Option<Box<[u64]>> {
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

    /// The id of the span record at `span_addr`, reading it the first time.
    fn span_id(&mut self, span_addr: u64) -> Option<SpanId> {
        if let Some(id) = self.span_ids.get(&span_addr) {
            return *id;
        }
        let span = self
            .mem
            .read_vec(span_addr, self.layout.span_size)
            .ok()
            .and_then(|record| decode_span(&self.layout, &record));
        self.reads += 1;
        self.bytes_read += self.layout.span_size as u64;
        let id = span.map(|span| {
            self.spans.push(span);
            (self.spans.len() - 1) as SpanId
        });
        self.span_ids.insert(span_addr, id);
        id
    }

    /// The in-use span containing `addr`, with its id; None when `addr` is not in an ordinary
    /// heap span.
    pub fn span_of(&mut self, addr: u64) -> Option<(SpanId, Span)> {
        if let Some((id, last)) = self.last
            && last.start <= addr
            && addr < last.limit
        {
            return Some((id, last));
        }
        let pos = self.arena(Self::arena_index(addr))? as usize;
        let page = ((addr / PAGE_SIZE) % PAGES_PER_ARENA) as usize;
        let slot = match self.arena_pages[pos].slots[page] {
            PAGE_UNRESOLVED => {
                let span_addr = self.arena_pages[pos].span_ptrs[page];
                let slot = match span_addr {
                    0 => PAGE_NO_SPAN,
                    _ => self
                        .span_id(span_addr)
                        .map_or(PAGE_NO_SPAN, |id| id + PAGE_FIRST_SPAN),
                };
                self.arena_pages[pos].slots[page] = slot;
                slot
            }
            slot => slot,
        };
        let id = slot.checked_sub(PAGE_FIRST_SPAN)?;
        let span = self.spans[id as usize];
        // A torn page table can name a span that does not cover this page.
        let hit = (span.start <= addr && addr < span.limit).then_some((id, span));
        if hit.is_some() {
            self.last = hit;
        }
        hit
    }

    /// Position of arena `idx` if it is already known to be a heap arena (no reads).
    fn known_arena(&self, idx: u64) -> Option<usize> {
        match self.last_arena {
            Some((last, pos)) if last == idx => Some(pos as usize),
            _ if self.last_miss_arena == Some(idx) => None,
            _ => self
                .arena_index
                .get(&idx)
                .copied()
                .flatten()
                .map(|p| p as usize),
        }
    }

    /// Ask the CPU to start loading the page slot of `addr` (no reads, no effect otherwise):
    /// with [`Heap::prefetch_span`] and the marker's own, it lets a batch of lookups wait for
    /// memory together instead of one cache miss after another.
    pub fn prefetch_slot(&self, addr: u64) {
        if let Some(pos) = self.known_arena(Self::arena_index(addr)) {
            let page = ((addr / PAGE_SIZE) % PAGES_PER_ARENA) as usize;
            prefetch(&self.arena_pages[pos].slots[page]);
        }
    }

    /// Ask the CPU to start loading the span record of `addr`, if its page is resolved.
    pub fn prefetch_span(&self, addr: u64) {
        if let Some(id) = self.resolved_span_id(addr) {
            prefetch(&self.spans[id as usize]);
        }
    }

    fn resolved_span_id(&self, addr: u64) -> Option<SpanId> {
        let pos = self.known_arena(Self::arena_index(addr))?;
        let page = ((addr / PAGE_SIZE) % PAGES_PER_ARENA) as usize;
        self.arena_pages[pos].slots[page].checked_sub(PAGE_FIRST_SPAN)
    }

    /// [`Heap::object_of`] from what is already resolved: no reads, no caches updated (None
    /// also when the answer is not known yet).
    pub fn peek_object(&self, addr: u64) -> Option<HeapObject> {
        let span_id = self.resolved_span_id(addr)?;
        let span = self.spans[span_id as usize];
        if !(span.start <= addr && addr < span.limit) {
            return None;
        }
        object_in(span_id, span, addr)
    }

    /// The heap object whose slot contains `addr`.
    pub fn object_of(&mut self, addr: u64) -> Option<HeapObject> {
        let (span_id, span) = self.span_of(addr)?;
        object_in(span_id, span, addr)
    }
}

/// The object slot of `span` containing `addr` (which must lie in `[start, limit)`).
fn object_in(span_id: SpanId, span: Span, addr: u64) -> Option<HeapObject> {
    let index = (addr - span.start) / span.elemsize;
    // Slots past nelems are the span's tail (bitmaps, inline mark bits), not objects.
    (index < u64::from(span.nelems)).then_some(HeapObject {
        base: span.start + index * span.elemsize,
        span,
        span_id,
        index,
    })
}

/// A prefetch hint for the cache line holding `value` (a no-op off x86-64).
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no effect beyond the cache; the pointer comes
    // from a live reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A span record, accepted only when it is in use and self-consistent.
pub fn decode_span(layout: &HeapLayout, record: &[u8]) -> Option<Span> {
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
        start,
        nelems: u32::try_from(nelems).ok()?,
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
        let s = decode_span(&l, &good).unwrap();
        assert!(s.noscan);
        let mut manual = good.clone();
        manual[99] = 2; // mSpanManual: goroutine stacks
        assert!(decode_span(&l, &manual).is_none());
        let mut torn = good.clone();
        torn[104..112].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_span(&l, &torn).is_none());
        let mut too_many = good;
        too_many[50..52].copy_from_slice(&1000u16.to_le_bytes());
        assert!(decode_span(&l, &too_many).is_none());
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
