//! The `audit` table: every state-changing admin API request (SPEC §8), sequence number
//! → versioned [`AuditEntry`], appended in batches and read newest first.
//!
//! Bounded: each append also removes the oldest entries beyond
//! [`AuditRetention::max_entries`] or older than [`AuditRetention::max_age_ms`], at most
//! [`AuditRetention::prune_batch`] per append, so one write never grows without bound
//! and the table shrinks back to its limits over a few appends.

use redb::{ReadableTable, ReadableTableMetadata as _};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::model::AuditEntry;
use crate::schema::{AUDIT, AUDIT_TABLE as TABLE};
use crate::store::Store;

/// How much of the audit log is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRetention {
    /// The newest this many entries.
    pub max_entries: u64,
    /// Entries younger than this, in ms.
    pub max_age_ms: u64,
    /// At most this many old entries are removed per append.
    pub prune_batch: usize,
}

impl Default for AuditRetention {
    /// The newest 100,000 entries of the last 90 days, pruned 1,000 at a time.
    fn default() -> Self {
        AuditRetention {
            max_entries: 100_000,
            max_age_ms: 90 * 24 * 3600 * 1000,
            prune_batch: 1_000,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum StoredAuditEntry {
    V1(AuditV1),
}

#[derive(Serialize, Deserialize)]
struct AuditV1 {
    at_ms: u64,
    key: String,
    method: String,
    route: String,
    target: Option<String>,
    status: u16,
}

const AT: Location<'static> = Location {
    table: TABLE,
    key: "<seq>",
};

pub(crate) fn encode(e: &AuditEntry) -> Result<Vec<u8>, StoreError> {
    let v1 = AuditV1 {
        at_ms: e.at_ms,
        key: e.key.clone(),
        method: e.method.clone(),
        route: e.route.clone(),
        target: e.target.clone(),
        status: e.status,
    };
    codec::encode(AT, &StoredAuditEntry::V1(v1))
}

pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    let key = seq.to_string();
    let at = Location {
        table: TABLE,
        key: &key,
    };
    let StoredAuditEntry::V1(v1) = codec::decode(at, bytes)?;
    Ok(AuditEntry {
        at_ms: v1.at_ms,
        key: v1.key,
        method: v1.method,
        route: v1.route,
        target: v1.target,
        status: v1.status,
    })
}

/// One page of the audit log, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage {
    /// `(sequence number, entry)`, newest first.
    pub entries: Vec<(u64, AuditEntry)>,
    /// Pass as `before` for the next page; `None` on the last.
    pub next: Option<u64>,
}

impl Store {
    /// Appends `entries` (oldest first) in one durable transaction and prunes what
    /// `retention` no longer keeps, judged at `now_ms`.
    pub fn append_audit(
        &self,
        entries: &[AuditEntry],
        retention: AuditRetention,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(AUDIT)?;
            let first = match table.last()? {
                Some((k, _)) => k.value() + 1,
                None => 0,
            };
            for (seq, e) in (first..).zip(entries) {
                table.insert(seq, encode(e)?.as_slice())?;
            }
            let cutoff = now_ms.saturating_sub(retention.max_age_ms);
            let mut len = table.len()?;
            for _ in 0..retention.prune_batch {
                let old = match table.first()? {
                    Some((k, v)) => decode(k.value(), v.value())?.at_ms < cutoff,
                    None => break,
                };
                if len <= retention.max_entries && !old {
                    break;
                }
                table.pop_first()?;
                len -= 1;
            }
            Ok(())
        })
    }

    /// Up to `limit` entries older than `before` (all if `None`), newest first.
    pub fn list_audit(&self, before: Option<u64>, limit: usize) -> Result<AuditPage, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(AUDIT)?;
            let mut range = table.range(..before.unwrap_or(u64::MAX))?.rev();
            let mut entries = Vec::new();
            for entry in range.by_ref().take(limit) {
                let (k, v) = entry?;
                entries.push((k.value(), decode(k.value(), v.value())?));
            }
            let more = range.next().transpose()?.is_some();
            let next = more.then(|| entries.last().map(|(seq, _)| *seq)).flatten();
            Ok(AuditPage { entries, next })
        })
    }
}

#[cfg(test)]
mod tests;
