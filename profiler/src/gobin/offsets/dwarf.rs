//! Go runtime struct layouts read from DWARF (`.debug_info` + `.debug_abbrev`) with gimli.
//!
//! This file depends on gimli and std only: `cargo xtask offsets` compiles this same file (through
//! a `#[path]` module) to generate `table.json`, so the table and the live reader cannot disagree
//! about what a field key means.
//!
//! How Go's linker writes the types we need: every named struct is a `DW_TAG_structure_type`
//! named with its package path ("runtime.g", "internal/runtime/atomic.Uint32"), with a
//! `DW_TAG_typedef` of the same name pointing at it; members are `DW_TAG_member` with a constant
//! `DW_AT_data_member_location`; type references are section-global (`DW_FORM_ref_addr`), because
//! the type DIEs live in the runtime's compile units while their users live anywhere.
//!
//! The input may be malformed or hostile (a fuzz target runs it on arbitrary bytes): every lookup
//! returns `Option`, every chain (typedefs, nested paths, member lists) is bounded, and a parse
//! error ends the scan with whatever was found before it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use gimli::{
    Abbreviations, AttributeValue, DebugAbbrev, DebugInfo, DebugInfoOffset, DebugStr, EndianSlice,
    LittleEndian, Reader, UnitHeader, constants,
};

type R<'a> = EndianSlice<'a, LittleEndian>;

