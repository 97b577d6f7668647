//! A connection's outbound queue: every PUBLISH the link owes its client, in the order it
//! must arrive — a resumed session's stored queue, retained messages for new
//! subscriptions, and live messages from the router (acknowledged to the router as soon
//! as they arrive, so its per-filter log never waits for a slow client and never skips
//! ahead of it). QoS 1/2 messages go out on packet ids of the link's own (1..=1000),
//! at most the client's Receive Maximum (and 100) at a time; the client's acks complete
//! them in any order. Past `mqtt.max_pending_messages` waiting messages the connection is
//! congested (`congestion.rs`).

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::Bytes;
use fleetmq_storage::{now_ms, QueuedMessage};
use rumqttd::protocol::{Packet, PubRel, PubRelReason, PublishProperties};
use tokio::time::Instant;

use crate::link::codec::framing::{self, PublishMeta};
use crate::link::codec::origin::remaining_expiry;
use crate::link::connection::Connection;
use crate::link::session::store;
use crate::stats::{DropCause, Stats};

/// Packet ids of the messages the link delivers (commands use 1001..).
const FIRST_PKID: u16 = 1;
const LAST_PKID: u16 = 1000;
/// QoS 1/2 messages in flight at once (the client's Receive Maximum may lower it).
const WINDOW: usize = 100;
/// Released QoS 2 exchanges of a resumed session taken back at most (their PUBRELs hold
/// packet ids until the PUBCOMPs).
const MAX_RELEASED: usize = 500;

/// An acknowledgement from the client of a PUBLISH the link sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names, reason = "the MQTT packet names")]
pub(crate) enum OutAck {
    /// Completes a QoS 1 delivery.
    PubAck,
    /// Answers a QoS 2 PUBLISH; one with an error code (`failed`) ends the exchange
    /// [MQTT-4.3.3], otherwise the link releases it with PUBREL.
    PubRec { failed: bool },
    /// Completes a released QoS 2 delivery.
    PubComp,
}

/// One PUBLISH owed to the client. The payload is plaintext: sealing happens when it is
/// written, so a parked session stores plaintext.
pub(crate) struct OutMsg {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) dup: bool,
    /// Its slot in the persistent session's redb queue (`session::store`): where it is
    /// stored, or would be should the session park before the client acknowledged it.
    /// QoS 1/2 messages of persistent sessions only.
    pub(crate) seq: Option<u64>,
    /// Whether a copy is stored at `seq` (to be removed when delivered).
    pub(crate) stored: bool,
    /// PUBLISH properties to send (v5 clients), without the Message Expiry Interval.
    pub(crate) props: Option<PublishProperties>,
    /// When the message expires (unix ms): dropped if still waiting then; otherwise it is
    /// sent with the seconds left.
    pub(crate) expires_at_ms: Option<u64>,
    /// The read ACL was checked when it was queued (live messages).
    pub(crate) read_checked: bool,
    /// The packet id it was in flight with before the client reconnected.
    pub(crate) pkid: Option<u16>,
}

impl OutMsg {
    /// A stored or retained message (read ACL checked when written).
    pub(crate) fn plain(topic: String, payload: Bytes, qos: u8) -> OutMsg {
        OutMsg {
            topic,
            payload,
            qos,
            retain: false,
            dup: false,
            seq: None,
            stored: false,
            props: None,
            expires_at_ms: None,
            read_checked: false,
            pkid: None,
        }
    }

    /// Its slot, if a copy is stored there.
    fn stored_seq(&self) -> Option<u64> {
        self.seq.filter(|_| self.stored)
    }

    /// As a parked session's queue keeps it, with its v5 properties and expiry time, and
    /// the packet id it was in flight with; and its slot.
    fn queued(self, dup: bool, pkid: Option<u16>) -> (Option<u64>, QueuedMessage) {
        let now = now_ms();
        let (properties, _) = store::stored_properties(self.props.as_ref(), now);
        let msg = QueuedMessage {
            topic: self.topic,
            payload: self.payload.to_vec(),
            qos: self.qos,
            dup,
            retain: self.retain,
            queued_at_ms: now,
            expires_at_ms: self.expires_at_ms,
            properties,
            pkid,
        };
        (self.seq, msg)
    }
}

