//! A read-only view of a Go ELF executable: sections, symbols, the virtual-address → file mapping
//! and relocated pointer words. Bytes in, facts out; no syscalls.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Rela, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::error::InspectError;

/// One PT_LOAD segment: where `[vaddr, vaddr+memsz)` comes from in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// A symbol from `.symtab` (absent in binaries linked with `-s`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSymbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    pub is_function: bool,
}

/// A section, by link-time address.
#[derive(Clone, Copy, Debug)]
pub struct SectionRef<'data> {
    pub addr: u64,
    pub data: &'data [u8],
}

pub struct ElfImage<'data> {
    data: &'data [u8],
    file: ElfFile64<'data, Endianness>,
    segments: Vec<LoadSegment>,
    /// R_X86_64_RELATIVE targets → addends. In PIE binaries pointer words in data are relocated
    /// at load time, and the file may hold zero where the pointer will be.
    relative_relocs: HashMap<u64, u64>,
}

impl<'data> ElfImage<'data> {
    pub fn parse(data: &'data [u8]) -> Result<Self, InspectError> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(InspectError::NotElf("no ELF magic".into()));
        }
        // e_ident[EI_CLASS]: 2 = 64-bit.
        if data.get(4) != Some(&2) {
            return Err(InspectError::UnsupportedArch("32-bit ELF".into()));
        }
        let file = ElfFile64::<Endianness>::parse(data)
            .map_err(|e| InspectError::NotElf(format!("malformed ELF: {e}")))?;
        let header = file.elf_header();
        let endian = file.endian();
        let machine = header.e_machine(endian);
        if machine != elf::EM_X86_64 {
            return Err(InspectError::UnsupportedArch(format!(
                "ELF machine {machine:?} (parkscope supports amd64 / x86-64 only)"
            )));
        }
        let segments = header
            .program_headers(endian, data)
            .map_err(|e| InspectError::NotElf(format!("bad program headers: {e}")))?
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                memsz: ph.p_memsz(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                executable: ph.p_flags(endian).contains(elf::PF_X),
            })
            .collect();
        let relative_relocs = read_relative_relocs(&file, data);
        Ok(ElfImage {
            data,
            file,
            segments,
            relative_relocs,
        })
    }

    pub fn bytes(&self) -> &'data [u8] {
        self.data
    }

    /// Position-independent executables (ET_DYN) are loaded at a random base.
    pub fn is_pie(&self) -> bool {
        self.file.elf_header().e_type(self.file.endian()) == elf::ET_DYN
    }

    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.file.section_by_name(name).is_some()
    }

    pub fn has_symtab(&self) -> bool {
        self.file.section_by_name(".symtab").is_some()
    }

    pub fn has_dwarf(&self) -> bool {
        self.has_section(".debug_info") || self.has_section(".zdebug_info")
    }

    /// The raw (possibly compressed) data of a section, with its link-time address.
    pub fn section(&self, name: &str) -> Option<SectionRef<'data>> {
        let section = self.file.section_by_name(name)?;
        let data = section.data().ok()?;
        Some(SectionRef {
            addr: section.address(),
            data,
        })
    }

    /// Section contents after decompression (DWARF sections are zlib-compressed by Go's linker).
    pub fn section_uncompressed(&self, name: &str) -> Option<std::borrow::Cow<'data, [u8]>> {
        let section = self.file.section_by_name(name)?;
        section.uncompressed_data().ok()
    }

    /// All sections with names, for scans that look for a structure by its magic.
    pub fn sections(&self) -> Vec<(String, SectionRef<'data>)> {
        self.file
            .sections()
            .filter_map(|s| {
                let name = s.name().ok()?.to_string();
                let data = s.data().ok()?;
                Some((
                    name,
                    SectionRef {
                        addr: s.address(),
                        data,
                    },
                ))
            })
            .collect()
    }

    pub fn symbols(&self) -> Vec<ElfSymbol> {
        self.file
            .symbols()
            .filter_map(|s| {
                let name = s.name().ok()?;
                if name.is_empty() {
                    return None;
                }
                Some(ElfSymbol {
                    name: name.to_string(),
                    addr: s.address(),
                    size: s.size(),
                    is_function: s.kind() == SymbolKind::Text,
                })
            })
            .collect()
    }

    /// File offset of a link-time virtual address; this is what a uprobe attaches to
    /// (vaddr − PT_LOAD.vaddr + PT_LOAD.offset).
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        file_offset_in(&self.segments, vaddr)
    }

    /// `len` bytes of the file image at a link-time virtual address, when all of them are backed
    /// by file contents (not .bss).
    pub fn bytes_at(&self, vaddr: u64, len: usize) -> Option<&'data [u8]> {
        let seg = self
            .segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)?;
        let start = (vaddr - seg.vaddr + seg.offset) as usize;
        let end = start.checked_add(len)?;
        let seg_end = (seg.offset + seg.filesz) as usize;
        if end > seg_end {
            return None;
        }
        self.data.get(start..end)
    }

    /// The pointer-sized word a running process will see at `vaddr` before applying its load
    /// bias: the RELATIVE relocation's addend when there is one, else the file's bytes.
    pub fn read_word(&self, vaddr: u64) -> Option<u64> {
        if let Some(addend) = self.relative_relocs.get(&vaddr) {
            return Some(*addend);
        }
        let raw = self.bytes_at(vaddr, 8)?;
        Some(u64::from_le_bytes(raw.try_into().ok()?))
    }

    /// All RELATIVE relocation targets whose addend equals `value`: finds pointers to a known
    /// address in PIE data where the file itself holds zeros.
    pub fn relocated_words_equal_to(&self, value: u64) -> impl Iterator<Item = u64> + '_ {
        self.relative_relocs
            .iter()
            .filter(move |(_, addend)| **addend == value)
            .map(|(target, _)| *target)
    }
}

fn file_offset_in(segments: &[LoadSegment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
        .map(|s| vaddr - s.vaddr + s.offset)
}

fn read_relative_relocs(file: &ElfFile64<'_, Endianness>, data: &[u8]) -> HashMap<u64, u64> {
    let endian = file.endian();
    let mut relocs = HashMap::new();
    let Ok(sections) = file.elf_header().sections(endian, data) else {
        return relocs;
    };
    for section in sections.iter() {
        if section.sh_type(endian) != elf::SHT_RELA {
            continue;
        }
        let Ok(Some((entries, _))) = section.rela(endian, data) else {
            continue;
        };
        for rela in entries {
            if rela.r_type(endian, false) == elf::R_X86_64_RELATIVE {
                relocs.insert(rela.r_offset(endian), rela.r_addend(endian) as u64);
            }
        }
    }
    relocs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_offset_maps_through_the_containing_segment() {
        let segments = [
            LoadSegment {
                vaddr: 0x400000,
                memsz: 0x1000,
                offset: 0,
                filesz: 0x1000,
                executable: true,
            },
            LoadSegment {
                vaddr: 0x402000,
                memsz: 0x3000,
                offset: 0x1000,
                filesz: 0x800,
                executable: false,
            },
        ];
        assert_eq!(file_offset_in(&segments, 0x400123), Some(0x123));
        assert_eq!(file_offset_in(&segments, 0x402010), Some(0x1010));
        // .bss part of the second segment has no file bytes.
        assert_eq!(file_offset_in(&segments, 0x402900), None);
        assert_eq!(file_offset_in(&segments, 0x3fffff), None);
    }

    #[test]
    fn rejects_non_elf_input() {
        assert!(matches!(
            ElfImage::parse(b"#!/bin/sh\n"),
            Err(InspectError::NotElf(_))
        ));
    }
}