/// How a field key is found inside its struct.
#[derive(Clone, Copy, Debug)]
pub enum Locator {
    /// A member path (`["sched", "sp"]`). Alternatives are tried in order; the first that exists
    /// wins (renamed fields, wrapper structs that only some releases have).
    Member(&'static [&'static [&'static str]]),
    /// The type's own byte size (key `"<type>.$size"`).
    Size,
    /// The size of one element of a named array type (key `"<type>.$stride"`).
    ElementSize,
}

/// One layout fact parkscope reads from a target.
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    /// Dotted key with the Go type's short name: "g.sched.sp", "mspan.nelems", "hchan.$size".
    pub key: &'static str,
    /// The DWARF name of the struct the key starts from.
    pub type_name: &'static str,
    pub locator: Locator,
    /// Without it parkscope cannot even list goroutines: resolving fails when neither DWARF nor
    /// the table supplies it.
    pub required: bool,
}

const fn member(
    key: &'static str,
    type_name: &'static str,
    paths: &'static [&'static [&'static str]],
) -> FieldSpec {
    FieldSpec {
        key,
        type_name,
        locator: Locator::Member(paths),
        required: false,
    }
}

const fn required(
    key: &'static str,
    type_name: &'static str,
    paths: &'static [&'static [&'static str]],
) -> FieldSpec {
    FieldSpec {
        key,
        type_name,
        locator: Locator::Member(paths),
        required: true,
    }
}

const fn size_of(key: &'static str, type_name: &'static str, required: bool) -> FieldSpec {
    FieldSpec {
        key,
        type_name,
        locator: Locator::Size,
        required,
    }
}

const fn stride_of(key: &'static str, type_name: &'static str) -> FieldSpec {
    FieldSpec {
        key,
        type_name,
        locator: Locator::ElementSize,
        required: false,
    }
}

const G: &str = "runtime.g";
const SUDOG: &str = "runtime.sudog";
const HCHAN: &str = "runtime.hchan";
const WAITQ: &str = "runtime.waitq";
const M: &str = "runtime.m";
const P: &str = "runtime.p";
const MSPAN: &str = "runtime.mspan";
const HEAP_ARENA: &str = "runtime.heapArena";
const MHEAP: &str = "runtime.mheap";
const SEMA_ROOT: &str = "runtime.semaRoot";
const NOTIFY_LIST: &str = "runtime.notifyList";
const SPECIAL: &str = "runtime.special";
const SPECIAL_FINALIZER: &str = "runtime.specialfinalizer";
const SEM_TABLE: &str = "runtime.semTable";

/// Every field parkscope reads, in the order the table lists them. Fields that only some
/// releases have (g.syscallbp ≥ 1.23, hchan.timer ≥ 1.23, mspan.largeType ≥ 1.22,
/// sudog.waiters ≥ 1.22, ...) are simply absent where the release lacks them.
pub const FIELDS: &[FieldSpec] = &[
    // runtime.g
    required("g.stack.lo", G, &[&["stack", "lo"]]),
    required("g.stack.hi", G, &[&["stack", "hi"]]),
    member("g._panic", G, &[&["_panic"]]),
    member("g._defer", G, &[&["_defer"]]),
    required("g.m", G, &[&["m"]]),
    required("g.sched.sp", G, &[&["sched", "sp"]]),
    required("g.sched.pc", G, &[&["sched", "pc"]]),
    required("g.sched.bp", G, &[&["sched", "bp"]]),
    member("g.sched.ctxt", G, &[&["sched", "ctxt"]]),
    member("g.syscallsp", G, &[&["syscallsp"]]),
    member("g.syscallpc", G, &[&["syscallpc"]]),
    member("g.syscallbp", G, &[&["syscallbp"]]),
    member("g.param", G, &[&["param"]]),
    required("g.atomicstatus", G, &[&["atomicstatus"]]),
    required("g.goid", G, &[&["goid"]]),
    member("g.schedlink", G, &[&["schedlink"]]),
    member("g.waitsince", G, &[&["waitsince"]]),
    required("g.waitreason", G, &[&["waitreason"]]),
    member("g.lockedm", G, &[&["lockedm"]]),
    member("g.parentGoid", G, &[&["parentGoid"]]),
    required("g.gopc", G, &[&["gopc"]]),
    member("g.ancestors", G, &[&["ancestors"]]),
    required("g.startpc", G, &[&["startpc"]]),
    required("g.waiting", G, &[&["waiting"]]),
    member("g.labels", G, &[&["labels"]]),
    member("g.timer", G, &[&["timer"]]),
    member("g.selectDone", G, &[&["selectDone"]]),
    member("g.trackingSeq", G, &[&["trackingSeq"]]),
    size_of("g.$size", G, true),
    // runtime.sudog. From Go 1.26 `elem` is a `maybeTraceablePtr{vp unsafe.Pointer; vu uintptr}`
    // and `c` a `maybeTraceableChan` embedding one. The goroutine leak detector nils `vp` during
    // its GC cycles while `vu` always holds the real address, so these keys name the `vu` word
    // (and are 8 bytes wide). Older releases have plain pointers there.
    member("sudog.g", SUDOG, &[&["g"]]),
    member("sudog.next", SUDOG, &[&["next"]]),
    member("sudog.prev", SUDOG, &[&["prev"]]),
    member("sudog.elem", SUDOG, &[&["elem", "vu"], &["elem"]]),
    member("sudog.acquiretime", SUDOG, &[&["acquiretime"]]),
    member("sudog.releasetime", SUDOG, &[&["releasetime"]]),
    member("sudog.ticket", SUDOG, &[&["ticket"]]),
    member("sudog.isSelect", SUDOG, &[&["isSelect"]]),
    member("sudog.success", SUDOG, &[&["success"]]),
    member("sudog.waiters", SUDOG, &[&["waiters"]]),
    member("sudog.parent", SUDOG, &[&["parent"]]),
    member("sudog.waitlink", SUDOG, &[&["waitlink"]]),
    member("sudog.waittail", SUDOG, &[&["waittail"]]),
    member("sudog.c", SUDOG, &[&["c", "vu"], &["c"]]),
    size_of("sudog.$size", SUDOG, false),
    // runtime.hchan and runtime.waitq
    member("hchan.qcount", HCHAN, &[&["qcount"]]),
    member("hchan.dataqsiz", HCHAN, &[&["dataqsiz"]]),
    member("hchan.buf", HCHAN, &[&["buf"]]),
    member("hchan.elemsize", HCHAN, &[&["elemsize"]]),
    member("hchan.closed", HCHAN, &[&["closed"]]),
    member("hchan.timer", HCHAN, &[&["timer"]]),
    member("hchan.elemtype", HCHAN, &[&["elemtype"]]),
    member("hchan.sendx", HCHAN, &[&["sendx"]]),
    member("hchan.recvx", HCHAN, &[&["recvx"]]),
    member("hchan.recvq", HCHAN, &[&["recvq"]]),
    member("hchan.sendq", HCHAN, &[&["sendq"]]),
    member("hchan.lock", HCHAN, &[&["lock"]]),
    size_of("hchan.$size", HCHAN, false),
    member("waitq.first", WAITQ, &[&["first"]]),
    member("waitq.last", WAITQ, &[&["last"]]),
    // runtime.m and runtime.p
    member("m.g0", M, &[&["g0"]]),
    member("m.procid", M, &[&["procid"]]),
    member("m.curg", M, &[&["curg"]]),
    member("m.p", M, &[&["p"]]),
    member("m.id", M, &[&["id"]]),
    member("m.lockedg", M, &[&["lockedg"]]),
    member("m.alllink", M, &[&["alllink"]]),
    member("m.waitlock", M, &[&["waitlock"]]),
    size_of("m.$size", M, false),
    member("p.id", P, &[&["id"]]),
    member("p.status", P, &[&["status"]]),
    member("p.m", P, &[&["m"]]),
    member("p.runqhead", P, &[&["runqhead"]]),
    member("p.runqtail", P, &[&["runqtail"]]),
    member("p.runq", P, &[&["runq"]]),
    member("p.runnext", P, &[&["runnext"]]),
    // The p's timer heap: `timers.heap []timerWhen` since 1.23, `timers []*timer` before.
    member("p.timers", P, &[&["timers", "heap"], &["timers"]]),
    // Heap metadata for the reachability scan.
    member("mspan.next", MSPAN, &[&["next"]]),
    member("mspan.startAddr", MSPAN, &[&["startAddr"]]),
    member("mspan.npages", MSPAN, &[&["npages"]]),
    member("mspan.freeindex", MSPAN, &[&["freeindex"]]),
    member("mspan.nelems", MSPAN, &[&["nelems"]]),
    member("mspan.allocCount", MSPAN, &[&["allocCount"]]),
    member("mspan.allocBits", MSPAN, &[&["allocBits"]]),
    member("mspan.gcmarkBits", MSPAN, &[&["gcmarkBits"]]),
    member("mspan.sweepgen", MSPAN, &[&["sweepgen"]]),
    member("mspan.spanclass", MSPAN, &[&["spanclass"]]),
    // mSpanStateBox{s atomic.Uint8}: the state byte.
    member("mspan.state", MSPAN, &[&["state", "s"], &["state"]]),
    member("mspan.elemsize", MSPAN, &[&["elemsize"]]),
    member("mspan.limit", MSPAN, &[&["limit"]]),
    member("mspan.specials", MSPAN, &[&["specials"]]),
    member("mspan.largeType", MSPAN, &[&["largeType"]]),
    size_of("mspan.$size", MSPAN, false),
    member("heapArena.spans", HEAP_ARENA, &[&["spans"]]),
    member("mheap.allspans", MHEAP, &[&["allspans"]]),
    member("mheap.arenas", MHEAP, &[&["arenas"]]),
    // Renamed heapArenas in Go 1.25; one key for both spellings.
    member("mheap.allArenas", MHEAP, &[&["allArenas"], &["heapArenas"]]),
    member("special.next", SPECIAL, &[&["next"]]),
    member("special.offset", SPECIAL, &[&["offset"]]),
    member("special.kind", SPECIAL, &[&["kind"]]),
    member("specialfinalizer.fn", SPECIAL_FINALIZER, &[&["fn"]]),
    // The semaphore table (sync waiters before Go 1.26) and sync.Cond's notify list.
    member("semaRoot.lock", SEMA_ROOT, &[&["lock"]]),
    member("semaRoot.treap", SEMA_ROOT, &[&["treap"]]),
    member("semaRoot.nwait", SEMA_ROOT, &[&["nwait"]]),
    size_of("semaRoot.$size", SEMA_ROOT, false),
    // runtime.semtable: [251]struct{root semaRoot; pad [...]byte}, one cache line per entry.
    size_of("semTable.$size", SEM_TABLE, false),
    stride_of("semTable.$stride", SEM_TABLE),
    member("notifyList.wait", NOTIFY_LIST, &[&["wait"]]),
    member("notifyList.notify", NOTIFY_LIST, &[&["notify"]]),
    member("notifyList.head", NOTIFY_LIST, &[&["head"]]),
    member("notifyList.tail", NOTIFY_LIST, &[&["tail"]]),
];

/// The spec of one key.
pub fn spec(key: &str) -> Option<&'static FieldSpec> {
    FIELDS.iter().find(|f| f.key == key)
}

/// Where a field lives and how wide it is, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub offset: u64,
    pub size: u64,
}

/// What DWARF says about one field key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(Layout),
    /// The struct is described but has no such member: this release lacks the field.
    NoMember,
    /// The struct is not described at all (stripped, or the linker dropped an unused type):
    /// DWARF cannot tell, another source may.
    NoType,
}

