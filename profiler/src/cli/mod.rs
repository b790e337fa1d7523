//! Command-line interface: one file per subcommand.

mod daemon;
mod inspect;
mod leaks;
mod profile;
mod snapshot;
mod top;
mod trace;

use clap::{Parser, Subcommand};
use parkscope::error::{InspectError, exit_code};

#[derive(Parser)]
#[command(
    name = "parkscope",
    version,
    about = "Find leaked goroutines, deadlocks and lock contention in live Go programs",
    long_about = "parkscope reads a running Go program from the outside — its binary, its memory \
                  and eBPF uprobes on the Go runtime — without changing, rebuilding or restarting it.",
    after_help = exit_code::HELP
)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log as JSON lines (for log shippers).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show what parkscope knows about a Go binary: version, build settings, probe points,
    /// struct offsets, wait reasons.
    #[command(after_help = exit_code::HELP)]
    Inspect(inspect::InspectArgs),
    /// Read every goroutine of a live process, what it waits on and who could wake it: no
    /// probe, no pause.
    #[command(after_help = exit_code::HELP)]
    Snapshot(snapshot::SnapshotArgs),
    /// Prove goroutine leaks from outside: goroutines blocked on channels or sync primitives
    /// nothing that can still run refers to (a reachability scan of the process's memory,
    /// confirmed by two scans), nil-channel waits and `select {}`. Exits 3 when something
    /// leaked, 0 when nothing did.
    #[command(after_help = exit_code::HELP)]
    Leaks(leaks::LeaksArgs),
    /// Stream live events from eBPF uprobes on the Go runtime: goroutine creation and exit,
    /// parks and wake-ups, channel operations, contended locks; under a CPU budget.
    #[command(after_help = exit_code::HELP)]
    Trace(trace::TraceArgs),
    /// Contention profile over a window: wait time per contended wait (mutex, rwmutex,
    /// waitgroup, cond, channels) by waiting site, holder/waker site and object; pprof (Go's
    /// mutex/block conventions, plus a holder-site file), JSON or text.
    #[command(after_help = exit_code::HELP)]
    Profile(profile::ProfileArgs),
    /// Live contention view, refreshed every second: top waiting sites, objects, holder sites,
    /// waiters now, governor state. q or Ctrl-C quits.
    #[command(after_help = exit_code::HELP)]
    Top(top::TopArgs),
    /// Follow Go processes as they come and go; serve Prometheus metrics (/metrics) and the
    /// snapshot API over HTTP.
    #[command(after_help = exit_code::HELP)]
    Daemon(daemon::DaemonArgs),
}

pub fn run(cli: Cli) -> Result<i32, InspectError> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Leaks(args) => leaks::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Top(args) => top::run(args),
        Command::Daemon(args) => daemon::run(args),
    }
}

pub fn init_logging(verbose: u8, json: bool, default_level: &str) {
    let level = match verbose {
        0 => default_level,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARKSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
