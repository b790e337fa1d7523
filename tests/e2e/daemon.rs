//! `parkscope daemon` end to end: it follows fixture processes as they start and exit, serves
//! their snapshots and metrics, and its own memory stays bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use parkscope_e2e::pprof::{compare, delay_by_site};
use parkscope_e2e::{RunningFixture, fixture, parkscope_bin, wait_for_file};

/// As in the contention tests: both sides time the same waits (park → ready), so the margin
/// only absorbs rounding and the odd wait at the window's edges.
const MAX_RATIO_ERROR: f64 = 0.20;
use serde_json::Value;

struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        let mut child = Command::new(parkscope_bin())
            .arg("daemon")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--discovery-interval",
                "0.2",
                "--snapshot-interval",
                "0.5",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("parkscope daemon listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Daemon { child, addr }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.get_with(path, "");
        (status, body)
    }

    /// GET with extra request header lines; returns status, response head and body.
    fn get_with(&self, path: &str, headers: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    fn processes(&self) -> Vec<Value> {
        let (status, body) = self.get("/api/v1/processes");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<Value>>(&body).unwrap()
    }

    /// Wait until `check` holds, or fail with `what`.
    fn wait_until(&self, what: &str, mut check: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting until {what}");
    }

    fn has_snapshot_of(&self, pid: u32) -> bool {
        self.processes()
            .iter()
            .any(|p| p["pid"] == pid && p["goroutines"].as_u64().is_some())
    }

    fn follows(&self, pid: u32) -> bool {
        self.processes().iter().any(|p| p["pid"] == pid)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn stop(&mut self) -> Option<i32> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within 5 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    /// A failed assertion must not leave a daemon running (it would follow later tests' fixtures).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Value of a metric series whose labels contain all of `labels`.
fn metric(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn daemon_follows_processes_as_they_come_and_go() {
    let mut daemon = Daemon::start(&["--exe-regex", "/target/fixtures/1\\.26/plain/"]);
    assert_eq!(daemon.get("/healthz").0, 200);
    let (a, b, c) = (
        fixture("abandoned_sender", "1.26", "plain"),
        fixture("abba_deadlock", "1.26", "plain"),
        fixture("idle_worker_pool", "1.26", "plain"),
    );
    let first = RunningFixture::start(&a.path);
    daemon.wait_until("the first fixture is snapshotted", |d| {
        d.has_snapshot_of(first.pid())
    });
    let second = RunningFixture::start(&b.path);
    daemon.wait_until("the second fixture is snapshotted", |d| {
        d.has_snapshot_of(second.pid())
    });
    assert_eq!(daemon.get("/readyz").0, 200);

    // Its snapshot is the CLI's schema, and its metrics count what the fixture says.
    let (status, body) = daemon.get(&format!("/api/v1/processes/{}/snapshot", first.pid()));
    assert_eq!(status, 200);
    let snap: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snap["pid"], first.pid());
    let leaked_senders = first
        .truth
        .goroutines
        .iter()
        .filter(|g| g.wait_reason == "chan send")
        .count();
    let leaked_expected = first
        .truth
        .goroutines
        .iter()
        .filter(|g| g.expect == "leaked")
        .count();
    let pid_label = format!("pid=\"{}\"", first.pid());
    let pid2 = format!("pid=\"{}\"", second.pid());
    // The daemon may first have caught a fixture before its sync point: wait for a fresh scan.
    daemon.wait_until("the metrics show both fixtures' blocked goroutines", |d| {
        let (_, metrics) = d.get("/metrics");
        metric(
            &metrics,
            "parkscope_goroutines",
            &[&pid_label, "state=\"chan send\""],
        ) == Some(leaked_senders as f64)
            && metric(
                &metrics,
                "parkscope_goroutines",
                &[&pid2, "state=\"sync.Mutex.Lock\""],
            ) == Some(2.0)
    });
    // The AB-BA pair is deadlocked (not leaked), the abandoned senders leaked.
    daemon.wait_until("the leak and deadlock verdicts reach the metrics", |d| {
        let (_, metrics) = d.get("/metrics");
        let sum = |name: &str, pid: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(name) && l.contains(pid))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        sum("parkscope_deadlocked_goroutines{", &pid2) == 2.0
            && sum("parkscope_leaked_goroutines{", &pid2) == 0.0
            && sum("parkscope_leaked_goroutines{", &pid_label) == leaked_expected as f64
            && sum("parkscope_deadlocked_goroutines{", &pid_label) == 0.0
    });
    let (_, metrics) = daemon.get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "parkscope_process_info",
            &[&pid_label, "go_version=\"go1.26.8"]
        ),
        Some(1.0)
    );
    // OpenMetrics when asked for it (as Prometheus asks first), the classic text otherwise.
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n";
    let (status, head, om) = daemon.get_with("/metrics", accept);
    assert_eq!(status, 200);
    assert!(
        head.contains("application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE parkscope_scans counter\n"), "{om}");
    assert!(om.contains("parkscope_scans_total{"), "{om}");
    let (_, head, text) = daemon.get_with("/metrics", "");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(!text.contains("# EOF") && text.contains("# TYPE parkscope_scans_total counter"));
    let (status, dot) = daemon.get(&format!("/api/v1/processes/{}/graph.dot", second.pid()));
    assert_eq!(status, 200);
    assert!(dot.starts_with("digraph"));

    // The first leaves; a third arrives.
    let first_pid = first.pid();
    drop(first);
    daemon.wait_until("the exited fixture is dropped", |d| !d.follows(first_pid));
    let (_, metrics) = daemon.get("/metrics");
    assert!(
        !metrics.contains(&pid_label),
        "exited process still in /metrics"
    );
    let third = RunningFixture::start(&c.path);
    daemon.wait_until("the third fixture is snapshotted", |d| {
        d.has_snapshot_of(third.pid())
    });
    assert!(daemon.follows(second.pid()));
    assert_eq!(
        daemon
            .get(&format!("/api/v1/processes/{first_pid}/snapshot"))
            .0,
        404
    );
    assert_eq!(daemon.stop(), Some(0));
}

