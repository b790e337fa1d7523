//! `cargo xtask dist`: one self-contained `parkscope` binary in target/dist: statically linked
//! (glibc's crt-static), the eBPF object embedded, runnable on a host with nothing installed.

use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd;

const TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn run() -> anyhow::Result<()> {
    let root = cmd::repo_root();
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--release", "-p", "parkscope", "--target", TARGET])
            // With an explicit --target, RUSTFLAGS reach only the target, not build scripts.
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    let built = root.join("target").join(TARGET).join("release/parkscope");
    let dist = root.join("target/dist");
    std::fs::create_dir_all(&dist)?;
    let out = dist.join("parkscope");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    // Prove it: no program interpreter, no shared libraries.
    let file = cmd::output(Command::new("file").arg(&out)).unwrap_or_default();
    if file.contains("dynamically linked") {
        bail!("{} is dynamically linked: {file}", out.display());
    }
    let version = cmd::output(Command::new(&out).arg("--version"))?;
    eprintln!("xtask: {} ({version}): {file}", out.display());
    Ok(())
}
