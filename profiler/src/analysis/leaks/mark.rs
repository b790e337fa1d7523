//! Conservative marking of the target's heap from outside: the reachability half of the leak
//! proof (see `analysis::leaks` for the rule).
//!
//! Every aligned word of a root range that points into an in-use heap span marks the object whose
//! slot contains it; marked objects in scan (not pointer-free) spans are read and scanned the same
//! way, until nothing new is marked. Small-object spans are scanned a span at a time, as Go's own
//! "green tea" collector does: a span with newly marked objects waits in a queue while more of
//! its objects get marked, then is read in one piece and every marked, unscanned object in it is
//! scanned. Each remote range costs the kernel a VMA lookup and a page pin, which made reading
//! objects one by one the larger half of a scan.
//!
//! Objects in the `skip` set (g records and sudogs: the
//! runtime's back-links from goroutines to what they wait on) are marked but never scanned.
//!
//! Over-approximating reachability (a stale word that happens to look like a pointer) can only
//! hide a leak, never invent one.

use std::collections::VecDeque;

use crate::goruntime::heap::{AddrMap, AddrSet, Heap, HeapObject, Span, SpanId, prefetch};
use crate::remote::memory::{Memory, give_back, read_pieces};

/// Large objects read per `read_many` batch.
const BATCH_OBJECTS: usize = 2048;
/// Spans read per `read_many` batch, and the largest span read whole (every small size class's
/// span is smaller; larger spans hold one large object, read in chunks).
const BATCH_SPANS: usize = 512;
const WHOLE_SPAN_MAX: u64 = 128 << 10;
/// Words whose lookups are prefetched together: enough misses in flight to hide memory
/// latency, few enough that the first lines are still in L1 when they are used.
const PREFETCH_GROUP: usize = 32;
/// Large objects and root ranges are read in pieces of at most this size.
const CHUNK: u64 = 1 << 20;
/// Globals are read in one piece up to this size (larger: in chunks, without the g-record filter).
const MAX_GLOBALS: u64 = 256 << 20;
/// Lowest and highest plausible user-space heap addresses.
const MIN_ADDR: u64 = 0x10000;
const MAX_ADDR: u64 = 1 << 47;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MarkStats {
    /// Heap objects found reachable.
    pub objects_marked: u64,
    /// Bytes of heap objects, roots and stacks read and scanned.
    pub bytes_scanned: u64,
    /// Ranges that could not be read (unmapped, freed under us): counted, treated as empty.
    pub unreadable: u64,
}

pub struct Marker<'h, 'm> {
    mem: &'m dyn Memory,
    pub heap: &'h mut Heap<'m>,
    skip: AddrSet,
    marks: MarkBits,
    /// Marked objects of large-object spans, to scan.
    queue: Vec<HeapObject>,
    /// Small-object spans with marked, unscanned objects, first come first read, and the spans
    /// they hold (by id) with the span itself.
    grey_spans: VecDeque<(SpanId, Span)>,
    queued: Vec<bool>,
    /// Scratch for the possible pointers of a span's pending objects.
    words: Vec<u64>,
    pub stats: MarkStats,
    /// Why each object was marked: the object (or root, as a label) whose word pointed to it.
    /// Recorded only when asked for ([`Marker::record_origins`]): it costs a map insert per
    /// object.
    parent: Option<AddrMap<Origin>>,
    /// The root being scanned, for `parent`.
    pub root: &'static str,
    pub root_id: i64,
    current: Option<u64>,
    word_addr: u64,
}

/// What marked an object: another object, or a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Object(u64),
    /// Root kind, goid (0 for globals), address of the word that pointed here.
    Root(&'static str, i64, u64),
}

impl<'h, 'm> Marker<'h, 'm> {
    pub fn new(mem: &'m dyn Memory, heap: &'h mut Heap<'m>, skip: AddrSet) -> Self {
        Marker {
            mem,
            heap,
            skip,
            marks: MarkBits::default(),
            queue: Vec::new(),
            grey_spans: VecDeque::new(),
            queued: Vec::new(),
            words: Vec::new(),
            stats: MarkStats::default(),
            parent: None,
            root: "globals",
            root_id: 0,
            current: None,
            word_addr: 0,
        }
    }

    /// Remember why each object gets marked, for [`Marker::path_to`].
    pub fn record_origins(&mut self) {
        self.parent.get_or_insert_default();
    }

