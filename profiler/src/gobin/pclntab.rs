//! Go's function table (`pclntab`): function names and entries, and pc → file:line with inlined
//! frames. Parsed from the executable's bytes; works on stripped binaries, whose `.symtab` is gone
//! but whose pclntab the runtime itself needs.
//!
//! Format (Go 1.18+, little-endian, amd64), all offsets relative to the pcHeader:
//!
//! ```text
//! pcHeader  magic u32 | pad1 u8 = 0 | pad2 u8 = 0 | minLC u8 | ptrSize u8 | nfunc u64 | nfiles u64
//!           | textStart u64 (0 in 1.26; relocated in PIE) | funcnameOffset | cuOffset
//!           | filetabOffset | pctabOffset | pclnOffset                          (72 bytes)
//! funcnametab   NUL-terminated names, indexed by _func.nameOff
//! cutab         u32 per (compilation unit, file index) → offset into filetab (u32::MAX: none)
//! filetab       NUL-terminated file names
//! pctab         pc-value tables (see below), indexed by _func.pcsp / pcfile / pcln / pcdata[i]
//! pclntable     ftab: (nfunc+1) × {entryoff u32, funcoff u32}, sorted; the last entryoff is
//!               etext − text. Then the _func records at pclntable + funcoff:
//!               entryOff u32 | nameOff i32 | args i32 | deferreturn u32 | pcsp u32 | pcfile u32
//!               | pcln u32 | npcdata u32 | cuOffset u32 | startLine i32 (1.20+ only)
//!               | funcID u8 | flag u8 | pad u8 | nfuncdata u8
//!               | pcdata [npcdata]u32 | funcdata [nfuncdata]u32 (offsets from moduledata.gofunc)
//! ```
//!
//! A pc-value table is a sequence of (value delta, pc delta) uvarint pairs starting from
//! value −1 at the function's entry. The value delta is zig-zag encoded; the pc delta is in units
//! of minLC (1 on amd64). A zero value delta after the first pair ends the table. Each pair
//! says: "from the current pc up to pc + delta, the value is v".
//!
//! Inlining (FUNCDATA_InlTree = 3, PCDATA_InlTreeIndex = 2): the pcfile/pcln tables describe the
//! innermost (inlined) source position; the tree index at a pc names the inlined callee and a
//! `parentPc` whose position is the call site, one level out. The tree lives in `go:func.*`,
//! outside the pclntab proper (inside it from Go 1.26), so frame expansion needs `gofunc`.
//!
//! Addresses are link-time addresses throughout; for a PIE, subtract the load bias first.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::error::InspectError;
use crate::gobin::elf::ElfImage;
use crate::gobin::moduledata::ModuleData;
use crate::gobin::version::GoVersion;

/// pcHeader magic of Go 1.18 and 1.19.
pub const MAGIC_GO118: u32 = 0xffff_fff0;
/// pcHeader magic of Go 1.20 and later (unchanged through 1.26).
pub const MAGIC_GO120: u32 = 0xffff_fff1;

const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u32 = 3;
/// Inlining chains deeper than this are treated as corrupt (real ones are a handful deep).
const MAX_INLINE_DEPTH: usize = 64;
/// A uint32 uvarint takes at most five bytes.
const MAX_VARINT_BYTES: usize = 5;
const FTAB_ENTRY_SIZE: usize = 8;

/// Which `_func` / `inlinedCall` layout the table uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableVersion {
    /// Go 1.18–1.19 (magic 0xfffffff0): no `startLine`; 20-byte inlinedCall.
    Go118,
    /// Go 1.20+ (magic 0xfffffff1).
    Go120,
}

impl TableVersion {
    /// Bytes of `_func` before the pcdata array.
    fn func_header_size(self) -> usize {
        match self {
            TableVersion::Go118 => 40,
            TableVersion::Go120 => 44,
        }
    }
    fn func_id_offset(self) -> usize {
        self.func_header_size() - 4
    }
    fn nfuncdata_offset(self) -> usize {
        self.func_header_size() - 1
    }
    fn inlined_call_size(self) -> usize {
        match self {
            TableVersion::Go118 => 20,
            TableVersion::Go120 => 16,
        }
    }
    /// Offset of the callee's name offset (into funcnametab) inside an inlinedCall.
    fn inlined_call_name_offset(self) -> usize {
        match self {
            TableVersion::Go118 => 12,
            TableVersion::Go120 => 4,
        }
    }
    fn inlined_call_parent_pc_offset(self) -> usize {
        match self {
            TableVersion::Go118 => 16,
            TableVersion::Go120 => 8,
        }
    }
}

/// The decoded, validated pcHeader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcHeader {
    pub magic: u32,
    pub min_lc: u8,
    pub nfunc: u64,
    pub nfiles: u64,
    /// As stored in the file: the link-time text start for non-PIE 1.18–1.25, 0 in a PIE (where
    /// a relocation fills it) and always 0 in Go 1.26+.
    pub text_start: u64,
    pub funcname_offset: u64,
    pub cu_offset: u64,
    pub filetab_offset: u64,
    pub pctab_offset: u64,
    pub pcln_offset: u64,
}

impl PcHeader {
    pub const SIZE: usize = 72;

    /// Decodes and checks the fixed header: magic, zero pad bytes, minLC 1 and ptrSize 8
    /// (amd64). Offsets are checked against the table's length by [`Pclntab::parse`].
    pub fn parse(data: &[u8]) -> Result<PcHeader, &'static str> {
        if data.len() < Self::SIZE {
            return Err("truncated pcHeader");
        }
        let magic = read_u32(data, 0).ok_or("truncated pcHeader")?;
        if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
            return Err("unknown pcHeader magic (Go older than 1.18?)");
        }
        if data[4] != 0 || data[5] != 0 {
            return Err("pcHeader pad bytes are not zero");
        }
        if data[6] != 1 {
            return Err("pcHeader minLC is not 1 (not amd64)");
        }
        if data[7] != 8 {
            return Err("pcHeader ptrSize is not 8");
        }
        let word = |off: usize| read_u64(data, off).ok_or("truncated pcHeader");
        Ok(PcHeader {
            magic,
            min_lc: data[6],
            nfunc: word(8)?,
            nfiles: word(16)?,
            text_start: word(24)?,
            funcname_offset: word(32)?,
            cu_offset: word(40)?,
            filetab_offset: word(48)?,
            pctab_offset: word(56)?,
            pcln_offset: word(64)?,
        })
    }

    pub fn version(&self) -> TableVersion {
        if self.magic == MAGIC_GO118 {
            TableVersion::Go118
        } else {
            TableVersion::Go120
        }
    }
}

/// One function of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncInfo {
    pub name: String,
    /// Link-time entry address.
    pub entry: u64,
    /// The next function's entry (so alignment padding belongs to the function before it, as
    /// in the runtime's findfunc), or for the last function the end of its code (the ftab's end
    /// sentinel, `moduledata.maxpc`; `etext` may be a few bytes further, aligned up).
    pub end: u64,
    /// Offset of the `_func` record in pclntable.
    func_off: u32,
}

impl FuncInfo {
    pub fn contains(&self, pc: u64) -> bool {
        pc >= self.entry && pc < self.end
    }
}

/// A source position, attributed to one (possibly inlined) function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// The parsed function table. Borrows the executable's bytes; lookups decode on demand.
pub struct Pclntab<'data> {
    pcheader_addr: u64,
    header: PcHeader,
    version: TableVersion,
    text_start: u64,
    nfunc: usize,
    funcnametab: &'data [u8],
    cutab: &'data [u8],
    filetab: &'data [u8],
    pctab: &'data [u8],
    /// From pclnOffset to the end of the data: ftab, then the _func records.
    pclntable: &'data [u8],
    /// `go:func.*`: its link-time address and the file bytes from there on.
    gofunc: Option<(u64, &'data [u8])>,
    moduledata: Option<ModuleData>,
    name_index: OnceLock<HashMap<&'data [u8], u32>>,
}

impl std::fmt::Debug for Pclntab<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pclntab")
            .field("pcheader_addr", &format_args!("{:#x}", self.pcheader_addr))
            .field("version", &self.version)
            .field("text_start", &format_args!("{:#x}", self.text_start))
            .field("nfunc", &self.nfunc)
            .field("has_gofunc", &self.gofunc.is_some())
            .finish()
    }
}

