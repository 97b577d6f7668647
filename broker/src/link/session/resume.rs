//! A connection's part of session state: the subscriptions it keeps for a persistent
//! session, what it puts on the outbound queue (`outbound.rs`: a resumed session's stored
//! queue, retained messages for new subscriptions), and parking the session with what
//! the client was still owed when it leaves. See `session::store` for the design.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use fleetmq_storage::{QueueOp, SessionRecord, SessionSubscription};
use futures_util::FutureExt;
use rumqttd::protocol::{
    Filter, Packet, PubRel, PubRelReason, PublishProperties, RetainForwardRule, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode,
};
use rumqttd::Notification;

use crate::link::codec::framing::Version;
use crate::link::codec::topic;
use crate::link::connection::outbound::OutMsg;
use crate::link::connection::{Connection, Ending};
use crate::link::session::ledger::SharedLedger;
use crate::link::session::owed::OwedState;
use crate::link::session::store;
/// The packet id of the SUBSCRIBE that restores a resumed session's router
/// subscriptions; clients never use 0, so its SUBACK is recognisably ours.
const RESUBSCRIBE_PKID: u16 = 0;

/// A user property that carries a live message's RETAIN flag through the router (which
/// clears RETAIN on fan-out) to subscriptions with Retain As Published.
pub(crate) const RETAIN_MARK: &str = "fleetmq:retain";

/// The properties a checked publish is routed with: a client's own copy of the mark is
/// removed, and a retained publish is marked.
pub(crate) fn route_properties(
    props: Option<PublishProperties>,
    retain: bool,
) -> Option<PublishProperties> {
    let mut props = match props {
        Some(mut p) => {
            p.user_properties.retain(|(k, _)| k != RETAIN_MARK);
            p
        }
        None if !retain => return None,
        None => PublishProperties::default(),
    };
    if retain {
        props
            .user_properties
            .push((RETAIN_MARK.to_owned(), String::new()));
    }
    Some(props)
}

/// What CONNECT decided about the session.
#[derive(Debug, Default)]
pub(crate) struct SessionStart {
    /// Whether the session outlives this connection.
    pub(crate) persistent: bool,
    /// Session Expiry Interval in seconds (`store::NEVER` for 3.1.1).
    pub(crate) expiry_s: u32,
    /// The stored session this connection resumes (CONNACK session present).
    pub(crate) resumed: Option<SessionRecord>,
}

/// Per-connection session state.
#[derive(Default)]
pub(crate) struct SessionLink {
    start: SessionStart,
    pub(crate) subs: BTreeMap<String, SessionSubscription>,
    /// Filters of SUBSCRIBEs the router has not answered yet, and whether each
    /// subscription existed before (Retain Handling 1).
    pub(crate) pending_subs: HashMap<u16, Vec<(SessionSubscription, bool)>>,
    subs_dirty: bool,
    saved_qos2: HashSet<u16>,
    /// The outbound PUBRELs the stored record holds.
    saved_pubrels: Vec<u16>,
    /// Whether this connection stored a session record.
    saved: bool,
    /// What the router still owes this persistent session (`session::ledger`).
    pub(crate) ledger: Option<SharedLedger>,
    /// Arrival numbers the router delivered since the ledger was last told.
    pub(crate) delivered: Vec<u64>,
    /// When its subscriptions took effect (`session::owed`).
    pub(crate) owed: OwedState,
    /// What the stored queue of the resumed session holds of its live deliveries.
    queued_window: Option<store::QueuedWindow>,
}

impl SessionLink {
    pub(crate) fn new(start: SessionStart) -> SessionLink {
        SessionLink {
            start,
            ..SessionLink::default()
        }
    }

    /// Whether the session outlives this connection.
    pub(crate) fn persistent(&self) -> bool {
        self.start.persistent
    }
}

fn qos_of(code: &SubscribeReasonCode) -> Option<u8> {
    match code {
        SubscribeReasonCode::QoS0 => Some(0),
        SubscribeReasonCode::QoS1 => Some(1),
        SubscribeReasonCode::QoS2 => Some(2),
        SubscribeReasonCode::Success(q) => Some(*q as u8),
        _ => None,
    }
}

