//! Latency histograms for `/metrics`, built from relaxed atomics so recording costs a
//! few uncontended adds, and the process-wide redb commit latency ([`commit_latency`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of [`Histogram`] buckets: 1 ms to 5 min, roughly ×2.5 apart.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A fixed-bucket latency histogram ([`LATENCY_BUCKETS`]), Prometheus-style.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, cumulative, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in seconds.
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Cumulative counts per bound. Read without a lock, so under concurrent
    /// observations `count` may be a little ahead of the buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                total += n.load(Relaxed);
                (bound, total)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count: self.count.load(Relaxed),
        }
    }
}

static COMMIT_LATENCY: Histogram = Histogram {
    buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64::new(0),
    count: AtomicU64::new(0),
};

/// How long redb write-transaction commits take, for every store in this process (one
/// in the running binary).
pub fn commit_latency() -> &'static Histogram {
    &COMMIT_LATENCY
}

/// Commits `txn`, recording how long it took.
pub(crate) fn commit(txn: redb::WriteTransaction) -> Result<(), redb::CommitError> {
    let started = Instant::now();
    let result = txn.commit();
    COMMIT_LATENCY.observe(started.elapsed());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(1000));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.001, 1));
        assert_eq!(s.buckets[4], (0.025, 2));
        assert_eq!(s.buckets.last(), Some(&(300.0, 2)));
        assert!((s.sum - 1000.0205).abs() < 1e-9, "{}", s.sum);
    }
}
