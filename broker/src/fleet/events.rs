//! Fleet events (SPEC §7): what the fleet services report (`device.online`,
//! `command.completed`, ...). [`EventBus::emit`] records each event in the webhook
//! outbox for every enabled endpoint (config file or API) whose filter matches, durably, before it returns;
//! then it wakes those URLs' workers (`webhooks`) and broadcasts the event live (for
//! `GET /api/v1/events`), keeping the most recent ones in a bounded replay ring so a
//! reconnecting stream can resume ([`EventBus::resume`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use fleetmq_storage::{now_ms, DeviceId};
use serde::Serialize;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use super::webhooks::{redact_url, Registry, WebhookOptions};
use super::{rfc3339_ms, EventSink};
use fleetmq_storage::outbox::{self, Enqueued, NewDelivery, Outbox};

mod hooks;
#[cfg(test)]
mod tests;

pub use hooks::{
    validate_webhooks, EventFilter, InvalidPattern, WebhookConfig, WebhookConfigError,
};

/// The type of the batched telemetry event, which only URLs that ask for it get.
pub const TELEMETRY: &str = "telemetry";

/// One event, exactly as POSTed to webhooks and streamed live:
/// `{"id","type","at","device_id","data"}`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetEvent {
    /// Unique and time-ordered: 16 hex digits of unix ms, then 8 hex digits of a
    /// per-process counter that starts at a random value.
    pub id: String,
    /// The event type, e.g. `device.online`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened: RFC 3339, UTC, millisecond precision.
    pub at: String,
    /// The device it is about, if any (`null` otherwise).
    pub device_id: Option<String>,
    /// Type-specific details, as JSON text: serialized exactly once, so values such as
    /// a command's metadata reach webhooks byte-for-byte.
    pub data: Box<serde_json::value::RawValue>,
}

impl FleetEvent {
    /// `data` parsed (for tests and consumers that want a `Value`).
    pub fn data_value(&self) -> serde_json::Value {
        serde_json::from_str(self.data.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for FleetEvent {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.id,
            &self.kind,
            &self.at,
            &self.device_id,
            self.data.get(),
        ) == (
            &other.id,
            &other.kind,
            &other.at,
            &other.device_id,
            other.data.get(),
        )
    }
}

/// An enabled endpoint's URL, shared by the bus and its worker. A changed endpoint is
/// a new `Hook` (and a new worker); see `webhooks::endpoints`.
pub(super) struct Hook {
    /// The endpoint as it was when this hook was built, to tell whether it changed.
    pub(super) spec: HookSpec,
    pub(super) url: String,
    pub(super) key: ring::hmac::Key,
    pub(super) filter: EventFilter,
    /// Holds at most one permit, so wake-ups coalesce and none is lost while the
    /// worker is busy.
    pub(super) wake: Notify,
    /// Cuts the worker's backoff wait short (an operator's retry or discard).
    pub(super) kick: Notify,
    /// Cancels this hook's worker; set when the worker starts.
    pub(super) worker: Mutex<Option<CancellationToken>>,
}

/// What a [`Hook`] is built from.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct HookSpec {
    pub(super) id: String,
    pub(super) url: String,
    pub(super) secret: String,
    pub(super) events: Option<Vec<String>>,
}

impl Hook {
    pub(super) fn new(spec: HookSpec) -> Hook {
        Hook {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, spec.secret.as_bytes()),
            filter: EventFilter::new(spec.events.as_deref()),
            url: spec.url.clone(),
            spec,
            wake: Notify::new(),
            kick: Notify::new(),
            worker: Mutex::new(None),
        }
    }

    /// Stops this hook's worker, if it runs.
    pub(super) fn stop(&self) {
        let token = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(token) = token {
            token.cancel();
        }
    }
}

/// Counters since start, for stats and metrics.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) delivered: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) given_up: AtomicU64,
    /// Deliveries an operator discarded.
    pub(super) discarded: AtomicU64,
    /// Events not queued for a URL because its outbox queue was full.
    pub(super) dropped_full: AtomicU64,
    pub(super) store_errors: AtomicU64,
}

