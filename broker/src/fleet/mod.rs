//! Device logic fed by the link layer: what happens to devices (connected, subscribed,
//! published, acknowledged a command) reaches the fleet services as [`LinkEvent`]s over
//! one bounded queue.

pub mod commands;
pub mod config;
pub mod events;
pub mod presence;
pub mod services;
pub mod telemetry;
pub mod webhooks;

use std::net::SocketAddr;

use bytes::Bytes;
use fleetmq_storage::DeviceId;

use crate::handle::Transport;

/// Formats unix milliseconds as RFC 3339 in UTC with millisecond precision, e.g.
/// `2024-03-01T12:00:00.000Z`: the one formatter for every time the API and events show.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(fleetmq_device_plugins::rfc3339::format_utc_ms)
        .unwrap_or_else(|| "9999-12-31T23:59:59.999Z".to_owned())
}

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    #[error("{kind} {key:?} not found")]
    NotFound { kind: &'static str, key: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {key:?} already exists")]
    Conflict { kind: &'static str, key: String },
    #[error("queue full: {depth} commands are waiting")]
    QueueFull { depth: usize },
    #[error("storage: {0}")]
    Storage(String),
}

impl From<fleetmq_storage::StoreError> for FleetError {
    fn from(e: fleetmq_storage::StoreError) -> Self {
        match e {
            fleetmq_storage::StoreError::NotFound { kind, key } => {
                FleetError::NotFound { kind, key }
            }
            fleetmq_storage::StoreError::Conflict { kind, key } => {
                FleetError::Conflict { kind, key }
            }
            fleetmq_storage::StoreError::Invalid(m) => FleetError::Invalid(m),
            other => FleetError::Storage(other.to_string()),
        }
    }
}

/// The upstream topics of SPEC §3 a device publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Response,
    Status,
    Telemetry,
    Events,
}

impl Upstream {
    /// Which upstream topic `topic` is for device `id`, if any.
    pub fn of(id: &DeviceId, topic: &str) -> Option<Upstream> {
        let rest = topic
            .strip_prefix("device/")?
            .strip_prefix(id.as_str())?
            .strip_prefix('/')?;
        Some(match rest {
            "response" => Upstream::Response,
            "status" => Upstream::Status,
            "telemetry" => Upstream::Telemetry,
            "events" => Upstream::Events,
            _ => return None,
        })
    }
}

/// Something that happened on a device's connection. `generation` identifies the
/// connection: it grows with every connection the broker accepts, so an event of an older
/// connection can be told apart from the current one after a takeover or fast reconnect.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    Connected {
        id: DeviceId,
        generation: u64,
        peer: SocketAddr,
        protocol: &'static str,
        transport: Transport,
        session_present: bool,
        at_ms: u64,
    },
    Disconnected {
        id: DeviceId,
        generation: u64,
        at_ms: u64,
        /// Closed because a new connection of the same device took over; that connection
        /// announces itself next (or, if it fails, reports this one gone after all).
        taken_over: bool,
    },
    /// The device can now receive commands (it subscribed to its command topic, or its
    /// persistent session already had such a subscription).
    Subscribed { id: DeviceId, generation: u64 },
    Published {
        id: DeviceId,
        generation: u64,
        kind: Upstream,
        payload: Bytes,
        at_ms: u64,
    },
    DecryptFailed {
        id: DeviceId,
        topic: String,
        reason: String,
        at_ms: u64,
    },
    /// The device's plugin refused a payload the connection decoded itself (telemetry).
    BadPayload {
        id: DeviceId,
        topic: String,
        reason: String,
        at_ms: u64,
    },
    /// The device's connection acknowledged a command the broker delivered (PUBACK).
    CommandAcked {
        id: DeviceId,
        generation: u64,
        command_id: String,
        at_ms: u64,
    },
}

/// An event on its way to an [`EventSink`]: its SPEC §7 type, device and data (JSON).
pub type SinkEvent = (
    &'static str,
    Option<DeviceId>,
    Box<serde_json::value::RawValue>,
);

