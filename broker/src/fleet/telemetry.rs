//! Telemetry ingest and reads (SPEC §6).
//!
//! Connection tasks hand each telemetry payload to [`Telemetry::offer`], which checks
//! it with the device's plugin (the `json` plugin's payloads are stored as sent, not
//! decoded) and puts the point on one bounded queue without ever waiting: a full queue drops the point and counts it, so storing telemetry never
//! stalls routing. One writer task, on a thread of its own, drains the queue into
//! batches and commits each batch in one redb write transaction. A sweeper task enforces
//! retention by age and by points per device. Both tasks take the shutdown token; on
//! shutdown the writer commits everything still queued before it exits.
//!
//! Reads ([`Telemetry::query`], [`Telemetry::latest`]) run on the blocking pool and turn
//! the stored JSON text back into JSON values with RFC 3339 timestamps.
//!
//! When a webhook wants the `telemetry` event (SPEC §7), the writer hands every committed
//! batch to its accumulator and a timer task sends the events (`webhook.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use fleetmq_device_plugins::{rfc3339, DevicePlugin, PluginError};
use fleetmq_storage::{DeviceId, StoreError};
use redb::Database;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use fleetmq_storage::telemetry as store;

pub use config::{RawTelemetryConfig, TelemetryConfig};
pub use durable::NotStored;

/// Default page size of [`Telemetry::query`] (SPEC §8).
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page [`Telemetry::query`] returns (SPEC §8).
pub const MAX_LIMIT: usize = 1_000;

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can show. Points after it are
/// refused at the door rather than stored and then unreadable.
const MAX_TS_MS: u64 = 253_402_300_799_999;

// ---- API types -----------------------------------------------------------------

/// Why [`Telemetry::offer`] did not queue a point. Every case is counted in
/// [`TelemetryStats`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The device's plugin refused the payload (not JSON, not an object, ...): the
    /// device's fault, raised as a `device.bad_payload` event by the caller.
    #[error("telemetry payload refused: {reason}")]
    NotJson {
        /// The plugin's reason.
        reason: PluginError,
    },
    /// The ingest queue is full; the point was dropped.
    #[error("telemetry queue full, point dropped")]
    QueueFull,
    /// The writer has stopped (shutdown); the point was dropped.
    #[error("telemetry store is shutting down, point dropped")]
    ShuttingDown,
}

/// What went wrong reading or deleting telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The cursor is not one this API handed out (HTTP 400).
    #[error("invalid cursor")]
    InvalidCursor,
    /// A query parameter has an unusable value (HTTP 422), e.g. `from` after `to`.
    #[error("invalid telemetry query: {0}")]
    InvalidQuery(&'static str),
    /// The store failed (our fault).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the store call died (runtime shutdown).
    #[error("telemetry store call did not complete: {0}")]
    Task(String),
}

/// Which points [`Telemetry::query`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryQuery {
    /// Oldest timestamp included (unix ms); `None`: no lower bound.
    pub from_ms: Option<u64>,
    /// Newest timestamp included (unix ms); `None`: no upper bound.
    pub to_ms: Option<u64>,
    /// Only these keys; points carrying none of them are skipped. `None` or an empty
    /// list: every key.
    pub keys: Option<Vec<String>>,
    /// Page size, clamped to `1..=MAX_LIMIT`.
    pub limit: usize,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl Default for TelemetryQuery {
    fn default() -> Self {
        TelemetryQuery {
            from_ms: None,
            to_ms: None,
            keys: None,
            limit: DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

impl TelemetryQuery {
    /// Reads a `from` / `to` parameter: an RFC 3339 date-time or unix milliseconds.
    /// `None` when it is neither, or before 1970.
    pub fn parse_time(s: &str) -> Option<u64> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().ok();
        }
        rfc3339::parse(s).ok().and_then(|ms| u64::try_from(ms).ok())
    }
}

/// One stored point, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointView {
    /// RFC 3339, UTC, millisecond precision.
    pub ts: String,
    /// The same instant in unix milliseconds.
    pub ts_ms: u64,
    /// The payload's keys (without `ts`) and their values as sent.
    pub values: Map<String, Value>,
}

/// A newest-first page of points: SPEC §8's list shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryPage {
    pub items: Vec<PointView>,
    pub next_cursor: Option<String>,
}

/// The newest value of one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestValue {
    pub value: Value,
    /// RFC 3339, UTC, millisecond precision.
    pub ts: String,
    pub ts_ms: u64,
}

