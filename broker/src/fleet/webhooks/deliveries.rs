//! Deliveries as the admin API lists them, an operator's retry and discard of one, and
//! the webhook counters.

use std::sync::atomic::Ordering;

use fleetmq_storage::outbox::{Delivery, DeliveryStatus};
use fleetmq_storage::StoreError;
use serde::Serialize;

use super::super::events::EventBus;
use super::super::rfc3339_ms;
use super::EndpointError;

/// A delivery as listed by `GET /api/v1/webhooks/deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryView {
    /// Delivery id (also the list cursor).
    pub id: String,
    /// The endpoint that sends to its URL (`null` once no endpoint does).
    pub webhook_id: Option<String>,
    pub event_id: String,
    pub event_type: String,
    pub url: String,
    /// `pending` until attempted, `failed` once attempted (retried), or `dead`.
    pub status: DeliveryStatus,
    /// Failed attempts of this delivery.
    pub attempts: u32,
    /// Set on the delivery its failing URL retries next; those behind it follow it.
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
}

impl DeliveryView {
    fn new(d: Delivery, webhook_id: Option<String>) -> Self {
        DeliveryView {
            id: d.id.to_string(),
            webhook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            url: d.url,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at_ms.map(rfc3339_ms),
            last_attempt_at: d.last_attempt_at_ms.map(rfc3339_ms),
            last_error: d.last_error,
            created_at: rfc3339_ms(d.created_at_ms),
        }
    }
}

/// Webhook counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub given_up: u64,
    /// Deliveries an operator discarded.
    pub discarded: u64,
    /// Events not queued for a URL whose outbox queue was full.
    pub dropped_full: u64,
    pub store_errors: u64,
}

impl EventBus {
    /// Deliveries after `cursor`, oldest first, optionally only those with `status`;
    /// at most `limit` (1..=1000), with the cursor of the next page. A cursor that is
    /// not one this returned is [`StoreError::Invalid`].
    pub async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<DeliveryView>, Option<String>), StoreError> {
        self.list_deliveries(None, status, limit, cursor).await
    }

    /// [`EventBus::deliveries`], only those of endpoint `webhook` when given
    /// ([`EndpointError::NotFound`] if there is no such endpoint).
    pub async fn deliveries_of(
        &self,
        webhook: Option<&str>,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<DeliveryView>, Option<String>), EndpointError> {
        let url = match webhook {
            Some(id) => Some(self.endpoint(id)?.url),
            None => None,
        };
        Ok(self.list_deliveries(url, status, limit, cursor).await?)
    }

    async fn list_deliveries(
        &self,
        url: Option<String>,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<DeliveryView>, Option<String>), StoreError> {
        let after = match cursor {
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| StoreError::Invalid(format!("invalid cursor {c:?}")))?,
            ),
            None => None,
        };
        let (items, next) = self.inner.outbox.list(url, status, after, limit).await?;
        let items = items.into_iter().map(|d| self.view(d)).collect();
        Ok((items, next.map(|n| n.to_string())))
    }

    fn view(&self, d: Delivery) -> DeliveryView {
        let id = self.inner.endpoints.id_of_url(&d.url);
        DeliveryView::new(d, id)
    }

    /// Delivery `id`.
    pub async fn delivery(&self, id: &str) -> Result<DeliveryView, EndpointError> {
        let n = delivery_id(id)?;
        let (items, _) = (self.inner.outbox)
            .list(None, None, n.checked_sub(1), 1)
            .await?;
        match items.into_iter().next() {
            Some(d) if d.id == n => Ok(self.view(d)),
            _ => Err(no_delivery(id)),
        }
    }

    /// Attempts delivery `id` now: cuts its URL's backoff wait short, and puts a `dead`
    /// one back in its URL's queue. Its endpoint must exist and be enabled
    /// ([`EndpointError::Conflict`] otherwise). Deliveries go out in order per URL, so
    /// the ones queued before it go first.
    pub async fn retry_delivery(&self, id: &str) -> Result<DeliveryView, EndpointError> {
        let url = self.delivery(id).await?.url;
        let hook = (self.inner.endpoints.active().iter())
            .find(|h| h.url == url)
            .cloned()
            .ok_or_else(|| {
                EndpointError::Conflict(format!(
                    "delivery {id:?} cannot be retried: no enabled webhook sends to its URL"
                ))
            })?;
        self.inner
            .outbox
            .retry(delivery_id(id)?)
            .await
            .map_err(|e| not_found_or(e, id))?;
        hook.kick.notify_one();
        hook.wake.notify_one();
        tracing::info!(delivery_id = id, "webhook delivery retried by request");
        self.delivery(id).await
    }

    /// Removes delivery `id` (owed or dead) for good; counted in
    /// [`WebhookStats::discarded`]. If it was the head of its URL's queue, what waited
    /// behind it goes out now.
    pub async fn discard_delivery(&self, id: &str) -> Result<(), EndpointError> {
        let gone = (self.inner.outbox)
            .discard(delivery_id(id)?)
            .await
            .map_err(|e| not_found_or(e, id))?;
        self.inner
            .counters
            .discarded
            .fetch_add(1, Ordering::Relaxed);
        if gone.was_owed {
            if let Some(hook) = (self.inner.endpoints.active().iter()).find(|h| h.url == gone.url) {
                hook.kick.notify_one();
                hook.wake.notify_one();
            }
        }
        tracing::info!(delivery_id = id, "webhook delivery discarded by request");
        Ok(())
    }

    /// Deliveries still owed (pending or failed); 0 (logged) if the outbox cannot be read.
    pub async fn backlog(&self) -> u64 {
        match self.inner.outbox.counts().await {
            Ok(c) => c.owed,
            Err(error) => {
                tracing::error!(%error, "cannot count the webhook backlog");
                0
            }
        }
    }

    /// Counters since start.
    pub fn webhook_stats(&self) -> WebhookStats {
        let c = &self.inner.counters;
        WebhookStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            given_up: c.given_up.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
            dropped_full: c.dropped_full.load(Ordering::Relaxed),
            store_errors: c.store_errors.load(Ordering::Relaxed),
        }
    }
}

fn no_delivery(id: &str) -> EndpointError {
    EndpointError::NotFound {
        kind: "delivery",
        id: id.to_owned(),
    }
}

fn delivery_id(id: &str) -> Result<u64, EndpointError> {
    id.parse().map_err(|_| no_delivery(id))
}

fn not_found_or(e: StoreError, id: &str) -> EndpointError {
    match e {
        StoreError::NotFound { .. } => no_delivery(id),
        other => other.into(),
    }
}
