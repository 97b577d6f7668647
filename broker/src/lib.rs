//! fleetmq's MQTT broker: our own link layer over rumqttd's router, and the device logic.
//!
//! Layers, each importing only those below it (`scripts/layers.py` checks this):
//! - leaves: `client` (who is connected, over what), `publish` (what the broker publishes
//!   itself), `settings` (config errors), `time`, `stats`;
//! - `fleet`: device logic (commands, telemetry, events, webhooks, presence) and its
//!   ports, the traits and event types a transport implements and calls;
//! - `link`: the MQTT link layer, the only module that touches rumqttd;
//! - `config`, `handle`, and here: compose the sections and the layers in one pass.
//!
//! Start with [`Listeners::bind`] then [`start`]; see `docs/architecture.md`.

mod client;
pub mod config;
pub mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod handle;
mod link;
mod publish;
mod settings;
mod stats;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
mod time;

pub use client::{
    ClientCounters, ClientDetail, ClientInfo, ClientKind, RefusedConnect, SubscriptionInfo,
    Transport,
};
pub use config::{
    AuthBackoffConfig, BrokerConfig, ConfigError, ListenerSpec, RawListenerConfig, RawMqttConfig,
    RawSecurityConfig, RawTlsConfig, RefusalLogConfig, TlsConfig,
};
pub use handle::BrokerHandle;
/// The SPEC §4 payload envelope: sans-IO `seal`/`seal_v2`/`open`, `NonceSource`,
/// `KeyRing`, and the 0x02 `ReplayWindow`.
pub use link::security::crypto as envelope;
pub use link::security::refusals::RefusalPage;
pub use link::tap::{Tap, TapError, TappedMessage, MAX_TAPS, TAP_QUEUE};
pub use link::Listeners;
pub use publish::{PublishError, PublishRequest, RetainedError};
pub use stats::{
    BackoffStats, ConnectionStats, DropStats, MessageStats, PacketStats, RefusalCause,
    StatsSnapshot, TrackerStats,
};

use std::sync::Arc;

use fleetmq_storage::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Device events in flight from connections to the fleet services; telemetry beyond this
/// is dropped and counted, other events wait (backpressure on their connection).
const FLEET_QUEUE: usize = 16_384;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("could not start rumqttd's router: {0}")]
    Router(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("could not load retained messages and sessions: {0}")]
    Retained(#[source] fleetmq_storage::StoreError),
}

/// Starts the broker on bound listeners, composing it bottom-up in one pass: the
/// live-connection table, the fleet services that deliver commands through it, then the
/// link layer (router, restored retained messages and persistent sessions) that feeds the
/// fleet services; then starts accepting. Every task is tracked by `tracker` and stops
/// when `shutdown` is cancelled.
pub async fn start(
    config: BrokerConfig,
    listeners: Listeners,
    store: Store,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<BrokerHandle, StartError> {
    let restored = store
        .call(|s| {
            Ok::<_, fleetmq_storage::StoreError>(link::Restored {
                retained: s.list_retained()?,
                sessions: s.list_sessions()?,
                max_queued_seq: s.max_queued_seq()?,
            })
        })
        .await
        .map_err(StartError::Retained)?;
    let retained_count = restored.retained.len();
    let store_key = store.token_key().clone();
    let sessions = Arc::new(link::session::live::Sessions::default());
    let mut plugins = fleetmq_device_plugins::PluginRegistry::builtin();
    plugins.set(Arc::new(
        fleetmq_device_plugins::teltonika::TeltonikaPlugin::new(config.teltonika.responses.clone()),
    ));
    let services = fleet::start_services(
        store.clone(),
        config.fleet.clone(),
        plugins,
        sessions.clone(),
        &shutdown,
        tracker,
    );
    let (fleet_tx, fleet_rx) = tokio::sync::mpsc::channel(FLEET_QUEUE);
    let parts = link::CoreParts {
        sessions,
        fleet: fleet::FleetInbox::new(fleet_tx, services.clone()),
    };
    let core = link::Core::start(
        config,
        store,
        shutdown.clone(),
        parts,
        tracker.clone(),
        restored,
    )
    .map_err(|e| StartError::Router(e.into()))?;
    tracing::info!(count = retained_count, "retained messages restored");
    link::session::store::spawn_expiry(&core, shutdown.clone());
    fleet::spawn(services.clone(), fleet_rx, shutdown, tracker);
    link::sys::spawn_ticker(&core, tracker);
    // TLS session tickets are sealed under a secret of this install, so they resume
    // across restarts (`link/net/tickets.rs`).
    let ticket_secret = store_key.derive(b"fleetmq tls session tickets v1");
    for keys in &listeners.tickets {
        keys.set_secret(ticket_secret);
    }
    link::spawn_listeners(&core, listeners, tracker);
    Ok(BrokerHandle { core, services })
}
