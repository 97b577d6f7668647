//! What an operator does to one delivery: retry it now, or discard it.

use redb::{Database, Durability};

use crate::error::StoreError;

use super::tables::{write, Tables};

/// What [`discard`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discarded {
    /// The delivery's URL.
    pub url: String,
    /// Whether it was still owed (else it was dead).
    pub was_owed: bool,
}

fn not_found(id: u64) -> StoreError {
    StoreError::NotFound {
        kind: "delivery",
        key: id.to_string(),
    }
}

/// Makes delivery `id` due now: a dead one goes back to its URL's queue (at the front,
/// since ids are in creation order); either way the URL's backoff wait is cut short
/// (its failure count is kept, so another failure waits longer). Returns its URL, whose
/// worker the caller wakes. [`StoreError::NotFound`] if there is no such delivery.
pub fn retry(db: &Database, id: u64) -> Result<String, StoreError> {
    write(db, Durability::Immediate, |txn| {
        let mut t = Tables::open(txn)?;
        let mut d = t.get(id)?.ok_or_else(|| not_found(id))?;
        let url = d.url.clone();
        let mut state = t.state(&url)?;
        if d.dead_at_ms.take().is_some() {
            t.dead.remove(id)?;
            t.put(id, &d)?;
            t.queue.insert((url.as_str(), id), ())?;
            state.owed = state.owed.saturating_add(1);
            // A fresh streak, so it is not given up again at its first failure.
            state.failing_since_ms = None;
        }
        state.next_attempt_at_ms = 0;
        t.put_state(&url, &state)?;
        Ok(url)
    })
}

/// Removes delivery `id`, owed or dead, for good. Removing the head of a URL's queue
/// also cuts its backoff wait short, so what waited behind it goes out now.
/// [`StoreError::NotFound`] if there is no such delivery.
pub fn discard(db: &Database, id: u64) -> Result<Discarded, StoreError> {
    write(db, Durability::Immediate, |txn| {
        let mut t = Tables::open(txn)?;
        let d = t.get(id)?.ok_or_else(|| not_found(id))?;
        let was_head = t.head_ids(&d.url, 1)?.first() == Some(&id);
        t.deliveries.remove(id)?;
        let was_owed = t.queue.remove((d.url.as_str(), id))?.is_some();
        t.dead.remove(id)?;
        if was_owed {
            let mut state = t.state(&d.url)?;
            state.owed = state.owed.saturating_sub(1);
            if was_head {
                state.next_attempt_at_ms = 0;
            }
            t.put_state(&d.url, &state)?;
        }
        Ok(Discarded {
            url: d.url,
            was_owed,
        })
    })
}
