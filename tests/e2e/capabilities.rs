//! Which privileges parkscope really needs, proven by running it as an unprivileged user with
//! only the named capabilities (the deploy manifests grant exactly these).

use std::process::{Command, Output};

use parkscope_e2e::{RunningFixture, fixture, parkscope_bin};

fn as_nobody_with(caps: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if !caps.is_empty() {
        cmd.arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"));
    }
    cmd.arg(parkscope_bin())
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn memory_reading_needs_only_sys_ptrace() {
    let binary = fixture("abba_deadlock", "1.26", "plain");
    let running = RunningFixture::start(&binary.path);
    let pid = running.pid().to_string();
    let out = as_nobody_with(
        "+sys_ptrace",
        &["snapshot", "--pid", &pid, "--format", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap["pid"], running.pid());
    let out = as_nobody_with("", &["snapshot", "--pid", &pid]);
    assert_eq!(
        out.status.code(),
        Some(15),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn live_probes_work_with_bpf_perfmon_sys_admin_and_sys_ptrace() {
    let binary = fixture("healthy_contention", "1.26", "plain");
    let running = RunningFixture::start(&binary.path);
    let pid = running.pid().to_string();
    let out = as_nobody_with(
        "+bpf,+perfmon,+sys_admin,+sys_ptrace",
        &[
            "trace",
            "--pid",
            &pid,
            "--duration",
            "1s",
            "--probes",
            "locks",
            "--json",
            "--no-calibrate",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(
        events.lines().any(|l| l.contains("\"event\":\"lock\"")),
        "no lock events:\n{events}"
    );
}
