//! `parkscope daemon [--all | --pid N... | --exe-regex R | --cgroup PATH] [--listen ADDR]`

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use parkscope::daemon::discovery::Selector;
use parkscope::daemon::{self, DaemonConfig};
use parkscope::error::InspectError;

#[derive(Args)]
pub struct DaemonArgs {
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
    /// Address for /metrics and the API. Loopback by default; binding elsewhere exposes
    /// goroutine stacks to that network.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Seconds between /proc rescans.
    #[arg(long, default_value_t = 2.0)]
    pub discovery_interval: f64,
    /// Seconds between snapshots of each process (±10% jitter).
    #[arg(long, default_value_t = 15.0)]
    pub snapshot_interval: f64,
    /// Most series per metric; the rest are folded into an `__overflow__` label.
    #[arg(long, default_value_t = 2000)]
    pub max_series: usize,
    /// Skip the leak proof (two extra heap scans per snapshot).
    #[arg(long)]
    pub no_leaks: bool,
    /// Attach these probe groups to every followed process for wait-time histograms
    /// (e.g. locks,park; needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN besides CAP_SYS_PTRACE).
    /// Default: none, memory reads only.
    #[arg(long, value_parser = super::trace::parse_probe_list)]
    pub probes: Option<super::trace::ProbeList>,
    /// The probes' CPU budget per process, in percent of one core.
    #[arg(long, default_value_t = 1.0)]
    pub probe_budget_percent: f64,
}

pub fn run(args: DaemonArgs) -> Result<i32, InspectError> {
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
        listen: args.listen,
        discovery_interval: seconds(args.discovery_interval, "--discovery-interval")?,
        snapshot_interval: seconds(args.snapshot_interval, "--snapshot-interval")?,
        max_series: args.max_series,
        leaks: !args.no_leaks,
        probes: args.probes.map(|p| p.0).unwrap_or_default(),
        probe_budget: args.probe_budget_percent / 100.0,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| InspectError::io("starting the async runtime", e))?;
    runtime.block_on(daemon::run(config))?;
    Ok(0)
}
