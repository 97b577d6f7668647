//! Persistent sessions, owned by fleetmq (rumqttd's are in memory and never expire).
//!
//! Every router link is built clean; what a persistent session keeps between
//! connections lives here and in redb (`storage::sessions`):
//! - the record (subscriptions with their identifiers, expiry, inbound QoS 2 packet ids,
//!   outbound PUBRELs) is written when it changes and when the client leaves;
//! - the queue: every QoS 1/2 PUBLISH one of the session's (non-shared) subscriptions
//!   takes is written to it, with its MQTT 5 properties (fleetmq's internal user
//!   properties removed, the session's matching Subscription Identifiers added),
//!   **before** it is routed, so before the publisher gets its PUBACK/PUBREC — whether
//!   the client is connected or away. An entry's slot is the message's *arrival number*
//!   (below), so writing one message for one session twice stores it once. An entry
//!   leaves when the client acknowledged it;
//! - while the client is away the session is *parked*: its subscriptions sit in an
//!   index by filter level (`session::index`); while it is connected they sit in a
//!   second one (the live index), and the check also records the message in the
//!   session's ledger (`session::ledger`) until the router delivers it;
//! - at reconnect the connection re-subscribes its router link, unparks the session and
//!   delivers the queue before any live traffic.
//! - parked sessions expire after their Session Expiry Interval (3.1.1: never).
//!
//! # Arrival numbers
//!
//! The check takes one lock, the parked set's, and numbers every QoS 1/2 message from a
//! counter under it (carried through the router in the message's origin header). The
//! counter starts past every stored slot at start, so numbers are unique across
//! restarts, and a session's queue in slot order is in arrival order. The number is the
//! slot: the connection knows the slot of every message the router hands it without
//! asking the store, and removes it when acknowledged.
//!
//! # Parking and the resume window
//!
//! Parking (`begin_park`) moves the session from the live index to the parked one under
//! the lock, so every message is written for it by its publisher, connected or not.
//! What the leaving connection still owed the client is therefore already stored, except
//! what no publisher wrote for it (retained messages sent at SUBSCRIBE, shared
//! subscriptions' messages): `finish_park` writes each owed message at its slot,
//! keeping what is there (a message the router handed the leaving link after parking
//! was written by its publisher at the same slot), with DUP and the packet id of those
//! in flight. No duplicates, arrival order kept.
//!
//! The next connection's router link subscribes before the session goes live again, so a
//! message checked before that (and so stored) can still be routed to it. `go_live`
//! returns the counter at that moment: a live delivery numbered below it that the
//! resumed subscriptions take is in the stored queue already and is left out; the queue
//! is read up to that number (what is numbered from it on comes from the router).
//!
//! A new subscription of a connected session enters the live index before its SUBSCRIBE
//! goes to the router, and its SUBACK settles what the router may not deliver of what was
//! recorded meanwhile (`session::owed`). A barrier that waits for the router to have
//! forwarded everything numbered below a mark is not possible with rumqttd: it consumes
//! each filter's log separately, 100 at a time round-robin, so no marker proves that
//! another filter's log has been read past a point.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmq_storage::{now_ms, QueueOp, QueuedMessage, SessionRecord, SessionSubscription, Store};
use rumqttd::protocol::{Connect, ConnectProperties};
use tokio_util::sync::CancellationToken;

use crate::link::codec::framing::Version;
use crate::link::codec::topic;
use crate::link::session::index::FilterIndex;
pub(crate) use crate::link::session::ledger::QueuedWindow;
use crate::link::session::ledger::SharedLedger;
pub(crate) use crate::link::session::props::{publish_properties, stored_properties};
use crate::link::session::resume::SessionStart;
use crate::link::session::writer::QueueWriter;
use crate::link::Core;
use crate::stats::{DropCause, Stats};
pub(crate) use check::takes;
pub(crate) use check::{Copies, Incoming};

