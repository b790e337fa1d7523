//! `parkscope daemon [--all | --pid N... | --exe-regex R | --cgroup PATH] [--listen ADDR]
//! [--config FILE]`
//!
//! Settings come from the command line, then the TOML file given with `--config` (same names,
//! with `_` for `-`; a flag given on the command line wins), then the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use parkscope::daemon::discovery::Selector;
use parkscope::daemon::{self, DaemonConfig};
use parkscope::error::InspectError;

#[derive(Args)]
pub struct DaemonArgs {
    /// Read settings from this TOML file (keys as the flags: `all`, `pids`, `exe_regex`,
    /// `cgroup`, `listen`, `discovery_interval`, `snapshot_interval`, `max_series`,
    /// `no_leaks`, `probes`, `probe_budget_percent`); command-line flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Follow every Go process on the host.
    #[arg(long)]
    pub all: bool,
    /// Follow these processes (repeatable).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Follow Go processes whose executable path matches this regular expression.
    #[arg(long)]
    pub exe_regex: Option<String>,
    /// Follow Go processes in this cgroup (a path prefix as in /proc/PID/cgroup).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Address for /metrics and the API [default: 127.0.0.1:9464]. Loopback by default;
    /// binding elsewhere exposes goroutine stacks to that network.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Seconds between /proc rescans [default: 2].
    #[arg(long)]
    pub discovery_interval: Option<f64>,
    /// Seconds between snapshots of each process, ±10% jitter [default: 15].
    #[arg(long)]
    pub snapshot_interval: Option<f64>,
    /// Most series per metric; the rest are folded into an `__overflow__` label [default: 2000].
    #[arg(long)]
    pub max_series: Option<usize>,
    /// Skip the leak proof (two extra heap scans per snapshot).
    #[arg(long)]
    pub no_leaks: bool,
    /// Attach these probe groups to every followed process for wait-time histograms
    /// (e.g. locks,park; needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN besides CAP_SYS_PTRACE).
    /// Default: none, memory reads only.
    #[arg(long, value_parser = super::trace::parse_probe_list)]
    pub probes: Option<super::trace::ProbeList>,
    /// The probes' CPU budget per process, in percent of one core [default: 1].
    #[arg(long)]
    pub probe_budget_percent: Option<f64>,
    /// Send every probe event to userspace and time the waits there, as `profile` does. By
    /// default the kernel times and sums them (no event traffic, fewer probes attached).
    #[arg(long)]
    pub probe_events: bool,
}

/// The `--config` file: every key optional, unknown keys refused (a typo must not pass).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub all: Option<bool>,
    pub pids: Option<Vec<u32>>,
    pub exe_regex: Option<String>,
    pub cgroup: Option<String>,
    pub listen: Option<SocketAddr>,
    pub discovery_interval: Option<f64>,
    pub snapshot_interval: Option<f64>,
    pub max_series: Option<usize>,
    pub no_leaks: Option<bool>,
    pub probes: Option<Vec<String>>,
    pub probe_budget_percent: Option<f64>,
    pub probe_events: Option<bool>,
}

pub fn read_config(path: &Path) -> Result<FileConfig, InspectError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InspectError::io(format!("reading --config {}", path.display()), e))?;
    parse_config(&text).map_err(|e| {
        InspectError::io(
            format!("--config {}", path.display()),
            std::io::Error::other(e),
        )
    })
}

/// Parse the TOML text; the error names the line and the key.
pub fn parse_config(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// Command-line flags over the file's settings.
fn merge(mut args: DaemonArgs, file: FileConfig) -> Result<DaemonArgs, InspectError> {
    args.all |= file.all.unwrap_or(false);
    if args.pids.is_empty() {
        args.pids = file.pids.unwrap_or_default();
    }
    args.exe_regex = args.exe_regex.or(file.exe_regex);
    args.cgroup = args.cgroup.or(file.cgroup);
    args.listen = args.listen.or(file.listen);
    args.discovery_interval = args.discovery_interval.or(file.discovery_interval);
    args.snapshot_interval = args.snapshot_interval.or(file.snapshot_interval);
    args.max_series = args.max_series.or(file.max_series);
    args.no_leaks |= file.no_leaks.unwrap_or(false);
    if args.probes.is_none()
        && let Some(groups) = file.probes
    {
        let list = super::trace::parse_probe_list(&groups.join(","))
            .map_err(|e| InspectError::io("--config probes", std::io::Error::other(e)))?;
        args.probes = Some(list);
    }
    args.probe_budget_percent = args.probe_budget_percent.or(file.probe_budget_percent);
    args.probe_events |= file.probe_events.unwrap_or(false);
    Ok(args)
}

pub fn run(args: DaemonArgs) -> Result<i32, InspectError> {
    let args = match args.config.clone() {
        Some(path) => merge(args, read_config(&path)?)?,
        None => args,
    };
    let exe_pattern = args
        .exe_regex
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| InspectError::io("--exe-regex", std::io::Error::other(e.to_string())))?;
    if !args.all && args.pids.is_empty() && exe_pattern.is_none() && args.cgroup.is_none() {
        return Err(InspectError::io(
            "choose what to follow",
            std::io::Error::other("pass --all, --pid, --exe-regex or --cgroup"),
        ));
    }
    let seconds = |s: f64, what: &str| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(InspectError::io(
                what.to_string(),
                std::io::Error::other("must be a positive number of seconds"),
            ))
        }
    };
    let config = DaemonConfig {
        selector: Selector {
            all: args.all,
            pids: args.pids,
            exe_pattern,
            cgroup: args.cgroup,
        },
        listen: args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9464))),
        discovery_interval: seconds(
            args.discovery_interval.unwrap_or(2.0),
            "--discovery-interval",
        )?,
        snapshot_interval: seconds(
            args.snapshot_interval.unwrap_or(15.0),
            "--snapshot-interval",
        )?,
        max_series: args.max_series.unwrap_or(2000),
        leaks: !args.no_leaks,
        probes: args.probes.map(|p| p.0).unwrap_or_default(),
        probe_budget: args.probe_budget_percent.unwrap_or(1.0) / 100.0,
        probe_events: args.probe_events,
    };
    if !config.probe_events {
        let idle: Vec<&str> = config
            .probes
            .iter()
            .filter(|g| !parkscope::probes::groups::aggregates(**g))
            .map(|g| g.name())
            .collect();
        if !idle.is_empty() {
            tracing::warn!(
                "--probes {}: not attached; with waits timed in the kernel only park and locks \
                 are used (--probe-events sends every event instead)",
                idle.join(",")
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| InspectError::io("starting the async runtime", e))?;
    let result = runtime.block_on(daemon::run(config));
    // A snapshot still reading a big process is not waited for: it only reads the target.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_parse_and_refuse_typos_with_the_line() {
        let c = parse_config(
            "pids = [12, 34]\nlisten = \"0.0.0.0:9500\"\nprobes = [\"locks\", \"park\"]\nsnapshot_interval = 30.0\n",
        )
        .unwrap();
        assert_eq!(c.pids, Some(vec![12, 34]));
        assert_eq!(c.listen, Some("0.0.0.0:9500".parse().unwrap()));
        assert_eq!(c.snapshot_interval, Some(30.0));
        let typo = parse_config("pids = [1]\nsnapshot_intervall = 3\n").unwrap_err();
        assert!(
            typo.contains("snapshot_intervall") && typo.contains("line 2"),
            "{typo}"
        );
        let broken = parse_config("listen = 127.0.0.1:9464\n").unwrap_err();
        assert!(broken.contains("line 1"), "{broken}");
    }
}