fn subscription_of(f: &Filter, id: Option<usize>) -> SessionSubscription {
    SessionSubscription {
        id: id.and_then(|id| u32::try_from(id).ok()),
        filter: f.path.clone(),
        qos: f.qos as u8,
        no_local: f.nolocal,
        retain_as_published: f.preserve_retain,
        retain_handling: match f.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => 0,
            RetainForwardRule::OnNewSubscribe => 1,
            RetainForwardRule::Never => 2,
        },
    }
}

fn filter_of(s: &SessionSubscription) -> Filter {
    Filter {
        path: s.filter.clone(),
        qos: rumqttd::protocol::qos(s.qos).unwrap_or_default(),
        nolocal: s.no_local,
        preserve_retain: s.retain_as_published,
        retain_forward_rule: match s.retain_handling {
            0 => RetainForwardRule::OnEverySubscribe,
            1 => RetainForwardRule::OnNewSubscribe,
            _ => RetainForwardRule::Never,
        },
    }
}

impl Connection {
    fn session_record(&self) -> SessionRecord {
        let mut inbound_qos2: Vec<u16> = self.inbound_qos2.ids().iter().copied().collect();
        inbound_qos2.sort_unstable();
        SessionRecord {
            key: self.s.router_key.clone(),
            client_id: self.s.client_id.clone(),
            subscriptions: self.sess.subs.values().cloned().collect(),
            expiry_s: self.sess.start.expiry_s,
            disconnected_at_ms: None,
            inbound_qos2,
            outbound_pubrels: self.queue.pubrels(),
        }
    }

    /// Right after CONNACK: restores a resumed session's subscriptions in the router,
    /// stops queuing for it, and queues its stored messages for delivery ahead of live
    /// traffic [MQTT-3.1.2-5] [MQTT-4.4.0-1].
    pub(crate) async fn resume_session(&mut self) -> Result<(), Ending> {
        let Some(rec) = self.sess.start.resumed.take() else {
            if self.sess.start.persistent {
                self.sess.saved = true;
                self.core.session_store.save(self.session_record()).await;
                let (ledger, window, _) =
                    self.core
                        .session_store
                        .go_live(&self.s.router_key, &[], self.s.conn_id);
                self.sess.ledger = Some(ledger);
                self.sess.queued_window = window;
            }
            return Ok(());
        };
        self.inbound_qos2.restore(rec.inbound_qos2.iter().copied());
        self.sess.saved_qos2 = self.inbound_qos2.ids().clone();
        // Its client was connected when the broker stopped without parking it (kill -9):
        // any of its queue may have been sent, so all of it goes with DUP=1 ("might be a
        // re-delivery") [MQTT-3.3.1-1].
        let crashed = rec.disconnected_at_ms.is_none();
        let resubscribed = self.resubscribe(rec.subscriptions).await?;
        let key = self.s.router_key.clone();
        // What is numbered from here on comes from the router, not the stored queue.
        let mut live_from = self.core.session_store.arrival_mark();
        if self.sess.start.persistent {
            // From parked to connected in one step: every publish is stored for it.
            let subs: Vec<SessionSubscription> = self.sess.subs.values().cloned().collect();
            let (ledger, window, since) =
                self.core.session_store.go_live(&key, &subs, self.s.conn_id);
            live_from = since;
            self.sess.ledger = Some(ledger);
            self.sess.queued_window = window;
            // Its subscriptions take effect here; each re-subscribe's SUBACK settles what
            // was checked before the router had it (`session::owed`).
            self.sess.owed.resubscribing = resubscribed.into_iter().map(|f| (f, since)).collect();
        } else {
            self.core.session_store.unpark(&key);
        }
        self.requeue(rec.outbound_pubrels, &key, live_from, crashed)
            .await;
        if self.sess.start.persistent {
            self.sess.saved = true;
            self.sess.saved_pubrels = self.queue.pubrels();
            self.core.session_store.save(self.session_record()).await;
        } else {
            // Resumed by a connection whose session ends with it (v5 expiry 0).
            self.core.session_store.discard(&key).await;
        }
        // The first sends, with the packet ids of QoS 2 ones recorded before they go out.
        self.session_sync().await;
        Ok(())
    }

