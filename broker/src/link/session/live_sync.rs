//! A connected session kept in step: its subscriptions as SUBSCRIBEs and SUBACKs go by,
//! the deliveries the router still owes it (`ledger`, `owed`), its stored record and
//! queue written as the connection goes (`session_sync`), and parking it when the
//! connection ends (`session_close`).

use bytes::Bytes;
use fleetmq_storage::{QueueOp, SessionSubscription};
use rumqttd::protocol::{Filter, PublishProperties, SubAck};
use rumqttd::Notification;

use super::resume::{qos_of, subscription_of, RESUBSCRIBE_PKID, RETAIN_MARK};
use crate::link::codec::framing::Version;
use crate::link::codec::topic;
use crate::link::connection::outbound::OutMsg;
use crate::link::connection::Connection;
use crate::link::session::store;

impl Connection {
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
        if self.sess.pending_subs.is_empty() {
            // No SUBSCRIBE waits: an idle connection keeps no table for them.
            self.sess.pending_subs = Default::default();
        }
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
            self.sess.subs.insert(sub);
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
            && *self.sess.saved_qos2 == *self.inbound_qos2.ids()
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
            let changed = self.sess.subs_dirty || *self.sess.saved_qos2 != *self.inbound_qos2.ids();
            if changed || (durable_live && self.sess.saved_pubrels != pubrels) {
                // A new PUBREL must be on disk before it is sent; one completed may be
                // forgotten (sent again after a crash, answered with PUBCOMP).
                durable |= changed || pubrels.iter().any(|p| !self.sess.saved_pubrels.contains(p));
                self.sess.subs_dirty = false;
                *self.sess.saved_qos2 = self.inbound_qos2.ids().clone();
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
        while let Some(Ok(Some(n))) = self.s.link.try_next() {
            // A SUBACK among them is left alone: its subscription is not part of the
            // session parked above.
            if let Notification::Forward(f) = n {
                self.forward(f);
            }
        }
        // A device's: what the dispatcher queued for it.
        self.take_dispatched();
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
