//! Client → router: frames are decoded, checked (protocol, ACL, size), decrypted, and
//! batched for the router; acks and refusals the router cannot give are answered here.

use std::collections::HashSet;

use bytes::Bytes;
use rumqttd::protocol::{
    DisconnectReasonCode as Reason, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, Publish, PublishProperties,
};

use crate::link::codec::framing::{self, FrameError, PublishMeta, Version};
use crate::link::codec::origin::{Origin, Routing};
use crate::link::codec::topic;
use crate::link::connection::alias::AliasError;
use crate::link::connection::outbound::OutAck;
use crate::link::connection::{Connection, Ending};
use crate::link::security::crypto::CryptoError;
use crate::link::session::store::Incoming;
use crate::stats::{DropCause, Stats};

impl Connection {
    /// Processes every complete frame in the read buffer, up to a QoS 1/2 PUBLISH that
    /// must wait for a congested subscriber (`congestion.rs`); while one waits, only the
    /// client's acks and pings are taken from the buffer.
    pub(crate) async fn ingress(&mut self) -> Result<(), Ending> {
        let max = self.core.max_packet();
        let mut result = self.retry_stalled().await;
        while result.is_ok() && self.stalled.is_none() {
            let frame = match framing::peek(&self.read_buf, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    result = Err(self.frame_error(e));
                    break;
                }
            };
            let packet_type = frame.packet_type();
            let bytes = self.read_buf.split_to(frame.len);
            let meta = (packet_type == 3)
                .then(|| framing::publish_meta(&bytes))
                .flatten();
            result = match framing::decode(self.s.version, frame, bytes, max) {
                Ok(packet) => {
                    self.packet_in(packet_type);
                    if self.must_wait(&packet, meta) {
                        Stats::add(&self.core.stats.publisher_pauses, 1);
                        self.stalled = Some(Box::new((packet, meta)));
                        Ok(())
                    } else {
                        self.packet(packet, meta).await
                    }
                }
                Err(e) => Err(self.frame_error(e)),
            };
        }
        if result.is_ok() && self.stalled.is_some() {
            result = self.acks_while_stalled().await;
        }
        // The sessions' copies of this batch's QoS 1/2 messages, in one durable write
        // before the router (which acknowledges them) and the client (PUBRECs) see it.
        let copies = self.copies.take_value();
        if !copies.is_empty() {
            self.core
                .session_store
                .write_copies(copies, &self.core.stats)
                .await;
        }
        self.session_sync().await;
        if result.is_ok() {
            self.send_to_router().await?;
            self.update_congestion();
        }
        // Routed first, acknowledged once stored: from here on the acks for the client
        // wait for this batch's telemetry write (`stored_acks.rs`).
        self.store_telemetry();
        self.flush().await?;
        // On an ending, what is queued for the router leaves together with the
        // link's Disconnect, in one router event (see `Connection::leave_router`).
        result
    }

    pub(crate) fn frame_error(&mut self, e: FrameError) -> Ending {
        let (cause, reason) = match e {
            FrameError::TooLarge(_) => (DropCause::TooLarge, Reason::PacketTooLarge),
            FrameError::Forbidden(_) | FrameError::UnsupportedProtocol(_) => {
                (DropCause::Malformed, Reason::ProtocolError)
            }
            FrameError::Malformed(_) => (DropCause::Malformed, Reason::MalformedPacket),
        };
        self.dropped(cause);
        tracing::debug!(client_id = %self.s.client_id, error = %e, "closing on a bad packet");
        Ending::Violation(reason)
    }

    /// A SUBSCRIBE / UNSUBSCRIBE carries a non-zero Packet Identifier [MQTT-2.2.1-3]
    /// (3.1.1 [MQTT-2.3.1-1]); 0 closes the connection (v5: 0x82 Protocol Error). It
    /// would also be taken for the link's own re-subscribe of a resumed session.
    fn nonzero_packet_id(&mut self, pkid: u16) -> Result<(), Ending> {
        if pkid != 0 {
            return Ok(());
        }
        self.dropped(DropCause::Malformed);
        tracing::debug!(client_id = %self.s.client_id, "closing on a packet id of 0");
        Err(Ending::Violation(Reason::ProtocolError))
    }

    /// A topic filter with U+0000 in it makes its SUBSCRIBE / UNSUBSCRIBE a Malformed
    /// Packet (MQTT 5 §1.5.4 [MQTT-1.5.4-2]; 3.1.1 §1.5.3 [MQTT-1.5.3-2]): the connection
    /// is closed (v5: DISCONNECT 0x81 first, §4.13) and the packet is never acknowledged,
    /// as it would be for a filter that is only invalid or denied.
    fn no_nul_in_filters<'a>(
        &mut self,
        mut filters: impl Iterator<Item = &'a str>,
    ) -> Result<(), Ending> {
        if !filters.any(|f| f.contains('\0')) {
            return Ok(());
        }
        self.dropped(DropCause::Malformed);
        tracing::debug!(client_id = %self.s.client_id, "closing on a topic filter with U+0000");
        Err(Ending::Violation(Reason::MalformedPacket))
    }

    pub(crate) async fn packet(
        &mut self,
        packet: Packet,
        meta: Option<PublishMeta>,
    ) -> Result<(), Ending> {
        match packet {
            Packet::Publish(publish, props) => {
                let meta = meta.ok_or(Ending::Violation(Reason::MalformedPacket))?;
                self.publish(publish, props, meta).await
            }
            Packet::PubAck(ack, _) => {
                if !self.command_acked(ack.pkid).await && !self.out_ack(OutAck::PubAck, ack.pkid) {
                    tracing::debug!(client_id = %self.s.client_id, pkid = ack.pkid, "PUBACK for nothing in flight ignored");
                }
                Ok(())
            }
            Packet::PubRec(rec, _) => {
                // A PUBREC with an error code ends the exchange [MQTT-4.3.3].
                let failed = !matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                self.out_ack(OutAck::PubRec { failed }, rec.pkid);
                Ok(())
            }
            Packet::PubComp(comp, _) => {
                self.out_ack(OutAck::PubComp, comp.pkid);
                Ok(())
            }
            Packet::PubRel(rel, _) => {
                let reason = if self.inbound_qos2.release(rel.pkid) {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                self.write_packet(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason,
                    },
                    None,
                ));
                Ok(())
            }
            Packet::Subscribe(sub, props) => {
                self.nonzero_packet_id(sub.pkid)?;
                self.no_nul_in_filters(sub.filters.iter().map(|f| f.path.as_str()))?;
                let routed = self.subscribe(sub, props)?;
                self.device_subscribed(&routed).await;
                Ok(())
            }
            Packet::Unsubscribe(unsub, _) => {
                self.nonzero_packet_id(unsub.pkid)?;
                self.no_nul_in_filters(unsub.filters.iter().map(String::as_str))?;
                self.unsubscribe(unsub);
                Ok(())
            }
            Packet::PingReq(_) => {
                self.write_packet(Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(d, props) => {
                let expiry = props.and_then(|p| p.session_expiry_interval);
                self.session_expiry_on_disconnect(expiry)?;
                let with_will = d.reason_code == Reason::DisconnectWithWillMessage;
                Err(Ending::ClientDisconnect { with_will })
            }
            Packet::Connect(..) => Err(Ending::Violation(Reason::ProtocolError)),
            _ => Err(Ending::Violation(Reason::ProtocolError)),
        }
    }

    /// Answers a QoS 1/2 PUBLISH that is not routed: v5 gets `reason`, 3.1.1 a plain ack.
    fn refuse_publish(
        &mut self,
        meta: PublishMeta,
        ack_reason: PubAckReason,
        rec_reason: PubRecReason,
    ) {
        let v5 = self.s.version == Version::V5;
        match meta.qos {
            1 => {
                let reason = if v5 {
                    ack_reason
                } else {
                    PubAckReason::Success
                };
                self.write_packet(Packet::PubAck(
                    PubAck {
                        pkid: meta.pkid,
                        reason,
                    },
                    None,
                ));
            }
            2 => {
                let reason = if v5 {
                    rec_reason
                } else {
                    PubRecReason::Success
                };
                if !v5 {
                    // A 3.1.1 client goes on with PUBREL, answered with PUBCOMP.
                    self.inbound_qos2.insert(meta.pkid);
                }
                self.write_packet(Packet::PubRec(
                    PubRec {
                        pkid: meta.pkid,
                        reason,
                    },
                    None,
                ));
            }
            _ => {}
        }
    }

    async fn publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        meta: PublishMeta,
    ) -> Result<(), Ending> {
        Stats::add(&self.core.stats.received, 1);
        let mut props = props;
        let alias = props.as_mut().and_then(|p| p.topic_alias.take());
        if props
            .as_ref()
            .is_some_and(|p| !p.subscription_identifiers.is_empty())
        {
            // A client never sends a Subscription Identifier [MQTT-3.3.4-6].
            return Err(Ending::Violation(Reason::ProtocolError));
        }
        let topic = self.publish_topic(&publish.topic, alias)?;
        self.check_publish_limits(meta, publish.payload.len())?;
        if !self.s.principal.may_publish(&topic) {
            self.dropped(DropCause::AclPublish);
            tracing::warn!(client_id = %self.s.client_id, topic, "publish denied by ACL");
            self.refuse_publish(
                meta,
                PubAckReason::NotAuthorized,
                PubRecReason::NotAuthorized,
            );
            return Ok(());
        }
        let Some(payload) = self.open_payload(&topic, publish.payload, meta) else {
            return Ok(());
        };
        if meta.qos == 2 && self.inbound_qos2.contains(meta.pkid) {
            // A resend of a message already routed: acknowledge, route nothing [MQTT-4.3.3-9].
            self.write_packet(Packet::PubRec(
                PubRec {
                    pkid: meta.pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ));
            return Ok(());
        }
        if meta.retain {
            self.persist_retained(&topic, &payload, meta.qos, props.as_ref())
                .await;
        }
        // Acknowledged only once stored (SPEC §6): it joins this batch's telemetry write.
        let stored = self.telemetry_to_store(&topic, &payload, meta.qos);
        let origin = Origin::now(meta.qos, self.s.conn_id);
        let routing = self.routing(meta, &topic, &payload, props, origin);
        // Persistent sessions get their copy before the publisher's ack (written at the
        // end of the batch); the check numbers the routed message (and records it for
        // connected ones).
        let incoming = Incoming {
            topic: &topic,
            payload: &payload,
            qos: meta.qos,
            retain: meta.retain,
            conn_id: self.s.conn_id,
        };
        let (publish, props) = self
            .core
            .session_store
            .check(&incoming, routing, &mut self.copies);
        self.tap(&topic, &payload, meta);
        if !stored {
            self.device_published(&topic, &payload).await;
        }
        self.to_router.push(Packet::Publish(publish, props));
        Ok(())
    }

    /// Offers a routed message to the operators' taps (free while none is open).
    fn tap(&self, topic: &str, payload: &[u8], meta: PublishMeta) {
        self.core.taps.offer(crate::link::tap::Offer {
            topic,
            payload,
            qos: meta.qos,
            retain: meta.retain,
            client_id: Some(&self.s.client_id),
        });
    }

    /// The PUBLISH's topic name, its alias resolved: valid UTF-8 without wildcards, or
    /// the connection ends (v5: 0x90 Topic Name invalid, 0x94 Topic Alias invalid).
    fn publish_topic(&mut self, raw: &[u8], alias: Option<u16>) -> Result<String, Ending> {
        let Ok(name) = std::str::from_utf8(raw) else {
            self.dropped(DropCause::Malformed);
            return Err(Ending::Violation(Reason::TopicNameInvalid));
        };
        match self.aliases.resolve(name, alias) {
            Ok(topic) if topic::valid_topic_name(&topic) => Ok(topic),
            Ok(_) => {
                self.dropped(DropCause::Malformed);
                Err(Ending::Violation(Reason::TopicNameInvalid))
            }
            Err(e) => {
                self.dropped(DropCause::Malformed);
                tracing::debug!(client_id = %self.s.client_id, error = ?e, "bad topic alias");
                Err(Ending::Violation(match e {
                    AliasError::EmptyTopic => Reason::ProtocolError,
                    _ => Reason::TopicAliasInvalid,
                }))
            }
        }
    }

    /// Our Receive Maximum for QoS 2 (counted on this network connection only) and
    /// `mqtt.max_payload`: past either the connection ends.
    fn check_publish_limits(
        &mut self,
        meta: PublishMeta,
        payload_len: usize,
    ) -> Result<(), Ending> {
        if meta.qos == 2
            && !self.inbound_qos2.contains(meta.pkid)
            && self.inbound_qos2.in_flight_here() >= usize::from(self.core.config.max_inflight)
        {
            // More unacknowledged QoS 2 than our Receive Maximum [MQTT-3.3.4-9].
            self.dropped(DropCause::Limit);
            return Err(Ending::Violation(Reason::ReceiveMaximumExceeded));
        }
        if meta.qos == 2 {
            // Sent again on this connection: in its send quota from now on.
            self.inbound_qos2.sent_here(meta.pkid);
        }
        if payload_len > self.core.config.max_payload {
            self.dropped(DropCause::TooLarge);
            return Err(Ending::Violation(Reason::PacketTooLarge));
        }
        Ok(())
    }

    /// The payload as routed: opened when the connection's device encrypts (SPEC §4).
    /// One that does not open is refused (v5: 0x99), reported and dropped: `None`.
    /// A replayed 0x02 envelope is dropped and counted the same way, except when it is
    /// a QoS 1/2 resend (DUP): the first copy was taken and only its ack was lost, so it
    /// is acknowledged as MQTT asks, logged, and raises no event.
    fn open_payload(&mut self, topic: &str, payload: Bytes, meta: PublishMeta) -> Option<Bytes> {
        let Some(crypto) = self.crypto.as_mut() else {
            return Some(payload);
        };
        let e = match crypto.open(topic, &payload) {
            Ok(plain) => return Some(Bytes::from(plain)),
            Err(e) => e,
        };
        let (drop, cause) = match e {
            CryptoError::Replayed(_) => (DropCause::Replayed, "replayed"),
            CryptoError::ReplayProtectionRequired => {
                (DropCause::DecryptFailed, "replay_protection_required")
            }
            _ => (DropCause::DecryptFailed, "decrypt"),
        };
        self.dropped(drop);
        if drop == DropCause::Replayed && meta.dup && meta.qos > 0 {
            tracing::info!(client_id = %self.s.client_id, topic, error = %e, "resent envelope already taken; acknowledged, dropped");
            if meta.qos == 2 {
                // Its PUBREL follows: answer it with PUBCOMP Success.
                self.inbound_qos2.insert(meta.pkid);
            }
            self.refuse_publish(meta, PubAckReason::Success, PubRecReason::Success);
            return None;
        }
        self.device_decrypt_failed(topic, cause, e.to_string());
        tracing::warn!(client_id = %self.s.client_id, topic, cause, error = %e, "payload did not decrypt; dropped");
        self.refuse_publish(
            meta,
            PubAckReason::PayloadFormatInvalid,
            PubRecReason::PayloadFormatInvalid,
        );
        None
    }

    /// Builds a checked publish for the router. QoS 2 is completed by the link layer
    /// (rumqttd's inbound QoS 2 matches PUBREL by order and forgets it on reconnect), so
    /// it is routed like QoS 1 content without a packet id for the router to track; so
    /// is a device's QoS 1.
    fn routing(
        &mut self,
        meta: PublishMeta,
        topic: &str,
        payload: &[u8],
        props: Option<PublishProperties>,
        origin: Origin,
    ) -> Routing {
        let routed = if meta.qos == 2 {
            self.inbound_qos2.insert(meta.pkid);
            self.write_packet(Packet::PubRec(
                PubRec {
                    pkid: meta.pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ));
            PublishMeta {
                qos: 0,
                pkid: 0,
                dup: false,
                retain: false,
            }
        } else if meta.qos == 1 && !self.s.link.is_own() {
            // A device's publishes share a link (`link::device_links`), on which the
            // router acknowledges nothing: acknowledged here, written after the batch
            // is handed over (and, for telemetry, stored: `stored_acks.rs`).
            self.write_packet(Packet::PubAck(
                PubAck {
                    pkid: meta.pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ));
            PublishMeta {
                qos: 0,
                pkid: 0,
                dup: false,
                retain: false,
            }
        } else {
            // The router never holds retained messages (see `retained.rs`).
            PublishMeta {
                retain: false,
                ..meta
            }
        };
        let props = crate::link::session::resume::route_properties(props, meta.retain);
        Routing::new(routed, topic, origin, payload, props)
    }

    /// Retained messages are written through to the store before they are routed.
    async fn persist_retained(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        props: Option<&PublishProperties>,
    ) {
        if let Err(e) = self.core.persist_retained(topic, payload, qos, props).await {
            tracing::error!(client_id = %self.s.client_id, error = %e, "could not store a retained message");
        }
    }
}

/// Inbound QoS 2 exchanges answered with PUBREC and waiting for PUBREL: the link
/// completes QoS 2 itself (rumqttd matches PUBREL by order and forgets it on reconnect).
#[derive(Debug, Default)]
pub(crate) struct InboundQos2 {
    ids: HashSet<u16>,
    /// Of those, the ones a resumed session brought from an earlier network connection
    /// that this one has not taken up again.
    earlier: HashSet<u16>,
}

crate::link::lazy::idle!(InboundQos2, |q| q.ids.is_empty() && q.earlier.is_empty());

impl InboundQos2 {
    /// A resumed session's unreleased exchanges, from an earlier network connection.
    pub(crate) fn restore(&mut self, ids: impl IntoIterator<Item = u16>) {
        self.ids = ids.into_iter().collect();
        self.earlier = self.ids.clone();
    }

    /// Every unreleased exchange (what a persistent session stores).
    pub(crate) fn ids(&self) -> &HashSet<u16> {
        &self.ids
    }

    pub(crate) fn contains(&self, pkid: u16) -> bool {
        self.ids.contains(&pkid)
    }

    pub(crate) fn insert(&mut self, pkid: u16) {
        self.ids.insert(pkid);
    }

    /// The client sent this exchange's PUBLISH again on this connection: it counts
    /// against the Receive Maximum from now on.
    pub(crate) fn sent_here(&mut self, pkid: u16) {
        self.earlier.remove(&pkid);
    }

    /// PUBREL: the exchange ends; false if it was not known.
    pub(crate) fn release(&mut self, pkid: u16) -> bool {
        self.earlier.remove(&pkid);
        self.ids.remove(&pkid)
    }

    /// Unreleased exchanges that count against our Receive Maximum: those of this
    /// network connection. Ones a resumed session still holds from an earlier connection
    /// do not ("The value of Receive Maximum applies only to the current Network
    /// Connection", §3.1.2.11.3; the client's send quota starts afresh, §4.9) until the
    /// client sends their PUBLISH again.
    pub(crate) fn in_flight_here(&self) -> usize {
        self.ids.len().saturating_sub(self.earlier.len())
    }
}
