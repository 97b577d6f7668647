//! The session check: every QoS 1/2 publish is numbered (its arrival number, its slot
//! in session queues), recorded in the ledgers of the connected persistent sessions it
//! matches, and copied for every persistent session, connected or parked, whose
//! subscriptions take it; the copies are written before the message is routed. See
//! `session::store` for the design.

use std::sync::Arc;

use fleetmq_storage::{now_ms, QueueOp, QueuedMessage, SessionSubscription};

use super::{count_dropped, lock, queues, stored_properties, SessionStore, SharedSet};
use crate::link::codec::origin::{Routed, Routing};
use crate::link::codec::topic;
use crate::stats::Stats;

/// A publisher's copies for sessions, checked (numbered) but not written yet: ingress
/// collects those of a whole read batch and writes them in one request before the batch
/// goes to the router. The sessions count them as being written until they are, or
/// until this is dropped.
#[derive(Default)]
pub(crate) struct Copies {
    ops: Vec<QueueOp>,
    keys: Vec<String>,
    /// Arrival numbers with copies for connected sessions (see `ParkedSet::unwritten`).
    slots: Vec<u64>,
    set: Option<(SharedSet, Arc<tokio::sync::Notify>)>,
}

crate::link::lazy::idle!(Copies, |c| c.ops.is_empty()
    && c.keys.is_empty()
    && c.slots.is_empty()
    && c.set.is_none());

impl Copies {
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        let Some((set, written)) = self.set.take() else {
            return;
        };
        if self.keys.is_empty() {
            return;
        }
        let mut set = lock(&set);
        for slot in &self.slots {
            set.unwritten.remove(slot);
        }
        for key in &self.keys {
            if let Some(n) = set.writing.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    set.writing.remove(key);
                }
            }
        }
        drop(set);
        written.notify_waiters();
    }
}

/// A publish as the session check sees it.
pub(crate) struct Incoming<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// The publishing connection (0: the broker itself).
    pub(crate) conn_id: u64,
}

/// Whether a session with these subscriptions gets a QoS 1/2 message on `topic_name`
/// queued (a matching non-shared subscription above QoS 0).
pub(crate) fn takes(subs: &[SessionSubscription], topic_name: &str) -> bool {
    subs.iter()
        .any(|s| queues(s) && s.qos > 0 && topic::matches(&s.filter, topic_name))
}

