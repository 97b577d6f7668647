//! The `telemetry` event (SPEC §7): per device, at most one every
//! `telemetry.webhook_interval_s`, summing up the points stored since the previous one:
//! `{"record_count","first_ts","latest_ts","latest":{key: value}}`.
//!
//! The writer calls [`Digest::add`] after each commit: it only folds the batch's points
//! into a per-device accumulator under a mutex (counts, first and latest timestamps, and
//! the newest object of each shape as the bytes it already holds), never parsing JSON
//! and never waiting for anything else. A timer task takes the whole map every interval
//! and emits one event per device in one outbox commit, so under overload events
//! coalesce instead of queueing up, and memory is bounded by the number of devices (and
//! [`MAX_SHAPES`] objects each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fleetmq_storage::telemetry::NewPoint;
use fleetmq_storage::DeviceId;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::fleet::events::TELEMETRY;
use crate::fleet::{EventSink, SinkEvent};
use crate::time::rfc3339_ms;

/// Objects kept per device between two events, one per shape (key list); a further
/// shape has the oldest decoded into per-key values, so no key is lost.
pub(super) const MAX_SHAPES: usize = 4;

/// The newest object of one shape.
struct Recent {
    shape: u64,
    ts_ms: u64,
    object: Box<[u8]>,
}

/// What one device stored since its previous event.
struct Acc {
    count: u64,
    first_ts: u64,
    latest_ts: u64,
    recent: Vec<Recent>,
    /// Values of objects pushed out of `recent`, all older than those in it.
    older: Map<String, Value>,
}

impl Acc {
    fn new(ts_ms: u64) -> Acc {
        Acc {
            count: 0,
            first_ts: ts_ms,
            latest_ts: ts_ms,
            recent: Vec::new(),
            older: Map::new(),
        }
    }

    fn add(&mut self, p: &NewPoint) {
        let ts = p.ts_ms();
        self.count += 1;
        self.first_ts = self.first_ts.min(ts);
        self.latest_ts = self.latest_ts.max(ts);
        if let Some(r) = self.recent.iter_mut().find(|r| r.shape == p.shape()) {
            // Equal timestamps: the later arrival wins, as in the store's summary.
            if ts >= r.ts_ms {
                r.ts_ms = ts;
                r.object = p.object_json().into();
            }
            return;
        }
        if self.recent.len() >= MAX_SHAPES {
            let oldest = (0..self.recent.len())
                .min_by_key(|&i| self.recent[i].ts_ms)
                .unwrap_or(0);
            let old = self.recent.swap_remove(oldest);
            merge(&mut self.older, &old.object);
        }
        self.recent.push(Recent {
            shape: p.shape(),
            ts_ms: ts,
            object: p.object_json().into(),
        });
    }

    /// The event's data: the newest value of every key, newer objects last.
    fn data(mut self) -> Data {
        self.recent.sort_by_key(|r| r.ts_ms);
        let mut latest = std::mem::take(&mut self.older);
        for r in &self.recent {
            merge(&mut latest, &r.object);
        }
        Data {
            record_count: self.count,
            first_ts: rfc3339_ms(self.first_ts),
            latest_ts: rfc3339_ms(self.latest_ts),
            latest,
        }
    }
}

/// Copies the members of the JSON object `object` but `ts` into `into`.
fn merge(into: &mut Map<String, Value>, object: &[u8]) {
    match serde_json::from_slice::<Map<String, Value>>(object) {
        Ok(values) => {
            for (key, value) in values {
                if key != "ts" {
                    into.insert(key, value);
                }
            }
        }
        // The plugin checked it before it was stored; nothing to add otherwise.
        Err(error) => tracing::error!(%error, "stored telemetry object is not a JSON object"),
    }
}

/// The `data` of a `telemetry` event.
#[derive(Serialize)]
struct Data {
    record_count: u64,
    first_ts: String,
    latest_ts: String,
    latest: Map<String, Value>,
}

/// The per-device accumulators and where their events go.
pub(super) struct Digest {
    sink: Arc<dyn EventSink>,
    pending: Mutex<HashMap<Box<str>, Acc>>,
}

impl Digest {
    /// A digest for `sink`. Webhook endpoints change at runtime (the API), so whether
    /// some webhook takes `telemetry` events is asked for each committed batch
    /// ([`Digest::add`]): nobody pays for events no one wants.
    pub(super) fn wanted(sink: Option<Arc<dyn EventSink>>) -> Option<Arc<Digest>> {
        let sink = sink?;
        Some(Arc::new(Digest {
            sink,
            pending: Mutex::default(),
        }))
    }

    /// Folds committed points into their devices' accumulators.
    pub(super) fn add(&self, points: &[NewPoint]) {
        if !self.sink.records_durably(TELEMETRY) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for p in points {
            let device = p.device_id();
            match pending.get_mut(device) {
                Some(acc) => acc.add(p),
                None => {
                    let mut acc = Acc::new(p.ts_ms());
                    acc.add(p);
                    pending.insert(device.into(), acc);
                }
            }
        }
    }

    /// Emits one event per device with points since the previous flush, in one batch.
    pub(super) async fn flush(&self) {
        let taken =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let mut events: Vec<SinkEvent> = Vec::with_capacity(taken.len());
        for (device, acc) in taken {
            let Ok(id) = device.parse::<DeviceId>() else {
                continue;
            };
            match serde_json::value::to_raw_value(&acc.data()) {
                Ok(data) => events.push((TELEMETRY, Some(id), data)),
                Err(error) => {
                    tracing::error!(%error, device_id = %id, "cannot encode telemetry event")
                }
            }
        }
        if !events.is_empty() {
            self.sink.emit_many(events).await;
        }
    }

    /// Flushes every `every` until `shutdown`, then once more after the writer's last
    /// commit (`writer_done`).
    pub(super) async fn run(
        self: Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
        writer_done: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.flush().await,
            }
        }
        writer_done.cancelled().await;
        self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ts_ms: u64, object: Value) -> NewPoint {
        let values = object
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        NewPoint::new("d".parse().unwrap(), ts_ms, values)
    }

    #[test]
    fn latest_takes_each_keys_newest_value_across_shapes() {
        let mut acc = Acc::new(50);
        acc.add(&point(50, serde_json::json!({"a": 1})));
        // More shapes than are kept: the oldest objects are folded in by key.
        for (i, key) in ["b", "c", "d", "e", "f"].iter().enumerate() {
            acc.add(&point(
                100 + i as u64,
                serde_json::json!({ *key: i, "a": 2 }),
            ));
        }
        acc.add(&point(10, serde_json::json!({"a": 0, "old": true})));
        assert!(acc.recent.len() <= MAX_SHAPES);
        let data = serde_json::to_value(acc.data()).unwrap();
        assert_eq!(data["record_count"], 7);
        assert_eq!(data["first_ts"], rfc3339_ms(10));
        assert_eq!(data["latest_ts"], rfc3339_ms(104));
        assert_eq!(
            data["latest"],
            serde_json::json!({"a": 2, "b": 0, "c": 1, "d": 2, "e": 3, "f": 4, "old": true})
        );
    }
}
