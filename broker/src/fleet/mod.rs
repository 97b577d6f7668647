//! Device logic, the bottom of the broker: it names no transport. What it needs from one
//! and offers to one are its ports (`ports`); the link layer implements and calls them.
//!
//! - `alarms`: alarm rules and alarms (SPEC §11), evaluated off the routing threads.
//! - `ports`: [`LinkEvent`], [`FleetInbox`], [`CommandSink`], [`EventSink`].
//! - `services`: the fleet loop (presence, reported status) over a batch of link events.
//! - `commands`: the command engine (SPEC §5); `telemetry`: the telemetry store (SPEC §6).
//! - `device_config`: versioned device configuration (SPEC §6).
//! - `device_events`: what devices publish on `device/{id}/events`, stored (SPEC §7).
//! - `jobs`: one command to many devices, paced, with abort (SPEC §12).
//! - `events`, `webhooks`: the event bus (SPEC §7) and its webhook workers.
//! - `presence`: who is online; `settings`: the sections of the config this module owns.

pub mod alarms;
pub mod commands;
pub mod device_config;
pub mod device_events;
pub mod events;
pub mod jobs;
pub mod ports;
pub mod presence;
pub mod services;
pub mod settings;
pub mod telemetry;
pub mod webhooks;

use std::sync::Arc;

use fleetmq_storage::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::time::rfc3339_ms;
pub use events::WebhookConfig;
pub use ports::{CommandSink, EventSink, FleetInbox, LinkEvent, SinkEvent, SinkFuture, Upstream};

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
    Storage(#[source] StoreError),
    #[error("could not publish: {0}")]
    Publish(#[source] crate::publish::PublishError),
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, key } => FleetError::NotFound { kind, key },
            StoreError::Conflict { kind, key } => FleetError::Conflict { kind, key },
            StoreError::Invalid(m) => FleetError::Invalid(m),
            other => FleetError::Storage(other),
        }
    }
}

/// Starts the event bus and webhook workers, the command engine (with the device
/// `plugins` it encodes and matches with) and the telemetry store. Commands reach live
/// connections through `delivery`.
pub(crate) fn start_services(
    store: Store,
    config: settings::FleetConfig,
    plugins: fleetmq_device_plugins::PluginRegistry,
    delivery: Arc<dyn CommandSink>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Arc<services::Services> {
    let db = store.database();
    let outbox = fleetmq_storage::outbox::Outbox::new(db.clone(), Default::default());
    let options = webhooks::WebhookOptions {
        telemetry_to_all: config.telemetry.webhook,
        ..Default::default()
    };
    let bus = events::EventBus::with_options(outbox, config.webhooks, options);
    if let Err(error) = bus.load_endpoints(store.clone()) {
        tracing::error!(%error, "cannot load the webhook endpoints created through the API");
    }
    webhooks::spawn_workers(&bus, shutdown.clone(), tracker);
    let commands = commands::CommandEngine::start_dedicated(
        db.clone(),
        config.commands,
        delivery,
        Arc::new(bus.clone()),
        plugins,
        shutdown.clone(),
        tracker,
    );
    let presence = Arc::new(presence::Presence::default());
    let alarms = alarms::Alarms::start(
        (store.clone(), bus.clone(), presence.clone()),
        (config.telemetry.retention, config.telemetry.sweep_every),
        shutdown.clone(),
        tracker,
    );
    let device_events = device_events::DeviceEvents::start(
        db.clone(),
        &config.telemetry,
        shutdown.clone(),
        tracker,
    );
    let telemetry = telemetry::Telemetry::start_with_events(
        db,
        config.telemetry,
        Some(Arc::new(bus.clone())),
        shutdown.clone(),
        tracker,
    );
    let jobs = jobs::Jobs::start(
        store.clone(),
        commands.clone(),
        bus.clone(),
        config.jobs,
        shutdown.clone(),
        tracker,
    );
    telemetry.feed_alarms(alarms.feed());
    Arc::new(services::Services::new(
        store,
        presence,
        bus,
        commands,
        jobs,
        telemetry,
        device_events,
        alarms,
    ))
}

/// Runs the fleet services' event loop until shutdown, on a thread of its own
/// ([`spawn_dedicated`]): on the shared runtime this one task competed with every
/// connection task, and under a publish flood it got so few turns that its queue filled.
pub(crate) fn spawn(
    services: Arc<services::Services>,
    mut events: tokio::sync::mpsc::Receiver<LinkEvent>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
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
pub(crate) fn spawn_dedicated<F>(what: &'static str, tracker: &TaskTracker, task: F)
where
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