/// Session Expiry Interval meaning "never" (3.1.1 sessions, v5 0xFFFFFFFF).
pub(crate) const NEVER: u32 = u32::MAX;

struct Parked {
    subscriptions: Vec<SessionSubscription>,
    expires_at_ms: Option<u64>,
}

/// A connected persistent session, as the check sees it.
struct Live {
    subscriptions: Vec<SessionSubscription>,
    ledger: SharedLedger,
    /// Its connection (No Local: its own messages are not stored for it).
    conn_id: u64,
}

/// The parked sessions, their filters by level and the arrival counter, under one lock:
/// a publish's check and a session's parking are ordered by it (see the module docs).
/// Also the connected persistent sessions and their filters, whose ledgers the check
/// fills.
#[derive(Default)]
struct ParkedSet {
    sessions: HashMap<String, Parked>,
    index: FilterIndex,
    next_arrival: u64,
    live: HashMap<String, Live>,
    live_index: FilterIndex,
    /// Sessions with copies being written by publishers right now.
    writing: HashMap<String, usize>,
    /// Arrival numbers whose copies for connected sessions are not written yet. The
    /// router has not seen those messages, but a SUBACK can deliver one from a ledger
    /// (`session::owed`): its removal must not reach the store before its copy.
    unwritten: std::collections::HashSet<u64>,
}

impl ParkedSet {
    fn insert(&mut self, key: &str, parked: Parked) {
        self.remove(key);
        for s in parked.subscriptions.iter().filter(|s| queues(s)) {
            self.index.insert(&s.filter, key);
        }
        self.sessions.insert(key.to_owned(), parked);
    }

    fn remove(&mut self, key: &str) {
        if let Some(parked) = self.sessions.remove(key) {
            for s in parked.subscriptions.iter().filter(|s| queues(s)) {
                self.index.remove(&s.filter, key);
            }
        }
    }

    fn insert_live(&mut self, key: &str, live: Live) {
        self.remove_live(key);
        for s in live.subscriptions.iter().filter(|s| records(s)) {
            self.live_index.insert(&s.filter, key);
        }
        self.live.insert(key.to_owned(), live);
    }

    fn remove_live(&mut self, key: &str) -> Option<Live> {
        let live = self.live.remove(key)?;
        for s in live.subscriptions.iter().filter(|s| records(s)) {
            self.live_index.remove(&s.filter, key);
        }
        Some(live)
    }
}

/// Whether a subscription gets queued copies while its session is parked (a shared
/// subscription's messages go to a connected member instead).
fn queues(s: &SessionSubscription) -> bool {
    !topic::is_shared(&s.filter)
}

/// Whether a connected session's subscription takes QoS 1/2 messages into its ledger
/// and queue: one that would queue them, above QoS 0 (so a match in the live index is a
/// take).
fn records(s: &SessionSubscription) -> bool {
    queues(s) && s.qos > 0
}

/// The parked set, shared with the copies a publisher has not written yet.
type SharedSet = Arc<Mutex<ParkedSet>>;

fn lock(set: &Mutex<ParkedSet>) -> std::sync::MutexGuard<'_, ParkedSet> {
    set.lock().unwrap_or_else(|e| e.into_inner())
}

/// The parked sessions (clients away), the connected persistent ones, and the store
/// behind every session.
pub(crate) struct SessionStore {
    store: Store,
    /// `mqtt.durable_connected_sessions`: connected sessions get stored copies too.
    durable_live: bool,
    writer: QueueWriter,
    max_queued: usize,
    parked: SharedSet,
    /// Signalled when publishers finished writing copies (see [`SessionStore::settled`]).
    written: Arc<tokio::sync::Notify>,
}

/// Entries a connected session's ledger keeps at most, per message its queue keeps.
const LEDGER_PER_QUEUED: usize = 4;

fn expires_at(rec: &SessionRecord, left_at_ms: u64) -> Option<u64> {
    (rec.expiry_s != NEVER).then(|| left_at_ms.saturating_add(u64::from(rec.expiry_s) * 1000))
}