/// The three sections the reader uses; `str` may be empty (Go writes names inline).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sections<'a> {
    pub info: &'a [u8],
    pub abbrev: &'a [u8],
    pub str: &'a [u8],
}

/// Looks every key of [`FIELDS`] up in the DWARF.
pub fn read_layouts(sections: Sections<'_>) -> BTreeMap<&'static str, Lookup> {
    let index = Index::build(sections);
    FIELDS
        .iter()
        .map(|spec| (spec.key, index.lookup(spec)))
        .collect()
}

/// Runs the reader on arbitrary bytes, for fuzzing: must return, never panic.
pub fn fuzz_dwarf(info: &[u8], abbrev: &[u8]) {
    let _ = read_layouts(Sections {
        info,
        abbrev,
        str: &[],
    });
}

/// [`fuzz_dwarf`] for a fuzzer's single input: the first two bytes (little-endian, modulo the
/// rest's length) say how much of the rest is `.debug_abbrev`; what follows is `.debug_info`.
pub fn fuzz_dwarf_bytes(data: &[u8]) {
    let Some((head, rest)) = data.split_at_checked(2) else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([head[0], head[1]])) % (rest.len() + 1);
    let (abbrev, info) = rest.split_at(split);
    fuzz_dwarf(info, abbrev);
}

