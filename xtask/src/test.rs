//! `cargo xtask test`: the whole suite, as CI runs it. Unit tests read the fixture binaries;
//! end-to-end tests start real Go programs and attach the real eBPF programs, so they need root
//! (or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE).

use std::process::Command;

use crate::{cmd, fixtures, setup};

pub fn run(cargo_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    fixtures::build(&[])?;
    let root = cmd::repo_root();
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    cmd::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--workspace",
        "--all-targets",
    ]))?;
    let mut totals = (0u64, 0u64, 0u64);
    let mut test = |args: &[&str]| -> anyhow::Result<()> {
        let mut cargo = Command::new("cargo");
        cargo
            .current_dir(&root)
            .arg("test")
            .args(args)
            .args(cargo_args)
            .env("PARKSCOPE_BIN", root.join("target/debug/parkscope"))
            .env(
                "PARKSCOPE_FIXTURE_MANIFEST",
                fixtures::out_dir().join("manifest.json"),
            );
        let counts = run_counting(&mut cargo)?;
        totals = (
            totals.0 + counts.0,
            totals.1 + counts.1,
            totals.2 + counts.2,
        );
        Ok(())
    };
    // Unit tests in parallel; end-to-end tests one at a time: they attach probes and run busy
    // Go programs on a 2-core machine, and the governor test measures throughput.
    test(&["--workspace", "--exclude", "parkscope-e2e"])?;
    test(&["-p", "parkscope-e2e", "--", "--test-threads=1"])?;
    // One line for the whole suite (cargo prints one per test binary).
    println!(
        "{} passed, {} failed, {} skipped",
        totals.0, totals.1, totals.2
    );
    Ok(())
}

/// Run `cargo test`, passing its output through, and add up its "test result:" lines.
fn run_counting(cargo: &mut Command) -> anyhow::Result<(u64, u64, u64)> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: $ {}", cmd::describe(cargo));
    let mut child = cargo.stdout(std::process::Stdio::piped()).spawn()?;
    let mut totals = (0, 0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                result
                    .split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            totals.0 += count("passed");
            totals.1 += count("failed");
            totals.2 += count("ignored");
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "{} failed: {status}",
        cmd::describe(cargo)
    );
    Ok(totals)
}
