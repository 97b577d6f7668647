//! Router → client: each notification becomes a packet for the client, after the
//! delivery-time read check and per-device encryption.

use rumqttd::protocol::{Packet, SubAck, SubscribeReasonCode};
use rumqttd::{Forward, Notification};

use fleetmq_storage::now_ms;

use super::connection::Connection;
use super::framing;
use super::origin::{remaining_expiry, Origin};
use crate::stats::{DropCause, Stats};

/// What a notification asks of the egress loop besides writing.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Flow {
    /// The router paused this link until we wake it.
    pub(super) unscheduled: bool,
    /// The router disconnected this link.
    pub(super) disconnected: bool,
}

impl Flow {
    pub(super) fn merge(self, other: Flow) -> Flow {
        Flow {
            unscheduled: self.unscheduled || other.unscheduled,
            disconnected: self.disconnected || other.disconnected,
        }
    }
}

impl Connection {
    /// Handles one router notification.
    pub(super) fn notification(&mut self, n: Notification) -> Flow {
        match n {
            Notification::Forward(forward) => {
                self.forward(forward);
                Flow::default()
            }
            Notification::Unschedule => Flow {
                unscheduled: true,
                disconnected: false,
            },
            Notification::Disconnect(d, props) => {
                tracing::warn!(client_id = %self.s.client_id, reason = ?d.reason_code, "router disconnected the link");
                if self.s.version == framing::Version::V5 {
                    let packet = match props {
                        Some(props) => Packet::Disconnect(d, Some(props)),
                        None => super::server_disconnect(d.reason_code),
                    };
                    self.write_packet(packet);
                }
                Flow {
                    unscheduled: false,
                    disconnected: true,
                }
            }
            ack @ Notification::DeviceAck(_) => {
                if let Some(packet) = Option::<Packet>::from(ack) {
                    self.router_ack(packet);
                }
                Flow::default()
            }
            // Shadow and replica notifications do not concern a client link.
            _ => Flow::default(),
        }
    }

    fn router_ack(&mut self, packet: Packet) {
        match packet {
            Packet::SubAck(suback, props) => {
                if self.session_subacked(&suback) {
                    return;
                }
                let merged = self.merge_suback(suback);
                self.write_packet(Packet::SubAck(merged, props));
                // Retained messages for the new subscriptions follow their SUBACK.
                self.fill_local();
            }
            // UNSUBACKs are answered by the link layer itself (one per UNSUBSCRIBE).
            Packet::UnsubAck(..) | Packet::ConnAck(..) => {}
            Packet::PubRel(pubrel, props) => {
                if self.acks.router_pubrel(pubrel.pkid, &mut self.to_router) {
                    self.write_packet(Packet::PubRel(pubrel, props));
                }
            }
            other => self.write_packet(other),
        }
    }

    /// Fills the slots of locally refused filters in the router's SUBACK.
    fn merge_suback(&mut self, suback: SubAck) -> SubAck {
        let Some(local) = self.pending_subacks.remove(&suback.pkid) else {
            return suback;
        };
        let mut routed = suback.return_codes.into_iter();
        let return_codes = local
            .into_iter()
            .map(|slot| {
                slot.or_else(|| routed.next())
                    .unwrap_or(SubscribeReasonCode::Unspecified)
            })
            .collect();
        SubAck {
            pkid: suback.pkid,
            return_codes,
        }
    }

