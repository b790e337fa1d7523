//! The accountant's aggregates as ranked rows: waiting sites, holder/waker sites and objects,
//! each with its histogram summary and its top peers.

use std::collections::HashMap;

use serde::Serialize;

use crate::analysis::contention::accountant::{Accountant, Gap, SiteStats};
use crate::analysis::contention::histogram::HistSummary;
use crate::model::Location;
use crate::model::waits::WaitKind;

#[derive(Clone, Debug, Serialize)]
pub struct Peer {
    pub site: String,
    pub function: String,
    pub delay_ns: u64,
}

/// One aggregate line: a waiting site, a holder/waker site, or an object.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub kind: WaitKind,
    /// "function file:line" for sites, the address for objects.
    pub key: String,
    #[serde(flatten)]
    pub stats: HistSummary,
    /// sites: top holder/waker sites; holders: top waiting sites; objects: top waiting sites.
    pub peers: Vec<Peer>,
    pub objects: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub total: HistSummary,
    pub sites: Vec<Row>,
    pub holders: Vec<Row>,
    pub objects: Vec<Row>,
    pub unmatched_wakes: u64,
    /// Windows where a probe group was detached by the governor: totals there are partial.
    pub gaps: Vec<Gap>,
}

impl Accountant {
    pub fn report(&self, top: usize) -> Report {
        fn rows<K: Clone>(
            map: &HashMap<(WaitKind, K), SiteStats>,
            top: usize,
            label: impl Fn(&K) -> String,
        ) -> Vec<Row> {
            let mut v: Vec<Row> = map
                .iter()
                .map(|((kind, key), s)| {
                    let mut peers: Vec<(&Location, &u64)> = s.peers.iter().collect();
                    peers.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                    let mut objects: Vec<(&String, &u64)> = s.objects.iter().collect();
                    objects.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                    Row {
                        kind: *kind,
                        key: label(key),
                        stats: s.hist.summary(),
                        peers: peers
                            .into_iter()
                            .take(3)
                            .map(|(f, ns)| Peer {
                                site: f.to_string(),
                                function: f.function.to_string(),
                                delay_ns: *ns,
                            })
                            .collect(),
                        objects: objects
                            .into_iter()
                            .take(3)
                            .map(|(o, _)| o.clone())
                            .collect(),
                    }
                })
                .collect();
            v.sort_by(|a, b| {
                b.stats
                    .total_ns
                    .cmp(&a.stats.total_ns)
                    .then(a.key.cmp(&b.key))
            });
            v.truncate(top);
            v
        }
        Report {
            total: self.total.summary(),
            sites: rows(&self.by_site, top, |f: &Location| f.to_string()),
            holders: rows(&self.by_holder, top, |f: &Location| f.to_string()),
            objects: rows(&self.by_object, top, |o: &String| o.clone()),
            unmatched_wakes: self.unmatched_wakes,
            gaps: self.gaps.clone(),
        }
    }
}
