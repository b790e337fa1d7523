//! Builds the eBPF programs in `profiler-ebpf` for `bpfel-unknown-none` and leaves the object in
//! OUT_DIR, where `probes` embeds it with `include_bytes_aligned!`.
//!
//! The eBPF crate needs `-Z build-std=core`. We build it with the same pinned stable toolchain as
//! everything else and RUSTC_BOOTSTRAP=1 (scoped to that child build), so no nightly is needed.
use std::env;

fn main() -> anyhow::Result<()> {
    // rustup tells child processes which toolchain it resolved from rust-toolchain.toml.
    println!("cargo::rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "1.98.0".to_string());
    // SAFETY: build scripts are single-threaded at this point; the variable is only read by the
    // child cargo that aya-build spawns.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = aya_build::Package {
        name: "profiler-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../profiler-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
}
