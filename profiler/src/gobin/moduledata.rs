//! `runtime.firstmoduledata`: the runtime's own index of a Go executable (where the function
//! table, text, data and bss are). Later stages use its data/bss bounds as GC roots and its
//! `text` as the base of every function-table offset.
//!
//! Field offsets (amd64), read from the DWARF of `runtime.moduledata` built by each toolchain
//! (1.18, 1.19, 1.20, 1.21, 1.22, 1.23, 1.24, 1.25, 1.26, 1.27):
//!
//! | field                                   | 1.18–1.19     | 1.20–1.26     | 1.27          |
//! |-----------------------------------------|---------------|---------------|---------------|
//! | pcHeader, funcnametab, cutab, filetab   | 0, 8, 32, 56  | same          | same          |
//! | pctab, pclntable, ftab, findfunctab     | 80, 104, 128, 152 | same      | same          |
//! | minpc, maxpc, text, etext               | 160 … 184     | same          | same          |
//! | noptrdata … enoptrbss (8 words)         | 192 … 248     | same          | same          |
//! | covctrs, ecovctrs                       | —             | 256, 264      | 256, 264      |
//! | end, gcdata, gcbss                      | 256, 264, 272 | 272, 280, 288 | 272, 280, 288 |
//! | types                                   | 280           | 296           | 296           |
//! | etypes                                  | 288           | 304           | 312 (after typedesclen) |
//! | rodata, gofunc                          | 296, 304      | 312, 320      | 336, 344 (after itaboffset, itabsize) |
//!
//! Later fields move in nearly every release (1.23 moved `bad`, 1.26 added `epclntab`) and are
//! not read. The magic of the pcHeader tells 1.18–1.19 from 1.20+; 1.27 kept the 1.20 magic, so
//! 1.20–1.26 and 1.27+ are told apart by validating the tail: `end == enoptrbss`,
//! `types <= etypes`, and gcdata, gcbss, types, rodata and gofunc all point at file bytes. Each
//! layout fails that on the other's struct (a 1.27 `etypes` read at 304 is a length; a 1.26
//! `gofunc` read at 344 is a slice length of 1). [`ModuleData::find_for_version`] skips the
//! guessing when the Go version is known.
//!
//! All addresses are link-time addresses. In a PIE the pointer words are relocated at load time;
//! they are read through [`ElfImage::read_word`], which returns the RELATIVE relocation's addend.

use crate::gobin::elf::ElfImage;
use crate::gobin::pclntab::{MAGIC_GO118, MAGIC_GO120, PcHeader};
use crate::gobin::version::GoVersion;

/// Which `runtime.moduledata` layout a binary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleLayout {
    /// Go 1.18–1.19: no coverage counters.
    Go118,
    /// Go 1.20–1.26.
    Go120,
    /// Go 1.27+: `typedesclen`, `itaboffset`, `itabsize` added before rodata and gofunc.
    Go127,
}

impl ModuleLayout {
    /// The layout a release uses; None before 1.18, which parkscope cannot read.
    pub fn for_version(go: &GoVersion) -> Option<ModuleLayout> {
        if go.at_least(1, 27) {
            Some(ModuleLayout::Go127)
        } else if go.at_least(1, 20) {
            Some(ModuleLayout::Go120)
        } else if go.at_least(1, 18) {
            Some(ModuleLayout::Go118)
        } else {
            None
        }
    }

    /// Layouts that go with a pcHeader magic, newest first.
    fn for_magic(magic: u32) -> &'static [ModuleLayout] {
        match magic {
            MAGIC_GO118 => &[ModuleLayout::Go118],
            MAGIC_GO120 => &[ModuleLayout::Go127, ModuleLayout::Go120],
            _ => &[],
        }
    }

    fn offsets(self) -> &'static TailOffsets {
        match self {
            ModuleLayout::Go118 => &TAIL_GO118,
            ModuleLayout::Go120 => &TAIL_GO120,
            ModuleLayout::Go127 => &TAIL_GO127,
        }
    }
}

/// The parts of `runtime.moduledata` that parkscope uses, as link-time addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleData {
    /// Address of the moduledata itself.
    pub addr: u64,
    pub layout: ModuleLayout,
    pub pcheader: u64,
    pub funcnametab: u64,
    pub cutab: u64,
    pub filetab: u64,
    pub pctab: u64,
    pub pclntable: u64,
    pub ftab: u64,
    /// Number of `functab` entries (nfunc + 1: the last one holds the end of the last function).
    pub ftab_len: u64,
    pub findfunctab: u64,
    /// First and last-plus-one pc covered by the function table (minpc == text).
    pub minpc: u64,
    pub maxpc: u64,
    pub text: u64,
    pub etext: u64,
    pub noptrdata: u64,
    pub enoptrdata: u64,
    pub data: u64,
    pub edata: u64,
    pub bss: u64,
    pub ebss: u64,
    pub noptrbss: u64,
    pub enoptrbss: u64,
    pub end: u64,
    /// GC pointer bitmaps of .data and .bss (one bit per word).
    pub gcdata: u64,
    pub gcbss: u64,
    pub types: u64,
    pub etypes: u64,
    pub rodata: u64,
    /// Base of FUNCDATA offsets (`go:func.*`); inline trees and stack maps live there.
    pub gofunc: u64,
}

