//! Points stored before their sender is answered: for a transport whose acknowledgement
//! means "stored" (a Teltonika tracker's record count, SPEC §10), the caller waits until
//! the batch holding its points is committed, and learns whether it was.

use std::sync::atomic::Ordering::Relaxed;

use fleetmq_device_plugins::{DevicePlugin, PluginError};
use fleetmq_storage::DeviceId;
use tokio::sync::oneshot;

use super::{decode, store, Msg, Telemetry};

/// Why [`Telemetry::store_durably`] did not store the points: the caller must not
/// acknowledge them (the sender sends them again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotStored {
    /// The device's plugin refused a payload; none of the points was queued.
    #[error("telemetry payload refused: {0}")]
    Refused(PluginError),
    /// The batch holding the points failed to commit.
    #[error("telemetry batch failed to commit")]
    WriteFailed,
    /// The writer has stopped (shutdown).
    #[error("telemetry store is shutting down")]
    ShuttingDown,
}

impl Telemetry {
    /// Decodes each `(payload, received_at_ms)` with `plugin`, queues the points
    /// together (waiting for room: the caller is slowed, never dropped) and returns
    /// once the batch holding them is committed. With `telemetry.store` off the points
    /// are checked and not stored, and that counts as done.
    pub async fn store_durably(
        &self,
        device: &DeviceId,
        plugin: &dyn DevicePlugin,
        payloads: &[(Vec<u8>, u64)],
    ) -> Result<(), NotStored> {
        let c = &self.shared.counters;
        let points = payloads
            .iter()
            .map(|(payload, at_ms)| decode(device, plugin, payload, *at_ms))
            .collect::<Result<Vec<store::NewPoint>, _>>()
            .map_err(|reason| {
                c.rejected.fetch_add(1, Relaxed);
                NotStored::Refused(reason)
            })?;
        self.commit_points(points).await
    }

    /// Like [`Telemetry::store_durably`], one payload at a time: a payload the plugin
    /// refuses is left out (its reason returned, in order) and the others are stored.
    /// For MQTT telemetry, where each message is acknowledged on its own.
    pub async fn store_each_durably(
        &self,
        device: &DeviceId,
        plugin: &dyn DevicePlugin,
        payloads: &[(bytes::Bytes, u64)],
    ) -> Result<Vec<PluginError>, NotStored> {
        let c = &self.shared.counters;
        let mut refused = Vec::new();
        let mut points = Vec::with_capacity(payloads.len());
        for (payload, at_ms) in payloads {
            match decode(device, plugin, payload, *at_ms) {
                Ok(point) => points.push(point),
                Err(reason) => {
                    c.rejected.fetch_add(1, Relaxed);
                    refused.push(reason);
                }
            }
        }
        if !points.is_empty() {
            self.commit_points(points).await?;
        }
        Ok(refused)
    }

    /// Queues `points` as one durable message and waits for the batch holding them.
    async fn commit_points(&self, points: Vec<store::NewPoint>) -> Result<(), NotStored> {
        let c = &self.shared.counters;
        if !self.shared.store {
            c.not_stored.fetch_add(points.len() as u64, Relaxed);
            return Ok(());
        }
        let n = points.len() as u64;
        let (ack, committed) = oneshot::channel();
        if self
            .shared
            .tx
            .send(Msg::Durable(points, ack))
            .await
            .is_err()
        {
            c.dropped_shutdown.fetch_add(n, Relaxed);
            return Err(NotStored::ShuttingDown);
        }
        self.shared.flush_wanted.notify_one();
        match committed.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotStored::WriteFailed),
            // The writer went away with the batch unwritten.
            Err(_) => Err(NotStored::ShuttingDown),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fleetmq_storage::now_ms;

    use super::super::tests::{id, json, quiet, Harness};
    use super::super::TelemetryConfig;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_once_committed_and_refuses_as_a_whole() {
        // Batches otherwise wait an hour: only the durable store commits.
        let h = Harness::start(TelemetryConfig {
            batch_delay: Duration::from_secs(3_600),
            ..quiet()
        });
        let now = now_ms();
        h.offer("d", r#"{"queued":1}"#, now).unwrap();
        let points: Vec<(Vec<u8>, u64)> = (0..3u64)
            .map(|i| {
                (
                    format!(r#"{{"ts":{},"lat":{i}}}"#, now + i).into_bytes(),
                    now,
                )
            })
            .collect();
        h.t.store_durably(&id("d"), json().as_ref(), &points)
            .await
            .expect("stored");
        // Committed with what was queued before it, in one batch.
        assert_eq!(h.count("d").await, 4);
        assert_eq!(h.t.stats().batches, 1);
        let bad = vec![(b"{\"ok\":1}".to_vec(), now), (b"[1]".to_vec(), now)];
        let refused = h.t.store_durably(&id("d"), json().as_ref(), &bad).await;
        assert!(matches!(refused, Err(NotStored::Refused(_))), "{refused:?}");
        h.t.flush().await;
        assert_eq!(h.count("d").await, 4, "nothing of a refused set is stored");
        h.stop().await;
        let late = h.t.store_durably(&id("d"), json().as_ref(), &points).await;
        assert_eq!(late, Err(NotStored::ShuttingDown));
    }
}
