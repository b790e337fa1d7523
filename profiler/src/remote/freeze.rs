//! A brief, bounded stop of every thread of a process, for one consistent read (`leaks --freeze`).
//!
//! Threads are stopped with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, not SIGSTOP: if parkscope dies
//! while the target is frozen, the kernel detaches the tracees and they run on, whereas a
//! SIGSTOPped process would stay stopped. Nothing is written to the target; threads blocked in a
//! system call see it restarted, which Go handles as it does for any debugger.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::InspectError;

/// Rounds of "list threads, stop the new ones": a thread created while we stop the others shows
/// up in the next listing.
const MAX_ROUNDS: usize = 8;

/// What the freeze cost the target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FreezeStats {
    /// From the first thread stopped to the last one resumed.
    pub pause_ms: f64,
    pub threads: usize,
}

/// The stopped threads; resumed on drop (also when the scan fails or panics).
pub struct Frozen {
    /// Each stopped thread, with the signal it was about to receive when it stopped (0: none),
    /// handed back on detach so no signal is lost.
    stopped: Vec<(i32, i32)>,
    since: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("cannot list the threads of process {pid}: {source}")]
    Threads { pid: u32, source: std::io::Error },
    #[error("cannot stop thread {tid} of the target: {source}")]
    Stop { tid: i32, source: std::io::Error },
}

impl FreezeError {
    /// The error a user can act on, with its exit code.
    pub fn into_inspect_error(self, pid: u32) -> InspectError {
        let os = match &self {
            FreezeError::Threads { source, .. } | FreezeError::Stop { source, .. } => {
                source.raw_os_error()
            }
        };
        match os {
            Some(libc::ENOENT | libc::ESRCH) => InspectError::ProcessGone { pid },
            Some(libc::EPERM) => InspectError::PermissionDenied(format!(
                "{self} (--freeze needs CAP_SYS_PTRACE, and no other tracer on the target)"
            )),
            _ => InspectError::io(
                "freezing the target",
                std::io::Error::other(self.to_string()),
            ),
        }
    }
}

impl Frozen {
    /// Stop every thread of `pid`. On error the threads already stopped are resumed.
    pub fn stop(pid: u32) -> Result<Frozen, FreezeError> {
        let mut frozen = Frozen {
            stopped: Vec::new(),
            since: Instant::now(),
        };
        let mut seen = BTreeSet::new();
        for _ in 0..MAX_ROUNDS {
            let threads =
                list_threads(pid).map_err(|source| FreezeError::Threads { pid, source })?;
            let new: Vec<i32> = threads.into_iter().filter(|t| !seen.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                seen.insert(tid);
                match seize_and_interrupt(tid) {
                    Ok(signal) => frozen.stopped.push((tid, signal)),
                    // The thread exited between the listing and the seize.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(source) => return Err(FreezeError::Stop { tid, source }),
                }
            }
        }
        Ok(frozen)
    }

    /// The general-purpose registers of every stopped thread: a running goroutine's live
    /// pointers may be only there.
    pub fn register_words(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for &(tid, _) in &self.stopped {
            // SAFETY: user_regs_struct is plain data; PTRACE_GETREGS fills it for a stopped
            // tracee of ours and reads nothing from our memory.
            let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
            let r = unsafe {
                libc::ptrace(
                    libc::PTRACE_GETREGS,
                    tid,
                    std::ptr::null_mut::<libc::c_void>(),
                    &mut regs as *mut libc::user_regs_struct as *mut libc::c_void,
                )
            };
            if r == 0 {
                out.extend([
                    regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.r8,
                    regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
                ]);
            }
        }
        out
    }

    /// Resume every thread and say how long the target was stopped.
    pub fn resume(mut self) -> FreezeStats {
        let threads = self.stopped.len();
        self.detach_all();
        FreezeStats {
            pause_ms: self.since.elapsed().as_secs_f64() * 1e3,
            threads,
        }
    }

    fn detach_all(&mut self) {
        for (tid, signal) in self.stopped.drain(..) {
            // SAFETY: PTRACE_DETACH on a thread we seized; the data argument is a signal number.
            unsafe {
                ptrace(libc::PTRACE_DETACH, tid, signal as usize);
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// `ptrace(2)` is variadic: addr and data must be passed pointer-sized (a bare `0` would be
/// an `int` with garbage above it). addr is unused by every request made here.
///
/// # Safety
/// No request made here dereferences addr or data in our address space.
unsafe fn ptrace(request: libc::c_uint, tid: i32, data: usize) -> libc::c_long {
    // SAFETY: see above; null addr, data a plain integer.
    unsafe {
        libc::ptrace(
            request,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    }
}

/// The signal of a signal-delivery stop; 0 for the PTRACE_INTERRUPT stop (SIGTRAP with
/// PTRACE_EVENT_STOP in the high bits) and group stops.
fn pending_signal(status: i32) -> i32 {
    if !libc::WIFSTOPPED(status) {
        return 0;
    }
    let event = (status >> 16) & 0xff;
    if event == libc::PTRACE_EVENT_STOP {
        return 0;
    }
    libc::WSTOPSIG(status)
}

fn list_threads(pid: u32) -> std::io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

/// Seize `tid` and wait (bounded) until it is in a ptrace stop. Returns the signal it stopped
/// for when that stop is a signal-delivery stop (the signal must be passed on at detach), else 0.
fn seize_and_interrupt(tid: i32) -> std::io::Result<i32> {
    // SAFETY: plain ptrace requests on a thread id; no pointers into our memory are passed.
    unsafe {
        if ptrace(libc::PTRACE_SEIZE, tid, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if ptrace(libc::PTRACE_INTERRUPT, tid, 0) != 0 {
            let e = std::io::Error::last_os_error();
            ptrace(libc::PTRACE_DETACH, tid, 0);
            return Err(e);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer to a local.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid {
            return Ok(pending_signal(status));
        }
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                ptrace(libc::PTRACE_DETACH, tid, 0);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the thread did not stop within 1 s",
            ));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signal_delivery_stops_carry_a_signal() {
        // status = (event << 16) | (sig << 8) | 0x7f for a stopped tracee.
        let stopped = |sig: i32, event: i32| (event << 16) | (sig << 8) | 0x7f;
        assert_eq!(
            pending_signal(stopped(libc::SIGTRAP, libc::PTRACE_EVENT_STOP)),
            0
        );
        assert_eq!(pending_signal(stopped(libc::SIGURG, 0)), libc::SIGURG);
        assert_eq!(pending_signal(stopped(libc::SIGTERM, 0)), libc::SIGTERM);
        assert_eq!(pending_signal(0), 0); // exited
    }
}