fn not_go(why: impl std::fmt::Display) -> InspectError {
    InspectError::NotGo(format!("no valid Go function table (pclntab): {why}"))
}

impl<'data> Pclntab<'data> {
    /// Locates the pclntab in `image` and parses it.
    ///
    /// The `.gopclntab` (or `.data.rel.ro.gopclntab`) section when present; otherwise (externally
    /// linked PIE builds of Go ≤ 1.25 keep it inside `.data.rel.ro` with no section of its own)
    /// the file is scanned for a pcHeader magic that passes full validation. The text start comes
    /// from `runtime.firstmoduledata` (see [`ModuleData::find`]), falling back to the
    /// `runtime.text` symbol, then the header's (relocated) textStart, then the `.text` section.
    pub fn find(image: &ElfImage<'data>) -> Result<Self, InspectError> {
        Self::find_with(image, None)
    }

    /// Like [`Pclntab::find`], reading `runtime.moduledata` in the layout of release `go`
    /// instead of recognising it.
    pub fn find_for_version(image: &ElfImage<'data>, go: &GoVersion) -> Result<Self, InspectError> {
        Self::find_with(image, Some(go))
    }

    fn find_with(image: &ElfImage<'data>, go: Option<&GoVersion>) -> Result<Self, InspectError> {
        let (addr, data) = locate(image)?;
        let moduledata = match go {
            Some(go) => ModuleData::find_for_version(image, addr, go),
            None => ModuleData::find(image, addr),
        };
        let text_start = match moduledata {
            Some(md) => md.text,
            None => text_start_without_moduledata(image, addr)
                .ok_or_else(|| not_go("cannot determine the text start address"))?,
        };
        let mut tab = Self::parse(addr, data, text_start)?;
        let gofunc = match moduledata {
            Some(md) => Some(md.gofunc),
            None if image.has_symtab() => image
                .symbols()
                .into_iter()
                .find(|s| s.name == "go:func.*" || s.name == "go.func.*")
                .map(|s| s.addr),
            None => None,
        };
        if let Some(gofunc) = gofunc
            && let Some(bytes) = bytes_to_segment_end(image, gofunc)
        {
            tab.gofunc = Some((gofunc, bytes));
        }
        tab.moduledata = moduledata;
        Ok(tab)
    }

