//! Backpressure from slow consumers to publishers.
//!
//! A connection whose outbound queue (`outbound.rs`) has more than
//! `mqtt.max_pending_messages` messages waiting is *congested*: it registers the filters
//! of its QoS 1/2 subscriptions here. A publisher's ingress checks every QoS 1/2 PUBLISH
//! against the registry before it routes it (so before the publisher gets its
//! PUBACK/PUBREC) and, when the topic would reach a congested connection other than
//! itself, stops there until the registry changes: its socket is not read any further
//! (acks excepted), so TCP pushes back on the publisher. A congested connection leaves
//! the registry when its queue is back at half the bound, or when it ends (a stuck one is
//! cut after `mqtt.slow_consumer_timeout_s` without progress).
//!
//! Nothing is paid while nobody is congested: the check is one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

use super::topic;

/// The congested connections and their QoS 1/2 filters.
pub(crate) struct Congestion {
    /// How many connections are registered; 0 makes [`Congestion::blocks`] free.
    count: AtomicUsize,
    /// Connection id → filters (shared subscriptions by their inner filter).
    filters: Mutex<HashMap<u64, Vec<String>>>,
    /// Bumped whenever a connection leaves, so paused publishers check again.
    changed: watch::Sender<u64>,
}

impl Default for Congestion {
    fn default() -> Congestion {
        Congestion {
            count: AtomicUsize::new(0),
            filters: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Congestion {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<String>>> {
        self.filters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `conn_id` is congested for messages on `filters`.
    pub(crate) fn enter(&self, conn_id: u64, filters: Vec<String>) {
        let filters = filters
            .into_iter()
            .map(|f| match topic::split_shared(&f) {
                Some((_, inner)) => inner.to_owned(),
                None => f,
            })
            .collect();
        let mut map = self.map();
        map.insert(conn_id, filters);
        self.count.store(map.len(), Ordering::Release);
    }

    /// Connection `conn_id` drained (or ended); publishers it paused check again.
    pub(crate) fn leave(&self, conn_id: u64) {
        {
            let mut map = self.map();
            if map.remove(&conn_id).is_none() {
                return;
            }
            self.count.store(map.len(), Ordering::Release);
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every [`Congestion::leave`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether a QoS 1/2 message from connection `publisher` on `topic_name` must wait:
    /// it matches a filter of a congested connection other than the publisher (a
    /// connection is never paused by its own congestion).
    pub(crate) fn blocks(&self, publisher: u64, topic_name: &str) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.map().iter().any(|(&conn, filters)| {
            conn != publisher && filters.iter().any(|f| topic::matches(f, topic_name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_only_matching_topics_of_other_connections_until_they_leave() {
        let c = Congestion::default();
        assert!(!c.blocks(1, "a/b"));
        c.enter(2, vec!["a/#".into(), "$share/g/x/+".into()]);
        let mut rx = c.subscribe();
        rx.borrow_and_update();
        assert!(c.blocks(1, "a/b"));
        assert!(
            c.blocks(1, "x/y"),
            "shared subscriptions by their inner filter"
        );
        assert!(!c.blocks(1, "b/c"));
        assert!(!c.blocks(2, "a/b"), "never paused by its own congestion");
        c.leave(2);
        assert!(rx.has_changed().unwrap_or(false));
        assert!(!c.blocks(1, "a/b"));
    }
}
