//! `cargo xtask fixtures`: build the Go fixture programs (tests/fixtures) with every Go release in
//! the matrix, in plain and (for a few fixtures) stripped, PIE and cgo variants, and write
//! target/fixtures/manifest.json, which the unit and end-to-end tests read.
//!
//! Older and newer toolchains come from the Go module proxy through GOTOOLCHAIN and stay in the
//! module cache, so only the first run on a machine downloads them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::Serialize;

use crate::cmd;

/// The toolchains the tests build with: the oldest supported release, the two releases whose
/// layouts moved (1.23, 1.24), the machine's current release, and the newest the proxy serves.
pub const GO_MATRIX: &[&str] = &[
    "go1.21.13",
    "go1.23.12",
    "go1.24.13",
    "go1.26.8",
    "go1.27.4",
];

/// Fixtures that are also built stripped, as PIE, and with cgo.
const VARIANT_FIXTURES: &[&str] = &["abandoned_sender", "abba_deadlock"];

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    ldflags: Option<&'static str>,
    pie: bool,
    cgo: bool,
}

const PLAIN: Variant = Variant {
    name: "plain",
    ldflags: None,
    pie: false,
    cgo: false,
};
const VARIANTS: &[Variant] = &[
    Variant {
        name: "stripped",
        ldflags: Some("-s -w"),
        pie: false,
        cgo: false,
    },
    Variant {
        name: "pie",
        ldflags: None,
        pie: true,
        cgo: false,
    },
    Variant {
        name: "pie-stripped",
        ldflags: Some("-s -w"),
        pie: true,
        cgo: false,
    },
    Variant {
        name: "cgo",
        ldflags: None,
        pie: false,
        cgo: true,
    },
];

#[derive(Serialize)]
pub struct Binary {
    pub fixture: String,
    pub go: String,
    pub release: String,
    pub variant: String,
    pub path: PathBuf,
}

#[derive(Serialize)]
struct Manifest<'a> {
    binaries: &'a [Binary],
}

pub fn fixtures_dir() -> PathBuf {
    cmd::repo_root().join("tests/fixtures")
}

pub fn out_dir() -> PathBuf {
    cmd::repo_root().join("target/fixtures")
}

/// `go1.24.13` → `1.24`
pub fn release_of(toolchain: &str) -> String {
    let version = toolchain.trim_start_matches("go");
    let mut parts = version.split('.');
    format!(
        "{}.{}",
        parts.next().unwrap_or("0"),
        parts.next().unwrap_or("0")
    )
}

/// The fixture programs: every directory under tests/fixtures with a main.go.
fn fixture_names() -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(fixtures_dir()).context("reading tests/fixtures")? {
        let entry = entry?;
        if entry.path().join("main.go").exists() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    anyhow::ensure!(
        !names.is_empty(),
        "no fixture programs under tests/fixtures"
    );
    Ok(names)
}

pub fn go_command(toolchain: &str) -> Command {
    let mut go = Command::new("go");
    go.current_dir(fixtures_dir()).env("GOTOOLCHAIN", toolchain);
    go
}

