//! `parkscope snapshot` against targets that do not hold still: a program that starts and ends
//! about 10,000 goroutines a second, a program killed while snapshots run, and the clear errors
//! for an unprivileged user and a pid that is not a Go program.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parkscope_e2e::{RunningFixture, fixture, parkscope, parkscope_bin};
use serde_json::Value;

/// Exit codes from `parkscope --help`.
const NOT_GO: i32 = 11;
const PROCESS_GONE: i32 = 14;
const PERMISSION_DENIED: i32 = 15;

/// The release matrix entry the robustness tests run against (the machine's own Go).
const RELEASE: &str = "1.26";

fn snapshot(pid: u32) -> std::process::Output {
    parkscope(&["snapshot", "--pid", &pid.to_string(), "--format", "json"])
}

/// Every reported goroutine is internally consistent, and the objects agree with them.
fn check_consistent(snap: &Value, ctx: &str) {
    let goroutines = snap["goroutines"].as_array().expect("goroutines[]");
    let objects = snap["objects"].as_array().expect("objects[]");
    assert!(!goroutines.is_empty(), "{ctx}: no goroutines");
    let mut goids = HashSet::new();
    for g in goroutines {
        let goid = g["goid"].as_i64().unwrap_or(-1);
        assert!(goid > 0, "{ctx}: goroutine with goid {goid}: {g}");
        assert!(goids.insert(goid), "{ctx}: goid {goid} reported twice");
        let status = g["status"].as_str().unwrap_or("");
        assert_ne!(status, "dead", "{ctx}: dead goroutine {goid} reported");
        let parked = status == "waiting" || status == "leaked";
        if parked {
            let reason = g["wait_reason"].as_str().unwrap_or("");
            assert!(
                !reason.is_empty(),
                "{ctx}: parked goroutine {goid} has no wait_reason: {g}"
            );
        }
        let unstable = g["unstable"].as_bool().unwrap_or(false);
        let blocked = g["blocked_on"].as_array().map_or(&[][..], |v| v.as_slice());
        if unstable {
            assert!(
                blocked.is_empty() && g["stack"].as_array().is_none_or(|s| s.is_empty()),
                "{ctx}: unstable goroutine {goid} carries an unconfirmed stack or objects: {g}"
            );
        }
        if !blocked.is_empty() {
            assert!(
                parked,
                "{ctx}: goroutine {goid} is blocked on objects but {status}"
            );
        }
    }
    let by_addr: HashMap<&str, &Value> = objects
        .iter()
        .map(|o| (o["addr"].as_str().expect("object addr"), o))
        .collect();
    assert_eq!(by_addr.len(), objects.len(), "{ctx}: duplicate objects");
    for g in goroutines {
        for b in g["blocked_on"].as_array().into_iter().flatten() {
            let addr = b["addr"].as_str().expect("blocked_on addr");
            let o = by_addr.get(addr).unwrap_or_else(|| {
                panic!(
                    "{ctx}: goroutine {} blocked on {addr}, not in objects[]",
                    g["goid"]
                )
            });
            assert_eq!(o["kind"], b["kind"], "{ctx}: kind of {addr}");
        }
    }
    for o in objects {
        for key in ["senders", "receivers", "waiters"] {
            for goid in o[key].as_array().into_iter().flatten() {
                let goid = goid.as_i64().expect("goid");
                assert!(
                    goids.contains(&goid),
                    "{ctx}: object {} lists goid {goid} in {key}, which is not in goroutines[]",
                    o["addr"]
                );
            }
        }
    }
}