/// Where the version-dependent tail of the struct sits.
struct TailOffsets {
    end: u64,
    gcdata: u64,
    gcbss: u64,
    types: u64,
    etypes: u64,
    rodata: u64,
    gofunc: u64,
}

const TAIL_GO118: TailOffsets = TailOffsets {
    end: 256,
    gcdata: 264,
    gcbss: 272,
    types: 280,
    etypes: 288,
    rodata: 296,
    gofunc: 304,
};

const TAIL_GO120: TailOffsets = TailOffsets {
    end: 272,
    gcdata: 280,
    gcbss: 288,
    types: 296,
    etypes: 304,
    rodata: 312,
    gofunc: 320,
};

const TAIL_GO127: TailOffsets = TailOffsets {
    end: 272,
    gcdata: 280,
    gcbss: 288,
    types: 296,
    etypes: 312,
    rodata: 336,
    gofunc: 344,
};

/// The pcHeader a moduledata must point to, and the layouts to try.
struct Header<'a> {
    addr: u64,
    pc: PcHeader,
    layouts: &'a [ModuleLayout],
}

/// Bound on candidate addresses tried, so a binary full of words equal to the pcHeader address
/// cannot make discovery slow.
const MAX_CANDIDATES: usize = 64;

impl ModuleData {
    /// Finds `runtime.firstmoduledata` for the pclntab whose pcHeader is at `pcheader_addr`.
    ///
    /// Tries, in order: the `runtime.firstmoduledata` symbol, the `.go.module` section (Go 1.26+),
    /// pointer words equal to `pcheader_addr` (RELATIVE relocations for PIE, then file words in
    /// the non-executable segments). Every candidate is validated against the pcHeader.
    /// The layout is recognised by validation (see the module docs).
    pub fn find(image: &ElfImage<'_>, pcheader_addr: u64) -> Option<ModuleData> {
        Self::find_with(image, pcheader_addr, None)
    }

    /// Like [`ModuleData::find`], reading the layout of release `go` (a release newer than any
    /// known one is read like the newest).
    pub fn find_for_version(
        image: &ElfImage<'_>,
        pcheader_addr: u64,
        go: &GoVersion,
    ) -> Option<ModuleData> {
        Self::find_with(image, pcheader_addr, Some(ModuleLayout::for_version(go)?))
    }

    fn find_with(
        image: &ElfImage<'_>,
        pcheader_addr: u64,
        layout: Option<ModuleLayout>,
    ) -> Option<ModuleData> {
        let header = PcHeader::parse(image.bytes_at(pcheader_addr, PcHeader::SIZE)?).ok()?;
        let layouts: &[ModuleLayout] = match layout {
            Some(layout) => &[layout][..],
            None => ModuleLayout::for_magic(header.magic),
        };
        let header = Header {
            addr: pcheader_addr,
            pc: header,
            layouts,
        };
        let try_at = |addr: u64| Self::read_at(image, addr, &header);

        if image.has_symtab()
            && let Some(sym) = image
                .symbols()
                .into_iter()
                .find(|s| s.name == "runtime.firstmoduledata")
            && let Some(md) = try_at(sym.addr)
        {
            return Some(md);
        }
        if let Some(section) = image.section(".go.module")
            && let Some(md) = try_at(section.addr)
        {
            return Some(md);
        }
        Self::find_by_pointer(image, &header)
    }

    /// Discovery without symbols or sections: a word holding the pcHeader address (a RELATIVE
    /// relocation's addend in a PIE, the file's bytes otherwise) that starts a valid moduledata.
    fn find_by_pointer(image: &ElfImage<'_>, header: &Header<'_>) -> Option<ModuleData> {
        let pcheader_addr = header.addr;
        let mut candidates: Vec<u64> = image.relocated_words_equal_to(pcheader_addr).collect();
        candidates.sort_unstable();
        let needle = pcheader_addr.to_le_bytes();
        for seg in image.segments().iter().filter(|s| !s.executable) {
            let Some(bytes) = usize::try_from(seg.filesz)
                .ok()
                .and_then(|len| image.bytes_at(seg.vaddr, len))
            else {
                continue;
            };
            // Pointer words are 8-aligned in memory.
            let skip = (seg.vaddr.wrapping_neg() % 8) as usize;
            let Some(aligned) = bytes.get(skip..) else {
                continue;
            };
            candidates.extend(
                aligned
                    .as_chunks::<8>()
                    .0
                    .iter()
                    .enumerate()
                    .filter(|(_, word)| **word == needle)
                    .map(|(i, _)| seg.vaddr + (skip + i * 8) as u64)
                    .take(MAX_CANDIDATES),
            );
        }
        candidates
            .into_iter()
            .take(MAX_CANDIDATES)
            .find_map(|addr| Self::read_at(image, addr, header))
    }

