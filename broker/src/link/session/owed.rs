//! What a connected persistent session is owed, as its connection sees it: the router's
//! deliveries against the session's ledger (`session::ledger`), around SUBSCRIBEs and at
//! parking. See `session::store` ("Parking and the resume window", "Subscribing") for the design.
//!
//! A subscription of a connected persistent session takes effect at its *mark*: the
//! arrival counter when its filter entered the session's ledger trie, which is done
//! before the SUBSCRIBE is forwarded to the router. A QoS 1/2 message numbered at or past
//! the mark is owed and recorded; one numbered below it is not. The router has its own
//! idea (rumqttd starts a new subscription at the end of the filter's log, so it delivers
//! what it routes after the SUBSCRIBE), and the two are reconciled on both sides:
//! - a router delivery numbered below the mark of every subscription that takes it is
//!   left out (it was published before the subscription, by fleetmq's order);
//! - when the SUBACK reaches the link, whatever the ledger still holds that only the
//!   answered subscriptions take, and that no subscription answered before it was
//!   checked guarantees, may have been routed before the SUBSCRIBE and then never comes:
//!   the link delivers it from the ledger right away, in arrival order, and leaves out
//!   the router's copy should one still come.

use std::collections::{BTreeSet, HashMap};

use fleetmq_storage::SessionSubscription;
use rumqttd::protocol::{Publish, PublishProperties};

use crate::link::codec::origin::Origin;
use crate::link::codec::topic;
use crate::link::connection::Connection;
use crate::link::session::store;

/// When a connected persistent session's subscription took effect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marks {
    /// The arrival counter when its filter entered the ledger trie (before the
    /// SUBSCRIBE went to the router): messages numbered from here on are owed.
    pub(crate) since: u64,
    /// The arrival counter when its SUBACK reached the link: messages numbered from
    /// here on were routed after the SUBSCRIBE, so the router delivers them.
    pub(crate) acked: u64,
}

/// The link's side of a connected persistent session's ledger.
#[derive(Default)]
pub(crate) struct OwedState {
    /// Answered subscriptions (by filter).
    pub(crate) marks: HashMap<String, Marks>,
    /// Mark of each SUBSCRIBE the router has not answered, by packet id.
    pub(crate) pending_since: HashMap<u16, u64>,
    /// The filters of each resumed session's re-subscribe (packet id 0), in the order
    /// they were sent, with the mark they took effect at.
    pub(crate) resubscribing: std::collections::VecDeque<(Vec<String>, u64)>,
    /// Delivered from the ledger at a SUBACK; the router's copy is left out.
    pub(crate) pre_delivered: BTreeSet<u64>,
    /// The highest `since` of any answered subscription: a delivery numbered at or past
    /// it is never left out for having come too early (checked once per delivery).
    pub(crate) max_since: u64,
}

crate::link::lazy::idle!(OwedState, |o| o.marks.is_empty()
    && o.pending_since.is_empty()
    && o.resubscribing.is_empty()
    && o.pre_delivered.is_empty()
    && o.max_since == 0);

impl Connection {
    /// The session's subscriptions including those whose SUBSCRIBE the router has not
    /// answered: what the ledger records for.
    pub(crate) fn owed_subscriptions(&self) -> Vec<SessionSubscription> {
        let mut all: HashMap<&str, &SessionSubscription> = self
            .sess
            .subs
            .values()
            .map(|s| (s.filter.as_str(), s))
            .collect();
        for pending in self.sess.pending_subs.values() {
            for (s, _) in pending {
                all.insert(s.filter.as_str(), s);
            }
        }
        all.into_values().cloned().collect()
    }

    /// A SUBSCRIBE (`pkid`) is about to go to the router: its filters record from now on.
    pub(crate) fn owed_subscribing(&mut self, pkid: u16) {
        if self.sess.ledger.is_none() {
            return;
        }
        let subs = self.owed_subscriptions();
        let since = self
            .core
            .session_store
            .live_subscriptions(&self.s.router_key, &subs);
        self.sess.owed.pending_since.insert(pkid, since);
    }