pub(super) struct Inner {
    pub(super) outbox: Outbox,
    /// Every endpoint (config file and API) and the hooks of the enabled ones.
    pub(super) endpoints: Registry,
    pub(super) options: WebhookOptions,
    pub(super) counters: Counters,
    pub(super) workers_started: AtomicBool,
    live: broadcast::Sender<FleetEvent>,
    /// Taken for every live send and every subscription, so a resumed stream's replay
    /// and its live part meet without a gap or an overlap.
    recent: Mutex<Recent>,
    last_ms: AtomicU64,
    counter: AtomicU32,
}

/// The replay ring: the last [`WebhookOptions::replay_capacity`] events, in the order
/// they went live.
struct Recent {
    ring: VecDeque<FleetEvent>,
    /// Every event this bus emits with an id greater than `floor` is in `ring` or still
    /// to come. Starts as the start time (ids of an earlier run are older) and becomes
    /// the id of each event that falls out of the ring.
    floor: String,
}

/// Where a resumed stream starts; see [`EventBus::resume`].
#[derive(Debug)]
pub struct Resume {
    /// Set when events after the client's last id may be lost (they fell out of the
    /// replay ring, or were emitted before this process started).
    pub gap: Option<Gap>,
    /// Buffered events after the client's last id, oldest first.
    pub replay: Vec<FleetEvent>,
    /// Every event from the last one in `replay` on.
    pub live: broadcast::Receiver<FleetEvent>,
}

/// The client asked to resume after an event the replay ring no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub last_event_id: String,
    /// The oldest event still buffered (`null` when none is).
    pub oldest_available: Option<String>,
}

