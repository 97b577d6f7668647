//! What the router still owes a *connected* persistent session: every QoS 1/2 message
//! that matched one of its subscriptions at the session check, from that check until the
//! router hands it to the session's connection. Each is stored in the session's queue
//! too (`session::store`), so nothing here is needed at parking; the ledger is what a
//! SUBACK settles (`session::owed`): a message recorded for a new subscription that the
//! router may never deliver is delivered from here.
//!
//! An entry is the routed PUBLISH itself (reference counts on the one buffer the router
//! holds too, not a copy) with its properties, so the connection takes it through
//! egress exactly as if the router had delivered it.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use fleetmq_storage::SessionSubscription;

use crate::link::codec::origin::Routed;
use crate::link::session::store;

/// A connected persistent session's undelivered messages, by arrival number.
///
/// Recorded under the check's lock, so arrival numbers only grow: an entry is appended,
/// found again by binary search, and a delivered one is cleared in place and dropped
/// once it reaches the front (no allocation or rebalancing per message).
pub(crate) struct Ledger {
    entries: VecDeque<(u64, Option<Routed>)>,
    /// Entries still undelivered.
    live: usize,
    /// Undelivered entries kept at most; past it the oldest are evicted.
    cap: usize,
    /// Arrival numbers of evicted entries the router has not delivered since (at most
    /// `cap`, past it counted in `forgotten`): lost if the session parks first, unless
    /// they are stored.
    evicted: BTreeSet<u64>,
    forgotten: u64,
}

/// The ledger of one connected session, shared by the publishers' check (which records)
/// and its connection (which removes what the router delivered).
#[derive(Clone)]
pub(crate) struct SharedLedger(Arc<Mutex<Ledger>>);

impl SharedLedger {
    pub(crate) fn new(cap: usize) -> SharedLedger {
        SharedLedger(Arc::new(Mutex::new(Ledger {
            entries: VecDeque::new(),
            live: 0,
            cap: cap.max(1),
            evicted: BTreeSet::new(),
            forgotten: 0,
        })))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ledger {
    /// A message checked for the session (arrival numbers only grow). Past the cap the
    /// oldest undelivered entry is evicted: the router skipped it for a slow subscriber
    /// (counted there) or dropped it as expired in its log, or it is still on its way —
    /// then, unless it is stored, it is lost if the session parks before the router
    /// delivers it, and counted at parking (see [`Ledger::take`]).
    pub(crate) fn record(&mut self, arrival: u64, routed: Routed) {
        self.entries.push_back((arrival, Some(routed)));
        self.live += 1;
        while self.live > self.cap {
            let Some((a, e)) = self.entries.pop_front() else {
                break;
            };
            if e.is_some() {
                self.live -= 1;
                self.evicted.insert(a);
            }
        }
        while self.evicted.len() > self.cap {
            self.evicted.pop_first();
            self.forgotten += 1;
        }
        self.compact();
    }

    /// The router handed these to the connection.
    pub(crate) fn delivered(&mut self, arrivals: impl IntoIterator<Item = u64>) {
        for a in arrivals {
            match self.entries.binary_search_by_key(&a, |e| e.0) {
                Ok(i) => {
                    if self.entries[i].1.take().is_some() {
                        self.live -= 1;
                    }
                }
                Err(_) => {
                    self.evicted.remove(&a);
                }
            }
        }
        self.compact();
    }

    /// Drops delivered entries at the front, and all of them once they outnumber the
    /// undelivered ones (an old entry the router never delivers keeps the front).
    fn compact(&mut self) {
        while self.entries.front().is_some_and(|e| e.1.is_none()) {
            self.entries.pop_front();
        }
        if self.entries.len() > 64 && self.entries.len() > 2 * self.live {
            self.entries.retain(|e| e.1.is_some());
        }
    }

    /// Keeps only the entries whose topic `keep` accepts (after an UNSUBSCRIBE: the
    /// router no longer delivers the others); returns the arrival numbers of those it
    /// dropped (to leave the stored queue too).
    pub(crate) fn retain_topics(&mut self, keep: impl Fn(&str) -> bool) -> Vec<u64> {
        let mut dropped = Vec::new();
        self.entries.retain(|(a, e)| {
            let Some((p, _)) = e else {
                return false;
            };
            let kept = std::str::from_utf8(&p.topic).is_ok_and(&keep);
            if !kept {
                dropped.push(*a);
            }
            kept
        });
        self.live = self.entries.len();
        dropped
    }

    /// Takes out, in arrival order, the entries `take` picks by arrival number and topic
    /// (those the router may never deliver when a SUBSCRIBE is answered, see
    /// `session::owed`).
    pub(crate) fn take_where(&mut self, take: impl Fn(u64, &str) -> bool) -> Vec<Routed> {
        let mut out = Vec::new();
        for (a, e) in &mut self.entries {
            let picked = e
                .as_ref()
                .is_some_and(|(p, _)| std::str::from_utf8(&p.topic).is_ok_and(|t| take(*a, t)));
            if picked {
                out.extend(e.take());
            }
        }
        self.live -= out.len();
        self.compact();
        out
    }

    /// Everything still undelivered, in arrival order, and how many evicted entries the
    /// router never delivered (lost now, unless stored).
    pub(crate) fn take(&mut self) -> (Vec<Routed>, u64) {
        let lost = self.evicted.len() as u64 + self.forgotten;
        self.evicted.clear();
        self.forgotten = 0;
        self.live = 0;
        let left = std::mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|(_, e)| e)
            .collect();
        (left, lost)
    }

    /// Undelivered entries kept at most.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

/// What a resumed session's stored queue holds of its live deliveries: its router link
/// subscribes again before the session goes live, so a message checked (and stored)
/// just before that can still be routed to it after the subscription. Every message
/// numbered below `before` that the subscriptions it was parked with take is in the
/// stored queue (written by its publisher while the session was parked or connected,
/// or by a leaving connection), or was delivered and acknowledged already; its live copy
/// is left out.
pub(crate) struct QueuedWindow {
    pub(crate) before: u64,
    pub(crate) subscriptions: Vec<SessionSubscription>,
}

impl QueuedWindow {
    /// Whether a live delivery is in the session's stored queue already.
    pub(crate) fn queued(&self, arrival: u64, topic_name: &str) -> bool {
        arrival < self.before && store::takes(&self.subscriptions, topic_name)
    }
}