    /// Reads and validates a moduledata candidate at `addr` in the first of `header.layouts`
    /// that fits: its table pointers must agree with the pcHeader's offsets, its address ranges
    /// must be ordered, and its layout-dependent tail must make sense.
    fn read_at(image: &ElfImage<'_>, addr: u64, header: &Header<'_>) -> Option<ModuleData> {
        let word = |off: u64| image.read_word(addr.checked_add(off)?);
        let pc = &header.pc;
        let at = |off: u64| header.addr.checked_add(off);
        let fixed_ok = word(0)? == header.addr
            && Some(word(8)?) == at(pc.funcname_offset)
            && Some(word(32)?) == at(pc.cu_offset)
            && Some(word(56)?) == at(pc.filetab_offset)
            && Some(word(80)?) == at(pc.pctab_offset)
            && Some(word(104)?) == at(pc.pcln_offset)
            && word(128)? == word(104)?
            && Some(word(136)?) == pc.nfunc.checked_add(1);
        if !fixed_ok {
            return None;
        }
        header.layouts.iter().find_map(|&layout| {
            let tail = layout.offsets();
            let md = ModuleData {
                addr,
                layout,
                pcheader: word(0)?,
                funcnametab: word(8)?,
                cutab: word(32)?,
                filetab: word(56)?,
                pctab: word(80)?,
                pclntable: word(104)?,
                ftab: word(128)?,
                ftab_len: word(136)?,
                findfunctab: word(152)?,
                minpc: word(160)?,
                maxpc: word(168)?,
                text: word(176)?,
                etext: word(184)?,
                noptrdata: word(192)?,
                enoptrdata: word(200)?,
                data: word(208)?,
                edata: word(216)?,
                bss: word(224)?,
                ebss: word(232)?,
                noptrbss: word(240)?,
                enoptrbss: word(248)?,
                end: word(tail.end)?,
                gcdata: word(tail.gcdata)?,
                gcbss: word(tail.gcbss)?,
                types: word(tail.types)?,
                etypes: word(tail.etypes)?,
                rodata: word(tail.rodata)?,
                gofunc: word(tail.gofunc)?,
            };
            let in_file = |vaddr: u64| vaddr != 0 && image.bytes_at(vaddr, 1).is_some();
            let ok = md.text != 0
                && md.text < md.etext
                && md.minpc <= md.maxpc
                && md.noptrdata <= md.enoptrdata
                && md.data <= md.edata
                && md.bss <= md.ebss
                && md.noptrbss <= md.enoptrbss
                && md.end == md.enoptrbss
                && md.types <= md.etypes
                && [md.gcdata, md.gcbss, md.types, md.rodata, md.gofunc]
                    .into_iter()
                    .all(in_file);
            ok.then_some(md)
        })
    }

