//! `cargo xtask demo`: build parkscope and the bundled demo service (tests/fixtures/demo: a
//! leaking request handler, an AB-BA deadlock and a hot mutex), start the service, and point
//! parkscope at it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{cmd, fixtures, setup};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    let root = cmd::repo_root();
    cmd::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "parkscope",
    ]))?;
    let demo_dir = root.join("target/demo");
    std::fs::create_dir_all(&demo_dir)?;
    let demo_bin = demo_dir.join("order-service");
    // The machine's own Go builds the demo: no download needed to see parkscope work.
    cmd::run(
        Command::new("go")
            .current_dir(fixtures::fixtures_dir())
            .args(["build", "-o"])
            .arg(&demo_bin)
            .arg("./demo")
            .env("CGO_ENABLED", "0"),
    )?;

    let mut demo = Command::new(&demo_bin)
        .env("PARKSCOPE_FIXTURE_OUT", demo_dir.join("out"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the demo service")?;
    let pid = demo.id();
    let result = wait_ready(&mut demo).and_then(|()| {
        let parkscope = root.join("target/release/parkscope");
        let pid = pid.to_string();
        let steps: [(&str, Vec<&str>); 4] = [
            ("what parkscope learns from the binary", vec!["inspect", "--pid", &pid]),
            (
                "every goroutine, what it waits on and who could wake it (from memory: no probe, no pause)",
                vec!["snapshot", "--pid", &pid],
            ),
            (
                "which goroutines are provably leaked (reachability over the heap, two scans)",
                vec!["leaks", "--pid", &pid],
            ),
            (
                "two seconds of live events from uprobes on the Go runtime (parks, wake-ups, locks)",
                vec!["trace", "--pid", &pid, "--duration", "2s", "--probes", "park,locks"],
            ),
        ];
        for (what, args) in steps {
            println!("\n=== parkscope {} — {what} ===\n", args.join(" "));
            let status = Command::new(&parkscope)
                .args(&args)
                .status()
                .context("running parkscope")?;
            // `leaks` exits 3 when it found leaks: for the demo that is the expected answer.
            if !(status.success() || (args[0] == "leaks" && status.code() == Some(3))) {
                anyhow::bail!("parkscope {} failed: {status}", args.join(" "));
            }
        }
        Ok(())
    });
    // SIGTERM: the demo exits cleanly on it.
    terminate(pid);
    let _ = demo.wait();
    result
}

fn wait_ready(child: &mut std::process::Child) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("demo stdout")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut lines = BufReader::new(stdout).lines();
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                println!("demo | {line}");
                if line.starts_with("PARKSCOPE_READY") {
                    // Keep draining the demo's output so it never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines.by_ref() {});
                    return Ok(());
                }
            }
            _ => bail!("the demo service exited before it was ready"),
        }
    }
    bail!("the demo service was not ready within {READY_TIMEOUT:?}")
}

fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}
