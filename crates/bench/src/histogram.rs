//! A lock-free latency histogram with 2 % wide log buckets, mergeable
//! across processes (the benchmark's workers send their counts).

use std::sync::atomic::{AtomicU64, Ordering};

const GROWTH: f64 = 1.02;
/// Enough buckets for 1 µs .. ~1000 s.
pub(crate) const BUCKETS: usize = 1400;

pub(crate) struct Histogram {
    counts: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    (((micros as f64).ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn bucket_upper(i: usize) -> f64 {
    GROWTH.powi(i as i32 + 1)
}

impl Histogram {
    pub(crate) fn record(&self, micros: u64) {
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Counts merged from several histograms.
#[derive(Debug, Clone, Default)]
pub(crate) struct Merged {
    pub(crate) counts: Vec<u64>,
}

impl Merged {
    pub(crate) fn add(&mut self, counts: &[u64]) {
        if self.counts.len() < counts.len() {
            self.counts.resize(counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(counts) {
            *a += b;
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency (ms) below which `q` of the samples fall.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper(i) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(us * 10);
        }
        let mut m = Merged::default();
        m.add(&h.snapshot());
        assert_eq!(m.total(), 10_000);
        let p50 = m.quantile_ms(0.5).unwrap();
        assert!((p50 - 50.0).abs() / 50.0 < 0.03, "{p50}");
        let p99 = m.quantile_ms(0.99).unwrap();
        assert!((p99 - 99.0).abs() / 99.0 < 0.03, "{p99}");
        assert_eq!(Merged::default().quantile_ms(0.5), None);
    }
}
