//! What the router still owes a *connected* persistent session: every QoS 1/2 message
//! that matched one of its subscriptions at the parked-session check, from that check
//! until the router hands it to the session's connection. When the session is parked,
//! what is left here is exactly what was checked before parking (so no publisher queued
//! it) and that the leaving connection never got (still in a publisher's batch, in the
//! router's event channel or in a filter log): the connection queues it with what it
//! still owed. See `session_store` ("The parking window").
//!
//! An entry is the routed PUBLISH itself (reference counts on the one buffer the router
//! holds too, not a copy) with its properties, so the leaving connection takes it
//! through egress exactly as if the router had delivered it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use fleetmq_storage::SessionSubscription;

use super::origin::Routed;
use super::session_store;

/// A connected persistent session's undelivered messages, by arrival number.
pub(crate) struct Ledger {
    entries: BTreeMap<u64, Routed>,
    /// Entries kept at most; past it the oldest are forgotten.
    cap: usize,
}

/// The ledger of one connected session, shared by the publishers' check (which records)
/// and its connection (which removes what the router delivered).
#[derive(Clone)]
pub(crate) struct SharedLedger(Arc<Mutex<Ledger>>);

impl SharedLedger {
    pub(crate) fn new(cap: usize) -> SharedLedger {
        SharedLedger(Arc::new(Mutex::new(Ledger {
            entries: BTreeMap::new(),
            cap: cap.max(1),
        })))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ledger {
    /// A message checked for the session (arrival numbers only grow). Past the cap the
    /// oldest entry goes: one the router never delivers (it skipped it for a slow
    /// subscriber, counted there, or dropped it as expired in its log) would otherwise
    /// stay until the session parks.
    pub(crate) fn record(&mut self, arrival: u64, routed: Routed) {
        self.entries.insert(arrival, routed);
        while self.entries.len() > self.cap {
            self.entries.pop_first();
        }
    }

    /// The router handed these to the connection.
    pub(crate) fn delivered(&mut self, arrivals: impl IntoIterator<Item = u64>) {
        for a in arrivals {
            self.entries.remove(&a);
        }
    }

    /// Keeps only the entries whose topic `keep` accepts (after an UNSUBSCRIBE: the
    /// router no longer delivers the others).
    pub(crate) fn retain_topics(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries
            .retain(|_, (p, _)| std::str::from_utf8(&p.topic).is_ok_and(&keep));
    }

    /// Everything still undelivered, in arrival order.
    pub(crate) fn take(&mut self) -> Vec<Routed> {
        std::mem::take(&mut self.entries).into_values().collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The arrival numbers checked while a resumed session was parked, and the
/// subscriptions it was parked with. Its router link subscribes again before the session
/// is unparked, so a message checked (and queued by its publisher) just before that can
/// still be routed after the subscription: it is in the stored queue already, and its
/// live copy is left out.
/// Likewise what the previous connection queued from its ledger when it left.
pub(crate) struct QueuedWindow {
    pub(super) arrivals: std::ops::Range<u64>,
    pub(super) subscriptions: Vec<SessionSubscription>,
    pub(super) leftovers: HashSet<u64>,
}

impl QueuedWindow {
    /// Whether a live delivery is in the session's stored queue already.
    pub(crate) fn queued(&self, arrival: u64, topic_name: &str) -> bool {
        self.leftovers.contains(&arrival)
            || (self.arrivals.contains(&arrival)
                && session_store::takes(&self.subscriptions, topic_name))
    }
}
