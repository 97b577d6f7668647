//! Webhook delivery (SPEC §7): one worker task per enabled endpoint sends that URL's owed
//! deliveries from the outbox as signed JSON POSTs. Endpoints come from the config file
//! and the admin API (`endpoints`); an operator can list, retry and discard deliveries
//! (`deliveries`).
//!
//! - **Order**: per URL strictly in order (head of line). While the head delivery fails,
//!   the ones behind it wait; once the URL answers again they follow in order. This is
//!   what receivers that apply events as state changes (online/offline) expect, and it
//!   keeps a dead URL to one probe per backoff step instead of one per queued event.
//!   The price: a receiver that always rejects one particular event holds back that URL
//!   until the event is given up.
//! - **Isolation**: each URL has its own task and its own retry state, so a slow or dead
//!   URL never delays another.
//! - **Retries**: a connection error, a timeout ([`WebhookOptions::timeout`]) or a non-2xx
//!   answer is a failure; the URL is retried after [`Backoff::delay`] (1 s, doubling,
//!   capped at 10 min). Deliveries the failure streak has outlasted by
//!   [`Backoff::give_up_after`] (24 h) become `dead`. Redirects are not followed.
//! - **Restarts**: the next attempt time is stored with the URL, so workers started
//!   after a restart pick up every owed delivery and resume the backoff.
//! - **At least once**: a delivery leaves the outbox only after a 2xx; a crash or
//!   shutdown mid-request sends it again. Receivers deduplicate by event `id`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use fleetmq_storage::{now_ms, StoreError};
use http::header::{CONTENT_TYPE, USER_AGENT};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::events::{EventBus, Hook, Inner};
use fleetmq_storage::outbox::Due;

/// The signature header: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-fleetmq-signature";
/// Most bytes of a receiver's answer that are read (and quoted in `last_error`).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Most characters of a receiver's answer quoted in `last_error`.
const QUOTED_BODY_CHARS: usize = 200;

/// When a failing URL is retried and when its deliveries are given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub first: Duration,
    /// Longest delay; doubling stops here.
    pub cap: Duration,
    /// A delivery is given up once its URL has kept failing this long since the
    /// delivery was created (or since the failures began, if later).
    pub give_up_after: Duration,
}

impl Default for Backoff {
    /// SPEC §7: about 1 s, doubling, capped at 10 min, for 24 h.
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 → `first`).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.first.saturating_mul(factor).min(self.cap)
    }
}

/// Tunables of the event bus and its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Retry timing.
    pub backoff: Backoff,
    /// Longest wait for a receiver's answer, from connecting to the response head.
    pub timeout: Duration,
    /// Events the live stream buffers per subscriber before a slow one lags.
    pub live_capacity: usize,
    /// Recent events kept for streams that resume with `Last-Event-ID`.
    pub replay_capacity: usize,
    /// `telemetry.webhook`: `telemetry` events go to every URL whose filter matches
    /// them, not only to those whose filter names `telemetry` (SPEC §7).
    pub telemetry_to_all: bool,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            backoff: Backoff::default(),
            timeout: Duration::from_secs(10),
            live_capacity: 1024,
            replay_capacity: 10_000,
            telemetry_to_all: false,
        }
    }
}

mod deliveries;
mod endpoints;

pub use deliveries::{DeliveryView, WebhookStats};
pub(super) use endpoints::Registry;
pub use endpoints::{EndpointError, EndpointPatch, EndpointSource, EndpointView, NewEndpoint};

pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client() -> Result<HttpClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(https))
}

/// Starts one worker per enabled endpoint, and a task that gives up the deliveries owed
/// to URLs that are no longer an endpoint (they stay listed as `dead`). Every task is
/// tracked by `tracker` and stops when `shutdown` is cancelled; endpoints created or
/// enabled later get their workers on the same terms. A second call does nothing: two
/// workers for one URL would break its order.
pub fn spawn_workers(bus: &EventBus, shutdown: CancellationToken, tracker: &TaskTracker) {
    let inner = &bus.inner;
    if inner.workers_started.swap(true, Ordering::SeqCst) {
        tracing::error!("webhook workers already started");
        return;
    }
    tracker.spawn(abandon_unconfigured(inner.clone()));
    let client = match http_client() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot set up the webhook HTTP client; deliveries stay queued");
            return;
        }
    };
    let runtime = endpoints::Runtime {
        client,
        shutdown,
        tracker: tracker.clone(),
    };
    if inner.endpoints.runtime.set(runtime).is_err() {
        return;
    }
    for hook in inner.endpoints.active().iter() {
        start_worker(inner, hook.clone());
    }
}

