//! The device event tables (SPEC §7 `device.event`): every JSON payload a device
//! published on `device/{id}/events`, kept for the telemetry retention.
//!
//! - `device_events`: `(device, at_ms, seq)` → `StoredEvent` (postcard): the event's
//!   `type` and its payload as JSON text. `seq` comes from one store-wide counter, so
//!   two events of a device in the same millisecond keep their arrival order and never
//!   overwrite each other; a reverse range scan meets a device's events newest first.
//! - `device_events_by_age`: `(at_ms, seq)` → device, so retention by age walks only
//!   the expired events instead of every device.
//! - `device_event_counts`: device → how many events it has, so the per-device cap
//!   costs one lookup per device.
//! - `device_events_meta`: `"next_seq"` → the next unused `seq`.
//!
//! Like `telemetry`, these are free functions over a `redb::Database` with their own
//! transactions: [`insert_batch`] stores any number of events in one durable commit,
//! [`sweep_until`] enforces retention in bounded transactions. Undecodable records come
//! back as [`StoreError::Corrupt`] except in [`query`], which skips and logs one so a
//! bad record does not hide a device's history.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use redb::{Database, Durability, ReadableDatabase as _, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{
    DEVICES, DEVICE_EVENTS as EVENTS, DEVICE_EVENTS_BY_AGE as BY_AGE, DEVICE_EVENTS_META as META,
    DEVICE_EVENTS_TABLE as EVENTS_TABLE, DEVICE_EVENT_COUNTS as COUNTS,
};

const NEXT_SEQ: &str = "next_seq";

/// Most rows one [`query`] page reads; a type filter that matches rarely ends the page
/// early with a cursor rather than walking a device's whole history in one call.
pub const QUERY_SCAN_BUDGET: usize = 50_000;

/// Most removals in one retention transaction, so ingest never waits behind one huge
/// delete.
pub(crate) const SWEEP_TXN_BUDGET: u64 = 20_000;

// ---- API types -------------------------------------------------------------------

/// An event to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub device: DeviceId,
    /// When the broker received it, unix milliseconds.
    pub at_ms: u64,
    /// The payload's `type`.
    pub kind: String,
    /// The payload, as JSON text (an object).
    pub data: String,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at_ms: u64,
    pub seq: u64,
    pub kind: String,
    /// JSON text.
    pub data: String,
}

/// Where a newest-first page ended; the next page starts just before it. Shown to API
/// clients as an opaque string (`Display` / `FromStr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    at_ms: u64,
    seq: u64,
}

/// A string that is not a [`Cursor`] this store handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event cursor")]
pub struct InvalidCursor;

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.at_ms, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (at, seq) = s.split_once('.').ok_or(InvalidCursor)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(at) || !digits(seq) {
            return Err(InvalidCursor);
        }
        Ok(Cursor {
            at_ms: at.parse().map_err(|_| InvalidCursor)?,
            seq: seq.parse().map_err(|_| InvalidCursor)?,
        })
    }
}

/// What [`query`] reads.
#[derive(Debug, Clone, Copy)]
pub struct EventQuery<'a> {
    /// Oldest `at_ms` included.
    pub from_ms: u64,
    /// Newest `at_ms` included.
    pub to_ms: u64,
    /// Only events of this type.
    pub kind: Option<&'a str>,
    /// Most events returned (at least one is asked for).
    pub limit: usize,
    /// Continue after a previous page.
    pub cursor: Option<Cursor>,
}

/// One newest-first page of events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<Event>,
    /// Where to continue, when more events may follow.
    pub next: Option<Cursor>,
}

// ---- records -----------------------------------------------------------------------

/// On-disk event. A new format is a new variant, never an edit to `V1`.
#[derive(Serialize, Deserialize)]
enum StoredEvent {
    V1(EventV1),
}

#[derive(Serialize, Deserialize)]
struct EventV1 {
    kind: String,
    data: String,
}

fn location(device: &str) -> Location<'_> {
    Location {
        table: EVENTS_TABLE,
        key: device,
    }
}

