//! The deployment material is checked by the tools that consume it: Kubernetes API types,
//! systemd, promtool, and a real Prometheus server scraping a real daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parkscope_e2e::{RunningFixture, fixture, parkscope_bin, repo_root};
use serde_json::Value;

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("parkscope-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn check_manifests(paths: &[PathBuf]) -> std::process::Output {
    Command::new("go")
        .current_dir(deploy().join("check"))
        .arg("run")
        .arg(".")
        .args(paths)
        .output()
        .expect("go run deploy/check")
}

#[test]
fn kubernetes_manifests_match_the_api_types_and_the_promised_security() {
    let manifests = vec![
        deploy().join("kubernetes/daemonset.yaml"),
        deploy().join("kubernetes/sidecar-example.yaml"),
    ];
    let out = check_manifests(&manifests);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The checker is strict: a misspelled field and a privileged container both fail.
    let original = std::fs::read_to_string(&manifests[0]).unwrap();
    for (name, broken) in [
        (
            "unknown-field.yaml",
            original.replace("hostPID: true", "hostPID: true\n      hostNetwork_: true"),
        ),
        (
            "privileged.yaml",
            original.replace("privileged: false", "privileged: true"),
        ),
        (
            "extra-cap.yaml",
            original.replace("\"SYS_PTRACE\"]", "\"SYS_PTRACE\", \"SYS_ADMIN\"]"),
        ),
    ] {
        assert_ne!(broken, original, "{name}: the mutation did not apply");
        let path = scratch(name);
        std::fs::write(&path, broken).unwrap();
        let out = check_manifests(&[path]);
        assert!(!out.status.success(), "{name} was accepted");
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(deploy().join("systemd/parkscope.service")).unwrap();
    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace(
        "/usr/local/bin/parkscope",
        parkscope_bin().to_str().unwrap(),
    );
    let path = scratch("parkscope.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_and_dashboard_are_valid() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy().join("prometheus/parkscope-alerts.yml"))
        .output()
        .expect("promtool (Debian package prometheus; ./x test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/parkscope-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap())
        })
        .collect();
    assert!(exprs.len() >= 6);
    // Every metric the dashboard and the alerts use is one the daemon documents.
    let documented = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let rules = std::fs::read_to_string(deploy().join("prometheus/parkscope-alerts.yml")).unwrap();
    for text in exprs.iter().copied().chain([rules.as_str()]) {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("parkscope_") {
                let base = word
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count")
                    .trim_end_matches("_bucket");
                assert!(
                    documented.contains(&format!("`{base}`")),
                    "{word} is not in docs/metrics.md"
                );
            }
        }
    }
}

struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_the_daemon() {
    let binary = fixture("abandoned_sender", "1.26", "plain");
    let running = RunningFixture::start(&binary.path);
    let senders = running
        .truth
        .goroutines
        .iter()
        .filter(|g| g.wait_reason == "chan send")
        .count();

    let pid = running.pid().to_string();
    let mut daemon = Command::new(parkscope_bin())
        .args([
            "daemon",
            "--pid",
            &pid,
            "--listen",
            "127.0.0.1:0",
            "--snapshot-interval",
            "0.5",
            "--discovery-interval",
            "0.2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let daemon = Background(daemon);
    let daemon_addr = line.trim().rsplit("http://").next().unwrap().to_string();

    // promtool agrees /metrics is well-formed exposition.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let text = http_get(&daemon_addr, "/metrics");
        if text.contains("state=\"chan send\"") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Prometheus itself scrapes the daemon and answers a PromQL query with the fixture's count.
    let dir = scratch("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: parkscope\n    static_configs:\n      - targets: [\"{daemon_addr}\"]\n"),
    )
    .unwrap();
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let prometheus = Background(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package; ./x test installs it)"),
    );
    let query = format!(
        "/api/v1/query?query=parkscope_goroutines%7Bpid%3D%22{pid}%22%2Cstate%3D%22chan%20send%22%7D"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the series"
        );
        std::thread::sleep(Duration::from_millis(500));
        let Ok(_) = TcpStream::connect(&prom_addr) else {
            continue;
        };
        let body = http_get(&prom_addr, &query);
        let Ok(json) = serde_json::from_str::<Value>(&body) else {
            continue;
        };
        if let Some(v) = json["data"]["result"][0]["value"][1].as_str() {
            break v.to_string();
        }
    };
    assert_eq!(value, senders.to_string());
    // The leak verdicts travel the same way: PromQL over the daemon's proof equals the truth.
    let leaked = running
        .truth
        .goroutines
        .iter()
        .filter(|g| g.expect == "leaked")
        .count();
    let query =
        format!("/api/v1/query?query=sum(parkscope_leaked_goroutines%7Bpid%3D%22{pid}%22%7D)");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = http_get(&prom_addr, &query);
        let json: Value = serde_json::from_str(&body).unwrap_or_default();
        if json["data"]["result"][0]["value"][1].as_str() == Some(leaked.to_string().as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PromQL never returned {leaked} leaked goroutines: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);
    drop(daemon);
    let _ = std::fs::remove_dir_all(dir);
}
