//! Persistent MQTT sessions: the `sessions` table (session key → versioned
//! [`SessionRecord`]) and the `session_queue` table ((session key, sequence) →
//! versioned [`QueuedMessage`]), the QoS 1/2 messages kept for a session while its
//! client is away.
//!
//! A session key is the broker's router client id (`d:{device}` / `c:{client}`).
//! Sequence numbers grow per session, so a range scan returns a queue in arrival order.
//!
//! The records are versioned (`records`): older versions still decode, without what
//! later ones added.

mod records;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::Store;
use records::{decode_queued, decode_session, encode_queued, encode_session};

const SESSIONS_TABLE: &str = "sessions";
const QUEUE_TABLE: &str = "session_queue";

/// Session key → `StoredSession`.
pub(crate) const SESSIONS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(SESSIONS_TABLE);
/// (session key, sequence) → `StoredQueued`.
pub(crate) const QUEUE: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new(QUEUE_TABLE);

/// One subscription of a persistent session, with its MQTT 5 options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSubscription {
    pub filter: String,
    /// The granted maximum QoS.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// Retain Handling 0, 1 or 2.
    pub retain_handling: u8,
    /// The MQTT 5 Subscription Identifier it was made with (1..=268,435,455).
    pub id: Option<u32>,
}

/// The largest Subscription Identifier (a variable byte integer) [MQTT-3.8.2.1.2].
pub const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

/// What survives of a session while its client is disconnected (and across restarts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session key (router client id).
    pub key: String,
    /// The client id the client connected with.
    pub client_id: String,
    pub subscriptions: Vec<SessionSubscription>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires (3.1.1).
    pub expiry_s: u32,
    /// When the client left, unix ms; `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// Inbound QoS 2 packet ids answered with PUBREC and awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// Outbound QoS 2 packet ids released (PUBREC received, PUBREL sent) and awaiting
    /// the client's PUBCOMP, in the order they were sent.
    pub outbound_pubrels: Vec<u16>,
}

/// A QoS 1/2 message kept for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The delivery QoS (1 or 2): the lower of the publish and the subscription QoS.
    pub qos: u8,
    /// Whether it was sent before and must be re-sent with DUP=1.
    pub dup: bool,
    /// The RETAIN flag it is delivered with (Retain As Published, or a retained message
    /// sent at SUBSCRIBE that is re-sent).
    pub retain: bool,
    pub queued_at_ms: u64,
    /// When its MQTT 5 Message Expiry Interval runs out, unix ms [MQTT-3.3.2-5].
    pub expires_at_ms: Option<u64>,
    /// Its MQTT 5 PUBLISH properties for this session (none for 3.1.1 receivers).
    pub properties: MessageProperties,
    /// The packet id it was in flight with when the client left: it is re-sent on the
    /// same one [MQTT-4.4.0-1].
    pub pkid: Option<u16>,
}

/// The MQTT 5 PUBLISH properties a queued (or retained) message is delivered with,
/// besides the Message Expiry Interval (kept as an expiry time) and the Topic Alias (per
/// connection, never stored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    /// The publisher's user properties, in order [MQTT-3.3.2-18].
    pub user_properties: Vec<(String, String)>,
    /// The identifiers of the receiving session's subscriptions that matched
    /// [MQTT-3.3.4-3] (none for a retained message: they are the subscriber's).
    pub subscription_ids: Vec<u32>,
}