    /// Subscribes the router again to every stored subscription the client may still
    /// have (permissions may have changed while it was away), one SUBSCRIBE per
    /// Subscription Identifier so live messages carry it again; returns each
    /// re-subscribe's filters.
    async fn resubscribe(
        &mut self,
        stored: Vec<SessionSubscription>,
    ) -> Result<Vec<Vec<String>>, Ending> {
        let mut filters: BTreeMap<Option<u32>, Vec<Filter>> = BTreeMap::new();
        for sub in stored {
            if matches!(
                self.check_filter(&sub.filter),
                Ok(crate::link::connection::subscribe::Target::Router)
            ) {
                filters.entry(sub.id).or_default().push(filter_of(&sub));
                let options = crate::link::connection::subscriptions::SubOptions {
                    qos: sub.qos,
                    no_local: sub.no_local,
                };
                self.subs.add(&sub.filter, options);
                self.sess.subs.insert(sub.filter.clone(), sub);
            }
        }
        if filters.is_empty() {
            return Ok(Vec::new());
        }
        let mut resubscribed = Vec::new();
        for (id, filters) in filters {
            resubscribed.push(filters.iter().map(|f| f.path.clone()).collect());
            let props = id.map(|id| SubscribeProperties {
                id: Some(id as usize),
                user_properties: Vec::new(),
            });
            self.to_router.push(Packet::Subscribe(
                Subscribe {
                    pkid: RESUBSCRIBE_PKID,
                    filters,
                },
                props,
            ));
        }
        self.send_to_router().await?;
        Ok(resubscribed)
    }

    /// What the stored session still owes its client goes into the outbound queue:
    /// PUBRELs of QoS 2 exchanges the client had not completed first [MQTT-4.4.0-1], then
    /// the stored queue up to `live_from`, those that were in flight on their packet ids
    /// again with DUP=1 (all of it after a crash).
    async fn requeue(&mut self, pubrels: Vec<u16>, key: &str, live_from: u64, crashed: bool) {
        for pkid in pubrels {
            if self.queue.released(pkid) {
                self.write_packet(Packet::PubRel(
                    PubRel {
                        pkid,
                        reason: PubRelReason::Success,
                    },
                    None,
                ));
            }
        }
        // Copies publishers were still writing when it went live belong to the queue.
        self.core.session_store.settled(key).await;
        for (seq, m) in self.core.session_store.queued(key, live_from).await {
            let mut msg = OutMsg::plain(m.topic, m.payload.into(), m.qos);
            msg.dup = m.dup || m.pkid.is_some() || crashed;
            msg.retain = m.retain;
            msg.seq = Some(seq);
            msg.stored = true;
            msg.pkid = m.pkid;
            msg.expires_at_ms = m.expires_at_ms;
            // Sent to MQTT 5 clients only; the expiry left is added when it is written.
            msg.props = store::publish_properties(&m.properties, None);
            self.queue.push(msg);
        }
    }

    /// A v5 DISCONNECT may change the Session Expiry Interval, but not from 0 to
    /// non-zero [MQTT-3.14.2-2] (protocol error).
    pub(crate) fn session_expiry_on_disconnect(
        &mut self,
        expiry: Option<u32>,
    ) -> Result<(), Ending> {
        let Some(expiry) = expiry else {
            return Ok(());
        };
        if self.sess.start.expiry_s == 0 && expiry > 0 {
            return Err(Ending::Violation(
                rumqttd::protocol::DisconnectReasonCode::ProtocolError,
            ));
        }
        if self.s.version == Version::V5 {
            self.sess.start.expiry_s = expiry;
            self.sess.start.persistent = expiry > 0;
        }
        Ok(())
    }

