//! Router → client: each notification becomes a packet for the client (acks, SUBACKs,
//! DISCONNECT) or a message on the outbound queue (`outbound.rs`), after the
//! delivery-time read check; routed messages are acknowledged to the router at once.

use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, Publish,
    PublishProperties, SubAck, SubscribeReasonCode,
};
use rumqttd::{Forward, Notification};

use fleetmq_storage::now_ms;

use crate::link::codec::framing;
use crate::link::codec::origin::Origin;
use crate::link::connection::outbound::OutMsg;
use crate::link::connection::Connection;
use crate::stats::DropCause;

/// What a notification asks of the egress loop besides writing.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Flow {
    /// The router paused this link until we wake it.
    pub(crate) unscheduled: bool,
    /// The router disconnected this link.
    pub(crate) disconnected: bool,
}

impl Flow {
    pub(crate) fn merge(self, other: Flow) -> Flow {
        Flow {
            unscheduled: self.unscheduled || other.unscheduled,
            disconnected: self.disconnected || other.disconnected,
        }
    }
}

/// Where a message [`Connection::deliver`] takes comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// The router, with its log cursor (filter, offset) when it gave one.
    Router(Option<(u64, u64)>),
    /// The persistent session's ledger (`session::owed`).
    Ledger,
    /// A device's dispatcher (`link::device_links`), one copy per
    /// `Subscriptions::copies_for`.
    Dispatch,
}