impl Store {
    /// Stores (or replaces) a session record, committed durably.
    pub fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let bytes = encode_session(s)?;
        self.write(|txn| {
            txn.open_table(SESSIONS)?
                .insert(s.key.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// The session stored under `key`, if any.
    pub fn get_session(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SESSIONS)?;
            match table.get(key)? {
                Some(v) => Ok(Some(decode_session(key, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Removes a session and its queue; whether there was a session.
    pub fn delete_session(&self, key: &str) -> Result<bool, StoreError> {
        self.write(|txn| {
            let existed = txn.open_table(SESSIONS)?.remove(key)?.is_some();
            let mut queue = txn.open_table(QUEUE)?;
            queue.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)?;
            Ok(existed)
        })
    }

    /// Every stored session. Undecodable records are skipped and logged, so one bad
    /// record cannot keep the broker from starting.
    pub fn list_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SESSIONS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                match decode_session(k.value(), v.value()) {
                    Ok(s) => out.push(s),
                    Err(error) => tracing::error!(%error, "skipping corrupt session"),
                }
            }
            Ok(out)
        })
    }

    /// Appends messages to session queues in one durable transaction. A queue longer
    /// than `max_per_session` loses its oldest messages; returns how many were dropped.
    /// Messages for sessions that no longer exist are not stored.
    pub fn enqueue(
        &self,
        batch: &[(String, QueuedMessage)],
        max_per_session: usize,
    ) -> Result<u64, StoreError> {
        self.write(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let mut queue = txn.open_table(QUEUE)?;
            let mut dropped = 0;
            for (key, msg) in batch {
                let key = key.as_str();
                if sessions.get(key)?.is_none() {
                    continue;
                }
                let last = queue
                    .range((key, 0)..=(key, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                let seq = last.map_or(0, |s| s + 1);
                queue.insert((key, seq), encode_queued(key, msg)?.as_slice())?;
                dropped += trim(&mut queue, key, max_per_session)?;
            }
            Ok(dropped)
        })
    }

    /// Puts messages into `key`'s queue ahead of its entries numbered past `after` (all
    /// of them for `None`), in one durable transaction: those are renumbered to follow.
    /// For a session being parked, whose publishers already queued what arrived after
    /// what its connection still owed. The queue is then cut to `max_per_session` as in
    /// [`Store::enqueue`]; returns how many were dropped. Nothing is stored for a session
    /// that no longer exists.
    pub fn enqueue_before(
        &self,
        key: &str,
        after: Option<u64>,
        msgs: &[QueuedMessage],
        max_per_session: usize,
    ) -> Result<u64, StoreError> {
        if msgs.is_empty() {
            return Ok(0);
        }
        self.write(|txn| {
            if txn.open_table(SESSIONS)?.get(key)?.is_none() {
                return Ok(0);
            }
            let mut queue = txn.open_table(QUEUE)?;
            let from = after.map_or(0, |a| a.saturating_add(1));
            let newer: Vec<(u64, Vec<u8>)> = queue
                .range((key, from)..=(key, u64::MAX))?
                .map(|e| e.map(|(k, v)| (k.value().1, v.value().to_vec())))
                .collect::<Result<_, _>>()?;
            let mut seq = newer.first().map_or_else(
                || -> Result<u64, StoreError> {
                    Ok(queue
                        .range((key, 0)..=(key, u64::MAX))?
                        .next_back()
                        .transpose()?
                        .map_or(0, |(k, _)| k.value().1 + 1))
                },
                |(first, _)| Ok(*first),
            )?;
            for (old, _) in &newer {
                queue.remove((key, *old))?;
            }
            for m in msgs {
                queue.insert((key, seq), encode_queued(key, m)?.as_slice())?;
                seq += 1;
            }
            for (_, bytes) in &newer {
                queue.insert((key, seq), bytes.as_slice())?;
                seq += 1;
            }
            trim(&mut queue, key, max_per_session)
        })
    }

    /// The sequence number of the newest entry of a session's queue (entries queued
    /// later get higher ones, as long as it is not emptied).
    pub fn last_queued_seq(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.read(|txn| {
            let queue = txn.open_table(QUEUE)?;
            let last = queue
                .range((key, 0)..=(key, u64::MAX))?
                .next_back()
                .transpose()?
                .map(|(k, _)| k.value().1);
            Ok(last)
        })
    }

    /// A session's queue in arrival order, with sequence numbers. Undecodable entries
    /// are skipped and logged.
    pub fn queued(&self, key: &str) -> Result<Vec<(u64, QueuedMessage)>, StoreError> {
        self.read(|txn| {
            let queue = txn.open_table(QUEUE)?;
            let mut out = Vec::new();
            for entry in queue.range((key, 0)..=(key, u64::MAX))? {
                let (k, v) = entry?;
                match decode_queued(key, v.value()) {
                    Ok(m) => out.push((k.value().1, m)),
                    Err(error) => tracing::error!(%error, "skipping corrupt queued message"),
                }
            }
            Ok(out)
        })
    }

    /// Marks queue entries as sent on these packet ids (with DUP=1 from now on); entries
    /// no longer queued are skipped.
    pub fn mark_sent(&self, key: &str, sent: &[(u64, u16)]) -> Result<(), StoreError> {
        if sent.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut queue = txn.open_table(QUEUE)?;
            for &(seq, pkid) in sent {
                let Some(bytes) = queue.get((key, seq))?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let mut m = decode_queued(key, &bytes)?;
                m.dup = true;
                m.pkid = Some(pkid);
                queue.insert((key, seq), encode_queued(key, &m)?.as_slice())?;
            }
            Ok(())
        })
    }

    /// Removes delivered messages from a session's queue.
    pub fn dequeue(&self, key: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut queue = txn.open_table(QUEUE)?;
            for &seq in seqs {
                queue.remove((key, seq))?;
            }
            Ok(())
        })
    }
}

