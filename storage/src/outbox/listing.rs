//! Listing deliveries: each with the status it has given its URL's retry state.

use std::collections::BTreeMap;

use redb::{Database, ReadTransaction, ReadableDatabase as _, ReadableTable as _};

use crate::error::StoreError;

use super::records::{decode_delivery, decode_state, DeliveryV1, UrlStateV1};
use super::{Delivery, DeliveryStatus, DELIVERIES, MAX_LIST, QUEUE, URLS};

/// Deliveries with id greater than `after`, oldest first, optionally only those with
/// `status`; at most `limit` (clamped to 1..=[`MAX_LIST`]), and the cursor for the next
/// page if there are more.
///
/// An undecodable record is left out (logged at error level) rather than failing every
/// listing until it is gone, as `Store::list_retained` does; an undecodable URL state
/// lists that URL's deliveries as `pending`.
pub fn list(
    db: &Database,
    status: Option<DeliveryStatus>,
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<Delivery>, Option<u64>), StoreError> {
    list_for(db, None, status, after, limit)
}

/// [`list`], only the deliveries to `url` when it is given.
pub fn list_for(
    db: &Database,
    url: Option<&str>,
    status: Option<DeliveryStatus>,
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<Delivery>, Option<u64>), StoreError> {
    let limit = limit.clamp(1, MAX_LIST);
    let start = match after {
        Some(u64::MAX) => return Ok((Vec::new(), None)),
        Some(a) => a + 1,
        None => 0,
    };
    let txn = db.begin_read()?;
    let urls = url_heads(&txn)?;
    let mut out = Vec::new();
    for entry in txn.open_table(DELIVERIES)?.range(start..)? {
        let (k, v) = entry?;
        let id = k.value();
        let d = match decode_delivery(id, v.value()) {
            Ok(d) => d,
            Err(error) => {
                tracing::error!(%error, "leaving a corrupt webhook delivery out of the list");
                continue;
            }
        };
        if url.is_some_and(|u| u != d.url) {
            continue;
        }
        let (state, head) = urls.get(&d.url).copied().unwrap_or_default();
        let item = listed(id, d, &state, head);
        if status.is_some_and(|s| s != item.status) {
            continue;
        }
        if out.len() == limit {
            let cursor = out.last().map(|d: &Delivery| d.id);
            return Ok((out, cursor));
        }
        out.push(item);
    }
    Ok((out, None))
}

/// Per URL, its retry state and the id at the head of its queue (`None` when nothing
/// is owed); there are only as many URLs as webhooks.
fn url_heads(
    txn: &ReadTransaction,
) -> Result<BTreeMap<String, (UrlStateV1, Option<u64>)>, StoreError> {
    let mut urls = BTreeMap::new();
    let queue = txn.open_table(QUEUE)?;
    for entry in txn.open_table(URLS)?.iter()? {
        let (k, v) = entry?;
        let url = k.value();
        let state = decode_state(url, v.value()).unwrap_or_else(|error| {
            tracing::error!(%error, "listing with a corrupt webhook URL state");
            UrlStateV1::default()
        });
        let head = match queue.range((url, 0)..=(url, u64::MAX))?.next() {
            Some(first) => Some(first?.0.value().1),
            None => None,
        };
        urls.insert(url.to_owned(), (state, head));
    }
    Ok(urls)
}

/// Delivery `id` as [`list`] shows it, given its URL's retry state and queue head: dead,
/// failed once attempted (the head of a failing URL with its next attempt), else
/// pending: never attempted, even while it waits behind a failing head.
fn listed(id: u64, d: DeliveryV1, state: &UrlStateV1, head: Option<u64>) -> Delivery {
    let failing = state.failures > 0;
    let status = match (d.dead_at_ms, d.attempts) {
        (Some(_), _) => DeliveryStatus::Dead,
        (None, 0) => DeliveryStatus::Pending,
        (None, _) => DeliveryStatus::Failed,
    };
    let is_failing_head = failing && head == Some(id) && d.dead_at_ms.is_none();
    Delivery {
        id,
        url: d.url,
        event_id: d.event_id,
        event_type: d.event_type,
        status,
        attempts: d.attempts,
        created_at_ms: d.created_at_ms,
        last_attempt_at_ms: d.last_attempt_at_ms,
        next_attempt_at_ms: is_failing_head.then_some(state.next_attempt_at_ms),
        last_error: d.last_error,
    }
}
