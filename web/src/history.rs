//! The overview's trend (`GET /api/v1/stats/history`): one sample of the broker's
//! message and connection counters a minute, the last [`SAMPLES`] kept in memory, so
//! the dashboard draws the last hour or two the same after a reload. Each sample is also
//! written to the store (one small transaction a minute, the table bounded to the same
//! count) and the recent ones are read back at start, so a restart keeps the trend; the
//! counters themselves start at zero again, so the first rate after a restart is `null`.
//!
//! A sample holds the counters as they were; rates are the difference of two
//! neighbouring samples over their time apart. [`History::report`] adds one point for
//! "now" after the last sample, so a broker started a few seconds ago already has one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use fleetmq_broker::{BrokerHandle, StatsSnapshot};
use fleetmq_storage::{now_ms, StatsSample, Store};
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::time::rfc3339_ms;

/// Samples kept: two hours at one a minute.
pub(crate) const SAMPLES: usize = 120;
/// How often a sample is taken.
pub(crate) const EVERY: Duration = Duration::from_secs(60);

/// The counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) at_ms: u64,
    pub(crate) received: u64,
    pub(crate) sent: u64,
    pub(crate) connections: u64,
    pub(crate) devices: u64,
}

impl From<StatsSample> for Sample {
    fn from(s: StatsSample) -> Sample {
        Sample {
            at_ms: s.at_ms,
            received: s.received,
            sent: s.sent,
            connections: s.connections,
            devices: s.devices,
        }
    }
}

impl From<Sample> for StatsSample {
    fn from(s: Sample) -> StatsSample {
        StatsSample {
            at_ms: s.at_ms,
            received: s.received,
            sent: s.sent,
            connections: s.connections,
            devices: s.devices,
        }
    }
}

impl Sample {
    pub(crate) fn of(at_ms: u64, stats: &StatsSnapshot) -> Sample {
        Sample {
            at_ms,
            received: stats.messages.received,
            sent: stats.messages.sent,
            connections: stats.connections.current,
            devices: stats.connections.devices,
        }
    }
}

/// One point of the answer: connections at `at`, message rates since the point before.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Point {
    pub(crate) at: String,
    pub(crate) at_ms: u64,
    /// PUBLISH packets received per second since the previous point (`null` for the first).
    pub(crate) messages_in_per_s: Option<f64>,
    /// PUBLISH packets sent per second since the previous point (`null` for the first).
    pub(crate) messages_out_per_s: Option<f64>,
    pub(crate) connections: u64,
    pub(crate) devices_online: u64,
}

/// The bounded ring of samples.
#[derive(Default)]
pub(crate) struct History {
    ring: Mutex<VecDeque<Sample>>,
    /// The time of the last sample read back from the store (0: none): the counters
    /// started again after it, so no rate spans it.
    restored_until: AtomicU64,
}

fn rate(now: u64, before: u64, secs: f64) -> Option<f64> {
    // A counter never goes back; if it did (it cannot today), say nothing.
    (secs > 0.0 && now >= before).then(|| ((now - before) as f64 / secs * 100.0).round() / 100.0)
}

impl History {
    /// Keeps `sample`, dropping the oldest beyond [`SAMPLES`].
    pub(crate) fn record(&self, sample: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Keeps samples of a run before this one (read back from the store).
    pub(crate) fn restore(&self, samples: impl IntoIterator<Item = Sample>) {
        for sample in samples {
            self.record(sample);
            self.restored_until.fetch_max(sample.at_ms, Relaxed);
        }
    }

    /// The samples as points, oldest first, then `now` when it is at least a second
    /// after the last sample.
    pub(crate) fn report(&self, now: Sample) -> Vec<Point> {
        let mut samples: Vec<Sample> = {
            let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            ring.iter().copied().collect()
        };
        if samples
            .last()
            .is_none_or(|last| now.at_ms >= last.at_ms + 1000)
        {
            samples.push(now);
        }
        let restored = self.restored_until.load(Relaxed);
        let mut before: Option<Sample> = None;
        let mut points = Vec::with_capacity(samples.len());
        for s in samples {
            let secs = before.map_or(0.0, |b| s.at_ms.saturating_sub(b.at_ms) as f64 / 1000.0);
            // No rate across a restart: the counters started again.
            let before_rate =
                before.filter(|b| restored == 0 || b.at_ms > restored || s.at_ms <= restored);
            points.push(Point {
                at: rfc3339_ms(s.at_ms),
                at_ms: s.at_ms,
                messages_in_per_s: before_rate.and_then(|b| rate(s.received, b.received, secs)),
                messages_out_per_s: before_rate.and_then(|b| rate(s.sent, b.sent, secs)),
                connections: s.connections,
                devices_online: s.devices,
            });
            before = Some(s);
        }
        points
    }
}

/// Takes a sample of `broker` into `history` (and `store`) now and every [`EVERY`]
/// until `stop`, after loading the samples of the window the store kept.
pub(crate) async fn run_sampler(
    broker: &BrokerHandle,
    store: &Store,
    history: &History,
    stop: CancellationToken,
) {
    let window_ms = SAMPLES as u64 * EVERY.as_millis() as u64;
    let since = now_ms().saturating_sub(window_ms);
    match store.call(move |s| s.stats_samples(since)).await {
        Ok(kept) => history.restore(kept.into_iter().map(Sample::from)),
        Err(e) => tracing::warn!(error = %e, "could not read the stored stats history"),
    }
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {
                let sample = Sample::of(now_ms(), &broker.stats());
                history.record(sample);
                let stored = store.call(move |s| s.record_stats_sample(sample.into(), SAMPLES)).await;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "could not store a stats history sample");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, received: u64, connections: u64) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            received,
            sent: received * 2,
            connections,
            devices: connections,
        }
    }

    #[test]
    fn rates_come_from_neighbouring_samples_and_now_is_appended() {
        let history = History::default();
        history.record(sample(0, 0, 1));
        history.record(sample(60, 600, 3));
        let points = history.report(sample(90, 900, 4));
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].messages_in_per_s, None);
        assert_eq!(points[1].messages_in_per_s, Some(10.0));
        assert_eq!(points[1].messages_out_per_s, Some(20.0));
        assert_eq!(points[2].messages_in_per_s, Some(10.0));
        assert_eq!(points[2].connections, 4);
        assert_eq!(points[2].at, "1970-01-01T00:01:30.000Z");
        // "Now" within a second of the last sample adds nothing.
        assert_eq!(history.report(sample(60, 600, 3)).len(), 2);
    }

    #[test]
    fn no_rate_spans_a_restart() {
        let history = History::default();
        history.restore([sample(0, 0, 1), sample(60, 600, 1)]);
        history.record(sample(120, 5, 1));
        let points = history.report(sample(180, 65, 1));
        let rates: Vec<Option<f64>> = points.iter().map(|p| p.messages_in_per_s).collect();
        assert_eq!(rates, [None, Some(10.0), None, Some(1.0)]);
    }

    #[test]
    fn the_ring_is_bounded() {
        let history = History::default();
        for i in 0..(SAMPLES as u64 + 30) {
            history.record(sample(i * 60, i, 1));
        }
        let points = history.report(sample(0, 0, 0));
        assert_eq!(points.len(), SAMPLES);
        assert_eq!(points[0].at_ms, 30 * 60 * 1000);
    }
}