/// Telemetry counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TelemetryStats {
    /// Points committed to the store.
    pub stored: u64,
    /// Points dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Points dropped because they arrived after shutdown began.
    pub dropped_shutdown: u64,
    /// Points lost because their batch failed to commit.
    pub dropped_write_failed: u64,
    /// Payloads the device's plugin refused.
    pub rejected: u64,
    /// Points checked and not stored because `telemetry.store` is false.
    pub not_stored: u64,
    /// Write transactions committed.
    pub batches: u64,
    /// Points removed by retention.
    pub swept: u64,
    /// Points waiting in the queue right now.
    pub queued: u64,
}

// ---- the service -----------------------------------------------------------------

enum Msg {
    Point(store::NewPoint),
    /// Acknowledged once every message queued before it is committed.
    Flush(oneshot::Sender<()>),
    /// Points whose sender waits for their commit: told whether it succeeded.
    Durable(Vec<store::NewPoint>, oneshot::Sender<bool>),
}

#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_shutdown: AtomicU64,
    dropped_write_failed: AtomicU64,
    rejected: AtomicU64,
    not_stored: AtomicU64,
    batches: AtomicU64,
    swept: AtomicU64,
}

struct Shared {
    db: Arc<Database>,
    tx: mpsc::Sender<Msg>,
    counters: Counters,
    /// Set when the queue overflowed, cleared when a batch commits: one warning per
    /// overload episode instead of one per dropped point.
    saturated: AtomicBool,
    /// Cancelled when the writer has exited (after its final commit).
    writer_done: CancellationToken,
    /// Told after a flush is queued, so the writer, which looks at its queue only
    /// now and then while a batch fills, commits it at once.
    flush_wanted: Notify,
    /// Number of finished sweeps, for whoever waits on retention.
    sweeps: watch::Sender<u64>,
    retention: Duration,
    max_points_per_device: u64,
    /// `telemetry.store`.
    store: bool,
    /// Stops a long sweep between transactions.
    shutdown: CancellationToken,
    /// The `telemetry` webhook event's accumulators, when a webhook wants it.
    digest: Option<Arc<webhook::Digest>>,
    /// The alarm evaluator's queue, once set ([`Telemetry::feed_alarms`]).
    alarms: std::sync::OnceLock<super::alarms::AlarmFeed>,
}

