//! /proc/PID/maps: where the executable was loaded, so link-time addresses of a PIE binary can be
//! turned into run-time addresses (load bias = run-time base − link-time base).

use std::os::unix::fs::MetadataExt;

use crate::error::InspectError;
use crate::gobin::elf::ElfImage;
use crate::remote::process::{self, proc_error};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        readable: perms.starts_with('r'),
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset,
        inode,
        path,
    })
}

/// Load bias of the executable whose file has inode `exe_inode`: the mapping of file offset 0
/// starts at run-time base; `first_load_vaddr` is the link-time address of that offset
/// (page-aligned vaddr of the first PT_LOAD). 0 for non-PIE executables.
pub fn load_bias(maps: &[Mapping], exe_inode: u64, first_load_vaddr: u64) -> Option<u64> {
    let base = maps
        .iter()
        .filter(|m| m.inode == exe_inode && m.offset == 0)
        .map(|m| m.start)
        .min()?;
    Some(base.wrapping_sub(first_load_vaddr & !0xfff))
}

/// Load bias of a running process's executable: 0 for non-PIE, else where the kernel put it.
pub fn executable_load_bias(pid: u32, image: &ElfImage<'_>) -> Result<u64, InspectError> {
    if !image.is_pie() {
        return Ok(0);
    }
    let exe = process::exe_path(pid)?;
    let inode = std::fs::metadata(&exe)
        .map_err(|e| process::proc_error(pid, "the executable", e))?
        .ino();
    let first_vaddr = image.segments().iter().map(|s| s.vaddr).min().unwrap_or(0);
    load_bias(&read_maps(pid)?, inode, first_vaddr).ok_or(InspectError::ProcessGone { pid })
}

pub fn read_maps(pid: u32) -> Result<Vec<Mapping>, InspectError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| proc_error(pid, "the memory map", e))?;
    Ok(parse_maps(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d4c8a00000-55d4c8b25000 r--p 00000000 fd:01 1234 /srv/app
55d4c8b25000-55d4c8d00000 r-xp 00125000 fd:01 1234 /srv/app
c000000000-c000400000 rw-p 00000000 00:00 0 
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn parses_lines_and_finds_the_pie_load_bias() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 4);
        assert!(maps[1].executable && !maps[0].executable);
        assert_eq!(maps[3].path, "[stack]");
        assert_eq!(load_bias(&maps, 1234, 0), Some(0x55d4c8a00000));
        // Non-PIE: linked at 0x400000 and loaded there.
        let exec = parse_maps("00400000-00500000 r-xp 00000000 fd:01 77 /bin/x\n");
        assert_eq!(load_bias(&exec, 77, 0x400000), Some(0));
        assert_eq!(load_bias(&exec, 78, 0x400000), None);
    }
}
