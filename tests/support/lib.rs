//! Support for end-to-end tests: the parkscope binary, the fixture matrix, and running fixture
//! programs up to their sync point.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Go's own profiles as oracles.
pub mod pprof;

/// Wait until a fixture writes `path` (its sync points are files).
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The parkscope binary under test (`cargo xtask test` sets PARKSCOPE_BIN).
pub fn parkscope_bin() -> PathBuf {
    let path = std::env::var_os("PARKSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/parkscope"));
    assert!(
        path.exists(),
        "{} does not exist: build it (cargo build -p parkscope) or run ./x test",
        path.display()
    );
    path
}

pub fn parkscope(args: &[&str]) -> Output {
    Command::new(parkscope_bin())
        .args(args)
        .output()
        .expect("running parkscope")
}

#[derive(Clone, Debug, Deserialize)]
pub struct FixtureBinary {
    pub fixture: String,
    pub go: String,
    pub release: String,
    pub variant: String,
    pub path: PathBuf,
}

#[derive(Deserialize)]
struct Manifest {
    binaries: Vec<FixtureBinary>,
}

/// Every binary `cargo xtask fixtures` built. Fails (never skips) when they are missing.
pub fn fixture_binaries() -> Vec<FixtureBinary> {
    let path = std::env::var_os("PARKSCOPE_FIXTURE_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/fixtures/manifest.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `cargo xtask fixtures` (or ./x test) first",
            path.display()
        )
    });
    let manifest: Manifest = serde_json::from_str(&text).unwrap();
    assert!(!manifest.binaries.is_empty());
    manifest.binaries
}

pub fn fixture(fixture: &str, release: &str, variant: &str) -> FixtureBinary {
    fixture_binaries()
        .into_iter()
        .find(|b| b.fixture == fixture && b.release == release && b.variant == variant)
        .unwrap_or_else(|| {
            panic!("no fixture binary {fixture} {release} {variant} in the manifest")
        })
}