/// What a leaving client was owed (see [`Outbound::take_unacked`]).
pub(crate) struct Owed {
    /// Messages the session's queue must hold, in send order, with their slots (those
    /// that were in flight with DUP and their packet ids).
    pub(crate) messages: Vec<(Option<u64>, QueuedMessage)>,
    /// Packet ids of QoS 2 exchanges waiting for the client's PUBCOMP, in send order.
    pub(crate) pubrels: Vec<u16>,
}

struct Inflight {
    msg: OutMsg,
    /// QoS 2: PUBREC received, PUBREL sent.
    released: bool,
    /// Send order (packet ids wrap).
    order: u64,
}

/// Per-connection outbound state.
pub(crate) struct Outbound {
    pending: VecDeque<OutMsg>,
    inflight: BTreeMap<u16, Inflight>,
    /// Packet ids of waiting re-sends, which new messages do not take.
    reserved: crate::link::lazy::Lazy<HashSet<u16>>,
    next_pkid: u16,
    next_order: u64,
    max_pending: usize,
    /// Queue slots delivered (QoS 0 written, QoS 1 acked, dropped): removed from the
    /// stored queue after the batch, without waiting for the disk (a crash may deliver
    /// them again, which at-least-once allows).
    pub(crate) acked_seqs: Vec<u64>,
    /// QoS 2 slots PUBREC'd: removed, and their PUBREL recorded, durably before the
    /// PUBRELs go out, so a client that completed one never gets it again.
    pub(crate) released_seqs: Vec<u64>,
    /// QoS 2 slots written on a packet id they were not stored with: recorded durably
    /// before the PUBLISH goes out, so a re-send after a crash uses the same id with
    /// DUP=1 [MQTT-4.4.0-1] and the client's QoS 2 state recognises it.
    pub(crate) sent_marks: Vec<(u64, u16)>,
    /// Registered in `Core::congestion`.
    congested: bool,
    /// The client's last ack of a message (or when congestion began).
    progress_at: Instant,
}

impl Outbound {
    /// Frees the room of what is empty: reserved ids, the queue, the slot lists.
    pub(crate) fn settle(&mut self) {
        use crate::link::lazy::{release, release_deque};
        self.reserved.settle();
        release_deque(&mut self.pending);
        release(&mut self.acked_seqs);
        release(&mut self.released_seqs);
        release(&mut self.sent_marks);
    }

    pub(crate) fn new(max_pending: usize) -> Outbound {
        Outbound {
            pending: VecDeque::new(),
            inflight: BTreeMap::new(),
            reserved: Default::default(),
            next_pkid: FIRST_PKID,
            next_order: 0,
            max_pending,
            acked_seqs: Vec::new(),
            released_seqs: Vec::new(),
            sent_marks: Vec::new(),
            congested: false,
            progress_at: Instant::now(),
        }
    }

    /// A resumed session's QoS 2 exchange that was released before the client left: its
    /// PUBREL is sent again first [MQTT-4.4.0-1], and the packet id stays taken until
    /// the PUBCOMP.
    pub(crate) fn released(&mut self, pkid: u16) -> bool {
        if !(FIRST_PKID..=LAST_PKID).contains(&pkid)
            || self.inflight.contains_key(&pkid)
            || self.inflight.len() >= MAX_RELEASED
        {
            return false;
        }
        let order = self.next_order;
        self.next_order += 1;
        let mut msg = OutMsg::plain(String::new(), Bytes::new(), 2);
        msg.read_checked = true;
        self.inflight.insert(
            pkid,
            Inflight {
                msg,
                released: true,
                order,
            },
        );
        true
    }