/// Handle to the telemetry store. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts the writer and the sweeper on `tracker`; both stop when `shutdown` is
    /// cancelled, the writer after committing what is queued. Cancel `shutdown` after
    /// the link layer has stopped offering, then wait for `tracker`.
    ///
    /// Must be called within a tokio runtime. Zero sizes and durations in `config`
    /// are raised to the smallest usable value.
    pub fn start(
        db: Arc<Database>,
        config: TelemetryConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Telemetry {
        Telemetry::start_with_events(db, config, None, shutdown, tracker)
    }

    /// [`Telemetry::start`], also sending the `telemetry` event (SPEC §7) to `events`
    /// when it records that type for some webhook: per device at most one every
    /// `config.webhook_interval`, from a timer task of its own.
    pub fn start_with_events(
        db: Arc<Database>,
        config: TelemetryConfig,
        events: Option<Arc<dyn super::EventSink>>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Telemetry {
        let digest = webhook::Digest::wanted(events);
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let shared = Arc::new(Shared {
            db,
            tx,
            counters: Counters::default(),
            saturated: AtomicBool::new(false),
            writer_done: CancellationToken::new(),
            flush_wanted: Notify::new(),
            sweeps: watch::Sender::new(0),
            retention: config.retention,
            max_points_per_device: config.max_points_per_device.max(1),
            store: config.store,
            shutdown: shutdown.clone(),
            digest: digest.clone(),
            alarms: std::sync::OnceLock::new(),
        });
        if let Some(digest) = digest {
            let every = config.webhook_interval.max(Duration::from_millis(1));
            let done = shared.writer_done.clone();
            tracker.spawn(digest.run(every, shutdown.clone(), done));
        }
        let writer = writer::Writer {
            shared: shared.clone(),
            rx,
            buf: Vec::new(),
            batch_max: config.batch_max.max(1),
            batch_delay: config.batch_delay,
        };
        // Its own thread: under a publish flood the connection tasks would otherwise
        // leave it a turn every few hundred milliseconds, and the queue would overflow.
        super::spawn_dedicated(
            "the telemetry writer",
            tracker,
            writer.run(shutdown.clone()),
        );
        let every = config.sweep_every.max(Duration::from_millis(1));
        tracker.spawn(writer::run_sweeper(shared.clone(), every, shutdown));
        Telemetry { shared }
    }

    /// Hands every batch committed from now on to the alarm evaluator (never waiting).
    pub(crate) fn feed_alarms(&self, feed: super::alarms::AlarmFeed) {
        let _ = self.shared.alarms.set(feed);
    }

    /// Decodes `payload` with `plugin` and queues the point, never waiting. Called from
    /// connection tasks for every message on `device/{id}/telemetry`.
    pub fn offer(
        &self,
        device: &DeviceId,
        plugin: &dyn DevicePlugin,
        payload: &[u8],
        received_at_ms: u64,
    ) -> Result<(), Rejected> {
        let c = &self.shared.counters;
        if !self.shared.store {
            return match check(plugin, payload, received_at_ms) {
                Ok(()) => {
                    c.not_stored.fetch_add(1, Relaxed);
                    Ok(())
                }
                Err(reason) => {
                    c.rejected.fetch_add(1, Relaxed);
                    tracing::debug!(device_id = %device, plugin = plugin.name(), %reason, "telemetry rejected");
                    Err(Rejected::NotJson { reason })
                }
            };
        }
        let point = match decode(device, plugin, payload, received_at_ms) {
            Ok(point) => point,
            Err(reason) => {
                c.rejected.fetch_add(1, Relaxed);
                tracing::debug!(device_id = %device, plugin = plugin.name(), %reason, "telemetry rejected");
                return Err(Rejected::NotJson { reason });
            }
        };
        match self.shared.tx.try_send(Msg::Point(point)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                c.dropped_queue_full.fetch_add(1, Relaxed);
                if !self.shared.saturated.swap(true, Relaxed) {
                    tracing::warn!(device_id = %device, "telemetry queue full, dropping points");
                }
                Err(Rejected::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                c.dropped_shutdown.fetch_add(1, Relaxed);
                Err(Rejected::ShuttingDown)
            }
        }
    }

    /// One page of `device`'s points, newest first.
    pub async fn query(
        &self,
        device: &DeviceId,
        q: TelemetryQuery,
    ) -> Result<TelemetryPage, TelemetryError> {
        let cursor = match q.cursor.as_deref() {
            Some(s) => Some(s.parse().map_err(|_| TelemetryError::InvalidCursor)?),
            None => None,
        };
        let from_ms = q.from_ms.unwrap_or(0);
        let to_ms = q.to_ms.unwrap_or(u64::MAX);
        if from_ms > to_ms {
            return Err(TelemetryError::InvalidQuery("`from` is after `to`"));
        }
        let keys = q.keys.filter(|k| !k.is_empty());
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let id = device.clone();
        let page = self
            .blocking(move |db| {
                store::query(
                    db,
                    &id,
                    &store::PointQuery {
                        from_ms,
                        to_ms,
                        keys: keys.as_deref(),
                        limit,
                        cursor,
                    },
                )
            })
            .await?;
        let items = page
            .points
            .into_iter()
            .filter_map(|p| {
                let ts = format_ts(device, p.ts_ms)?;
                let values = p
                    .values
                    .into_iter()
                    .filter_map(|(key, json)| parse_value(device, &key, &json).map(|v| (key, v)))
                    .collect();
                Some(PointView {
                    ts,
                    ts_ms: p.ts_ms,
                    values,
                })
            })
            .collect();
        Ok(TelemetryPage {
            items,
            next_cursor: page.next.map(|c| c.to_string()),
        })
    }

    /// The newest value of every key `device` reported (empty when it reported none).
    pub async fn latest(
        &self,
        device: &DeviceId,
    ) -> Result<BTreeMap<String, LatestValue>, TelemetryError> {
        let id = device.clone();
        let latest = self.blocking(move |db| store::latest(db, &id)).await?;
        Ok(latest
            .into_iter()
            .filter_map(|(key, l)| {
                let value = parse_value(device, &key, &l.value)?;
                let ts = format_ts(device, l.ts_ms)?;
                Some((
                    key,
                    LatestValue {
                        value,
                        ts,
                        ts_ms: l.ts_ms,
                    },
                ))
            })
            .collect())
    }

    /// Removes every point and latest value of `device`, including points it had
    /// queued; how many points were removed. For device deletion.
    pub async fn forget_device(&self, device: &DeviceId) -> Result<u64, TelemetryError> {
        self.flush().await;
        let id = device.clone();
        self.blocking(move |db| store::delete_device(db, &id)).await
    }

    /// How many points `device` has stored.
    pub async fn count(&self, device: &DeviceId) -> Result<u64, TelemetryError> {
        let id = device.clone();
        self.blocking(move |db| store::count(db, &id)).await
    }

    /// Enforces retention now, as the sweeper does; how many points were removed.
    pub async fn sweep_now(&self) -> Result<u64, TelemetryError> {
        let removed = writer::sweep(&self.shared).await?;
        Ok(removed)
    }

    /// Sends the `telemetry` events of the points stored since the previous ones now,
    /// as the timer does every `telemetry.webhook_interval_s` (nothing when no webhook
    /// wants them).
    pub async fn send_webhook_events_now(&self) {
        if let Some(digest) = &self.shared.digest {
            digest.flush().await;
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> TelemetryStats {
        let c = &self.shared.counters;
        let tx = &self.shared.tx;
        TelemetryStats {
            stored: c.stored.load(Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Relaxed),
            dropped_shutdown: c.dropped_shutdown.load(Relaxed),
            dropped_write_failed: c.dropped_write_failed.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            not_stored: c.not_stored.load(Relaxed),
            batches: c.batches.load(Relaxed),
            swept: c.swept.load(Relaxed),
            queued: (tx.max_capacity() - tx.capacity()) as u64,
        }
    }

    /// Waits until everything queued before the call is committed (or, after
    /// shutdown, until the writer has made its final commit).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.shared.tx.send(Msg::Flush(ack)).await.is_ok() {
            self.shared.flush_wanted.notify_one();
            if done.await.is_ok() {
                return;
            }
        }
        self.shared.writer_done.cancelled().await;
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, TelemetryError> {
        blocking(&self.shared.db, f).await
    }
}

/// Runs a store call on the blocking pool.
async fn blocking<R: Send + 'static>(
    db: &Arc<Database>,
    f: impl FnOnce(&Database) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, TelemetryError> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(TelemetryError::Task(e.to_string())),
    }
}