    /// Treat `word` as a possible pointer.
    pub fn mark_word(&mut self, word: u64) {
        if !(MIN_ADDR..MAX_ADDR).contains(&word) {
            return;
        }
        let Some(object) = self.heap.object_of(word) else {
            return;
        };
        if is_tiny_block(&object.span) && word - object.base < TINY_FRONT {
            self.marks.set_front(&object);
        }
        if !self.marks.insert(&object) {
            return;
        }
        self.stats.objects_marked += 1;
        if let Some(parent) = &mut self.parent {
            let origin = match self.current {
                Some(object) => Origin::Object(object),
                None => Origin::Root(self.root, self.root_id, self.word_addr),
            };
            parent.insert(object.base, origin);
        }
        if object.span.noscan {
            return;
        }
        if read_whole(&object.span) {
            let id = object.span_id as usize;
            if self.queued.len() <= id {
                self.queued.resize(id + 1, false);
            }
            if !self.queued[id] {
                self.queued[id] = true;
                self.grey_spans.push_back((object.span_id, object.span));
            }
        } else if !self.skip.contains(&object.base) {
            self.queue.push(object);
        }
    }

    fn scan_bytes(&mut self, bytes: &[u8], base: u64) {
        self.stats.bytes_scanned += bytes.len() as u64;
        for (i, word) in bytes.as_chunks::<8>().0.iter().enumerate() {
            self.word_addr = base + 8 * i as u64;
            self.mark_word(u64::from_le_bytes(*word));
        }
    }

    /// Scan `[lo, hi)` (rounded in to 8-byte alignment) as a root.
    pub fn scan_range(&mut self, lo: u64, hi: u64) {
        let mut at = lo.next_multiple_of(8);
        let hi = hi & !7;
        while at < hi {
            let len = (hi - at).min(CHUNK);
            match self.mem.read_vec(at, len as usize) {
                Ok(bytes) => self.scan_bytes(&bytes, at),
                Err(_) => self.stats.unreadable += 1,
            }
            at += len;
        }
    }

    /// Scan what the heap object containing `addr` points to, without marking the object
    /// itself (the GC's rule for an object with a finalizer: its referents stay alive for the
    /// finalizer, the object does not).
    pub fn scan_object_contents(&mut self, addr: u64) {
        let Some(object) = self.heap.object_of(addr) else {
            return;
        };
        if !object.span.noscan {
            self.scan_range(object.base, object.span.object_end(object.base));
        }
    }

    /// Scan `.data`/`.bss`. They hold `runtime.g` records (`g0`, `gcrash`) whose `stack.hi`
    /// points one past their stack, at the first byte of whatever heap object follows it: that
    /// word is not a reference, and marking that neighbour can keep a leaked channel alive.
    /// The `blank` ranges (runtime records rooted field by field instead, like `m0`) are left
    /// out.
    pub fn scan_globals(&mut self, lo: u64, hi: u64, blank: &[std::ops::Range<u64>]) {
        let lo = lo.next_multiple_of(8);
        let hi = hi & !7;
        let Some(len) = hi.checked_sub(lo).filter(|&l| l <= MAX_GLOBALS) else {
            return self.scan_range(lo, hi);
        };
        let Ok(mut bytes) = self.mem.read_vec(lo, len as usize) else {
            return self.scan_range(lo, hi);
        };
        let words: Vec<u64> = bytes
            .as_chunks::<8>()
            .0
            .iter()
            .map(|w| u64::from_le_bytes(*w))
            .collect();
        for i in stack_end_words(&words) {
            bytes[i * 8..i * 8 + 8].fill(0);
        }
        for range in blank {
            let from = range.start.clamp(lo, hi) - lo;
            let to = range.end.clamp(lo, hi) - lo;
            bytes[from as usize..to as usize].fill(0);
        }
        self.scan_bytes(&bytes, lo);
    }

    /// Scan everything reachable from what was marked so far.
    pub fn drain(&mut self) {
        while !self.grey_spans.is_empty() || !self.queue.is_empty() {
            self.drain_spans();
            self.drain_large_objects();
        }
    }

