//! Webhook endpoints (SPEC §8 `/api/v1/webhooks`): the `[[webhooks]]` of the config file
//! (read-only, `source: config`) and those created through the API (`source: api`,
//! stored in the `webhook_endpoints` table), changed at runtime without a restart.
//!
//! The [`Registry`] holds every endpoint and, swapped as a whole on each change, the
//! [`Hook`]s of the enabled ones that [`EventBus::emit`] reads. Each change reconciles
//! the workers: a hook whose endpoint is unchanged keeps its worker; a new, changed or
//! re-enabled one gets a new worker; a removed or disabled one's worker stops. Two
//! workers never send to one URL at once: a worker holds its URL's lock while it runs.
//!
//! - **Disable** keeps what is owed to the endpoint; no new events are queued for it
//!   until it is enabled again, and then its worker sends what it owes.
//! - **Delete** (or a PATCH to another URL) gives up what is still owed to the old URL:
//!   those deliveries become `dead` (listed for inspection, retryable only if the URL is
//!   an enabled endpoint again, discardable).
//! - URLs are unique across all endpoints: each URL has one ordered queue.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use fleetmq_storage::{now_ms, Store, StoreError, WebhookEndpoint};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::super::events::{EventBus, Hook, HookSpec, WebhookConfig};
use super::super::rfc3339_ms;
use super::{redact_url, HttpClient};

/// Where an endpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointSource {
    /// `[[webhooks]]` in the config file: read-only through the API.
    Config,
    /// Created through the API.
    Api,
}

/// An endpoint as the API shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    pub id: String,
    pub source: EndpointSource,
    pub url: String,
    /// Event type patterns; `null`: every type.
    pub events: Option<Vec<String>>,
    pub enabled: bool,
    /// `null` for config-file endpoints.
    pub created_at: Option<String>,
}

/// A new API endpoint.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub secret: String,
    pub events: Option<Vec<String>>,
    pub enabled: bool,
}

/// A change to an API endpoint; `None` leaves a field as it is. `events: Some(None)`
/// sends every event type.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub secret: Option<String>,
    pub events: Option<Option<Vec<String>>>,
    pub enabled: Option<bool>,
}

/// Why an endpoint or delivery operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// A field's value is unacceptable (`422`).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (`409`).
    #[error("{0}")]
    Conflict(String),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

/// One endpoint, from either source.
#[derive(Clone)]
pub(in crate::fleet) struct Registered {
    pub(in crate::fleet) spec: HookSpec,
    source: EndpointSource,
    enabled: bool,
    created_at_ms: Option<u64>,
}

impl Registered {
    fn view(&self) -> EndpointView {
        EndpointView {
            id: self.spec.id.clone(),
            source: self.source,
            url: self.spec.url.clone(),
            events: self.spec.events.clone(),
            enabled: self.enabled,
            created_at: self.created_at_ms.map(rfc3339_ms),
        }
    }

    fn api(e: WebhookEndpoint) -> Registered {
        Registered {
            spec: HookSpec {
                id: e.id,
                url: e.url,
                secret: e.secret,
                events: e.events,
            },
            source: EndpointSource::Api,
            enabled: e.enabled,
            created_at_ms: Some(e.created_at_ms),
        }
    }

    fn stored(&self) -> WebhookEndpoint {
        WebhookEndpoint {
            id: self.spec.id.clone(),
            url: self.spec.url.clone(),
            secret: self.spec.secret.clone(),
            events: self.spec.events.clone(),
            enabled: self.enabled,
            created_at_ms: self.created_at_ms.unwrap_or_default(),
        }
    }
}

/// What workers need to start; set once by `spawn_workers`.
pub(in crate::fleet) struct Runtime {
    pub(in crate::fleet) client: HttpClient,
    pub(in crate::fleet) shutdown: CancellationToken,
    pub(in crate::fleet) tracker: TaskTracker,
}

/// Every endpoint and the hooks of the enabled ones; see the module docs.
pub(in crate::fleet) struct Registry {
    entries: RwLock<Vec<Registered>>,
    active: RwLock<Arc<Vec<Arc<Hook>>>>,
    store: OnceLock<Store>,
    pub(in crate::fleet) runtime: OnceLock<Runtime>,
    /// Serializes changes, so the store, the entries and the hooks agree.
    admin: tokio::sync::Mutex<()>,
    url_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The id of a config-file endpoint: stable while its URL stays.
fn config_id(url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    format!("config-{}", super::hex(&digest.as_ref()[..6]))
}

/// A new API endpoint id: `wh-` and 16 random hex digits.
fn new_id() -> Result<String, EndpointError> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| EndpointError::Invalid("no randomness for a webhook id".into()))?;
    Ok(format!("wh-{}", super::hex(&bytes)))
}