/// Emits fleet events; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<_> = (self.inner.endpoints.active().iter())
            .map(|h| redact_url(&h.url))
            .collect();
        f.debug_struct("EventBus")
            .field("webhooks", &urls)
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// A bus with the default [`WebhookOptions`] (SPEC §7 backoff, 10 s timeout).
    pub fn new(outbox: Outbox, hooks: Vec<WebhookConfig>) -> EventBus {
        EventBus::with_options(outbox, hooks, WebhookOptions::default())
    }

    /// A bus with explicit options. A URL configured twice keeps its first entry
    /// ([`validate_webhooks`] rejects such a config).
    pub fn with_options(
        outbox: Outbox,
        hooks: Vec<WebhookConfig>,
        options: WebhookOptions,
    ) -> EventBus {
        let (live, _) = broadcast::channel(options.live_capacity.max(1));
        let recent = Mutex::new(Recent {
            ring: VecDeque::new(),
            floor: format!("{:016x}", now_ms()),
        });
        let mut seed = [0u8; 4];
        // A random start keeps ids unique across restarts even if the clock steps back;
        // without randomness, 0 still gives unique ids within a run.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        EventBus {
            inner: Arc::new(Inner {
                outbox,
                endpoints: Registry::from_config(hooks),
                options,
                counters: Counters::default(),
                workers_started: AtomicBool::new(false),
                live,
                recent,
                last_ms: AtomicU64::new(0),
                counter: AtomicU32::new(u32::from_be_bytes(seed)),
            }),
        }
    }

    /// The live stream: every event emitted from now on. Bounded
    /// ([`WebhookOptions::live_capacity`]); a receiver that lags loses the oldest
    /// events and is told how many (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<FleetEvent> {
        self.inner.live.subscribe()
    }

    /// A live stream that first replays what a client missed after `last_event_id`.
    ///
    /// When `last_event_id` is in the replay ring, `replay` is everything that went
    /// live after it; otherwise it is every buffered event with a greater id (ids are
    /// time-ordered), with [`Resume::gap`] set when events after it may have been lost.
    /// `None` is a fresh subscription.
    pub fn resume(&self, last_event_id: Option<&str>) -> Resume {
        let recent = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let live = self.inner.live.subscribe();
        let Some(last) = last_event_id else {
            return Resume {
                gap: None,
                replay: Vec::new(),
                live,
            };
        };
        let ring = &recent.ring;
        // Two emitters can go live in an order slightly different from their ids, so an
        // id the client saw is looked up by position first.
        let position = ring.iter().rposition(|e| e.id == last);
        let replay: Vec<FleetEvent> = match position {
            Some(at) => ring.iter().skip(at + 1).cloned().collect(),
            None => (ring.iter())
                .filter(|e| e.id.as_str() > last)
                .cloned()
                .collect(),
        };
        let gap = (position.is_none() && last < recent.floor.as_str()).then(|| Gap {
            last_event_id: last.to_owned(),
            oldest_available: ring.front().map(|e| e.id.clone()),
        });
        Resume { gap, replay, live }
    }

    /// Buffers `event` for resumption and broadcasts it.
    fn go_live(&self, event: FleetEvent) {
        let capacity = self.inner.options.replay_capacity;
        let mut recent = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if capacity > 0 {
            while recent.ring.len() >= capacity {
                let Some(old) = recent.ring.pop_front() else {
                    break;
                };
                if old.id > recent.floor {
                    recent.floor = old.id;
                }
            }
            recent.ring.push_back(event.clone());
        } else if event.id > recent.floor {
            recent.floor.clone_from(&event.id);
        }
        // Err only when nobody is listening.
        let _ = self.inner.live.send(event);
    }

    /// Records the event in the outbox, one delivery per configured URL whose filter
    /// matches, committed durably before returning; then wakes those URLs' workers and
    /// broadcasts the event live. An outbox failure is logged and counted (the event
    /// still goes live); the event is returned either way.
    pub async fn emit(
        &self,
        kind: &str,
        device_id: Option<&DeviceId>,
        data: serde_json::Value,
    ) -> FleetEvent {
        let raw = serde_json::value::to_raw_value(&data).unwrap_or_else(|_| null_raw());
        self.emit_raw(kind, device_id, raw).await
    }

    /// Like [`EventBus::emit`], with `data` already serialized.
    pub async fn emit_raw(
        &self,
        kind: &str,
        device_id: Option<&DeviceId>,
        data: Box<serde_json::value::RawValue>,
    ) -> FleetEvent {
        let event = self.new_event(kind, device_id, data);
        let targets = self.targets(kind);
        if !targets.is_empty() {
            self.record_many(vec![(&event, targets)]).await;
        }
        self.go_live(event.clone());
        event
    }

    /// Like [`EventBus::emit_raw`] for several events: their outbox records are
    /// committed in one transaction (one disk flush for a whole batch), then each goes
    /// live, in order.
    pub async fn emit_many(
        &self,
        events: Vec<(&str, Option<DeviceId>, Box<serde_json::value::RawValue>)>,
    ) -> Vec<FleetEvent> {
        let events: Vec<FleetEvent> = events
            .into_iter()
            .map(|(kind, device_id, data)| self.new_event(kind, device_id.as_ref(), data))
            .collect();
        let batch: Vec<(&FleetEvent, Vec<Arc<Hook>>)> = events
            .iter()
            .map(|e| (e, self.targets(&e.kind)))
            .filter(|(_, targets)| !targets.is_empty())
            .collect();
        if !batch.is_empty() {
            self.record_many(batch).await;
        }
        for event in &events {
            self.go_live(event.clone());
        }
        events
    }

    fn targets(&self, kind: &str) -> Vec<Arc<Hook>> {
        (self.inner.endpoints.active().iter())
            .filter(|h| self.wants(h, kind))
            .cloned()
            .collect()
    }

    /// Whether `hook` takes events of `kind`: those its filter matches, except that
    /// `telemetry` (SPEC §7) goes only to URLs whose filter names it exactly, unless
    /// [`WebhookOptions::telemetry_to_all`].
    fn wants(&self, hook: &Hook, kind: &str) -> bool {
        if kind == TELEMETRY && !self.inner.options.telemetry_to_all {
            return hook.filter.names(kind);
        }
        hook.filter.matches(kind)
    }

    fn new_event(
        &self,
        kind: &str,
        device_id: Option<&DeviceId>,
        data: Box<serde_json::value::RawValue>,
    ) -> FleetEvent {
        let now = now_ms();
        // Never go back in time, so ids stay ordered if the clock steps back.
        let ms = self
            .inner
            .last_ms
            .fetch_max(now, Ordering::Relaxed)
            .max(now);
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        FleetEvent {
            id: format!("{ms:016x}{n:08x}"),
            kind: kind.to_owned(),
            at: rfc3339_ms(ms),
            device_id: device_id.map(|d| d.as_str().to_owned()),
            data,
        }
    }

    /// Queues each event for its targets in one outbox transaction and wakes those
    /// URLs' workers. Both happen on the blocking pool, so a caller that stops waiting
    /// cannot lose the wake-up.
    async fn record_many(&self, batch: Vec<(&FleetEvent, Vec<Arc<Hook>>)>) {
        let inner = &self.inner;
        let mut rows = Vec::with_capacity(batch.len());
        for (event, targets) in batch {
            match serde_json::to_vec(event) {
                Ok(body) => rows.push((
                    NewDelivery {
                        event_id: event.id.clone(),
                        event_type: event.kind.clone(),
                        body,
                    },
                    targets,
                )),
                Err(error) => {
                    inner.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, event_id = %event.id, "cannot encode event");
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        let now = now_ms();
        let result = inner
            .outbox
            .call(move |db, limits| {
                let urls: Vec<Vec<String>> = (rows.iter())
                    .map(|(_, targets)| targets.iter().map(|h| h.url.clone()).collect())
                    .collect();
                let events: Vec<(&NewDelivery, &[String])> = (rows.iter())
                    .zip(&urls)
                    .map(|((new, _), urls)| (new, urls.as_slice()))
                    .collect();
                let outcome = outbox::enqueue_many(db, &events, now, limits)?;
                let mut full = Vec::new();
                for ((new, targets), outcome) in rows.iter().zip(&outcome) {
                    for (hook, o) in targets.iter().zip(outcome) {
                        match o {
                            Enqueued::Queued(_) => hook.wake.notify_one(),
                            Enqueued::Full => full.push((hook.clone(), new.event_id.clone())),
                        }
                    }
                }
                Ok(full)
            })
            .await;
        match result {
            Ok(full) => {
                for (hook, event_id) in full {
                    let n = inner.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                    // A dead URL can drop every event: log the first and every 1000th.
                    if n.is_multiple_of(1000) {
                        tracing::warn!(
                            url = %redact_url(&hook.url),
                            %event_id,
                            dropped_total = n + 1,
                            "webhook outbox full for this URL; event not queued for it"
                        );
                    }
                }
            }
            Err(error) => {
                inner.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "cannot record events in the webhook outbox");
            }
        }
    }
}

/// `null` as raw JSON.
fn null_raw() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".to_owned()).expect("null is JSON")
}

impl EventSink for EventBus {
    /// Only webhooks are durable; the live stream and its replay ring start empty.
    fn records_durably(&self, kind: &str) -> bool {
        (self.inner.endpoints.active().iter()).any(|h| self.wants(h, kind))
    }

    fn emit(
        &self,
        kind: &'static str,
        device: Option<&DeviceId>,
        data: Box<serde_json::value::RawValue>,
    ) -> crate::fleet::SinkFuture<'_> {
        let device = device.cloned();
        Box::pin(async move {
            EventBus::emit_raw(self, kind, device.as_ref(), data).await;
        })
    }

    fn emit_many(&self, events: Vec<crate::fleet::SinkEvent>) -> crate::fleet::SinkFuture<'_> {
        Box::pin(async move {
            let batch = (events.into_iter())
                .map(|(kind, device, data)| (kind as &str, device, data))
                .collect();
            EventBus::emit_many(self, batch).await;
        })
    }
}