/// Longest typedef / wrapper chain followed before giving up (real Go DWARF needs 2–3).
const MAX_HOPS: usize = 16;
/// Most children of one struct read before giving up (runtime.m has ~100 members).
const MAX_MEMBERS: usize = 4096;

struct UnitEntry<'a> {
    start: usize,
    end: usize,
    header: UnitHeader<R<'a>>,
    abbrevs: Rc<Abbreviations>,
}

/// A DIE's facts that matter here.
struct Die {
    tag: constants::DwTag,
    name: Option<Vec<u8>>,
    byte_size: Option<u64>,
    type_ref: Option<usize>,
    member_location: Option<u64>,
    is_declaration: bool,
    address_size: u8,
}

struct Member {
    name: Vec<u8>,
    offset: u64,
    type_ref: Option<usize>,
    /// A Go embedded field, whose members are promoted (`DW_AT_go_embedded_field`).
    embedded: bool,
}

/// Go's vendor attribute flagging an embedded struct field.
const DW_AT_GO_EMBEDDED_FIELD: constants::DwAt = constants::DwAt(0x2903);
/// Deepest embedding followed when looking for a promoted field.
const MAX_EMBEDDING: usize = 4;

struct Index<'a> {
    str: DebugStr<R<'a>>,
    units: Vec<UnitEntry<'a>>,
    /// Wanted type name → section offset of its (first, defining) struct or array DIE.
    structs: HashMap<&'static str, usize>,
    members_cache: RefCell<HashMap<usize, Option<Rc<Vec<Member>>>>>,
}

impl<'a> Index<'a> {
    fn build(sections: Sections<'a>) -> Index<'a> {
        let info = DebugInfo::new(sections.info, LittleEndian);
        let abbrev = DebugAbbrev::new(sections.abbrev, LittleEndian);
        let mut index = Index {
            str: DebugStr::new(sections.str, LittleEndian),
            units: Vec::new(),
            structs: HashMap::new(),
            members_cache: RefCell::new(HashMap::new()),
        };
        let wanted: Vec<&'static str> = {
            let mut names: Vec<&'static str> = FIELDS.iter().map(|f| f.type_name).collect();
            names.sort_unstable();
            names.dedup();
            names
        };
        let mut abbrev_cache: HashMap<usize, Rc<Abbreviations>> = HashMap::new();
        let mut headers = info.units();
        // A malformed header ends the walk: nothing after it can be located reliably.
        while let Ok(Some(header)) = headers.next() {
            let start = header.offset().0;
            let end = start.saturating_add(header.length_including_self());
            let abbrev_offset = header.debug_abbrev_offset().0;
            let abbrevs = match abbrev_cache.get(&abbrev_offset) {
                Some(a) => a.clone(),
                None => match header.abbreviations(&abbrev) {
                    Ok(a) => {
                        let a = Rc::new(a);
                        abbrev_cache.insert(abbrev_offset, a.clone());
                        a
                    }
                    Err(_) => continue,
                },
            };
            let unit = UnitEntry {
                start,
                end,
                header,
                abbrevs,
            };
            index.scan_unit(&unit, &wanted);
            index.units.push(unit);
        }
        index.units.sort_by_key(|u| u.start);
        index
    }

