//! Reading another process's memory without stopping it: `process_vm_readv` (many small reads in
//! one syscall), with `/proc/PID/mem` as the fallback where that syscall is not allowed.
//!
//! The target keeps running while we read, so every reader above this layer must treat what it
//! gets as possibly torn: validate, bound loops, retry.

use std::fs::File;
use std::os::unix::fs::FileExt;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemError {
    #[error("process exited")]
    Gone,
    #[error("permission denied reading process memory (needs root or CAP_SYS_PTRACE)")]
    PermissionDenied,
    #[error("address {addr:#x} (+{len}) is not mapped")]
    Unmapped { addr: u64, len: usize },
    #[error("read of {len} bytes at {addr:#x} is too large")]
    TooLarge { addr: u64, len: usize },
}

/// Anything that can answer "what bytes are at this address": a live process or a recording.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;

    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut buf = [0u8; 8];
        self.read(addr, &mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        let mut buf = [0u8; 4];
        self.read(addr, &mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }

    fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemError> {
        if len > MAX_SINGLE_READ {
            return Err(MemError::TooLarge { addr, len });
        }
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    /// Several reads; each result independent (one unmapped address does not fail the rest).
    fn read_many(&self, requests: &mut [(u64, &mut [u8])]) -> Vec<Result<(), MemError>> {
        requests
            .iter_mut()
            .map(|(addr, buf)| self.read(*addr, buf))
            .collect()
    }
}

/// Bounds a single read so a corrupt length read from the target can't make us allocate GBs.
pub const MAX_SINGLE_READ: usize = 64 << 20;

/// Memory of a live process.
pub struct ProcessMemory {
    pid: u32,
    /// Opened lazily when process_vm_readv is refused (e.g. by a seccomp policy).
    mem_file: std::sync::OnceLock<Option<File>>,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> ProcessMemory {
        ProcessMemory {
            pid,
            mem_file: std::sync::OnceLock::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn read_vm(&self, addr: u64, buf: &mut [u8]) -> Result<usize, i32> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes exactly `buf`, which we own mutably; the kernel checks the
        // remote range against the target's mappings.
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(n as usize)
        }
    }

    fn read_proc_mem(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let file = self
            .mem_file
            .get_or_init(|| File::open(format!("/proc/{}/mem", self.pid)).ok());
        let Some(file) = file else {
            return Err(
                if std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
                    MemError::PermissionDenied
                } else {
                    MemError::Gone
                },
            );
        };
        file.read_exact_at(buf, addr)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => MemError::Gone,
                Some(libc::EPERM) | Some(libc::EACCES) => MemError::PermissionDenied,
                _ => MemError::Unmapped {
                    addr,
                    len: buf.len(),
                },
            })
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if buf.is_empty() {
            return Ok(());
        }
        if buf.len() > MAX_SINGLE_READ {
            return Err(MemError::TooLarge {
                addr,
                len: buf.len(),
            });
        }
        match self.read_vm(addr, buf) {
            Ok(n) if n == buf.len() => Ok(()),
            // A short read: the range crosses into an unmapped page.
            Ok(_) => Err(MemError::Unmapped {
                addr,
                len: buf.len(),
            }),
            Err(libc::ESRCH) => Err(MemError::Gone),
            Err(libc::EFAULT) => Err(MemError::Unmapped {
                addr,
                len: buf.len(),
            }),
            Err(libc::EPERM) => Err(MemError::PermissionDenied),
            // ENOSYS (seccomp) and friends: try the file interface.
            Err(_) => self.read_proc_mem(addr, buf),
        }
    }

    fn read_many(&self, requests: &mut [(u64, &mut [u8])]) -> Vec<Result<(), MemError>> {
        // Requests that lie next to each other (g records of one span, sudogs of one page) are
        // read as one range: the kernel then pins each page once per range instead of once per
        // request, which is most of the cost of small reads.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_unstable_by_key(|&i| requests[i].0);
        // (start, end, members as a range of `order`)
        let mut ranges: Vec<(u64, u64, usize, usize)> = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let addr = requests[i].0;
            let end = addr.saturating_add(requests[i].1.len() as u64);
            match ranges.last_mut() {
                Some(last)
                    if addr <= last.1.saturating_add(COALESCE_GAP)
                        && end.max(last.1) - last.0 <= COALESCE_MAX =>
                {
                    last.1 = last.1.max(end);
                    last.3 = k + 1;
                }
                _ => ranges.push((addr, end, k, k + 1)),
            }
        }
        if ranges.len() == requests.len() {
            return self.read_batched(requests);
        }
        let total: usize = ranges.iter().map(|r| (r.1 - r.0) as usize).sum();
        let mut buffer = vec![0u8; total];
        let mut range_requests: Vec<(u64, &mut [u8])> = Vec::with_capacity(ranges.len());
        let mut rest = buffer.as_mut_slice();
        for r in &ranges {
            let (head, tail) = rest.split_at_mut((r.1 - r.0) as usize);
            range_requests.push((r.0, head));
            rest = tail;
        }
        let range_results = self.read_batched(&mut range_requests);
        drop(range_requests);
        let mut results: Vec<Result<(), MemError>> = vec![Ok(()); requests.len()];
        let mut offset = 0usize;
        for (r, result) in ranges.iter().zip(range_results) {
            let range = &buffer[offset..offset + (r.1 - r.0) as usize];
            offset += range.len();
            for &i in &order[r.2..r.3] {
                let (addr, buf) = &mut requests[i];
                if result.is_ok() {
                    let from = (*addr - r.0) as usize;
                    buf.copy_from_slice(&range[from..from + buf.len()]);
                } else {
                    // Part of the range is unreadable: find out which requests are.
                    results[i] = self.read(*addr, buf);
                }
            }
        }
        results
    }
}

