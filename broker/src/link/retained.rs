//! Retained messages, owned by fleetmq rather than rumqttd's router.
//!
//! Every retained message is written through to redb and kept here; the router never
//! sees a RETAIN flag. rumqttd deletes a retained message on any empty payload (even with
//! RETAIN=0), sends retained messages only for new subscriptions, drops those that do
//! not fit its free inflight slots and ignores Retain Handling; so the link layer
//! delivers retained messages itself from this index at SUBSCRIBE time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use fleetmq_storage::{now_ms, RetainedMessage};

use super::topic;

/// Topic → retained message, in memory, mirroring the `retained` table.
#[derive(Default)]
pub(crate) struct RetainedIndex {
    map: RwLock<BTreeMap<String, Arc<RetainedMessage>>>,
    /// Topic → when its message expires (unix ms), for messages published with an MQTT 5
    /// Message Expiry Interval. Kept in memory only: after a restart a retained message
    /// no longer expires (the stored record has no field for it yet).
    expires: Mutex<HashMap<String, u64>>,
}

impl RetainedIndex {
    pub(crate) fn load(all: Vec<RetainedMessage>) -> RetainedIndex {
        let map = all
            .into_iter()
            .map(|m| (m.topic.clone(), Arc::new(m)))
            .collect();
        RetainedIndex {
            map: RwLock::new(map),
            expires: Mutex::default(),
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<RetainedMessage>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn expires(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.expires.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set(&self, msg: RetainedMessage) {
        self.expires().remove(&msg.topic);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(msg.topic.clone(), Arc::new(msg));
    }

    /// The retained message of `topic` expires `interval_s` from now [MQTT-3.3.2-5].
    pub(crate) fn expire_after(&self, topic: &str, interval_s: u32) {
        let at = now_ms().saturating_add(u64::from(interval_s) * 1000);
        self.expires().insert(topic.to_owned(), at);
    }

    /// Seconds `topic`'s retained message has left, if it expires (rounded up, so a
    /// message that is still delivered never says 0).
    pub(crate) fn expiry_left(&self, topic: &str) -> Option<u32> {
        let at = *self.expires().get(topic)?;
        let left_ms = at.saturating_sub(now_ms());
        Some(
            u32::try_from(left_ms.div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1),
        )
    }

    pub(crate) fn remove(&self, topic: &str) {
        self.expires().remove(topic);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.remove(topic);
    }

    fn expired(&self, topic: &str, now: u64) -> bool {
        self.expires().get(topic).is_some_and(|&at| at <= now)
    }

    /// Retained messages whose topic matches `filter`, ordered by topic; expired ones
    /// are left out.
    pub(crate) fn matching(&self, filter: &str) -> Vec<Arc<RetainedMessage>> {
        let now = now_ms();
        let map = self.map();
        if !filter.contains(['+', '#']) {
            return (map.get(filter).cloned().into_iter())
                .filter(|m| !self.expired(&m.topic, now))
                .collect();
        }
        map.values()
            .filter(|m| topic::matches(filter, &m.topic) && !self.expired(&m.topic, now))
            .cloned()
            .collect()
    }
}
