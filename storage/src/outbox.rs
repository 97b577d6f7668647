//! The durable webhook outbox (SPEC §7).
//!
//! One *delivery* per (event, webhook URL) is committed before the event counts as
//! emitted. It leaves the outbox when its URL answers 2xx, or stays as *dead* (for
//! inspection, capped) once its URL has kept failing for the give-up time.
//!
//! Tables:
//! - [`DELIVERIES`]: delivery id → versioned record (URL, event id and type, the exact
//!   body that is POSTed, attempts, last error). Ids come from a counter in [`META`] and
//!   never repeat, so they double as list cursors.
//! - [`QUEUE`]: `(url, id)` for every owed delivery: each URL's deliveries in send order.
//! - [`DEAD`]: ids of given-up deliveries, oldest first, so the oldest are pruned first.
//! - [`URLS`]: per URL, the number of owed deliveries and the retry state (consecutive
//!   failures, when the failure streak began, when to try next). Retry timing is data,
//!   so a restart resumes the backoff where it stopped.
//!
//! Retry state belongs to the URL, not the delivery, because a URL's deliveries go out
//! strictly in order: while its head delivery fails, the ones behind it wait; they are
//! listed as `pending` until they are attempted themselves. A delivery is given up once its URL has been failing
//! for `give_up_after` counted from the later of the delivery's creation and the start
//! of the streak, so every delivery gets at least that long.
//!
//! Submodules: `records` (the versioned postcard records), `tables` (the write helper
//! and in-transaction repairs), `listing` ([`list`]), `manage` (an operator's
//! [`retry`] and [`discard`] of one delivery), `handle` ([`Outbox`], the async handle).
//!
//! Every free function here is blocking and runs one or a few short transactions;
//! [`Outbox`] runs them on tokio's blocking pool. Undecodable bytes come back as
//! [`StoreError::Corrupt`]; [`next_due`] also heals the queue around them (a corrupt
//! delivery at the head of a queue would otherwise block its URL forever).

use std::fmt;
use std::str::FromStr;

use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

mod handle;
mod listing;
mod manage;
mod records;
mod tables;

pub use self::handle::Outbox;
pub use self::listing::{list, list_for};
pub use self::manage::{discard, retry, Discarded};
use self::records::{corrupt, decode_delivery, decode_state, DeliveryV1, UrlStateV1};
use self::tables::{truncate, write, Tables};

/// The outbox's tables, defined in `schema` (public here as they always were).
pub use crate::schema::{
    OUTBOX_DEAD as DEAD, OUTBOX_DELIVERIES as DELIVERIES, OUTBOX_META as META,
    OUTBOX_QUEUE as QUEUE, OUTBOX_URLS as URLS,
};

const NEXT_ID: &str = "next_id";
/// Longest `last_error` kept, in bytes.
const MAX_ERROR_LEN: usize = 512;
/// Most deliveries given up or abandoned in one transaction, so a long queue never
/// holds the single redb writer for long.
pub const BATCH: usize = 1_000;
/// Most items one [`list`] call returns.
pub const MAX_LIST: usize = 1_000;

// ---- public types ------------------------------------------------------

/// Where a delivery stands, as listed by `GET /api/v1/webhooks/deliveries?status=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Owed and never attempted (it may wait behind a failing delivery to its URL).
    Pending,
    /// Owed; attempted and failed, will be retried.
    Failed,
    /// Given up after the URL kept failing for the give-up time; kept for inspection.
    Dead,
}

impl DeliveryStatus {
    /// The lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Dead => "dead",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a [`DeliveryStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery status {0:?}; expected pending, failed or dead")]
pub struct InvalidDeliveryStatus(pub String);

impl FromStr for DeliveryStatus {
    type Err = InvalidDeliveryStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "failed" => Ok(DeliveryStatus::Failed),
            "dead" => Ok(DeliveryStatus::Dead),
            _ => Err(InvalidDeliveryStatus(s.to_owned())),
        }
    }
}