    /// Queues a message that must not be dropped (stored, retained); a re-send's packet
    /// id is kept for it.
    pub(crate) fn push(&mut self, msg: OutMsg) {
        if let Some(pkid) = msg.pkid {
            self.reserved.insert(pkid);
        }
        self.pending.push_back(msg);
    }

    /// Packet ids of the QoS 2 exchanges waiting for the client's PUBCOMP, in send order.
    pub(crate) fn pubrels(&self) -> Vec<u16> {
        let mut released: Vec<(u64, u16)> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.released)
            .map(|(&pkid, i)| (i.order, pkid))
            .collect();
        released.sort_unstable();
        released.into_iter().map(|(_, pkid)| pkid).collect()
    }

    /// Messages written and not completed (released QoS 2 exchanges included).
    pub(crate) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Messages not written yet.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// QoS 1/2 messages the client has not completed, or not been sent yet.
    pub(crate) fn owed(&self) -> usize {
        let waiting = self.pending.iter().filter(|m| m.qos > 0).count();
        let inflight = self.inflight.values().filter(|i| !i.released).count();
        waiting + inflight
    }

    /// What a leaving persistent session still owes its client, in send order: messages
    /// written and not acknowledged (DUP, with their packet ids), then those not written
    /// yet; and the packet ids of released QoS 2 exchanges.
    pub(crate) fn take_unacked(&mut self) -> Owed {
        let mut inflight = Vec::new();
        let mut pubrels = Vec::new();
        for (pkid, i) in std::mem::take(&mut self.inflight) {
            if i.released {
                pubrels.push((i.order, pkid));
            } else if i.msg.qos > 0 {
                inflight.push((pkid, i));
            }
        }
        inflight.sort_by_key(|(_, i)| i.order);
        let mut out: Vec<(Option<u64>, QueuedMessage)> = inflight
            .into_iter()
            .map(|(pkid, i)| i.msg.queued(true, Some(pkid)))
            .collect();
        self.reserved.clear();
        for m in std::mem::take(&mut self.pending) {
            if m.qos > 0 {
                let (dup, pkid) = (m.dup, m.pkid);
                out.push(m.queued(dup, pkid));
            }
        }
        pubrels.sort_unstable();
        Owed {
            messages: out,
            pubrels: pubrels.into_iter().map(|(_, pkid)| pkid).collect(),
        }
    }

    /// Whether nothing waits to be written (in flight ones may still await their ack).
    pub(crate) fn nothing_waiting(&self) -> bool {
        self.pending.is_empty()
    }

    /// When a congested connection that made no progress is cut.
    pub(crate) fn stuck_deadline(&self, timeout: std::time::Duration) -> Option<Instant> {
        self.congested.then(|| self.progress_at + timeout)
    }

    /// A packet id neither in flight nor kept for a waiting re-send; should every free id
    /// be kept, one is given up (that re-send then gets a new id if its own is taken).
    /// Fewer than `LAST_PKID` are ever in flight (`WINDOW` plus `MAX_RELEASED`).
    fn next_pkid(&mut self) -> u16 {
        let mut fallback = None;
        for _ in FIRST_PKID..=LAST_PKID {
            let pkid = self.next_pkid;
            self.next_pkid = if pkid >= LAST_PKID {
                FIRST_PKID
            } else {
                pkid + 1
            };
            if self.inflight.contains_key(&pkid) {
                continue;
            }
            if !self.reserved.contains(&pkid) {
                return pkid;
            }
            fallback.get_or_insert(pkid);
        }
        debug_assert!(fallback.is_some(), "every packet id in flight");
        let pkid = fallback.unwrap_or(FIRST_PKID);
        self.reserved.remove(&pkid);
        pkid
    }
}

impl Connection {
    /// Queues a live message; a QoS 0 one past the pending limit is dropped and counted
    /// (QoS 1/2 ones are held back at their publishers instead, see `congestion.rs`).
    pub(crate) fn push_live(&mut self, msg: OutMsg) {
        if msg.qos == 0 && self.queue.pending.len() >= self.queue.max_pending {
            self.dropped(DropCause::SlowConsumer);
            return;
        }
        self.queue.pending.push_back(msg);
    }

