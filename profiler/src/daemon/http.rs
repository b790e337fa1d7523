//! A small HTTP/1.1 server for GET requests: /metrics, the snapshot API, health. One request per
//! connection; request heads are bounded.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::daemon::SharedState;
use crate::daemon::metrics::Metrics;
use crate::output;

const MAX_REQUEST_HEAD: usize = 16 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    fn json(value: &impl serde::Serialize) -> Response {
        Response::ok(
            "application/json",
            serde_json::to_vec_pretty(value).expect("serializable"),
        )
    }

    fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{message}\n").into_bytes(),
        }
    }
}

pub async fn serve(listener: TcpListener, state: SharedState, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (state, metrics) = (state.clone(), metrics.clone());
        tokio::spawn(async move {
            let _ = handle(stream, state, metrics).await;
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    state: SharedState,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return write(&mut stream, Response::error(431, "request head too large")).await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let openmetrics =
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .any(|(name, value)| {
                name.trim().eq_ignore_ascii_case("accept") && wants_openmetrics(value)
            });
    let response = if method != "GET" {
        Response::error(405, "only GET is supported")
    } else {
        // Rendering may take a while for big processes: off the async workers.
        let path = path.to_string();
        tokio::task::spawn_blocking(move || route(&path, openmetrics, &state, &metrics))
            .await
            .unwrap_or_else(|_| Response::error(500, "internal error"))
    };
    write(&mut stream, response).await
}

async fn write(stream: &mut TcpStream, r: Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&r.body).await?;
    stream.shutdown().await
}

#[derive(serde::Serialize)]
struct ProcessSummary<'a> {
    pid: u32,
    ns_pid: Option<u32>,
    executable: &'a str,
    go_version: &'a str,
    container_id: Option<&'a str>,
    cgroup: &'a str,
    goroutines: Option<usize>,
    last_snapshot: Option<&'a str>,
    scan_seconds: f64,
    error: Option<&'a str>,
}

/// Whether an Accept header asks for OpenMetrics (as Prometheus does first when scraping).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let mut params = media.split(';');
        let kind = params.next().unwrap_or("").trim();
        let refused = params.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        kind.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

pub fn route(path: &str, openmetrics: bool, state: &SharedState, metrics: &Metrics) -> Response {
    let path = path.split('?').next().unwrap_or(path);
    let shared = state.lock().unwrap();
    match path {
        "/healthz" => return Response::ok("text/plain", "ok\n"),
        "/readyz" if shared.ready => return Response::ok("text/plain", "ready\n"),
        "/readyz" => return Response::error(503, "first discovery pass not finished"),
        "/metrics" => {
            let mut processes: Vec<_> = shared.processes.values().collect();
            processes.sort_by_key(|p| p.candidate.id.pid);
            let text = metrics.render(&processes);
            return if openmetrics {
                Response::ok(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    crate::daemon::metrics::to_openmetrics(&text),
                )
            } else {
                Response::ok("text/plain; version=0.0.4; charset=utf-8", text)
            };
        }
        "/api/v1/processes" => {
            let mut list: Vec<ProcessSummary<'_>> = shared
                .processes
                .values()
                .map(|p| ProcessSummary {
                    pid: p.candidate.id.pid,
                    ns_pid: p.candidate.ns_pid,
                    executable: &p.candidate.exe,
                    go_version: &p.go_version,
                    container_id: p.candidate.container_id.as_deref(),
                    cgroup: &p.candidate.cgroup,
                    goroutines: p.snapshot.as_ref().map(|s| s.goroutines.len()),
                    last_snapshot: p.snapshot.as_ref().map(|s| s.taken_at.as_str()),
                    scan_seconds: p.scan_seconds,
                    error: p.last_error.as_deref(),
                })
                .collect();
            list.sort_by_key(|p| p.pid);
            return Response::json(&list);
        }
        _ => {}
    }
    // /api/v1/processes/{pid}/{snapshot|graph.dot|graph.svg}
    let Some(rest) = path.strip_prefix("/api/v1/processes/") else {
        return Response::error(404, "not found");
    };
    let Some((pid, what)) = rest.split_once('/') else {
        return Response::error(404, "not found");
    };
    let Some(process) = pid
        .parse::<u32>()
        .ok()
        .and_then(|pid| shared.processes.get(&pid))
    else {
        return Response::error(404, "no such followed process");
    };
    let Some(snapshot) = process.snapshot.clone() else {
        return Response::error(503, "no snapshot of this process yet");
    };
    drop(shared);
    match what {
        "snapshot" => Response::json(&*snapshot),
        "leaks" => match state
            .lock()
            .unwrap()
            .processes
            .get(&snapshot.pid)
            .and_then(|p| p.leaks.clone())
        {
            Some(report) => Response::json(&*report),
            None => Response::error(503, "no leak scan of this process yet (or --no-leaks)"),
        },
        "graph.dot" => Response::ok("text/vnd.graphviz", output::dot::render(&snapshot)),
        "graph.svg" => match output::dot::render_svg(&output::dot::render(&snapshot)) {
            Ok(svg) => Response::ok("image/svg+xml", svg),
            Err(e) => Response::error(503, &e.to_string()),
        },
        _ => Response::error(404, "not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_openmetrics_from_the_accept_header() {
        // What Prometheus 2.x/3.x sends.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("application/openmetrics-text; q=0"));
    }
}
