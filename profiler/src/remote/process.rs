//! Finding a target process's executable, through /proc. `/proc/PID/exe` resolves to the very
//! file the process runs, even inside another mount namespace (a container) or after the file was
//! replaced on disk, so uprobes attached through it hit the right inode.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::InspectError;

pub fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// Turn an I/O error on /proc/PID/... into what the user needs to hear.
pub fn proc_error(pid: u32, what: &str, err: std::io::Error) -> InspectError {
    match err.kind() {
        ErrorKind::NotFound => InspectError::ProcessGone { pid },
        ErrorKind::PermissionDenied => InspectError::PermissionDenied(format!(
            "reading {what} of process {pid} needs root or CAP_SYS_PTRACE"
        )),
        _ if err.raw_os_error() == Some(libc::ESRCH) => InspectError::ProcessGone { pid },
        _ => InspectError::io(format!("reading {what} of process {pid}"), err),
    }
}

/// Path that names the target's executable for opening and for uprobe attachment.
pub fn exe_path(pid: u32) -> Result<PathBuf, InspectError> {
    let dir = proc_dir(pid);
    if !dir.exists() {
        return Err(InspectError::ProcessGone { pid });
    }
    let exe = dir.join("exe");
    // readlink fails for kernel threads and for processes we may not look at.
    std::fs::read_link(&exe).map_err(|e| proc_error(pid, "the executable", e))?;
    Ok(exe)
}

/// The executable's path as the process sees it (for display only).
pub fn exe_display_name(pid: u32) -> Option<String> {
    std::fs::read_link(proc_dir(pid).join("exe"))
        .ok()
        .map(|p| p.display().to_string())
}

pub fn read_exe(pid: u32) -> Result<Vec<u8>, InspectError> {
    let exe = exe_path(pid)?;
    std::fs::read(&exe).map_err(|e| proc_error(pid, "the executable", e))
}

pub fn read_file(path: &Path) -> Result<Vec<u8>, InspectError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => {
            InspectError::PermissionDenied(format!("cannot read {}", path.display()))
        }
        _ => InspectError::io(format!("cannot read {}", path.display()), e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_that_does_not_exist_is_reported_as_gone() {
        // PIDs are bounded by /proc/sys/kernel/pid_max (at most 2^22).
        let pid = 4_194_304 + 17;
        assert!(matches!(
            exe_path(pid),
            Err(InspectError::ProcessGone { .. })
        ));
    }

    #[test]
    fn our_own_executable_is_readable() {
        let me = std::process::id();
        let bytes = read_exe(me).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
    }
}