/// Turns a payload into a point to store. A plugin that stores telemetry as sent (the
/// `json` plugin) only checks it, in one pass that allocates nothing, and the payload
/// is copied once, next to the device id, into the point; another plugin's decoded
/// values are written out as a JSON object.
fn decode(
    device: &DeviceId,
    plugin: &dyn DevicePlugin,
    payload: &[u8],
    received_at_ms: u64,
) -> Result<store::NewPoint, PluginError> {
    if let Some(checked) = plugin.check_telemetry(payload, received_at_ms) {
        let raw = checked?;
        check_ts(raw.ts_ms)?;
        return Ok(store::NewPoint::object(
            device, raw.ts_ms, raw.shape, payload,
        ));
    }
    let telemetry = plugin.decode_telemetry(payload, received_at_ms)?;
    check_ts(telemetry.ts_ms)?;
    // The plugin validated each value's JSON text; it is stored as it came.
    let values = telemetry
        .values
        .into_iter()
        .map(|(key, raw)| (key, Box::<str>::from(raw).into_string()))
        .collect();
    Ok(store::NewPoint::new(
        device.clone(),
        telemetry.ts_ms,
        values,
    ))
}

/// What [`decode`] checks, without building a point (`telemetry.store = false`).
fn check(
    plugin: &dyn DevicePlugin,
    payload: &[u8],
    received_at_ms: u64,
) -> Result<(), PluginError> {
    let ts_ms = match plugin.check_telemetry(payload, received_at_ms) {
        Some(checked) => checked?.ts_ms,
        None => plugin.decode_telemetry(payload, received_at_ms)?.ts_ms,
    };
    check_ts(ts_ms)
}

/// Refuses a timestamp RFC 3339 cannot show.
fn check_ts(ts_ms: u64) -> Result<(), PluginError> {
    if ts_ms > MAX_TS_MS {
        return Err(PluginError::InvalidField {
            field: "ts",
            reason: "after year 9999",
        });
    }
    Ok(())
}

/// A stored timestamp as RFC 3339; `None` (logged) if it is beyond year 9999.
fn format_ts(device: &DeviceId, ts_ms: u64) -> Option<String> {
    let ts = i64::try_from(ts_ms).ok().and_then(rfc3339::format_utc_ms);
    if ts.is_none() {
        tracing::error!(device_id = %device, ts_ms, "skipping telemetry with unrepresentable timestamp");
    }
    ts
}

/// Stored JSON text back to a value; `None` (logged) if it does not parse.
fn parse_value(device: &DeviceId, key: &str, json: &str) -> Option<Value> {
    match serde_json::from_str(json) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(device_id = %device, key, %error, "skipping corrupt telemetry value");
            None
        }
    }
}

mod config;
mod durable;
mod webhook;
mod writer;

#[cfg(test)]
mod raw_tests;
#[cfg(test)]
mod tests;
