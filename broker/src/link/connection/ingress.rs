//! Client → router: frames are decoded, checked (protocol, ACL, size), decrypted, and
//! batched for the router; acks and refusals the router cannot give are answered here.

use bytes::Bytes;
use fleetmq_storage::now_ms;
use rumqttd::protocol::{
    DisconnectReasonCode as Reason, Filter, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, PublishProperties, QoS, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};

use crate::fleet::{LinkEvent, Upstream};
use crate::link::codec::framing::{self, FrameError, PublishMeta, Version};
use crate::link::codec::origin::{Origin, Routing};
use crate::link::codec::topic;
use crate::link::connection::alias::AliasError;
use crate::link::connection::subscriptions::{self, SubOptions};
use crate::link::connection::{Connection, Ending};
use crate::link::security::auth::Identity;
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
                    self.core.stats.packet_in(packet_type);
                    if self.must_wait(&packet, meta) {
                        Stats::add(&self.core.stats.publisher_pauses, 1);
                        self.stalled = Some((packet, meta));
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
        let copies = std::mem::take(&mut self.copies);
        if !copies.is_empty() {
            self.core
                .session_store
                .write_copies(copies, &self.core.stats)
                .await;
        }
        self.session_sync().await;
        self.flush().await?;
        if result.is_ok() {
            self.send_to_router().await?;
            self.update_congestion();
        }
        // On an ending, what is queued for the router leaves together with the
        // link's Disconnect, in one router event (see `Connection::leave_router`).
        result
    }

    pub(crate) fn frame_error(&self, e: FrameError) -> Ending {
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

    /// A topic filter with U+0000 in it makes its SUBSCRIBE / UNSUBSCRIBE a Malformed
    /// Packet (MQTT 5 §1.5.4 [MQTT-1.5.4-2]; 3.1.1 §1.5.3 [MQTT-1.5.3-2]): the connection
    /// is closed (v5: DISCONNECT 0x81 first, §4.13) and the packet is never acknowledged,
    /// as it would be for a filter that is only invalid or denied.
    fn no_nul_in_filters<'a>(
        &self,
        mut filters: impl Iterator<Item = &'a str>,
    ) -> Result<(), Ending> {
        if !filters.any(|f| f.contains('\0')) {
            return Ok(());
        }
        self.core.stats.dropped(DropCause::Malformed);
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
                if !self.command_acked(ack.pkid).await && !self.out_ack(4, ack.pkid, false) {
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
                self.out_ack(5, rec.pkid, failed);
                Ok(())
            }
            Packet::PubComp(comp, _) => {
                self.out_ack(7, comp.pkid, false);
                Ok(())
            }
            Packet::PubRel(rel, _) => {
                self.inbound_qos2_earlier.remove(&rel.pkid);
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
                self.no_nul_in_filters(sub.filters.iter().map(|f| f.path.as_str()))?;
                let routed = self.subscribe(sub, props)?;
                self.device_subscribed(&routed).await;
                Ok(())
            }
            Packet::Unsubscribe(unsub, _) => {
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

    /// Unreleased inbound QoS 2 exchanges that count against our Receive Maximum: those
    /// of this network connection. Ones a resumed session still holds from an earlier
    /// connection do not ("The value of Receive Maximum applies only to the current
    /// Network Connection", §3.1.2.11.3; the client's send quota starts afresh, §4.9)
    /// until the client sends their PUBLISH again.
    fn qos2_in_flight_here(&self) -> usize {
        self.inbound_qos2
            .len()
            .saturating_sub(self.inbound_qos2_earlier.len())
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
        let topic = match std::str::from_utf8(&publish.topic) {
            Ok(t) => match self.aliases.resolve(t, alias) {
                Ok(t) if topic::valid_topic_name(&t) => t,
                Ok(_) => {
                    self.core.stats.dropped(DropCause::Malformed);
                    return Err(Ending::Violation(Reason::TopicNameInvalid));
                }
                Err(e) => {
                    self.core.stats.dropped(DropCause::Malformed);
                    tracing::debug!(client_id = %self.s.client_id, error = ?e, "bad topic alias");
                    return Err(Ending::Violation(match e {
                        AliasError::EmptyTopic => Reason::ProtocolError,
                        _ => Reason::TopicAliasInvalid,
                    }));
                }
            },
            Err(_) => {
                self.core.stats.dropped(DropCause::Malformed);
                return Err(Ending::Violation(Reason::TopicNameInvalid));
            }
        };
        if meta.qos == 2
            && !self.inbound_qos2.contains(&meta.pkid)
            && self.qos2_in_flight_here() >= usize::from(self.core.config.max_inflight)
        {
            // More unacknowledged QoS 2 than our Receive Maximum [MQTT-3.3.4-9].
            self.core.stats.dropped(DropCause::Limit);
            return Err(Ending::Violation(Reason::ReceiveMaximumExceeded));
        }
        if meta.qos == 2 {
            // Sent again on this connection: in its send quota from now on.
            self.inbound_qos2_earlier.remove(&meta.pkid);
        }
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
            self.persist_retained(&topic, &payload, meta.qos, props.as_ref())
                .await;
        }
        let origin = Origin {
            qos: meta.qos,
            conn_id: self.s.conn_id,
            at_ms: now_ms(),
            arrival: None,
        };
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
        self.device_published(&topic, &payload).await;
        self.to_router.push(Packet::Publish(publish, props));
        Ok(())
    }

    /// Builds a checked publish for the router. QoS 2 is completed by the link layer
    /// (rumqttd's inbound QoS 2 matches PUBREL by order and forgets it on reconnect), so
    /// it is routed like QoS 1 content without a packet id for the router to track.
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

    fn subscribe(
        &mut self,
        sub: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Result<Vec<String>, Ending> {
        if props.as_ref().and_then(|p| p.id) == Some(0) {
            // Subscription Identifier 0 is a protocol error [MQTT-3.8.2-?]; rumqttd would
            // drop the link without a word.
            return Err(Ending::Violation(Reason::ProtocolError));
        }
        let v5 = self.s.version == Version::V5;
        let mut slots = Vec::with_capacity(sub.filters.len());
        let mut routed: Vec<Filter> = Vec::new();
        let mut sys_added = false;
        let mut replaced = Vec::new();
        for filter in sub.filters {
            let options = SubOptions {
                qos: filter.qos as u8,
                no_local: v5 && filter.nolocal,
            };
            match self.check_filter(&filter.path) {
                Ok(Target::Router) => {
                    if v5 && filter.nolocal && topic::is_shared(&filter.path) {
                        // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                        return Err(Ending::Violation(Reason::ProtocolError));
                    }
                    if self.subs.add(&filter.path, options) {
                        // rumqttd keeps an existing subscription as it was (QoS,
                        // identifier); MQTT replaces it [MQTT-3.8.4-3].
                        replaced.push(filter.path.clone());
                    }
                    slots.push(None);
                    routed.push(filter);
                }
                Ok(Target::Sys) => {
                    // Served by the link at QoS 0 (see `sys`).
                    self.subs.add(&filter.path, options);
                    sys_added = true;
                    slots.push(Some(SubscribeReasonCode::Success(QoS::AtMostOnce)));
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
        let paths = routed.iter().map(|f| f.path.clone()).collect();
        if routed.is_empty() {
            let return_codes = slots.into_iter().flatten().collect();
            self.write_packet(Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes,
                },
                None,
            ));
        } else {
            if slots.iter().any(Option::is_some) {
                self.pending_subacks.insert(sub.pkid, slots);
            }
            if !replaced.is_empty() {
                // Its UNSUBACK is swallowed like every router UNSUBACK.
                self.to_router.push(Packet::Unsubscribe(
                    Unsubscribe {
                        pkid: sub.pkid,
                        filters: replaced,
                    },
                    None,
                ));
            }
            let id = props.as_ref().and_then(|p| p.id);
            self.session_subscribing(sub.pkid, &routed, id);
            self.to_router.push(Packet::Subscribe(
                Subscribe {
                    pkid: sub.pkid,
                    filters: routed,
                },
                props,
            ));
        }
        if sys_added {
            let values = crate::link::sys::snapshot(&self.core);
            self.write_sys(&values, true);
        }
        Ok(paths)
    }

    pub(crate) fn check_filter(&self, path: &str) -> Result<Target, SubscribeReasonCode> {
        let inner = match topic::split_shared(path) {
            Some((_, inner)) => inner,
            None if topic::is_shared(path) => return Err(SubscribeReasonCode::TopicFilterInvalid),
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
        if subscriptions::is_sys(path) {
            return Ok(Target::Sys);
        }
        if inner.starts_with('$') {
            // rumqttd's router drops a link that subscribes to a `$` filter, and nothing
            // but `$SYS` is published on one.
            return Err(SubscribeReasonCode::ImplementationSpecific);
        }
        Ok(Target::Router)
    }

    /// Answers with exactly one UNSUBACK, 0x11 for a filter with no subscription
    /// [MQTT-3.10.4-4, -5]; forwards the others (the router sends no UNSUBACK for an
    /// unknown filter and one per filter otherwise; those are swallowed).
    fn unsubscribe(&mut self, unsub: Unsubscribe) {
        self.session_unsubscribed(&unsub.filters);
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        let mut routed = Vec::new();
        for f in unsub.filters {
            let existed = self.subs.remove(&f);
            reasons.push(if existed {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
            let inner = topic::split_shared(&f).map_or(f.as_str(), |(_, inner)| inner);
            if existed && topic::valid_filter(inner) && !subscriptions::is_sys(&f) {
                routed.push(f);
            }
        }
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

/// Who serves an accepted subscription.
pub(crate) enum Target {
    Router,
    Sys,
}

impl Connection {
    /// Tells the fleet services what a device published on one of its upstream topics.
    /// Telemetry is decoded and queued for the store right here and never waits: when
    /// the store's queue is full the point is dropped and counted.
    async fn device_published(&self, topic: &str, payload: &Bytes) {
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
