//! The fleet services' event loop: presence, reported status, and handing device
//! traffic to the command engine and the telemetry store.

use std::sync::{Arc, Mutex};

use fleetmq_device_plugins::DevicePlugin;
use fleetmq_storage::device_events::NewEvent;
use fleetmq_storage::{DeviceId, DeviceRecord, DeviceState, Store};
use serde_json::json;

use super::alarms::Alarms;
use super::commands::CommandEngine;
use super::device_events::DeviceEvents;
use super::events::EventBus;
use super::presence::{Presence, Transition};
use super::telemetry::{Rejected, Telemetry};
use super::{LinkEvent, Upstream};

/// A change to one device's stored state, applied at the end of the batch.
type StateChange = Box<dyn FnOnce(&mut DeviceState) + Send>;

/// What handling a batch of link events leaves to write: state changes first, then the
/// devices' own events (`device/{id}/events`), then fleet events, each in order, so
/// whoever sees an event finds what it reports stored.
#[derive(Default)]
struct Pending {
    states: Vec<(DeviceId, StateChange)>,
    device_events: Vec<NewEvent>,
    events: Vec<super::SinkEvent>,
}

/// Everything device logic needs, shared by the event loop and the admin API.
pub struct Services {
    pub(crate) store: Store,
    /// Shared with the alarm evaluator (who is offline when a rule appears).
    pub(crate) presence: Arc<Presence>,
    pub(crate) events: EventBus,
    pub(crate) commands: CommandEngine,
    pub(crate) jobs: super::jobs::Jobs,
    pub(crate) telemetry: Telemetry,
    pub(crate) device_events: DeviceEvents,
    pub(crate) alarms: Alarms,
    /// Writes of the batch being handled (see [`Services::on_events`]).
    pending: Mutex<Pending>,
}

impl Services {
    #[allow(clippy::too_many_arguments, reason = "the services it composes")]
    pub(crate) fn new(
        store: Store,
        presence: Arc<Presence>,
        events: EventBus,
        commands: CommandEngine,
        jobs: super::jobs::Jobs,
        telemetry: Telemetry,
        device_events: DeviceEvents,
        alarms: Alarms,
    ) -> Services {
        Services {
            store,
            presence,
            events,
            commands,
            jobs,
            telemetry,
            device_events,
            alarms,
            pending: Mutex::default(),
        }
    }