    /// Read a batch of grey spans whole and scan their marked, unscanned objects.
    fn drain_spans(&mut self) {
        let mut batch: Vec<(SpanId, Span)> = Vec::with_capacity(BATCH_SPANS);
        while batch.len() < BATCH_SPANS
            && let Some((id, span)) = self.grey_spans.pop_front()
        {
            self.queued[id as usize] = false;
            // Queued again by a link from inside itself, and scanned from the same read.
            if self.marks.has_unscanned(id, span.nelems) {
                batch.push((id, span));
            }
        }
        let pieces: Vec<(u64, usize)> = batch
            .iter()
            .map(|(_, s)| (s.start, (s.limit - s.start) as usize))
            .collect();
        let (buffer, placed) = read_pieces(self.mem, &pieces);
        for ((bytes, result), (id, span)) in placed.into_iter().zip(batch) {
            match result {
                Ok(()) => self.scan_span(id, &span, &buffer[bytes]),
                Err(_) => {
                    self.stats.unreadable += 1;
                    // Nothing more to learn from it: settle its objects as scanned.
                    while self.marks.take_unscanned(id, span.nelems).is_some() {}
                }
            }
        }
        self.current = None;
        give_back(buffer);
    }

    /// Scan the marked, unscanned objects of a span from its bytes, including the ones marked
    /// while doing so.
    fn scan_span(&mut self, id: SpanId, span: &Span, bytes: &[u8]) {
        if self.parent.is_some() {
            // Origins name the object each word came from: one object at a time.
            while let Some(index) = self.marks.take_unscanned(id, span.nelems) {
                let base = span.start + index * span.elemsize;
                if self.skip.contains(&base) {
                    continue;
                }
                let from = (base - span.start) as usize;
                let to = (span.object_end(base) - span.start) as usize;
                self.current = Some(base);
                self.scan_bytes(&bytes[from..to], base);
            }
            return;
        }
        // Every possible pointer of every pending object first, then marked in prefetched
        // groups; objects marked meanwhile (links within the span) come round again.
        let mut words = std::mem::take(&mut self.words);
        loop {
            words.clear();
            while let Some(index) = self.marks.take_unscanned(id, span.nelems) {
                let base = span.start + index * span.elemsize;
                if self.skip.contains(&base) {
                    continue;
                }
                let from = (base - span.start) as usize;
                let to = (span.object_end(base) - span.start) as usize;
                self.stats.bytes_scanned += (to - from) as u64;
                words.extend(
                    bytes[from..to]
                        .as_chunks::<8>()
                        .0
                        .iter()
                        .map(|w| u64::from_le_bytes(*w))
                        .filter(|w| (MIN_ADDR..MAX_ADDR).contains(w)),
                );
            }
            if words.is_empty() {
                break;
            }
            self.mark_words_prefetched(&words);
        }
        self.words = words;
    }

    /// [`Marker::mark_word`] for many words, in groups whose page slots, span records and mark
    /// words are prefetched stage by stage first: the lookups of a group then wait for memory
    /// together, where one word at a time waited for three cache misses in a row.
    fn mark_words_prefetched(&mut self, words: &[u64]) {
        for group in words.chunks(PREFETCH_GROUP) {
            for &w in group {
                self.heap.prefetch_slot(w);
            }
            for &w in group {
                self.heap.prefetch_span(w);
            }
            for &w in group {
                if let Some(object) = self.heap.peek_object(w) {
                    self.marks.prefetch(&object);
                }
            }
            for &w in group {
                self.mark_word(w);
            }
        }
    }

    /// Read and scan a batch of queued objects of large-object spans.
    fn drain_large_objects(&mut self) {
        let take = self.queue.len().min(BATCH_OBJECTS);
        let batch: Vec<HeapObject> = self.queue.drain(self.queue.len() - take..).collect();
        // (object base, addr, len) pieces: large objects in chunks.
        let mut pieces: Vec<(u64, u64, u64)> = Vec::with_capacity(batch.len());
        for o in &batch {
            let end = o.span.object_end(o.base);
            let mut at = o.base;
            while at < end {
                let len = (end - at).min(CHUNK);
                pieces.push((o.base, at, len));
                at += len;
            }
        }
        let reads: Vec<(u64, usize)> = pieces
            .iter()
            .map(|&(_, addr, len)| (addr, len as usize))
            .collect();
        let (buffer, placed) = read_pieces(self.mem, &reads);
        for ((bytes, result), &(base, addr, _)) in placed.into_iter().zip(&pieces) {
            self.current = Some(base);
            match result {
                Ok(()) => self.scan_bytes(&buffer[bytes], addr),
                Err(_) => self.stats.unreadable += 1,
            }
        }
        self.current = None;
        give_back(buffer);
    }

    /// Whether the object containing `addr` was marked, or `addr` is not a heap object at all
    /// (a global, a stack slot): either way something live may still reach it.
    pub fn is_marked_or_outside_heap(&mut self, addr: u64) -> bool {
        match self.heap.object_of(addr) {
            None => true,
            Some(object) => self.marks.contains(&object),
        }
    }