/// An event to queue for delivery.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The event's id.
    pub event_id: String,
    /// The event's type, e.g. `device.online`.
    pub event_type: String,
    /// The exact bytes to POST (signed when sent, so secrets never reach the file).
    pub body: Vec<u8>,
}

/// Caps on what the outbox keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Owed deliveries per URL; a new event for a full URL is not queued for it.
    pub max_owed_per_url: u64,
    /// Dead deliveries kept in all; the oldest are deleted past it.
    pub max_dead: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_owed_per_url: 100_000,
            max_dead: 10_000,
        }
    }
}

/// What [`enqueue`] did for one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued under this delivery id.
    Queued(u64),
    /// The URL already owes [`OutboxLimits::max_owed_per_url`] deliveries: not queued.
    Full,
}

/// The head of a URL's queue: the next delivery to send.
#[derive(Debug, Clone)]
pub struct Due {
    /// Delivery id.
    pub id: u64,
    /// The event's id.
    pub event_id: String,
    /// The exact bytes to POST.
    pub body: Vec<u8>,
    /// Failed attempts of this delivery so far.
    pub attempts: u32,
    /// Consecutive failed attempts to the URL (input to the backoff).
    pub failures: u32,
    /// Not to be sent before this unix time in ms (0: now).
    pub not_before_ms: u64,
}

/// A delivery as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Delivery id.
    pub id: u64,
    /// Target URL.
    pub url: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// See [`DeliveryStatus`].
    pub status: DeliveryStatus,
    /// Failed attempts of this delivery.
    pub attempts: u32,
    /// When it was queued (unix ms).
    pub created_at_ms: u64,
    /// When it was last attempted (unix ms).
    pub last_attempt_at_ms: Option<u64>,
    /// When it will be retried: only for the head of a failing URL's queue; the
    /// deliveries behind it go right after it.
    pub next_attempt_at_ms: Option<u64>,
    /// Why the last attempt failed, or why it was given up.
    pub last_error: Option<String>,
}

/// Numbers for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxCounts {
    /// Deliveries still owed (pending or failed).
    pub owed: u64,
    /// Dead deliveries kept.
    pub dead: u64,
}

// ---- transactions ------------------------------------------------------

/// Creates the outbox tables; part of opening the database.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    crate::schema::create_outbox_tables(txn)
}

/// Queues `event` once for each of `urls` in one durable transaction; one outcome per
/// URL, in order.
pub fn enqueue(
    db: &Database,
    event: &NewDelivery,
    urls: &[String],
    now_ms: u64,
    limits: OutboxLimits,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut outcomes = enqueue_many(db, &[(event, urls)], now_ms, limits)?;
    Ok(outcomes.pop().unwrap_or_default())
}

/// Queues several events, each once for each of its URLs, in one durable transaction
/// (one commit for a whole batch of events); one outcome list per event, in order.
pub fn enqueue_many(
    db: &Database,
    events: &[(&NewDelivery, &[String])],
    now_ms: u64,
    limits: OutboxLimits,
) -> Result<Vec<Vec<Enqueued>>, StoreError> {
    write(db, Durability::Immediate, |txn| {
        let mut meta = txn.open_table(META)?;
        let mut t = Tables::open(txn)?;
        let mut next_id = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
        let mut all = Vec::with_capacity(events.len());
        for &(event, urls) in events {
            let mut out = Vec::with_capacity(urls.len());
            for url in urls {
                let mut state = t.state(url)?;
                if state.owed >= limits.max_owed_per_url {
                    out.push(Enqueued::Full);
                    continue;
                }
                let id = next_id;
                next_id = next_id
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Invalid("outbox delivery ids exhausted".into()))?;
                let record = DeliveryV1 {
                    url: url.clone(),
                    event_id: event.event_id.clone(),
                    event_type: event.event_type.clone(),
                    body: event.body.clone(),
                    created_at_ms: now_ms,
                    attempts: 0,
                    last_attempt_at_ms: None,
                    last_error: None,
                    dead_at_ms: None,
                };
                t.put(id, &record)?;
                t.queue.insert((url.as_str(), id), ())?;
                state.owed += 1;
                t.put_state(url, &state)?;
                out.push(Enqueued::Queued(id));
            }
            all.push(out);
        }
        meta.insert(NEXT_ID, next_id)?;
        Ok(all)
    })
}

