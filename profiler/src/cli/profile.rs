//! `parkscope profile --pid N --duration 30s [-o contention.pb.gz] [--format pprof|json|text]`:
//! contention over a window, from the park/wake and lock probes. pprof output follows Go's
//! mutex/block profile conventions (contentions/count, delay/nanoseconds, stacks of the waiting
//! site); a second file (`<name>.holders.pb.gz`) charges the same delay to the holder/waker
//! sites, like Go's mutex profile charges it to the Unlock.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use parkscope::analysis::contention::{Accountant, Report};
use parkscope::error::InspectError;
use parkscope::output::contention::{accountant_samples, gap_lines, render_text};
use parkscope::output::pprof::render_contention;
use parkscope::probes::governor::Action;
use parkscope::probes::observe::Observer;
use parkscope::probes::session::{self, Summary};
use parkscope::probes::{self, Output, ProbeGroup, TraceOptions};
use serde::Serialize;

use super::trace::{GovernorArgs, parse_duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Pprof,
    Json,
    Text,
}

/// Options shared by `profile` and `top`.
#[derive(Args, Clone)]
pub struct ProbeArgs {
    /// Probe groups (park is required; locks names lock sites and holders; channels names the
    /// waker site of channel operations, at a higher probe rate).
    #[arg(long, default_value = "park,locks", value_parser = parse_probe_list)]
    pub probes: ProbeList,
    /// A window in which the governor detached a group is marked partial in the output.
    #[command(flatten)]
    pub governor: GovernorArgs,
}

#[derive(Clone)]
pub struct ProbeList(pub Vec<ProbeGroup>);

fn parse_probe_list(s: &str) -> Result<ProbeList, String> {
    let groups = probes::parse_groups(s)?;
    if !groups.contains(&ProbeGroup::Park) {
        return Err("contention accounting needs the park group (park,locks)".into());
    }
    Ok(ProbeList(groups))
}

impl ProbeArgs {
    pub fn options(&self, pid: u32) -> Result<TraceOptions, InspectError> {
        let mut opts = self.governor.options(pid, self.probes.0.clone())?;
        opts.raw = true;
        Ok(opts)
    }
}

#[derive(Args)]
pub struct ProfileArgs {
    /// Process to profile.
    #[arg(long)]
    pub pid: u32,
    /// How long to collect (e.g. 30s, 500ms, 2m); Ctrl-C ends early and still writes.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Output file (pprof: default contention.pb.gz; json/text: default stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "pprof")]
    pub format: Format,
    /// Rows per table in text and JSON.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// Feed one session output into the accountant (events symbolized through `obs`, one per
/// session); notices go to stderr. Shared with `top`.
pub fn account(acc: &mut Accountant, obs: &mut Observer, item: &Output<'_>, quiet: bool) {
    match item {
        Output::Raw { event, decoder } => {
            acc.feed(&obs.observe(*decoder, event));
        }
        Output::Notice(n) => {
            if !quiet {
                eprintln!("parkscope: {}", n.message);
            }
            match &n.action {
                Some(Action::Detach { group, .. }) => acc.gap_start(group.name(), n.ts_ns),
                Some(Action::Reattach { group }) => acc.gap_end(group.name(), n.ts_ns),
                None => {}
            }
        }
        Output::Event(_) | Output::Tick { .. } | Output::Hits(_) | Output::KernelWaits { .. } => {}
    }
}

#[derive(Serialize)]
struct JsonOut<'a> {
    pid: u32,
    elapsed_s: f64,
    end: String,
    partial: bool,
    partial_windows: Vec<String>,
    events: u64,
    drops: u64,
    #[serde(flatten)]
    report: &'a Report,
}

fn holders_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "contention.pb.gz".into());
    let holders = match name.find('.') {
        Some(i) => format!("{}.holders{}", &name[..i], &name[i..]),
        None => format!("{name}.holders"),
    };
    path.with_file_name(holders)
}

pub fn run(args: ProfileArgs) -> Result<i32, InspectError> {
    let mut opts = args.probe.options(args.pid)?;
    opts.duration = Some(args.duration);
    let mut acc = Accountant::new(args.format == Format::Pprof);
    let start_ns = session::monotonic_ns();
    let mut obs = Observer::new();
    let summary: Summary = session::run(&opts, |item| account(&mut acc, &mut obs, &item, false))?;
    let end_ns = session::monotonic_ns();
    acc.flush_deferred();
    for g in acc.gaps.iter_mut() {
        if g.to_ns.is_none() {
            g.to_ns = Some(end_ns);
        }
    }
    let report = acc.report(args.top);
    let partial = gap_lines(&report, start_ns);
    for p in &partial {
        eprintln!("parkscope: {p}");
    }
    match args.format {
        Format::Pprof => {
            let path = args
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from("contention.pb.gz"));
            let hpath = holders_path(&path);
            let duration = end_ns.saturating_sub(start_ns) as i64;
            let mut comments = vec![format!(
                "parkscope contention profile of pid {}: delay from park to wake-up per \
                 contended wait, stacks of the waiting site",
                args.pid
            )];
            comments.extend(partial.iter().cloned());
            let waiting = render_contention(&accountant_samples(&acc, false), &comments, duration);
            comments[0] = format!(
                "parkscope contention profile of pid {}: the same delay charged to the \
                 holder/waker site (the release that woke the waiter)",
                args.pid
            );
            let holding = render_contention(&accountant_samples(&acc, true), &comments, duration);
            std::fs::write(&path, waiting)
                .map_err(|e| InspectError::io(format!("writing {}", path.display()), e))?;
            std::fs::write(&hpath, holding)
                .map_err(|e| InspectError::io(format!("writing {}", hpath.display()), e))?;
            eprintln!(
                "parkscope: wrote {} (waiting sites) and {} (holder/waker sites)",
                path.display(),
                hpath.display()
            );
        }
        Format::Json | Format::Text => {
            let text = if args.format == Format::Json {
                let out = JsonOut {
                    pid: summary.pid,
                    elapsed_s: summary.elapsed_s,
                    end: summary.end.to_string(),
                    partial: !partial.is_empty(),
                    partial_windows: partial.clone(),
                    events: summary.events,
                    drops: summary.drops,
                    report: &report,
                };
                serde_json::to_string_pretty(&out).unwrap_or_default() + "\n"
            } else {
                render_text(&report, &partial)
            };
            match &args.output {
                Some(path) => std::fs::write(path, text)
                    .map_err(|e| InspectError::io(format!("writing {}", path.display()), e))?,
                None => {
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                }
            }
        }
    }
    eprintln!(
        "parkscope: profile of pid {} ended after {:.1}s ({}): {} events, {} dropped, {} \
         contended waits, {} wakes of waits that began before the window",
        summary.pid,
        summary.elapsed_s,
        summary.end,
        summary.events,
        summary.drops,
        report.total.count,
        report.unmatched_wakes
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_file_name_sits_next_to_the_waiting_one() {
        assert_eq!(
            holders_path(Path::new("/tmp/x/contention.pb.gz")),
            PathBuf::from("/tmp/x/contention.holders.pb.gz")
        );
        assert_eq!(
            holders_path(Path::new("prof")),
            PathBuf::from("prof.holders")
        );
    }
}
