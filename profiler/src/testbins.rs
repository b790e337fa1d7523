//! Test support: the real Go binaries `cargo xtask fixtures` built for the version matrix.
//!
//! Tests that need them fail (never skip) when the manifest is missing: `cargo xtask test` builds
//! the fixtures first, and a test that silently passes without its inputs proves nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct TestBinary {
    /// Fixture program name, e.g. "abandoned_sender".
    pub fixture: String,
    /// What `go version` printed for the toolchain, e.g. "go1.24.11".
    pub go: String,
    /// "1.24"
    pub release: String,
    /// plain | stripped | pie | pie-stripped | cgo
    pub variant: String,
    pub path: PathBuf,
}

#[derive(Deserialize)]
struct Manifest {
    binaries: Vec<TestBinary>,
}

pub fn manifest_path() -> PathBuf {
    if let Some(path) = std::env::var_os("PARKSCOPE_FIXTURE_MANIFEST") {
        return PathBuf::from(path);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures/manifest.json")
}

/// Every binary in the matrix. Panics with a how-to when the fixtures were not built.
pub fn all() -> Vec<TestBinary> {
    let path = manifest_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "fixture manifest {} not readable ({e}): run `cargo xtask fixtures` (or `./x test`) first",
            path.display()
        )
    });
    let manifest: Manifest = serde_json::from_str(&text).expect("fixture manifest is valid JSON");
    assert!(
        !manifest.binaries.is_empty(),
        "fixture manifest lists no binaries"
    );
    manifest.binaries
}

pub fn variant(name: &str) -> Vec<TestBinary> {
    all().into_iter().filter(|b| b.variant == name).collect()
}

/// The binary of one fixture, release and variant.
pub fn find(fixture: &str, release: &str, variant: &str) -> Option<TestBinary> {
    all()
        .into_iter()
        .find(|b| b.fixture == fixture && b.release == release && b.variant == variant)
}

/// Every stripped binary with its unstripped twin of the same build mode (stripped ↔ plain,
/// pie-stripped ↔ pie): what a stripped binary reveals must equal what the twin's symbols say.
pub fn stripped_twins() -> Vec<(TestBinary, TestBinary)> {
    all()
        .into_iter()
        .filter_map(|bin| {
            let twin_variant = match bin.variant.as_str() {
                "stripped" => "plain",
                "pie-stripped" => "pie",
                _ => return None,
            };
            let twin = find(&bin.fixture, &bin.release, twin_variant)?;
            Some((bin, twin))
        })
        .collect()
}
