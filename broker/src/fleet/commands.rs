//! The durable command engine (SPEC §5).
//!
//! [`CommandEngine`] is a cheap handle. Every state change goes through one worker task
//! (`worker`) over a bounded queue, so changes to a command are serialized without
//! locks; the worker applies whatever has queued up in one redb write transaction
//! (group commit) — on its own thread in the broker ([`CommandEngine::start_dedicated`]),
//! on the blocking pool under [`CommandEngine::start`] — then answers callers, wakes
//! [`CommandEngine::wait_terminal`]ers and emits `command.*` events. Reads (`get`, `list`)
//! go straight to redb snapshots.
//!
//! Timers are data: every non-terminal command stores its next deadline (TTL while
//! queued, answer timeout once sent) in an index, and the worker sleeps until the
//! earliest one, so a restart resumes them.
//!
//! Decisions SPEC §5 leaves open:
//! - A re-send never moves a command backwards: a `delivered` command that is re-sent
//!   stays `delivered` (its device got it once); `attempts` counts every hand-over.
//! - On [`CommandEngine::device_ready`] for a *new* connection, `sent`/`delivered`
//!   commands are re-sent (as SPEC requires) even if their retry budget is spent; each
//!   such re-send re-arms the answer timeout. A repeated `device_ready` for the same
//!   connection only sends what is still `queued`.
//! - An answer timeout that fires while the device is offline does not use a retry: the
//!   command waits for the next connection until `created_at + ttl`, then becomes
//!   `failed` with `error: "timeout"` (it was sent, so it cannot be `expired`).
//! - `completed_at` is set on every terminal status (when the command ended).
//! - A deleted device's non-terminal commands become `cancelled` (`error: "device
//!   deleted"`, with events), then all of its command records and idempotency keys are
//!   removed, so a re-provisioned id starts clean.
//! - A device answer that fails to decode is counted as `malformed_responses`; one without
//!   a `commandId` answers the oldest `sent`/`delivered` command the plugin allows.
//! - `ttl_s: 0` means "now or never": a command for a device that is not ready expires
//!   at once.
//! - Link-layer calls (`device_ready`, `device_gone`, `acked`, `response`) only queue work
//!   and return; API calls (`create`, `cancel`, `forget_device`) return after the commit.
//!   [`CommandEngine::flush`] waits for everything queued before it.
//!
//! Submodules: `worker` (the task, its loop and what happens after a commit), `apply`
//! (what happens inside one transaction) and `model` (the public types: config, requests,
//! the command view, errors, counters).

mod apply;
mod devices;
mod model;
mod prune;
mod request;
mod waiters;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleetmq_device_plugins::{DevicePlugin, PluginRegistry};
use fleetmq_storage::commands::{self as store, NewCommandRecord};
use fleetmq_storage::{DeviceId, DeviceRecord, StoreError};
use redb::Database;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fleet::{CommandSink, EventSink};
use devices::DeviceCache;
pub use devices::{CacheMiss, KnownDevice};
use request::encode;
use waiters::Waiters;
use worker::{Clock, Op, Worker};

pub use fleetmq_storage::commands::CommandStatus;
pub use model::{
    CommandError, CommandStats, CommandView, CommandsConfig, Created, NewCommand,
    MAX_IDEMPOTENCY_KEY_LEN, MAX_LIST_LIMIT, MAX_RETRIES, MAX_TIMEOUT_S, MAX_TTL_S, MAX_TYPE_LEN,
};

/// How many calls may wait for the worker before callers wait for room.
const QUEUE_DEPTH: usize = 1_024;

/// Counters shared by the handle and the worker.
#[derive(Debug, Default)]
struct Counters {
    by_status: [AtomicU64; 8],
    unknown: AtomicU64,
    late: AtomicU64,
    malformed: AtomicU64,
    /// Finished commands pruned from history.
    pruned: AtomicU64,
    /// From the first send to the device's answer, for answered commands.
    round_trip: fleetmq_storage::metrics::Histogram,
}

impl Counters {
    fn set_counts(&self, counts: &BTreeMap<CommandStatus, u64>) {
        for (i, s) in CommandStatus::ALL.into_iter().enumerate() {
            let n = counts.get(&s).copied().unwrap_or(0);
            self.by_status[i].store(n, Ordering::Relaxed);
        }
    }
}

struct Shared {
    db: Arc<Database>,
    config: CommandsConfig,
    plugins: PluginRegistry,
    ops: mpsc::Sender<Op>,
    waiters: Arc<Waiters>,
    counters: Arc<Counters>,
    clock: Clock,
    devices: Mutex<DeviceCache>,
}

