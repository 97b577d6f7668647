//! A device's connection as the fleet services see it: what it tells them (connected,
//! subscribed to its command topic, published upstream, its will, a payload it could not
//! decrypt), through `FleetInbox`, and the commands they deliver to it, written as QoS 1
//! PUBLISHes on packet ids of the link's own range and acknowledged back.

use std::collections::HashMap;

use bytes::Bytes;
use fleetmq_storage::now_ms;
use rumqttd::protocol::Packet;

use super::Connection;
use crate::fleet::{LinkEvent, Upstream};
use crate::link::codec::framing;
use crate::link::codec::topic;
use crate::link::security::auth::Identity;
use crate::stats::{DropCause, Stats};

impl Connection {
    /// Writes a command as a QoS 1 PUBLISH with a packet id of the link's own range.
    pub(crate) fn deliver_command(&mut self, command_id: String, payload: &[u8]) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let topic = format!("device/{}/command", device.id);
        // Taps see the command as the broker sends it, before the device's envelope.
        self.core.taps.offer(crate::link::tap::Offer {
            topic: &topic,
            payload,
            qos: 1,
            retain: false,
            client_id: None,
        });
        let payload = match self.crypto.as_mut() {
            Some(crypto) => match crypto.seal(&topic, payload) {
                Ok(sealed) => sealed,
                Err(e) => {
                    self.dropped(DropCause::EncryptFailed);
                    tracing::warn!(client_id = %self.s.client_id, error = %e, "cannot encrypt a command");
                    return;
                }
            },
            None => payload.to_vec(),
        };
        let pkid = self.commands.assign(command_id);
        let meta = framing::PublishMeta {
            qos: 1,
            dup: false,
            retain: false,
            pkid,
        };
        let publish = framing::build_publish(meta, topic.as_bytes(), &payload);
        self.write_packet(Packet::Publish(publish, None));
        Stats::add(&self.core.stats.sent, 1);
    }

    /// A PUBACK for a command the link wrote itself; false if the packet id is not one.
    pub(crate) async fn command_acked(&mut self, pkid: u16) -> bool {
        let Some(command_id) = self.commands.acked(pkid) else {
            return false;
        };
        if let Identity::Device(device) = &self.s.identity {
            // Straight to the engine, like the device's answers (see `device_published`).
            let generation = self.s.conn_id;
            self.core
                .fleet
                .command_acked(&device.id, generation, &command_id)
                .await;
        }
        true
    }
}

impl Connection {
    /// Tells the fleet services a device is connected (before its CONNACK, so presence
    /// precedes anything it publishes); a resumed session can take commands at once.
    pub(crate) async fn announce(&self) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let at_ms = now_ms();
        let event = LinkEvent::Connected {
            id: device.id.clone(),
            generation: self.s.conn_id,
            peer: self.s.peer,
            protocol: self.s.version.label(),
            transport: self.s.transport,
            session_present: self.s.session_present,
            at_ms,
        };
        self.core.fleet_event(event).await;
        if self.s.session_present {
            let event = LinkEvent::Subscribed {
                id: device.id.clone(),
                generation: self.s.conn_id,
            };
            self.core.fleet_event(event).await;
        }
    }
}

impl Connection {
    /// A device's will on one of its upstream topics (its `status`, typically) is what the
    /// device said last: the fleet services see it like any publish of the device.
    pub(crate) async fn will_published(&self, will: &rumqttd::protocol::LastWill) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let topic = String::from_utf8_lossy(&will.topic);
        let Some(kind) = Upstream::of(&device.id, &topic) else {
            return;
        };
        let event = LinkEvent::Published {
            id: device.id.clone(),
            generation: self.s.conn_id,
            kind,
            payload: will.message.clone(),
            at_ms: now_ms(),
        };
        self.core.fleet_event(event).await;
    }
}

impl Connection {
    /// Tells the fleet services what a device published on one of its upstream topics.
    /// Telemetry is decoded and queued for the store right here and never waits: when
    /// the store's queue is full the point is dropped and counted.
    /// A device's QoS 1/2 telemetry joins the read batch's telemetry write, before its
    /// PUBREC can be written (`stored_acks.rs`); true if it did.
    pub(crate) fn telemetry_to_store(&mut self, topic: &str, payload: &Bytes, qos: u8) -> bool {
        let Identity::Device(device) = &self.s.identity else {
            return false;
        };
        if qos == 0 || Upstream::of(&device.id, topic) != Some(Upstream::Telemetry) {
            return false;
        }
        self.stored.batch.push((payload.clone(), now_ms()));
        true
    }

