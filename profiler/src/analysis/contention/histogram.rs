//! Log-linear histograms of wait times: a quantile within 1/16 (6%) of the true value, with an
//! exact count, total and maximum.

use std::collections::BTreeMap;

use serde::Serialize;

/// Log-linear histogram of nanoseconds: 16 sub-buckets per power of two, so a quantile is
/// within 1/16 (6%) of the true value; exact count, total and max.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    buckets: BTreeMap<u32, u64>,
}

const SUB_BITS: u32 = 4;

fn bucket_of(v: u64) -> u32 {
    if v < (1 << SUB_BITS) {
        return v as u32;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let mantissa = ((v >> shift) as u32) & ((1 << SUB_BITS) - 1);
    ((exp - SUB_BITS + 1) << SUB_BITS) | mantissa
}

/// Upper bound of a bucket.
fn bucket_high(b: u32) -> u64 {
    if b < (1 << SUB_BITS) {
        return u64::from(b);
    }
    let exp = (b >> SUB_BITS) + SUB_BITS - 1;
    let mantissa = u64::from(b & ((1 << SUB_BITS) - 1));
    let shift = exp - SUB_BITS;
    (((1u64 << SUB_BITS) | mantissa) << shift) + ((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        *self.buckets.entry(bucket_of(ns)).or_default() += 1;
    }

    /// The q-quantile (0..=1), as the upper bound of its bucket (never above max).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return bucket_high(*b).min(self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn summary(&self) -> HistSummary {
        HistSummary {
            count: self.count,
            total_ns: self.total_ns,
            max_ns: self.max_ns,
            p50_ns: self.quantile(0.5),
            p90_ns: self.quantile(0.9),
            p99_ns: self.quantile(0.99),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistSummary {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 31, 32, 1000, 123_456, 10_000_000_000] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            last = b;
            let hi = bucket_high(b);
            assert!(hi >= v, "{v} above its bucket's bound {hi}");
            assert!(
                hi as f64 <= v as f64 * (1.0 + 1.0 / 16.0) + 1.0,
                "{v}: {hi}"
            );
        }
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count, 1000);
        assert_eq!(h.max_ns, 1_000_000);
        assert_eq!(h.total_ns, 500_500_000);
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.07, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.07, "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
    }
}
