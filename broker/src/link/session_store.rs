//! Persistent sessions, owned by fleetmq (rumqttd's are in memory and never expire).
//!
//! Every router link is built clean; what a persistent session keeps between
//! connections lives here and in redb (`storage::sessions`):
//! - the record (subscriptions, expiry, inbound QoS 2 packet ids) is written when it
//!   changes and when the client leaves;
//! - while the client is away the session is *parked*: its subscriptions sit in an
//!   in-memory index, and every QoS 1/2 PUBLISH that matches is appended to the
//!   session's redb queue **before** it is routed, so before the publisher gets its
//!   PUBACK/PUBREC: nothing acknowledged is lost, even by kill -9;
//! - at reconnect the connection re-subscribes its router link, unparks the session and
//!   delivers the queue before any live traffic.
//! - parked sessions expire after their Session Expiry Interval (3.1.1: never).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmq_storage::{now_ms, QueuedMessage, SessionRecord, SessionSubscription, Store};
use rumqttd::protocol::{Connect, ConnectProperties};
use tokio_util::sync::CancellationToken;

use super::framing::Version;
use super::session_link::SessionStart;
use super::topic;
use super::Core;
use crate::stats::{DropCause, Stats};

/// Session Expiry Interval meaning "never" (3.1.1 sessions, v5 0xFFFFFFFF).
pub(crate) const NEVER: u32 = u32::MAX;

struct Parked {
    subscriptions: Vec<SessionSubscription>,
    expires_at_ms: Option<u64>,
}

/// The parked sessions (clients away), and the store behind every session.
pub(crate) struct SessionStore {
    store: Store,
    max_queued: usize,
    parked: Mutex<HashMap<String, Parked>>,
}

fn expires_at(rec: &SessionRecord, left_at_ms: u64) -> Option<u64> {
    (rec.expiry_s != NEVER).then(|| left_at_ms.saturating_add(u64::from(rec.expiry_s) * 1000))
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
        let mut parked = HashMap::new();
        for rec in records {
            let left = rec.disconnected_at_ms.unwrap_or(now);
            let p = Parked {
                expires_at_ms: expires_at(&rec, left),
                subscriptions: rec.subscriptions,
            };
            parked.insert(rec.key, p);
        }
        tracing::info!(count = parked.len(), "persistent sessions restored");
        SessionStore {
            store,
            max_queued,
            parked: Mutex::new(parked),
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Parked>> {
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
        self.parked().remove(key);
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

    /// The client is leaving: from now on matching publishes are queued for it.
    pub(crate) fn begin_park(
        &self,
        key: &str,
        subscriptions: &[SessionSubscription],
        expiry_s: u32,
    ) {
        let expires_at_ms =
            (expiry_s != NEVER).then(|| now_ms().saturating_add(u64::from(expiry_s) * 1000));
        let parked = Parked {
            subscriptions: subscriptions.to_vec(),
            expires_at_ms,
        };
        self.parked().insert(key.to_owned(), parked);
    }

    /// The client left: stores the record and appends what it had not acknowledged to
    /// the queue.
    pub(crate) async fn finish_park(
        &self,
        mut rec: SessionRecord,
        unacked: Vec<QueuedMessage>,
        stats: &Stats,
    ) {
        rec.disconnected_at_ms = Some(now_ms());
        let key = rec.key.clone();
        let max = self.max_queued;
        let batch: Vec<_> = unacked.into_iter().map(|m| (key.clone(), m)).collect();
        let result = self
            .store
            .call(move |s| {
                s.put_session(&rec)?;
                s.enqueue(&batch, max)
            })
            .await;
        match result {
            Ok(dropped) => count_dropped(stats, dropped),
            Err(e) => tracing::error!(error = %e, "could not park a session"),
        }
    }

    /// Stops queuing for a session whose client is back (its router link is subscribed).
    pub(crate) fn unpark(&self, key: &str) {
        self.parked().remove(key);
    }

    /// Appends a QoS 1/2 publish to the queue of every parked session with a matching
    /// subscription, durably, before it is routed. Returns when committed.
    pub(crate) async fn enqueue_matching(
        &self,
        topic_name: &str,
        payload: &[u8],
        qos: u8,
        stats: &Stats,
    ) {
        if qos == 0 {
            return;
        }
        let batch: Vec<(String, QueuedMessage)> = {
            let parked = self.parked();
            if parked.is_empty() {
                return;
            }
            parked
                .iter()
                .filter_map(|(key, p)| {
                    let granted = p
                        .subscriptions
                        .iter()
                        .filter(|s| !topic::is_shared(&s.filter))
                        .filter(|s| topic::matches(&s.filter, topic_name))
                        .map(|s| s.qos)
                        .max()?;
                    let qos = qos.min(granted);
                    (qos > 0).then(|| {
                        let msg = QueuedMessage {
                            topic: topic_name.to_owned(),
                            payload: payload.to_vec(),
                            qos,
                            dup: false,
                            queued_at_ms: now_ms(),
                        };
                        (key.clone(), msg)
                    })
                })
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        let max = self.max_queued;
        match self.store.call(move |s| s.enqueue(&batch, max)).await {
            Ok(dropped) => count_dropped(stats, dropped),
            Err(e) => tracing::error!(error = %e, "could not queue a message for a session"),
        }
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
            .get(key)
            .is_some_and(|p| p.expires_at_ms.is_some_and(|at| at <= now))
    }

    fn expired(&self, now: u64) -> Vec<String> {
        self.parked()
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
    let stored = core.session_store.parked().contains_key(key);
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
