//! `cargo xtask <task>`: everything a fresh machine needs, from one place. Run through `./x`,
//! which first makes sure the pinned Rust toolchain exists.

mod bench;
mod bench_contention;
mod bench_leaks;
mod bench_snapshot;
mod cmd;
mod demo;
mod dist;
mod fixtures;
mod offsets;
mod setup;
mod test;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "parkscope project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (idempotent): rust-src, LLVM 22, bpf-linker; check Go.
    Setup,
    /// Build the Go fixture programs for the Go version matrix into target/fixtures.
    Fixtures {
        /// Only these Go releases (e.g. 1.26); default: the whole matrix.
        #[arg(long, value_delimiter = ',')]
        releases: Vec<String>,
    },
    /// Set up, build everything and run the whole test suite (root end-to-end tests included).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_args: Vec<String>,
    },
    /// Set up, build, start the bundled demo Go service and run parkscope against it.
    Demo,
    /// Measure overhead: each probe group (`probes`), contention profiling against Go's own
    /// (`contention`), snapshots (`snapshot`); leak verdicts against Go's goroutineleak profile
    /// and scan cost on a 1 GiB heap (`leaks`); results in target/bench.
    Bench { what: String },
    /// Build one statically linked parkscope binary (eBPF object embedded) into target/dist.
    Dist,
    /// Regenerate profiler/src/gobin/offsets/table.json from real Go toolchains' DWARF.
    Offsets {
        /// Go toolchains to read (e.g. go1.21.13); default: the newest patch of each release.
        #[arg(long, value_delimiter = ',')]
        releases: Vec<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Fixtures { releases } => fixtures::build(&releases).map(|_| ()),
        Task::Test { cargo_args } => test::run(&cargo_args),
        Task::Demo => demo::run(),
        Task::Dist => dist::run(),
        Task::Bench { what } => bench::run(&what),
        Task::Offsets { releases, out } => offsets::run(&offsets::OffsetsArgs {
            releases,
            out: out
                .unwrap_or_else(|| cmd::repo_root().join("profiler/src/gobin/offsets/table.json")),
        }),
    }
}