enum Head {
    Empty,
    Ready(Due),
    /// The head's record is missing or undecodable.
    Broken(u64, StoreError),
    /// The head's record is for another URL or dead: only the queue entry is wrong.
    Misqueued(u64),
}

fn peek_head(db: &Database, url: &str) -> Result<Head, StoreError> {
    let txn = db.begin_read()?;
    let queue = txn.open_table(QUEUE)?;
    let Some(first) = queue.range((url, 0)..=(url, u64::MAX))?.next() else {
        return Ok(Head::Empty);
    };
    let id = first?.0.value().1;
    let state = match txn.open_table(URLS)?.get(url)? {
        Some(v) => decode_state(url, v.value()),
        None => Ok(UrlStateV1::default()),
    };
    // A corrupt state only loses the backoff timing: retry now and rebuild it on the
    // next write (`Tables::state`).
    let state = state.unwrap_or_else(|error| {
        tracing::error!(%error, "corrupt webhook URL state; retrying now");
        UrlStateV1::default()
    });
    let deliveries = txn.open_table(DELIVERIES)?;
    let record = match deliveries.get(id)? {
        Some(v) => decode_delivery(id, v.value()),
        None => Err(corrupt("outbox_deliveries", id, "queued but missing")),
    };
    let record = match record {
        Ok(r) if r.url == url && r.dead_at_ms.is_none() => r,
        Ok(_) => return Ok(Head::Misqueued(id)),
        Err(e) => return Ok(Head::Broken(id, e)),
    };
    Ok(Head::Ready(Due {
        id,
        event_id: record.event_id,
        body: record.body,
        attempts: record.attempts,
        failures: state.failures,
        not_before_ms: state.next_attempt_at_ms,
    }))
}

/// The next delivery owed to `url`, if any. A head whose record is unusable is
/// discarded (logged at error level) so it cannot block the URL forever.
pub fn next_due(db: &Database, url: &str) -> Result<Option<Due>, StoreError> {
    loop {
        match peek_head(db, url)? {
            Head::Empty => return Ok(None),
            Head::Ready(due) => return Ok(Some(due)),
            head @ (Head::Broken(..) | Head::Misqueued(_)) => {
                write(db, Durability::Immediate, |txn| {
                    let mut t = Tables::open(txn)?;
                    match head {
                        Head::Broken(id, error) => t.discard(url, id, &error)?,
                        Head::Misqueued(id) => {
                            tracing::error!(
                                delivery_id = id,
                                "removing a misplaced webhook queue entry"
                            );
                            t.queue.remove((url, id))?;
                        }
                        Head::Empty | Head::Ready(_) => {}
                    }
                    let mut state = t.state(url)?;
                    state.owed = t.count_owed(url)?;
                    t.put_state(url, &state)
                })?
            }
        }
    }
}

/// Delivery `id` of `url` got a 2xx: removes it and ends the URL's failure streak.
///
/// Committed without fsync: if the machine crashes before the next durable commit,
/// the delivery is sent again, which at-least-once allows; this halves the fsyncs of
/// a healthy webhook.
pub fn delivered(db: &Database, url: &str, id: u64) -> Result<(), StoreError> {
    write(db, Durability::None, |txn| {
        let mut t = Tables::open(txn)?;
        if t.queue.remove((url, id))?.is_none() {
            return Ok(());
        }
        t.deliveries.remove(id)?;
        let state = t.state(url)?;
        t.put_state(
            url,
            &UrlStateV1 {
                owed: state.owed.saturating_sub(1),
                ..UrlStateV1::default()
            },
        )
    })
}

