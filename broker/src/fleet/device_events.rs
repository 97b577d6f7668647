//! Device events (SPEC §7 `device.event`): every JSON payload a device publishes on
//! `device/{id}/events`, stored for the telemetry retention and listed newest first.
//!
//! The fleet loop hands each batch's events to [`DeviceEvents::store`], one durable
//! transaction per batch of link events (the loop already batches them), so storing them
//! never touches the routing path. A sweeper task enforces retention by age and events per
//! device (`telemetry.retention_days`, `telemetry.max_points_per_device`). Reads run on
//! the blocking pool.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use fleetmq_storage::device_events::{self as store, NewEvent};
use fleetmq_storage::{now_ms, DeviceId, StoreError};
use redb::Database;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::telemetry::{TelemetryConfig, MAX_LIMIT};
use crate::time::rfc3339_ms;

/// Default page size of [`DeviceEvents::query`] (SPEC §8).
pub const DEFAULT_LIMIT: usize = 100;

/// What went wrong reading device events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceEventsError {
    /// The cursor is not one this API handed out (HTTP 400).
    #[error("invalid cursor")]
    InvalidCursor,
    /// A query parameter has an unusable value (HTTP 422), e.g. `from` after `to`.
    #[error("invalid event query: {0}")]
    InvalidQuery(&'static str),
    /// The store failed (our fault).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the store call died (runtime shutdown).
    #[error("device event store call did not complete: {0}")]
    Task(String),
}

/// Which events [`DeviceEvents::query`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// Oldest `at` included (unix ms).
    pub from_ms: Option<u64>,
    /// Newest `at` included (unix ms).
    pub to_ms: Option<u64>,
    /// Only events of this `type`.
    pub kind: Option<String>,
    /// Page size, clamped to `1..=MAX_LIMIT`.
    pub limit: usize,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl Default for EventsQuery {
    fn default() -> Self {
        EventsQuery {
            from_ms: None,
            to_ms: None,
            kind: None,
            limit: DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

/// One stored event as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// When the broker received it: RFC 3339, UTC, millisecond precision.
    pub at: String,
    /// The payload's `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload as the device sent it.
    pub data: Box<RawValue>,
}

/// A newest-first page of events: SPEC §8's list shape.
#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    pub items: Vec<EventView>,
    pub next_cursor: Option<String>,
}

/// Device event counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceEventStats {
    /// Events committed to the store.
    pub stored: u64,
    /// Payloads the device's plugin refused (not JSON, no `type`, ...): not stored.
    pub refused: u64,
    /// Events lost because their batch failed to commit.
    pub write_failed: u64,
    /// Events removed by retention.
    pub swept: u64,
}

#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    refused: AtomicU64,
    write_failed: AtomicU64,
    swept: AtomicU64,
}

struct Shared {
    db: Arc<Database>,
    retention: Duration,
    max_per_device: u64,
    counters: Counters,
    shutdown: CancellationToken,
}

/// Handle to the device event store. Cheap to clone.
#[derive(Clone)]
pub struct DeviceEvents {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DeviceEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEvents")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DeviceEvents {
    /// Starts the sweeper on `tracker` with the telemetry retention of `config`; it
    /// stops when `shutdown` is cancelled. Must be called within a tokio runtime.
    pub fn start(
        db: Arc<Database>,
        config: &TelemetryConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> DeviceEvents {
        let events = DeviceEvents {
            shared: Arc::new(Shared {
                db,
                retention: config.retention,
                max_per_device: config.max_points_per_device.max(1),
                counters: Counters::default(),
                shutdown: shutdown.clone(),
            }),
        };
        let every = config.sweep_every.max(Duration::from_millis(1));
        tracker.spawn(events.clone().run_sweeper(every, shutdown));
        events
    }

    /// Stores `events` in one durable transaction; a failure is logged and counted.
    pub(crate) async fn store(&self, events: Vec<NewEvent>) {
        let n = events.len() as u64;
        let c = &self.shared.counters;
        match self
            .blocking(move |db| store::insert_batch(db, &events))
            .await
        {
            Ok(stored) => {
                c.stored.fetch_add(stored, Relaxed);
            }
            Err(error) => {
                c.write_failed.fetch_add(n, Relaxed);
                tracing::error!(%error, events = n, "device events lost");
            }
        }
    }

    /// Counts a payload the device's plugin refused.
    pub(crate) fn refused(&self) {
        self.shared.counters.refused.fetch_add(1, Relaxed);
    }

    /// One page of `device`'s events, newest first.
    pub async fn query(
        &self,
        device: &DeviceId,
        q: EventsQuery,
    ) -> Result<EventPage, DeviceEventsError> {
        let cursor = match q.cursor.as_deref() {
            Some(s) => Some(s.parse().map_err(|_| DeviceEventsError::InvalidCursor)?),
            None => None,
        };
        let from_ms = q.from_ms.unwrap_or(0);
        let to_ms = q.to_ms.unwrap_or(u64::MAX);
        if from_ms > to_ms {
            return Err(DeviceEventsError::InvalidQuery("`from` is after `to`"));
        }
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let id = device.clone();
        let page = self
            .blocking(move |db| {
                let q = store::EventQuery {
                    from_ms,
                    to_ms,
                    kind: q.kind.as_deref(),
                    limit,
                    cursor,
                };
                store::query(db, &id, &q)
            })
            .await?;
        let items = page
            .events
            .into_iter()
            .filter_map(|e| match RawValue::from_string(e.data) {
                Ok(data) => Some(EventView {
                    at: rfc3339_ms(e.at_ms),
                    kind: e.kind,
                    data,
                }),
                Err(error) => {
                    tracing::error!(device_id = %device, %error, "skipping corrupt device event");
                    None
                }
            })
            .collect();
        Ok(EventPage {
            items,
            next_cursor: page.next.map(|c| c.to_string()),
        })
    }

    /// How many events `device` has stored.
    pub async fn count(&self, device: &DeviceId) -> Result<u64, DeviceEventsError> {
        let id = device.clone();
        self.blocking(move |db| store::count(db, &id)).await
    }

    /// Removes every event of `device`; how many were removed. For device deletion.
    pub async fn forget_device(&self, device: &DeviceId) -> Result<u64, DeviceEventsError> {
        let id = device.clone();
        self.blocking(move |db| store::delete_device(db, &id)).await
    }

    /// Enforces retention now, as the sweeper does; how many events were removed.
    pub async fn sweep_now(&self) -> Result<u64, DeviceEventsError> {
        let shared = &self.shared;
        let retention_ms = u64::try_from(shared.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(retention_ms);
        let max = shared.max_per_device;
        let stop = shared.shutdown.clone();
        let removed = self
            .blocking(move |db| store::sweep_until(db, cutoff, max, &|| stop.is_cancelled()))
            .await?;
        shared.counters.swept.fetch_add(removed, Relaxed);
        Ok(removed)
    }

    /// Counters since start.
    pub fn stats(&self) -> DeviceEventStats {
        let c = &self.shared.counters;
        DeviceEventStats {
            stored: c.stored.load(Relaxed),
            refused: c.refused.load(Relaxed),
            write_failed: c.write_failed.load(Relaxed),
            swept: c.swept.load(Relaxed),
        }
    }

    async fn run_sweeper(self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.sweep_now().await {
                tracing::error!(%error, "device event sweep failed");
            }
        }
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, DeviceEventsError> {
        let db = self.shared.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(DeviceEventsError::Task(e.to_string())),
        }
    }
}