/// Starts `hook`'s worker, unless workers are not started yet (`spawn_workers` starts
/// it then) or it already has one.
fn start_worker(inner: &Arc<Inner>, hook: Arc<Hook>) {
    let Some(rt) = inner.endpoints.runtime.get() else {
        return;
    };
    let stop = rt.shutdown.child_token();
    {
        let mut slot = hook.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return;
        }
        *slot = Some(stop.clone());
    }
    let span = tracing::info_span!("webhook", id = %hook.spec.id, url = %redact_url(&hook.url));
    let worker = Worker {
        inner: inner.clone(),
        hook,
        client: rt.client.clone(),
        shutdown: stop,
        store_failures: 0,
    };
    rt.tracker.spawn(worker.run().instrument(span));
}

async fn abandon_unconfigured(inner: Arc<Inner>) {
    let known = match inner.outbox.known_urls().await {
        Ok(urls) => urls,
        Err(error) => {
            tracing::error!(%error, "cannot list webhook URLs in the outbox");
            return;
        }
    };
    let reason = "gave up: the webhook URL is no longer configured";
    for url in known {
        if inner.endpoints.knows_url(&url) {
            continue;
        }
        let shown = redact_url(&url);
        match inner.outbox.abandon(url, now_ms(), reason.into()).await {
            Ok(0) => {}
            Ok(n) => {
                inner.counters.given_up.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(url = %shown, deliveries = n, "{reason}");
            }
            Err(error) => tracing::error!(%error, url = %shown, "cannot give up deliveries"),
        }
    }
}

/// Why one attempt failed; its `Display` becomes the delivery's `last_error`.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("invalid URL")]
    InvalidUrl,
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("HTTP {status}{body}")]
    Status { status: u16, body: String },
}

/// Sends one URL's deliveries; see the module docs.
struct Worker {
    inner: Arc<Inner>,
    hook: Arc<Hook>,
    client: HttpClient,
    shutdown: CancellationToken,
    /// Consecutive outbox errors, to back off while the database is in trouble.
    store_failures: u32,
}

