//! `cargo xtask setup`: idempotent, fast when everything is present. Installs only through the
//! machine's package managers (apt, cargo, rustup, the Go module proxy), so a fresh machine ends
//! up exactly like this one.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd;

/// Debian's LLVM that bpf-linker links against (its default feature wants LLVM 23).
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Oldest Go that can build the fixtures' module; older toolchains come through GOTOOLCHAIN.
const MIN_GO_MINOR: u32 = 21;

pub fn run() -> anyhow::Result<()> {
    ensure_test_tools()?;
    ensure_llvm()?;
    ensure_bpf_linker()?;
    ensure_go()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn llvm_prefix() -> String {
    format!("/usr/lib/llvm-{LLVM_MAJOR}")
}

fn ensure_llvm() -> anyhow::Result<()> {
    let config = format!("{}/bin/llvm-config", llvm_prefix());
    if Path::new(&config).exists() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian's llvm-{LLVM_MAJOR}-dev (for bpf-linker)");
    if !cmd::succeeds(Command::new("apt-get").arg("--version")) {
        bail!(
            "LLVM {LLVM_MAJOR} is missing and apt-get is not available: install llvm-{LLVM_MAJOR}-dev by hand"
        );
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update (setup needs root to install LLVM)")?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .arg(format!("llvm-{LLVM_MAJOR}-dev"))
            .arg(format!("libpolly-{LLVM_MAJOR}-dev"))
            .args(["libzstd-dev", "zlib1g-dev"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Tools the end-to-end tests drive, by the command that proves each is there: Prometheus and
/// promtool (deploy/ is checked with them), tmux (drives `parkscope top` in a terminal), bpftool
/// (proves no probe outlives a detach). systemd-analyze comes with systemd.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("tmux", "tmux"),
    ("bpftool", "bpftool"),
];

fn ensure_test_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(command, _)| {
            !cmd::succeeds(Command::new(command).arg("-V"))
                && !cmd::succeeds(Command::new(command).arg("--version"))
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Debian packages for the tests: {}",
        missing.join(" ")
    );
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (a few minutes, once)"
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{LLVM_MAJOR}"))
            .env("LLVM_PREFIX", llvm_prefix()),
    )?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` does not run: is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

fn ensure_go() -> anyhow::Result<()> {
    let version = cmd::output(Command::new("go").arg("version")).context(
        "Go is not installed: install a Go toolchain (1.21 or newer); older and newer releases for \
         the fixture matrix are then fetched through GOTOOLCHAIN",
    )?;
    let minor = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.strip_prefix("go1."))
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse::<u32>().ok());
    match minor {
        Some(m) if m >= MIN_GO_MINOR => Ok(()),
        _ => {
            bail!("{version}: Go 1.{MIN_GO_MINOR} or newer is needed to run GOTOOLCHAIN downloads")
        }
    }
}