    /// Whether `addr` lies in one of the module's pointer-bearing or pointer-free data ranges
    /// (.noptrdata, .data, .bss, .noptrbss).
    pub fn contains_data(&self, addr: u64) -> bool {
        [
            (self.noptrdata, self.enoptrdata),
            (self.data, self.edata),
            (self.bss, self.ebss),
            (self.noptrbss, self.enoptrbss),
        ]
        .iter()
        .any(|&(lo, hi)| addr >= lo && addr < hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbins;

    fn section_bounds(image: &ElfImage<'_>, name: &str) -> Option<(u64, u64)> {
        let object_file = object::File::parse(image.bytes()).ok()?;
        use object::{Object, ObjectSection};
        let s = object_file.section_by_name(name)?;
        Some((s.address(), s.address() + s.size()))
    }

    #[test]
    fn finds_moduledata_in_every_test_binary() {
        for bin in testbins::all() {
            let bytes = std::fs::read(&bin.path).unwrap();
            let image = ElfImage::parse(&bytes).unwrap();
            let tab = crate::gobin::pclntab::Pclntab::find(&image)
                .unwrap_or_else(|e| panic!("{}: {e}", bin.path.display()));
            let md = ModuleData::find(&image, tab.pcheader_addr())
                .unwrap_or_else(|| panic!("{}: no moduledata", bin.path.display()));
            let ctx = format!("{} ({} {})", bin.path.display(), bin.go, bin.variant);

            // The layout recognised by validation is the release's, and asking by version
            // finds the same struct.
            let go = GoVersion::parse(&bin.go).expect("manifest go version");
            assert_eq!(Some(md.layout), ModuleLayout::for_version(&go), "{ctx}");
            assert_eq!(
                ModuleData::find_for_version(&image, tab.pcheader_addr(), &go),
                Some(md),
                "{ctx}"
            );

            assert_eq!(md.text, tab.text_start(), "{ctx}");
            // The ftab's end sentinel is the end of the last function; etext may be aligned up.
            assert!(
                tab.text_end() <= md.etext && md.etext - tab.text_end() < 64,
                "{ctx}"
            );
            assert_eq!(md.maxpc, tab.text_end(), "{ctx}");
            assert_eq!(md.minpc, md.text, "{ctx}");
            // The data ranges are exactly the Go linker's sections.
            for (name, lo, hi) in [
                (".noptrdata", md.noptrdata, md.enoptrdata),
                (".data", md.data, md.edata),
                (".bss", md.bss, md.ebss),
                (".noptrbss", md.noptrbss, md.enoptrbss),
            ] {
                let (slo, shi) = section_bounds(&image, name)
                    .unwrap_or_else(|| panic!("{ctx}: no {name} section"));
                // Exactly the section for Go's internal linker; an external linker (cgo) may
                // put C data in the same output section.
                assert!(
                    slo <= lo && lo <= hi && hi <= shi,
                    "{ctx}: {name} [{lo:#x}, {hi:#x}) outside [{slo:#x}, {shi:#x})"
                );
                if !bin.variant.contains("cgo") {
                    assert_eq!(lo, slo, "{ctx}: {name} start");
                    assert!(hi + 64 > shi, "{ctx}: {name} end {hi:#x} vs {shi:#x}");
                }
            }
            assert!(
                md.contains_data(md.addr) || image.section(".go.module").is_some(),
                "{ctx}"
            );

            if image.has_symtab() {
                let symbols = image.symbols();
                let sym = |name: &str| symbols.iter().find(|s| s.name == name).map(|s| s.addr);
                assert_eq!(Some(md.addr), sym("runtime.firstmoduledata"), "{ctx}");
                assert_eq!(Some(md.text), sym("runtime.text"), "{ctx}");
                assert_eq!(Some(md.etext), sym("runtime.etext"), "{ctx}");
                assert_eq!(Some(md.data), sym("runtime.data"), "{ctx}");
                assert_eq!(Some(md.edata), sym("runtime.edata"), "{ctx}");
                assert_eq!(Some(md.bss), sym("runtime.bss"), "{ctx}");
                assert_eq!(Some(md.ebss), sym("runtime.ebss"), "{ctx}");
                assert_eq!(Some(md.noptrbss), sym("runtime.noptrbss"), "{ctx}");
                assert_eq!(Some(md.enoptrbss), sym("runtime.enoptrbss"), "{ctx}");
                assert_eq!(Some(md.end), sym("runtime.end"), "{ctx}");
                assert_eq!(Some(md.gcdata), sym("runtime.gcdata"), "{ctx}");
                assert_eq!(Some(md.gcbss), sym("runtime.gcbss"), "{ctx}");
                assert_eq!(Some(md.types), sym("runtime.types"), "{ctx}");
                assert_eq!(Some(md.etypes), sym("runtime.etypes"), "{ctx}");
                assert_eq!(Some(md.rodata), sym("runtime.rodata"), "{ctx}");
                let gofunc = sym("go:func.*").or_else(|| sym("go.func.*"));
                assert_eq!(Some(md.gofunc), gofunc, "{ctx}");
            }
        }
    }

    #[test]
    fn discovery_by_pointer_agrees_with_the_symbol() {
        // What a stripped binary has to do (scan for the pcHeader pointer) must land on the
        // struct the symbol names.
        for bin in testbins::all() {
            let bytes = std::fs::read(&bin.path).unwrap();
            let image = ElfImage::parse(&bytes).unwrap();
            if !image.has_symtab() {
                continue;
            }
            let tab = crate::gobin::pclntab::Pclntab::find(&image).unwrap();
            let addr = tab.pcheader_addr();
            let pc = PcHeader::parse(image.bytes_at(addr, PcHeader::SIZE).unwrap()).unwrap();
            let header = Header {
                addr,
                pc,
                layouts: ModuleLayout::for_magic(pc.magic),
            };
            let by_symbol = ModuleData::find(&image, addr).unwrap();
            let by_pointer = ModuleData::find_by_pointer(&image, &header);
            assert_eq!(by_pointer, Some(by_symbol), "{}", bin.path.display());
        }
    }
}
