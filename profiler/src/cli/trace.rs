//! `parkscope trace --pid N [--duration D] [--probes lifecycle,park,channels,locks] [--json]`

use std::io::Write;
use std::time::Duration;

use clap::Args;
use parkscope::error::InspectError;
use parkscope::probes::decode::render_text;
use parkscope::probes::{self, Output, ProbeGroup, TraceOptions};

#[derive(Args)]
pub struct TraceArgs {
    /// Process to trace.
    #[arg(long)]
    pub pid: u32,
    /// Stop after this long (e.g. 10s, 500ms, 2m); default: until Ctrl-C or the target exits.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Probe groups: lifecycle, park, channels, locks (comma-separated, or "all").
    #[arg(long, default_value = "lifecycle,park,locks", value_parser = parse_probe_list)]
    pub probes: ProbeList,
    /// JSON lines on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// eBPF programs whose events carry the whole user stack (`stack` in JSON), by program
    /// name, comma-separated; "none" for none. Default: contended semaphore waits (Mutex,
    /// RWMutex, WaitGroup waits), where a stack costs ~2.5 µs more per event but the path to
    /// the wait matters; elsewhere the event's first user frame is enough (README, Overhead).
    #[arg(long, value_delimiter = ',', default_value = "semacquire1")]
    pub stack_ids: Vec<String>,
    /// Benchmarks: attach an empty program (it only counts) at exactly the attach points of
    /// the chosen groups instead of the real programs.
    #[arg(long, hide = true)]
    pub floor: bool,
    /// Benchmarks: attach only these programs of the chosen groups (comma-separated).
    #[arg(long, hide = true, value_delimiter = ',')]
    pub only_programs: Option<Vec<String>>,
    #[command(flatten)]
    pub governor: GovernorArgs,
}

/// The overhead governor's settings, shared by every probe-driven command.
#[derive(Args, Clone)]
pub struct GovernorArgs {
    /// CPU the probes may cost the target, in percent of one core; a group over it is
    /// detached for a back-off period (and the output says so).
    #[arg(long, default_value_t = 1.0)]
    pub budget_percent: f64,
    /// First back-off after the governor detaches a group (doubles on repeat).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub backoff: Duration,
    /// Skip measuring the per-hit uprobe cost at startup (use the documented default).
    #[arg(long)]
    pub no_calibrate: bool,
}

impl GovernorArgs {
    /// Session options for `pid` and `groups` under these governor settings.
    pub fn options(&self, pid: u32, groups: Vec<ProbeGroup>) -> Result<TraceOptions, InspectError> {
        if !(self.budget_percent > 0.0 && self.budget_percent <= 100.0) {
            return Err(InspectError::io(
                "--budget-percent",
                std::io::Error::other("must be in (0, 100]"),
            ));
        }
        let mut opts = TraceOptions::new(pid, groups);
        opts.budget = self.budget_percent / 100.0;
        opts.backoff = self.backoff;
        opts.calibrate = !self.no_calibrate;
        Ok(opts)
    }
}

#[derive(Clone)]
pub struct ProbeList(pub Vec<ProbeGroup>);

pub fn parse_probe_list(s: &str) -> Result<ProbeList, String> {
    probes::parse_groups(s).map(ProbeList)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit (500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(args: TraceArgs) -> Result<i32, InspectError> {
    let mut opts = args.governor.options(args.pid, args.probes.0.clone())?;
    opts.duration = args.duration;
    opts.stack_programs = args.stack_ids.into_iter().filter(|p| p != "none").collect();
    opts.floor = args.floor;
    opts.only_programs = args.only_programs;
    let json = args.json;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_failed = false;
    let summary = probes::session::run(&opts, |item| {
        if write_failed {
            return;
        }
        let result = match item {
            Output::Event(e) => {
                if json {
                    serde_json::to_writer(&mut out, e)
                        .map_err(std::io::Error::other)
                        .and_then(|_| out.write_all(b"\n"))
                } else {
                    writeln!(out, "{}", render_text(e))
                }
            }
            Output::Notice(n) => {
                eprintln!("parkscope: {}", n.message);
                if json {
                    let mut value = serde_json::to_value(n).unwrap_or_default();
                    value["event"] = "notice".into();
                    serde_json::to_writer(&mut out, &value)
                        .map_err(std::io::Error::other)
                        .and_then(|_| out.write_all(b"\n"))
                        .and_then(|_| out.flush())
                } else {
                    out.flush()
                }
            }
            Output::Raw { .. }
            | Output::Tick { .. }
            | Output::Hits(_)
            | Output::KernelWaits { .. } => Ok(()),
        };
        // A closed pipe (e.g. `| head`) ends the output, not the session's cleanup.
        if result.is_err() {
            write_failed = true;
        }
    })?;
    let _ = out.flush();
    drop(out);
    let groups: Vec<String> = summary
        .groups
        .iter()
        .map(|(g, s)| {
            let rate = s.hits as f64 / summary.elapsed_s.max(1e-3);
            let mut text = format!("{g} {} hits ({rate:.0}/s)", s.hits);
            if s.detached_by_governor > 0 {
                text.push_str(&format!(
                    ", detached {}x by the governor",
                    s.detached_by_governor
                ));
            }
            text
        })
        .collect();
    eprintln!(
        "parkscope: trace of pid {} ended after {:.1}s ({}): {} events, {} dropped; {}",
        summary.pid,
        summary.elapsed_s,
        summary.end,
        summary.events,
        summary.drops,
        groups.join("; ")
    );
    let programs: Vec<String> = summary
        .program_hits
        .iter()
        .map(|(p, n, run_ns)| match run_ns {
            Some(ns) => format!("{p} {n} ({ns:.0} ns/run)"),
            None => format!("{p} {n}"),
        })
        .collect();
    eprintln!(
        "parkscope: hits per probe{}: {}",
        if args.floor { " (empty program)" } else { "" },
        programs.join(", ")
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
