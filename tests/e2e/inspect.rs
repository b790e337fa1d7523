//! `parkscope inspect` against every binary of the fixture matrix, judged by Go's own tools
//! (`go tool nm` of the toolchain that built it) and by the binary's unstripped twin.

use std::collections::HashMap;
use std::process::Command;

use parkscope_e2e::{
    FixtureBinary, RunningFixture, fixture, fixture_binaries, go_nm_functions, parkscope,
};
use serde_json::Value;

fn inspect_json(path: &std::path::Path) -> Value {
    let out = parkscope(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "inspect {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn present_probes(report: &Value) -> HashMap<String, Value> {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "present")
        .map(|p| (p["symbol"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn offsets(report: &Value) -> HashMap<String, (u64, String)> {
    report["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["field"].as_str().unwrap().to_string(),
                (
                    o["offset"].as_u64().unwrap(),
                    o["source"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn twin(binary: &FixtureBinary, variant: &str) -> FixtureBinary {
    fixture(&binary.fixture, &binary.release, variant)
}

#[test]
fn inspect_agrees_with_go_tool_nm_on_every_binary() {
    let binaries = fixture_binaries();
    for binary in &binaries {
        let report = inspect_json(&binary.path);
        let ctx = format!("{} ({} {})", binary.fixture, binary.go, binary.variant);
        assert!(
            report["go_version"]
                .as_str()
                .unwrap()
                .starts_with(&binary.go),
            "{ctx}"
        );
        assert_eq!(report["build"]["goarch"], "amd64", "{ctx}");
        assert_eq!(
            report["build"]["pie"],
            binary.variant.starts_with("pie"),
            "{ctx}"
        );
        assert_eq!(report["build"]["cgo"], binary.variant == "cgo", "{ctx}");
        let stripped = binary.variant.ends_with("stripped");
        assert_eq!(report["build"]["stripped"], stripped, "{ctx}");
        assert_eq!(report["build"]["dwarf"], !stripped, "{ctx}");

        let probes = present_probes(&report);
        for required in [
            "runtime.gopark",
            "runtime.chansend",
            "runtime.chanrecv",
            "runtime.selectgo",
            "runtime.newproc1",
            "runtime.semacquire1",
        ] {
            assert!(probes.contains_key(required), "{ctx}: {required} not found");
        }
        // Every probe point decodes to the cheap attach point after Go's stack check.
        assert_eq!(
            probes["runtime.gopark"]["attach_kind"], "after_stack_check",
            "{ctx}"
        );
        assert!(
            !probes["runtime.gopark"]["ret_offsets"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{ctx}"
        );
        // Goroutine creation is probed at newproc.func1's `call runqput` (emulated by the
        // kernel), not at newproc1's RETs (single-stepped), on every release of the matrix.
        let handoff = &probes["runtime.newproc.func1"];
        assert_eq!(handoff["role"], "newproc_handoff", "{ctx}");
        assert_eq!(handoff["attach_kind"], "emulated_call", "{ctx}");
        assert!(handoff["attach_offset"].as_u64().unwrap() > 0, "{ctx}");

        let source = if stripped { "table" } else { "dwarf" };
        let offs = offsets(&report);
        for field in [
            "g.goid",
            "g.atomicstatus",
            "g.waitreason",
            "g.waiting",
            "g.sched.sp",
            "sudog.c",
            "hchan.recvq",
        ] {
            let (_, src) = offs
                .get(field)
                .unwrap_or_else(|| panic!("{ctx}: no offset for {field}"));
            assert_eq!(src, source, "{ctx}: {field}");
        }
        let reasons = report["wait_reasons"]["names"]
            .as_array()
            .expect("wait reasons found");
        for text in ["chan receive", "chan send", "select", "sleep"] {
            assert!(
                reasons.iter().any(|r| r == text),
                "{ctx}: wait reason {text:?} missing"
            );
        }

        if stripped {
            // Same code, same addresses and offsets as the unstripped twin of the same build mode.
            let plain = twin(
                binary,
                if binary.variant == "pie-stripped" {
                    "pie"
                } else {
                    "plain"
                },
            );
            let plain_report = inspect_json(&plain.path);
            let plain_probes = present_probes(&plain_report);
            assert_eq!(probes.len(), plain_probes.len(), "{ctx}");
            for (name, p) in &probes {
                assert_eq!(p["addr"], plain_probes[name]["addr"], "{ctx}: {name}");
                assert_eq!(
                    p["file_offset"], plain_probes[name]["file_offset"],
                    "{ctx}: {name}"
                );
                assert_eq!(
                    p["ret_offsets"], plain_probes[name]["ret_offsets"],
                    "{ctx}: {name}"
                );
            }
            let plain_offs = offsets(&plain_report);
            for (field, (value, _)) in &offs {
                if let Some((plain_value, _)) = plain_offs.get(field) {
                    assert_eq!(value, plain_value, "{ctx}: table vs DWARF for {field}");
                }
            }
            assert_eq!(
                report["wait_reasons"]["names"], plain_report["wait_reasons"]["names"],
                "{ctx}"
            );
        } else {
            let nm = go_nm_functions(binary);
            for (name, p) in &probes {
                assert_eq!(
                    p["addr"].as_u64(),
                    nm.get(name).copied(),
                    "{ctx}: {name} address differs from go tool nm"
                );
            }
            // Absent roles really are absent from the symbol table.
            for p in report["probes"].as_array().unwrap() {
                if p["status"] == "absent" {
                    for sym in p["symbols"].as_array().unwrap() {
                        assert!(
                            !nm.contains_key(sym.as_str().unwrap()),
                            "{ctx}: {sym} reported absent but nm has it"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn inspect_by_pid_matches_inspect_of_the_file() {
    let binary = fixture("abandoned_sender", "1.26", "pie");
    let running = RunningFixture::start(&binary.path);
    let by_pid = parkscope(&["inspect", "--json", "--pid", &running.pid().to_string()]);
    assert!(
        by_pid.status.success(),
        "{}",
        String::from_utf8_lossy(&by_pid.stderr)
    );
    let mut by_pid: Value = serde_json::from_slice(&by_pid.stdout).unwrap();
    let mut by_file = inspect_json(&binary.path);
    assert_eq!(by_pid["pid"], running.pid());
    for report in [&mut by_pid, &mut by_file] {
        report.as_object_mut().unwrap().remove("path");
        report.as_object_mut().unwrap().remove("pid");
    }
    assert_eq!(by_pid, by_file);
}

fn exit_code_of(args: &[&str]) -> (i32, String) {
    let out = parkscope(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("parkscope-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Replace every occurrence of `from` with `to` (same length) in a copy of a binary.
fn patched_copy(
    source: &std::path::Path,
    name: &str,
    from: &[u8],
    to: &[u8],
) -> std::path::PathBuf {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(source).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(
        hits > 0,
        "{} has no {:?}",
        source.display(),
        String::from_utf8_lossy(from)
    );
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_inputs_get_clear_errors_and_distinct_exit_codes() {
    let text = scratch("not-elf.txt");
    std::fs::write(&text, "just text\n").unwrap();
    let (code, err) = exit_code_of(&["inspect", text.to_str().unwrap()]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("not an ELF"), "{err}");

    // A real ELF executable that Go did not build.
    let (code, err) = exit_code_of(&["inspect", "/bin/true"]);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("not a Go binary"), "{err}");

    // The same program claiming to be built by Go 1.19.
    let binary = fixture("abandoned_sender", "1.21", "plain");
    let old = patched_copy(&binary.path, "old-go", b"go1.21.13", b"go1.19.13");
    let (code, err) = exit_code_of(&["inspect", old.to_str().unwrap()]);
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("go1.19.13") && err.contains("1.21"), "{err}");

    // A function the probes need, renamed out of the function table.
    let broken = patched_copy(
        &binary.path,
        "no-gopark",
        b"runtime.gopark\0",
        b"runtime.goparX\0",
    );
    let (code, err) = exit_code_of(&["inspect", broken.to_str().unwrap()]);
    assert_eq!(code, 13, "{err}");
    assert!(err.contains("runtime.gopark"), "{err}");

    // Not amd64.
    let arm = scratch("arm64-fixture");
    let status = Command::new("go")
        .current_dir(parkscope_e2e::repo_root().join("tests/fixtures"))
        .args(["build", "-o"])
        .arg(&arm)
        .arg("./abandoned_sender")
        .env("GOARCH", "arm64")
        .env("CGO_ENABLED", "0")
        .status()
        .unwrap();
    assert!(status.success());
    let (code, err) = exit_code_of(&["inspect", arm.to_str().unwrap()]);
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("amd64"), "{err}");

    // A process that does not exist.
    let (code, err) = exit_code_of(&["inspect", "--pid", "4194321"]);
    assert_eq!(code, 14, "{err}");
    assert!(err.contains("4194321"), "{err}");
}

#[test]
fn an_unprivileged_user_gets_permission_denied_for_another_users_process() {
    let binary = fixture("abandoned_sender", "1.26", "plain");
    let running = RunningFixture::start(&binary.path);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(parkscope_e2e::parkscope_bin())
        .args(["inspect", "--pid", &running.pid().to_string()])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(15), "{err}");
    assert!(err.contains("permission denied"), "{err}");
}