    /// Presence of connected devices.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    async fn device(&self, id: &DeviceId) -> Option<DeviceRecord> {
        let lookup = id.clone();
        match self.store.call(move |s| s.get_device(&lookup)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(device_id = %id, error = %e, "could not read device");
                None
            }
        }
    }

    /// The device's plugin, from the command engine's device cache (one store read per
    /// device until it is deleted; a lookup racing a delete is not remembered).
    async fn plugin_of(&self, id: &DeviceId) -> Option<Arc<dyn DevicePlugin>> {
        let miss = match self.commands.cached_plugin(id) {
            Ok(plugin) => return Some(plugin),
            Err(miss) => miss,
        };
        let device = self.device(id).await?;
        let known = self.commands.remember_device(&device, miss).ok()?;
        Some(known.plugin().clone())
    }

    /// Queues a change to the stored state of a device for the end of the batch; a
    /// device deleted meanwhile is skipped.
    fn update_state(&self, id: &DeviceId, change: impl FnOnce(&mut DeviceState) + Send + 'static) {
        self.pending().states.push((id.clone(), Box::new(change)));
    }

    /// Queues an event for the end of the batch.
    fn emit(&self, kind: &'static str, id: &DeviceId, data: serde_json::Value) {
        let raw = serde_json::value::to_raw_value(&data).unwrap_or_default();
        self.pending().events.push((kind, Some(id.clone()), raw));
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles a batch of link events in order, then writes what they changed: every
    /// state change in one durable transaction, the devices' own events in another, then
    /// every fleet event in one outbox commit. A reconnect storm thus costs two commits
    /// per batch instead of two per device.
    pub(crate) async fn on_events(&self, events: impl IntoIterator<Item = LinkEvent>) {
        for event in events {
            self.on_event(event).await;
        }
        let Pending {
            states,
            device_events,
            events,
        } = std::mem::take(&mut *self.pending());
        if !states.is_empty() {
            let result = self
                .store
                .call(move |s| s.update_device_states(states))
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "could not store device state");
            }
        }
        if !device_events.is_empty() {
            self.device_events.store(device_events).await;
        }
        if !events.is_empty() {
            self.events.emit_many(events).await;
        }
    }

    /// A device was deleted: forget everything kept about it.
    pub(crate) async fn forget_device(&self, id: &DeviceId) {
        // Also drops its plugin from the cache per-message work uses (`plugin_of`).
        self.commands.forget_device(id).await;
        self.alarms.forget_device(id);
        if let Err(e) = self.telemetry.forget_device(id).await {
            tracing::error!(device_id = %id, error = %e, "could not delete telemetry");
        }
        if let Err(e) = self.device_events.forget_device(id).await {
            tracing::error!(device_id = %id, error = %e, "could not delete device events");
        }
        let lookup = id.clone();
        let forgotten = self
            .store
            .call(move |s| {
                s.delete_device_state(&lookup)?;
                s.delete_device_config(&lookup)
            })
            .await;
        if let Err(e) = forgotten {
            tracing::error!(device_id = %id, error = %e, "could not delete device state");
        }
    }

    /// Handles one device event from the link layer; its writes wait in `pending`.
    async fn on_event(&self, event: LinkEvent) {
        match event {
            LinkEvent::Connected {
                id,
                generation,
                peer,
                protocol,
                transport,
                at_ms,
                ..
            } => {
                let transition = self
                    .presence
                    .connected(&id, generation, peer, protocol, transport, at_ms);
                self.connected(
                    &id, transition, generation, peer, protocol, transport, at_ms,
                )
                .await;
            }
            LinkEvent::Disconnected {
                id,
                generation,
                at_ms,
                taken_over,
            } => self.disconnected(&id, generation, at_ms, taken_over).await,
            LinkEvent::Published {
                id,
                kind,
                payload,
                at_ms,
                ..
            } => self.published(&id, kind, &payload, at_ms).await,
            LinkEvent::DecryptFailed {
                id,
                topic,
                cause,
                reason,
                ..
            } => {
                let data = json!({"topic": topic, "cause": cause, "reason": reason});
                self.emit("device.decrypt_failed", &id, data);
            }
            LinkEvent::BadPayload {
                id, topic, reason, ..
            } => self.bad_payload(&id, &topic, &reason),
            LinkEvent::Subscribed { id, generation } => {
                if let Some(plugin) = self.plugin_of(&id).await {
                    self.commands
                        .device_ready_with(&id, generation, plugin)
                        .await;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one link event")]
    async fn connected(
        &self,
        id: &DeviceId,
        transition: Transition,
        generation: u64,
        peer: std::net::SocketAddr,
        protocol: &'static str,
        transport: crate::client::Transport,
        at_ms: u64,
    ) {
        let ip = peer.ip().to_string();
        let transport_name = serde_json::to_value(transport).unwrap_or_default();
        let stored_ip = ip.clone();
        let stored_transport = transport_name.as_str().unwrap_or_default().to_owned();
        self.update_state(id, move |s| {
            s.generation = generation;
            s.connected_at_ms = Some(at_ms);
            s.last_seen_ms = Some(at_ms);
            s.ip = Some(stored_ip);
            s.protocol = Some(protocol.to_owned());
            s.transport = Some(stored_transport);
        });
        if transition == Transition::Online {
            self.alarms.presence(id, true, at_ms);
            let data = json!({"ip": ip, "protocol": protocol, "transport": transport_name, "generation": generation});
            self.emit("device.online", id, data);
        }
    }

    async fn disconnected(&self, id: &DeviceId, generation: u64, at_ms: u64, taken_over: bool) {
        let last_seen = self
            .presence
            .get(id)
            .map_or(at_ms, |l| l.last_seen_ms.max(at_ms));
        self.commands.device_gone(id, generation).await;
        if self.presence.disconnected(id, generation, taken_over) != Transition::Offline {
            return;
        }
        self.update_state(id, move |s| {
            s.disconnected_at_ms = Some(at_ms);
            s.last_seen_ms = Some(last_seen);
        });
        self.alarms.presence(id, false, at_ms);
        let data = json!({"generation": generation});
        self.emit("device.offline", id, data);
    }

    async fn published(&self, id: &DeviceId, kind: Upstream, payload: &[u8], at_ms: u64) {
        self.presence.seen(id, at_ms);
        match kind {
            Upstream::Status => self.status(id, payload, at_ms).await,
            // Telemetry reaching the loop (a caller other than a connection task): the
            // same path the connections take, its refusal reported here.
            Upstream::Telemetry => {
                if let Err(reason) = self.telemetry_point(id, payload, at_ms).await {
                    self.bad_payload(id, &format!("device/{id}/telemetry"), &reason);
                }
            }
            Upstream::Response => {
                if let Some(plugin) = self.plugin_of(id).await {
                    self.commands.response_with(id, plugin, payload).await;
                }
            }
            Upstream::Events => self.device_event(id, payload, at_ms).await,
        }
    }

    /// `device/{id}/response`, called by the device's connection task itself (not the
    /// fleet loop): decoded there and queued for the command engine, so an answer costs
    /// no hand-over to the loop's thread. The connection's PUBACKs of commands take the
    /// same way ([`Services::command_acked`]), so the engine sees them in the order the
    /// device sent them.
    pub(crate) async fn command_response(&self, id: &DeviceId, payload: &[u8], at_ms: u64) {
        self.presence.seen(id, at_ms);
        if let Some(plugin) = self.plugin_of(id).await {
            self.commands.response_with(id, plugin, payload).await;
        }
    }

    /// The device's connection `generation` got the PUBACK of a command it wrote.
    pub(crate) async fn command_acked(&self, id: &DeviceId, generation: u64, command_id: &str) {
        self.commands.acked(id, generation, command_id).await;
    }

    /// `device/{id}/telemetry`, called by the device's connection task itself (not the
    /// fleet loop): decoded there and put on the store's ingest queue, never waiting for
    /// disk. Under a publish flood the decoding thus spreads over the runtime's workers
    /// instead of starving behind one loop. `Err` carries a refused payload's reason,
    /// which the caller reports as [`LinkEvent::BadPayload`].
    pub(crate) async fn telemetry_point(
        &self,
        id: &DeviceId,
        payload: &[u8],
        at_ms: u64,
    ) -> Result<(), String> {
        self.presence.seen(id, at_ms);
        let Some(plugin) = self.plugin_of(id).await else {
            return Ok(());
        };
        match self.telemetry.offer(id, plugin.as_ref(), payload, at_ms) {
            Ok(()) | Err(Rejected::QueueFull) | Err(Rejected::ShuttingDown) => Ok(()),
            Err(Rejected::NotJson { reason }) => Err(reason.to_string()),
        }
    }

    /// Points a device's connection waits to see stored before it answers (a tracker's
    /// record count). A device deleted meanwhile has nothing to store.
    pub(crate) async fn telemetry_durable(
        &self,
        id: &DeviceId,
        payloads: &[(Vec<u8>, u64)],
    ) -> Result<(), super::telemetry::NotStored> {
        if let Some((_, at_ms)) = payloads.last() {
            self.presence.seen(id, *at_ms);
        }
        let Some(plugin) = self.plugin_of(id).await else {
            return Ok(());
        };
        self.telemetry
            .store_durably(id, plugin.as_ref(), payloads)
            .await
    }

    /// A device's QoS 1/2 telemetry, acknowledged only once this returns `Ok`: the
    /// payloads its plugin refuses come back as reasons (they are routed, not stored).
    pub(crate) async fn telemetry_stored(
        &self,
        id: &DeviceId,
        payloads: &[(bytes::Bytes, u64)],
    ) -> Result<Vec<String>, super::telemetry::NotStored> {
        if let Some((_, at_ms)) = payloads.last() {
            self.presence.seen(id, *at_ms);
        }
        let Some(plugin) = self.plugin_of(id).await else {
            return Ok(Vec::new());
        };
        let refused = self
            .telemetry
            .store_each_durably(id, plugin.as_ref(), payloads)
            .await?;
        Ok(refused.into_iter().map(|r| r.to_string()).collect())
    }

    fn bad_payload(&self, id: &DeviceId, topic: &str, reason: &str) {
        tracing::debug!(device_id = %id, topic, error = %reason, "payload rejected");
        let data = json!({"topic": topic, "reason": reason});
        self.emit("device.bad_payload", id, data);
    }

    /// `device/{id}/events`: every event the device's plugin understands is stored (at
    /// the end of the batch) and emitted as `device.event` with the payload as data
    /// (SPEC §7). Alarms also become alarms with `source: device` (SPEC §11, raised and
    /// cleared by the alarm evaluator, which emits `alarm.raised` / `alarm.cleared`): an
    /// event whose `type` is `alarm.raised` or `alarm.cleared`, or `alarm` with
    /// `"state": "raised" | "cleared"` (or `"active": true | false`). A payload the plugin refuses (not JSON,
    /// no `type`) is neither stored nor emitted, only counted and logged.
    async fn device_event(&self, id: &DeviceId, payload: &[u8], at_ms: u64) {
        let Some(plugin) = self.plugin_of(id).await else {
            return;
        };
        let event = match plugin.decode_event(payload) {
            Ok(event) => event,
            Err(e) => {
                self.device_events.refused();
                tracing::debug!(device_id = %id, error = %e, "device event not understood");
                return;
            }
        };
        let raw = match serde_json::value::to_raw_value(&event.raw) {
            Ok(raw) => raw,
            Err(e) => {
                self.device_events.refused();
                tracing::debug!(device_id = %id, error = %e, "device event not encodable");
                return;
            }
        };
        self.pending().device_events.push(NewEvent {
            device: id.clone(),
            at_ms,
            kind: event.kind.clone(),
            data: raw.get().to_owned(),
        });
        if let Some(kind) = alarm_kind(&event.kind, &event.raw) {
            let raised = kind == "alarm.raised";
            self.alarms.device_alarm(id, raised, &event.raw, at_ms);
        }
        self.pending()
            .events
            .push(("device.event", Some(id.clone()), raw));
    }

    /// `device/{id}/status`: kept as `reported_status`, with its `configVersion`.
    async fn status(&self, id: &DeviceId, payload: &[u8], at_ms: u64) {
        let Some(plugin) = self.plugin_of(id).await else {
            return;
        };
        match plugin.decode_status(payload) {
            Ok(status) => {
                let raw = status.raw.to_string();
                let config_version = status.config_version;
                self.update_state(id, move |s| {
                    s.reported_status = Some(raw);
                    s.reported_status_at_ms = Some(at_ms);
                    if config_version.is_some() {
                        s.reported_config_version = config_version;
                    }
                });
            }
            Err(e) => {
                tracing::debug!(device_id = %id, error = %e, "status payload not understood")
            }
        }
    }
}

/// The SPEC §7 alarm event a device event stands for, if any.
fn alarm_kind(kind: &str, raw: &serde_json::Value) -> Option<&'static str> {
    match kind {
        "alarm.raised" => Some("alarm.raised"),
        "alarm.cleared" => Some("alarm.cleared"),
        "alarm" => match (
            raw.get("state").and_then(|s| s.as_str()),
            raw.get("active").and_then(|a| a.as_bool()),
        ) {
            (Some("raised"), _) | (None, Some(true)) => Some("alarm.raised"),
            (Some("cleared"), _) | (None, Some(false)) => Some("alarm.cleared"),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::alarm_kind;
    use serde_json::json;

    #[test]
    fn alarms_are_recognised_in_every_spelling() {
        assert_eq!(alarm_kind("alarm.raised", &json!({})), Some("alarm.raised"));
        assert_eq!(
            alarm_kind("alarm.cleared", &json!({})),
            Some("alarm.cleared")
        );
        assert_eq!(
            alarm_kind("alarm", &json!({"state": "raised"})),
            Some("alarm.raised")
        );
        assert_eq!(
            alarm_kind("alarm", &json!({"state": "cleared"})),
            Some("alarm.cleared")
        );
        assert_eq!(
            alarm_kind("alarm", &json!({"active": true})),
            Some("alarm.raised")
        );
        assert_eq!(
            alarm_kind("alarm", &json!({"active": false})),
            Some("alarm.cleared")
        );
        assert_eq!(alarm_kind("alarm", &json!({"state": "weird"})), None);
        assert_eq!(alarm_kind("door_open", &json!({"state": "raised"})), None);
    }
}