/// An attempt of delivery `id` of `url` failed at `now_ms` with `error`; the URL is
/// next tried at `next_attempt_at_ms`.
pub fn failed(
    db: &Database,
    url: &str,
    id: u64,
    now_ms: u64,
    error: &str,
    next_attempt_at_ms: u64,
) -> Result<(), StoreError> {
    write(db, Durability::Immediate, |txn| {
        let mut t = Tables::open(txn)?;
        if let Some(mut d) = t.get(id)? {
            d.attempts = d.attempts.saturating_add(1);
            d.last_attempt_at_ms = Some(now_ms);
            d.last_error = Some(truncate(error.to_owned()));
            t.put(id, &d)?;
        }
        let mut state = t.state(url)?;
        state.failures = state.failures.saturating_add(1);
        state.failing_since_ms.get_or_insert(now_ms);
        state.next_attempt_at_ms = next_attempt_at_ms;
        t.put_state(url, &state)
    })
}

/// Gives up (up to [`BATCH`] of) `url`'s owed deliveries that its failure streak has
/// outlasted by `give_up_after_ms`; how many. Call until it returns 0.
pub fn give_up_expired(
    db: &Database,
    url: &str,
    now_ms: u64,
    give_up_after_ms: u64,
    limits: OutboxLimits,
) -> Result<u64, StoreError> {
    write(db, Durability::Immediate, |txn| {
        let mut t = Tables::open(txn)?;
        let mut state = t.state(url)?;
        let Some(since) = state.failing_since_ms else {
            return Ok(0);
        };
        let mut n = 0;
        for id in t.head_ids(url, BATCH)? {
            let record = match t.get(id) {
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err(corrupt("outbox_deliveries", id, "queued but missing")),
                Err(error) => Err(error),
            };
            let d = match record {
                Ok(d) => d,
                Err(error) => {
                    t.discard(url, id, &error)?;
                    state.owed = state.owed.saturating_sub(1);
                    continue;
                }
            };
            if now_ms.saturating_sub(d.created_at_ms.max(since)) < give_up_after_ms {
                break;
            }
            let hours = give_up_after_ms as f64 / 3_600_000.0;
            let reason = || format!("gave up: the URL kept failing for {hours:.2} h");
            t.bury(url, id, d, now_ms, reason, limits)?;
            state.owed = state.owed.saturating_sub(1);
            n += 1;
        }
        t.put_state(url, &state)?;
        Ok(n)
    })
}

/// Gives up (up to [`BATCH`] of) the deliveries owed to `url` regardless of age, with
/// `reason` as their error if they have none; how many. Once none is left the URL's
/// state is removed. For URLs no longer configured; call until it returns 0.
pub fn abandon(
    db: &Database,
    url: &str,
    now_ms: u64,
    reason: &str,
    limits: OutboxLimits,
) -> Result<u64, StoreError> {
    write(db, Durability::Immediate, |txn| {
        let mut t = Tables::open(txn)?;
        let mut n = 0;
        for id in t.head_ids(url, BATCH)? {
            match t.get(id) {
                Ok(Some(d)) => t.bury(url, id, d, now_ms, || reason.to_owned(), limits)?,
                Ok(None) => {
                    t.queue.remove((url, id))?;
                }
                Err(error) => t.discard(url, id, &error)?,
            }
            n += 1;
        }
        let owed = t.count_owed(url)?;
        if owed == 0 {
            t.urls.remove(url)?;
        } else {
            let state = t.state(url)?;
            t.put_state(url, &UrlStateV1 { owed, ..state })?;
        }
        Ok(n)
    })
}

/// Every URL the outbox keeps state for (owed deliveries or a failure streak).
pub fn known_urls(db: &Database) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read()?;
    let urls = txn.open_table(URLS)?;
    let mut out = Vec::new();
    for entry in urls.iter()? {
        out.push(entry?.0.value().to_owned());
    }
    Ok(out)
}

/// How many deliveries are owed and dead.
pub fn counts(db: &Database) -> Result<OutboxCounts, StoreError> {
    let txn = db.begin_read()?;
    Ok(OutboxCounts {
        owed: txn.open_table(QUEUE)?.len()?,
        dead: txn.open_table(DEAD)?.len()?,
    })
}

#[cfg(test)]
mod tests;
