//! `parkscope snapshot --pid N [--format text|json|dot|svg|pprof] [-o FILE]`

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use parkscope::error::InspectError;
use parkscope::goruntime::snapshot::{self, Target};
use parkscope::output;
use parkscope::remote::process;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Dot,
    Svg,
    Pprof,
}

#[derive(Args)]
pub struct SnapshotArgs {
    /// Process to read.
    #[arg(long)]
    pub pid: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Text format: also show the runtime's own goroutines (GC workers, sweeper, finalizers).
    #[arg(long)]
    pub system: bool,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: SnapshotArgs) -> Result<i32, InspectError> {
    let exe = process::read_exe(args.pid)?;
    let target = Target::open(args.pid, &exe)?;
    let snap = snapshot::take(&target)?;
    let bytes = match args.format {
        Format::Text => output::text::render(&snap, args.system).into_bytes(),
        Format::Json => {
            let mut json = serde_json::to_vec_pretty(&snap).expect("snapshot serializes");
            json.push(b'\n');
            json
        }
        Format::Dot => output::dot::render(&snap).into_bytes(),
        Format::Svg => output::dot::render_svg(&output::dot::render(&snap))?,
        Format::Pprof => output::pprof::render(&snap),
    };
    match &args.output {
        Some(path) => std::fs::write(path, &bytes)
            .map_err(|e| InspectError::io(format!("writing {}", path.display()), e))?,
        None => std::io::stdout()
            .write_all(&bytes)
            .map_err(|e| InspectError::io("writing to stdout", e))?,
    }
    Ok(0)
}