    /// A routed message: read check, No Local, expiry, QoS downgrade, sealing, then the
    /// client's own limits (Maximum Packet Size, Receive Maximum).
    fn forward(&mut self, forward: Forward) {
        let Forward {
            mut publish,
            mut properties,
            ..
        } = forward;
        let routed = framing::meta_of(&publish);
        let origin = Origin::take(&mut publish.payload);
        let Ok(topic) = std::str::from_utf8(&publish.topic).map(str::to_owned) else {
            self.drop_inflight(routed);
            return;
        };
        if !self.s.principal.may_read(&topic) {
            self.core.stats.dropped(DropCause::AclDelivery);
            tracing::debug!(client_id = %self.s.client_id, topic, "delivery denied by read ACL");
            self.drop_inflight(routed);
            return;
        }
        if let Some(origin) = origin {
            if origin.conn_id == self.s.conn_id && self.subs.no_local_blocks(&topic) {
                // [MQTT-3.8.3-3]: not an error, just not for us.
                self.drop_inflight(routed);
                return;
            }
            if let Some(p) = properties.as_mut() {
                if let Some(interval) = p.message_expiry_interval {
                    let elapsed = now_ms().saturating_sub(origin.at_ms);
                    match remaining_expiry(interval, elapsed) {
                        Some(left) => p.message_expiry_interval = Some(left),
                        None => {
                            // [MQTT-3.3.2-5]
                            self.core.stats.dropped(DropCause::Expired);
                            self.drop_inflight(routed);
                            return;
                        }
                    }
                }
            }
        }
        // rumqttd delivers at the subscription QoS; MQTT says the lower of the two.
        let qos = origin.map_or(routed.qos, |o| o.qos.min(routed.qos));
        // Retain As Published: the flag travels through the router as a mark.
        let retain = self.take_retain_mark(&topic, &mut properties);
        let mut payload = std::mem::take(&mut publish.payload);
        // The plaintext, for a persistent session's re-send after a reconnect.
        let plain = payload.clone();
        if let Some(crypto) = self.crypto.as_mut() {
            match crypto.seal(&topic, &payload) {
                Ok(sealed) => payload = sealed.into(),
                Err(e) => {
                    self.core.stats.dropped(DropCause::EncryptFailed);
                    tracing::warn!(client_id = %self.s.client_id, topic, error = %e, "cannot encrypt for device");
                    self.drop_inflight(routed);
                    return;
                }
            }
        }
        let publish = if qos == routed.qos {
            publish.payload = payload;
            publish.retain = retain;
            publish
        } else {
            // QoS and packet id are crate-private in rumqttd: rebuild the PUBLISH.
            let meta = framing::PublishMeta {
                qos,
                dup: false,
                retain,
                pkid: if qos > 0 { routed.pkid } else { 0 },
            };
            framing::build_publish(meta, topic.as_bytes(), &payload)
        };
        let packet = Packet::Publish(publish, properties);
        if let Some(max) = self.flow.max_packet() {
            let mut probe = bytes::BytesMut::new();
            let fits = framing::encode(self.s.version, packet.clone(), &mut probe).is_ok()
                && probe.len() <= max;
            if !fits {
                // Discarded as if delivered [MQTT-3.1.2-25].
                self.core.stats.dropped(DropCause::Limit);
                self.drop_inflight(routed);
                return;
            }
        }
        match (routed.qos, qos) {
            (0, _) => {}
            (r, 0) => self.acks.dropped(routed.pkid, r, &mut self.to_router),
            (2, 1) => self.acks.sent_downgraded(routed.pkid),
            _ => self.acks.sent(routed.pkid),
        }
        self.session_forwarded(routed.pkid, &packet, &plain);
        if qos > 0 && !self.flow.may_send() {
            self.flow.hold(packet);
            return;
        }
        self.write_forward(packet);
    }

    /// Writes a routed PUBLISH and counts it towards the client's Receive Maximum.
    pub(super) fn write_forward(&mut self, packet: Packet) {
        let start = self.out.len();
        self.write_packet(packet);
        if let Some(meta) = framing::publish_meta(&self.out[start..]) {
            if meta.qos > 0 {
                self.flow.sent(meta.pkid);
            }
            Stats::add(&self.core.stats.sent, 1);
        }
    }

    /// A routed QoS 1/2 message that will not reach the client: acked on its behalf.
    fn drop_inflight(&mut self, routed: framing::PublishMeta) {
        if routed.qos > 0 {
            self.acks
                .dropped(routed.pkid, routed.qos, &mut self.to_router);
        }
    }
}