impl SessionStore {
    /// Loads every stored session as parked; a session that was connected when the
    /// broker stopped counts as having left now. Arrival numbers start past
    /// `max_queued_seq`, the highest stored slot.
    pub(crate) fn load(
        store: Store,
        max_queued: usize,
        records: Vec<SessionRecord>,
        max_queued_seq: Option<u64>,
        durable_live: bool,
    ) -> SessionStore {
        let now = now_ms();
        let mut parked = ParkedSet {
            next_arrival: max_queued_seq.map_or(0, |s| s.saturating_add(1)),
            ..ParkedSet::default()
        };
        for rec in records {
            let left = rec.disconnected_at_ms.unwrap_or(now);
            let p = Parked {
                expires_at_ms: expires_at(&rec, left),
                subscriptions: rec.subscriptions,
            };
            parked.insert(&rec.key, p);
        }
        tracing::info!(
            count = parked.sessions.len(),
            "persistent sessions restored"
        );
        SessionStore {
            durable_live,
            writer: QueueWriter::new(store.clone(), max_queued),
            store,
            max_queued,
            parked: Arc::new(Mutex::new(parked)),
            written: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, ParkedSet> {
        lock(&self.parked)
    }

    /// Whether a session is parked under `key`.
    pub(crate) fn is_parked(&self, key: &str) -> bool {
        self.parked().sessions.contains_key(key)
    }

    /// The stored session of `key`, for a connection that resumes it.
    pub(crate) async fn record(&self, key: &str) -> Option<SessionRecord> {
        let key = key.to_owned();
        match self.store.call(move |s| s.get_session(&key)).await {
            Ok(rec) => rec,
            Err(e) => {
                tracing::error!(error = %e, "could not read a session");
                None
            }
        }
    }

    /// Forgets a session (clean start, expiry, or a session that ended with its
    /// connection).
    pub(crate) async fn discard(&self, key: &str) {
        {
            let mut set = self.parked();
            set.remove(key);
            set.remove_live(key);
        }
        let key = key.to_owned();
        if let Err(e) = self.store.call(move |s| s.delete_session(&key)).await {
            tracing::error!(error = %e, "could not delete a session");
        }
    }

    /// Writes a session record (subscriptions or inbound QoS 2 state changed).
    pub(crate) async fn save(&self, rec: SessionRecord) {
        if let Err(e) = self.store.call(move |s| s.put_session(&rec)).await {
            tracing::error!(error = %e, "could not store a session");
        }
    }

    /// Applies a connection's changes to its session (acknowledged entries removed,
    /// packet ids of QoS 2 sends, its record) through the group-committed writer;
    /// `durable`: returns only once they are on disk.
    pub(crate) async fn sync(&self, ops: Vec<QueueOp>, durable: bool) {
        if let Err(e) = self.writer.write(ops, durable).await {
            tracing::error!(error = %e, "could not update a session");
        }
    }

    /// [`SessionStore::sync`] without waiting: applied in order with every other
    /// request, committed with the next group (durably once any request of it is).
    pub(crate) fn sync_later(&self, ops: Vec<QueueOp>) {
        self.writer.submit(ops, false);
    }

    /// The client is leaving: from now on matching publishes are queued for it as a
    /// parked session.
    pub(crate) fn begin_park(
        &self,
        key: &str,
        subscriptions: &[SessionSubscription],
        expiry_s: u32,
    ) {
        let expires_at_ms =
            (expiry_s != NEVER).then(|| now_ms().saturating_add(u64::from(expiry_s) * 1000));
        let mut set = self.parked();
        let parked = Parked {
            subscriptions: subscriptions.to_vec(),
            expires_at_ms,
        };
        set.remove_live(key);
        set.insert(key, parked);
    }

    /// The client left: removes what it acknowledged since the last batch (`removed`),
    /// stores the record (with its pending PUBRELs) and writes what it had not
    /// acknowledged at each message's slot (`owed`, with DUP and the packet ids
    /// of those in flight), keeping what is stored there already; then the queue is cut
    /// to its bound. One durable write.
    pub(crate) async fn finish_park(
        &self,
        mut rec: SessionRecord,
        removed: Vec<u64>,
        owed: Vec<(u64, QueuedMessage)>,
        stats: &Stats,
    ) {
        rec.disconnected_at_ms = Some(now_ms());
        let key = rec.key.clone();
        let mut ops = Vec::with_capacity(owed.len() + removed.len() + 1);
        ops.extend(removed.into_iter().map(|seq| QueueOp::Remove {
            key: key.clone(),
            seq,
        }));
        ops.push(QueueOp::PutSession(rec));
        ops.extend(owed.into_iter().map(|(seq, msg)| QueueOp::Upsert {
            key: key.clone(),
            seq,
            msg,
        }));
        match self.writer.write(ops, true).await {
            Ok(dropped) => count_dropped(stats, dropped),
            Err(e) => tracing::error!(error = %e, "could not park a session"),
        }
    }

    /// Stops queuing for a session whose client is back (its router link is subscribed).
    pub(crate) fn unpark(&self, key: &str) {
        self.parked().remove(key);
    }

    /// A persistent session's client is connected (its router link subscribed to
    /// `subscriptions`): stops queuing for it as parked, if it was, and from now on
    /// records what its subscriptions take in the returned ledger (and stores it), until
    /// `begin_park`. For a session that was parked, also the window of its live
    /// deliveries that are stored already; and the arrival counter now: the stored
    /// queue holds what is numbered below it, the router and the ledger the rest.
    pub(crate) fn go_live(
        &self,
        key: &str,
        subscriptions: &[SessionSubscription],
        conn_id: u64,
    ) -> (SharedLedger, Option<QueuedWindow>, u64) {
        let ledger = SharedLedger::new(self.max_queued.saturating_mul(LEDGER_PER_QUEUED));
        let live = Live {
            subscriptions: subscriptions.to_vec(),
            ledger: ledger.clone(),
            conn_id,
        };
        let mut set = self.parked();
        let now = set.next_arrival;
        let window = set.sessions.get(key).map(|p| QueuedWindow {
            before: now,
            subscriptions: p.subscriptions.clone(),
        });
        set.remove(key);
        set.insert_live(key, live);
        (ledger, window, now)
    }

    /// A connected session's subscriptions changed (a SUBSCRIBE goes to the router, the
    /// router answered one, or an UNSUBSCRIBE goes to it). Returns the arrival counter
    /// at the change: a message numbered at or past it was checked with these
    /// subscriptions (`session::owed`).
    pub(crate) fn live_subscriptions(
        &self,
        key: &str,
        subscriptions: &[SessionSubscription],
    ) -> u64 {
        let mut set = self.parked();
        if let Some(live) = set.remove_live(key) {
            let live = Live {
                subscriptions: subscriptions.to_vec(),
                ..live
            };
            set.insert_live(key, live);
        }
        set.next_arrival
    }

    /// The arrival counter now: every message numbered below it has been checked.
    pub(crate) fn arrival_mark(&self) -> u64 {
        self.parked().next_arrival
    }

    /// Of `slots`, those whose copies are written, so their removal may go to the store;
    /// the others are left in `slots`.
    pub(crate) fn written_of(&self, slots: &mut Vec<u64>) -> Vec<u64> {
        if slots.is_empty() {
            return Vec::new();
        }
        let set = self.parked();
        if set.unwritten.is_empty() {
            return std::mem::take(slots);
        }
        let (ready, later) = slots.drain(..).partition(|s| !set.unwritten.contains(s));
        *slots = later;
        ready
    }

    /// Returns once the copies of `slots` are written.
    pub(crate) async fn wait_written(&self, slots: &[u64]) {
        loop {
            let notified = self.written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let set = self.parked();
                if !slots.iter().any(|s| set.unwritten.contains(s)) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Whether a connected session's messages are stored before their publishers' acks
    /// (`mqtt.durable_connected_sessions`); otherwise its connection writes what it was
    /// owed when it parks.
    pub(crate) fn durable_live(&self) -> bool {
        self.durable_live
    }

    /// A fresh slot, for a message no publisher numbered (a retained message sent at
    /// SUBSCRIBE), should its session park before the client acknowledged it.
    pub(crate) fn next_slot(&self) -> u64 {
        let mut set = self.parked();
        let n = set.next_arrival;
        set.next_arrival += 1;
        n
    }

    /// Returns once no publisher is still writing a copy for `key`: its stored queue is
    /// then complete up to the counter it went live at.
    pub(crate) async fn settled(&self, key: &str) {
        loop {
            let notified = self.written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.parked().writing.contains_key(key) {
                return;
            }
            notified.await;
        }
    }

    /// A session's queue, oldest first, up to slot `before` (excluded): what was stored
    /// for it before it went live.
    pub(crate) async fn queued(&self, key: &str, before: u64) -> Vec<(u64, QueuedMessage)> {
        let key = key.to_owned();
        let mut q = self
            .store
            .call(move |s| s.queued(&key))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "could not read a session queue");
                Vec::new()
            });
        q.retain(|(seq, _)| *seq < before);
        q
    }

    fn is_expired(&self, key: &str, now: u64) -> bool {
        self.parked()
            .sessions
            .get(key)
            .is_some_and(|p| p.expires_at_ms.is_some_and(|at| at <= now))
    }

    fn expired(&self, now: u64) -> Vec<String> {
        self.parked()
            .sessions
            .iter()
            .filter(|(_, p)| p.expires_at_ms.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Decides a new connection's session (call with the key's setup lock held, after any
/// takeover): 3.1.1 Clean Session, v5 Clean Start and Session Expiry Interval.
/// A clean start discards a stored session [MQTT-3.1.2-6]; otherwise a stored one is
/// resumed and CONNACK says so [MQTT-3.2.2-2]; a 3.1.1 persistent session never expires.
pub(crate) async fn start(
    core: &Core,
    key: &str,
    version: Version,
    connect: &Connect,
    props: Option<&ConnectProperties>,
) -> SessionStart {
    let (persistent, expiry_s) = match version {
        Version::V4 => (!connect.clean_session, NEVER),
        Version::V5 => {
            let expiry = props.and_then(|p| p.session_expiry_interval).unwrap_or(0);
            (expiry > 0, expiry)
        }
    };
    let stored = core.session_store.parked().sessions.contains_key(key);
    let resumed = match (stored, connect.clean_session) {
        (false, _) => None,
        (true, true) => {
            core.session_store.discard(key).await;
            None
        }
        (true, false) => core.session_store.record(key).await.map(Box::new),
    };
    SessionStart {
        persistent,
        clean_start: connect.clean_session,
        expiry_s,
        resumed,
    }
}

fn count_dropped(stats: &Stats, dropped: u64) {
    for _ in 0..dropped {
        stats.dropped(DropCause::SessionQueueFull);
    }
}

/// How often parked sessions are checked for expiry.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// Purges expired parked sessions until shutdown. A session is purged under its
/// connection-setup lock, so a client reconnecting at that moment either resumes it
/// before or finds it gone.
pub(crate) fn spawn_expiry(core: &Arc<Core>, shutdown: CancellationToken) {
    let core = core.clone();
    let tracker = core.tracker.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for key in core.session_store.expired(now_ms()) {
                let slot = core.sessions.slot(&key);
                let _setup = slot.lock().await;
                if core.session_store.is_expired(&key, now_ms()) {
                    tracing::debug!(session = key, "session expired");
                    core.session_store.discard(&key).await;
                }
            }
        }
    });
}

mod check;
#[cfg(test)]
mod tests;
