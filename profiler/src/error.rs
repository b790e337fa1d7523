//! Errors a user can act on, each with its own process exit code (listed in `--help`).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InspectError {
    #[error("not an ELF executable: {0}")]
    NotElf(String),
    #[error("not a Go binary: {0}")]
    NotGo(String),
    #[error("unsupported architecture: {0}")]
    UnsupportedArch(String),
    #[error("unsupported Go version {version}: {why}")]
    UnsupportedGoVersion { version: String, why: String },
    #[error("required symbol missing from the binary: {0}")]
    MissingSymbol(String),
    #[error("process {pid} does not exist (or exited)")]
    ProcessGone { pid: u32 },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Exit codes. 2 is clap's usage error; 3 is reserved for "leaks or deadlocks found".
pub mod exit_code {
    pub const FAILURE: i32 = 1;
    pub const NOT_ELF: i32 = 10;
    pub const NOT_GO: i32 = 11;
    pub const UNSUPPORTED: i32 = 12;
    pub const MISSING_SYMBOL: i32 = 13;
    pub const PROCESS_GONE: i32 = 14;
    pub const PERMISSION_DENIED: i32 = 15;

    /// The table printed at the end of `--help`.
    pub const HELP: &str = "\
Exit codes:
  0   success
  1   other failure (I/O error, malformed input)
  2   command-line usage error
  3   (leaks) a leak or deadlock was found
  10  not an ELF executable
  11  not a Go binary (no Go build info)
  12  unsupported target: Go older than 1.21, or not linux/amd64
  13  a runtime symbol parkscope needs is missing (named in the message)
  14  the process does not exist or exited
  15  permission denied (run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)";
}

impl InspectError {
    pub fn exit_code(&self) -> i32 {
        use exit_code::*;
        match self {
            InspectError::NotElf(_) => NOT_ELF,
            InspectError::NotGo(_) => NOT_GO,
            InspectError::UnsupportedArch(_) | InspectError::UnsupportedGoVersion { .. } => {
                UNSUPPORTED
            }
            InspectError::MissingSymbol(_) => MISSING_SYMBOL,
            InspectError::ProcessGone { .. } => PROCESS_GONE,
            InspectError::PermissionDenied(_) => PERMISSION_DENIED,
            InspectError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => PERMISSION_DENIED,
                _ => FAILURE,
            },
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        InspectError::Io {
            context: context.into(),
            source,
        }
    }
}