    /// A SUBSCRIBE is going to the router with these filters.
    pub(crate) fn session_subscribing(&mut self, pkid: u16, filters: &[Filter], id: Option<usize>) {
        let subs = filters
            .iter()
            .map(|f| {
                let existed = self.sess.subs.contains_key(&f.path);
                (subscription_of(f, id), existed)
            })
            .collect();
        self.sess.pending_subs.insert(pkid, subs);
        // Recorded in the ledger from here on, before the router has the SUBSCRIBE.
        self.owed_subscribing(pkid);
    }

    /// The router answered a SUBSCRIBE: records the subscriptions and queues the retained
    /// messages they get (Retain Handling 0: always, 1: new subscriptions only, 2: never;
    /// none for shared subscriptions) [MQTT-3.3.1-9] [MQTT-3.8.4-4]. Returns true for the
    /// SUBACK of the link's own re-subscribe, which the client must not see.
    pub(crate) fn session_subacked(&mut self, suback: &SubAck) -> bool {
        if suback.pkid == RESUBSCRIBE_PKID {
            if let Some((filters, since)) = self.sess.owed.resubscribing.pop_front() {
                self.owed_subacked(filters, since);
            }
            return true;
        }
        let Some(subs) = self.sess.pending_subs.remove(&suback.pkid) else {
            return false;
        };
        let since = self.sess.owed.pending_since.remove(&suback.pkid);
        let mut granted_filters = Vec::new();
        for ((mut sub, existed), code) in subs.into_iter().zip(&suback.return_codes) {
            let Some(granted) = qos_of(code) else {
                continue;
            };
            sub.qos = granted;
            let send = match sub.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if send && !topic::is_shared(&sub.filter) {
                for m in self.core.retained.matching(&sub.filter) {
                    let mut msg = OutMsg::plain(
                        m.topic.clone(),
                        Bytes::copy_from_slice(&m.payload),
                        m.qos.min(granted),
                    );
                    msg.retain = true;
                    msg.expires_at_ms = m.expires_at_ms;
                    if msg.qos > 0 && self.sess.ledger.is_some() {
                        // Stored should the session park before it is acknowledged.
                        msg.seq = Some(self.core.session_store.next_slot());
                    }
                    if self.s.version == Version::V5 {
                        // Its publisher's properties, and this subscription's identifier
                        // [MQTT-3.3.2-17] [MQTT-3.3.4-3].
                        let mut props = m.properties.clone();
                        props.subscription_ids.extend(sub.id);
                        msg.props = store::publish_properties(&props, None);
                    }
                    self.queue.push(msg);
                }
            }
            granted_filters.push(sub.filter.clone());
            self.sess.subs.insert(sub.filter.clone(), sub);
            self.sess.subs_dirty = true;
        }
        // The router delivers on them from now on; what it may not deliver of what the
        // ledger recorded for them since the SUBSCRIBE went out is delivered now.
        if let Some(since) = since {
            self.owed_subacked(granted_filters, since);
        }
        false
    }

    pub(crate) fn session_unsubscribed(&mut self, filters: &[String]) {
        for f in filters {
            self.sess.subs_dirty |= self.sess.subs.remove(f).is_some();
            self.sess.owed.marks.remove(f);
        }
        if let Some(ledger) = &self.sess.ledger {
            let subs = self.owed_subscriptions();
            self.core
                .session_store
                .live_subscriptions(&self.s.router_key, &subs);
            // The router drops what it has not delivered on them; so does the stored queue.
            let dropped = ledger.lock().retain_topics(|t| store::takes(&subs, t));
            if self.core.session_store.durable_live() {
                self.queue.acked_seqs.extend(dropped);
            }
        }
    }