/// The ground truth a fixture writes at its sync point (see tests/fixtures/README.md).
#[derive(Clone, Debug, Deserialize)]
pub struct Truth {
    pub fixture: String,
    pub pid: u32,
    pub go_version: String,
    pub main_goid: i64,
    pub goroutines: Vec<TruthGoroutine>,
    pub objects: Vec<TruthObject>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TruthGoroutine {
    pub goid: i64,
    pub expect: String,
    pub wait_reason: String,
    pub role: String,
    #[serde(default)]
    pub objects: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TruthObject {
    pub name: String,
    pub kind: String,
    pub addr: String,
}

/// A fixture program running up to its sync point; SIGTERM on drop.
pub struct RunningFixture {
    pub child: Child,
    pub out_dir: PathBuf,
    pub truth: Truth,
}

impl RunningFixture {
    pub fn start(binary: &Path) -> RunningFixture {
        Self::start_with_env(binary, &[])
    }

    /// [`RunningFixture::start`] with extra environment variables (a fixture's knobs).
    pub fn start_with_env(binary: &Path, env: &[(&str, &str)]) -> RunningFixture {
        let out_dir =
            std::env::temp_dir().join(format!("parkscope-e2e-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&out_dir).unwrap();
        let mut child = Command::new(binary)
            .env("PARKSCOPE_FIXTURE_OUT", &out_dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let stdout = child.stdout.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = BufReader::new(stdout).lines();
        loop {
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                binary.display()
            );
            match lines.next() {
                Some(Ok(line)) if line.starts_with("PARKSCOPE_READY") => break,
                Some(Ok(_)) => continue,
                _ => panic!("{} exited before its sync point", binary.display()),
            }
        }
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let truth: Truth =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("truth.json")).unwrap())
                .unwrap();
        assert_eq!(truth.pid, child.id());
        RunningFixture {
            child,
            out_dir,
            truth,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningFixture {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.out_dir);
    }
}

/// A number no other call in this test process gets (for private temporary directories).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `go tool nm` of the toolchain that built the binary: (name → address) of text symbols.
pub fn go_nm_functions(binary: &FixtureBinary) -> std::collections::HashMap<String, u64> {
    let out = Command::new("go")
        .args(["tool", "nm"])
        .arg(&binary.path)
        .env("GOTOOLCHAIN", &binary.go)
        .output()
        .expect("go tool nm");
    assert!(
        out.status.success(),
        "go tool nm {}: {}",
        binary.path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut functions = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "  4a1b20 T runtime.gopark"
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if (kind == "T" || kind == "t")
            && let Ok(addr) = u64::from_str_radix(addr, 16)
        {
            functions.insert(name.to_string(), addr);
        }
    }
    functions
}

/// One goroutine of Go's own dump (`pprof.Lookup("goroutine").WriteTo(w, 2)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpGoroutine {
    pub goid: i64,
    /// "chan send", "running", "sync.Mutex.Lock" … (the text before any ", N minutes").
    pub state: String,
    /// Function names, innermost first, without arguments.
    pub functions: Vec<String>,
    /// (function, file, line) of each frame, innermost first.
    pub frames: Vec<(String, String, u32)>,
    pub created_by: Option<String>,
    pub created_in: Option<i64>,
}

/// Parse Go's goroutine dump (debug=2 format).
pub fn parse_goroutine_dump(text: &str) -> Vec<DumpGoroutine> {
    let mut out: Vec<DumpGoroutine> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("goroutine ") {
            let Some((id, state)) = rest.split_once(" [") else {
                continue;
            };
            let state = state.trim_end_matches("]:");
            let state = state.split(", ").next().unwrap_or(state);
            // Go 1.26 may add more after the reason ("chan send, 2 minutes, locked to thread").
            out.push(DumpGoroutine {
                goid: id.parse().unwrap_or(-1),
                state: state.to_string(),
                functions: Vec::new(),
                frames: Vec::new(),
                created_by: None,
                created_in: None,
            });
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        if let Some(position) = line.strip_prefix('\t') {
            // "\t/src/main.go:20 +0x3d" belongs to the frame above it.
            let position = position.split(" +0x").next().unwrap_or(position);
            if let Some((file, line_no)) = position.rsplit_once(':')
                && current.frames.len() < current.functions.len()
            {
                let function = current.functions[current.frames.len()].clone();
                current.frames.push((
                    function,
                    file.to_string(),
                    line_no.trim().parse().unwrap_or(0),
                ));
            }
            continue;
        }
        if line.is_empty() || line.starts_with("...") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("created by ") {
            let (func, parent) = match rest.split_once(" in goroutine ") {
                Some((f, p)) => (f, p.trim().parse().ok()),
                None => (rest, None),
            };
            current.created_by = Some(func.trim().to_string());
            current.created_in = parent;
            continue;
        }
        // "main.worker(0xc000010000, ...)" or "main.worker(...)"
        let name = match line.rfind('(') {
            Some(i) if line.ends_with(')') => &line[..i],
            _ => line,
        };
        current.functions.push(name.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_goroutine_dump() {
        let dump = "goroutine 1 [chan receive, 3 minutes]:\nmain.main()\n\t/src/main.go:10 +0x1d\n\ngoroutine 7 [chan send]:\nmain.(*svc).fetch(0xc000010000, {0x4b2f1a, 0x3})\n\t/src/main.go:20 +0x3d\ncreated by main.(*svc).handle in goroutine 5\n\t/src/main.go:30 +0x8f\n";
        let gs = parse_goroutine_dump(dump);
        assert_eq!(gs.len(), 2);
        assert_eq!(gs[0].state, "chan receive");
        assert_eq!(gs[1].functions, vec!["main.(*svc).fetch"]);
        assert_eq!(
            gs[1].frames,
            vec![(
                "main.(*svc).fetch".to_string(),
                "/src/main.go".to_string(),
                20
            )]
        );
        assert_eq!(gs[1].created_by.as_deref(), Some("main.(*svc).handle"));
        assert_eq!(gs[1].created_in, Some(5));
    }
}