    /// Writes from the head of the queue what the window allows: QoS 0 at once, QoS 1/2
    /// while fewer than the window are in flight. Nothing overtakes a waiting message.
    pub(crate) fn fill_out(&mut self) {
        let window = self.flow.receive_max().min(WINDOW);
        while let Some(head) = self.queue.pending.front() {
            if head.qos > 0 && self.queue.inflight.len() >= window {
                return;
            }
            let Some(msg) = self.queue.pending.pop_front() else {
                return;
            };
            if msg.qos == 0 {
                self.write_out(&msg, 0);
                self.queue.acked_seqs.extend(msg.stored_seq());
                continue;
            }
            // A re-send keeps its packet id [MQTT-4.4.0-1] unless that id is taken.
            if let Some(p) = msg.pkid {
                self.queue.reserved.remove(&p);
            }
            let pkid = match msg.pkid {
                Some(p)
                    if (FIRST_PKID..=LAST_PKID).contains(&p)
                        && !self.queue.inflight.contains_key(&p) =>
                {
                    p
                }
                _ => self.queue.next_pkid(),
            };
            if self.write_out(&msg, pkid) {
                if let (2, Some(seq), false) = (msg.qos, msg.stored_seq(), msg.pkid == Some(pkid)) {
                    self.queue.sent_marks.push((seq, pkid));
                }
                let order = self.queue.next_order;
                self.queue.next_order += 1;
                let inflight = Inflight {
                    msg,
                    released: false,
                    order,
                };
                self.queue.inflight.insert(pkid, inflight);
            } else {
                self.queue.acked_seqs.extend(msg.stored_seq());
            }
        }
    }

    /// Writes one message after the read ACL (unless checked when queued), its expiry,
    /// sealing and the client's Maximum Packet Size; false if it was dropped.
    fn write_out(&mut self, msg: &OutMsg, pkid: u16) -> bool {
        if !msg.read_checked && !self.s.principal.may_read(&msg.topic) {
            self.dropped(DropCause::AclDelivery);
            return false;
        }
        let mut props = msg.props.clone();
        if let Some(at) = msg.expires_at_ms {
            let Some(left) = remaining_expiry(at, now_ms()) else {
                // [MQTT-3.3.2-5]
                self.dropped(DropCause::Expired);
                return false;
            };
            props
                .get_or_insert_with(PublishProperties::default)
                .message_expiry_interval = Some(left);
        }
        let payload = match self.crypto.as_mut() {
            Some(crypto) => match crypto.seal(&msg.topic, &msg.payload) {
                Ok(sealed) => Bytes::from(sealed),
                Err(e) => {
                    self.dropped(DropCause::EncryptFailed);
                    tracing::warn!(client_id = %self.s.client_id, topic = msg.topic, error = %e, "cannot encrypt for device");
                    return false;
                }
            },
            None => msg.payload.clone(),
        };
        let meta = PublishMeta {
            qos: msg.qos,
            dup: msg.dup,
            retain: msg.retain,
            pkid,
        };
        // A repeated topic goes by its alias (v5 clients that accept them); a re-send
        // (DUP) names it in full.
        let named = self.out_aliases.choose(&msg.topic, msg.dup);
        if let Some(alias) = named.alias() {
            props
                .get_or_insert_with(PublishProperties::default)
                .topic_alias = Some(alias);
        }
        let publish = framing::build_publish(meta, named.topic(&msg.topic), &payload);
        let packet = Packet::Publish(publish, props);
        if let Some(max) = self.flow.max_packet() {
            let mut probe = bytes::BytesMut::new();
            let fits = framing::encode(self.s.version, packet.clone(), &mut probe).is_ok()
                && probe.len() <= max;
            if !fits {
                // Discarded as if delivered [MQTT-3.1.2-25].
                self.dropped(DropCause::Limit);
                return false;
            }
        }
        self.write_packet(packet);
        self.out_aliases.written(&msg.topic, named);
        Stats::add(&self.core.stats.sent, 1);
        true
    }