impl Registry {
    /// The config file's endpoints, all enabled. A URL configured twice keeps its first
    /// entry ([`super::super::events::validate_webhooks`] rejects such a config).
    pub(in crate::fleet) fn from_config(hooks: Vec<WebhookConfig>) -> Registry {
        let mut entries: Vec<Registered> = Vec::with_capacity(hooks.len());
        for h in hooks {
            if entries.iter().any(|e| e.spec.url == h.url) {
                tracing::warn!(url = %redact_url(&h.url), "webhook URL configured twice; using the first");
                continue;
            }
            entries.push(Registered {
                spec: HookSpec {
                    id: config_id(&h.url),
                    url: h.url,
                    secret: h.secret,
                    events: h.events,
                },
                source: EndpointSource::Config,
                enabled: true,
                created_at_ms: None,
            });
        }
        let active = entries
            .iter()
            .map(|e| Arc::new(Hook::new(e.spec.clone())))
            .collect();
        Registry {
            entries: RwLock::new(entries),
            active: RwLock::new(Arc::new(active)),
            store: OnceLock::new(),
            runtime: OnceLock::new(),
            admin: tokio::sync::Mutex::new(()),
            url_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The hooks of the enabled endpoints, as of now.
    pub(in crate::fleet) fn active(&self) -> Arc<Vec<Arc<Hook>>> {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every endpoint, config file first.
    pub(in crate::fleet) fn entries(&self) -> Vec<Registered> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_entries(&self, entries: Vec<Registered>) {
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = entries;
    }

    /// Whether `url` belongs to an endpoint (enabled or not).
    pub(in crate::fleet) fn knows_url(&self, url: &str) -> bool {
        self.entries().iter().any(|e| e.spec.url == url)
    }

    /// The id of the endpoint that sends to `url`.
    pub(in crate::fleet) fn id_of_url(&self, url: &str) -> Option<String> {
        (self.entries().into_iter())
            .find(|e| e.spec.url == url)
            .map(|e| e.spec.id)
    }

    /// The lock a worker of `url` holds while it runs.
    pub(in crate::fleet) fn url_lock(&self, url: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .url_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        locks.entry(url.to_owned()).or_default().clone()
    }

    /// Rebuilds the active hooks from the entries; returns the hooks to start and stops
    /// those no longer active. An unchanged endpoint keeps its hook and worker.
    fn reconcile(&self) -> Vec<Arc<Hook>> {
        let entries = self.entries();
        let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::new();
        let mut started = Vec::new();
        for e in entries.iter().filter(|e| e.enabled) {
            match active.iter().find(|h| h.spec == e.spec) {
                Some(kept) => next.push(kept.clone()),
                None => {
                    let hook = Arc::new(Hook::new(e.spec.clone()));
                    started.push(hook.clone());
                    next.push(hook);
                }
            }
        }
        for old in active.iter() {
            if !next.iter().any(|h| Arc::ptr_eq(h, old)) {
                old.stop();
            }
        }
        *active = Arc::new(next);
        started
    }
}

impl EventBus {
    /// Loads the endpoints created through the API from `store` (blocking; call at
    /// start-up, before `spawn_workers`), and keeps `store` for later changes. One
    /// whose URL is also in the config file is skipped (logged): the config wins.
    pub fn load_endpoints(&self, store: Store) -> Result<(), StoreError> {
        let reg = &self.inner.endpoints;
        let stored = store.list_webhook_endpoints();
        let _ = reg.store.set(store);
        let mut entries = reg.entries();
        for e in stored? {
            if entries.iter().any(|r| r.spec.url == e.url) {
                tracing::warn!(id = %e.id, url = %redact_url(&e.url), "webhook endpoint's URL is also configured; using the config's");
                continue;
            }
            entries.push(Registered::api(e));
        }
        reg.set_entries(entries);
        reg.reconcile();
        Ok(())
    }

    /// Every endpoint: the config file's, then the API's by id.
    pub fn endpoints(&self) -> Vec<EndpointView> {
        let entries = self.inner.endpoints.entries();
        entries.iter().map(Registered::view).collect()
    }

    /// Endpoint `id`.
    pub fn endpoint(&self, id: &str) -> Result<EndpointView, EndpointError> {
        (self.inner.endpoints.entries().iter())
            .find(|e| e.spec.id == id)
            .map(Registered::view)
            .ok_or_else(|| not_found(id))
    }

    /// Creates an API endpoint and, if enabled, starts sending it the next event.
    pub async fn create_endpoint(&self, new: NewEndpoint) -> Result<EndpointView, EndpointError> {
        let reg = &self.inner.endpoints;
        let _admin = reg.admin.lock().await;
        validate(&new.url, &new.secret, &new.events)?;
        let mut entries = reg.entries();
        check_url_free(&entries, &new.url, None)?;
        let entry = Registered {
            spec: HookSpec {
                id: new_id()?,
                url: new.url,
                secret: new.secret,
                events: new.events,
            },
            source: EndpointSource::Api,
            enabled: new.enabled,
            created_at_ms: Some(now_ms()),
        };
        let stored = entry.stored();
        self.store()?
            .call(move |s| s.create_webhook_endpoint(&stored))
            .await?;
        tracing::info!(id = %entry.spec.id, url = %redact_url(&entry.spec.url), "webhook endpoint created");
        let view = entry.view();
        entries.push(entry);
        self.apply(entries);
        Ok(view)
    }

    /// Changes API endpoint `id`; a config-file endpoint is a [`EndpointError::Conflict`].
    pub async fn update_endpoint(
        &self,
        id: &str,
        patch: EndpointPatch,
    ) -> Result<EndpointView, EndpointError> {
        let reg = &self.inner.endpoints;
        let _admin = reg.admin.lock().await;
        let mut entries = reg.entries();
        let at = api_entry(&entries, id)?;
        let mut entry = entries[at].clone();
        let old_url = entry.spec.url.clone();
        if let Some(url) = patch.url {
            entry.spec.url = url;
        }
        if let Some(secret) = patch.secret {
            entry.spec.secret = secret;
        }
        if let Some(events) = patch.events {
            entry.spec.events = events;
        }
        if let Some(enabled) = patch.enabled {
            entry.enabled = enabled;
        }
        validate(&entry.spec.url, &entry.spec.secret, &entry.spec.events)?;
        check_url_free(&entries, &entry.spec.url, Some(id))?;
        let stored = entry.stored();
        self.store()?
            .call(move |s| s.update_webhook_endpoint(&stored))
            .await?;
        tracing::info!(%id, enabled = entry.enabled, "webhook endpoint changed");
        let view = entry.view();
        entries[at] = entry;
        self.apply(entries);
        if view.url != old_url {
            self.abandon(
                old_url,
                "gave up: the webhook endpoint moved to another URL",
            )
            .await;
        }
        Ok(view)
    }

    /// Deletes API endpoint `id`: its worker stops and what is still owed to it is given
    /// up (listed as `dead`). A config-file endpoint is a [`EndpointError::Conflict`].
    pub async fn delete_endpoint(&self, id: &str) -> Result<(), EndpointError> {
        let reg = &self.inner.endpoints;
        let _admin = reg.admin.lock().await;
        let mut entries = reg.entries();
        let at = api_entry(&entries, id)?;
        let owned = id.to_owned();
        self.store()?
            .call(move |s| s.delete_webhook_endpoint(&owned))
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => not_found(id),
                other => other.into(),
            })?;
        let removed = entries.remove(at);
        tracing::info!(%id, url = %redact_url(&removed.spec.url), "webhook endpoint deleted");
        self.apply(entries);
        self.abandon(
            removed.spec.url,
            "gave up: the webhook endpoint was deleted",
        )
        .await;
        Ok(())
    }

    fn store(&self) -> Result<&Store, EndpointError> {
        self.inner.endpoints.store.get().ok_or_else(|| {
            EndpointError::Conflict("webhook endpoints cannot be changed: no store".into())
        })
    }

    /// Installs `entries` and starts the workers of new hooks.
    fn apply(&self, entries: Vec<Registered>) {
        let reg = &self.inner.endpoints;
        reg.set_entries(entries);
        for hook in reg.reconcile() {
            super::start_worker(&self.inner, hook);
        }
    }

    /// Gives up every delivery still owed to `url` (logged and counted).
    async fn abandon(&self, url: String, reason: &str) {
        let inner = &self.inner;
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

fn not_found(id: &str) -> EndpointError {
    EndpointError::NotFound {
        kind: "webhook",
        id: id.to_owned(),
    }
}

/// The index of API endpoint `id`.
fn api_entry(entries: &[Registered], id: &str) -> Result<usize, EndpointError> {
    let at = (entries.iter())
        .position(|e| e.spec.id == id)
        .ok_or_else(|| not_found(id))?;
    if entries[at].source == EndpointSource::Config {
        return Err(EndpointError::Conflict(format!(
            "webhook {id:?} comes from the config file and is read-only; change it there"
        )));
    }
    Ok(at)
}

fn check_url_free(
    entries: &[Registered],
    url: &str,
    except: Option<&str>,
) -> Result<(), EndpointError> {
    match entries
        .iter()
        .find(|e| e.spec.url == url && Some(e.spec.id.as_str()) != except)
    {
        Some(other) => Err(EndpointError::Conflict(format!(
            "webhook {:?} already sends to {url:?}",
            other.spec.id
        ))),
        None => Ok(()),
    }
}

/// The config file's checks, with messages that name the JSON field.
fn validate(url: &str, secret: &str, events: &Option<Vec<String>>) -> Result<(), EndpointError> {
    let config = WebhookConfig {
        url: url.to_owned(),
        secret: secret.to_owned(),
        events: events.clone(),
    };
    config.validate().map_err(|e| {
        let field = e.key().trim_start_matches("webhooks.");
        EndpointError::Invalid(format!("invalid `{field}`: {}", e.reason()))
    })
}
