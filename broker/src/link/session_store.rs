//! Persistent sessions, owned by fleetmq (rumqttd's are in memory and never expire).
//!
//! Every router link is built clean; what a persistent session keeps between
//! connections lives here and in redb (`storage::sessions`):
//! - the record (subscriptions with their identifiers, expiry, inbound QoS 2 packet ids)
//!   is written when it changes and when the client leaves;
//! - while the client is away the session is *parked*: its subscriptions sit in an
//!   index by filter level (`session_index`), and every QoS 1/2 PUBLISH that matches
//!   is appended to the session's redb queue, with its MQTT 5 properties (fleetmq's
//!   internal user properties removed, the session's matching Subscription Identifiers
//!   added), **before** it is routed, so before the publisher gets its PUBACK/PUBREC;
//! - at reconnect the connection re-subscribes its router link, unparks the session and
//!   delivers the queue before any live traffic.
//! - parked sessions expire after their Session Expiry Interval (3.1.1: never).
//!
//! # The parking window
//!
//! A session is parked (`begin_park`) while its router link is still subscribed; the
//! link leaves the router only after `finish_park`. A message M checked by
//! `enqueue_matching` *after* `begin_park` is queued by its publisher, and is then
//! routed, so the router may still hand it to the leaving link, which collects what
//! the router handed it but the client never saw. Without a rule M would be queued
//! twice and delivered twice. The rule: the check and the parking take the same lock,
//! and every check gets an arrival number from a counter under it (carried through the
//! router in the message's origin); `begin_park` returns the counter as the session's
//! [`ParkMark`]. A collected message numbered at or past the mark that matches one of
//! the session's (non-shared) subscriptions was queued by its publisher and is not
//! queued again; one numbered below the mark was checked before the session was
//! parked, so its publisher did not queue it, and the link's copy is the only one.
//!
//! The other side of the window: a message checked *before* `begin_park` that the
//! router had not yet handed the link when it collected (still in a publisher's batch,
//! in the router's event channel or in a filter log) is queued by no publisher, and the
//! link never sees it. So while a persistent session is connected its filters sit in a
//! second index, and every check that matches one records the routed message, under
//! the same lock, in that session's ledger (`session_ledger`); egress removes what the
//! router delivers. `begin_park` moves the session from the live index to the parked
//! one under the lock, so the ledger then holds exactly the messages numbered below the
//! mark that the link has not been handed: after collecting its leftovers the link
//! takes them through egress (ACL, No Local, QoS, expiry) and they are queued with the
//! rest, in arrival order (ahead of what publishers queued since the mark). A new
//! subscription of a connected session enters the live index before its SUBSCRIBE goes
//! to the router, and its SUBACK settles what the router may not deliver of what was
//! recorded meanwhile (`session_owed`). A barrier that waits for the router to have forwarded
//! everything numbered below the mark is not possible with rumqttd: it consumes each
//! filter's log separately, 100 at a time round-robin, so no marker proves that
//! another filter's log has been read past a point.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmq_storage::{now_ms, QueuedMessage, SessionRecord, SessionSubscription, Store};
use rumqttd::protocol::{Connect, ConnectProperties};
use tokio_util::sync::CancellationToken;

use super::framing::Version;
use super::origin::{Routed, Routing};
use super::session_index::FilterIndex;
pub(crate) use super::session_ledger::QueuedWindow;
use super::session_ledger::SharedLedger;
use super::session_link::SessionStart;
pub(super) use super::session_props::{publish_properties, stored_properties};
use super::topic;
use super::Core;
use crate::stats::{DropCause, Stats};

/// Session Expiry Interval meaning "never" (3.1.1 sessions, v5 0xFFFFFFFF).
pub(crate) const NEVER: u32 = u32::MAX;

struct Parked {
    subscriptions: Vec<SessionSubscription>,
    expires_at_ms: Option<u64>,
    /// The arrival counter when it was parked (0 for one loaded at start: the counter
    /// starts again there).
    since: u64,
    /// Arrival numbers its connection queued from its ledger when it left.
    leftovers: HashSet<u64>,
}