    /// A PUBACK/PUBREC/PUBCOMP from the client. False if `pkid` is not one of the
    /// link's delivery ids.
    pub(crate) fn out_ack(&mut self, ack: OutAck, pkid: u16) -> bool {
        if !(FIRST_PKID..=LAST_PKID).contains(&pkid) {
            return false;
        }
        let Some(inflight) = self.queue.inflight.get_mut(&pkid) else {
            tracing::debug!(client_id = %self.s.client_id, pkid, "ack for nothing in flight ignored");
            return true;
        };
        let done = match (ack, inflight.msg.qos, inflight.released) {
            (OutAck::PubAck, 1, _) | (OutAck::PubComp, 2, true) => true,
            (OutAck::PubRec { failed: true }, 2, false) => true,
            (OutAck::PubRec { failed: false }, 2, false) => {
                inflight.released = true;
                self.queue.released_seqs.extend(inflight.msg.stored_seq());
                inflight.msg.seq = None;
                self.write_packet(Packet::PubRel(
                    PubRel {
                        pkid,
                        reason: PubRelReason::Success,
                    },
                    None,
                ));
                self.queue.progress_at = Instant::now();
                false
            }
            _ => false,
        };
        if done {
            if let Some(i) = self.queue.inflight.remove(&pkid) {
                self.queue.acked_seqs.extend(i.msg.stored_seq());
            }
            self.queue.progress_at = Instant::now();
            self.fill_out();
        }
        true
    }

    /// After a batch: enters or leaves the congestion registry by the queue's length.
    ///
    /// The queue may overshoot the bound by what publishers had already routed when
    /// congestion began (each one stops at its next QoS 1/2 PUBLISH), by the broker's own
    /// publishes and by the connection's own (never paused); a connection that stops
    /// acknowledging is cut after `mqtt.slow_consumer_timeout_s` in any case.
    pub(crate) fn update_congestion(&mut self) {
        let waiting = self.queue.pending.len();
        let max = self.queue.max_pending;
        if !self.queue.congested && waiting > max {
            self.queue.congested = true;
            self.queue.progress_at = Instant::now();
            let filters = self.subs.qos_filters();
            self.core.congestion.enter(self.s.conn_id, filters);
            tracing::debug!(client_id = %self.s.client_id, waiting, "congested: pausing its publishers");
        } else if self.queue.congested && waiting <= max / 2 {
            self.queue.congested = false;
            self.core.congestion.leave(self.s.conn_id);
            tracing::debug!(client_id = %self.s.client_id, waiting, "drained: publishers resume");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resend(pkid: u16) -> OutMsg {
        let mut m = OutMsg::plain("t".into(), Bytes::new(), 1);
        m.pkid = Some(pkid);
        m
    }

    /// A message that was never in flight does not take the id of a waiting re-send
    /// (a publisher may queue one ahead of them in the parking window), nor that of a
    /// pending PUBREL; with every free id kept, one is given up.
    #[test]
    fn fresh_ids_skip_reserved_and_released_ones() {
        let mut q = Outbound::new(10);
        assert!(q.released(1));
        q.push(resend(2));
        q.push(resend(4));
        assert_eq!([q.next_pkid(), q.next_pkid()], [3, 5]);
        assert_eq!(q.pubrels(), [1]);
        let mut q = Outbound::new(10);
        for pkid in FIRST_PKID..=LAST_PKID {
            q.push(resend(pkid));
        }
        let given_up = q.next_pkid();
        assert!(!q.reserved.contains(&given_up));
        // Parking keeps each waiting re-send's id with it.
        let owed = q.take_unacked();
        assert!(q.reserved.is_empty());
        assert_eq!(owed.messages[1].1.pkid, Some(2));
    }
}