    fn scan_unit(&mut self, unit: &UnitEntry<'a>, wanted: &[&'static str]) {
        if self.structs.len() == wanted.len() {
            return;
        }
        let mut cursor = unit.header.entries(&unit.abbrevs);
        while let Ok(Some(entry)) = cursor.next_dfs() {
            if entry.tag() != constants::DW_TAG_structure_type
                && entry.tag() != constants::DW_TAG_array_type
            {
                continue;
            }
            if entry.attr(constants::DW_AT_declaration).is_some() {
                continue;
            }
            let Some(name) = self.name_of(entry) else {
                continue;
            };
            let Ok(i) = wanted.binary_search_by(|w| w.as_bytes().cmp(&name[..])) else {
                continue;
            };
            let Some(offset) = entry.offset().to_debug_info_offset(&unit.header) else {
                continue;
            };
            self.structs.entry(wanted[i]).or_insert(offset.0);
        }
    }

    fn name_of(&self, entry: &gimli::DebuggingInformationEntry<R<'a>>) -> Option<Vec<u8>> {
        match entry.attr_value(constants::DW_AT_name)? {
            AttributeValue::String(s) => Some(s.slice().to_vec()),
            AttributeValue::DebugStrRef(offset) => {
                Some(self.str.get_str(offset).ok()?.slice().to_vec())
            }
            _ => None,
        }
    }

    fn unit_at(&self, offset: usize) -> Option<&UnitEntry<'a>> {
        let i = self.units.partition_point(|u| u.start <= offset);
        let unit = self.units.get(i.checked_sub(1)?)?;
        (offset < unit.end).then_some(unit)
    }

    fn die_facts(
        &self,
        unit: &UnitEntry<'a>,
        entry: &gimli::DebuggingInformationEntry<R<'a>>,
    ) -> Die {
        let type_ref = match entry.attr_value(constants::DW_AT_type) {
            Some(AttributeValue::UnitRef(r)) => r.to_debug_info_offset(&unit.header).map(|o| o.0),
            Some(AttributeValue::DebugInfoRef(r)) => Some(r.0),
            _ => None,
        };
        let member_location = match entry.attr_value(constants::DW_AT_data_member_location) {
            Some(AttributeValue::Exprloc(expr)) => simple_location(expr.0),
            Some(value) => value.udata_value(),
            None => None,
        };
        Die {
            tag: entry.tag(),
            name: self.name_of(entry),
            byte_size: entry
                .attr_value(constants::DW_AT_byte_size)
                .and_then(|v| v.udata_value()),
            type_ref,
            member_location,
            is_declaration: entry.attr(constants::DW_AT_declaration).is_some(),
            address_size: unit.header.address_size(),
        }
    }

    /// The DIE at a section offset.
    fn die(&self, offset: usize) -> Option<Die> {
        let unit = self.unit_at(offset)?;
        let unit_offset = DebugInfoOffset(offset).to_unit_offset(&unit.header)?;
        let mut cursor = unit
            .header
            .entries_at_offset(&unit.abbrevs, unit_offset)
            .ok()?;
        let entry = cursor.next_dfs().ok()??;
        if entry.offset() != unit_offset {
            return None; // a null entry at the offset: not a DIE.
        }
        Some(self.die_facts(unit, entry))
    }

    /// The members of the struct at `offset` (memoized: every key re-walks its root struct).
    fn struct_members(&self, offset: usize) -> Option<Rc<Vec<Member>>> {
        if let Some(cached) = self.members_cache.borrow().get(&offset) {
            return cached.clone();
        }
        let members = self.read_struct_members(offset).map(Rc::new);
        self.members_cache
            .borrow_mut()
            .insert(offset, members.clone());
        members
    }

    /// The members of the struct DIE at `offset`, or None when it is not a defined struct.
    fn read_struct_members(&self, offset: usize) -> Option<Vec<Member>> {
        let unit = self.unit_at(offset)?;
        let unit_offset = DebugInfoOffset(offset).to_unit_offset(&unit.header)?;
        let mut cursor = unit
            .header
            .entries_at_offset(&unit.abbrevs, unit_offset)
            .ok()?;
        let entry = cursor.next_dfs().ok()??;
        if entry.offset() != unit_offset || entry.tag() != constants::DW_TAG_structure_type {
            return None;
        }
        let die = self.die_facts(unit, entry);
        if die.is_declaration {
            return None;
        }
        let mut members = Vec::new();
        if entry.has_children() {
            for _ in 0..MAX_MEMBERS {
                let Ok(Some(child)) = cursor.next_dfs() else {
                    break;
                };
                // Depth is relative to the struct: its members are at 1, its sibling at 0.
                let depth = child.depth();
                if depth <= 0 {
                    break;
                }
                if depth != 1 || child.tag() != constants::DW_TAG_member {
                    continue;
                }
                let facts = self.die_facts(unit, child);
                let embedded = matches!(
                    child.attr_value(DW_AT_GO_EMBEDDED_FIELD),
                    Some(AttributeValue::Flag(true))
                ) || matches!(
                    child
                        .attr_value(DW_AT_GO_EMBEDDED_FIELD)
                        .and_then(|v| v.udata_value()),
                    Some(1..)
                );
                if let (Some(name), Some(offset)) = (facts.name, facts.member_location) {
                    members.push(Member {
                        name,
                        offset,
                        type_ref: facts.type_ref,
                        embedded,
                    });
                }
            }
        }
        Some(members)
    }

    /// Follows typedefs and qualifiers to the type that defines the layout.
    fn underlying(&self, mut offset: usize) -> Option<(usize, Die)> {
        for _ in 0..MAX_HOPS {
            let die = self.die(offset)?;
            match die.tag {
                constants::DW_TAG_typedef
                | constants::DW_TAG_const_type
                | constants::DW_TAG_volatile_type
                | constants::DW_TAG_restrict_type => offset = die.type_ref?,
                _ => return Some((offset, die)),
            }
        }
        None
    }

    fn type_size(&self, offset: usize) -> Option<u64> {
        let (_, die) = self.underlying(offset)?;
        match die.tag {
            constants::DW_TAG_pointer_type => {
                Some(die.byte_size.unwrap_or(u64::from(die.address_size)))
            }
            _ => die.byte_size,
        }
    }

    fn lookup(&self, spec: &FieldSpec) -> Lookup {
        let Some(&root) = self.structs.get(spec.type_name) else {
            return Lookup::NoType;
        };
        let Some(root_die) = self.die(root) else {
            return Lookup::NoType;
        };
        let found = match spec.locator {
            Locator::Size => root_die.byte_size.map(|size| Layout { offset: 0, size }),
            Locator::ElementSize => {
                if root_die.tag != constants::DW_TAG_array_type {
                    return Lookup::NoType;
                }
                root_die
                    .type_ref
                    .and_then(|t| self.type_size(t))
                    .map(|size| Layout { offset: 0, size })
            }
            Locator::Member(paths) => {
                if self.struct_members(root).is_none() {
                    return Lookup::NoType;
                }
                return paths
                    .iter()
                    .find_map(|path| self.resolve_path(root, path))
                    .map_or(Lookup::NoMember, Lookup::Found);
            }
        };
        found.map_or(Lookup::NoType, Lookup::Found)
    }

    /// A member of the struct at `offset`, directly or promoted from an embedded field (as Go's
    /// selector `c.vu` reaches `c.maybeTraceablePtr.vu`): its offset and type.
    fn find_member(
        &self,
        struct_offset: usize,
        name: &[u8],
        depth: usize,
    ) -> Option<(u64, Option<usize>)> {
        let members = self.struct_members(struct_offset)?;
        if let Some(m) = members.iter().find(|m| m.name == name) {
            return Some((m.offset, m.type_ref));
        }
        if depth == 0 {
            return None;
        }
        members.iter().filter(|m| m.embedded).find_map(|m| {
            let (inner, _) = self.underlying(m.type_ref?)?;
            let (offset, type_ref) = self.find_member(inner, name, depth - 1)?;
            Some((m.offset.checked_add(offset)?, type_ref))
        })
    }

    /// Offset and size of `path` inside the struct at `root`, with atomic wrappers unwrapped.
    fn resolve_path(&self, root: usize, path: &[&str]) -> Option<Layout> {
        let mut struct_offset = root;
        let mut offset = 0u64;
        let mut last_type = None;
        for (i, name) in path.iter().enumerate() {
            if i > 0 {
                let (underlying, _) = self.underlying(last_type?)?;
                struct_offset = underlying;
            }
            let (member_offset, member_type) =
                self.find_member(struct_offset, name.as_bytes(), MAX_EMBEDDING)?;
            offset = offset.checked_add(member_offset)?;
            last_type = member_type;
        }
        let mut type_ref = last_type?;
        // Atomic wrappers (runtime/internal/atomic.Uint32, internal/runtime/atomic.Uint32,
        // sync/atomic.Int64, ...) keep the value in one member, at offset 0 in every release so
        // far; descend anyway so the reported offset is the value's, whatever the wrapper does.
        for _ in 0..4 {
            let Some((inner, die)) = self.underlying(type_ref) else {
                break;
            };
            if die.tag != constants::DW_TAG_structure_type
                || !die.name.as_deref().is_some_and(is_atomic_wrapper)
            {
                break;
            }
            let Some(members) = self.struct_members(inner) else {
                break;
            };
            let Some(value) = members
                .iter()
                .find(|m| matches!(&m.name[..], b"value" | b"v" | b"u"))
            else {
                break;
            };
            let Some(next) = value.type_ref else { break };
            offset = offset.checked_add(value.offset)?;
            type_ref = next;
        }
        let size = self.type_size(type_ref)?;
        Some(Layout { offset, size })
    }
}