/// Build the matrix (or the named releases of it) and write the manifest. The manifest always
/// lists every release already built, so building one release never hides the others.
pub fn build(releases: &[String]) -> anyhow::Result<Vec<Binary>> {
    let names = fixture_names()?;
    let variant_names: Vec<String> = VARIANT_FIXTURES.iter().map(|s| s.to_string()).collect();
    for toolchain in GO_MATRIX {
        let release = release_of(toolchain);
        if !releases.is_empty() && !releases.contains(&release) {
            continue;
        }
        let go = cmd::output(go_command(toolchain).arg("env").arg("GOVERSION"))
            .with_context(|| format!("getting Go toolchain {toolchain} through GOTOOLCHAIN"))?;
        build_variant(toolchain, &release, PLAIN, &names)?;
        for variant in VARIANTS {
            build_variant(toolchain, &release, *variant, &variant_names)?;
        }
        fs::write(out_dir().join(&release).join("go-version"), &go)?;
    }

    let mut binaries = Vec::new();
    for toolchain in GO_MATRIX {
        let release = release_of(toolchain);
        let Ok(go) = fs::read_to_string(out_dir().join(&release).join("go-version")) else {
            continue; // never built on this machine
        };
        for variant in std::iter::once(&PLAIN).chain(VARIANTS) {
            let listed = if variant.name == "plain" {
                &names
            } else {
                &variant_names
            };
            let dir = variant_dir(&release, variant.name);
            for fixture in listed.iter().filter(|f| dir.join(f).exists()) {
                binaries.push(Binary {
                    path: dir.join(fixture),
                    fixture: fixture.clone(),
                    go: go.trim().to_string(),
                    release: release.clone(),
                    variant: variant.name.to_string(),
                });
            }
        }
    }
    let manifest = serde_json::to_string_pretty(&Manifest {
        binaries: &binaries,
    })?;
    fs::create_dir_all(out_dir())?;
    fs::write(out_dir().join("manifest.json"), manifest)?;
    eprintln!(
        "xtask: {} fixture binaries in {}",
        binaries.len(),
        out_dir().display()
    );
    Ok(binaries)
}

fn variant_dir(release: &str, variant: &str) -> PathBuf {
    out_dir().join(release).join(variant)
}

/// Everything a fixture build depends on, hashed: the sources, the toolchain and the variant.
/// Relinking 170 binaries takes minutes; an unchanged matrix is skipped.
fn build_stamp(toolchain: &str, variant: Variant, names: &[String]) -> anyhow::Result<String> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        toolchain,
        variant.name,
        variant.ldflags,
        variant.pie,
        variant.cgo,
        names,
    )
        .hash(&mut hasher);
    let mut files = Vec::new();
    collect_sources(&fixtures_dir(), &mut files)?;
    files.sort();
    for file in files {
        file.hash(&mut hasher);
        fs::read(&file)?.hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn collect_sources(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_sources(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "go" || e == "mod" || e == "c" || e == "h")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn build_variant(
    toolchain: &str,
    release: &str,
    variant: Variant,
    names: &[String],
) -> anyhow::Result<()> {
    let dir = variant_dir(release, variant.name);
    fs::create_dir_all(&dir)?;
    let stamp_file = dir.join(".stamp");
    let stamp = build_stamp(toolchain, variant, names)?;
    if fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str())
        && names.iter().all(|n| dir.join(n).exists())
    {
        return Ok(());
    }
    let mut go = go_command(toolchain);
    go.arg("build").arg("-o").arg(with_trailing_slash(&dir));
    if variant.pie {
        go.arg("-buildmode=pie");
    }
    if let Some(flags) = variant.ldflags {
        go.arg(format!("-ldflags={flags}"));
    }
    if variant.cgo {
        go.args(["-tags", "cgo_variant"]).env("CGO_ENABLED", "1");
    } else {
        // Without this, cgo is on whenever gcc is installed: the build info must say what we mean.
        go.env("CGO_ENABLED", "0");
    }
    let minor: u32 = release
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor == 26 {
        // Go 1.26 has the goroutine leak profile behind an experiment (default from 1.27); the
        // fixtures write it as an oracle when it exists.
        go.env("GOEXPERIMENT", "goroutineleakprofile");
    }
    for name in names {
        go.arg(format!("./{name}"));
    }
    cmd::run(&mut go)
        .with_context(|| format!("building fixtures with {toolchain} ({})", variant.name))?;
    fs::write(&stamp_file, stamp)?;
    Ok(())
}

/// `go build -o DIR/` with several packages needs the trailing slash to mean "into this directory".
fn with_trailing_slash(dir: &Path) -> String {
    format!("{}/", dir.display())
}