/// Handle to the command engine; clones share one engine.
#[derive(Clone)]
pub struct CommandEngine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CommandEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandEngine")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl CommandEngine {
    /// Starts the worker on `tracker`. It creates the command tables if needed, loads the
    /// earliest deadline and the status counts, re-emits terminal events a crash may
    /// have lost, and stops when `shutdown` is cancelled (after applying the calls
    /// already queued).
    ///
    /// `sink.deliver` is called by the worker right after the commit that recorded the
    /// send (never before: a device must not act on a command a crash could make the
    /// store forget), so it must not block for long.
    pub fn start(
        db: Arc<Database>,
        config: CommandsConfig,
        sink: Arc<dyn CommandSink>,
        events: Arc<dyn EventSink>,
        plugins: PluginRegistry,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> CommandEngine {
        let (engine, worker, rx) = Self::new(db, config, sink, events, plugins);
        tracker.spawn(worker.run(rx, shutdown.clone()));
        tracker.spawn(engine.clone().run_pruner(shutdown));
        engine
    }

    /// Like [`CommandEngine::start`], with the worker on a thread of its own
    /// (`fleet::spawn_dedicated`) that runs each batch's transaction itself: no hop to
    /// the blocking pool and back per batch, and no waiting for a turn among the
    /// connection tasks of the shared runtime. Its timers follow that thread's runtime,
    /// so tests that pause time use [`CommandEngine::start`].
    pub(crate) fn start_dedicated(
        db: Arc<Database>,
        config: CommandsConfig,
        sink: Arc<dyn CommandSink>,
        events: Arc<dyn EventSink>,
        plugins: PluginRegistry,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> CommandEngine {
        let (engine, mut worker, rx) = Self::new(db, config, sink, events, plugins);
        worker.inline = true;
        crate::fleet::spawn_dedicated(
            "the command engine",
            tracker,
            worker.run(rx, shutdown.clone()),
        );
        tracker.spawn(engine.clone().run_pruner(shutdown));
        engine
    }

    fn new(
        db: Arc<Database>,
        config: CommandsConfig,
        sink: Arc<dyn CommandSink>,
        events: Arc<dyn EventSink>,
        plugins: PluginRegistry,
    ) -> (CommandEngine, Worker, mpsc::Receiver<Op>) {
        let (ops, rx) = mpsc::channel(QUEUE_DEPTH);
        let waiters = Arc::new(Waiters::default());
        let counters = Arc::new(Counters::default());
        let clock = Clock::new();
        let worker = Worker::new(
            db.clone(),
            config.clone(),
            sink,
            events,
            waiters.clone(),
            counters.clone(),
            clock,
        );
        let engine = CommandEngine {
            shared: Arc::new(Shared {
                db,
                config,
                plugins,
                ops,
                waiters,
                counters,
                clock,
                devices: Mutex::default(),
            }),
        };
        (engine, worker, rx)
    }

    /// Creates a command for `device`, durably, and sends it at once when the device is
    /// ready. With an `idempotency_key` already used for this device, returns that
    /// command instead (`replayed: true`) and creates nothing.
    pub async fn create(
        &self,
        device: &DeviceRecord,
        req: NewCommand,
        idempotency_key: Option<String>,
    ) -> Result<Created, CommandError> {
        self.create_for(&self.known(device)?, req, idempotency_key)
            .await
    }

    /// [`CommandEngine::create`] for a device from [`CommandEngine::cached_device`].
    pub async fn create_for(
        &self,
        device: &KnownDevice,
        req: NewCommand,
        idempotency_key: Option<String>,
    ) -> Result<Created, CommandError> {
        let (new, supersede, payload) = self.validate(device, req, idempotency_key)?;
        self.call(|reply| Op::Create {
            new,
            supersede,
            payload,
            reply,
        })
        .await?
    }

    /// Checks a request; returns the record to create, whether it supersedes, and its
    /// payload for the device.
    fn validate(
        &self,
        device: &KnownDevice,
        req: NewCommand,
        idempotency_key: Option<String>,
    ) -> Result<(NewCommandRecord, bool, Bytes), CommandError> {
        let now_ms = self.shared.clock.now_ms();
        request::validate(&self.shared.config, now_ms, device, req, idempotency_key)
    }

    /// Whether this broker has a plugin called `name` (to validate a provisioning request).
    pub fn has_plugin(&self, name: &str) -> bool {
        self.shared.plugins.contains(name)
    }

    fn plugin(&self, device: &DeviceRecord) -> Result<Arc<dyn DevicePlugin>, CommandError> {
        self.shared.plugins.get(&device.plugin).ok_or_else(|| {
            CommandError::Invalid(format!(
                "device {} uses plugin {:?}, which this broker does not have",
                device.id, device.plugin
            ))
        })
    }

    /// Waits up to `max` for the command to reach a terminal status; returns its record
    /// either way.
    pub async fn wait_terminal(
        &self,
        command_id: &str,
        max: Duration,
    ) -> Result<CommandView, CommandError> {
        // Register before reading, so a change between the two is not missed.
        let rx = self.shared.waiters.register(command_id);
        let view = self.get(command_id).await;
        match view {
            Ok(view) if !view.status.is_terminal() => {
                self.wait_registered(rx, command_id, max).await
            }
            other => {
                drop(rx);
                self.shared.waiters.prune(command_id);
                other
            }
        }
    }

    /// Creates a command like [`CommandEngine::create`], then waits up to `max` for it to
    /// reach a terminal status. The waiter is registered before the command exists, so
    /// no read is needed to catch a quick answer.
    pub async fn create_and_wait(
        &self,
        device: &DeviceRecord,
        req: NewCommand,
        idempotency_key: Option<String>,
        max: Duration,
    ) -> Result<Created, CommandError> {
        self.create_and_wait_for(&self.known(device)?, req, idempotency_key, max)
            .await
    }

    /// [`CommandEngine::create_and_wait`] for a device from
    /// [`CommandEngine::cached_device`].
    pub async fn create_and_wait_for(
        &self,
        device: &KnownDevice,
        req: NewCommand,
        idempotency_key: Option<String>,
        max: Duration,
    ) -> Result<Created, CommandError> {
        let (new, supersede, payload) = self.validate(device, req, idempotency_key)?;
        let id = new.command_id.clone();
        let rx = self.shared.waiters.register(&id);
        let created = self
            .call(|reply| Op::Create {
                new,
                supersede,
                payload,
                reply,
            })
            .await;
        let created = match created {
            Ok(Ok(c)) => c,
            Ok(Err(e)) | Err(e) => {
                drop(rx);
                self.shared.waiters.prune(&id);
                return Err(e);
            }
        };
        if created.replayed || created.record.status.is_terminal() {
            drop(rx);
            self.shared.waiters.prune(&id);
            if created.record.status.is_terminal() {
                return Ok(created);
            }
            // An earlier command with the same key: wait for that one.
            let record = self.wait_terminal(&created.record.command_id, max).await?;
            return Ok(Created { record, ..created });
        }
        let record = self.wait_registered(rx, &id, max).await?;
        Ok(Created { record, ..created })
    }

    async fn wait_registered(
        &self,
        rx: oneshot::Receiver<Arc<CommandView>>,
        command_id: &str,
        max: Duration,
    ) -> Result<CommandView, CommandError> {
        match tokio::time::timeout(max, rx).await {
            Ok(Ok(view)) => Ok(Arc::unwrap_or_clone(view)),
            // Timed out, or the engine stopped: the record as it is now.
            _ => {
                self.shared.waiters.prune(command_id);
                self.get(command_id).await
            }
        }
    }

    /// The command's current record.
    pub async fn get(&self, command_id: &str) -> Result<CommandView, CommandError> {
        let id = command_id.to_owned();
        let rec = self.read(move |db| store::get(db, &id)).await?;
        CommandView::from_record(&rec.ok_or(CommandError::NotFound)?)
    }

    /// The commands `ids` in their order, `None` where absent, from one snapshot.
    pub async fn get_many(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<Option<CommandView>>, CommandError> {
        let recs = self.read(move |db| store::get_many(db, &ids)).await?;
        recs.iter()
            .map(|r| r.as_ref().map(CommandView::from_record).transpose())
            .collect()
    }

    /// Whether `req` would be accepted for `device`, without creating anything.
    pub fn check(&self, device: &KnownDevice, req: NewCommand) -> Result<(), CommandError> {
        self.validate(device, req, None).map(|_| ())
    }

    /// A device's commands, newest first, optionally only those in `status`; `limit` is
    /// clamped to 1..=[`MAX_LIST_LIMIT`]. Returns the page and the cursor of the next one.
    pub async fn list(
        &self,
        device: &DeviceId,
        status: Option<CommandStatus>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<CommandView>, Option<String>), CommandError> {
        // The cursor is the id of the first command of the page (opaque to clients).
        let from = cursor.filter(|c| !c.is_empty());
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let device = device.clone();
        let page = self
            .read(move |db| {
                match store::list_for_device(db, &device, status, limit, from.as_deref()) {
                    // A cursor that names no command of this device: the caller's mistake.
                    Err(StoreError::Invalid(why)) => Ok(Err(CommandError::Invalid(why))),
                    other => other.map(Ok),
                }
            })
            .await??;
        let mut items = Vec::with_capacity(page.items.len());
        for rec in &page.items {
            match CommandView::from_record(rec) {
                Ok(v) => items.push(v),
                Err(error) => tracing::error!(%error, "skipping unreadable command"),
            }
        }
        Ok((items, page.next))
    }

    /// Cancels a command that has not reached a terminal status.
    pub async fn cancel(&self, command_id: &str) -> Result<CommandView, CommandError> {
        let id = command_id.to_owned();
        self.call(|reply| Op::Cancel { id, reply }).await?
    }

    /// The device was deleted: its non-terminal commands become `cancelled` (with
    /// events), then every command record and idempotency key of it is removed.
    pub async fn forget_device(&self, device: &DeviceId) {
        self.forget_cached_device(device);
        let device = device.clone();
        let done = self.call(|reply| Op::Forget { device, reply }).await;
        if let Err(error) = done.and_then(|r| r) {
            tracing::warn!(%error, "could not forget a device's commands");
        }
    }

    /// The device's connection `generation` can receive commands: sends its `queued`
    /// commands oldest first and, for a new connection, re-sends the `sent`/`delivered`
    /// ones that got no answer. Returns once queued for the worker.
    pub async fn device_ready(&self, device: &DeviceRecord, generation: u64) {
        match self.plugin(device) {
            Ok(plugin) => self.device_ready_with(&device.id, generation, plugin).await,
            Err(error) => tracing::error!(%error, "cannot deliver commands"),
        }
    }

    /// Like [`CommandEngine::device_ready`], for a caller that already knows the
    /// device's plugin.
    pub async fn device_ready_with(
        &self,
        device: &DeviceId,
        generation: u64,
        plugin: Arc<dyn DevicePlugin>,
    ) {
        self.post(Op::Ready {
            device: device.clone(),
            generation,
            plugin,
        })
        .await
    }

    /// The connection `generation` of the device is gone (ignored if a newer one is
    /// current). Its commands wait for the next connection.
    pub async fn device_gone(&self, device: &DeviceId, generation: u64) {
        let device = device.clone();
        self.post(Op::Gone { device, generation }).await
    }

    /// The device's connection acknowledged a command (PUBACK): `sent` → `delivered`.
    pub async fn acked(&self, device: &DeviceId, generation: u64, command_id: &str) {
        let (device, command_id) = (device.clone(), command_id.to_owned());
        self.post(Op::Acked {
            device,
            generation,
            command_id,
        })
        .await
    }

    /// A message the device published on `device/{id}/response`.
    pub async fn response(&self, device: &DeviceRecord, payload: &[u8]) {
        let plugin = match self.plugin(device) {
            Ok(p) => p,
            Err(error) => return tracing::error!(%error, "cannot read a command response"),
        };
        self.response_with(&device.id, plugin, payload).await;
    }

    /// Like [`CommandEngine::response`], for a caller that already knows the device's
    /// plugin (the fleet services cache it, so an answer costs no device read).
    pub async fn response_with(
        &self,
        device: &DeviceId,
        plugin: Arc<dyn DevicePlugin>,
        payload: &[u8],
    ) {
        match plugin.decode_response(payload) {
            Ok(response) => {
                let device = device.clone();
                self.post(Op::Response {
                    device,
                    response,
                    plugin,
                })
                .await
            }
            Err(error) => {
                self.shared
                    .counters
                    .malformed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(device_id = %device, %error, "dropping malformed command response");
            }
        }
    }

    /// Returns once every call made before it has been applied (and its events emitted).
    pub async fn flush(&self) {
        let _ = self.call(|reply| Op::Flush { reply }).await;
    }

    /// Commands per status and response counters.
    pub fn stats(&self) -> CommandStats {
        let c = &self.shared.counters;
        CommandStats {
            by_status: CommandStatus::ALL
                .into_iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), c.by_status[i].load(Ordering::Relaxed)))
                .collect(),
            unknown_responses: c.unknown.load(Ordering::Relaxed),
            late_responses: c.late.load(Ordering::Relaxed),
            malformed_responses: c.malformed.load(Ordering::Relaxed),
            pruned: c.pruned.load(Ordering::Relaxed),
        }
    }

    /// How long answered commands took from their first send to the device's answer.
    pub fn round_trip(&self) -> fleetmq_storage::metrics::HistogramSnapshot {
        self.shared.counters.round_trip.snapshot()
    }

    /// Sends an op that answers, and waits for the answer.
    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .ops
            .send(op(tx))
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        rx.await.map_err(|_| CommandError::ShuttingDown)
    }

    /// Queues an op without waiting for it to be applied.
    async fn post(&self, op: Op) {
        if self.shared.ops.send(op).await.is_err() {
            tracing::debug!("command engine stopped; dropping a link event");
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, CommandError> {
        let db = self.shared.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => Ok(r?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(CommandError::ShuttingDown),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
