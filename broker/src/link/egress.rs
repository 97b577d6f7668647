//! Router → client: each notification becomes a packet for the client, after the
//! delivery-time read check and per-device encryption.

use rumqttd::protocol::{Packet, SubAck, SubscribeReasonCode};
use rumqttd::{Forward, Notification};

use super::connection::Connection;
use super::framing;
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

    fn forward(&mut self, forward: Forward) {
        let mut publish = forward.publish;
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return;
        };
        if !self.s.principal.may_read(topic) {
            self.core.stats.dropped(DropCause::AclDelivery);
            tracing::debug!(client_id = %self.s.client_id, topic, "delivery denied by read ACL");
            self.drop_inflight(&publish);
            return;
        }
        let plain = publish.payload.clone();
        if let Some(crypto) = self.crypto.as_mut() {
            match crypto.seal(topic, &publish.payload) {
                Ok(sealed) => publish.payload = sealed.into(),
                Err(e) => {
                    self.core.stats.dropped(DropCause::EncryptFailed);
                    tracing::warn!(client_id = %self.s.client_id, topic, error = %e, "cannot encrypt for device");
                    self.drop_inflight(&publish);
                    return;
                }
            }
        }
        let mut props = forward.properties;
        publish.retain = self.take_retain_mark(topic, &mut props);
        let start = self.out.len();
        let publish_topic = publish.topic.clone();
        self.write_packet(Packet::Publish(publish, props));
        Stats::add(&self.core.stats.sent, 1);
        if let Some(meta) = framing::publish_meta(&self.out[start..]) {
            if meta.qos > 0 {
                self.acks.sent(meta.pkid);
                let topic = String::from_utf8_lossy(&publish_topic).into_owned();
                self.session_forwarded(meta.pkid, meta.qos, &topic, &plain);
            }
        }
    }

    fn drop_inflight(&mut self, publish: &rumqttd::protocol::Publish) {
        let meta = framing::meta_of(publish);
        if meta.qos > 0 {
            self.acks.dropped(meta.pkid, meta.qos, &mut self.to_router);
        }
    }
}
