//! `parkscope inspect <BINARY> | --pid N [--json]`

use std::path::PathBuf;

use clap::Args;
use parkscope::error::InspectError;
use parkscope::gobin::GoBinary;
use parkscope::gobin::probe_points::{self, ProbeLookup};
use parkscope::gobin::waitreasons::ReasonSource;
use parkscope::remote::process;
use serde::Serialize;

#[derive(Args)]
pub struct InspectArgs {
    /// Path to a Go executable.
    #[arg(required_unless_present = "pid", conflicts_with = "pid")]
    pub binary: Option<PathBuf>,
    /// Inspect the executable of a running process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    path: String,
    pid: Option<u32>,
    go_version: &'a str,
    build: BuildReport<'a>,
    text_start: String,
    functions: usize,
    probes: Vec<ProbeLookup>,
    offsets: Vec<OffsetReport<'a>>,
    wait_reasons: Option<WaitReasonReport<'a>>,
}

#[derive(Serialize)]
struct BuildReport<'a> {
    goarch: Option<&'a str>,
    pie: bool,
    cgo: bool,
    stripped: bool,
    dwarf: bool,
    trimpath: bool,
    buildmode: Option<&'a str>,
    main_path: Option<&'a str>,
    settings: &'a std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct OffsetReport<'a> {
    field: &'a str,
    offset: u64,
    size: u64,
    source: parkscope::gobin::offsets::OffsetSource,
}

#[derive(Serialize)]
struct WaitReasonReport<'a> {
    source: ReasonSource,
    names: &'a [String],
}

pub fn run(args: InspectArgs) -> Result<i32, InspectError> {
    let (path, bytes) = match (args.pid, &args.binary) {
        (Some(pid), _) => (
            process::exe_display_name(pid).unwrap_or_else(|| format!("/proc/{pid}/exe")),
            process::read_exe(pid)?,
        ),
        (None, Some(path)) => (path.display().to_string(), process::read_file(path)?),
        (None, None) => unreachable!("clap requires a binary or --pid"),
    };
    let binary = GoBinary::parse(&bytes)?;
    let report = build_report(&binary, path, args.pid);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print_text(&report);
    }
    Ok(0)
}

fn build_report<'a>(binary: &'a GoBinary<'_>, path: String, pid: Option<u32>) -> Report<'a> {
    let build = &binary.build;
    Report {
        path,
        pid,
        go_version: &binary.version.raw,
        build: BuildReport {
            goarch: build.goarch(),
            pie: binary.image.is_pie(),
            cgo: build.cgo_enabled(),
            stripped: binary.is_stripped(),
            dwarf: binary.image.has_dwarf(),
            trimpath: build.trimpath(),
            buildmode: build.buildmode(),
            main_path: build.main_path.as_deref(),
            settings: &build.settings,
        },
        text_start: format!("{:#x}", binary.pclntab.text_start()),
        functions: binary.pclntab.func_count(),
        probes: probe_points::locate_all(&binary.image, &binary.pclntab),
        offsets: binary
            .offsets
            .iter()
            .map(|(field, off)| OffsetReport {
                field,
                offset: off.value,
                size: off.size,
                source: off.source,
            })
            .collect(),
        wait_reasons: binary.wait_reasons.as_ref().map(|w| WaitReasonReport {
            source: w.source,
            names: &w.names,
        }),
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

fn print_text(r: &Report<'_>) {
    println!("{}", r.path);
    if let Some(pid) = r.pid {
        println!("  pid            {pid}");
    }
    println!("  Go version     {}", r.go_version);
    println!("  GOARCH         {}", r.build.goarch.unwrap_or("?"));
    println!("  PIE            {}", yes_no(r.build.pie));
    println!("  cgo            {}", yes_no(r.build.cgo));
    println!("  stripped       {}", yes_no(r.build.stripped));
    println!("  DWARF          {}", yes_no(r.build.dwarf));
    println!("  trimpath       {}", yes_no(r.build.trimpath));
    println!(
        "  text start     {}  ({} functions)",
        r.text_start, r.functions
    );
    println!();
    println!("Probe points (entry, file offset, attach point, RETs):");
    for probe in &r.probes {
        match probe {
            ProbeLookup::Present(p) => println!(
                "  {:<22} {:<40} {:#10x} off {:#9x}  +{:<3} {:<17} rets {:?}",
                p.role,
                p.symbol,
                p.addr,
                p.file_offset,
                p.attach_offset,
                format!("{:?}", p.attach_kind),
                p.ret_offsets
            ),
            ProbeLookup::Absent { role, symbols, .. } => {
                println!(
                    "  {:<22} absent ({}): inlined or not linked",
                    role,
                    symbols.join(" | ")
                )
            }
        }
    }
    println!();
    println!("Struct offsets:");
    for o in &r.offsets {
        println!(
            "  {:<28} {:>6}  size {:<2} {:?}",
            o.field, o.offset, o.size, o.source
        );
    }
    if let Some(w) = &r.wait_reasons {
        println!();
        println!("Wait reasons ({} from {:?}):", w.names.len(), w.source);
        for (i, name) in w.names.iter().enumerate() {
            println!("  {i:>3} {name}");
        }
    } else {
        println!("\nWait reasons: not found in this binary");
    }
}
