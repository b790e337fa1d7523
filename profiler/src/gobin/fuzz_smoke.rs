//! The quick, always-on form of fuzzing (cargo-fuzz targets in fuzz/ run the long form): every
//! byte parser gets mutated copies of real sections from the fixture matrix — flipped bytes,
//! truncations, overwritten length fields — and must return without panicking.

use crate::gobin::elf::ElfImage;
use crate::gobin::{buildinfo, offsets, pclntab};
use crate::testbins;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut data = original.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(data.len());
                if let Some(b) = data.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
        1 => data.truncate(rng.below(data.len())),
        2 => {
            // A huge little-endian word where a length or offset may live.
            let i = rng.below(data.len().saturating_sub(8)) & !7;
            if let Some(w) = data.get_mut(i..i + 8) {
                w.copy_from_slice(&(rng.next() | 0xffff_0000_0000_0000).to_le_bytes());
            }
        }
        _ => {
            let i = rng.below(data.len());
            let len = rng.below(64);
            let end = (i + len).min(data.len());
            for b in &mut data[i..end] {
                *b = rng.next() as u8;
            }
        }
    }
    data
}

/// One plain binary per Go release of the matrix.
fn seeds() -> Vec<Vec<u8>> {
    let mut seen = std::collections::BTreeSet::new();
    testbins::variant("plain")
        .into_iter()
        .filter(|b| seen.insert(b.release.clone()))
        .map(|b| std::fs::read(&b.path).unwrap())
        .collect()
}

#[test]
fn parsers_survive_mutated_real_sections() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for bytes in seeds() {
        let image = ElfImage::parse(&bytes).unwrap();
        let info = image.section(".go.buildinfo").unwrap().data;
        for _ in 0..2000 {
            buildinfo::fuzz_parse(&mutate(&mut rng, info));
        }
        let pcln = image.section(".gopclntab").unwrap().data;
        // Mutations near the header and tables hit the interesting paths; the rest is
        // name and line data.
        let head = &pcln[..pcln.len().min(256 << 10)];
        for _ in 0..150 {
            pclntab::fuzz_parse(&mutate(&mut rng, head));
        }
        let debug_info = image.section_uncompressed(".debug_info").unwrap();
        let abbrev = image.section_uncompressed(".debug_abbrev").unwrap();
        let info_head = &debug_info[..debug_info.len().min(64 << 10)];
        for _ in 0..150 {
            offsets::fuzz_dwarf(&mutate(&mut rng, info_head), &mutate(&mut rng, &abbrev));
        }
    }
}

#[test]
fn parsers_survive_random_bytes() {
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let len = rng.below(4096);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        buildinfo::fuzz_parse(&data);
        pclntab::fuzz_parse(&data);
        offsets::fuzz_dwarf_bytes(&data);
    }
}
