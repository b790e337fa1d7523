#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| parkscope::gobin::offsets::dwarf::fuzz_dwarf_bytes(data));