    /// [`Marker::is_marked_or_outside_heap`] for a value of `len` bytes at `addr`, finer than
    /// the GC inside tiny-allocator blocks: Go packs small pointer-free objects (a `sync.Mutex`
    /// among them) into one 16-byte block, and a live neighbour marks the whole block. A value
    /// at the front of its block, no longer than the front half, is reachable only if some word
    /// points into that half: safe Go cannot step from a later field or object back to an
    /// earlier one (only `unsafe` arithmetic inside one allocation could).
    pub fn may_reach(&mut self, addr: u64, len: u64) -> bool {
        match self.heap.object_of(addr) {
            None => true,
            Some(object)
                if is_tiny_block(&object.span) && addr == object.base && len <= TINY_FRONT =>
            {
                self.marks.front_contains(&object)
            }
            Some(object) => self.marks.contains(&object),
        }
    }

    /// The chain of objects from a root to the object containing `addr` (debugging aid).
    pub fn path_to(&mut self, addr: u64) -> Vec<String> {
        let mut out = Vec::new();
        let Some(mut at) = self.heap.object_of(addr).map(|o| o.base) else {
            return out;
        };
        let Some(parent) = &self.parent else {
            out.push("origins not recorded".to_string());
            return out;
        };
        for _ in 0..64 {
            match parent.get(&at) {
                Some(Origin::Object(p)) => {
                    out.push(format!("{at:#x} <- object {p:#x}"));
                    at = *p;
                }
                Some(Origin::Root(r, id, word)) => {
                    out.push(format!("{at:#x} <- root {r} {id} word at {word:#x}"));
                    break;
                }
                None => break,
            }
        }
        out
    }

    pub fn marked_count(&self) -> usize {
        self.stats.objects_marked as usize
    }
}

/// The size of the tiny allocator's blocks (`maxTinySize`), and the front half of one.
const TINY_BLOCK: u64 = 16;
const TINY_FRONT: u64 = 8;

/// Whether `span` holds tiny-allocator blocks: 16-byte pointer-free objects (the size class
/// also holds single 16-byte objects; for those the front-half rule is just as sound).
fn is_tiny_block(span: &Span) -> bool {
    span.noscan && span.elemsize == TINY_BLOCK
}

/// Whether a span is read whole when its objects are scanned.
fn read_whole(span: &Span) -> bool {
    span.nelems > 1 && span.limit - span.start <= WHOLE_SPAN_MAX
}

/// One mark bit and one scanned bit per object slot, in flat arrays with a run of words per
/// span id: a test-and-set is two array loads and a bit operation, where a set of addresses was
/// a hash probe into a table as large as the heap's object count.
#[derive(Default)]
struct MarkBits {
    /// Per span id: index of the span's first word in `marked` and `scanned`, or `UNALLOCATED`.
    first_word: Vec<u32>,
    marked: Vec<u64>,
    /// Set once a marked object of a whole-read span has been scanned.
    scanned: Vec<u64>,
    /// Tiny-allocator blocks only: set when a word points into the block's front half.
    front: Vec<u64>,
}

const UNALLOCATED: u32 = u32::MAX;

impl MarkBits {
    /// Mark `object`; false when it was marked already.
    fn insert(&mut self, object: &HeapObject) -> bool {
        let at = self.word_of(object.span_id, object.span.nelems) + (object.index / 64) as usize;
        let bit = 1u64 << (object.index % 64);
        let fresh = self.marked[at] & bit == 0;
        self.marked[at] |= bit;
        fresh
    }

    fn contains(&self, object: &HeapObject) -> bool {
        match self.first_word.get(object.span_id as usize) {
            Some(&first) if first != UNALLOCATED => {
                let at = first as usize + (object.index / 64) as usize;
                self.marked[at] & (1 << (object.index % 64)) != 0
            }
            _ => false,
        }
    }

    fn set_front(&mut self, object: &HeapObject) {
        let at = self.word_of(object.span_id, object.span.nelems) + (object.index / 64) as usize;
        self.front[at] |= 1 << (object.index % 64);
    }

    fn front_contains(&self, object: &HeapObject) -> bool {
        match self.first_word.get(object.span_id as usize) {
            Some(&first) if first != UNALLOCATED => {
                let at = first as usize + (object.index / 64) as usize;
                self.front[at] & (1 << (object.index % 64)) != 0
            }
            _ => false,
        }
    }

