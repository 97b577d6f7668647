//! Devices reach the router without a router link of their own (issue 15).
//!
//! A rumqttd link preallocates about 60 KB of queues, which made an idle device cost
//! fifteen times what it costs in Mosquitto. Device connections therefore share a few
//! links with each other:
//!
//! - **Up** (what a device publishes): [`DeviceLinks::publish`] appends to one of
//!   [`PUBLISHERS`] publisher links, picked by a hash of the device id, so one device's
//!   messages keep their order. Everything is routed at QoS 0 (the origin header carries
//!   the publish QoS, as for the broker's own publishes); the device's PUBACK comes from
//!   its connection once the message is handed over (and, for telemetry, stored).
//! - **Down** (what is published to `device/{id}/command` and `device/{id}/config` by
//!   service clients, the admin API and the config service): one dispatcher link
//!   subscribes to `device/+/command` and `device/+/config` at QoS 0, and its thread
//!   hands each message to the live connection of that device id through its mailbox
//!   (`session::live::Mailbox`), where the connection matches it against its own
//!   filters (QoS, identifiers, `$share/` groups of one) and queues it. A device may
//!   read nothing else (SPEC §3), so nothing else is dispatched. Commands from the
//!   command engine never pass the router (flow 2).
//!
//! SUBSCRIBE and UNSUBSCRIBE of a device are answered by its connection
//! (`connection/router_link.rs`, `send_shared`): a device's filters never reach the router, so
//! neither they nor a device's `$share/` groups hold router memory.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use futures_util::FutureExt;
use rumqttd::local::LinkTx;
use rumqttd::protocol::Packet;
use rumqttd::Forward;

use crate::link::{Core, Links};
use crate::stats::DropCause;

/// How many publisher links devices share.
pub(crate) const PUBLISHERS: usize = 4;

/// Packets a publisher link may hold that the router has not taken yet, past which its
/// devices are not read (`Connection::held_until`). rumqttd takes a link's whole buffer
/// in one event and appends it before it hands any of it to readers, so an unbounded
/// buffer behind a busy router thread becomes one append larger than a filter's log.
const PUBLISHER_BACKLOG: usize = 2_000;

/// The topics the dispatcher link takes from the router (everything a device may read).
const DISPATCHED: [&str; 2] = ["device/+/command", "device/+/config"];

/// The shared publisher links (the dispatcher runs on its own thread).
pub(crate) struct DeviceLinks {
    publishers: Box<[Mutex<LinkTx>]>,
}

/// The router is gone.
#[derive(Debug)]
pub(crate) struct RouterGone;

impl DeviceLinks {
    /// Builds the publisher links, each with a thread that drains what the router
    /// sends it (nothing but acknowledgements it never asks for).
    pub(crate) fn build(links: &Links) -> Result<DeviceLinks, String> {
        let mut publishers = Vec::with_capacity(PUBLISHERS);
        for i in 0..PUBLISHERS {
            let (tx, rx, _) = (links.build)(&format!("fleetmq:devices-up-{i}"), true)?;
            crate::link::spawn_link_reader(format!("fleetmq-devices-up-{i}"), rx, |_| true)?;
            publishers.push(Mutex::new(tx));
        }
        Ok(DeviceLinks {
            publishers: publishers.into_boxed_slice(),
        })
    }

    /// Hands a device's packets (publishes) to its publisher link, in order. Tells the
    /// router only when the link's buffer was empty: otherwise the event that made it
    /// non-empty is still to be handled and takes these along.
    pub(crate) fn publish(
        &self,
        device_key: &str,
        packets: &mut Vec<Packet>,
    ) -> Result<(), RouterGone> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        let mut tx = self.link_of(device_key);
        {
            let mut buffer = tx.buffer();
            let pending = !buffer.is_empty();
            buffer.extend(packets.drain(..));
            if pending {
                buffer.push_back(last);
                return Ok(());
            }
        }
        // `LinkTx::send` never awaits: it pushes and does a blocking channel send.
        match tx.send(last).now_or_never() {
            Some(Ok(_)) => Ok(()),
            Some(Err(_)) | None => Err(RouterGone),
        }
    }

    /// The publisher link of a device, locked.
    fn link_of(&self, device_key: &str) -> std::sync::MutexGuard<'_, LinkTx> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        device_key.hash(&mut hasher);
        let i = (hasher.finish() % self.publishers.len() as u64) as usize;
        self.publishers[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the router has yet to take [`PUBLISHER_BACKLOG`] packets or more from the
    /// device's publisher link.
    pub(crate) fn backlogged(&self, device_key: &str) -> bool {
        self.link_of(device_key).buffer().len() >= PUBLISHER_BACKLOG
    }
}

/// Subscribes the dispatcher link and starts its thread, which holds the core weakly
/// (the core owns the router handle the thread's link keeps alive).
pub(crate) fn spawn_dispatcher(core: &Arc<Core>) -> Result<(), String> {
    let (mut tx, rx, _) = (core.links.build)("fleetmq:devices-down", true)?;
    for filter in DISPATCHED {
        tx.subscribe(filter).map_err(|e| e.to_string())?;
    }
    // The link's sending half stays with the thread: dropping it is no leave.
    let weak = Arc::downgrade(core);
    crate::link::spawn_link_reader("fleetmq-devices-down".into(), rx, move |forward| {
        let _keep = &tx;
        dispatch(&weak, forward)
    })
}

/// Hands one routed message to the connection of the device it is addressed to;
/// false once the broker is gone.
fn dispatch(core: &Weak<Core>, forward: Forward) -> bool {
    let Some(core) = core.upgrade() else {
        return false;
    };
    let Some(id) = addressed_device(&forward.publish.topic).map(str::to_owned) else {
        return true;
    };
    match core
        .sessions
        .route_to_device(&id, forward.publish, forward.properties)
    {
        Routed::Queued | Routed::NotConnected => {}
        Routed::Full => {
            core.stats.dropped(DropCause::SlowConsumer);
            tracing::warn!(device = id, "device's routed queue full; message dropped");
        }
    }
    true
}

/// The `{id}` of `device/{id}/command` or `device/{id}/config`.
fn addressed_device(topic: &[u8]) -> Option<&str> {
    let rest = std::str::from_utf8(topic).ok()?.strip_prefix("device/")?;
    let (id, leaf) = rest.split_once('/')?;
    matches!(leaf, "command" | "config").then_some(id)
}

/// What became of a dispatched message.
pub(crate) enum Routed {
    Queued,
    /// No live connection of that device: nobody to deliver to (a parked session has
    /// its copy from the publisher's session check).
    NotConnected,
    /// The connection's queue of routed messages is full.
    Full,
}

#[cfg(test)]
mod tests {
    use super::addressed_device;

    #[test]
    fn only_a_device_s_readable_topics_are_dispatched() {
        assert_eq!(addressed_device(b"device/d1/command"), Some("d1"));
        assert_eq!(addressed_device(b"device/d1/config"), Some("d1"));
        assert_eq!(addressed_device(b"device/d1/telemetry"), None);
        assert_eq!(addressed_device(b"device/d1/command/x"), None);
        assert_eq!(addressed_device(b"devices/d1/command"), None);
        assert_eq!(addressed_device(b"device/d1"), None);
    }
}
