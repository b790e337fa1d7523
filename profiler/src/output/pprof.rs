//! A goroutine profile in pprof's format (gzipped protocol buffers, profile.proto), so
//! `go tool pprof` can open what parkscope saw. One sample per goroutine group, labelled with
//! its state and wait reason.

use std::collections::HashMap;
use std::io::Write;

use crate::model::{SharedStr, Snapshot};
use crate::output::group;

/// Minimal protobuf writer: just the wire types profile.proto uses.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }
    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn packed(&mut self, field: u32, values: &[u64]) {
        let mut inner = Pb::default();
        for v in values {
            inner.varint(*v);
        }
        self.bytes(field, &inner.0);
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn id(&mut self, s: &str) -> i64 {
        if self.table.is_empty() {
            self.table.push(String::new());
            self.index.insert(String::new(), 0);
        }
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The encoded, gzipped profile.
pub fn render(snapshot: &Snapshot) -> Vec<u8> {
    let mut strings = Strings::default();
    strings.id("");
    let mut profile = Pb::default();
    // sample_type = [{goroutine, count}]
    let mut vt = Pb::default();
    vt.int(1, strings.id("goroutine"));
    vt.int(2, strings.id("count"));
    profile.bytes(1, &vt.0);

    let mut functions: HashMap<(SharedStr, SharedStr), u64> = HashMap::new();
    let mut locations: HashMap<(SharedStr, SharedStr, u32), u64> = HashMap::new();
    let mut function_msgs = Vec::new();
    let mut location_msgs = Vec::new();

    for group in group(snapshot) {
        let g = group.representative();
        let mut ids = Vec::new();
        for frame in &g.stack {
            let fkey = (frame.function.clone(), frame.file.clone());
            let next_fid = functions.len() as u64 + 1;
            let fid = *functions.entry(fkey).or_insert_with(|| {
                let mut f = Pb::default();
                f.uint(1, next_fid);
                f.int(2, strings.id(&frame.function));
                f.int(3, strings.id(&frame.function));
                f.int(4, strings.id(&frame.file));
                function_msgs.push(f.0);
                next_fid
            });
            let lkey = (frame.function.clone(), frame.file.clone(), frame.line);
            let next_lid = locations.len() as u64 + 1;
            let lid = *locations.entry(lkey).or_insert_with(|| {
                let mut line = Pb::default();
                line.uint(1, fid);
                line.int(2, i64::from(frame.line));
                let mut l = Pb::default();
                l.uint(1, next_lid);
                l.uint(3, frame.pc);
                l.bytes(4, &line.0);
                location_msgs.push(l.0);
                next_lid
            });
            ids.push(lid);
        }
        let mut sample = Pb::default();
        sample.packed(1, &ids);
        sample.packed(2, &[group.members.len() as u64]);
        for (key, value) in [
            ("status", g.status.as_str().to_string()),
            ("wait_reason", g.wait_reason.clone().unwrap_or_default()),
        ] {
            if value.is_empty() {
                continue;
            }
            let mut label = Pb::default();
            label.int(1, strings.id(key));
            label.int(2, strings.id(&value));
            sample.bytes(3, &label.0);
        }
        profile.bytes(2, &sample.0);
    }
    for l in &location_msgs {
        profile.bytes(4, l);
    }
    for f in &function_msgs {
        profile.bytes(5, f);
    }
    for s in &strings.table {
        profile.bytes(6, s.as_bytes());
    }
    // period_type / period: one goroutine per count.
    let mut pt = Pb::default();
    pt.int(1, strings.id("goroutine"));
    pt.int(2, strings.id("count"));
    // (string ids added after the table was written would be lost: both already exist.)
    profile.bytes(11, &pt.0);
    profile.int(12, 1);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.0).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// One sample of a contention profile: a stack (innermost first) and its values.
pub struct StackSample {
    /// (function, file, line), innermost first.
    pub frames: Vec<(String, String, u32)>,
    pub contentions: i64,
    pub delay_ns: i64,
    pub labels: Vec<(String, String)>,
}

/// A contention profile with Go's conventions for the mutex and block profiles: sample types
/// contentions/count and delay/nanoseconds, period type contentions/count, period 1, so
/// `go tool pprof` reads it like Go's own. `comments` end up in the profile's comment list
/// (e.g. partial windows). `duration_ns` is the collection window.
pub fn render_contention(
    samples: &[StackSample],
    comments: &[String],
    duration_ns: i64,
) -> Vec<u8> {
    let mut strings = Strings::default();
    strings.id("");
    let mut profile = Pb::default();
    for (t, u) in [("contentions", "count"), ("delay", "nanoseconds")] {
        let mut vt = Pb::default();
        vt.int(1, strings.id(t));
        vt.int(2, strings.id(u));
        profile.bytes(1, &vt.0);
    }
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: HashMap<(String, String, u32), u64> = HashMap::new();
    let mut function_msgs = Vec::new();
    let mut location_msgs = Vec::new();
    for s in samples {
        let mut ids = Vec::new();
        for (function, file, line) in &s.frames {
            let next_fid = functions.len() as u64 + 1;
            let fid = *functions
                .entry((function.clone(), file.clone()))
                .or_insert_with(|| {
                    let mut f = Pb::default();
                    f.uint(1, next_fid);
                    f.int(2, strings.id(function));
                    f.int(3, strings.id(function));
                    f.int(4, strings.id(file));
                    function_msgs.push(f.0);
                    next_fid
                });
            let next_lid = locations.len() as u64 + 1;
            let lid = *locations
                .entry((function.clone(), file.clone(), *line))
                .or_insert_with(|| {
                    let mut l = Pb::default();
                    let mut ln = Pb::default();
                    ln.uint(1, fid);
                    ln.int(2, i64::from(*line));
                    l.uint(1, next_lid);
                    l.bytes(4, &ln.0);
                    location_msgs.push(l.0);
                    next_lid
                });
            ids.push(lid);
        }
        let mut sample = Pb::default();
        sample.packed(1, &ids);
        sample.packed(2, &[s.contentions as u64, s.delay_ns as u64]);
        for (k, v) in &s.labels {
            let mut label = Pb::default();
            label.int(1, strings.id(k));
            label.int(2, strings.id(v));
            sample.bytes(3, &label.0);
        }
        profile.bytes(2, &sample.0);
    }
    for l in &location_msgs {
        profile.bytes(4, l);
    }
    for f in &function_msgs {
        profile.bytes(5, f);
    }
    let mut pt = Pb::default();
    pt.int(1, strings.id("contentions"));
    pt.int(2, strings.id("count"));
    let comment_ids: Vec<u64> = comments.iter().map(|c| strings.id(c) as u64).collect();
    for s in &strings.table {
        profile.bytes(6, s.as_bytes());
    }
    profile.int(10, duration_ns);
    profile.bytes(11, &pt.0);
    profile.int(12, 1);
    if !comment_ids.is_empty() {
        profile.packed(13, &comment_ids);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.0).expect("writing to memory");
    gz.finish().expect("writing to memory")
}