    fn prefetch(&self, object: &HeapObject) {
        if let Some(&first) = self.first_word.get(object.span_id as usize)
            && first != UNALLOCATED
            && let Some(word) = self
                .marked
                .get(first as usize + (object.index / 64) as usize)
        {
            prefetch(word);
        }
    }

    fn has_unscanned(&self, id: SpanId, nelems: u32) -> bool {
        match self.first_word.get(id as usize) {
            Some(&first) if first != UNALLOCATED => {
                let words = first as usize..first as usize + nelems.div_ceil(64) as usize;
                self.marked[words.clone()]
                    .iter()
                    .zip(&self.scanned[words])
                    .any(|(m, s)| m & !s != 0)
            }
            _ => false,
        }
    }

    /// A marked object of span `id` not scanned yet, now counted as scanned.
    fn take_unscanned(&mut self, id: SpanId, nelems: u32) -> Option<u64> {
        let first = *self.first_word.get(id as usize)?;
        if first == UNALLOCATED {
            return None;
        }
        let first = first as usize;
        for w in 0..nelems.div_ceil(64) as usize {
            let pending = self.marked[first + w] & !self.scanned[first + w];
            if pending != 0 {
                let bit = pending.trailing_zeros();
                self.scanned[first + w] |= 1 << bit;
                return Some(w as u64 * 64 + u64::from(bit));
            }
        }
        None
    }

    /// Index of the first word of span `id`'s bits, allocating them on its first mark.
    fn word_of(&mut self, id: SpanId, nelems: u32) -> usize {
        let id = id as usize;
        if self.first_word.len() <= id {
            self.first_word.resize(id + 1, UNALLOCATED);
        }
        if self.first_word[id] == UNALLOCATED {
            self.first_word[id] = self.marked.len() as u32;
            let len = self.marked.len() + nelems.div_ceil(64) as usize;
            self.marked.resize(len, 0);
            self.scanned.resize(len, 0);
            self.front.resize(len, 0);
        }
        self.first_word[id] as usize
    }
}

