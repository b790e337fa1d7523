//! `parkscope top --pid N`: a live view of contention, refreshed every second. On a terminal it
//! redraws in place (alternate screen) and quits on q or Ctrl-C; otherwise it prints one plain
//! text block per refresh until Ctrl-C, the duration, or the target's exit. The target is never
//! touched beyond the probes, which are all detached on the way out. Each refresh also counts
//! the goroutines by state from the target's memory (g records only: no stacks, no pause).

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use parkscope::analysis::contention::Accountant;
use parkscope::error::InspectError;
use parkscope::goruntime::goroutines::AddrMap;
use parkscope::goruntime::snapshot::Target;
use parkscope::goruntime::states;
use parkscope::output::contention::{fmt_ns, gap_lines, render_states, render_text};
use parkscope::probes::governor::Action;
use parkscope::probes::observe::Observer;
use parkscope::probes::session::{self, Output};
use parkscope::remote::memory::ProcessMemory;
use parkscope::remote::process;

use super::profile::{ProbeArgs, account};
use super::trace::parse_duration;

#[derive(Args)]
pub struct TopArgs {
    /// Process to watch.
    #[arg(long)]
    pub pid: u32,
    /// Refresh period.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// Stop after this long (default: until q, Ctrl-C or the target exits).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Rows per table.
    #[arg(long, default_value_t = 8)]
    pub rows: usize,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// Puts the terminal in non-canonical, no-echo mode (Ctrl-C still sends SIGINT) and restores
/// it on drop.
struct TermGuard {
    saved: libc::termios,
}

impl TermGuard {
    fn new() -> Option<TermGuard> {
        // SAFETY: termios calls on fd 0 with a struct we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            Some(TermGuard { saved })
        }
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in new().
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

pub fn run(args: TopArgs) -> Result<i32, InspectError> {
    // The goroutine table is read with the binary's own layouts, prepared once.
    let exe_bytes = process::read_exe(args.pid)?;
    let target = Target::open(args.pid, &exe_bytes)?;
    let mem = ProcessMemory::new(args.pid);
    let mut system_by_startpc: AddrMap<u64, bool> = AddrMap::default();
    let mut opts = args.probe.options(args.pid)?;
    opts.duration = args.duration;
    // SAFETY: isatty on a standard descriptor.
    let tty = unsafe { libc::isatty(1) } == 1;
    let stop = Arc::new(AtomicBool::new(false));
    opts.stop = Some(stop.clone());
    let guard = if tty { TermGuard::new() } else { None };
    if guard.is_some() {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin();
            while let Ok(1) = stdin.read(&mut byte) {
                if matches!(byte[0], b'q' | b'Q' | 3) {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
        });
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if tty {
        // Alternate screen, hidden cursor.
        let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = out.flush();
    }
    let mut acc = Accountant::new(false);
    let mut obs = Observer::new();
    let start_ns = session::monotonic_ns();
    let mut last = Instant::now();
    let mut refreshes = 0u64;
    let mut detached: Vec<String> = Vec::new();
    let mut attached = String::new();
    let mut write_failed = false;
    let pid = args.pid;
    let interval = args.interval;
    let rows = args.rows;
    let result = session::run(&opts, |item| {
        if let Output::Notice(n) = &item {
            match &n.action {
                Some(Action::Detach { group, .. }) => detached.push(group.name().to_string()),
                Some(Action::Reattach { group }) => detached.retain(|g| g != group.name()),
                None => {}
            }
            if n.notice == "attached" {
                attached = n.message.clone();
            }
        }
        // On a terminal the notices would scroll the view away: they show in its header.
        account(&mut acc, &mut obs, &item, tty);
        if let Output::Tick { ts_ns } = item
            && last.elapsed() >= interval
            && !write_failed
        {
            last = Instant::now();
            refreshes += 1;
            let report = acc.report(rows);
            let waiting = acc.waiting_now();
            let mut s = String::new();
            if tty {
                s.push_str("\x1b[H\x1b[2J");
            }
            s.push_str(&format!(
                "parkscope top — pid {pid} — refresh #{refreshes} at {:.1}s — window {:.1}s{}\n",
                ts_ns.saturating_sub(start_ns) as f64 / 1e9,
                interval.as_secs_f64(),
                if tty { " — q or Ctrl-C quits" } else { "" }
            ));
            s.push_str(&format!("{attached}\n"));
            if detached.is_empty() {
                s.push_str("governor: all groups attached\n");
            } else {
                s.push_str(&format!(
                    "governor: DETACHED {} (over budget; this window is partial)\n",
                    detached.join(",")
                ));
            }
            s.push_str(&render_states(
                &states::count(&target, &mem, &mut system_by_startpc),
                rows,
            ));
            let mut waiting: Vec<_> = waiting.into_iter().collect();
            waiting.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.1.1.cmp(&b.1.1)));
            let now_waiting: u64 = waiting.iter().map(|w| w.1.0).sum();
            s.push_str(&format!("waiters now: {now_waiting}\n"));
            for ((kind, site), (n, oldest)) in waiting.iter().take(rows) {
                s.push_str(&format!(
                    "  {n:>5} {:<13} {site}  (longest {})\n",
                    kind.name(),
                    fmt_ns(ts_ns.saturating_sub(*oldest))
                ));
            }
            s.push_str(&render_text(&report, &gap_lines(&report, start_ns)));
            if !tty {
                s.push_str("----\n");
            }
            if out
                .write_all(s.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                write_failed = true;
                stop.store(true, Ordering::Relaxed);
            }
            acc.reset_window();
        }
    });
    if tty {
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
    drop(guard);
    let summary = result?;
    eprintln!(
        "parkscope: top of pid {} ended after {:.1}s ({}): {} events, {} dropped",
        summary.pid, summary.elapsed_s, summary.end, summary.events, summary.drops
    );
    Ok(0)
}