    /// Parses a pclntab whose pcHeader is at link-time address `pcheader_addr` and whose bytes
    /// (from the pcHeader on, possibly with trailing bytes) are `data`. `text_start` is the
    /// link-time address of `runtime.text`. Inline trees need [`Pclntab::with_gofunc`].
    pub fn parse(
        pcheader_addr: u64,
        data: &'data [u8],
        text_start: u64,
    ) -> Result<Self, InspectError> {
        let header = PcHeader::parse(data).map_err(not_go)?;
        let len = data.len() as u64;
        // The linker writes the tables in this order, none of them empty.
        let offsets = [
            header.funcname_offset,
            header.cu_offset,
            header.filetab_offset,
            header.pctab_offset,
            header.pcln_offset,
            len,
        ];
        if header.funcname_offset < PcHeader::SIZE as u64
            || offsets.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(not_go(
                "pcHeader table offsets are out of order or out of bounds",
            ));
        }
        // Every offset is now <= data.len(), so these conversions and slices cannot fail.
        let slice = |from: u64, to: u64| &data[from as usize..to as usize];
        let pclntable = slice(header.pcln_offset, len);
        let max_funcs = (pclntable.len() / FTAB_ENTRY_SIZE).saturating_sub(1) as u64;
        if header.nfunc == 0 || header.nfunc > max_funcs {
            return Err(not_go(format!(
                "pcHeader nfunc {} does not fit the table",
                header.nfunc
            )));
        }
        let tab = Pclntab {
            pcheader_addr,
            header,
            version: header.version(),
            text_start,
            nfunc: header.nfunc as usize,
            funcnametab: slice(header.funcname_offset, header.cu_offset),
            cutab: slice(header.cu_offset, header.filetab_offset),
            filetab: slice(header.filetab_offset, header.pctab_offset),
            pctab: slice(header.pctab_offset, header.pcln_offset),
            pclntable,
            gofunc: None,
            moduledata: None,
            name_index: OnceLock::new(),
        };
        tab.validate_ftab()?;
        Ok(tab)
    }

    /// The ftab must be sorted, and every _func header must lie inside the table: this is what
    /// tells a real pclntab from bytes that merely start with the magic.
    fn validate_ftab(&self) -> Result<(), InspectError> {
        let min_func = self.version.func_header_size();
        let mut prev = 0u32;
        for i in 0..=self.nfunc {
            let (entryoff, funcoff) = self
                .ftab_entry(i)
                .ok_or_else(|| not_go("truncated function table"))?;
            if entryoff < prev {
                return Err(not_go("function table is not sorted"));
            }
            prev = entryoff;
            if i < self.nfunc {
                let fits = (funcoff as usize)
                    .checked_add(min_func)
                    .is_some_and(|end| end <= self.pclntable.len());
                if !fits {
                    return Err(not_go("function record outside the table"));
                }
            }
        }
        if self.text_start.checked_add(u64::from(prev)).is_none() {
            return Err(not_go("text range overflows the address space"));
        }
        Ok(())
    }

    /// Attaches the bytes of `go:func.*` (FUNCDATA base), which inline-tree lookups need.
    pub fn with_gofunc(mut self, addr: u64, bytes: &'data [u8]) -> Self {
        self.gofunc = Some((addr, bytes));
        self
    }

    /// Link-time address of the pcHeader.
    pub fn pcheader_addr(&self) -> u64 {
        self.pcheader_addr
    }

    pub fn header(&self) -> &PcHeader {
        &self.header
    }

    pub fn version(&self) -> TableVersion {
        self.version
    }

    /// The moduledata found alongside the table (by [`Pclntab::find`] only).
    pub fn moduledata(&self) -> Option<&ModuleData> {
        self.moduledata.as_ref()
    }

    /// Link-time address of `runtime.text`; every function entry is an offset from it.
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    /// End of the text covered by the table: the end of the last function (`moduledata.maxpc`,
    /// at most `runtime.etext`).
    pub fn text_end(&self) -> u64 {
        let last = self.ftab_entry(self.nfunc).map_or(0, |(e, _)| e);
        self.text_start + u64::from(last) // checked in validate_ftab
    }

    pub fn func_count(&self) -> usize {
        self.nfunc
    }

    /// All functions, in address order.
    pub fn functions(&self) -> impl Iterator<Item = FuncInfo> + '_ {
        (0..self.nfunc).filter_map(move |i| self.func_at(i))
    }

    /// The function of that name. A name can occur twice: an assembly function and the
    /// ABIInternal wrapper Go code calls it through (`.symtab` calls them `runtime.osyield.abi0`
    /// and `runtime.osyield`), or a Go function and the ABI0 wrapper assembly calls it through.
    /// Either way this returns the real body, not the compiler-generated wrapper (whose position
    /// is `<autogenerated>`); [`Pclntab::functions_named`] returns both.
    pub fn func_by_name(&self, name: &str) -> Option<FuncInfo> {
        let index = self.name_index.get_or_init(|| {
            let mut map: HashMap<&'data [u8], u32> = HashMap::with_capacity(self.nfunc);
            for i in 0..self.nfunc {
                let Some(name) = self.ftab_entry(i).and_then(|(_, off)| self.raw_name(off)) else {
                    continue;
                };
                match map.entry(name) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(i as u32);
                    }
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        if self.is_autogenerated(*o.get() as usize) && !self.is_autogenerated(i) {
                            o.insert(i as u32);
                        }
                    }
                }
            }
            map
        });
        let i = *index.get(name.as_bytes())?;
        self.func_at(i as usize)
    }

    /// Every function of that name, in address order (a linear scan).
    pub fn functions_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = FuncInfo> + 'a {
        (0..self.nfunc)
            .filter(move |&i| {
                self.ftab_entry(i).and_then(|(_, off)| self.raw_name(off)) == Some(name.as_bytes())
            })
            .filter_map(move |i| self.func_at(i))
    }

    /// Whether function `i` is compiler-generated (ABI wrappers, hash/eq functions): its
    /// position at entry is in the pseudo-file `<autogenerated>`. Only the first run of the
    /// pcfile table is decoded, so this costs O(1) even on hostile tables.
    fn is_autogenerated(&self, i: usize) -> bool {
        let file = || {
            let (_, func_off) = self.ftab_entry(i)?;
            let raw = self.pclntable.get(func_off as usize..)?;
            let pcfile = read_u32(raw, 20).filter(|&off| off != 0)?;
            let table = self.pctab.get(pcfile as usize..)?;
            let (_, _, fileno) = PcValueRuns::new(table, 0, 1).next()?;
            self.file_name(read_u32(raw, 32)?, fileno)
        };
        file() == Some(&b"<autogenerated>"[..])
    }

    /// The function whose code contains `pc`.
    pub fn func_for_pc(&self, pc: u64) -> Option<FuncInfo> {
        let off = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let (end, _) = self.ftab_entry(self.nfunc)?;
        if off >= end {
            return None;
        }
        // First index whose entryoff is > off; the function is the one before it.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.ftab_entry(mid)?.0 <= off {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.func_at(lo.checked_sub(1)?)
    }

    /// File and line of `pc`, attributed to the outermost (physical, non-inlined) function: when
    /// `pc` is inside inlined code this is the call site in that function, not the inlined
    /// body's line. `frames(pc)` has every level; its last element equals this.
    pub fn source_line(&self, pc: u64) -> Option<SourceLine> {
        self.frames(pc).pop()
    }

    /// The logical frames at `pc`, innermost first: inlined callees, then the function that
    /// contains them. One element when nothing is inlined at `pc` (or the inline tree is not
    /// available), empty when `pc` is not in any function or its line tables are unreadable.
    pub fn frames(&self, pc: u64) -> Vec<SourceLine> {
        let Some(f) = self.func_for_pc(pc) else {
            return Vec::new();
        };
        self.frames_in(&f, pc)
    }

    /// Like [`Pclntab::frames`] for a function already looked up.
    pub fn frames_in(&self, f: &FuncInfo, pc: u64) -> Vec<SourceLine> {
        let mut out = Vec::new();
        let Some(raw) = self.raw_func(f) else {
            return out;
        };
        let tree = self.inline_tree(&raw);
        let mut cur = pc;
        for _ in 0..MAX_INLINE_DEPTH {
            let Some((file, line)) = self.file_line(&raw, f.entry, cur) else {
                return out;
            };
            let call = tree.and_then(|tree| {
                let ix = self.pcvalue(raw.pcdata_offset(PCDATA_INL_TREE_INDEX)?, f.entry, cur)?;
                self.inlined_call(tree, ix)
            });
            let Some((name_off, parent_pc)) = call else {
                out.push(SourceLine {
                    function: f.name.clone(),
                    file,
                    line,
                });
                return out;
            };
            out.push(SourceLine {
                function: self.name_at(name_off).unwrap_or_else(|| "?".to_string()),
                file,
                line,
            });
            match u64::try_from(parent_pc)
                .ok()
                .and_then(|p| f.entry.checked_add(p))
            {
                Some(next) if f.contains(next) => cur = next,
                // A parent pc outside the function: corrupt tree, stop here.
                _ => return out,
            }
        }
        out // depth bound hit: a cyclic or corrupt tree
    }

    /// Line of the `func` keyword (Go 1.20+ tables only).
    pub fn start_line(&self, f: &FuncInfo) -> Option<u32> {
        if self.version == TableVersion::Go118 {
            return None;
        }
        let raw = self.raw_func(f)?;
        let line = read_u32(raw.bytes, 36)? as i32;
        u32::try_from(line).ok().filter(|&l| l > 0)
    }

    /// The runtime's `abi.FuncID` of `f` (0 for ordinary functions; special values mark
    /// goexit, mcall, systemstack, … where unwinding must stop).
    pub fn func_id(&self, f: &FuncInfo) -> Option<u8> {
        let raw = self.raw_func(f)?;
        raw.bytes.get(self.version.func_id_offset()).copied()
    }

    /// SP delta (frame size so far) at `pc` in `f`, from the pcsp table.
    pub fn sp_delta(&self, f: &FuncInfo, pc: u64) -> Option<i32> {
        let raw = self.raw_func(f)?;
        self.pcvalue(raw.field(16)?, f.entry, pc)
    }

    /// Value of PCDATA table `table` at `pc` in `f` (e.g. 1 = stack map index); None when the
    /// function has no such table.
    pub fn pcdata(&self, f: &FuncInfo, table: u32, pc: u64) -> Option<i32> {
        let raw = self.raw_func(f)?;
        self.pcvalue(raw.pcdata_offset(table)?, f.entry, pc)
    }

    /// Link-time address of FUNCDATA `index` of `f` (e.g. 1 = locals pointer maps), when present
    /// and the `go:func.*` base is known.
    pub fn funcdata_addr(&self, f: &FuncInfo, index: u32) -> Option<u64> {
        let raw = self.raw_func(f)?;
        let (base, _) = self.gofunc?;
        base.checked_add(u64::from(raw.funcdata_offset(index)?))
    }

    // ---- internals ----

    /// (entryoff, funcoff) of ftab entry `i` (i == nfunc is the end sentinel).
    fn ftab_entry(&self, i: usize) -> Option<(u32, u32)> {
        let at = i.checked_mul(FTAB_ENTRY_SIZE)?;
        Some((
            read_u32(self.pclntable, at)?,
            read_u32(self.pclntable, at + 4)?,
        ))
    }

    fn func_at(&self, i: usize) -> Option<FuncInfo> {
        if i >= self.nfunc {
            return None;
        }
        let (entryoff, func_off) = self.ftab_entry(i)?;
        let (next, _) = self.ftab_entry(i + 1)?;
        let name = self.raw_name(func_off)?;
        Some(FuncInfo {
            name: String::from_utf8_lossy(name).into_owned(),
            entry: self.text_start.checked_add(u64::from(entryoff))?,
            end: self.text_start.checked_add(u64::from(next))?,
            func_off,
        })
    }

    fn raw_name(&self, func_off: u32) -> Option<&'data [u8]> {
        let name_off = read_u32(self.pclntable, (func_off as usize).checked_add(4)?)?;
        cstr(self.funcnametab, name_off)
    }

    fn name_at(&self, name_off: u32) -> Option<String> {
        cstr(self.funcnametab, name_off).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn raw_func(&self, f: &FuncInfo) -> Option<RawFunc<'data>> {
        let bytes = self.pclntable.get(f.func_off as usize..)?;
        if bytes.len() < self.version.func_header_size() {
            return None;
        }
        Some(RawFunc {
            bytes,
            version: self.version,
        })
    }

    fn file_line(&self, raw: &RawFunc<'_>, entry: u64, pc: u64) -> Option<(String, u32)> {
        let fileno = self.pcvalue(raw.field(20)?, entry, pc)?;
        let line = self.pcvalue(raw.field(24)?, entry, pc)?;
        let line = u32::try_from(line).ok()?;
        let file = self.file_name(raw.field(32)?, fileno)?;
        Some((String::from_utf8_lossy(file).into_owned(), line))
    }

    /// File `fileno` of compilation unit `cu` (the function's cuOffset into cutab).
    fn file_name(&self, cu: u32, fileno: i32) -> Option<&'data [u8]> {
        if cu == u32::MAX {
            return None;
        }
        let index = (cu as usize).checked_add(usize::try_from(fileno).ok()?)?;
        let file_off = read_u32(self.cutab, index.checked_mul(4)?)?;
        if file_off == u32::MAX {
            return None;
        }
        cstr(self.filetab, file_off)
    }

    /// The function's inline tree (from its FUNCDATA_InlTree to the end of gofunc's bytes).
    fn inline_tree(&self, raw: &RawFunc<'_>) -> Option<&'data [u8]> {
        let (_, bytes) = self.gofunc?;
        bytes.get(raw.funcdata_offset(FUNCDATA_INL_TREE)? as usize..)
    }

    /// (callee name offset, parentPc) of inline tree entry `ix`; None for ix < 0 (not inlined).
    fn inlined_call(&self, tree: &[u8], ix: i32) -> Option<(u32, i32)> {
        let ix = usize::try_from(ix).ok()?;
        let size = self.version.inlined_call_size();
        let at = ix.checked_mul(size)?;
        let entry = tree.get(at..at.checked_add(size)?)?;
        let name_off = read_u32(entry, self.version.inlined_call_name_offset())?;
        let parent_pc = read_u32(entry, self.version.inlined_call_parent_pc_offset())? as i32;
        Some((name_off, parent_pc))
    }

    /// Value of the pc-value table at `table_off` in pctab for `pc` in a function starting at
    /// `entry`. None when there is no table (offset 0), `pc` is outside it, or it is corrupt.
    fn pcvalue(&self, table_off: u32, entry: u64, pc: u64) -> Option<i32> {
        if table_off == 0 {
            return None;
        }
        let table = self.pctab.get(table_off as usize..)?;
        pcvalue_lookup(table, entry, pc, u64::from(self.header.min_lc))
    }
}

