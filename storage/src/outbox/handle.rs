//! [`Outbox`]: the blocking functions of the outbox, run on tokio's blocking pool.

use std::fmt;
use std::sync::Arc;

use redb::{Database, Durability};

use crate::error::StoreError;

use super::tables::write;
use super::{
    abandon, counts, create_tables, delivered, discard, failed, give_up_expired, known_urls,
    list_for, next_due, retry, Delivery, DeliveryStatus, Discarded, Due, OutboxCounts,
    OutboxLimits,
};

/// The outbox over a shared database: every method runs the matching blocking
/// function on tokio's blocking pool. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    limits: OutboxLimits,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// The outbox in `db`, whose tables [`create_tables`] made when the database was
    /// opened. No I/O.
    pub fn new(db: Arc<Database>, limits: OutboxLimits) -> Outbox {
        Outbox { db, limits }
    }

    /// The outbox in `db`, creating its tables if needed (blocking; call at start-up).
    pub fn open(db: Arc<Database>, limits: OutboxLimits) -> Result<Outbox, StoreError> {
        write(&db, Durability::Immediate, create_tables)?;
        Ok(Outbox { db, limits })
    }

    /// The caps this outbox applies.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Runs `f` on the blocking pool. A panic in `f` is resumed in the caller.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Database, OutboxLimits) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (db, limits) = (self.db.clone(), self.limits);
        match tokio::task::spawn_blocking(move || f(&db, limits)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Cancelled {
                source: Box::new(e),
            }),
        }
    }

    /// [`next_due`].
    pub async fn next_due(&self, url: String) -> Result<Option<Due>, StoreError> {
        self.call(move |db, _| next_due(db, &url)).await
    }

    /// [`delivered`].
    pub async fn delivered(&self, url: String, id: u64) -> Result<(), StoreError> {
        self.call(move |db, _| delivered(db, &url, id)).await
    }

    /// [`failed`].
    pub async fn failed(
        &self,
        url: String,
        id: u64,
        now_ms: u64,
        error: String,
        next_attempt_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.call(move |db, _| failed(db, &url, id, now_ms, &error, next_attempt_at_ms))
            .await
    }

    /// [`give_up_expired`] until nothing is left to give up; how many in all.
    pub async fn give_up_expired(
        &self,
        url: String,
        now_ms: u64,
        give_up_after_ms: u64,
    ) -> Result<u64, StoreError> {
        self.call(move |db, limits| {
            let mut total = 0;
            loop {
                match give_up_expired(db, &url, now_ms, give_up_after_ms, limits)? {
                    0 => return Ok(total),
                    n => total += n,
                }
            }
        })
        .await
    }

    /// [`abandon`] until nothing is left; how many in all.
    pub async fn abandon(
        &self,
        url: String,
        now_ms: u64,
        reason: String,
    ) -> Result<u64, StoreError> {
        self.call(move |db, limits| {
            let mut total = 0;
            loop {
                match abandon(db, &url, now_ms, &reason, limits)? {
                    0 => return Ok(total),
                    n => total += n,
                }
            }
        })
        .await
    }

    /// [`known_urls`].
    pub async fn known_urls(&self) -> Result<Vec<String>, StoreError> {
        self.call(|db, _| known_urls(db)).await
    }

    /// [`list_for`](super::list_for): only `url`'s deliveries when it is given.
    pub async fn list(
        &self,
        url: Option<String>,
        status: Option<DeliveryStatus>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<u64>), StoreError> {
        self.call(move |db, _| list_for(db, url.as_deref(), status, after, limit))
            .await
    }

    /// [`retry`].
    pub async fn retry(&self, id: u64) -> Result<String, StoreError> {
        self.call(move |db, _| retry(db, id)).await
    }

    /// [`discard`].
    pub async fn discard(&self, id: u64) -> Result<Discarded, StoreError> {
        self.call(move |db, _| discard(db, id)).await
    }

    /// [`counts`].
    pub async fn counts(&self) -> Result<OutboxCounts, StoreError> {
        self.call(|db, _| counts(db)).await
    }
}
