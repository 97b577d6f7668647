//! Teltonika trackers over TCP (SPEC §10): a tracker is a device of the fleet that
//! speaks Teltonika's binary protocol instead of MQTT. Its connection logs in by IMEI,
//! sends AVL records, which are stored before they are acknowledged and published as
//! JSON on `device/{imei}/telemetry`, and receives commands as Codec 12 messages, whose
//! answers go to the command engine. It shares the live-connection table with MQTT
//! devices (listing, kick, takeover, revocation, command mailbox) and the listeners'
//! accounting (`mqtt.max_pending_connects` before login, `mqtt.max_connections` after).
//!
//! - `settings`: `[teltonika]`.
//! - `tracker`: one tracker's connection: login, then packets in and commands out.

pub(crate) mod settings;
mod tracker;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::link::net::listener::next_socket;
use crate::link::Core;

/// Accepts trackers until shutdown, as the MQTT listeners do (`next_socket`); a socket
/// whose address is not in `teltonika.allow_from` is closed at once.
pub(crate) async fn accept_loop(core: Arc<Core>, listener: TcpListener, tasks: TaskTracker) {
    tracing::info!(addr = ?listener.local_addr().ok(), "Teltonika listener up");
    while let Some((socket, peer, pending)) = next_socket(&core, &listener).await {
        if !core.config.teltonika.allows(peer.ip()) {
            crate::stats::Stats::add(&core.stats.trackers.logins_refused, 1);
            tracing::info!(%peer, "tracker refused: address not in teltonika.allow_from");
            continue;
        }
        tasks.spawn(tracker::serve(core.clone(), socket, peer, pending));
    }
}