/// A connected persistent session, as the check sees it.
struct Live {
    subscriptions: Vec<SessionSubscription>,
    ledger: SharedLedger,
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
    /// Parked sessions with copies being written by publishers right now.
    writing: HashMap<String, usize>,
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

/// Whether a connected session's subscription takes QoS 1/2 messages into its ledger:
/// one that would queue them, above QoS 0 (so a match in the live index is a take).
fn records(s: &SessionSubscription) -> bool {
    queues(s) && s.qos > 0
}

/// Where a session's parking cut the arrival numbers: messages numbered at or past it
/// were checked while it was parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParkMark(u64);

/// Counts a publisher's copies for parked sessions as being written until dropped.
struct Writing<'a> {
    store: &'a SessionStore,
    keys: Vec<String>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut set = self.store.parked();
        for key in &self.keys {
            if let Some(n) = set.writing.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    set.writing.remove(key);
                }
            }
        }
        drop(set);
        self.store.written.notify_waiters();
    }
}

/// A message the leaving client had not acknowledged (or never saw).
pub(crate) struct Unacked {
    pub(crate) msg: QueuedMessage,
    /// Its arrival number, for one the router handed the link (see [`ParkMark`]).
    pub(crate) arrival: Option<u64>,
}

/// The parked sessions (clients away), and the store behind every session.
pub(crate) struct SessionStore {
    store: Store,
    max_queued: usize,
    parked: Mutex<ParkedSet>,
    /// Signalled when publishers finished writing copies (see [`SessionStore::settled`]).
    written: tokio::sync::Notify,
}

/// Entries a connected session's ledger keeps at most, per message its queue keeps.
const LEDGER_PER_QUEUED: usize = 4;

fn expires_at(rec: &SessionRecord, left_at_ms: u64) -> Option<u64> {
    (rec.expiry_s != NEVER).then(|| left_at_ms.saturating_add(u64::from(rec.expiry_s) * 1000))
}

/// A publish as the parked-session check sees it.
pub(crate) struct Incoming<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) qos: u8,
    pub(crate) retain: bool,
}

/// Whether a session with these subscriptions gets a QoS 1/2 message on `topic_name`
/// queued (a matching non-shared subscription above QoS 0).
pub(super) fn takes(subs: &[SessionSubscription], topic_name: &str) -> bool {
    subs.iter()
        .any(|s| queues(s) && s.qos > 0 && topic::matches(&s.filter, topic_name))
}