    /// The router handed this connection a message with this arrival number, to go out
    /// at `qos`; whether it is already in the session's stored queue (see
    /// `QueuedWindow`), so this copy is not for the client.
    pub(crate) fn session_delivered(&mut self, arrival: u64, topic_name: &str, qos: u8) -> bool {
        if self.sess.ledger.is_none() {
            return false;
        }
        // Only a QoS 1/2 copy settles the ledger's entry: one through an overlapping
        // QoS 0 subscription (the only copy the router gives while a new QoS 1/2
        // subscription's SUBSCRIBE is on its way) leaves the message owed at the QoS it
        // was recorded for, delivered at the SUBACK or stored at parking.
        if qos > 0 {
            self.sess.delivered.push(arrival);
        }
        self.sess
            .queued_window
            .as_ref()
            .is_some_and(|w| w.queued(arrival, topic_name))
            || self.owed_left_out(arrival, topic_name)
    }

    /// What the router had not handed this connection when its session parked (without
    /// durable connected sessions): each joins the outbound queue as the router would
    /// have delivered it (at the best matching subscription's QoS, with the identifiers
    /// of the matching ones), at its slot.
    fn session_undelivered(&mut self) {
        let Some(ledger) = self.sess.ledger.clone() else {
            return;
        };
        let (left, lost) = {
            let mut l = ledger.lock();
            l.delivered(self.sess.delivered.drain(..));
            l.take()
        };
        if lost > 0 {
            // Evicted past the ledger's bound and never delivered: lost, but counted.
            self.core
                .stats
                .dropped_many(crate::stats::DropCause::SlowConsumer, lost);
            tracing::warn!(client_id = %self.s.client_id, lost, "session parked while owed more than its ledger keeps");
        }
        for (publish, props) in left {
            self.deliver_owed(publish, props);
        }
    }

    /// Removes the retain mark from a routed message's properties; whether it goes out
    /// with RETAIN=1: it was published retained and this v5 client subscribed with Retain
    /// As Published (MQTT 5 [MQTT-3.3.1-12] [MQTT-3.3.1-13]).
    pub(crate) fn take_retain_mark(
        &self,
        topic_name: &str,
        props: &mut Option<PublishProperties>,
    ) -> bool {
        let Some(p) = props.as_mut() else {
            return false;
        };
        let before = p.user_properties.len();
        p.user_properties.retain(|(k, _)| k != RETAIN_MARK);
        if p.user_properties.len() == before {
            return false;
        }
        if *p == PublishProperties::default() {
            *props = None;
        }
        self.s.version == Version::V5
            && self.sess.subs.values().any(|s| {
                s.retain_as_published
                    && !topic::is_shared(&s.filter)
                    && topic::matches(&s.filter, topic_name)
            })
    }

