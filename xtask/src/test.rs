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
    let test = |args: &[&str]| {
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
        cmd::run(&mut cargo)
    };
    // Unit tests in parallel; end-to-end tests one at a time: they attach probes and run busy
    // Go programs on a 2-core machine, and the governor test measures throughput.
    test(&["--workspace", "--exclude", "parkscope-e2e"])?;
    test(&["-p", "parkscope-e2e", "--", "--test-threads=1"])
}