/// One `_func` record (header plus pcdata/funcdata arrays, and whatever follows).
struct RawFunc<'a> {
    bytes: &'a [u8],
    version: TableVersion,
}

impl RawFunc<'_> {
    /// A u32 field of the fixed header at byte offset `off`.
    fn field(&self, off: usize) -> Option<u32> {
        read_u32(self.bytes, off)
    }
    fn npcdata(&self) -> u32 {
        self.field(28).unwrap_or(0)
    }
    fn nfuncdata(&self) -> u8 {
        self.bytes
            .get(self.version.nfuncdata_offset())
            .copied()
            .unwrap_or(0)
    }
    fn pcdata_offset(&self, table: u32) -> Option<u32> {
        if table >= self.npcdata() {
            return None;
        }
        let at = self.version.func_header_size() + 4 * table as usize;
        self.field(at).filter(|&off| off != 0)
    }
    fn funcdata_offset(&self, index: u32) -> Option<u32> {
        if index >= u32::from(self.nfuncdata()) {
            return None;
        }
        let at = (self.npcdata() as usize)
            .checked_add(index as usize)?
            .checked_mul(4)?
            .checked_add(self.version.func_header_size())?;
        self.field(at).filter(|&off| off != u32::MAX)
    }
}

/// Decodes a uint32 uvarint at `*pos`, advancing it. None when truncated or longer than five
/// bytes.
pub(crate) fn read_uvarint32(data: &[u8], pos: &mut usize) -> Option<u32> {
    let mut value = 0u32;
    for i in 0..MAX_VARINT_BYTES {
        let byte = *data.get(*pos + i)?;
        value |= u32::from(byte & 0x7f).wrapping_shl(7 * i as u32);
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Some(value);
        }
    }
    None
}

fn zigzag(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// Iterates the (start pc, end pc, value) runs of a pc-value table for a function at `entry`.
pub(crate) struct PcValueRuns<'a> {
    data: &'a [u8],
    pos: usize,
    pc: u64,
    value: i32,
    first: bool,
    quantum: u64,
    done: bool,
}

impl<'a> PcValueRuns<'a> {
    pub(crate) fn new(data: &'a [u8], entry: u64, quantum: u64) -> Self {
        PcValueRuns {
            data,
            pos: 0,
            pc: entry,
            value: -1,
            first: true,
            quantum,
            done: false,
        }
    }
}

impl Iterator for PcValueRuns<'_> {
    type Item = (u64, u64, i32);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // Every step consumes at least two bytes, so this ends within data.len() / 2 steps.
        let step = (|| {
            let uvdelta = read_uvarint32(self.data, &mut self.pos)?;
            if uvdelta == 0 && !self.first {
                return None;
            }
            let pcdelta = read_uvarint32(self.data, &mut self.pos)?;
            let start = self.pc;
            let end = start.checked_add(u64::from(pcdelta).checked_mul(self.quantum)?)?;
            self.first = false;
            self.value = self.value.wrapping_add(zigzag(uvdelta));
            self.pc = end;
            Some((start, end, self.value))
        })();
        if step.is_none() {
            self.done = true;
        }
        step
    }
}

/// Value at `pc` of the pc-value table `data` of a function at `entry`.
pub(crate) fn pcvalue_lookup(data: &[u8], entry: u64, pc: u64, quantum: u64) -> Option<i32> {
    if pc < entry {
        return None;
    }
    PcValueRuns::new(data, entry, quantum)
        .find(|&(_, end, _)| pc < end)
        .map(|(_, _, value)| value)
}

/// The NUL-terminated string at `off` in `table` (without the NUL).
fn cstr(table: &[u8], off: u32) -> Option<&[u8]> {
    let rest = table.get(off as usize..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..len])
}

fn read_u32(data: &[u8], off: usize) -> Option<u32> {
    let bytes = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(data: &[u8], off: usize) -> Option<u64> {
    let bytes = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// File bytes from `vaddr` to the end of the file-backed part of its PT_LOAD segment.
fn bytes_to_segment_end<'data>(image: &ElfImage<'data>, vaddr: u64) -> Option<&'data [u8]> {
    let seg = image
        .segments()
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)?;
    let len = usize::try_from(seg.vaddr + seg.filesz - vaddr).ok()?;
    image.bytes_at(vaddr, len)
}

/// Where the pcHeader is, and the bytes from it to the end of its section or segment.
fn locate<'data>(image: &ElfImage<'data>) -> Result<(u64, &'data [u8]), InspectError> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(section) = image.section(name)
            && Pclntab::parse(section.addr, section.data, 0).is_ok()
        {
            return Ok((section.addr, section.data));
        }
    }
    // No section of its own: scan the file-backed segments for a pcHeader, read-only and
    // writable data first (.data.rel.ro of an externally linked PIE), then executable ones.
    let mut segments: Vec<_> = image.segments().to_vec();
    segments.sort_by_key(|s| s.executable);
    for seg in segments {
        let Some(bytes) = usize::try_from(seg.filesz)
            .ok()
            .and_then(|len| image.bytes_at(seg.vaddr, len))
        else {
            continue;
        };
        if let Some((off, _)) = scan_for_pcheader(bytes) {
            return Ok((seg.vaddr + off as u64, &bytes[off..]));
        }
    }
    Err(not_go(
        "no .gopclntab section and no pcHeader magic in the file",
    ))
}

/// First 4-aligned offset in `bytes` where a fully valid pclntab starts.
fn scan_for_pcheader(bytes: &[u8]) -> Option<(usize, TableVersion)> {
    let mut off = 0;
    while off + PcHeader::SIZE <= bytes.len() {
        let magic = read_u32(bytes, off)?;
        if (magic == MAGIC_GO120 || magic == MAGIC_GO118)
            && let Ok(tab) = Pclntab::parse(0, &bytes[off..], 0)
        {
            return Some((off, tab.version()));
        }
        off += 4;
    }
    None
}

fn text_start_without_moduledata(image: &ElfImage<'_>, pcheader_addr: u64) -> Option<u64> {
    if image.has_symtab()
        && let Some(sym) = image
            .symbols()
            .into_iter()
            .find(|s| s.name == "runtime.text")
    {
        return Some(sym.addr);
    }
    if let Some(text) = image.read_word(pcheader_addr + 24).filter(|&t| t != 0) {
        return Some(text);
    }
    image.section(".text").map(|s| s.addr)
}

