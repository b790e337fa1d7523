//! Finding the Go processes to follow: a cheap scan of /proc, with the expensive question
//! ("is this executable a supported Go binary?") answered once per executable file.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::gobin::buildinfo;
use crate::gobin::elf::ElfImage;

/// Which processes the daemon follows.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// Every Go process.
    pub all: bool,
    pub pids: Vec<u32>,
    /// Matched (unanchored) against the executable path as the process sees it.
    pub exe_pattern: Option<regex::Regex>,
    /// A cgroup path prefix, e.g. "/kubepods/burstable/pod1234".
    pub cgroup: Option<String>,
}

/// A process as /proc describes it, before any memory is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): (pid, start) survives
    /// pid reuse.
    pub start_ticks: u64,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: ProcessId,
    pub exe: String,
    /// (device, inode, mtime) of the executable: the Go-binary cache key.
    pub exe_key: (u64, u64, i64),
    pub cgroup: String,
    pub container_id: Option<String>,
    /// The pid inside the process's own pid namespace, when it differs.
    pub ns_pid: Option<u32>,
}

/// Field 22 of /proc/PID/stat; the command name (field 2) may contain spaces and parentheses.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The innermost pid of the `NSpid:` line of /proc/PID/status.
pub fn parse_ns_pid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let pids: Vec<u32> = line[6..]
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (pids.len() > 1).then(|| *pids.last().unwrap())
}

/// A container id: the last 64-hex-digit token in the cgroup path (docker, containerd, cri-o).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .split(|c: char| !c.is_ascii_hexdigit())
        .rfind(|t| t.len() == 64)
        .map(str::to_string)
}

/// The unified (v2) cgroup path, or the first v1 line's path.
pub fn parse_cgroup(text: &str) -> String {
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .collect();
    text.lines()
        .find(|l| l.starts_with("0::"))
        .map(|l| l[3..].to_string())
        .or_else(|| paths.first().map(|p| p.to_string()))
        .unwrap_or_default()
}

impl Selector {
    pub fn wants(&self, candidate: &Candidate) -> bool {
        if self.pids.contains(&candidate.id.pid) {
            return true;
        }
        if let Some(pattern) = &self.exe_pattern
            && !pattern.is_match(&candidate.exe)
        {
            return false;
        }
        if let Some(prefix) = &self.cgroup
            && !candidate.cgroup.starts_with(prefix.as_str())
        {
            return false;
        }
        self.all || self.exe_pattern.is_some() || self.cgroup.is_some()
    }
}

/// Every user process /proc lists now (kernel threads have no executable).
pub fn scan_proc() -> Vec<Candidate> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(describe)
        .collect()
}

pub fn describe(pid: u32) -> Option<Candidate> {
    let dir = Path::new("/proc").join(pid.to_string());
    let exe = std::fs::read_link(dir.join("exe")).ok()?;
    let meta = std::fs::metadata(dir.join("exe")).ok()?;
    let start_ticks = parse_start_ticks(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    let cgroup = parse_cgroup(&std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default());
    let ns_pid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_ns_pid(&s));
    Some(Candidate {
        id: ProcessId { pid, start_ticks },
        exe: exe.display().to_string(),
        exe_key: (meta.dev(), meta.ino(), meta.mtime()),
        container_id: container_id(&cgroup),
        cgroup,
        ns_pid,
    })
}

/// Remembers, per executable file, whether it is a Go binary (and its version).
#[derive(Default)]
pub struct GoBinaryCache {
    known: HashMap<(u64, u64, i64), Option<String>>,
}

impl GoBinaryCache {
    /// The Go version of the candidate's executable, or None when it is not a Go binary.
    pub fn go_version(&mut self, candidate: &Candidate) -> Option<String> {
        if let Some(known) = self.known.get(&candidate.exe_key) {
            return known.clone();
        }
        let version = std::fs::read(format!("/proc/{}/exe", candidate.id.pid))
            .ok()
            .and_then(|bytes| {
                let image = ElfImage::parse(&bytes).ok()?;
                buildinfo::read(&image).ok().map(|b| b.go_version)
            });
        // Bounded: executables on a host are few, but don't grow without limit.
        if self.known.len() > 10_000 {
            self.known.clear();
        }
        self.known.insert(candidate.exe_key, version.clone());
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_ns_pid("Name:\tx\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(parse_ns_pid("NSpid:\t4242\n"), None);
        let id = "a".repeat(64);
        let cg = format!("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope\n");
        assert_eq!(
            parse_cgroup(&cg),
            format!("/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope")
        );
        assert_eq!(container_id(&parse_cgroup(&cg)), Some(id));
        assert_eq!(container_id("/user.slice/session-1.scope"), None);
    }

    #[test]
    fn selector_combines_filters() {
        let c = Candidate {
            id: ProcessId {
                pid: 10,
                start_ticks: 1,
            },
            exe: "/srv/api".into(),
            exe_key: (0, 0, 0),
            cgroup: "/kubepods/pod1/abc".into(),
            container_id: None,
            ns_pid: None,
        };
        assert!(!Selector::default().wants(&c));
        assert!(
            Selector {
                all: true,
                ..Default::default()
            }
            .wants(&c)
        );
        assert!(
            Selector {
                pids: vec![10],
                ..Default::default()
            }
            .wants(&c)
        );
        assert!(
            Selector {
                exe_pattern: Some(regex::Regex::new("^/srv/").unwrap()),
                ..Default::default()
            }
            .wants(&c)
        );
        assert!(
            !Selector {
                exe_pattern: Some(regex::Regex::new("^/opt/").unwrap()),
                ..Default::default()
            }
            .wants(&c)
        );
        assert!(
            Selector {
                cgroup: Some("/kubepods/pod1".into()),
                ..Default::default()
            }
            .wants(&c)
        );
        assert!(
            !Selector {
                cgroup: Some("/kubepods/pod2".into()),
                ..Default::default()
            }
            .wants(&c)
        );
    }
}