/// `sync/atomic.Int64`, `internal/runtime/atomic.Uint32`, `runtime/internal/atomic.Uint8`...
fn is_atomic_wrapper(name: &[u8]) -> bool {
    let package = match name.iter().rposition(|&b| b == b'.') {
        Some(dot) => &name[..dot],
        None => return false,
    };
    package == b"atomic" || package.ends_with(b"/atomic")
}

/// A member location written as an expression: `DW_OP_plus_uconst N` or `DW_OP_constu N`.
fn simple_location(mut expr: R<'_>) -> Option<u64> {
    let op = expr.read_u8().ok()?;
    if op != constants::DW_OP_plus_uconst.0 && op != constants::DW_OP_constu.0 {
        return None;
    }
    let value = expr.read_uleb128().ok()?;
    expr.is_empty().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_name_their_type() {
        let mut keys: Vec<&str> = FIELDS.iter().map(|f| f.key).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "duplicate field key");
        for f in FIELDS {
            let short = f.key.split('.').next().unwrap();
            assert_eq!(
                f.type_name.strip_prefix("runtime."),
                Some(short),
                "{} starts with its type's short name",
                f.key
            );
        }
    }

    #[test]
    fn recognizes_atomic_wrappers_by_package() {
        assert!(is_atomic_wrapper(b"internal/runtime/atomic.Uint32"));
        assert!(is_atomic_wrapper(b"runtime/internal/atomic.Uint8"));
        assert!(is_atomic_wrapper(b"sync/atomic.Int64"));
        assert!(!is_atomic_wrapper(b"runtime.mSpanStateBox"));
        assert!(!is_atomic_wrapper(b"atomicish.Uint32"));
        assert!(!is_atomic_wrapper(b"noatomic"));
    }

    #[test]
    fn garbage_and_empty_sections_find_nothing() {
        let layouts = read_layouts(Sections::default());
        assert!(layouts.values().all(|l| *l == Lookup::NoType));
        fuzz_dwarf(&[0xff; 64], &[0x01, 0x13, 0x01, 0x03, 0x08, 0x00, 0x00]);
        fuzz_dwarf(&[7, 0, 0, 0, 4, 0, 0, 0, 0, 0, 8], &[]);
        for data in [&[][..], &[1], &[0xff, 0xff], &[3, 0, 1, 0x13, 0, 0, 0, 0]] {
            fuzz_dwarf_bytes(data);
        }
    }
}
