//! `parkscope snapshot --pid N [--format text|json|dot|svg|pprof] [-o FILE]`

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use parkscope::analysis::leaks::{self, Finding};
use parkscope::error::InspectError;
use parkscope::goruntime::snapshot::{self, Target};
use parkscope::model::Snapshot;
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
    /// Also run the leak and deadlock proof (two scans 100 ms apart, as `parkscope leaks`) and
    /// fill in each goroutine's `verdict` and the `findings` list; leaked and deadlocked groups
    /// are marked in text and coloured in DOT/SVG.
    #[arg(long)]
    pub verdicts: bool,
}

/// A snapshot allocates and frees batch buffers of a few MiB over and over (on several
/// threads): by default glibc hands such blocks back to the kernel on every free, and the next
/// batch then pays a page fault per 4 KiB again. This short-lived process keeps them instead.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; nothing else runs yet. 32 MiB is the
    // largest mmap threshold glibc accepts on 64-bit.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Write to the file (created or truncated) or to stdout, buffered.
fn write_output(
    path: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), InspectError> {
    let write_to = |out: &mut dyn Write| -> std::io::Result<()> {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        write(&mut out)?;
        out.flush()
    };
    match path {
        Some(path) => std::fs::File::create(path)
            .and_then(|mut file| write_to(&mut file))
            .map_err(|e| InspectError::io(format!("writing {}", path.display()), e)),
        None => write_to(&mut std::io::stdout().lock())
            .map_err(|e| InspectError::io("writing to stdout", e)),
    }
}

/// The JSON document: the snapshot plus the leak proof's findings.
#[derive(serde::Serialize)]
struct WithFindings<'a> {
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    #[serde(skip_serializing_if = "Option::is_none")]
    findings: Option<&'a [Finding]>,
}

pub fn run(args: SnapshotArgs) -> Result<i32, InspectError> {
    keep_freed_memory();
    let exe = process::read_exe(args.pid)?;
    let target = Target::open(args.pid, &exe)?;
    let mut snap = snapshot::take(&target)?;
    let findings = if !args.verdicts {
        None
    } else {
        let report = leaks::prove(&target, &leaks::Proof::default())?;
        let verdicts: std::collections::HashMap<i64, &str> = report
            .verdicts
            .iter()
            .map(|v| (v.goid, v.verdict.as_str()))
            .collect();
        for g in &mut snap.goroutines {
            g.verdict = verdicts.get(&g.goid).map(|v| v.to_string());
        }
        Some(report.findings)
    };
    let bytes = match args.format {
        Format::Text => output::text::render(&snap, args.system).into_bytes(),
        Format::Json => {
            // Streamed: at 100k goroutines the document is ~200 MB.
            let doc = WithFindings {
                snapshot: &snap,
                findings: findings.as_deref(),
            };
            write_output(args.output.as_deref(), |w| {
                serde_json::to_writer_pretty(&mut *w, &doc)?;
                w.write_all(b"\n")
            })?;
            std::mem::forget(snap);
            return Ok(0);
        }
        Format::Dot => output::dot::render(&snap).into_bytes(),
        Format::Svg => output::dot::render_svg(&output::dot::render(&snap))?,
        Format::Pprof => output::pprof::render(&snap),
    };
    write_output(args.output.as_deref(), |w| w.write_all(&bytes))?;
    // The process exits next: freeing a hundred thousand goroutines' worth of small allocations
    // one by one would only delay that (by a sizeable part of the whole snapshot's time).
    std::mem::forget(snap);
    Ok(0)
}