/// Indices of words that are a goroutine stack's `hi` bound inside a g record: the runtime lays
/// out `stack.lo, stack.hi, stackguard0, stackguard1` with both guards a little above `lo`
/// (or a poison value far from it), and the stack a power-of-two size of at least 2 KiB.
pub fn stack_end_words(words: &[u64]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, w) in words.windows(3).enumerate() {
        let (lo, hi, guard) = (w[0], w[1], w[2]);
        let size = hi.wrapping_sub(lo);
        if lo != 0
            && hi > lo
            && size.is_power_of_two()
            && (2048..=1 << 30).contains(&size)
            && guard > lo
            && guard - lo < 4096
        {
            out.push(i + 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stack_end_of_g_records_in_globals() {
        // gcrash as read from a live 1.27 process, between two unrelated words.
        let words = [
            0x7ff0_0000_1234,
            0x041a_109c_a000,
            0x041a_109c_e000,
            0x041a_109c_a3e8,
            0x041a_109c_a3e8,
            0,
            0x041a_109d_2000,
        ];
        assert_eq!(stack_end_words(&words), vec![2]);
        // A pointer pair that is not a stack: not a power-of-two span, or no guard above lo.
        assert!(stack_end_words(&[0x1000_0000, 0x1000_3000, 0x1000_0100]).is_empty());
        assert!(stack_end_words(&[0x1000_0000, 0x1000_2000, 0x2000_0000]).is_empty());
    }
    use crate::goruntime::heap::{PAGE_SIZE, PAGES_PER_ARENA, SPAN_IN_USE};
    use crate::remote::memory::RecordedMemory;

    use crate::goruntime::heap::tests::layout;

    fn span_record(start: u64, nelems: u16, elemsize: u64, noscan: bool) -> Vec<u8> {
        let mut r = vec![0u8; 160];
        r[24..32].copy_from_slice(&start.to_le_bytes());
        r[32..40].copy_from_slice(&1u64.to_le_bytes());
        r[50..52].copy_from_slice(&nelems.to_le_bytes());
        r[98] = (3 << 1) | u8::from(noscan);
        r[99] = SPAN_IN_USE;
        r[104..112].copy_from_slice(&elemsize.to_le_bytes());
        r[112..120].copy_from_slice(&(start + u64::from(nelems) * elemsize).to_le_bytes());
        r
    }

    /// A heap of two one-page spans: page 0 scan objects of 32 bytes, page 1 noscan.
    fn heap_memory() -> (RecordedMemory, u64, u64) {
        let base: u64 = 0xc000000000;
        let idx = Heap::arena_index(base);
        let (mheap, l2, arena) = (0x10000u64, 0x20000u64, 0x40000000u64);
        let mut mem = RecordedMemory::new();
        mem.write_u64(mheap + 0x100, l2);
        mem.write_u64(l2 + idx * 8, arena);
        let mut table = vec![0u8; (PAGES_PER_ARENA * 8) as usize];
        table[0..8].copy_from_slice(&0x30000u64.to_le_bytes());
        table[8..16].copy_from_slice(&0x31000u64.to_le_bytes());
        mem.add(arena, table);
        mem.add(0x30000, span_record(base, 256, 32, false));
        mem.add(0x31000, span_record(base + PAGE_SIZE, 256, 32, true));
        (mem, mheap, base)
    }

    #[test]
    fn marks_transitively_but_never_through_skipped_or_noscan_objects() {
        let (mut mem, mheap, base) = heap_memory();
        let obj = |i: u64| base + 32 * i;
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let mut put = |at: u64, value: u64| {
            let i = (at - base) as usize;
            page[i..i + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(obj(0), obj(1) + 8); // interior pointer: marks object 1
        put(obj(1) + 16, obj(2)); // 1 → 2
        put(obj(2), obj(3)); // 2 → 3, but 2 is skipped (a sudog): 3 stays unmarked
        put(obj(4), obj(5)); // 4 unreachable
        mem.add(base, page);
        // Noscan object pointing back into the scan page: never followed.
        let mut noscan = vec![0u8; PAGE_SIZE as usize];
        noscan[0..8].copy_from_slice(&obj(4).to_le_bytes());
        mem.add(base + PAGE_SIZE, noscan);
        // A root range (a "global") with the pointer to object 0 and to the noscan object.
        mem.add(
            0x5000,
            [obj(0).to_le_bytes(), (base + PAGE_SIZE).to_le_bytes()].concat(),
        );

        let mut heap = Heap::new(&mem, layout(), mheap).unwrap();
        let skip: AddrSet = [obj(2)].into_iter().collect();
        let mut marker = Marker::new(&mem, &mut heap, skip);
        marker.scan_range(0x5000, 0x5010);
        marker.drain();
        for (i, expect) in [
            (0, true),
            (1, true),
            (2, true),
            (3, false),
            (4, false),
            (5, false),
        ] {
            assert_eq!(
                marker.is_marked_or_outside_heap(obj(i) + 4),
                expect,
                "object {i}"
            );
        }
        // A noscan object is a valid target; addresses outside the heap count as reachable.
        assert!(marker.is_marked_or_outside_heap(base + PAGE_SIZE));
        assert!(marker.is_marked_or_outside_heap(0x5008));
        assert_eq!(marker.marked_count(), 4);
    }

    /// A mutex at the front of a tiny block whose back half holds a live counter is not
    /// reachable through the counter; one at the back is (the block may be one struct).
    #[test]
    fn tiny_blocks_are_reachable_per_front_half() {
        let (mut mem, mheap, base) = heap_memory();
        // Replace page 1 (noscan, 32-byte) with a tiny-allocator page of 16-byte blocks.
        mem.add(0x31000, span_record(base + PAGE_SIZE, 512, 16, true));
        let block = |i: u64| base + PAGE_SIZE + 16 * i;
        // Roots: the back half of block 0, the front of block 1, the back half of block 2.
        mem.add(
            0x5000,
            [block(0) + 8, block(1), block(2) + 8]
                .map(u64::to_le_bytes)
                .concat(),
        );
        let mut heap = Heap::new(&mem, layout(), mheap).unwrap();
        let mut marker = Marker::new(&mem, &mut heap, AddrSet::default());
        marker.scan_range(0x5000, 0x5018);
        marker.drain();
        assert!(
            !marker.may_reach(block(0), 8),
            "only its neighbour is referenced"
        );
        assert!(
            marker.may_reach(block(0), u64::MAX),
            "the GC's view: the block is marked"
        );
        assert!(marker.may_reach(block(1), 8));
        assert!(
            marker.may_reach(block(2) + 8, 8),
            "the back half is what is referenced"
        );
        assert!(!marker.may_reach(block(3), 8), "never referenced");
        // Outside tiny blocks the whole object counts, as before.
        assert!(!marker.may_reach(base + 4 * 32, 8));
    }
}