/// SIGTERM does not wait for a snapshot in progress: a 100k-goroutine process with its leak
/// proof takes seconds to read (more in this debug build), and supervisors expect a prompt exit.
#[test]
fn daemon_exits_promptly_on_sigterm_mid_snapshot() {
    let binary = fixture("bench_parked", "1.26", "plain");
    let running =
        RunningFixture::start_with_env(&binary.path, &[("PARKSCOPE_BENCH_GOROUTINES", "100000")]);
    let mut daemon = Daemon::start(&["--pid", &running.pid().to_string()]);
    // The first snapshot starts at once; let it get going, then stop the daemon.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !daemon.has_snapshot_of(running.pid()),
        "the snapshot finished too soon for this test to mean anything"
    );
    let stopping = Instant::now();
    assert_eq!(daemon.stop(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?} from SIGTERM to exit",
        stopping.elapsed()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.pid())).unwrap();
    assert!(
        status.contains("TracerPid:\t0\n"),
        "the target runs on, untraced"
    );
}

#[test]
fn daemon_memory_stays_bounded_across_process_churn() {
    let mut daemon = Daemon::start(&[
        "--exe-regex",
        "/target/fixtures/1\\.21/plain/idle_worker_pool$",
    ]);
    let binary = fixture("idle_worker_pool", "1.21", "plain");
    let mut rss_after_warmup = 0;
    for cycle in 0..100 {
        let running = RunningFixture::start(&binary.path);
        daemon.wait_until("the fixture is followed", |d| d.follows(running.pid()));
        drop(running);
        if cycle == 9 {
            rss_after_warmup = daemon.rss_kib();
        }
    }
    daemon.wait_until("no process is followed", |d| d.processes().is_empty());
    let rss = daemon.rss_kib();
    // Growth per cycle would show as megabytes over 90 cycles; allocator noise is far smaller.
    assert!(
        rss < rss_after_warmup + 8 * 1024,
        "daemon RSS grew from {rss_after_warmup} KiB to {rss} KiB"
    );
    assert_eq!(daemon.stop(), Some(0));
}

/// `--probes`: each followed process gets a probe session under the governor; the metrics carry
/// its wait-time histograms, event counts and group states; SIGTERM detaches it. Here with
/// `--probe-events` (every event to userspace, as `profile` does); the oracle test below covers
/// the default, waits timed in the kernel.
#[test]
fn daemon_probes_serve_wait_histograms_and_detach_on_exit() {
    let binary = fixture("healthy_contention", "1.27", "plain");
    let running = RunningFixture::start(&binary.path);
    let pid = running.pid();
    let mut daemon = Daemon::start(&[
        "--pid",
        &pid.to_string(),
        "--probes",
        "locks,park",
        "--probe-budget-percent",
        "100",
        "--probe-events",
    ]);
    let pid_label = format!("pid=\"{pid}\"");
    daemon.wait_until("mutex waits show in the wait-time histogram", |d| {
        let (_, metrics) = d.get("/metrics");
        metrics.lines().any(|l| {
            l.starts_with("parkscope_wait_seconds_count{")
                && l.contains(&pid_label)
                && l.contains("kind=\"mutex\"")
                && l.contains("site=\"main.")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
        })
    });
    let (_, metrics) = daemon.get("/metrics");
    assert!(
        metrics.contains("# TYPE parkscope_wait_seconds histogram"),
        "{metrics}"
    );
    assert!(metric(&metrics, "parkscope_probe_events_total", &[&pid_label]).unwrap() > 0.0);
    daemon.wait_until("the locks group's hits are counted", |d| {
        let (_, metrics) = d.get("/metrics");
        metric(
            &metrics,
            "parkscope_probe_hits_total",
            &[&pid_label, "group=\"locks\""],
        )
        .is_some_and(|hits| hits > 0.0)
    });
    for group in ["locks", "park"] {
        assert!(
            metric(
                &metrics,
                "parkscope_probe_group_attached",
                &[&pid_label, &format!("group=\"{group}\"")]
            )
            .is_some(),
            "{group}: {metrics}"
        );
    }
    // OpenMetrics keeps the histogram as is.
    let accept = "Accept: application/openmetrics-text;version=1.0.0\r\n";
    let (_, _, om) = daemon.get_with("/metrics", accept);
    assert!(om.contains("# TYPE parkscope_wait_seconds histogram"));
    assert_eq!(daemon.stop(), Some(0));
    // The target runs on, untouched.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0\n"));
}

