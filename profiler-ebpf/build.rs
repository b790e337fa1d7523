use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary. This would be
/// better expressed by [artifact-dependencies][bindeps] but issues such as
/// https://github.com/rust-lang/cargo/issues/12385 make their use impractical for the time being.
///
/// Rerun the build script when bpf-linker changes (e.g. `cargo xtask setup` rebuilt it).
///
/// [bindeps]: https://doc.rust-lang.org/nightly/cargo/reference/unstable.html#artifact-dependencies
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
