//! Go's own profiles as oracles: per-site delay from `go tool pprof -traces`, and the
//! comparison of parkscope's sites against them (ratios within one run, never absolute times).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Frames a site is never charged to: the blocking machinery above the user's code.
pub fn is_machinery(function: &str) -> bool {
    function.starts_with("runtime.")
        || function.starts_with("sync.")
        || function.starts_with("internal/")
}

pub fn parse_value(v: &str) -> f64 {
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("bad value {v:?}"));
    n * match unit {
        "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" | "" => 1.0,
        "m" | "min" | "mins" => 60e9,
        "hrs" => 3600e9,
        _ => panic!("unit {unit:?} in {v:?}"),
    }
}

/// `go tool pprof -traces`: delay (ns) per first user frame (function name).
pub fn delay_by_site(profile: &Path, go: &str) -> BTreeMap<String, f64> {
    let mut sites = BTreeMap::new();
    for (_, site, v) in traces(profile, go) {
        *sites.entry(site).or_insert(0.0) += v;
    }
    sites
}

/// `go tool pprof -traces`: delay (ns) per (kind label, first user frame); the kind is empty
/// in Go's own profiles, which have no labels.
pub fn delay_by_kind_and_site(profile: &Path, go: &str) -> BTreeMap<(String, String), f64> {
    let mut sites = BTreeMap::new();
    for (kind, site, v) in traces(profile, go) {
        *sites.entry((kind, site)).or_insert(0.0) += v;
    }
    sites
}

/// Each trace of `go tool pprof -traces -sample_index=delay`: (kind label, site, delay ns).
pub fn traces(profile: &Path, go: &str) -> Vec<(String, String, f64)> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-traces", "-sample_index=delay"])
        .arg(profile)
        .env("GOTOOLCHAIN", go)
        .output()
        .expect("go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof -traces {}: {}",
        profile.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut traces = Vec::new();
    for block in text.split("-----------+").skip(1) {
        let mut value = None;
        let mut site = None;
        let mut kind = String::new();
        for line in block.lines().skip(1) {
            let t = line.trim();
            if let Some(k) = t.strip_prefix("kind:") {
                kind = k.trim().trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            if t.is_empty() || t.contains(":  ") || t.starts_with("---") {
                continue; // another label line or the separator's tail
            }
            let function = if value.is_none() {
                let (v, f) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
                value = Some(parse_value(v));
                f.trim()
            } else {
                t
            };
            let function = function.trim_end_matches(" (inline)");
            if site.is_none() && !function.is_empty() && !is_machinery(function) {
                site = Some(function.to_string());
            }
        }
        if let (Some(v), Some(s)) = (value, site) {
            traces.push((kind, s, v));
        }
    }
    traces
}

pub fn top(sites: &BTreeMap<String, f64>, n: usize) -> Vec<String> {
    let mut v: Vec<(&String, &f64)> = sites.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    v.into_iter().take(n).map(|(s, _)| s.clone()).collect()
}

/// Sites carrying at least 5% of `oracle`'s total must be within `margin` (a ratio error) in
/// `ours`; the top-`top_n` sets must be equal. Returns the worst ratio error.
pub fn compare(
    ctx: &str,
    ours: &BTreeMap<String, f64>,
    oracle: &BTreeMap<String, f64>,
    margin: f64,
    top_n: usize,
) -> f64 {
    eprintln!("{ctx}: parkscope {ours:?}\n{ctx}: go        {oracle:?}");
    let total: f64 = oracle.values().sum();
    assert!(total > 0.0, "{ctx}: Go's profile is empty");
    let mut worst: f64 = 0.0;
    for (site, go) in oracle {
        if *go < 0.05 * total {
            continue;
        }
        let mine = ours.get(site).copied().unwrap_or(0.0);
        let err = (mine / go - 1.0).abs();
        worst = worst.max(err);
        assert!(
            err <= margin,
            "{ctx}: {site}: parkscope {:.1}ms vs Go {:.1}ms",
            mine / 1e6,
            go / 1e6
        );
    }
    let (mut a, mut b) = (top(ours, top_n), top(oracle, top_n));
    a.sort();
    b.sort();
    assert_eq!(a, b, "{ctx}: top-{top_n} sites");
    worst
}
