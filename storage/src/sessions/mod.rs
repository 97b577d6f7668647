//! Persistent MQTT sessions: the `sessions` table (session key → versioned
//! [`SessionRecord`]) and the `session_queue` table ((session key, sequence) →
//! versioned [`QueuedMessage`]), the QoS 1/2 messages kept for a session while its
//! client is away.
//!
//! A session key is the broker's router client id (`d:{device}`, `s:{service}:{client}`,
//! `a:{client}`; `c:{client}` from earlier builds).
//! Sequence numbers grow per session, so a range scan returns a queue in arrival order.
//!
//! The records are versioned (`records`): older versions still decode, without what
//! later ones added.

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod records;

use std::collections::HashMap;

use redb::ReadableTable;

use crate::error::StoreError;
use crate::model::MessageProperties;
use crate::schema::{SESSIONS, SESSION_QUEUE as QUEUE};
use crate::store::Store;
use records::{decode_queued, decode_session, encode_queued, encode_session};

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

/// One change of a session's queue or record, applied with others in one transaction
/// by [`Store::apply_queue_ops`]. Queue entries are numbered by the broker (by arrival,
/// so one message has one slot per session and writing it twice stores it once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueOp {
    /// Stores (or replaces) a session record.
    PutSession(SessionRecord),
    /// A publisher's copy, at its slot. `trim` (a parked session's copy): unless the slot
    /// is taken (the session's parking connection wrote it first, with what it knew of
    /// it), and the queue is cut to its bound afterwards. A connected session's copy
    /// (`trim` false) is at a fresh slot; its queue is cut when it parks.
    Insert {
        key: String,
        seq: u64,
        msg: QueuedMessage,
        trim: bool,
    },
    /// A parking connection's unacknowledged message: an entry already at the slot keeps
    /// its content and takes DUP and the packet id; otherwise `msg` is stored. The queue
    /// is then cut to its bound.
    Upsert {
        key: String,
        seq: u64,
        msg: QueuedMessage,
    },
    /// The entry is being sent on `pkid`: re-sent with DUP=1 on it from now on. Skipped
    /// if the entry is gone.
    Mark { key: String, seq: u64, pkid: u16 },
    /// The entry was delivered (or is not to be).
    Remove { key: String, seq: u64 },
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

    /// Applies queue and record changes in one transaction, committed durably unless
    /// `durable` is false (then it becomes durable with the next durable commit, and a
    /// crash before that loses it). A queue an `Insert` (with `trim`) or an `Upsert`
    /// touched is then cut to `max_per_session`, oldest first; returns how many were
    /// dropped. Entries of a session that no longer exists are not stored.
    pub fn apply_queue_ops(
        &self,
        ops: &[QueueOp],
        max_per_session: usize,
        durable: bool,
    ) -> Result<u64, StoreError> {
        if ops.is_empty() {
            return Ok(0);
        }
        self.write_with(durable, |txn| {
            let mut batch = QueueBatch {
                sessions: txn.open_table(SESSIONS)?,
                queue: txn.open_table(QUEUE)?,
                exists: HashMap::new(),
                trim_keys: Vec::new(),
            };
            for op in ops {
                batch.apply(op)?;
            }
            batch.trim_queues(max_per_session)
        })
    }

    /// The highest sequence number of any session's queue: a broker numbering queue
    /// entries by arrival starts past it.
    pub fn max_queued_seq(&self) -> Result<Option<u64>, StoreError> {
        self.read(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let queue = txn.open_table(QUEUE)?;
            let mut max = None;
            for entry in sessions.iter()? {
                let (k, _) = entry?;
                let key = k.value();
                let last = queue
                    .range((key, 0)..=(key, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                max = max.max(last);
            }
            Ok(max)
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
}

/// The tables of one [`Store::apply_queue_ops`] transaction, and what it learns on
/// the way.
struct QueueBatch<'txn, 'k> {
    sessions: redb::Table<'txn, &'static str, &'static [u8]>,
    queue: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    /// Whether a session is stored, per key looked up or written so far.
    exists: HashMap<&'k str, bool>,
    /// The queues to cut to their bound at the end, each once.
    trim_keys: Vec<&'k str>,
}

impl<'k> QueueBatch<'_, 'k> {
    fn apply(&mut self, op: &'k QueueOp) -> Result<(), StoreError> {
        match op {
            QueueOp::PutSession(rec) => {
                let bytes = encode_session(rec)?;
                self.sessions.insert(rec.key.as_str(), bytes.as_slice())?;
                self.exists.insert(rec.key.as_str(), true);
            }
            QueueOp::Insert {
                key,
                seq,
                msg,
                trim,
            } => self.insert(key, *seq, msg, *trim)?,
            QueueOp::Upsert { key, seq, msg } => self.upsert(key, *seq, msg)?,
            QueueOp::Mark { key, seq, pkid } => self.mark(key, *seq, *pkid)?,
            QueueOp::Remove { key, seq } => {
                self.queue.remove((key.as_str(), *seq))?;
            }
        }
        Ok(())
    }

    /// [`QueueOp::Insert`].
    fn insert(
        &mut self,
        key: &'k str,
        seq: u64,
        msg: &QueuedMessage,
        trim: bool,
    ) -> Result<(), StoreError> {
        // A connected session's slot is fresh: its connection can only have the message
        // once this is committed.
        if !self.session_exists(key)? || (trim && self.queue.get((key, seq))?.is_some()) {
            return Ok(());
        }
        self.queue
            .insert((key, seq), encode_queued(key, msg)?.as_slice())?;
        if trim {
            self.trim_later(key);
        }
        Ok(())
    }

    /// [`QueueOp::Upsert`].
    fn upsert(&mut self, key: &'k str, seq: u64, msg: &QueuedMessage) -> Result<(), StoreError> {
        if !self.session_exists(key)? {
            return Ok(());
        }
        let stored = match self.queue.get((key, seq))? {
            Some(v) => {
                let mut m = decode_queued(key, v.value())?;
                m.dup |= msg.dup;
                m.pkid = msg.pkid.or(m.pkid);
                m
            }
            None => msg.clone(),
        };
        self.queue
            .insert((key, seq), encode_queued(key, &stored)?.as_slice())?;
        self.trim_later(key);
        Ok(())
    }

    /// [`QueueOp::Mark`].
    fn mark(&mut self, key: &str, seq: u64, pkid: u16) -> Result<(), StoreError> {
        let Some(bytes) = self.queue.get((key, seq))?.map(|v| v.value().to_vec()) else {
            return Ok(());
        };
        let mut m = decode_queued(key, &bytes)?;
        m.dup = true;
        m.pkid = Some(pkid);
        self.queue
            .insert((key, seq), encode_queued(key, &m)?.as_slice())?;
        Ok(())
    }

    /// Whether a session is stored (looked up once per transaction and key).
    fn session_exists(&mut self, key: &'k str) -> Result<bool, StoreError> {
        if let Some(&e) = self.exists.get(key) {
            return Ok(e);
        }
        let e = self.sessions.get(key)?.is_some();
        self.exists.insert(key, e);
        Ok(e)
    }

    fn trim_later(&mut self, key: &'k str) {
        if !self.trim_keys.contains(&key) {
            self.trim_keys.push(key);
        }
    }

    /// Cuts the queues [`trim_later`](Self::trim_later) named to `max_per_session`;
    /// how many entries were dropped.
    fn trim_queues(mut self, max_per_session: usize) -> Result<u64, StoreError> {
        let mut dropped = 0;
        for &key in &self.trim_keys {
            dropped += trim(&mut self.queue, key, max_per_session)?;
        }
        Ok(dropped)
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
pub(crate) mod tests;
