//! Retained messages, owned by fleetmq rather than rumqttd's router.
//!
//! Every retained message is written through to redb and kept here; the router never
//! sees a RETAIN flag. rumqttd deletes a retained message on any empty payload (even with
//! RETAIN=0), sends retained messages only for new subscriptions, drops those that do
//! not fit its free inflight slots and ignores Retain Handling; so the link layer
//! delivers retained messages itself from this index at SUBSCRIBE time.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use fleetmq_storage::{now_ms, RetainedMessage};

use crate::link::codec::topic;

/// Topic → retained message, in memory, mirroring the `retained` table.
#[derive(Default)]
pub(crate) struct RetainedIndex {
    map: RwLock<BTreeMap<String, Arc<RetainedMessage>>>,
}

impl RetainedIndex {
    pub(crate) fn load(all: Vec<RetainedMessage>) -> RetainedIndex {
        let map = all
            .into_iter()
            .map(|m| (m.topic.clone(), Arc::new(m)))
            .collect();
        RetainedIndex {
            map: RwLock::new(map),
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<RetainedMessage>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set(&self, msg: RetainedMessage) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(msg.topic.clone(), Arc::new(msg));
    }

    pub(crate) fn remove(&self, topic: &str) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.remove(topic);
    }

    /// Retained messages whose topic matches `filter`, ordered by topic; expired ones
    /// are left out [MQTT-3.3.2-5].
    pub(crate) fn matching(&self, filter: &str) -> Vec<Arc<RetainedMessage>> {
        let now = now_ms();
        let map = self.map();
        if !filter.contains(['+', '#']) {
            return (map.get(filter).cloned().into_iter())
                .filter(|m| !expired(m, now))
                .collect();
        }
        map.values()
            .filter(|m| topic::matches(filter, &m.topic) && !expired(m, now))
            .cloned()
            .collect()
    }
}

fn expired(m: &RetainedMessage, now: u64) -> bool {
    m.expires_at_ms.is_some_and(|at| at <= now)
}