fn begin_write(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

// ---- writes --------------------------------------------------------------------------

/// Stores `events` in one durable write transaction and returns how many were stored.
/// Events of a device that no longer exists are skipped, so a late event cannot outlive
/// its device's deletion.
pub fn insert_batch(db: &Database, events: &[NewEvent]) -> Result<u64, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    let txn = begin_write(db)?;
    let stored = {
        let devices = txn.open_table(DEVICES)?;
        let mut rows = txn.open_table(EVENTS)?;
        let mut by_age = txn.open_table(BY_AGE)?;
        let mut counts = txn.open_table(COUNTS)?;
        let mut meta = txn.open_table(META)?;
        let mut seq = meta.get(NEXT_SEQ)?.map_or(0, |v| v.value());
        let mut added: HashMap<&str, u64> = HashMap::new();
        let mut known: HashMap<&str, bool> = HashMap::new();
        for e in events {
            let dev = e.device.as_str();
            let exists = match known.get(dev) {
                Some(&exists) => exists,
                None => {
                    let exists = devices.get(dev)?.is_some();
                    known.insert(dev, exists);
                    exists
                }
            };
            if !exists {
                continue;
            }
            let record = StoredEvent::V1(EventV1 {
                kind: e.kind.clone(),
                data: e.data.clone(),
            });
            let bytes = codec::encode(location(dev), &record)?;
            rows.insert((dev, e.at_ms, seq), bytes.as_slice())?;
            by_age.insert((e.at_ms, seq), dev)?;
            *added.entry(dev).or_default() += 1;
            seq += 1;
        }
        meta.insert(NEXT_SEQ, seq)?;
        let mut stored = 0;
        for (dev, n) in added {
            let before = counts.get(dev)?.map_or(0, |v| v.value());
            counts.insert(dev, before + n)?;
            stored += n;
        }
        stored
    };
    crate::metrics::commit(txn)?;
    Ok(stored)
}

/// Removes every event of `device`; how many were removed. For device deletion.
pub fn delete_device(db: &Database, device: &DeviceId) -> Result<u64, StoreError> {
    let dev = device.as_str();
    let txn = begin_write(db)?;
    let removed = {
        let mut rows = txn.open_table(EVENTS)?;
        let mut by_age = txn.open_table(BY_AGE)?;
        let mut keys = Vec::new();
        for row in rows.range((dev, 0, 0)..=(dev, u64::MAX, u64::MAX))? {
            let (key, _) = row?;
            let (_, at, seq) = key.value();
            keys.push((at, seq));
        }
        for &(at, seq) in &keys {
            rows.remove((dev, at, seq))?;
            by_age.remove((at, seq))?;
        }
        txn.open_table(COUNTS)?.remove(dev)?;
        keys.len() as u64
    };
    crate::metrics::commit(txn)?;
    Ok(removed)
}

// ---- reads ---------------------------------------------------------------------------

/// One page of `device`'s events, newest first.
pub fn query(db: &Database, device: &DeviceId, q: &EventQuery<'_>) -> Result<Page, StoreError> {
    let dev = device.as_str();
    let limit = q.limit.max(1);
    let mut page = Page::default();
    if q.from_ms > q.to_ms {
        return Ok(page);
    }
    let lo = (q.from_ms, 0);
    let Some(hi) = upper_bound(q.to_ms, q.cursor).filter(|&hi| hi >= lo) else {
        return Ok(page);
    };
    let txn = db.begin_read()?;
    let table = txn.open_table(EVENTS)?;
    let mut scanned = 0usize;
    for row in table.range((dev, lo.0, lo.1)..=(dev, hi.0, hi.1))?.rev() {
        let (key, value) = row?;
        let (_, at_ms, seq) = key.value();
        if page.events.len() == limit {
            // One more matching row may follow: hand out a cursor.
            page.next = page.events.last().map(|e| Cursor {
                at_ms: e.at_ms,
                seq: e.seq,
            });
            break;
        }
        scanned += 1;
        if scanned > QUERY_SCAN_BUDGET {
            // This row is not read yet: the next page starts at it.
            page.next = Some(step_after(at_ms, seq));
            break;
        }
        let StoredEvent::V1(v) = match codec::decode(location(dev), value.value()) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(device_id = dev, at_ms, seq, %error, "skipping corrupt device event");
                continue;
            }
        };
        if q.kind.is_some_and(|k| k != v.kind) {
            continue;
        }
        page.events.push(Event {
            at_ms,
            seq,
            kind: v.kind,
            data: v.data,
        });
    }
    Ok(page)
}

/// The newest `(at_ms, seq)` a page may hold: at most `to_ms`, and strictly before the
/// cursor; `None` when nothing is.
fn upper_bound(to_ms: u64, cursor: Option<Cursor>) -> Option<(u64, u64)> {
    let hi = (to_ms, u64::MAX);
    let Some(c) = cursor else {
        return Some(hi);
    };
    let before = match (c.at_ms, c.seq) {
        (0, 0) => return None,
        (at, 0) => (at - 1, u64::MAX),
        (at, seq) => (at, seq - 1),
    };
    Some(hi.min(before))
}

/// The cursor whose page starts at `(at_ms, seq)` itself.
fn step_after(at_ms: u64, seq: u64) -> Cursor {
    match seq.checked_add(1) {
        Some(seq) => Cursor { at_ms, seq },
        None => Cursor {
            at_ms: at_ms.saturating_add(1),
            seq: 0,
        },
    }
}