    /// After a batch: refills the window, then in one request to the session writer
    /// removes what the client acknowledged from the stored queue and stores the packet
    /// ids of QoS 2 sends and changed subscriptions, inbound QoS 2 state or outbound
    /// PUBRELs. Waits for the disk when the client must not see this batch before it is
    /// there: new QoS 2 sends or PUBRELs, PUBRECs (inbound QoS 2 state), SUBACKs;
    /// plain removals are not waited for (lost in a crash, the message is sent again).
    pub(crate) async fn session_sync(&mut self) {
        if let (Some(ledger), false) = (&self.sess.ledger, self.sess.delivered.is_empty()) {
            ledger.lock().delivered(self.sess.delivered.drain(..));
        }
        self.fill_out();
        // What a SUBACK delivered from the ledger may be acknowledged before its
        // publisher's copy is written: a QoS 2 exchange waits for it (its PUBREL or
        // first send must not go out before it is stored), a QoS 1 removal waits for
        // a later batch.
        let mut must_wait: Vec<u64> = self.queue.released_seqs.clone();
        must_wait.extend(self.queue.sent_marks.iter().map(|(seq, _)| *seq));
        if !must_wait.is_empty() {
            self.core.session_store.wait_written(&must_wait).await;
        }
        // Those whose copies are not written yet stay for a later batch.
        let ready = self
            .core
            .session_store
            .written_of(&mut self.queue.acked_seqs);
        let key = &self.s.router_key;
        let q = &mut self.queue;
        if ready.is_empty()
            && q.released_seqs.is_empty()
            && q.sent_marks.is_empty()
            && !self.sess.subs_dirty
            && self.sess.saved_qos2 == *self.inbound_qos2.ids()
            && (!self.sess.start.persistent
                || !self.core.session_store.durable_live()
                || self.sess.saved_pubrels == q.pubrels())
        {
            return;
        }
        let remove = |seq| QueueOp::Remove {
            key: key.clone(),
            seq,
        };
        let mut durable = !q.released_seqs.is_empty() || !q.sent_marks.is_empty();
        let mut ops: Vec<QueueOp> = ready.into_iter().map(remove).collect();
        ops.extend(q.released_seqs.drain(..).map(remove));
        ops.extend(q.sent_marks.drain(..).map(|(seq, pkid)| QueueOp::Mark {
            key: key.clone(),
            seq,
            pkid,
        }));
        if self.sess.start.persistent {
            // Without durable connected sessions PUBRELs are stored with the other
            // changes and at parking only.
            let durable_live = self.core.session_store.durable_live();
            let pubrels = q.pubrels();
            let changed = self.sess.subs_dirty || self.sess.saved_qos2 != *self.inbound_qos2.ids();
            if changed || (durable_live && self.sess.saved_pubrels != pubrels) {
                // A new PUBREL must be on disk before it is sent; one completed may be
                // forgotten (sent again after a crash, answered with PUBCOMP).
                durable |= changed || pubrels.iter().any(|p| !self.sess.saved_pubrels.contains(p));
                self.sess.subs_dirty = false;
                self.sess.saved_qos2 = self.inbound_qos2.ids().clone();
                self.sess.saved_pubrels = pubrels;
                ops.push(QueueOp::PutSession(self.session_record()));
            }
        }
        if durable {
            self.core.session_store.sync(ops, true).await;
        } else {
            self.core.session_store.sync_later(ops);
        }
    }

    /// The connection is ending (before it leaves the router): a persistent session is
    /// parked with what the client had not acknowledged (at their slots: most are
    /// stored already), those in flight with DUP=1 and their packet ids, and the
    /// PUBRELs of the QoS 2 exchanges the client had not completed.
    pub(crate) async fn session_close(&mut self) {
        if !self.sess.start.persistent {
            if self.sess.saved {
                // A v5 DISCONNECT set the Session Expiry Interval to 0.
                self.core.session_store.discard(&self.s.router_key).await;
            }
            return;
        }
        let key = self.s.router_key.clone();
        let subs: Vec<SessionSubscription> = self.sess.subs.values().cloned().collect();
        self.core
            .session_store
            .begin_park(&key, &subs, self.sess.start.expiry_s);
        // Deliveries the router handed this link but the client never saw are owed the
        // way egress takes every delivery (QoS, No Local, expiry, Retain As Published);
        // their publishers stored them at the same slots.
        while let Some(Ok(Some(n))) = self.s.link_rx.next().now_or_never() {
            // A SUBACK among them is left alone: its subscription is not part of the
            // session parked above.
            if let Notification::Forward(f) = n {
                self.forward(f);
            }
        }
        if !self.core.session_store.durable_live() {
            // What was checked before parking but is still on its way through the router
            // is stored by no publisher, and this link will not see it.
            self.session_undelivered();
        }
        // With durable connected sessions, what the router still has for it is stored.
        self.sess.ledger = None;
        let mut rec = self.session_record();
        let owed = self.queue.take_unacked();
        rec.outbound_pubrels = owed.pubrels;
        let messages = owed
            .messages
            .into_iter()
            .map(|(slot, m)| {
                let slot = slot.unwrap_or_else(|| self.core.session_store.next_slot());
                (slot, m)
            })
            .collect();
        // Acknowledged since the last batch: removed first (once stored).
        let mut removed = std::mem::take(&mut self.queue.acked_seqs);
        removed.append(&mut self.queue.released_seqs);
        self.core.session_store.wait_written(&removed).await;
        self.core
            .session_store
            .finish_park(rec, removed, messages, &self.core.stats)
            .await;
    }
}