/// Fuzz entry point: parses arbitrary bytes as a pclntab and exercises every lookup. Must never
/// panic, loop without bound or allocate beyond a small multiple of the input.
pub fn fuzz_parse(data: &[u8]) {
    const TEXT: u64 = 0x40_1000;
    const BASE: u64 = 0x4c_0000;
    let Ok(tab) = Pclntab::parse(BASE, data, TEXT) else {
        return;
    };
    // The same bytes double as go:func.*, so inline trees get decoded too.
    let tab = tab.with_gofunc(BASE, data);
    let _ = (tab.text_start(), tab.text_end(), tab.func_count());
    for f in tab.functions().take(16) {
        let _ = tab.func_by_name(&f.name);
        let _ = tab.functions_named(&f.name).take(2).count();
        let _ = tab.start_line(&f);
        let _ = tab.func_id(&f);
        let _ = tab.funcdata_addr(&f, 1);
        let mid = f.entry + (f.end - f.entry) / 2;
        for pc in [f.entry, mid, f.end.wrapping_sub(1)] {
            let _ = tab.func_for_pc(pc);
            let _ = tab.source_line(pc);
            let _ = tab.frames(pc);
            let _ = tab.sp_delta(&f, pc);
            let _ = tab.pcdata(&f, 1, pc);
        }
    }
    for pc in [0, TEXT - 1, tab.text_end(), u64::MAX] {
        let _ = tab.func_for_pc(pc);
        let _ = tab.frames(pc);
    }
    let _ = tab.func_by_name("runtime.gopark");
    // Offset arithmetic near the top of the address space.
    if let Ok(high) = Pclntab::parse(BASE, data, u64::MAX - 0xffff) {
        for f in high.functions().take(4) {
            let _ = high.frames(f.entry);
            let _ = high.func_for_pc(f.end.wrapping_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- a hand-built table ----

    const TEXT: u64 = 0x40_1000;
    const PCHEADER: u64 = 0x4c_0000;
    const GOFUNC: u64 = 0x4a_0000;

    fn uvarint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Encodes (value, length in bytes) runs the way the Go linker does.
    fn encode_pcvalue(runs: &[(i32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = -1i32;
        for (i, &(value, len)) in runs.iter().enumerate() {
            let delta = value - prev;
            let zz = ((delta << 1) ^ (delta >> 31)) as u32;
            assert!(i == 0 || zz != 0, "consecutive runs must differ");
            uvarint(&mut out, zz);
            uvarint(&mut out, len);
            prev = value;
        }
        out.push(0);
        out
    }

    /// PCDATA_InlTreeIndex runs and the inline tree: (callee, parentPc).
    type SynInline = (Vec<(i32, u32)>, Vec<(&'static str, i32)>);

    struct SynFunc {
        name: &'static str,
        size: u32,
        start_line: i32,
        pcfile: Vec<(i32, u32)>,
        pcln: Vec<(i32, u32)>,
        inline: Option<SynInline>,
    }

    fn synthetic_funcs() -> Vec<SynFunc> {
        vec![
            // main.outer inlines main.inner (called at +0x08, main.go:10), which inlines
            // main.leaf (called at +0x1c, inner.go:3).
            SynFunc {
                name: "main.outer",
                size: 0x40,
                start_line: 9,
                pcfile: vec![(0, 0x10), (1, 0x20), (0, 0x10)],
                pcln: vec![(10, 0x10), (30, 0x08), (3, 0x08), (4, 0x10), (12, 0x10)],
                inline: Some((
                    vec![(-1, 0x10), (1, 0x08), (0, 0x18), (-1, 0x10)],
                    vec![("main.inner", 0x08), ("main.leaf", 0x1c)],
                )),
            },
            SynFunc {
                name: "main.other",
                size: 0x20,
                start_line: 19,
                pcfile: vec![(0, 0x20)],
                pcln: vec![(20, 0x10), (21, 0x10)],
                inline: None,
            },
            // File index 2 maps to u32::MAX in cutab: no file.
            SynFunc {
                name: "main.nofile",
                size: 0x10,
                start_line: 40,
                pcfile: vec![(2, 0x10)],
                pcln: vec![(41, 0x10)],
                inline: None,
            },
        ]
    }

    /// Builds (pclntab bytes, go:func.* bytes) in the given layout.
    fn build(version: TableVersion, funcs: &[SynFunc]) -> (Vec<u8>, Vec<u8>) {
        let mut names = Vec::new();
        let mut name_off = HashMap::new();
        let mut intern = |names: &mut Vec<u8>, name: &'static str| -> u32 {
            *name_off.entry(name).or_insert_with(|| {
                let off = names.len() as u32;
                names.extend_from_slice(name.as_bytes());
                names.push(0);
                off
            })
        };
        let filetab = b"main.go\0inner.go\0".to_vec();
        let cutab: Vec<u8> = [0u32, 8, u32::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut pctab = vec![0u8]; // offset 0 means "no table"
        let mut gofunc = Vec::new();
        let mut records = Vec::new();
        let mut ftab = Vec::new();
        let ftab_size = (funcs.len() + 1) * FTAB_ENTRY_SIZE;
        let mut entry = 0u32;
        for f in funcs {
            let mut table = |runs: &[(i32, u32)]| {
                let off = pctab.len() as u32;
                pctab.extend(encode_pcvalue(runs));
                off
            };
            let pcfile = table(&f.pcfile);
            let pcln = table(&f.pcln);
            let pcsp = table(&[(0, 1), (8, f.size - 1)]);
            let (pcdata, funcdata) = match &f.inline {
                Some((index_runs, tree)) => {
                    let index = table(index_runs);
                    let tree_off = gofunc.len() as u32;
                    for &(callee, parent_pc) in tree {
                        let callee = intern(&mut names, callee);
                        match version {
                            TableVersion::Go120 => {
                                gofunc.extend([0u8; 4]);
                                gofunc.extend(callee.to_le_bytes());
                                gofunc.extend(parent_pc.to_le_bytes());
                                gofunc.extend(1i32.to_le_bytes());
                            }
                            TableVersion::Go118 => {
                                gofunc.extend([0u8; 4]);
                                gofunc.extend(0i32.to_le_bytes());
                                gofunc.extend(0i32.to_le_bytes());
                                gofunc.extend(callee.to_le_bytes());
                                gofunc.extend(parent_pc.to_le_bytes());
                            }
                        }
                    }
                    (
                        vec![0, 0, index],
                        vec![u32::MAX, u32::MAX, u32::MAX, tree_off],
                    )
                }
                None => (vec![], vec![]),
            };
            let name = intern(&mut names, f.name);
            let func_off = (ftab_size + records.len()) as u32;
            ftab.extend(entry.to_le_bytes());
            ftab.extend(func_off.to_le_bytes());
            for v in [
                entry,
                name,
                0,
                0,
                pcsp,
                pcfile,
                pcln,
                pcdata.len() as u32,
                0,
            ] {
                records.extend(v.to_le_bytes());
            }
            if version == TableVersion::Go120 {
                records.extend(f.start_line.to_le_bytes());
            }
            records.extend([0, 0, 0, funcdata.len() as u8]);
            for v in pcdata.iter().chain(&funcdata) {
                records.extend(v.to_le_bytes());
            }
            entry += f.size;
        }
        ftab.extend(entry.to_le_bytes());
        ftab.extend(0u32.to_le_bytes());

        let magic = match version {
            TableVersion::Go118 => MAGIC_GO118,
            TableVersion::Go120 => MAGIC_GO120,
        };
        let funcname_offset = PcHeader::SIZE;
        let cu_offset = funcname_offset + names.len();
        let filetab_offset = cu_offset + cutab.len();
        let pctab_offset = filetab_offset + filetab.len();
        let pcln_offset = pctab_offset + pctab.len();
        let mut out = Vec::new();
        out.extend(magic.to_le_bytes());
        out.extend([0, 0, 1, 8]);
        for v in [
            funcs.len(),
            2,
            TEXT as usize,
            funcname_offset,
            cu_offset,
            filetab_offset,
            pctab_offset,
            pcln_offset,
        ] {
            out.extend((v as u64).to_le_bytes());
        }
        for part in [names, cutab, filetab, pctab, ftab, records] {
            out.extend(part);
        }
        (out, gofunc)
    }

    fn line(function: &str, file: &str, line: u32) -> SourceLine {
        SourceLine {
            function: function.into(),
            file: file.into(),
            line,
        }
    }

    #[test]
    fn decodes_recorded_pcvalue_bytes() {
        // value 10 for 5 bytes, 12 for 11 bytes, 3 for 496 bytes (two-byte pc delta), end.
        let table = [0x16, 0x05, 0x04, 0x0b, 0x11, 0xf0, 0x03, 0x00];
        let at = |pc| pcvalue_lookup(&table, 0x1000, pc, 1);
        assert_eq!(at(0x0fff), None);
        assert_eq!(at(0x1000), Some(10));
        assert_eq!(at(0x1004), Some(10));
        assert_eq!(at(0x1005), Some(12));
        assert_eq!(at(0x100f), Some(12));
        assert_eq!(at(0x1010), Some(3));
        assert_eq!(at(0x11ff), Some(3));
        assert_eq!(at(0x1200), None);
        let runs: Vec<_> = PcValueRuns::new(&table, 0x1000, 1).collect();
        assert_eq!(
            runs,
            vec![
                (0x1000, 0x1005, 10),
                (0x1005, 0x1010, 12),
                (0x1010, 0x1200, 3)
            ]
        );
        // The pc delta is scaled by the instruction quantum (minLC).
        assert_eq!(pcvalue_lookup(&table, 0x1000, 0x1009, 2), Some(10));
        // A first value delta of zero (value stays -1) does not end the table.
        assert_eq!(
            pcvalue_lookup(&[0x00, 0x04, 0x02, 0x04, 0x00], 0, 5, 1),
            Some(0)
        );
        assert_eq!(
            pcvalue_lookup(&[0x00, 0x04, 0x02, 0x04, 0x00], 0, 3, 1),
            Some(-1)
        );
        // Truncated tables end where the bytes end.
        assert_eq!(pcvalue_lookup(&table[..3], 0x1000, 0x1001, 1), Some(10));
        assert_eq!(pcvalue_lookup(&table[..3], 0x1000, 0x1005, 1), None);
        assert_eq!(pcvalue_lookup(&[], 0x1000, 0x1000, 1), None);
        // The encoder used by the synthetic tables agrees with the recorded bytes.
        assert_eq!(encode_pcvalue(&[(10, 5), (12, 11), (3, 496)]), table);
    }

    #[test]
    fn decodes_varints_and_zigzag() {
        let mut pos = 0;
        assert_eq!(read_uvarint32(&[0x7f], &mut pos), Some(127));
        assert_eq!(pos, 1);
        let mut pos = 0;
        assert_eq!(read_uvarint32(&[0x80, 0x01], &mut pos), Some(128));
        assert_eq!(pos, 2);
        let mut pos = 0;
        let max = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(read_uvarint32(&max, &mut pos), Some(u32::MAX));
        assert_eq!(pos, 5);
        // Six bytes cannot be a uint32; a continuation bit at the end is truncation.
        let mut pos = 0;
        assert_eq!(read_uvarint32(&[0x80; 6], &mut pos), None);
        assert_eq!(read_uvarint32(&[0x80], &mut 0), None);
        assert_eq!(read_uvarint32(&[], &mut 0), None);
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(1), -1);
        assert_eq!(zigzag(2), 1);
        assert_eq!(zigzag(17), -9);
        assert_eq!(zigzag(u32::MAX), i32::MIN);
        assert_eq!(zigzag(u32::MAX - 1), i32::MAX);
    }

    #[test]
    fn parses_a_synthetic_table_in_both_layouts() {
        for version in [TableVersion::Go118, TableVersion::Go120] {
            let (bytes, gofunc) = build(version, &synthetic_funcs());
            let tab = Pclntab::parse(PCHEADER, &bytes, TEXT)
                .unwrap()
                .with_gofunc(GOFUNC, &gofunc);
            assert_eq!(tab.version(), version);
            assert_eq!(tab.func_count(), 3);
            assert_eq!(tab.text_start(), TEXT);
            assert_eq!(tab.text_end(), TEXT + 0x70);
            let funcs: Vec<_> = tab
                .functions()
                .map(|f| (f.name.clone(), f.entry - TEXT, f.end - TEXT))
                .collect();
            assert_eq!(
                funcs,
                vec![
                    ("main.outer".to_string(), 0, 0x40),
                    ("main.other".to_string(), 0x40, 0x60),
                    ("main.nofile".to_string(), 0x60, 0x70),
                ]
            );

            let other = tab.func_by_name("main.other").unwrap();
            assert_eq!(other.entry, TEXT + 0x40);
            assert!(tab.func_by_name("main.inner").is_none(), "inlined only");
            assert!(tab.func_by_name("main").is_none());

            assert_eq!(tab.func_for_pc(TEXT - 1), None);
            assert_eq!(tab.func_for_pc(TEXT).unwrap().name, "main.outer");
            assert_eq!(tab.func_for_pc(TEXT + 0x3f).unwrap().name, "main.outer");
            assert_eq!(tab.func_for_pc(TEXT + 0x40), Some(other.clone()));
            assert_eq!(tab.func_for_pc(TEXT + 0x6f).unwrap().name, "main.nofile");
            assert_eq!(tab.func_for_pc(TEXT + 0x70), None);
            assert_eq!(tab.func_for_pc(0), None);
            assert_eq!(tab.func_for_pc(u64::MAX), None);

            assert_eq!(tab.sp_delta(&other, TEXT + 0x40), Some(0));
            assert_eq!(tab.sp_delta(&other, TEXT + 0x41), Some(8));
            let expect_start = (version == TableVersion::Go120).then_some(19);
            assert_eq!(tab.start_line(&other), expect_start);
        }
    }

    #[test]
    fn expands_inlined_frames_innermost_first() {
        for version in [TableVersion::Go118, TableVersion::Go120] {
            let (bytes, gofunc) = build(version, &synthetic_funcs());
            let tab = Pclntab::parse(PCHEADER, &bytes, TEXT)
                .unwrap()
                .with_gofunc(GOFUNC, &gofunc);
            // Not inlined.
            assert_eq!(
                tab.frames(TEXT + 0x04),
                vec![line("main.outer", "main.go", 10)]
            );
            // Two levels: leaf inside inner inside outer.
            assert_eq!(
                tab.frames(TEXT + 0x12),
                vec![
                    line("main.leaf", "inner.go", 30),
                    line("main.inner", "inner.go", 3),
                    line("main.outer", "main.go", 10),
                ]
            );
            assert_eq!(
                tab.frames(TEXT + 0x22),
                vec![
                    line("main.inner", "inner.go", 4),
                    line("main.outer", "main.go", 10),
                ]
            );
            assert_eq!(
                tab.frames(TEXT + 0x35),
                vec![line("main.outer", "main.go", 12)]
            );
            // source_line is the outermost frame: the call site in the physical function.
            assert_eq!(
                tab.source_line(TEXT + 0x12),
                Some(line("main.outer", "main.go", 10))
            );
            assert_eq!(
                tab.source_line(TEXT + 0x5f),
                Some(line("main.other", "main.go", 21))
            );
            // A cutab entry of u32::MAX means no file: no position.
            assert_eq!(tab.source_line(TEXT + 0x60), None);
            assert!(tab.frames(TEXT + 0x60).is_empty());
            assert!(tab.frames(TEXT + 0x70).is_empty());

            // Without go:func.* the tree is unknown: one frame, with the innermost position.
            let bare = Pclntab::parse(PCHEADER, &bytes, TEXT).unwrap();
            assert_eq!(
                bare.frames(TEXT + 0x12),
                vec![line("main.outer", "inner.go", 30)]
            );
        }
    }

    #[test]
    fn a_cyclic_inline_tree_is_cut_off() {
        let mut funcs = synthetic_funcs();
        // main.inner's call site now points back into main.inner itself.
        funcs[0].inline.as_mut().unwrap().1[0].1 = 0x20;
        let (bytes, gofunc) = build(TableVersion::Go120, &funcs);
        let tab = Pclntab::parse(PCHEADER, &bytes, TEXT)
            .unwrap()
            .with_gofunc(GOFUNC, &gofunc);
        let frames = tab.frames(TEXT + 0x22);
        assert_eq!(frames.len(), MAX_INLINE_DEPTH);
        assert!(frames.iter().all(|f| f.function == "main.inner"));

        // A call site outside the function stops the walk too.
        let mut funcs = synthetic_funcs();
        funcs[0].inline.as_mut().unwrap().1[0].1 = 0x1000;
        let (bytes, gofunc) = build(TableVersion::Go120, &funcs);
        let tab = Pclntab::parse(PCHEADER, &bytes, TEXT)
            .unwrap()
            .with_gofunc(GOFUNC, &gofunc);
        assert_eq!(
            tab.frames(TEXT + 0x22),
            vec![line("main.inner", "inner.go", 4)]
        );
    }

    #[test]
    fn rejects_invalid_headers() {
        let (good, _) = build(TableVersion::Go120, &synthetic_funcs());
        assert!(Pclntab::parse(PCHEADER, &good, TEXT).is_ok());
        let patched = |at: usize, value: &[u8]| {
            let mut bytes = good.clone();
            bytes[at..at + value.len()].copy_from_slice(value);
            Pclntab::parse(PCHEADER, &bytes, TEXT).map(|_| ())
        };
        let bad = [
            ("old magic", patched(0, &0xffff_fffau32.to_le_bytes())),
            ("garbage magic", patched(0, &0x1234_5678u32.to_le_bytes())),
            ("pad1", patched(4, &[1])),
            ("pad2", patched(5, &[1])),
            ("minLC", patched(6, &[4])),
            ("ptrSize", patched(7, &[4])),
            ("nfunc 0", patched(8, &0u64.to_le_bytes())),
            ("nfunc huge", patched(8, &(u64::MAX / 2).to_le_bytes())),
            ("funcname inside header", patched(32, &8u64.to_le_bytes())),
            ("cu before funcname", patched(40, &72u64.to_le_bytes())),
            ("pcln past end", patched(64, &(1u64 << 40).to_le_bytes())),
            ("ftab unsorted", {
                // Entry 0 now starts after entry 1 (at 0x40).
                let pcln = read_u64(&good, 64).unwrap() as usize;
                patched(pcln, &0x50u32.to_le_bytes())
            }),
            ("funcoff past end", {
                let pcln = read_u64(&good, 64).unwrap() as usize;
                patched(pcln + 4, &0xffff_0000u32.to_le_bytes())
            }),
            (
                "text overflow",
                Pclntab::parse(PCHEADER, &good, u64::MAX - 0x10).map(|_| ()),
            ),
        ];
        for (what, result) in bad {
            assert!(
                matches!(result, Err(InspectError::NotGo(_))),
                "{what}: {result:?}"
            );
        }
        assert!(Pclntab::parse(PCHEADER, &[], TEXT).is_err());
        assert!(Pclntab::parse(PCHEADER, &good[..PcHeader::SIZE], TEXT).is_err());
    }

    #[test]
    fn truncated_and_corrupted_tables_never_panic() {
        for version in [TableVersion::Go118, TableVersion::Go120] {
            let (good, gofunc) = build(version, &synthetic_funcs());
            for len in 0..good.len() {
                fuzz_parse(&good[..len]);
                if let Ok(tab) = Pclntab::parse(PCHEADER, &good[..len], TEXT) {
                    let tab = tab.with_gofunc(GOFUNC, &gofunc[..len.min(gofunc.len())]);
                    for pc in (TEXT..TEXT + 0x71).step_by(3) {
                        let _ = tab.frames(pc);
                    }
                }
            }
            for i in 0..good.len() {
                for flip in [0xff, 0x80, 0x01] {
                    let mut bytes = good.clone();
                    bytes[i] ^= flip;
                    fuzz_parse(&bytes);
                    if let Ok(tab) = Pclntab::parse(PCHEADER, &bytes, TEXT) {
                        let tab = tab.with_gofunc(GOFUNC, &gofunc);
                        for pc in (TEXT..TEXT + 0x71).step_by(5) {
                            let _ = tab.frames(pc);
                            let _ = tab.func_for_pc(pc);
                        }
                    }
                }
            }
        }
        fuzz_parse(&[]);
        fuzz_parse(&[0xf1, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn scan_finds_a_header_behind_decoys() {
        let (good, _) = build(TableVersion::Go120, &synthetic_funcs());
        let mut blob = vec![0u8; 8];
        // A decoy: right magic, wrong minLC.
        blob.extend(MAGIC_GO120.to_le_bytes());
        blob.extend([0, 0, 2, 8]);
        blob.extend([0u8; 68]);
        let at = blob.len();
        blob.extend(&good);
        assert_eq!(scan_for_pcheader(&blob), Some((at, TableVersion::Go120)));
        assert_eq!(scan_for_pcheader(&blob[..at]), None);
    }

    // ---- the real binaries of the test matrix ----

    mod real {
        use std::collections::{BTreeMap, HashMap};
        use std::io::Write;
        use std::process::{Command, Stdio};

        use super::super::*;
        use crate::testbins::{self, TestBinary};

        struct Loaded {
            bin: TestBinary,
            bytes: Vec<u8>,
        }

        impl Loaded {
            fn new(bin: TestBinary) -> Loaded {
                let bytes = std::fs::read(&bin.path)
                    .unwrap_or_else(|e| panic!("{}: {e}", bin.path.display()));
                Loaded { bin, bytes }
            }
            fn ctx(&self) -> String {
                format!(
                    "{} ({} {} {})",
                    self.bin.path.display(),
                    self.bin.fixture,
                    self.bin.go,
                    self.bin.variant
                )
            }
        }

        fn open(bytes: &[u8]) -> (ElfImage<'_>, Pclntab<'_>) {
            let image = ElfImage::parse(bytes).unwrap();
            let tab = Pclntab::find(&image).unwrap();
            (image, tab)
        }

        #[test]
        fn every_binary_has_a_consistent_table() {
            for loaded in testbins::all().into_iter().map(Loaded::new) {
                let ctx = loaded.ctx();
                let (image, tab) = open(&loaded.bytes);
                let go = GoVersion::parse(&loaded.bin.go).expect("manifest go version");
                assert!(tab.func_count() > 1000, "{ctx}: {}", tab.func_count());
                assert!(tab.moduledata().is_some(), "{ctx}: no moduledata");
                assert!(tab.gofunc.is_some(), "{ctx}: no go:func.*");
                let expect = if go.at_least(1, 20) {
                    TableVersion::Go120
                } else {
                    TableVersion::Go118
                };
                assert_eq!(tab.version(), expect, "{ctx}");

                // The header's own textStart: relocated in PIE, gone in 1.26.
                let header_text = image.read_word(tab.pcheader_addr() + 24).unwrap();
                if go.at_least(1, 26) {
                    assert_eq!(header_text, 0, "{ctx}");
                } else {
                    assert_eq!(header_text, tab.text_start(), "{ctx}");
                }

                for name in [
                    "runtime.gopark",
                    "runtime.chansend",
                    "runtime.selectgo",
                    "runtime.newproc1",
                    "runtime.goexit",
                    "main.main",
                ] {
                    let f = tab
                        .func_by_name(name)
                        .unwrap_or_else(|| panic!("{ctx}: {name} missing"));
                    assert!(f.entry < f.end, "{ctx}: {name}");
                    assert_eq!(tab.func_for_pc(f.entry).as_ref(), Some(&f), "{ctx}");
                    assert_eq!(tab.func_for_pc(f.end - 1).as_ref(), Some(&f), "{ctx}");
                }
                let main = tab.func_by_name("main.main").unwrap();
                let at_entry = tab.source_line(main.entry).unwrap();
                assert_eq!(at_entry.function, "main.main", "{ctx}");
                assert!(at_entry.file.ends_with("main.go"), "{ctx}: {at_entry:?}");
                if go.at_least(1, 20) {
                    let start = tab.start_line(&main).unwrap();
                    assert!(start > 0 && start <= at_entry.line, "{ctx}");
                }

                // Every function resolves, entries are increasing, and every pc maps back.
                let mut prev_end = tab.text_start();
                let mut count = 0;
                for f in tab.functions() {
                    assert!(f.entry >= prev_end && f.entry <= f.end, "{ctx}: {f:?}");
                    prev_end = f.end;
                    count += 1;
                }
                assert_eq!(count, tab.func_count(), "{ctx}");

                if image.has_symtab() {
                    let symbols = image.symbols();
                    let text = symbols.iter().find(|s| s.name == "runtime.text").unwrap();
                    assert_eq!(tab.text_start(), text.addr, "{ctx}");
                    // pclntab names carry no ABI suffix: `x.abi0` in .symtab is `x` here.
                    let mut by_name: HashMap<String, Vec<u64>> = HashMap::new();
                    for f in tab.functions() {
                        by_name.entry(f.name).or_default().push(f.entry);
                    }
                    let mut compared = 0;
                    for sym in symbols.iter().filter(|s| s.is_function) {
                        let name = sym.name.strip_suffix(".abi0").unwrap_or(&sym.name);
                        let Some(entries) = by_name.get(name) else {
                            continue;
                        };
                        assert!(
                            entries.contains(&sym.addr),
                            "{ctx}: {} at {:#x}, pclntab has {entries:x?}",
                            sym.name,
                            sym.addr
                        );
                        compared += 1;
                    }
                    assert!(compared > 1000, "{ctx}: only {compared} symbols compared");
                    // Duplicated names are an ABI wrapper and the body: func_by_name picks the
                    // body.
                    let file_at = |pc| tab.source_line(pc).map(|l| l.file);
                    for (name, entries) in by_name.iter().filter(|(_, e)| e.len() > 1) {
                        let chosen = tab.func_by_name(name).unwrap().entry;
                        assert!(entries.contains(&chosen), "{ctx}: {name}");
                        let generated = entries
                            .iter()
                            .filter(|&&e| file_at(e).as_deref() == Some("<autogenerated>"))
                            .count();
                        if generated < entries.len() {
                            assert_ne!(
                                file_at(chosen).as_deref(),
                                Some("<autogenerated>"),
                                "{ctx}: {name}: chose the wrapper of {entries:x?}"
                            );
                        }
                        assert_eq!(tab.functions_named(name).count(), entries.len(), "{ctx}");
                    }
                }
            }
        }

        /// The fallbacks used when no moduledata is found give the same text start, except where
        /// they cannot: Go 1.26 zeroes the header field, and a stripped external (cgo) link puts
        /// C code at the start of .text.
        #[test]
        fn text_start_fallbacks_agree_with_moduledata() {
            for loaded in testbins::all().into_iter().map(Loaded::new) {
                let ctx = loaded.ctx();
                let (image, tab) = open(&loaded.bytes);
                let go = GoVersion::parse(&loaded.bin.go).unwrap();
                let fallback = text_start_without_moduledata(&image, tab.pcheader_addr());
                let reliable = image.has_symtab()
                    || !go.at_least(1, 26)
                    || !loaded.bin.variant.contains("cgo");
                if reliable {
                    assert_eq!(fallback, Some(tab.text_start()), "{ctx}");
                }
            }
        }

        /// Names and text offsets of every function.
        fn layout(bytes: &[u8]) -> BTreeMap<String, u64> {
            let (_, tab) = open(bytes);
            tab.functions()
                .map(|f| (f.name, f.entry - tab.text_start()))
                .collect()
        }

        /// Stripping removes .symtab and DWARF but not a byte of code, so names and text offsets
        /// are identical. A PIE is compiled differently (code sizes change), so against the plain
        /// build only the set of function names is the same; a stripped PIE matches its PIE.
        #[test]
        fn stripped_and_pie_builds_match_their_unstripped_builds() {
            let all = testbins::all();
            let find = |fixture: &str, release: &str, variant: &str| {
                all.iter()
                    .find(|b| b.fixture == fixture && b.release == release && b.variant == variant)
            };
            let mut compared = 0;
            for plain in all.iter().filter(|b| b.variant == "plain") {
                let base = layout(&std::fs::read(&plain.path).unwrap());
                let pie = find(&plain.fixture, &plain.release, "pie")
                    .map(|b| (b, layout(&std::fs::read(&b.path).unwrap())));
                for (variant, reference, same_code) in [
                    ("stripped", Some((plain, &base)), true),
                    ("pie", Some((plain, &base)), false),
                    ("pie-stripped", Some((plain, &base)), false),
                    ("pie-stripped", pie.as_ref().map(|(b, l)| (*b, l)), true),
                ] {
                    let (Some(other), Some((reference, expected))) =
                        (find(&plain.fixture, &plain.release, variant), reference)
                    else {
                        continue;
                    };
                    let got = layout(&std::fs::read(&other.path).unwrap());
                    let ctx = format!("{} vs {}", other.path.display(), reference.path.display());
                    assert!(
                        got.keys().eq(expected.keys()),
                        "{ctx}: function names differ"
                    );
                    if same_code {
                        let differ = got.iter().filter(|(k, v)| expected[*k] != **v).count();
                        assert_eq!(differ, 0, "{ctx}: text offsets differ");
                    }
                    compared += 1;
                }
            }
            assert!(
                compared > 0,
                "no stripped/pie variants next to a plain build"
            );
        }

        /// A pc inside runtime.gopark where acquirem() is inlined: present in every release.
        #[test]
        fn inlined_frames_in_the_runtime() {
            for loaded in testbins::all().into_iter().map(Loaded::new) {
                let ctx = loaded.ctx();
                let (_, tab) = open(&loaded.bytes);
                let gopark = tab.func_by_name("runtime.gopark").unwrap();
                let inlined: Vec<_> = (gopark.entry..gopark.end)
                    .map(|pc| (pc, tab.frames(pc)))
                    .filter(|(_, frames)| {
                        frames.len() == 2 && frames[0].function == "runtime.acquirem"
                    })
                    .collect();
                assert!(!inlined.is_empty(), "{ctx}: acquirem not inlined in gopark");
                for (pc, frames) in inlined {
                    assert!(frames[0].file.ends_with("runtime/runtime1.go"), "{ctx}");
                    assert_eq!(frames[1].function, "runtime.gopark", "{ctx}");
                    assert!(frames[1].file.ends_with("runtime/proc.go"), "{ctx}");
                    assert_eq!(tab.source_line(pc).as_ref(), Some(&frames[1]), "{ctx}");
                }
                // Outside inlined code the two views agree.
                assert_eq!(tab.frames(gopark.entry).len(), 1, "{ctx}");
            }
        }

        /// The pcltest fixture: `outer` (main.go:28) inlines `inner` (main.go:23-25) at line 29.
        #[test]
        fn inlined_frames_in_user_code() {
            for loaded in testbins::all().into_iter().map(Loaded::new) {
                let ctx = loaded.ctx();
                let (_, tab) = open(&loaded.bytes);
                let (Some(outer), None) = (
                    tab.func_by_name("main.outer"),
                    tab.func_by_name("main.inner"),
                ) else {
                    continue; // another fixture program
                };
                let inner_pcs: Vec<_> = (outer.entry..outer.end)
                    .map(|pc| tab.frames(pc))
                    .filter(|f| f.len() == 2)
                    .collect();
                assert!(!inner_pcs.is_empty(), "{ctx}");
                for frames in inner_pcs {
                    assert_eq!(frames[0].function, "main.inner", "{ctx}");
                    assert_eq!(frames[0].line, 24, "{ctx}");
                    assert_eq!(frames[1].function, "main.outer", "{ctx}");
                    assert_eq!(frames[1].line, 29, "{ctx}");
                }
                if tab.version() == TableVersion::Go120 {
                    assert_eq!(tab.start_line(&outer), Some(28), "{ctx}");
                }
            }
        }

        /// pc → function and file:line against `go tool addr2line` (debug/gosym). gosym knows
        /// nothing of inlining: it reports the physical function with the innermost position,
        /// i.e. our source_line's function and frames()[0]'s file:line.
        #[test]
        fn positions_agree_with_go_tool_addr2line() {
            let all = testbins::all();
            let bin = all
                .iter()
                .filter(|b| b.variant == "plain")
                .max_by_key(|b| GoVersion::parse(&b.go))
                .expect("a plain build in the matrix");
            let bytes = std::fs::read(&bin.path).unwrap();
            let (_, tab) = open(&bytes);
            // Every main.* pc, and a spread of pcs over the rest of the text.
            let mut pcs = Vec::new();
            for (i, f) in tab.functions().enumerate() {
                if f.name.starts_with("main.") {
                    pcs.extend(f.entry..f.end);
                } else if i % 7 == 0 {
                    let len = f.end - f.entry;
                    pcs.extend([f.entry, f.entry + len / 3, f.entry + len / 2, f.end - 1]);
                }
            }
            let input: String = pcs.iter().map(|pc| format!("{pc:#x}\n")).collect();
            let mut child = Command::new("go")
                .args(["tool", "addr2line"])
                .arg(&bin.path)
                .env("GOTOOLCHAIN", "local")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("running `go tool addr2line` (is Go on PATH?)");
            let mut stdin = child.stdin.take().unwrap();
            let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
            let output = child.wait_with_output().unwrap();
            writer.join().unwrap().unwrap();
            assert!(output.status.success(), "addr2line failed");
            let text = String::from_utf8(output.stdout).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), pcs.len() * 2);
            let mut mismatches = Vec::new();
            let mut known = HashMap::new();
            for (pc, pair) in pcs.iter().zip(lines.chunks(2)) {
                let (func, pos) = (pair[0], pair[1]);
                let frames = tab.frames(*pc);
                let got = match (frames.first(), frames.last()) {
                    (Some(inner), Some(outer)) => {
                        format!("{} {}:{}", outer.function, inner.file, inner.line)
                    }
                    // Alignment padding after a function's code: in the function's range
                    // (as for the runtime's findfunc), but not covered by its line table.
                    _ => match tab.func_for_pc(*pc) {
                        Some(f) => format!("{} :-1", f.name),
                        None => "? ?:0".to_string(),
                    },
                };
                let want = format!("{func} {pos}");
                if got != want {
                    mismatches.push(format!("{pc:#x}: got {got}, addr2line {want}"));
                }
                *known.entry(func != "?").or_insert(0) += 1;
            }
            assert!(
                mismatches.is_empty(),
                "{} of {} pcs differ in {}:\n{}",
                mismatches.len(),
                pcs.len(),
                bin.path.display(),
                mismatches[..mismatches.len().min(20)].join("\n")
            );
            assert!(known.get(&true).copied().unwrap_or(0) > 1000);
        }
    }
}
