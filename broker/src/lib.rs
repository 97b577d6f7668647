//! fleetmq's MQTT broker: our own link layer over rumqttd's router.
//!
//! Modules:
//! - `config`: the `[mqtt]` and `[security]` config sections.
//! - `auth`: device registry and service-client authentication.
//! - `sessions`: the live-connection table (listing, kick, takeover).
//! - `stats`: counters for connections, messages and drops by cause.
//! - `handle`: [`BrokerHandle`], what the admin API uses to steer the broker.
//! - `link`: the link layer itself; the only module that touches rumqttd.
//!
//! Start with [`Listeners::bind`] then [`start`]; see `docs/architecture.md`.

mod auth;
pub mod config;
pub mod fleet;
mod handle;
mod link;
mod sessions;
mod stats;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

pub use config::{
    BrokerConfig, ConfigError, RawMqttConfig, RawSecurityConfig, RawTlsConfig, TlsConfig,
};
pub use handle::{
    BrokerHandle, ClientInfo, ClientKind, PublishError, PublishRequest, RetainedError, Transport,
};
pub use link::Listeners;
pub use stats::{ConnectionStats, DropStats, MessageStats, PacketStats, StatsSnapshot};

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
    Router(String),
    #[error("could not load retained messages and sessions: {0}")]
    Retained(String),
    #[error("could not start the device services: {0}")]
    Fleet(String),
}

/// Starts the broker on bound listeners: spawns the router, restores the stored retained
/// messages and persistent sessions, then starts accepting. Every task is tracked by `tracker` and stops
/// when `shutdown` is cancelled.
pub async fn start(
    config: BrokerConfig,
    listeners: Listeners,
    store: Store,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<BrokerHandle, StartError> {
    let (fleet_tx, fleet_rx) = tokio::sync::mpsc::channel(FLEET_QUEUE);
    let fleet_config = config.fleet.clone();
    let restored = store
        .call(|s| {
            Ok::<_, fleetmq_storage::StoreError>(link::Restored {
                retained: s.list_retained()?,
                sessions: s.list_sessions()?,
                max_queued_seq: s.max_queued_seq()?,
            })
        })
        .await
        .map_err(|e| StartError::Retained(e.to_string()))?;
    let retained_count = restored.retained.len();
    let core = link::Core::start(
        config,
        store.clone(),
        shutdown.clone(),
        fleet_tx,
        tracker.clone(),
        restored,
    )
    .map_err(StartError::Router)?;
    let handle = BrokerHandle { core };
    let services = fleet::start_services(&handle, fleet_config, &shutdown, tracker)
        .map_err(StartError::Fleet)?;
    if handle.core.services.set(services.clone()).is_err() {
        return Err(StartError::Fleet("services started twice".into()));
    }
    tracing::info!(count = retained_count, "retained messages restored");
    link::session_store::spawn_expiry(&handle.core, shutdown.clone());
    fleet::spawn(services, fleet_rx, shutdown, tracker);
    link::sys::spawn_ticker(&handle.core, tracker);
    link::spawn_listeners(&handle.core, listeners, tracker);
    Ok(handle)
}
