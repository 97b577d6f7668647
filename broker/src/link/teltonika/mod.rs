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
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::link::Core;

/// Accepts trackers until shutdown: a slot of `mqtt.max_pending_connects` first, then
/// the socket, refused at once when its address is not in `teltonika.allow_from`.
pub(crate) async fn accept_loop(core: Arc<Core>, listener: TcpListener, tasks: TaskTracker) {
    tracing::info!(addr = ?listener.local_addr().ok(), "Teltonika listener up");
    loop {
        let pending = tokio::select! {
            _ = core.shutdown.cancelled() => return,
            pending = core.pending.clone().acquire_owned() => pending,
        };
        let Ok(pending) = pending else {
            return;
        };
        let accepted = tokio::select! {
            _ = core.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) if !core.config.teltonika.allows(peer.ip()) => {
                crate::stats::Stats::add(&core.stats.trackers.logins_refused, 1);
                tracing::info!(%peer, "tracker refused: address not in teltonika.allow_from");
                drop(socket);
            }
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                tasks.spawn(tracker::serve(core.clone(), socket, peer, pending));
            }
            Err(e) => {
                tracing::error!(error = %e, "tracker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
