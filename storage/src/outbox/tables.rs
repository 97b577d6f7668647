//! The write-transaction helper and the tables one write needs, with the repairs
//! that keep one bad record from stopping a URL.

use redb::{
    Database, Durability, ReadableTable as _, ReadableTableMetadata as _, Table, WriteTransaction,
};

use crate::error::StoreError;

use super::records::{
    decode_delivery, decode_state, encode_delivery, encode_state, DeliveryV1, UrlStateV1,
};
use super::{OutboxLimits, DEAD, DELIVERIES, MAX_ERROR_LEN, QUEUE, URLS};

/// Runs `f` in one write transaction committed with `durability`; if `f` fails, the
/// transaction is aborted and nothing changes.
pub(super) fn write<R>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    let out = f(&txn)?;
    crate::metrics::commit(txn)?;
    Ok(out)
}

/// The tables one write needs, opened once.
pub(super) struct Tables<'t> {
    pub(super) deliveries: Table<'t, u64, &'static [u8]>,
    pub(super) queue: Table<'t, (&'static str, u64), ()>,
    pub(super) dead: Table<'t, u64, ()>,
    pub(super) urls: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            deliveries: txn.open_table(DELIVERIES)?,
            queue: txn.open_table(QUEUE)?,
            dead: txn.open_table(DEAD)?,
            urls: txn.open_table(URLS)?,
        })
    }

    /// `url`'s state; an undecodable one is rebuilt from the queue (logged), so one
    /// bad record never stops a URL.
    pub(super) fn state(&self, url: &str) -> Result<UrlStateV1, StoreError> {
        let stored = match self.urls.get(url)? {
            Some(v) => decode_state(url, v.value()),
            None => return Ok(UrlStateV1::default()),
        };
        stored.or_else(|error| {
            tracing::error!(%error, "rebuilding corrupt webhook URL state");
            Ok(UrlStateV1 {
                owed: self.count_owed(url)?,
                ..UrlStateV1::default()
            })
        })
    }

    pub(super) fn put_state(&mut self, url: &str, s: &UrlStateV1) -> Result<(), StoreError> {
        self.urls.insert(url, encode_state(s)?.as_slice())?;
        Ok(())
    }

    pub(super) fn count_owed(&self, url: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.queue.range((url, 0)..=(url, u64::MAX))? {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `max` ids at the head of `url`'s queue.
    pub(super) fn head_ids(&self, url: &str, max: usize) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for entry in self.queue.range((url, 0)..=(url, u64::MAX))?.take(max) {
            ids.push(entry?.0.value().1);
        }
        Ok(ids)
    }

    pub(super) fn get(&self, id: u64) -> Result<Option<DeliveryV1>, StoreError> {
        match self.deliveries.get(id)? {
            Some(v) => decode_delivery(id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn put(&mut self, id: u64, d: &DeliveryV1) -> Result<(), StoreError> {
        self.deliveries.insert(id, encode_delivery(d)?.as_slice())?;
        Ok(())
    }

    /// Moves owed delivery `id` of `url` to the dead set, then prunes the oldest dead.
    pub(super) fn bury(
        &mut self,
        url: &str,
        id: u64,
        mut d: DeliveryV1,
        now_ms: u64,
        reason: impl FnOnce() -> String,
        limits: OutboxLimits,
    ) -> Result<(), StoreError> {
        d.dead_at_ms = Some(now_ms);
        if d.last_error.is_none() {
            d.last_error = Some(truncate(reason()));
        }
        self.put(id, &d)?;
        self.queue.remove((url, id))?;
        self.dead.insert(id, ())?;
        while self.dead.len()? > limits.max_dead {
            let Some((oldest, ())) = self.dead.pop_first()?.map(|(k, _)| (k.value(), ())) else {
                break;
            };
            self.deliveries.remove(oldest)?;
        }
        Ok(())
    }

    /// Removes owed delivery `id` of `url` whose record cannot be used.
    pub(super) fn discard(
        &mut self,
        url: &str,
        id: u64,
        error: &StoreError,
    ) -> Result<(), StoreError> {
        tracing::error!(%error, delivery_id = id, "discarding undeliverable webhook delivery");
        self.queue.remove((url, id))?;
        self.deliveries.remove(id)?;
        Ok(())
    }
}

pub(super) fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