impl Worker {
    async fn run(mut self) {
        let Some(_running) = self.lock_url().await else {
            return;
        };
        tracing::debug!("webhook worker started");
        loop {
            let due = match self.inner.outbox.next_due(self.hook.url.clone()).await {
                Ok(due) => due,
                Err(error) => {
                    if !self
                        .store_trouble(&error, "cannot read the webhook outbox")
                        .await
                    {
                        return;
                    }
                    continue;
                }
            };
            let Some(due) = due else {
                tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return,
                    () = self.hook.wake.notified() => {}
                }
                continue;
            };
            let wait = Duration::from_millis(due.not_before_ms.saturating_sub(now_ms()));
            if !wait.is_zero() {
                // New events do not cut a backoff short: the URL is still failing. A wait
                // past the cap means the clock stepped back: then wait the cap and go on.
                let cap = self.inner.options.backoff.cap;
                if !self.pause(wait.min(cap)).await {
                    return;
                }
                if wait <= cap {
                    continue;
                }
            }
            let (id, event_id, attempts, failures) =
                (due.id, due.event_id.clone(), due.attempts, due.failures);
            // Dropping the request on shutdown is safe: it stays owed and is sent again.
            let result = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                r = self.post(due) => r,
            };
            let ok = match result {
                Ok(()) => self.delivered(id, &event_id).await,
                Err(e) => self.failed(id, &event_id, attempts, failures, e).await,
            };
            if !ok {
                return;
            }
        }
    }

    /// Waits until no other worker sends to this URL (the worker of this endpoint's
    /// previous hook may still be finishing a request); `None` on shutdown.
    async fn lock_url(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = self.inner.endpoints.url_lock(&self.hook.url);
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            guard = lock.lock_owned() => Some(guard),
        }
    }

    /// Sleeps `d` unless shut down first or kicked (an operator's retry); false on
    /// shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => false,
            () = self.hook.kick.notified() => true,
            () = tokio::time::sleep(d) => true,
        }
    }

    /// Logs and counts an outbox error, then backs off; false on shutdown.
    async fn store_trouble(&mut self, error: &StoreError, what: &str) -> bool {
        self.inner
            .counters
            .store_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "{what}");
        self.store_failures = self.store_failures.saturating_add(1);
        let delay = self.inner.options.backoff.delay(self.store_failures);
        self.pause(delay).await
    }

    async fn post(&self, due: Due) -> Result<(), AttemptError> {
        let uri: http::Uri = self
            .hook
            .url
            .parse()
            .map_err(|_| AttemptError::InvalidUrl)?;
        let signature = hex(ring::hmac::sign(&self.hook.key, &due.body).as_ref());
        let request = http::Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, format!("sha256={signature}"))
            .header(USER_AGENT, concat!("fleetmq/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(due.body)))
            .map_err(|_| AttemptError::InvalidUrl)?;
        let timeout = self.inner.options.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return Err(AttemptError::Timeout(timeout)),
            Ok(Err(e)) => return Err(AttemptError::Request(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        // Read the answer (bounded) so the connection can be reused, and to quote it on
        // failure. A 2xx counts even if its body never arrives.
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect();
        let body = match tokio::time::timeout_at(deadline, body).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        if status.is_success() {
            return Ok(());
        }
        Err(AttemptError::Status {
            status: status.as_u16(),
            body: quote(&body),
        })
    }

    /// False on shutdown.
    async fn delivered(&mut self, id: u64, event_id: &str) -> bool {
        self.inner
            .counters
            .delivered
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(delivery_id = id, event_id, "webhook delivered");
        match self.inner.outbox.delivered(self.hook.url.clone(), id).await {
            Ok(()) => {
                self.store_failures = 0;
                true
            }
            Err(error) => {
                let what = "cannot mark a webhook delivery done; it will be sent again";
                self.store_trouble(&error, what).await
            }
        }
    }

    /// Records a failed attempt and gives up what the failure streak has outlasted;
    /// false on shutdown.
    async fn failed(
        &mut self,
        id: u64,
        event_id: &str,
        attempts: u32,
        failures: u32,
        error: AttemptError,
    ) -> bool {
        let inner = &self.inner;
        let backoff = inner.options.backoff;
        let now = now_ms();
        let delay = backoff.delay(failures.saturating_add(1));
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        inner
            .counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            delivery_id = id,
            event_id,
            attempt = attempts.saturating_add(1),
            retry_in_ms = delay_ms,
            %error,
            "webhook delivery failed"
        );
        let url = self.hook.url.clone();
        let next = now.saturating_add(delay_ms);
        if let Err(e) = inner
            .outbox
            .failed(url.clone(), id, now, error.to_string(), next)
            .await
        {
            return self
                .store_trouble(&e, "cannot record a failed webhook attempt")
                .await;
        }
        let give_up_ms = u64::try_from(backoff.give_up_after.as_millis()).unwrap_or(u64::MAX);
        match inner.outbox.give_up_expired(url, now, give_up_ms).await {
            Ok(0) => {}
            Ok(n) => {
                inner.counters.given_up.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(deliveries = n, "gave up webhook deliveries after retrying");
            }
            Err(e) => {
                return self
                    .store_trouble(&e, "cannot give up webhook deliveries")
                    .await
            }
        }
        self.store_failures = 0;
        true
    }
}

/// `url` for logs: scheme, host, port and path, without credentials or query.
pub(super) fn redact_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            let (scheme, host) = (uri.scheme_str().unwrap_or(""), uri.host().unwrap_or(""));
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://{host}{port}{}", uri.path())
        }
        Err(_) => "<invalid url>".into(),
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// An error and its sources, `outer: inner: ...`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The start of a receiver's answer as `: "..."`, or nothing if it was empty.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
    format!(": {quoted:?}")
}

#[cfg(test)]
mod tests;