/// Drops the oldest of `key`'s queue past `max_per_session`; how many.
fn trim(
    queue: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
    key: &str,
    max_per_session: usize,
) -> Result<u64, StoreError> {
    let len = queue.range((key, 0)..=(key, u64::MAX))?.count();
    let excess = len.saturating_sub(max_per_session);
    if excess == 0 {
        return Ok(0);
    }
    let oldest: Vec<u64> = queue
        .range((key, 0)..=(key, u64::MAX))?
        .take(excess)
        .map(|e| e.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for seq in &oldest {
        queue.remove((key, *seq))?;
    }
    Ok(oldest.len() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_support::temp_store;

    pub(crate) fn session() -> SessionRecord {
        SessionRecord {
            key: "c:sensor".into(),
            client_id: "sensor".into(),
            subscriptions: vec![SessionSubscription {
                filter: "a/+".into(),
                qos: 1,
                no_local: false,
                retain_as_published: true,
                retain_handling: 2,
                id: None,
            }],
            expiry_s: 300,
            disconnected_at_ms: Some(7),
            inbound_qos2: vec![3, 400],
            outbound_pubrels: Vec::new(),
        }
    }

    /// What V1 could hold.
    pub(crate) fn queued(payload: &[u8]) -> QueuedMessage {
        QueuedMessage {
            topic: "a/b".into(),
            payload: payload.to_vec(),
            qos: 2,
            dup: true,
            retain: false,
            queued_at_ms: 9,
            expires_at_ms: None,
            properties: MessageProperties::default(),
            pkid: None,
        }
    }

    /// Every V2 field set.
    pub(crate) fn queued_v5() -> QueuedMessage {
        QueuedMessage {
            retain: true,
            expires_at_ms: Some(2000),
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                content_type: Some("t".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(vec![0xc0]),
                user_properties: vec![("k".into(), "v".into())],
                subscription_ids: vec![42, 300],
            },
            ..queued(b"hi")
        }
    }

    #[test]
    fn queue_keeps_order_drops_oldest_marks_sent_and_goes_with_its_session() {
        let (_dir, store) = temp_store();
        assert_eq!(store.list_sessions().unwrap(), vec![]);
        assert_eq!(store.queued("c:sensor").unwrap(), vec![]);
        store.put_session(&session()).unwrap();
        let batch: Vec<_> = (0..5u8)
            .map(|i| ("c:sensor".to_owned(), queued(&[i])))
            .collect();
        let orphan = vec![("c:gone".to_owned(), queued(b"z"))];
        assert_eq!(store.enqueue(&orphan, 3).unwrap(), 0);
        assert_eq!(store.enqueue(&batch, 3).unwrap(), 2);
        let q = store.queued("c:sensor").unwrap();
        let payloads: Vec<_> = q.iter().map(|(_, m)| m.payload[0]).collect();
        assert_eq!(payloads, [2, 3, 4]);
        store.dequeue("c:sensor", &[q[0].0]).unwrap();
        // The entry that was in flight keeps its packet id; a gone entry is skipped.
        store
            .mark_sent("c:sensor", &[(q[1].0, 9), (q[0].0, 8)])
            .unwrap();
        let q = store.queued("c:sensor").unwrap();
        let sent: Vec<_> = q.iter().map(|(_, m)| (m.pkid, m.dup)).collect();
        assert_eq!(sent, [(Some(9), true), (None, true)]);
        assert_eq!(store.queued("c:gone").unwrap(), vec![]);
        assert_eq!(store.list_sessions().unwrap(), vec![session()]);
        assert!(store.delete_session("c:sensor").unwrap());
        assert_eq!(store.queued("c:sensor").unwrap(), vec![]);
        assert_eq!(store.get_session("c:sensor").unwrap(), None);
    }

    /// A parking connection's leftovers go ahead of what publishers queued meanwhile,
    /// behind what was stored before; then the oldest past the bound go.
    #[test]
    fn enqueue_before_puts_messages_ahead_of_newer_entries() {
        let (_dir, store) = temp_store();
        store.put_session(&session()).unwrap();
        let key = "c:sensor";
        let append = |p: u8| {
            store
                .enqueue(&[(key.to_owned(), queued(&[p]))], 100)
                .unwrap()
        };
        append(1);
        append(2);
        let stored = store.last_queued_seq(key).unwrap();
        assert_eq!(stored, store.queued(key).unwrap().last().map(|(s, _)| *s));
        append(7);
        append(8);
        let payloads = |store: &Store| -> Vec<u8> {
            store
                .queued(key)
                .unwrap()
                .iter()
                .map(|(_, m)| m.payload[0])
                .collect()
        };
        let leftovers = [queued(&[3]), queued(&[4])];
        assert_eq!(
            store.enqueue_before(key, stored, &leftovers, 100).unwrap(),
            0
        );
        assert_eq!(payloads(&store), [1, 2, 3, 4, 7, 8]);
        let seqs: Vec<u64> = store.queued(key).unwrap().iter().map(|(s, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        // Later appends still go last; nothing stored before: all of the queue is newer.
        append(9);
        assert_eq!(payloads(&store), [1, 2, 3, 4, 7, 8, 9]);
        assert_eq!(
            store.enqueue_before(key, None, &[queued(&[0])], 5).unwrap(),
            3
        );
        assert_eq!(payloads(&store), [3, 4, 7, 8, 9]);
        // An empty batch or a gone session stores nothing.
        assert_eq!(
            store.enqueue_before("c:gone", None, &leftovers, 5).unwrap(),
            0
        );
        assert_eq!(store.queued("c:gone").unwrap(), vec![]);
    }
}
