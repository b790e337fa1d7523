//! `parkscope snapshot` against every fixture program of the matrix, judged by the fixture's
//! ground truth and by Go's own goroutine dump taken inside the same process.

use std::collections::HashMap;

use parkscope_e2e::{
    FixtureBinary, RunningFixture, fixture_binaries, parkscope, parse_goroutine_dump,
};
use serde_json::Value;

fn snapshot_json(pid: u32) -> Value {
    let out = parkscope(&["snapshot", "--pid", &pid.to_string(), "--format", "json"]);
    assert!(
        out.status.success(),
        "snapshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn minor(release: &str) -> u32 {
    release.split('.').nth(1).unwrap().parse().unwrap()
}

/// Frames Go's dump shows: it hides runtime frames of user goroutines.
fn user_functions(functions: impl Iterator<Item = String>) -> Vec<String> {
    functions.filter(|f| !f.starts_with("runtime.")).collect()
}

fn check_fixture(binary: &FixtureBinary) {
    let running = RunningFixture::start(&binary.path);
    let snap = snapshot_json(running.pid());
    let ctx = format!("{} ({} {})", binary.fixture, binary.go, binary.variant);
    assert_eq!(snap["pid"], running.pid(), "{ctx}");
    assert!(
        snap["go_version"].as_str().unwrap().starts_with(&binary.go),
        "{ctx}"
    );
    let goroutines: HashMap<i64, &Value> = snap["goroutines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["goid"].as_i64().unwrap(), g))
        .collect();
    let objects: HashMap<String, &Value> = snap["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["addr"].as_str().unwrap().to_string(), o))
        .collect();
    let dump_text = std::fs::read_to_string(running.out_dir.join("goroutines.txt")).unwrap();
    let dump: HashMap<i64, _> = parse_goroutine_dump(&dump_text)
        .into_iter()
        .map(|g| (g.goid, g))
        .collect();

    for expected in &running.truth.goroutines {
        let g = goroutines.get(&expected.goid).unwrap_or_else(|| {
            panic!(
                "{ctx}: goroutine {} ({}) missing from the snapshot",
                expected.goid, expected.role
            )
        });
        if expected.wait_reason.is_empty() {
            continue; // busy goroutine: its state at our instant is not knowable in advance
        }
        assert_eq!(
            g["wait_reason"],
            expected.wait_reason.as_str(),
            "{ctx}: goid {} ({})",
            expected.goid,
            expected.role
        );

        // The stack and creation site agree with Go's own dump of the same goroutine.
        let ours = user_functions(
            g["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["function"].as_str().unwrap().to_string()),
        );
        let go = &dump[&expected.goid];
        assert_eq!(
            go.state, expected.wait_reason,
            "{ctx}: the fixture's own dump disagrees with its truth"
        );
        assert_eq!(
            ours,
            user_functions(go.functions.iter().cloned()),
            "{ctx}: goid {} stack",
            expected.goid
        );
        let our_frames: Vec<(String, String, u32)> = g["stack"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["function"].as_str().unwrap().starts_with("runtime."))
            .map(|f| {
                (
                    f["function"].as_str().unwrap().to_string(),
                    f["file"].as_str().unwrap().to_string(),
                    f["line"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        let go_frames: Vec<(String, String, u32)> = go
            .frames
            .iter()
            .filter(|f| !f.0.starts_with("runtime."))
            .cloned()
            .collect();
        assert_eq!(
            our_frames, go_frames,
            "{ctx}: goid {} frames (function, file, line)",
            expected.goid
        );
        if let Some(created_by) = &go.created_by {
            assert_eq!(
                g["created_by"]["function"],
                created_by.as_str(),
                "{ctx}: goid {} created by",
                expected.goid
            );
            if let (Some(parent), Some(ours)) = (go.created_in, g["parent_goid"].as_i64()) {
                assert_eq!(ours, parent, "{ctx}: goid {} parent", expected.goid);
            }
        }

        // The objects the fixture names are the ones the goroutine is blocked on. Cond waiters
        // are linked from g.waiting only since Go 1.26; before that they need the event
        // pipeline's notifyListWait probe.
        if expected.wait_reason == "sync.Cond.Wait" && minor(&binary.release) < 26 {
            continue;
        }
        // Objects listed for a sleeping or I/O-waiting goroutine are ones it holds, not waits on.
        let waits_on_object = expected.wait_reason.starts_with("chan ")
            || expected.wait_reason == "select"
            || expected.wait_reason.starts_with("sync.")
            || expected.wait_reason == "semacquire";
        if !waits_on_object || expected.wait_reason.contains("nil chan") {
            continue;
        }
        for name in &expected.objects {
            let object = running
                .truth
                .objects
                .iter()
                .find(|o| &o.name == name)
                .unwrap();
            let blocked: Vec<&str> = g["blocked_on"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["addr"].as_str().unwrap())
                .collect();
            // Objects the fixture lists for a goroutine may include ones it only holds; the
            // wait is on one of them.
            let waits_here = blocked.contains(&object.addr.as_str());
            let listed_elsewhere = expected.objects.iter().any(|n| {
                let o = running.truth.objects.iter().find(|o| &o.name == n).unwrap();
                blocked.contains(&o.addr.as_str())
            });
            assert!(
                listed_elsewhere,
                "{ctx}: goid {} blocked on {blocked:?}, expected one of its objects {:?}",
                expected.goid, expected.objects
            );
            if waits_here {
                let o = objects
                    .get(&object.addr)
                    .unwrap_or_else(|| panic!("{ctx}: object {} not in objects[]", object.addr));
                assert_eq!(
                    o["kind"],
                    object.kind.as_str(),
                    "{ctx}: kind of {}",
                    object.name
                );
                let counterparts = ["senders", "receivers", "waiters"]
                    .iter()
                    .flat_map(|k| {
                        o[*k]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_i64().unwrap())
                    })
                    .collect::<Vec<_>>();
                assert!(
                    counterparts.contains(&expected.goid),
                    "{ctx}: {} does not list goid {} among its waiters",
                    object.name,
                    expected.goid
                );
            }
        }
    }
}

#[test]
fn snapshot_matches_ground_truth_and_go_dump_on_every_fixture_and_version() {
    let binaries: Vec<FixtureBinary> = fixture_binaries()
        .into_iter()
        // trace_* fixtures act on a signal from the trace tests; their goroutines poll until then.
        .filter(|b| {
            b.fixture != "demo"
                && !b.fixture.starts_with("trace_")
                && (b.variant == "plain" || b.variant.ends_with("stripped") || b.variant == "pie")
        })
        .collect();
    assert!(binaries.len() > 20);
    for binary in &binaries {
        check_fixture(binary);
    }
}

#[test]
fn snapshot_formats_render() {
    let binary = fixture_binaries()
        .into_iter()
        .find(|b| b.fixture == "abba_deadlock" && b.release == "1.26" && b.variant == "plain")
        .unwrap();
    let running = RunningFixture::start(&binary.path);
    let pid = running.pid().to_string();
    let text = parkscope(&["snapshot", "--pid", &pid]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("[sync.Mutex.Lock"), "{text}");
    let dot = parkscope(&["snapshot", "--pid", &pid, "--format", "dot"]);
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(
        dot.starts_with("digraph") && dot.contains("mutex 0x"),
        "{dot}"
    );
    // pprof: Go's own tool must open it.
    let file = running.out_dir.join("parkscope.pb.gz");
    let out = parkscope(&[
        "snapshot",
        "--pid",
        &pid,
        "--format",
        "pprof",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let top = std::process::Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-tagfocus=wait_reason=sync.Mutex.Lock",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let top_text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(top_text.contains("main."), "{top_text}");
}

#[test]
fn snapshot_of_a_gone_process_fails_cleanly() {
    let out = parkscope(&["snapshot", "--pid", "4194321"]);
    assert_eq!(out.status.code(), Some(14));
}