/// How many events `device` has stored.
pub fn count(db: &Database, device: &DeviceId) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    let counts = txn.open_table(COUNTS)?;
    Ok(counts.get(device.as_str())?.map_or(0, |v| v.value()))
}

// ---- retention -------------------------------------------------------------------------

/// Enforces retention: removes every event older than `older_than_ms`, then the oldest
/// events of each device beyond `max_per_device`. Works in transactions of at most
/// [`SWEEP_TXN_BUDGET`] removals, checking `stop` before each and returning early (with
/// what was removed so far) once it says so. Returns how many events were removed.
pub fn sweep_until(
    db: &Database,
    older_than_ms: u64,
    max_per_device: u64,
    stop: &dyn Fn() -> bool,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        if stop() {
            return Ok(removed);
        }
        let n = sweep_expired(db, older_than_ms, SWEEP_TXN_BUDGET)?;
        removed += n;
        if n < SWEEP_TXN_BUDGET {
            break;
        }
    }
    let over = devices_over(db, max_per_device)?;
    for (device, excess) in over {
        let mut left = excess;
        while left > 0 {
            if stop() {
                return Ok(removed);
            }
            let n = trim_device(db, &device, left.min(SWEEP_TXN_BUDGET))?;
            removed += n;
            left = if n == 0 { 0 } else { left - n };
        }
    }
    Ok(removed)
}

/// Removes up to `budget` events older than `older_than_ms`, oldest first.
fn sweep_expired(db: &Database, older_than_ms: u64, budget: u64) -> Result<u64, StoreError> {
    if older_than_ms == 0 {
        return Ok(0);
    }
    let txn = begin_write(db)?;
    let removed = {
        let mut rows = txn.open_table(EVENTS)?;
        let mut by_age = txn.open_table(BY_AGE)?;
        let mut counts = txn.open_table(COUNTS)?;
        let mut expired = Vec::new();
        for row in by_age.range(..(older_than_ms, 0))?.take(budget as usize) {
            let (key, dev) = row?;
            let (at, seq) = key.value();
            expired.push((at, seq, dev.value().to_owned()));
        }
        let mut per_device: HashMap<&str, u64> = HashMap::new();
        for (at, seq, dev) in &expired {
            by_age.remove((*at, *seq))?;
            rows.remove((dev.as_str(), *at, *seq))?;
            *per_device.entry(dev).or_default() += 1;
        }
        for (dev, n) in per_device {
            decrement(&mut counts, dev, n)?;
        }
        expired.len() as u64
    };
    crate::metrics::commit(txn)?;
    Ok(removed)
}

/// Devices with more than `max` events, and by how many.
fn devices_over(db: &Database, max: u64) -> Result<Vec<(String, u64)>, StoreError> {
    let txn = db.begin_read()?;
    let counts = txn.open_table(COUNTS)?;
    let mut over = Vec::new();
    for row in counts.iter()? {
        let (dev, n) = row?;
        let n = n.value();
        if n > max {
            over.push((dev.value().to_owned(), n - max));
        }
    }
    Ok(over)
}

/// Removes the `n` oldest events of `device`; how many were removed.
fn trim_device(db: &Database, device: &str, n: u64) -> Result<u64, StoreError> {
    let txn = begin_write(db)?;
    let removed = {
        let mut rows = txn.open_table(EVENTS)?;
        let mut by_age = txn.open_table(BY_AGE)?;
        let mut oldest = Vec::new();
        for row in rows
            .range((device, 0, 0)..=(device, u64::MAX, u64::MAX))?
            .take(n as usize)
        {
            let (key, _) = row?;
            let (_, at, seq) = key.value();
            oldest.push((at, seq));
        }
        for &(at, seq) in &oldest {
            rows.remove((device, at, seq))?;
            by_age.remove((at, seq))?;
        }
        let mut counts = txn.open_table(COUNTS)?;
        if oldest.is_empty() {
            // The count was wrong (it says more than the table holds): trust the table.
            counts.remove(device)?;
        } else {
            decrement(&mut counts, device, oldest.len() as u64)?;
        }
        oldest.len() as u64
    };
    crate::metrics::commit(txn)?;
    Ok(removed)
}

fn decrement(
    counts: &mut redb::Table<'_, &'static str, u64>,
    device: &str,
    n: u64,
) -> Result<(), StoreError> {
    let before = counts.get(device)?.map_or(0, |v| v.value());
    let after = before.saturating_sub(n);
    if after == 0 {
        counts.remove(device)?;
    } else {
        counts.insert(device, after)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
