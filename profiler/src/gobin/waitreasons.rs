//! The runtime's own wait-reason texts ("chan receive", "sync.Mutex.Lock", …), read from
//! `runtime.waitReasonStrings` in the binary, so numbering changes between Go releases never
//! matter: `g.waitreason` indexes this array directly.

use crate::gobin::elf::{ElfImage, ElfSymbol};

const SYMBOL: &str = "runtime.waitReasonStrings";
/// Entry 1 and 2 have been these texts in every release since 1.18; a stripped binary's array
/// is found by them.
const ANCHORS: [&str; 2] = ["GC assist marking", "IO wait"];
/// Far more than any release has (47 in 1.26): bounds the scan of a damaged array.
const MAX_REASONS: usize = 256;
const MAX_REASON_LEN: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasonSource {
    /// `runtime.waitReasonStrings` by its symbol.
    Symbol,
    /// Found in .data by its anchor entries (stripped binary).
    Scan,
    /// The per-release table generated from real toolchains.
    Table,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitReasons {
    pub names: Vec<String>,
    pub source: ReasonSource,
    /// Link-time address of the array, when read from the binary.
    pub addr: Option<u64>,
}

impl WaitReasons {
    pub fn name(&self, reason: u8) -> Option<&str> {
        self.names.get(usize::from(reason)).map(String::as_str)
    }

    /// The numeric value of a reason by its text, e.g. "chan send" → 15 (1.21) or 20 (1.26).
    pub fn value_of(&self, text: &str) -> Option<u8> {
        self.names
            .iter()
            .position(|n| n == text)
            .and_then(|i| u8::try_from(i).ok())
    }
}

pub fn read(image: &ElfImage<'_>, symbols: &[ElfSymbol]) -> Option<WaitReasons> {
    if let Some(sym) = symbols.iter().find(|s| s.name == SYMBOL) {
        let count = (sym.size / 16) as usize;
        if let Some(names) = read_array(image, sym.addr, Some(count)) {
            return Some(WaitReasons {
                names,
                source: ReasonSource::Symbol,
                addr: Some(sym.addr),
            });
        }
    }
    scan(image)
}

fn read_string(image: &ElfImage<'_>, entry: u64) -> Option<String> {
    let ptr = image.read_word(entry)?;
    let len = image.read_word(entry + 8)?;
    if len == 0 {
        return Some(String::new());
    }
    if len > MAX_REASON_LEN {
        return None;
    }
    let bytes = image.bytes_at(ptr, len as usize)?;
    if !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Read `count` entries, or (when unknown) entries until one is not a plausible reason text.
fn read_array(image: &ElfImage<'_>, addr: u64, count: Option<usize>) -> Option<Vec<String>> {
    let limit = count.unwrap_or(MAX_REASONS).min(MAX_REASONS);
    let mut names = Vec::with_capacity(limit);
    for i in 0..limit {
        match read_string(image, addr + 16 * i as u64) {
            // Only entry 0 ("") may be empty.
            Some(name) if i == 0 || !name.is_empty() => names.push(name),
            _ if count.is_none() => break,
            _ => return None,
        }
    }
    (names.get(1).map(String::as_str) == Some(ANCHORS[0])).then_some(names)
}

fn scan(image: &ElfImage<'_>) -> Option<WaitReasons> {
    for (name, section) in image.sections() {
        if !matches!(name.as_str(), ".data" | ".data.rel.ro" | ".noptrdata") {
            continue;
        }
        let words = section.data.len() / 8;
        for word in 0..words.saturating_sub(6) {
            let addr = section.addr + 8 * word as u64;
            // Cheap length checks before any string reads.
            if image.read_word(addr + 24) != Some(ANCHORS[0].len() as u64)
                || image.read_word(addr + 40) != Some(ANCHORS[1].len() as u64)
                || image.read_word(addr + 8) != Some(0)
            {
                continue;
            }
            if read_string(image, addr + 16).as_deref() != Some(ANCHORS[0])
                || read_string(image, addr + 32).as_deref() != Some(ANCHORS[1])
            {
                continue;
            }
            if let Some(names) = read_array(image, addr, None) {
                return Some(WaitReasons {
                    names,
                    source: ReasonSource::Scan,
                    addr: Some(addr),
                });
            }
        }
    }
    None
}