/// What [`EventSink`]'s methods return: done once the events are recorded.
pub type SinkFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Where fleet services report what happened (SPEC §7 event types such as
/// `device.online` or `command.completed`). The webhook outbox implements it durably; the
/// future returns once the event is recorded.
pub trait EventSink: Send + Sync + 'static {
    fn emit(
        &self,
        kind: &'static str,
        device: Option<&DeviceId>,
        data: Box<serde_json::value::RawValue>,
    ) -> SinkFuture<'_>;

    /// Whether events of `kind` are recorded durably (a webhook takes them), so that one
    /// a crash lost must be emitted again after the restart. By default every kind.
    fn records_durably(&self, kind: &str) -> bool {
        let _ = kind;
        true
    }

    /// Several events at once, recorded together where the sink can (one durable
    /// write for the batch); by default one [`EventSink::emit`] after another.
    fn emit_many(&self, events: Vec<SinkEvent>) -> SinkFuture<'_> {
        Box::pin(async move {
            for (kind, device, data) in events {
                self.emit(kind, device.as_ref(), data).await;
            }
        })
    }
}

/// How the command engine reaches a device's live connection.
pub trait CommandSink: Send + Sync + 'static {
    /// Writes `payload` (plaintext; sealed by the link when encryption applies) as a QoS 1
    /// PUBLISH on `device/{id}/command` to the connection with `generation`. False when that
    /// connection is gone. Its PUBACK comes back as [`LinkEvent::CommandAcked`].
    fn deliver(&self, id: &DeviceId, generation: u64, command_id: &str, payload: Bytes) -> bool;
}

/// Starts the event bus and webhook workers, the command engine and the telemetry store.
pub(crate) fn start_services(
    handle: &crate::BrokerHandle,
    config: crate::config::FleetConfig,
    shutdown: &tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<std::sync::Arc<services::Services>, String> {
    use std::sync::Arc;
    let store = handle.core.store.clone();
    let db = store.database();
    let outbox = fleetmq_storage::outbox::Outbox::new(db.clone(), Default::default());
    let hooks = config
        .webhooks
        .into_iter()
        .map(|h| events::WebhookConfig {
            url: h.url,
            secret: h.secret,
            events: h.events,
        })
        .collect();
    let bus = events::EventBus::new(outbox, hooks);
    webhooks::spawn_workers(&bus, shutdown.clone(), tracker);
    let sink: Arc<dyn CommandSink> = Arc::new(handle.weak_sink());
    let commands = commands::CommandEngine::start_dedicated(
        db.clone(),
        config.commands,
        sink,
        Arc::new(bus.clone()),
        fleetmq_device_plugins::PluginRegistry::builtin(),
        shutdown.clone(),
        tracker,
    );
    let telemetry = telemetry::Telemetry::start(db, config.telemetry, shutdown.clone(), tracker);
    Ok(Arc::new(services::Services::new(
        store, bus, commands, telemetry,
    )))
}

/// Runs the fleet services' event loop until shutdown, on a thread of its own
/// ([`spawn_dedicated`]): on the shared runtime this one task competed with every
/// connection task, and under a publish flood it got so few turns that its queue filled.
pub(crate) fn spawn(
    services: std::sync::Arc<services::Services>,
    mut events: tokio::sync::mpsc::Receiver<LinkEvent>,
    shutdown: tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    spawn_dedicated("the fleet services", tracker, async move {
        let mut batch = Vec::with_capacity(EVENT_BATCH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = events.recv_many(&mut batch, EVENT_BATCH) => if n == 0 {
                    return;
                },
            }
            services.on_events(batch.drain(..)).await;
        }
    });
}

/// Runs `task` on a current-thread runtime of its own, on a tracked blocking-pool
/// thread. A single task that everything behind it waits for (the fleet loop, the
/// telemetry writer) keeps a thread's worth of scheduling this way, however many
/// connection tasks keep the shared runtime busy: with 1,000 publishing devices one
/// round over the shared runtime's tasks can take hundreds of milliseconds.
pub(crate) fn spawn_dedicated<F>(
    what: &'static str,
    tracker: &tokio_util::task::TaskTracker,
    task: F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tracker.spawn_blocking(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(task),
            Err(e) => tracing::error!(error = %e, "cannot start the runtime of {what}"),
        }
    });
}

/// Device events taken from the queue at once.
const EVENT_BATCH: usize = 1024;
