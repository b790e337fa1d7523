//! `parkscope leaks --pid N [--format text|json] [--scans N] [--interval-ms MS] [--freeze]`

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use parkscope::analysis::leaks::{self, Mode, Proof, SuspectRule};

use super::trace::parse_duration;
use parkscope::error::InspectError;
use parkscope::goruntime::snapshot::Target;
use parkscope::output;
use parkscope::remote::process;

/// Exit status when at least one goroutine is reported leaked.
pub const FOUND: i32 = 3;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args)]
pub struct LeaksArgs {
    /// Process to read.
    #[arg(long)]
    pub pid: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Scans to run; a goroutine is reported only when every scan flags it unchanged (min 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=20))]
    pub scans: u32,
    /// Pause between scans, in milliseconds (50–200 keeps the target's churn visible).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub interval_ms: u64,
    /// Stop every thread of the target for one consistent scan instead of comparing two scans
    /// of the running process. The pause lasts the whole scan and is reported: tens of
    /// milliseconds for small heaps, but it grows with the live heap (tens of seconds at
    /// 1 GiB on a 2-core VM). If parkscope dies meanwhile the kernel resumes the target.
    #[arg(long, conflicts_with_all = ["scans", "interval_ms"])]
    pub freeze: bool,
    #[command(flatten)]
    pub suspect: SuspectArgs,
}

/// When blocked goroutines that are not proven leaked are reported `suspect`.
#[derive(Args, Clone, Copy)]
pub struct SuspectArgs {
    /// A cluster (same wait reason and site) is suspect from this many goroutines.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub suspect_min_goroutines: u64,
    /// … when every one has been parked at least this long (e.g. 10m, 90s; 0s also accepts
    /// goroutines whose parked time Go has not recorded yet).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub suspect_min_parked: Duration,
}

impl SuspectArgs {
    pub fn rule(self) -> SuspectRule {
        SuspectRule {
            min_goroutines: self.suspect_min_goroutines as usize,
            min_parked_ns: self.suspect_min_parked.as_nanos() as u64,
        }
    }
}

pub fn run(args: LeaksArgs) -> Result<i32, InspectError> {
    let exe = process::read_exe(args.pid)?;
    let target = Target::open(args.pid, &exe)?;
    let mode = if args.freeze {
        Mode::Freeze
    } else {
        Mode::Scans {
            scans: args.scans as usize,
            interval: Duration::from_millis(args.interval_ms),
        }
    };
    let report = leaks::prove(
        &target,
        &Proof {
            mode,
            suspect: args.suspect.rule(),
        },
    )?;
    let bytes = match args.format {
        Format::Text => output::leaks::render(&report).into_bytes(),
        Format::Json => {
            let mut json = serde_json::to_vec_pretty(&report).expect("report serializes");
            json.push(b'\n');
            json
        }
    };
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| InspectError::io("writing to stdout", e))?;
    Ok(if report.leaked + report.deadlocked > 0 {
        FOUND
    } else {
        0
    })
}