impl Connection {
    /// Handles one router notification.
    pub(crate) fn notification(&mut self, n: Notification) -> Flow {
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
                        None => crate::link::server_disconnect(d.reason_code),
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

    pub(crate) fn router_ack(&mut self, packet: Packet) {
        match packet {
            Packet::SubAck(suback, props) => {
                if self.session_subacked(&suback) {
                    return;
                }
                let merged = self.merge_suback(suback);
                self.write_packet(Packet::SubAck(merged, props));
                // Retained messages for the new subscriptions follow their SUBACK.
                self.fill_out();
            }
            // UNSUBACKs are answered by the link layer itself (one per UNSUBSCRIBE).
            Packet::UnsubAck(..) | Packet::ConnAck(..) => {}
            // Our PUBREC of a routed QoS 2 message: the exchange with the router ends
            // here; the one with the client is the outbound queue's.
            Packet::PubRel(pubrel, _) => self.to_router.push(Packet::PubComp(
                PubComp {
                    pkid: pubrel.pkid,
                    reason: PubCompReason::Success,
                },
                None,
            )),
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

    /// A routed message. The router is answered at once (the message is the link's from
    /// now on, so the router's log never waits for this client); then read check, No
    /// Local, expiry, QoS downgrade and Retain As Published, and the message joins the
    /// outbound queue (`outbound.rs`) with its properties.
    pub(crate) fn forward(&mut self, forward: Forward) {
        let Forward {
            cursor,
            publish,
            properties,
            ..
        } = forward;
        let routed = framing::meta_of(&publish);
        self.ack_router(routed);
        self.deliver(publish, properties, routed.qos, Source::Router(cursor));
    }

    /// A message for the client at `routed_qos` (the subscription's), from the router
    /// or from the session's ledger.
    pub(crate) fn deliver(
        &mut self,
        mut publish: Publish,
        mut properties: Option<PublishProperties>,
        routed_qos: u8,
        source: Source,
    ) {
        let origin = Origin::take(&mut publish.payload);
        let Ok(topic) = std::str::from_utf8(&publish.topic).map(str::to_owned) else {
            return;
        };
        // rumqttd delivers at the subscription QoS; MQTT says the lower of the two.
        let mut qos = origin.map_or(routed_qos, |o| o.qos.min(routed_qos));
        match source {
            Source::Router(cursor) => {
                match self.router_copy(origin, &topic, qos, &mut properties) {
                    Some(one_copy_qos) => qos = one_copy_qos,
                    None => return,
                }
                if let Some((_, offset)) = cursor {
                    self.count_skipped(&topic, offset);
                }
            }
            Source::Dispatch => {
                let arrival = origin.and_then(|o| o.arrival);
                if arrival.is_some_and(|a| self.session_delivered(a, &topic, qos)) {
                    return;
                }
            }
            Source::Ledger => {}
        }
        // A persistent session's QoS 1/2 message has its slot in the stored queue: its
        // arrival number (`session::store`). One not delivered leaves the queue.
        let slot = origin
            .and_then(|o| o.arrival)
            .filter(|_| qos > 0 && self.sess.ledger.is_some());
        let stored = slot.is_some() && self.core.session_store.durable_live();
        let stored_slot = slot.filter(|_| stored);
        let Some(expires_at_ms) = self.may_deliver(origin, &topic, &mut properties) else {
            // Not delivered: it leaves the stored queue.
            self.queue.acked_seqs.extend(stored_slot);
            return;
        };
        // Retain As Published: the flag travels through the router as a mark.
        let retain = self.take_retain_mark(&topic, &mut properties);
        if properties.as_ref() == Some(&PublishProperties::default()) {
            properties = None;
        }
        let msg = OutMsg {
            topic,
            payload: publish.payload,
            qos,
            retain,
            dup: false,
            seq: slot,
            stored,
            props: properties,
            expires_at_ms,
            read_checked: true,
            pkid: None,
        };
        self.push_live(msg);
    }

    /// The delivery-time checks: read ACL, No Local, Message Expiry. `None` when the
    /// message is not for the client, else when it expires (the interval is taken off
    /// its properties; the outbound queue writes what is left of it).
    fn may_deliver(
        &mut self,
        origin: Option<Origin>,
        topic: &str,
        properties: &mut Option<PublishProperties>,
    ) -> Option<Option<u64>> {
        if !self.s.principal.may_read(topic) {
            self.dropped(DropCause::AclDelivery);
            tracing::debug!(client_id = %self.s.client_id, topic, "delivery denied by read ACL");
            return None;
        }
        let Some(origin) = origin else {
            return Some(None);
        };
        if origin.conn_id == self.s.conn_id && self.subs.no_local_blocks(topic) {
            // [MQTT-3.8.3-3]: not an error, just not for us.
            return None;
        }
        let Some(interval) = properties
            .as_mut()
            .and_then(|p| p.message_expiry_interval.take())
        else {
            return Some(None);
        };
        let at = origin.at_ms.saturating_add(u64::from(interval) * 1000);
        if at <= now_ms() {
            // [MQTT-3.3.2-5]
            self.dropped(DropCause::Expired);
            return None;
        }
        Some(Some(at))
    }

    /// Which router copies go to the client, and at which QoS: one copy of a message that
    /// several subscriptions match, at the highest of their QoS and with all their
    /// identifiers [MQTT-3.3.4-2, -4]; none of one its publisher queued for the parked
    /// session or the ledger gave already (it comes from there, `session::owed`).
    fn router_copy(
        &mut self,
        origin: Option<Origin>,
        topic: &str,
        qos: u8,
        properties: &mut Option<PublishProperties>,
    ) -> Option<u8> {
        let Some(origin) = origin else {
            return Some(qos);
        };
        if self.later_copies.take(origin.message) {
            return None;
        }
        let mut qos = qos;
        let own = origin.conn_id == self.s.conn_id;
        if let Some(overlap) = self.subs.overlap(topic, own) {
            self.later_copies.expect(origin.message, overlap.copies - 1);
            qos = origin.qos.min(overlap.qos);
            properties
                .get_or_insert_with(PublishProperties::default)
                .subscription_identifiers = overlap.ids;
        }
        match origin.arrival {
            Some(arrival) if self.session_delivered(arrival, topic, qos) => None,
            _ => Some(qos),
        }
    }

    /// The router's log outran this reader: lost, but never silently (for a persistent
    /// session, the skipped messages are in its stored queue).
    fn count_skipped(&mut self, topic: &str, offset: u64) {
        let skipped = self.subs.skipped(topic, offset);
        if skipped > 0 {
            self.core
                .stats
                .dropped_many(DropCause::SlowConsumer, skipped);
            tracing::warn!(client_id = %self.s.client_id, topic, skipped, "router log skipped messages for a slow subscriber");
        }
    }

    /// Takes a routed QoS 1/2 message off the router's hands: PUBACK, or PUBREC (whose
    /// PUBREL is answered in `router_ack`). Router deliveries always arrive in order,
    /// which is the only order the router accepts acks in.
    fn ack_router(&mut self, routed: framing::PublishMeta) {
        let pkid = routed.pkid;
        match routed.qos {
            1 => self.to_router.push(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            2 => self.to_router.push(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )),
            _ => {}
        }
    }
}