/// The copy of `base` for a parked session, if one of its subscriptions takes it: QoS
/// capped by the best matching subscription, RETAIN kept only for Retain As Published,
/// the identifiers of every matching subscription [MQTT-3.3.4-3] [MQTT-3.3.4-5].
fn copy_for(p: &Parked, base: &QueuedMessage) -> Option<QueuedMessage> {
    let matching: Vec<&SessionSubscription> = p
        .subscriptions
        .iter()
        .filter(|s| queues(s) && topic::matches(&s.filter, &base.topic))
        .collect();
    let granted = matching.iter().map(|s| s.qos).max()?;
    let qos = base.qos.min(granted);
    if qos == 0 {
        return None;
    }
    let mut ids: Vec<u32> = matching.iter().filter_map(|s| s.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut msg = base.clone();
    msg.qos = qos;
    msg.retain = base.retain && matching.iter().any(|s| s.retain_as_published);
    msg.properties.subscription_ids = ids;
    Some(msg)
}

impl SessionStore {
    /// Loads every stored session as parked; a session that was connected when the
    /// broker stopped counts as having left now.
    pub(crate) fn load(
        store: Store,
        max_queued: usize,
        records: Vec<SessionRecord>,
    ) -> SessionStore {
        let now = now_ms();
        let mut parked = ParkedSet::default();
        for rec in records {
            let left = rec.disconnected_at_ms.unwrap_or(now);
            let p = Parked {
                expires_at_ms: expires_at(&rec, left),
                subscriptions: rec.subscriptions,
                since: 0,
                leftovers: HashSet::new(),
            };
            parked.insert(&rec.key, p);
        }
        tracing::info!(
            count = parked.sessions.len(),
            "persistent sessions restored"
        );
        SessionStore {
            store,
            max_queued,
            parked: Mutex::new(parked),
            written: tokio::sync::Notify::new(),
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, ParkedSet> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
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

    /// The client is leaving: from now on matching publishes are queued for it. The mark
    /// tells `finish_park` which of the link's leftovers their publishers queued.
    pub(crate) fn begin_park(
        &self,
        key: &str,
        subscriptions: &[SessionSubscription],
        expiry_s: u32,
    ) -> ParkMark {
        let expires_at_ms =
            (expiry_s != NEVER).then(|| now_ms().saturating_add(u64::from(expiry_s) * 1000));
        let mut set = self.parked();
        let parked = Parked {
            subscriptions: subscriptions.to_vec(),
            expires_at_ms,
            since: set.next_arrival,
            leftovers: HashSet::new(),
        };
        set.remove_live(key);
        set.insert(key, parked);
        ParkMark(set.next_arrival)
    }

    /// The client left: stores the record (with its pending PUBRELs), marks the queue
    /// entries that were in flight with their packet ids (`sent`: seq, packet id) and
    /// queues what it had not acknowledged, except what publishers queued themselves
    /// after `mark`. Those go ahead of the copies publishers queued since `mark` (queue
    /// entries past `stored`, the newest one before `begin_park`: nothing is queued for
    /// a connected session), so the queue stays in arrival order: everything the
    /// connection owed arrived before the mark.
    pub(crate) async fn finish_park(
        &self,
        mut rec: SessionRecord,
        unacked: Vec<Unacked>,
        sent: Vec<(u64, u16)>,
        mark: ParkMark,
        stored: Option<u64>,
        stats: &Stats,
    ) {
        rec.disconnected_at_ms = Some(now_ms());
        let max = self.max_queued;
        let batch: Vec<_> = unacked
            .into_iter()
            .filter(|u| !queued_by_publisher(&rec.subscriptions, mark, u))
            .map(|u| u.msg)
            .collect();
        let result = self
            .store
            .call(move |s| {
                s.put_session(&rec)?;
                s.mark_sent(&rec.key, &sent)?;
                s.enqueue_before(&rec.key, stored, &batch, max)
            })
            .await;
        match result {
            Ok(dropped) => count_dropped(stats, dropped),
            Err(e) => tracing::error!(error = %e, "could not park a session"),
        }
    }

    /// The sequence number of the newest entry of a session's queue: read by a
    /// connection about to park its session, so what publishers queue from then on is
    /// told apart (`finish_park`).
    pub(crate) async fn last_queued_seq(&self, key: &str) -> Option<u64> {
        let key = key.to_owned();
        self.store
            .call(move |s| s.last_queued_seq(&key))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "could not read a session queue");
                None
            })
    }

    /// Stops queuing for a session whose client is back (its router link is subscribed).
    pub(crate) fn unpark(&self, key: &str) {
        self.parked().remove(key);
    }

    /// A persistent session's client is connected (its router link subscribed to
    /// `subscriptions`): stops queuing for it, if it was parked, and from now on records
    /// what its subscriptions take in the returned ledger, until `begin_park`. For a
    /// session that was parked, also the window of arrival numbers its publishers queued;
    /// and the arrival counter from which the ledger records.
    pub(crate) fn go_live(
        &self,
        key: &str,
        subscriptions: &[SessionSubscription],
    ) -> (SharedLedger, Option<QueuedWindow>, u64) {
        let ledger = SharedLedger::new(self.max_queued.saturating_mul(LEDGER_PER_QUEUED));
        let live = Live {
            subscriptions: subscriptions.to_vec(),
            ledger: ledger.clone(),
        };
        let mut set = self.parked();
        let now = set.next_arrival;
        let window = set.sessions.get_mut(key).map(|p| QueuedWindow {
            arrivals: p.since..now,
            subscriptions: p.subscriptions.clone(),
            leftovers: std::mem::take(&mut p.leftovers),
        });
        set.remove(key);
        set.insert_live(key, live);
        (ledger, window, now)
    }

    /// A connected session's subscriptions changed (a SUBSCRIBE goes to the router, the
    /// router answered one, or an UNSUBSCRIBE goes to it). Returns the arrival counter
    /// at the change: a message numbered at or past it was checked with these
    /// subscriptions (`session_owed`).
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

    /// Appends a QoS 1/2 publish to the queue of every parked session with a matching
    /// subscription, durably, before it is routed, and records it in the ledger of every
    /// connected persistent session it matches. Returns when committed, with the routed
    /// PUBLISH, its header numbered (QoS 0 is never queued nor numbered).
    pub(crate) async fn enqueue_matching(
        &self,
        m: Incoming<'_>,
        routing: Routing,
        stats: &Stats,
    ) -> Routed {
        if m.qos == 0 {
            return routing.finish(None);
        }
        let (routed, batch, writing) = self.matching_copies(&m, routing);
        if !batch.is_empty() {
            let max = self.max_queued;
            match self.store.call(move |s| s.enqueue(&batch, max)).await {
                Ok(dropped) => count_dropped(stats, dropped),
                Err(e) => tracing::error!(error = %e, "could not queue a message for a session"),
            }
        }
        drop(writing);
        routed
    }

    /// Returns once no publisher is still writing a copy for `key`, which is no longer
    /// parked: its stored queue is then complete.
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

    /// The leaving connection of a parked session queued these from its ledger (see
    /// [`QueuedWindow`]).
    pub(crate) fn queued_leftovers(&self, key: &str, arrivals: HashSet<u64>) {
        if let Some(p) = self.parked().sessions.get_mut(key) {
            p.leftovers = arrivals;
        }
    }

    /// Numbers a QoS 1/2 publish, records it for each connected session that takes it
    /// and builds its copy for each parked one; only sessions whose filters can match are
    /// looked at.
    fn matching_copies(
        &self,
        m: &Incoming<'_>,
        routing: Routing,
    ) -> (Routed, Vec<(String, QueuedMessage)>, Writing<'_>) {
        let mut guard = self.parked();
        let set = &mut *guard;
        let arrival = set.next_arrival;
        set.next_arrival += 1;
        let routed = routing.finish(Some(arrival));
        let live_keys = if set.live.is_empty() {
            HashSet::new()
        } else {
            set.live_index.matching(m.topic)
        };
        // Only subscriptions that take QoS 1/2 copies are in the live index.
        for key in live_keys {
            if let Some(live) = set.live.get(key) {
                live.ledger.lock().record(arrival, routed.clone());
            }
        }
        let mut writing = Writing {
            store: self,
            keys: Vec::new(),
        };
        if set.sessions.is_empty() {
            return (routed, Vec::new(), writing);
        }
        let keys = set.index.matching(m.topic);
        if keys.is_empty() {
            return (routed, Vec::new(), writing);
        }
        let now = now_ms();
        // The routed properties: the publisher's, with fleetmq's retain mark, which
        // the stored copy leaves out.
        let (properties, expires_at_ms) = stored_properties(routed.1.as_ref(), now);
        let base = QueuedMessage {
            topic: m.topic.to_owned(),
            payload: m.payload.to_vec(),
            qos: m.qos,
            dup: false,
            retain: m.retain,
            queued_at_ms: now,
            expires_at_ms,
            properties,
            pkid: None,
        };
        let batch = keys
            .into_iter()
            .filter_map(|key| {
                let copy = copy_for(set.sessions.get(key)?, &base)?;
                Some((key.to_owned(), copy))
            })
            .collect::<Vec<_>>();
        for (key, _) in &batch {
            *set.writing.entry(key.clone()).or_default() += 1;
            writing.keys.push(key.clone());
        }
        (routed, batch, writing)
    }

    /// A session's queue, oldest first.
    pub(crate) async fn queued(&self, key: &str) -> Vec<(u64, QueuedMessage)> {
        let key = key.to_owned();
        self.store
            .call(move |s| s.queued(&key))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "could not read a session queue");
                Vec::new()
            })
    }

    /// Removes delivered messages from a session's queue.
    pub(crate) async fn dequeue(&self, key: &str, seqs: Vec<u64>) {
        let key = key.to_owned();
        if let Err(e) = self.store.call(move |s| s.dequeue(&key, &seqs)).await {
            tracing::error!(error = %e, "could not remove delivered messages");
        }
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

/// Whether the publisher of a message the leaving link collected queued it itself: it
/// was checked at or after the session's parking and one of its subscriptions takes it.
fn queued_by_publisher(subs: &[SessionSubscription], mark: ParkMark, u: &Unacked) -> bool {
    u.arrival.is_some_and(|a| a >= mark.0) && takes(subs, &u.msg.topic)
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
        (true, false) => core.session_store.record(key).await,
    };
    SessionStart {
        persistent,
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

#[cfg(test)]
mod tests;