/// Requests at most this far apart are read as one range (the bytes between are read too).
const COALESCE_GAP: u64 = 256;
/// A coalesced range never grows beyond this.
const COALESCE_MAX: u64 = 1 << 20;

impl ProcessMemory {
    /// Requests as they are, up to IOV_MAX per syscall.
    fn read_batched(&self, requests: &mut [(u64, &mut [u8])]) -> Vec<Result<(), MemError>> {
        // One syscall for up to IOV_MAX requests. The kernel stops at the first request it cannot
        // read whole: those before it succeeded, that one is read alone (to learn its error),
        // and the batch resumes after it.
        const IOV_MAX: usize = 1024;
        let mut results: Vec<Result<(), MemError>> = Vec::with_capacity(requests.len());
        let mut locals: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
        let mut remotes: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
        let mut start = 0;
        while start < requests.len() {
            let end = (start + IOV_MAX).min(requests.len());
            let chunk = &mut requests[start..end];
            locals.clear();
            remotes.clear();
            for (addr, buf) in chunk.iter_mut() {
                locals.push(libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                });
                remotes.push(libc::iovec {
                    iov_base: *addr as *mut libc::c_void,
                    iov_len: buf.len(),
                });
            }
            // SAFETY: each local iovec describes one caller-owned mutable buffer.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid as i32,
                    locals.as_ptr(),
                    locals.len() as libc::c_ulong,
                    remotes.as_ptr(),
                    remotes.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                // The whole call failed (gone, no permission, not allowed): one read each tells
                // each request's own error (and falls back to /proc/PID/mem where needed).
                for (addr, buf) in chunk.iter_mut() {
                    results.push(self.read(*addr, buf));
                }
                start += chunk.len();
                continue;
            }
            let mut left = n as usize;
            let mut done = 0;
            for (_, buf) in chunk.iter() {
                if left < buf.len() {
                    break;
                }
                left -= buf.len();
                done += 1;
            }
            results.extend((0..done).map(|_| Ok(())));
            if done < chunk.len() {
                let (addr, buf) = &mut chunk[done];
                results.push(self.read(*addr, buf));
                done += 1;
            }
            start += done;
        }
        results
    }
}

