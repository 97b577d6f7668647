//! Packet ids of the messages a persistent session's client had in flight when it left,
//! so that after it reconnects they are re-sent with DUP=1 on the same packet id, and
//! the PUBRELs of QoS 2 exchanges the client had not completed are sent again
//! [MQTT-4.4.0-1]. Kept in memory: after a restart the re-sends get new ids.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use fleetmq_storage::QueuedMessage;

/// Sessions remembered at most (one entry each, for sessions whose client left with
/// messages in flight); past it, re-sends of further sessions get new ids.
const MAX_SESSIONS: usize = 65_536;

/// One parked session's in-flight packet ids.
#[derive(Debug, Default)]
pub(crate) struct InFlightIds {
    /// Stored-queue entries that were in flight, by their place in the queue.
    pub(crate) by_seq: HashMap<u64, u16>,
    /// Messages appended to the queue when the client left, in order: their
    /// fingerprint and packet id.
    pub(crate) appended: VecDeque<(u64, u16)>,
    /// QoS 2 exchanges released (PUBREC received, PUBREL sent) and not completed.
    pub(crate) pubrels: Vec<u16>,
}

impl InFlightIds {
    /// The packet id a queued message was in flight with, if it was.
    pub(crate) fn pkid_for(&mut self, seq: u64, m: &QueuedMessage) -> Option<u16> {
        if let Some(pkid) = self.by_seq.remove(&seq) {
            return Some(pkid);
        }
        if !m.dup {
            return None;
        }
        // Appended entries keep their order; the oldest may have been dropped from a full
        // queue, so earlier unmatched entries are skipped.
        let fp = fingerprint(&m.topic, &m.payload);
        let at = self.appended.iter().position(|&(f, _)| f == fp)?;
        let (_, pkid) = self.appended.get(at).copied()?;
        self.appended.drain(..=at);
        Some(pkid)
    }

    fn is_empty(&self) -> bool {
        self.by_seq.is_empty() && self.appended.is_empty() && self.pubrels.is_empty()
    }
}

/// A message's identity within one session's queue.
pub(crate) fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

/// In-flight packet ids of parked sessions, by session key.
#[derive(Default)]
pub(crate) struct ResendIds {
    map: Mutex<HashMap<String, InFlightIds>>,
}

impl ResendIds {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlightIds>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session's client left with these messages in flight.
    pub(crate) fn park(&self, key: &str, ids: InFlightIds) {
        let mut map = self.map();
        if ids.is_empty() {
            map.remove(key);
        } else if map.len() < MAX_SESSIONS || map.contains_key(key) {
            map.insert(key.to_owned(), ids);
        }
    }

    /// What a session's new connection needs (and forgets it).
    pub(crate) fn take(&self, key: &str) -> InFlightIds {
        self.map().remove(key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &str, dup: bool) -> QueuedMessage {
        QueuedMessage {
            topic: "t".into(),
            payload: payload.as_bytes().to_vec(),
            qos: 1,
            dup,
            retain: false,
            queued_at_ms: 0,
            expires_at_ms: None,
            properties: fleetmq_storage::MessageProperties::default(),
        }
    }

    #[test]
    fn ids_by_seq_and_by_order_skipping_dropped_entries() {
        let mut ids = InFlightIds::default();
        ids.by_seq.insert(3, 7);
        ids.appended.push_back((fingerprint("t", b"dropped"), 8));
        ids.appended.push_back((fingerprint("t", b"b"), 9));
        assert_eq!(ids.pkid_for(3, &msg("a", false)), Some(7));
        assert_eq!(ids.pkid_for(4, &msg("x", false)), None, "never in flight");
        assert_eq!(ids.pkid_for(5, &msg("old", true)), None, "DUP from before");
        assert_eq!(ids.pkid_for(6, &msg("b", true)), Some(9));
        assert!(ids.is_empty());
        let r = ResendIds::default();
        r.park("k", InFlightIds::default());
        assert!(r.take("k").is_empty());
    }
}
