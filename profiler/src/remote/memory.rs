//! Reading another process's memory without stopping it: `process_vm_readv` (many small reads in
//! one syscall), with `/proc/PID/mem` as the fallback where that syscall is not allowed.
//!
//! The target keeps running while we read, so every reader above this layer must treat what it
//! gets as possibly torn: validate, bound loops, retry.

use std::cell::RefCell;
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

thread_local! {
    /// Buffers the batched readers gave back, for their next batch on this thread.
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` bytes for a batch of reads, reusing one given back on this thread when
/// there is one: batches need a few MiB each, and fresh pages cost a page fault per 4 KiB. Its
/// contents are unspecified (whatever an earlier batch left): read into it before looking.
pub fn scratch_buffer(len: usize) -> Vec<u8> {
    let mut buf = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    } else {
        buf.truncate(len);
    }
    buf
}

/// Give a [`scratch_buffer`] back for the next batch.
pub fn give_back(buf: Vec<u8>) {
    const KEEP_BUFFERS: usize = 4;
    if buf.capacity() <= MAX_SINGLE_READ {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEEP_BUFFERS {
                s.push(buf);
            }
        });
    }
}

/// Where one piece's bytes are in the buffer of [`read_pieces`], and whether its read worked.
pub type PlacedRead = (std::ops::Range<usize>, Result<(), MemError>);

/// Read `pieces` (address, length) with one `read_many` into one scratch buffer cut in order:
/// returns the buffer (hand it back with [`give_back`]) and, per piece, where its bytes are in
/// it and whether the read succeeded.
pub fn read_pieces(mem: &dyn Memory, pieces: &[(u64, usize)]) -> (Vec<u8>, Vec<PlacedRead>) {
    let total: usize = pieces.iter().map(|&(_, len)| len).sum();
    let mut buffer = scratch_buffer(total);
    let mut requests: Vec<(u64, &mut [u8])> = Vec::with_capacity(pieces.len());
    let mut rest = buffer.as_mut_slice();
    for &(addr, len) in pieces {
        let (piece, tail) = rest.split_at_mut(len);
        requests.push((addr, piece));
        rest = tail;
    }
    let results = mem.read_many(&mut requests);
    let mut offset = 0;
    let placed = results
        .into_iter()
        .zip(pieces)
        .map(|(result, &(_, len))| {
            let range = offset..offset + len;
            offset = range.end;
            (range, result)
        })
        .collect();
    (buffer, placed)
}

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
        // read as one remote range: the kernel then pins each page once per range instead of
        // once per request, which is most of the cost of small reads. The range is scattered
        // straight into the requests' buffers (the bytes between them into a scratch buffer),
        // so nothing is copied twice.
        let mut results: Vec<Result<(), MemError>> = vec![Ok(()); requests.len()];
        let mut order: Vec<usize> = Vec::with_capacity(requests.len());
        for (i, (addr, buf)) in requests.iter().enumerate() {
            if addr.checked_add(buf.len() as u64).is_none() {
                results[i] = Err(MemError::Unmapped {
                    addr: *addr,
                    len: buf.len(),
                });
            } else if !buf.is_empty() {
                order.push(i);
            }
        }
        order.sort_unstable_by_key(|&i| requests[i].0);
        let mut ranges: Vec<Range> = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let addr = requests[i].0;
            let end = addr + requests[i].1.len() as u64;
            match ranges.last_mut() {
                Some(last)
                    if addr >= last.end
                        && addr - last.end <= COALESCE_GAP
                        && end - last.start <= COALESCE_MAX
                        && last.members.len() < RANGE_MEMBERS =>
                {
                    last.end = end;
                    last.members.end = k + 1;
                }
                _ => ranges.push(Range {
                    start: addr,
                    end,
                    members: k..k + 1,
                }),
            }
        }
        let mut gap = [0u8; COALESCE_GAP as usize];
        let gap_ptr: *mut libc::c_void = gap.as_mut_ptr().cast();
        let mut locals: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
        let mut remotes: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
        let mut next = 0;
        while next < ranges.len() {
            // One syscall for as many whole ranges as the iovec limits allow.
            locals.clear();
            remotes.clear();
            let mut end = next;
            while end < ranges.len() && remotes.len() < IOV_MAX {
                let r = &ranges[end];
                if !locals.is_empty() && locals.len() + 2 * r.members.len() > IOV_MAX {
                    break;
                }
                let mut at = r.start;
                for &i in &order[r.members.clone()] {
                    let (addr, buf) = &mut requests[i];
                    if *addr > at {
                        locals.push(libc::iovec {
                            iov_base: gap_ptr,
                            iov_len: (*addr - at) as usize,
                        });
                    }
                    locals.push(libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: buf.len(),
                    });
                    at = *addr + buf.len() as u64;
                }
                remotes.push(libc::iovec {
                    iov_base: r.start as *mut libc::c_void,
                    iov_len: (r.end - r.start) as usize,
                });
                end += 1;
            }
            // SAFETY: each local iovec describes either one caller-owned mutable buffer or part
            // of `gap`, which we own and never read; both outlive the call.
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
            // The kernel stops at the first range it cannot read whole: those before it
            // succeeded; that one's requests are read alone (to learn which fail, and why, with
            // the /proc/PID/mem fallback where the syscall is refused), and the batch resumes
            // after it. When the whole call failed, every request is read alone.
            let mut left = if n < 0 { 0 } else { n as u64 };
            let mut done = next;
            while done < end && left >= ranges[done].end - ranges[done].start {
                left -= ranges[done].end - ranges[done].start;
                done += 1;
            }
            let retry_until = if n < 0 { end } else { (done + 1).min(end) };
            for r in &ranges[done..retry_until] {
                for &i in &order[r.members.clone()] {
                    let (addr, buf) = &mut requests[i];
                    results[i] = self.read(*addr, buf);
                }
            }
            next = retry_until;
        }
        results
    }
}

/// Requests read as one remote range: `members` index the address-sorted request order.
struct Range {
    start: u64,
    end: u64,
    members: std::ops::Range<usize>,
}

/// iovecs per process_vm_readv call, on each side.
const IOV_MAX: usize = 1024;
/// Requests at most this far apart are read as one range (the bytes between are read too).
const COALESCE_GAP: u64 = 256;
/// A coalesced range never grows beyond this.
const COALESCE_MAX: u64 = 1 << 20;
/// Requests in one range (each takes up to two local iovecs: the gap before it and its buffer).
const RANGE_MEMBERS: usize = IOV_MAX / 2;

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
    fn scattered_reads_match_one_by_one() {
        // Many small requests in one block (more than fit one range or one syscall), with gaps,
        // duplicates and overlaps, in no order, plus a few that cannot be read: each gets its
        // own bytes and its own result, as if read alone.
        let block: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let base = block.as_ptr() as u64;
        let mut specs: Vec<(u64, usize)> = Vec::new();
        for i in 0..3000u64 {
            let offset = (i * 7919) % 60_000;
            let len = 1 + (i as usize * 13) % 40;
            specs.push((base + offset, len));
        }
        specs.push((base + 100, 16));
        specs.push((base + 100, 16));
        specs.push((base + 104, 4));
        specs.push((8, 8)); // unmapped
        specs.push((u64::MAX - 3, 8)); // wraps around
        specs.push((base + 200, 0));
        let mem = ProcessMemory::new(std::process::id());
        let mut bufs: Vec<Vec<u8>> = specs.iter().map(|&(_, len)| vec![0xAA; len]).collect();
        let mut requests: Vec<(u64, &mut [u8])> = specs
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(addr, _), buf)| (addr, buf.as_mut_slice()))
            .collect();
        let results = mem.read_many(&mut requests);
        drop(requests);
        for ((&(addr, len), buf), result) in specs.iter().zip(&bufs).zip(&results) {
            let mut alone = vec![0u8; len];
            let expected = mem.read(addr, &mut alone);
            assert_eq!(result.is_ok(), expected.is_ok(), "{addr:#x}+{len}");
            if result.is_ok() {
                assert_eq!(buf, &alone, "{addr:#x}+{len}");
            }
        }
        assert!(results[specs.len() - 3].is_err() && results[specs.len() - 2].is_err());
        assert!(results[specs.len() - 1].is_ok());
    }

    #[test]
    fn scratch_buffers_are_reused_at_the_size_asked() {
        let a = scratch_buffer(1000);
        assert_eq!(a.len(), 1000);
        let ptr = a.as_ptr();
        give_back(a);
        let b = scratch_buffer(500);
        assert_eq!((b.len(), b.as_ptr()), (500, ptr));
        give_back(b);
        assert_eq!(scratch_buffer(4000).len(), 4000);
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