    pub(crate) async fn device_published(&mut self, topic: &str, payload: &Bytes) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let Some(kind) = Upstream::of(&device.id, topic) else {
            return;
        };
        let at_ms = now_ms();
        if kind == Upstream::Response {
            self.core
                .fleet
                .command_response(&device.id, payload, at_ms)
                .await;
            return;
        }
        if kind == Upstream::Telemetry {
            if let Err(reason) = self.core.fleet.telemetry(&device.id, payload, at_ms).await {
                self.core.fleet_event_or_drop(LinkEvent::BadPayload {
                    id: device.id.clone(),
                    topic: topic.to_owned(),
                    reason,
                    at_ms,
                });
            }
            return;
        }
        let event = LinkEvent::Published {
            id: device.id.clone(),
            generation: self.s.conn_id,
            kind,
            payload: payload.clone(),
            at_ms,
        };
        self.core.fleet_event(event).await;
    }

    /// Hands the read batch's QoS 1/2 telemetry to the store as one write; acks for the
    /// client wait for it (`stored_acks.rs`).
    pub(crate) fn store_telemetry(&mut self) {
        if self.stored.batch.is_empty() {
            return;
        }
        let points = std::mem::take(&mut self.stored.batch);
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let (fleet, id) = (self.core.fleet.clone(), device.id.clone());
        self.stored.start(Box::pin(async move {
            fleet.telemetry_stored(&id, &points).await
        }));
    }

    /// A telemetry write ended: its acks go out; a payload the device's plugin refused
    /// was routed and is reported, not stored; a failed write ends the connection
    /// without the acks, so the device sends its telemetry again.
    pub(crate) async fn telemetry_written(
        &mut self,
        written: super::stored_acks::Written,
    ) -> Result<(), super::Ending> {
        let refused = match written {
            Ok(refused) => refused,
            Err(e) => {
                tracing::warn!(client_id = %self.s.client_id, error = %e, "telemetry not stored; closing without acknowledging it");
                self.out.clear();
                return Err(super::Ending::StoreFailed);
            }
        };
        if let Identity::Device(device) = &self.s.identity {
            for reason in refused {
                self.core.fleet_event_or_drop(LinkEvent::BadPayload {
                    id: device.id.clone(),
                    topic: format!("device/{}/telemetry", device.id),
                    reason,
                    at_ms: now_ms(),
                });
            }
        }
        for ack in self.stored.released() {
            self.encode_packet(ack);
        }
        self.flush().await
    }

    pub(crate) fn device_decrypt_failed(&self, topic: &str, cause: &'static str, reason: String) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let event = LinkEvent::DecryptFailed {
            id: device.id.clone(),
            topic: topic.to_owned(),
            cause,
            reason,
            at_ms: now_ms(),
        };
        self.core.fleet_event_or_drop(event);
    }

    /// After a SUBSCRIBE: a device whose filters now cover its command topic is ready.
    pub(crate) async fn device_subscribed(&self, filters: &[String]) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let command_topic = format!("device/{}/command", device.id);
        let covers = filters.iter().any(|f| {
            let inner = topic::split_shared(f).map_or(f.as_str(), |(_, inner)| inner);
            topic::matches(inner, &command_topic)
        });
        if covers {
            let event = LinkEvent::Subscribed {
                id: device.id.clone(),
                generation: self.s.conn_id,
            };
            self.core.fleet_event(event).await;
        }
    }
}

/// Packet ids of the commands the link writes itself (the outbound queue uses 1..=1000).
const FIRST_COMMAND_PKID: u16 = 1001;
const LAST_COMMAND_PKID: u16 = 65_000;
/// Commands awaiting their PUBACK; past it the oldest are forgotten (their commands
/// time out and are re-sent by the engine).
const MAX_COMMANDS_INFLIGHT: usize = 1024;

/// Commands written to the connection and waiting for their PUBACK.
#[derive(Debug)]
pub(crate) struct CommandWindow {
    inflight: crate::link::lazy::Lazy<HashMap<u16, String>>,
    next: u16,
}

impl Default for CommandWindow {
    fn default() -> Self {
        CommandWindow {
            inflight: Default::default(),
            next: FIRST_COMMAND_PKID,
        }
    }
}

impl CommandWindow {
    /// Frees the in-flight map while it is empty (the packet ids go on from where they
    /// are: a re-sent command is a new PUBLISH with a new id).
    pub(crate) fn settle(&mut self) {
        self.inflight.settle();
    }
}

impl CommandWindow {
    /// The packet id for `command_id`'s PUBLISH.
    fn assign(&mut self, command_id: String) -> u16 {
        let pkid = self.next;
        self.next = if pkid >= LAST_COMMAND_PKID {
            FIRST_COMMAND_PKID
        } else {
            pkid + 1
        };
        if self.inflight.len() >= MAX_COMMANDS_INFLIGHT {
            self.inflight.clear();
        }
        self.inflight.insert(pkid, command_id);
        pkid
    }

    /// The command a PUBACK acknowledges, if `pkid` is one of ours.
    fn acked(&mut self, pkid: u16) -> Option<String> {
        self.inflight.remove(&pkid)
    }
}