/// The copy of `base` for a session with `subs`, if one of them takes it: QoS capped by
/// the best matching subscription, RETAIN kept only for Retain As Published, the
/// identifiers of every matching subscription [MQTT-3.3.4-3] [MQTT-3.3.4-5]. `own`: the
/// session's connection published it, so No Local subscriptions do not take it
/// [MQTT-3.8.3-3].
/// The sessions whose filters in `index` match `topic` (none when there are no sessions).
fn keys_matching(index: &super::FilterIndex, no_sessions: bool, topic: &str) -> Vec<String> {
    if no_sessions {
        return Vec::new();
    }
    index
        .matching(topic)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The copies for connected persistent sessions (`keys`), at slot `arrival`; a message
/// their publisher (`conn_id`) sent comes back only where No Local allows.
fn copy_to_live(
    set: &mut super::ParkedSet,
    keys: Vec<String>,
    base: &QueuedMessage,
    conn_id: u64,
    arrival: u64,
    copies: &mut Copies,
) {
    let before = copies.ops.len();
    for key in keys {
        let Some(live) = set.live.get(&key) else {
            continue;
        };
        let own = conn_id != 0 && conn_id == live.conn_id;
        if let Some(msg) = copy_for(&live.subscriptions, base, own) {
            copies.ops.push(QueueOp::Insert {
                key,
                seq: arrival,
                msg,
                trim: false,
            });
        }
    }
    if copies.ops.len() > before {
        // A SUBACK may hand it to its client from the ledger before it is written.
        set.unwritten.insert(arrival);
        copies.slots.push(arrival);
    }
}

fn copy_for(
    subs: &[SessionSubscription],
    base: &QueuedMessage,
    own: bool,
) -> Option<QueuedMessage> {
    let matching: Vec<&SessionSubscription> = subs
        .iter()
        .filter(|s| queues(s) && !(own && s.no_local) && topic::matches(&s.filter, &base.topic))
        .collect();
    let granted = matching.iter().map(|s| s.qos).max()?;
    let qos = base.qos.min(granted);
    if qos == 0 {
        return None;
    }
    let mut ids: Vec<u32> = matching.iter().filter_map(|s| s.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut msg = base.clone();
    msg.qos = qos;
    msg.retain = base.retain && matching.iter().any(|s| s.retain_as_published);
    msg.properties.subscription_ids = ids;
    Some(msg)
}

impl SessionStore {
    /// Writes a QoS 1/2 publish to the queue of every session, parked or connected, with
    /// a matching subscription, durably, and records it in the ledger of every connected
    /// one it matches. Returns when committed, with the routed PUBLISH, its header
    /// numbered (QoS 0 is never queued nor numbered).
    pub(crate) async fn enqueue_matching(
        &self,
        m: Incoming<'_>,
        routing: Routing,
        stats: &Stats,
    ) -> Routed {
        let mut copies = Copies::default();
        let routed = self.check(&m, routing, &mut copies);
        self.write_copies(copies, stats).await;
        routed
    }

    /// Writes the copies [`SessionStore::check`] collected, in one durable request.
    pub(crate) async fn write_copies(&self, mut copies: Copies, stats: &Stats) {
        let ops = std::mem::take(&mut copies.ops);
        if !ops.is_empty() {
            match self.writer.write(ops, true).await {
                Ok(dropped) => count_dropped(stats, dropped),
                Err(e) => tracing::error!(error = %e, "could not queue a message for a session"),
            }
        }
        drop(copies);
    }

    /// Numbers a QoS 1/2 publish, records it for each connected session that takes it
    /// and adds its copy for each session, connected or parked, to `copies` (written by
    /// [`SessionStore::write_copies`] before the message is routed); only sessions whose
    /// filters can match are looked at. QoS 0 is neither numbered nor stored.
    pub(crate) fn check(&self, m: &Incoming<'_>, routing: Routing, copies: &mut Copies) -> Routed {
        if m.qos == 0 {
            return routing.finish(None);
        }
        let mut guard = self.parked();
        let set = &mut *guard;
        let arrival = set.next_arrival;
        set.next_arrival += 1;
        let routed = routing.finish(Some(arrival));
        let live_keys = keys_matching(&set.live_index, set.live.is_empty(), m.topic);
        let parked_keys = keys_matching(&set.index, set.sessions.is_empty(), m.topic);
        // Only subscriptions that take QoS 1/2 copies are in the live index.
        for key in &live_keys {
            if let Some(live) = set.live.get(key) {
                live.ledger.lock().record(arrival, routed.clone());
            }
        }
        let live_keys = if self.durable_live {
            live_keys
        } else {
            Vec::new()
        };
        if live_keys.is_empty() && parked_keys.is_empty() {
            return routed;
        }
        let now = now_ms();
        // The routed properties: the publisher's, with fleetmq's retain mark, which
        // the stored copy leaves out.
        let (properties, expires_at_ms) = stored_properties(routed.1.as_ref(), now);
        let base = QueuedMessage {
            topic: m.topic.to_owned(),
            payload: m.payload.to_vec(),
            qos: m.qos,
            dup: false,
            retain: m.retain,
            queued_at_ms: now,
            expires_at_ms,
            properties,
            pkid: None,
        };
        let before = copies.ops.len();
        copy_to_live(set, live_keys, &base, m.conn_id, arrival, copies);
        for key in parked_keys {
            let Some(p) = set.sessions.get(&key) else {
                continue;
            };
            if let Some(msg) = copy_for(&p.subscriptions, &base, false) {
                copies.ops.push(QueueOp::Insert {
                    key,
                    seq: arrival,
                    msg,
                    trim: true,
                });
            }
        }
        self.count_writing(set, copies, before);
        routed
    }

    /// The copies pushed from `before` on are being written: counted per session (a
    /// session that parks waits for them), and the batch remembers where to report.
    fn count_writing(&self, set: &mut super::ParkedSet, copies: &mut Copies, before: usize) {
        for op in &copies.ops[before..] {
            if let QueueOp::Insert { key, .. } = op {
                *set.writing.entry(key.clone()).or_default() += 1;
                copies.keys.push(key.clone());
            }
        }
        if copies.set.is_none() && copies.ops.len() > before {
            copies.set = Some((self.parked.clone(), self.written.clone()));
        }
    }
}
