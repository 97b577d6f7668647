//! Client → router: frames are decoded, checked (protocol, ACL, size), decrypted, and
//! batched for the router; acks and refusals the router cannot give are answered here.

use bytes::Bytes;
use fleetmq_storage::now_ms;
use rumqttd::protocol::{
    DisconnectReasonCode as Reason, Filter, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, PublishProperties, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};

use super::connection::{Connection, Ending};
use super::framing::{self, FrameError, PublishMeta, Version};
use super::topic;
use crate::auth::Identity;
use crate::fleet::{LinkEvent, Upstream};
use crate::stats::{DropCause, Stats};

impl Connection {
    /// Processes every complete frame in the read buffer.
    pub(super) async fn ingress(&mut self) -> Result<(), Ending> {
        let max = self.core.max_packet();
        let mut result = Ok(());
        while result.is_ok() {
            let frame = match framing::peek(&self.read_buf, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    result = Err(self.frame_error(e));
                    break;
                }
            };
            let bytes = self.read_buf.split_to(frame.len);
            let meta = (frame.packet_type() == 3)
                .then(|| framing::publish_meta(&bytes))
                .flatten();
            result = match framing::decode(self.s.version, frame, bytes, max) {
                Ok(packet) => self.packet(packet, meta).await,
                Err(e) => Err(self.frame_error(e)),
            };
        }
        self.session_sync().await;
        self.flush().await?;
        if result.is_ok() {
            self.send_to_router().await?;
        }
        // On an ending, what is queued for the router leaves together with the
        // link's Disconnect, in one router event (see `Connection::leave_router`).
        result
    }

    fn frame_error(&self, e: FrameError) -> Ending {
        let (cause, reason) = match e {
            FrameError::TooLarge(_) => (DropCause::TooLarge, Reason::PacketTooLarge),
            FrameError::Forbidden(_) | FrameError::UnsupportedProtocol(_) => {
                (DropCause::Malformed, Reason::ProtocolError)
            }
            FrameError::Malformed(_) => (DropCause::Malformed, Reason::MalformedPacket),
        };
        self.core.stats.dropped(cause);
        tracing::debug!(client_id = %self.s.client_id, error = %e, "closing on a bad packet");
        Ending::Violation(reason)
    }

    async fn packet(&mut self, packet: Packet, meta: Option<PublishMeta>) -> Result<(), Ending> {
        match packet {
            Packet::Publish(publish, props) => {
                let meta = meta.ok_or(Ending::Violation(Reason::MalformedPacket))?;
                self.publish(publish, props, meta).await
            }
            Packet::PubAck(ack, props) => {
                let pkid = ack.pkid;
                if !self.command_acked(pkid).await && !self.local_ack(4, pkid) {
                    self.session_client_acked(pkid);
                    self.client_ack(pkid, Packet::PubAck(ack, props));
                }
                Ok(())
            }
            Packet::PubRec(rec, props) => {
                let pkid = rec.pkid;
                if !self.local_ack(5, pkid) {
                    self.session_client_acked(pkid);
                    self.client_ack(pkid, Packet::PubRec(rec, props));
                }
                Ok(())
            }
            Packet::PubComp(comp, props) => {
                let pkid = comp.pkid;
                if !self.local_ack(7, pkid)
                    && !self.acks.client_pubcomp(
                        pkid,
                        Packet::PubComp(comp, props),
                        &mut self.to_router,
                    )
                {
                    tracing::debug!(client_id = %self.s.client_id, pkid, "PUBCOMP for nothing in flight ignored");
                }
                Ok(())
            }
            Packet::PubRel(rel, _) => {
                let reason = if self.inbound_qos2.remove(&rel.pkid) {
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
                let routed = self.subscribe(sub, props)?;
                self.device_subscribed(&routed).await;
                Ok(())
            }
            Packet::Unsubscribe(unsub, _) => {
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

    fn client_ack(&mut self, pkid: u16, ack: Packet) {
        if !self.acks.client_ack(pkid, ack, &mut self.to_router) {
            tracing::debug!(client_id = %self.s.client_id, pkid, "ack for nothing in flight ignored");
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
        if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
            // CONNACK announced a Topic Alias Maximum of 0 [MQTT-3.3.2-8].
            return Err(Ending::Violation(Reason::TopicAliasInvalid));
        }
        let topic = match std::str::from_utf8(&publish.topic) {
            Ok(t) if topic::valid_topic_name(t) => t.to_owned(),
            _ => {
                self.core.stats.dropped(DropCause::Malformed);
                return Err(Ending::Violation(Reason::TopicNameInvalid));
            }
        };
        if publish.payload.len() > self.core.config.max_payload {
            self.core.stats.dropped(DropCause::TooLarge);
            return Err(Ending::Violation(Reason::PacketTooLarge));
        }
        if !self.s.principal.may_publish(&topic) {
            self.core.stats.dropped(DropCause::AclPublish);
            tracing::warn!(client_id = %self.s.client_id, topic, "publish denied by ACL");
            self.refuse_publish(
                meta,
                PubAckReason::NotAuthorized,
                PubRecReason::NotAuthorized,
            );
            return Ok(());
        }
        let mut payload = publish.payload;
        if let Some(crypto) = self.crypto.as_mut() {
            match crypto.open(&topic, &payload) {
                Ok(plain) => payload = Bytes::from(plain),
                Err(e) => {
                    self.device_decrypt_failed(&topic, e.to_string());
                    self.core.stats.dropped(DropCause::DecryptFailed);
                    tracing::warn!(client_id = %self.s.client_id, topic, error = %e, "payload did not decrypt; dropped");
                    self.refuse_publish(
                        meta,
                        PubAckReason::PayloadFormatInvalid,
                        PubRecReason::PayloadFormatInvalid,
                    );
                    return Ok(());
                }
            }
        }
        if meta.qos == 2 && self.inbound_qos2.contains(&meta.pkid) {
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
            self.persist_retained(&topic, &payload, meta.qos).await;
        }
        // Parked persistent sessions get their copy before the publisher's ack.
        let sessions = &self.core.session_store;
        sessions
            .enqueue_matching(&topic, &payload, meta.qos, &self.core.stats)
            .await;
        self.device_published(&topic, &payload).await;
        self.route(meta, &topic, &payload, props);
        Ok(())
    }

    /// Queues a checked publish for the router. QoS 2 is completed by the link layer
    /// (rumqttd's inbound QoS 2 matches PUBREL by order and forgets it on reconnect), so
    /// it is routed like QoS 1 content without a packet id for the router to track.
    fn route(
        &mut self,
        meta: PublishMeta,
        topic: &str,
        payload: &[u8],
        props: Option<PublishProperties>,
    ) {
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
        } else {
            // The router never holds retained messages (see `retained.rs`).
            PublishMeta {
                retain: false,
                ..meta
            }
        };
        let publish = framing::build_publish(routed, topic.as_bytes(), payload);
        let props = super::session_link::route_properties(props, meta.retain);
        self.to_router.push(Packet::Publish(publish, props));
    }

    /// Retained messages are written through to the store before they are routed.
    async fn persist_retained(&self, topic: &str, payload: &[u8], qos: u8) {
        if let Err(e) = self.core.persist_retained(topic, payload, qos).await {
            tracing::error!(client_id = %self.s.client_id, error = %e, "could not store a retained message");
        }
    }

    fn subscribe(
        &mut self,
        sub: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Result<Vec<String>, Ending> {
        if props.as_ref().and_then(|p| p.id) == Some(0) {
            return Err(Ending::Violation(Reason::ProtocolError));
        }
        let v5 = self.s.version == Version::V5;
        let mut slots = Vec::with_capacity(sub.filters.len());
        let mut routed: Vec<Filter> = Vec::new();
        for filter in sub.filters {
            match self.check_filter(&filter.path) {
                Ok(()) => {
                    slots.push(None);
                    routed.push(filter);
                }
                Err(code) => {
                    let code = if v5 {
                        code
                    } else {
                        SubscribeReasonCode::Failure
                    };
                    slots.push(Some(code));
                }
            }
        }
        if routed.is_empty() {
            let return_codes = slots.into_iter().flatten().collect();
            self.write_packet(Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes,
                },
                None,
            ));
            return Ok(Vec::new());
        }
        if slots.iter().any(Option::is_some) {
            self.pending_subacks.insert(sub.pkid, slots);
        }
        self.session_subscribing(sub.pkid, &routed);
        let paths = routed.iter().map(|f| f.path.clone()).collect();
        self.to_router.push(Packet::Subscribe(
            Subscribe {
                pkid: sub.pkid,
                filters: routed,
            },
            props,
        ));
        Ok(paths)
    }

    pub(super) fn check_filter(&self, path: &str) -> Result<(), SubscribeReasonCode> {
        let inner = match topic::split_shared(path) {
            Some((_, inner)) => inner,
            None if path.starts_with("$share/") => {
                return Err(SubscribeReasonCode::TopicFilterInvalid)
            }
            None => path,
        };
        if !topic::valid_filter(inner) {
            return Err(SubscribeReasonCode::TopicFilterInvalid);
        }
        if !self.s.principal.may_subscribe(path) {
            self.core.stats.dropped(DropCause::AclSubscribe);
            tracing::warn!(client_id = %self.s.client_id, filter = path, "subscribe denied by ACL");
            return Err(SubscribeReasonCode::NotAuthorized);
        }
        if inner.starts_with('$') {
            // rumqttd's router drops a link that subscribes to a `$` filter.
            return Err(SubscribeReasonCode::ImplementationSpecific);
        }
        Ok(())
    }

    /// Forwards the filters and answers with exactly one UNSUBACK (the router sends none
    /// for an unknown filter and one per filter otherwise; those are swallowed).
    fn unsubscribe(&mut self, unsub: Unsubscribe) {
        self.session_unsubscribed(&unsub.filters);
        let reasons = unsub
            .filters
            .iter()
            .map(|_| UnsubAckReason::Success)
            .collect();
        let routed: Vec<String> = unsub
            .filters
            .into_iter()
            .filter(|f| topic::valid_filter(topic::split_shared(f).map_or(f, |(_, inner)| inner)))
            .collect();
        if !routed.is_empty() {
            self.to_router.push(Packet::Unsubscribe(
                Unsubscribe {
                    pkid: unsub.pkid,
                    filters: routed,
                },
                None,
            ));
        }
        self.write_packet(Packet::UnsubAck(
            UnsubAck {
                pkid: unsub.pkid,
                reasons,
            },
            None,
        ));
    }
}

impl Connection {
    /// Tells the fleet services what a device published on one of its upstream topics.
    /// Telemetry never waits: when the queue is full it is dropped and counted.
    async fn device_published(&self, topic: &str, payload: &Bytes) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let Some(kind) = Upstream::of(&device.id, topic) else {
            return;
        };
        let event = LinkEvent::Published {
            id: device.id.clone(),
            generation: self.s.conn_id,
            kind,
            payload: payload.clone(),
            at_ms: now_ms(),
        };
        if kind == Upstream::Telemetry {
            self.core.fleet_event_or_drop(event);
        } else {
            self.core.fleet_event(event).await;
        }
    }

    fn device_decrypt_failed(&self, topic: &str, reason: String) {
        let Identity::Device(device) = &self.s.identity else {
            return;
        };
        let event = LinkEvent::DecryptFailed {
            id: device.id.clone(),
            topic: topic.to_owned(),
            reason,
            at_ms: now_ms(),
        };
        self.core.fleet_event_or_drop(event);
    }

    /// After a SUBSCRIBE: a device whose filters now cover its command topic is ready.
    async fn device_subscribed(&self, filters: &[String]) {
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