/// Memory recorded as (address, bytes) regions: for unit tests of everything above `remote`.
#[derive(Default, Clone)]
pub struct RecordedMemory {
    regions: Vec<(u64, Vec<u8>)>,
}

impl RecordedMemory {
    pub fn new() -> RecordedMemory {
        RecordedMemory::default()
    }

    pub fn add(&mut self, addr: u64, bytes: Vec<u8>) -> &mut Self {
        self.regions.push((addr, bytes));
        self
    }

    pub fn write_u64(&mut self, addr: u64, value: u64) -> &mut Self {
        self.add(addr, value.to_le_bytes().to_vec())
    }
}

impl Memory for RecordedMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        // Later regions override earlier ones, like writes.
        for (start, bytes) in self.regions.iter().rev() {
            let end = start + bytes.len() as u64;
            if addr >= *start && addr + buf.len() as u64 <= end {
                let from = (addr - start) as usize;
                buf.copy_from_slice(&bytes[from..from + buf.len()]);
                return Ok(());
            }
        }
        Err(MemError::Unmapped {
            addr,
            len: buf.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_through_the_syscall() {
        let secret: u64 = 0x5eed_cafe_f00d_beef;
        let mem = ProcessMemory::new(std::process::id());
        assert_eq!(mem.read_u64(&secret as *const u64 as u64).unwrap(), secret);
        let values = [1u32, 2, 3];
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        let mut bad = [0u8; 4];
        let mut reqs: Vec<(u64, &mut [u8])> = vec![
            (&values[0] as *const u32 as u64, &mut a),
            (8, &mut bad),
            (&values[2] as *const u32 as u64, &mut b),
        ];
        let results = mem.read_many(&mut reqs);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(matches!(results[1], Err(MemError::Unmapped { .. })));
        assert_eq!((u32::from_le_bytes(a), u32::from_le_bytes(b)), (1, 3));
    }

    #[test]
    fn coalesced_reads_report_each_request_on_its_own() {
        // Two pages, the second unmapped: requests close together are read as one range, and
        // when that range fails each request still gets its own answer.
        let page = 4096usize;
        // SAFETY: a fresh anonymous mapping we own; the second page is unmapped again at once.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: within the mapping.
        let bytes = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), page) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        // SAFETY: unmaps the second page of our own mapping.
        assert_eq!(
            unsafe { libc::munmap(base.cast::<u8>().add(page).cast(), page) },
            0
        );
        let addr = base as u64;
        let mem = ProcessMemory::new(std::process::id());
        let (mut a, mut b, mut c, mut d) = ([0u8; 8], [0u8; 8], [0u8; 12], [0u8; 8]);
        let mut reqs: Vec<(u64, &mut [u8])> = vec![
            (addr + 4000, &mut b),
            (addr + 16, &mut a),
            (addr + 4090, &mut c), // straddles into the unmapped page
            (addr + page as u64 + 8, &mut d), // unmapped
        ];
        let results = mem.read_many(&mut reqs);
        assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
        assert!(matches!(results[2], Err(MemError::Unmapped { .. })));
        assert!(matches!(results[3], Err(MemError::Unmapped { .. })));
        assert_eq!(a, [16, 17, 18, 19, 20, 21, 22, 23]);
        assert_eq!(b[0], (4000 % 256) as u8);
        // SAFETY: the first page is still ours.
        unsafe { libc::munmap(base, page) };
    }

    #[test]
    fn reading_a_gone_process_says_so() {
        let mem = ProcessMemory::new(4_194_321);
        assert_eq!(mem.read_u64(0x1000), Err(MemError::Gone));
    }

    #[test]
    fn recorded_memory_answers_only_inside_regions() {
        let mut mem = RecordedMemory::new();
        mem.write_u64(0x1000, 42);
        assert_eq!(mem.read_u64(0x1000), Ok(42));
        assert!(mem.read_u64(0x1004).is_err());
    }
}
