//! The fleet services' ports: what they need from the transport ([`CommandSink`]: deliver
//! a command to a live connection), what they offer it ([`FleetInbox`]: device traffic in,
//! command acks, presence, as [`LinkEvent`]s or direct calls), and where they report
//! ([`EventSink`]). The link layer implements and calls these; fleet never names it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fleetmq_storage::DeviceId;
use tokio::sync::mpsc;

use super::services::Services;
use crate::client::Transport;

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
        /// `decrypt`, `replayed` or `replay_protection_required` (event data `cause`).
        cause: &'static str,
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
    /// connection is gone. Its PUBACK comes back as [`FleetInbox::command_acked`].
    fn deliver(&self, id: &DeviceId, generation: u64, command_id: &str, payload: Bytes) -> bool;
}

/// How the link layer hands device traffic to the fleet services. Cheap to clone.
///
/// Answers to commands and telemetry are handled on the connection's own task (the
/// command engine and the telemetry store have their own queues); everything else goes
/// over one bounded queue to the fleet loop, in order.
#[derive(Clone)]
pub struct FleetInbox {
    events: mpsc::Sender<LinkEvent>,
    services: Arc<Services>,
}

impl FleetInbox {
    pub(crate) fn new(events: mpsc::Sender<LinkEvent>, services: Arc<Services>) -> FleetInbox {
        FleetInbox { events, services }
    }

    /// Hands an event over, waiting for room (backpressure on the calling connection
    /// only). False once the fleet loop has stopped.
    pub async fn event(&self, event: LinkEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// Hands an event over if there is room; false when it was dropped.
    pub fn event_or_drop(&self, event: LinkEvent) -> bool {
        self.events.try_send(event).is_ok()
    }

    /// A device answered a command on `device/{id}/response`.
    pub async fn command_response(&self, id: &DeviceId, payload: &Bytes, at_ms: u64) {
        self.services.command_response(id, payload, at_ms).await;
    }

    /// A device published on `device/{id}/telemetry`; `Err` names why its plugin
    /// refused the payload.
    pub async fn telemetry(
        &self,
        id: &DeviceId,
        payload: &Bytes,
        at_ms: u64,
    ) -> Result<(), String> {
        self.services.telemetry_point(id, payload, at_ms).await
    }

    /// Telemetry points `(payload, received_at_ms)` of device `id`, stored before this
    /// returns `Ok`; the caller acknowledges them only then.
    pub async fn telemetry_durable(
        &self,
        id: &DeviceId,
        payloads: &[(Vec<u8>, u64)],
    ) -> Result<(), super::telemetry::NotStored> {
        self.services.telemetry_durable(id, payloads).await
    }

    /// A device's QoS 1/2 telemetry `(payload, received_at_ms)`, stored before this
    /// returns `Ok` (SPEC §6: acknowledged means stored); the reasons of the payloads its
    /// plugin refused, which are not stored.
    pub async fn telemetry_stored(
        &self,
        id: &DeviceId,
        payloads: &[(Bytes, u64)],
    ) -> Result<Vec<String>, super::telemetry::NotStored> {
        self.services.telemetry_stored(id, payloads).await
    }

    /// The connection `generation` of a device acknowledged (PUBACK) a delivered command.
    pub async fn command_acked(&self, id: &DeviceId, generation: u64, command_id: &str) {
        self.services
            .command_acked(id, generation, command_id)
            .await;
    }
}