#[test]
fn hundred_snapshots_of_a_churning_program_never_fail_and_stay_consistent() {
    let binary = fixture("churn", RELEASE, "plain");
    let running = RunningFixture::start(&binary.path);
    let pid = running.pid();
    let started = Instant::now();
    let mut goroutines_seen = 0usize;
    let mut blocked_seen = 0usize;
    for i in 0..100 {
        let out = snapshot(pid);
        let ctx = format!("churn snapshot {i}");
        assert!(
            out.status.success(),
            "{ctx} failed with {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let snap: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{ctx}: not JSON: {e}"));
        assert_eq!(snap["pid"], pid, "{ctx}");
        check_consistent(&snap, &ctx);
        let gs = snap["goroutines"].as_array().unwrap();
        goroutines_seen += gs.len();
        blocked_seen += gs
            .iter()
            .filter(|g| g["blocked_on"].as_array().is_some_and(|b| !b.is_empty()))
            .count();
        // The registered long-lived goroutines are always there.
        for expected in &running.truth.goroutines {
            assert!(
                gs.iter().any(|g| g["goid"] == expected.goid),
                "{ctx}: goid {} ({}) missing",
                expected.goid,
                expected.role
            );
        }
    }
    // The churn really was seen: short-lived goroutines blocked on objects.
    assert!(
        goroutines_seen > 100 * running.truth.goroutines.len(),
        "only {goroutines_seen} goroutines in 100 snapshots"
    );
    assert!(
        blocked_seen > 0,
        "no goroutine blocked on an object in 100 snapshots"
    );
    eprintln!(
        "100 churn snapshots in {:.1?} ({goroutines_seen} goroutines, {blocked_seen} blocked on objects)",
        started.elapsed()
    );
}

#[test]
fn a_target_that_exits_mid_snapshot_gives_a_clean_error() {
    // A larger target makes each snapshot long enough for the kill to land inside one.
    let binary = fixture("bench_parked", RELEASE, "plain");
    let out_dir = std::env::temp_dir().join(format!("parkscope-e2e-exit-{}", std::process::id()));
    let mut child = Command::new(&binary.path)
        .env("PARKSCOPE_BENCH_GOROUTINES", "20000")
        .env("PARKSCOPE_FIXTURE_OUT", &out_dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting bench_parked");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("PARKSCOPE_READY"),
            "bench_parked: {line:?}"
        );
    }
    let pid = child.id();
    let bin = parkscope_bin();
    let (mut ok, mut gone) = (0, 0);
    let mut killed_at = None;
    let started = Instant::now();
    // Snapshots back to back, several in flight at once; the target is killed while they run.
    while started.elapsed() < Duration::from_secs(60) {
        let batch: Vec<_> = (0..3)
            .map(|_| {
                Command::new(&bin)
                    .args(["snapshot", "--pid", &pid.to_string(), "--format", "json"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        if killed_at.is_none() && ok >= 3 {
            std::thread::sleep(Duration::from_millis(15));
            child.kill().unwrap();
            killed_at = Some(Instant::now());
        }
        for snap in batch {
            let out = snap.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => ok += 1,
                Some(PROCESS_GONE) => {
                    assert!(
                        stderr.contains(&format!("process {pid}"))
                            && (stderr.contains("exited") || stderr.contains("does not exist")),
                        "exit 14 without a clear message: {stderr}"
                    );
                    gone += 1;
                }
                other => panic!(
                    "snapshot of a dying target exited with {other:?} (want 0 or 14): {stderr}"
                ),
            }
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        if let Some(at) = killed_at
            && at.elapsed() > Duration::from_millis(500)
        {
            break;
        }
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        killed_at.is_some(),
        "never got 3 good snapshots before the kill"
    );
    assert!(ok >= 3 && gone >= 1, "ok {ok}, gone {gone}");
}

#[test]
fn an_unprivileged_user_gets_permission_denied() {
    let binary = fixture("abandoned_sender", RELEASE, "plain");
    let running = RunningFixture::start(&binary.path);
    // The parkscope binary must be readable and executable by nobody.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(parkscope_bin())
        .args(["snapshot", "--pid", &running.pid().to_string()])
        .output()
        .expect("running setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(PERMISSION_DENIED), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_process_that_is_not_go_is_refused() {
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("starting sleep");
    let out = snapshot(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(NOT_GO), "{stderr}");
    assert!(stderr.contains("not a Go binary"), "{stderr}");
}
