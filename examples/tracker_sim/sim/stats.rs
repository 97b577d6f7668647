//! Counters all simulated trackers share, and the ack latency histogram.
//!
//! Latencies go into a log-linear histogram of atomics (32 buckets per power of two,
//! so a percentile is within about 3 % of the sample), which a thousand trackers can
//! record into without a lock and a summary can read while they run.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 5;
pub const SUB: usize = 1 << SUB_BITS;
/// Microseconds up to 2^40 (12 days) are told apart; longer ones share the last bucket.
pub const BUCKETS: usize = 41 * SUB;

/// Latencies in microseconds, bucketed.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn bucket(us: u64) -> usize {
        if us < SUB as u64 {
            return us as usize;
        }
        let power = 63 - us.leading_zeros();
        let sub = (us >> (power - SUB_BITS)) as usize & (SUB - 1);
        ((power - SUB_BITS + 1) as usize * SUB + sub).min(BUCKETS - 1)
    }

    /// The largest value of bucket `i`.
    pub fn upper(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let power = (i / SUB) as u32 + SUB_BITS - 1;
        let sub = (i % SUB) as u64;
        ((SUB as u64 + sub + 1) << (power - SUB_BITS)) - 1
    }

    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(us)].fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The `q` quantile (0 < q ≤ 1), as its bucket's upper bound; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(Self::upper(i));
            }
        }
        Duration::from_micros(Self::upper(BUCKETS - 1))
    }

    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
    }
}

/// What all trackers did so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Trackers logged in now.
    pub connected: AtomicI64,
    pub logins_refused: AtomicU64,
    pub packets_sent: AtomicU64,
    pub records_sent: AtomicU64,
    pub packets_acked: AtomicU64,
    pub records_acked: AtomicU64,
    /// Acks whose count was not the packet's (the packet is sent again).
    pub acks_mismatched: AtomicU64,
    /// Acks that came with no packet in flight.
    pub acks_unexpected: AtomicU64,
    pub ack_timeouts: AtomicU64,
    pub commands_answered: AtomicU64,
    /// Bad frames from the server, connection failures.
    pub errors: AtomicU64,
    /// From the packet's write to its ack.
    pub ack_latency: Histogram,
}

/// A copy of the counters at one moment, for rates over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connected: i64,
    pub logins_refused: u64,
    pub packets_sent: u64,
    pub records_sent: u64,
    pub packets_acked: u64,
    pub records_acked: u64,
    pub acks_mismatched: u64,
    pub acks_unexpected: u64,
    pub ack_timeouts: u64,
    pub commands_answered: u64,
    pub errors: u64,
}

impl Snapshot {
    /// What happened between `earlier` and this one (`connected` stays this level).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Snapshot {
            connected: self.connected,
            logins_refused: d(self.logins_refused, earlier.logins_refused),
            packets_sent: d(self.packets_sent, earlier.packets_sent),
            records_sent: d(self.records_sent, earlier.records_sent),
            packets_acked: d(self.packets_acked, earlier.packets_acked),
            records_acked: d(self.records_acked, earlier.records_acked),
            acks_mismatched: d(self.acks_mismatched, earlier.acks_mismatched),
            acks_unexpected: d(self.acks_unexpected, earlier.acks_unexpected),
            ack_timeouts: d(self.ack_timeouts, earlier.ack_timeouts),
            commands_answered: d(self.commands_answered, earlier.commands_answered),
            errors: d(self.errors, earlier.errors),
        }
    }
}

impl Stats {
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connected: self.connected.load(Relaxed),
            logins_refused: self.logins_refused.load(Relaxed),
            packets_sent: self.packets_sent.load(Relaxed),
            records_sent: self.records_sent.load(Relaxed),
            packets_acked: self.packets_acked.load(Relaxed),
            records_acked: self.records_acked.load(Relaxed),
            acks_mismatched: self.acks_mismatched.load(Relaxed),
            acks_unexpected: self.acks_unexpected.load(Relaxed),
            ack_timeouts: self.ack_timeouts.load(Relaxed),
            commands_answered: self.commands_answered.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }

    /// One line: what happened so far and the ack latency percentiles.
    pub fn summary(&self, total: usize, elapsed: Duration) -> String {
        let s = self.snapshot();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "[{:>6.1}s] connected {}/{total} | records sent {} acked {} ({:.0}/s) | \
             packets acked {} | ack p50 {:.2} ms p99 {:.2} ms | commands answered {} | \
             refused {} | ack timeouts {} | mismatched {} | errors {}",
            elapsed.as_secs_f64(),
            s.connected,
            s.records_sent,
            s.records_acked,
            s.records_acked as f64 / secs,
            s.packets_acked,
            ms(self.ack_latency.quantile(0.50)),
            ms(self.ack_latency.quantile(0.99)),
            s.commands_answered,
            s.logins_refused,
            s.ack_timeouts,
            s.acks_mismatched,
            s.errors,
        )
    }
}