    /// The router answered a SUBSCRIBE of `filters` that took effect at `since`.
    pub(crate) fn owed_subacked(&mut self, filters: Vec<String>, since: u64) {
        let Some(ledger) = self.sess.ledger.clone() else {
            return;
        };
        let subs = self.owed_subscriptions();
        self.core
            .session_store
            .live_subscriptions(&self.s.router_key, &subs);
        let acked = self.core.session_store.arrival_mark();
        for f in &filters {
            self.sess
                .owed
                .marks
                .insert(f.clone(), Marks { since, acked });
        }
        self.sess.owed.max_since = self.sess.owed.max_since.max(since);
        let owed = {
            let mut l = ledger.lock();
            l.delivered(self.sess.delivered.drain(..));
            // A filter the router refused records nothing more (nor keeps it stored).
            let refused = l.retain_topics(|t| store::takes(&subs, t));
            if self.core.session_store.durable_live() {
                self.queue.acked_seqs.extend(refused);
            }
            let marks = &self.sess.owed.marks;
            let established: Vec<&SessionSubscription> = self
                .sess
                .subs
                .values()
                .filter(|s| !filters.contains(&s.filter))
                .collect();
            l.take_where(|arrival, t| {
                filters
                    .iter()
                    .any(|f| !topic::is_shared(f) && topic::matches(f, t))
                    && !established.iter().any(|s| {
                        s.qos > 0
                            && !topic::is_shared(&s.filter)
                            && marks.get(&s.filter).is_some_and(|m| m.acked <= arrival)
                            && topic::matches(&s.filter, t)
                    })
            })
        };
        for (publish, props) in owed {
            if let Some(arrival) = self.deliver_owed(publish, props) {
                self.sess.owed.pre_delivered.insert(arrival);
            }
        }
        // Kept to the ledger's own bound (what was flushed came out of it); past it the
        // oldest go, and a late router copy of one of those would be delivered twice.
        let cap = ledger.lock().cap();
        while self.sess.owed.pre_delivered.len() > cap {
            self.sess.owed.pre_delivered.pop_first();
        }
    }

    /// Whether the router's delivery numbered `arrival` on `topic_name` is not for the
    /// client: the ledger gave it already, or it was checked before every subscription
    /// that takes it took effect.
    pub(crate) fn owed_left_out(&mut self, arrival: u64, topic_name: &str) -> bool {
        let owed = &mut self.sess.owed;
        if !owed.pre_delivered.is_empty() && owed.pre_delivered.remove(&arrival) {
            return true;
        }
        if arrival >= owed.max_since {
            return false;
        }
        let mut matching = self
            .sess
            .subs
            .values()
            .filter(|s| {
                topic::matches(
                    topic::split_shared(&s.filter).map_or(&s.filter, |(_, f)| f),
                    topic_name,
                )
            })
            .peekable();
        if matching.peek().is_none() {
            return false;
        }
        let marks = &self.sess.owed.marks;
        matching.all(|s| {
            !topic::is_shared(&s.filter) && marks.get(&s.filter).is_some_and(|m| m.since > arrival)
        })
    }

    /// A message from the ledger joins the outbound queue as the router would have
    /// delivered it: at the best matching subscription's QoS, with the identifiers of
    /// the matching ones. Returns its arrival number.
    pub(crate) fn deliver_owed(
        &mut self,
        publish: Publish,
        mut props: Option<PublishProperties>,
    ) -> Option<u64> {
        let topic_name = std::str::from_utf8(&publish.topic).ok()?;
        let mut payload = publish.payload.clone();
        let arrival = Origin::take(&mut payload).and_then(|o| o.arrival);
        let matching: Vec<&SessionSubscription> = self
            .sess
            .subs
            .values()
            .filter(|s| !topic::is_shared(&s.filter) && topic::matches(&s.filter, topic_name))
            .collect();
        let qos = matching.iter().map(|s| s.qos).max()?;
        let mut ids: Vec<usize> = matching
            .iter()
            .filter_map(|s| s.id.map(|id| id as usize))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            props
                .get_or_insert_with(PublishProperties::default)
                .subscription_identifiers = ids;
        }
        self.deliver(
            publish,
            props,
            qos,
            crate::link::connection::egress::Source::Ledger,
        );
        arrival
    }
}
