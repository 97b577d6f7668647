//! fleetmq's MQTT link layer over rumqttd's router.
//!
//! Modules:
//! - `handle`: [`BrokerHandle`], what the admin API and the binary use to look at and steer
//!   the running broker (connected clients, kick, publish, stats, registry changes).
//! - `stats`: counters for connections, messages and drops by cause.
//! - `link`: the per-connection link layer (listeners, CONNECT, ACL, payload crypto).

mod handle;
mod stats;

pub use handle::{BrokerHandle, ClientInfo, ClientKind, PublishError, PublishRequest, Transport};
pub use stats::StatsSnapshot;