/// The default probe mode times waits in the kernel and sends no event: its wait-time
/// histograms agree with Go's own block profile of the same window (contention_oracle turns it
/// on at "go" and writes it when its contended workload is done).
#[test]
fn daemon_kernel_wait_histograms_agree_with_gos_block_profile() {
    for release in ["1.21", "1.26"] {
        let binary = fixture("contention_oracle", release, "plain");
        let ctx = format!("contention_oracle {}", binary.go);
        let running = RunningFixture::start(&binary.path);
        let pid = running.pid();
        let pid_label = format!("pid=\"{pid}\"");
        let daemon = Daemon::start(&[
            "--pid",
            &pid.to_string(),
            "--no-leaks",
            "--probes",
            "locks,park",
            "--probe-budget-percent",
            "50",
        ]);
        daemon.wait_until("both probe groups attached", |d| {
            let (_, metrics) = d.get("/metrics");
            ["locks", "park"].iter().all(|g| {
                metric(
                    &metrics,
                    "parkscope_probe_group_attached",
                    &[&pid_label, &format!("group=\"{g}\"")],
                ) == Some(1.0)
            })
        });
        let dir = &running.out_dir;
        std::fs::write(dir.join("go"), b"").unwrap();
        wait_for_file(&dir.join("contention_result.json"), Duration::from_secs(60));
        // The session reads the kernel's totals every governor period (250 ms).
        std::thread::sleep(Duration::from_secs(1));
        let (_, metrics) = daemon.get("/metrics");
        assert_eq!(
            metric(&metrics, "parkscope_probe_events_total", &[&pid_label]),
            Some(0.0),
            "{ctx}: no event crosses the ring buffer"
        );
        // Nothing contended before "go", so every contended wake-up had its park seen.
        assert_eq!(
            metric(
                &metrics,
                "parkscope_probe_waits_untimed_total",
                &[&pid_label]
            ),
            Some(0.0),
            "{ctx}: untimed waits"
        );
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("parkscope_governor_detaches_total{")
                    && l.contains(&pid_label)
                    && !l.ends_with(" 0")),
            "{ctx}: the governor stepped in at a 50% budget: {metrics}"
        );
        // parkscope_wait_seconds_sum{...,kind="…",site="function file:line"} → per function.
        let mut ours: BTreeMap<String, f64> = BTreeMap::new();
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("parkscope_wait_seconds_sum{") && l.contains(&pid_label))
        {
            let site = line
                .split("site=\"")
                .nth(1)
                .and_then(|rest| rest.split([' ', '"']).next())
                .unwrap_or_else(|| panic!("{ctx}: no site in {line}"));
            let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            *ours.entry(site.to_string()).or_default() += seconds * 1e9;
        }
        let go_block = delay_by_site(&dir.join("block.pprof"), &binary.go);
        let worst = compare(
            &format!("{ctx} waiting"),
            &ours,
            &go_block,
            MAX_RATIO_ERROR,
            3,
        );
        eprintln!("{ctx}: kernel-timed waiting sites: worst ratio error {worst:.3}");
    }
}

#[test]
fn daemon_rejects_bad_input_and_keeps_serving() {
    // Port in use: a clear error, nonzero exit.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().to_string();
    let out = Command::new(parkscope_bin())
        .args(["daemon", "--all", "--listen", &port])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&port),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad regular expression.
    let out = Command::new(parkscope_bin())
        .args(["daemon", "--exe-regex", "(unclosed"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exe-regex"));

    // A malformed config file, and one with a misspelt key: the file, line and key named.
    let dir = std::env::temp_dir().join(format!("parkscope-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, expected) in [
        ("broken.toml", "listen = 127.0.0.1:9464\n", "line 1"),
        (
            "typo.toml",
            "all = true\nsnapshot_intervall = 3\n",
            "snapshot_intervall",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(parkscope_bin())
            .args(["daemon", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{name}");
        assert!(
            stderr.contains(name) && stderr.contains(expected),
            "{name}: {stderr}"
        );
    }

    // A non-Go pid is not followed; a Go one next to it is (both from a config file).
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let binary = fixture("timers", "1.26", "plain");
    let go = RunningFixture::start(&binary.path);
    let config = dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "pids = [{}, {}]\nmax_series = 100\n",
            sleeper.id(),
            go.pid()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&["--config", config.to_str().unwrap()]);
    daemon.wait_until("the Go process is snapshotted", |d| {
        d.has_snapshot_of(go.pid())
    });
    assert!(!daemon.follows(sleeper.id()));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(daemon.stop(), Some(0));
}
