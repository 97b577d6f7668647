//! Fleet events (SPEC §7): what the fleet services report (`device.online`,
//! `command.completed`, ...). [`EventBus::emit`] records each event in the webhook
//! outbox for every configured URL whose filter matches, durably, before it returns;
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

use super::webhooks::{redact_url, WebhookOptions};
use super::{rfc3339_ms, EventSink};
use fleetmq_storage::outbox::{self, Enqueued, NewDelivery, Outbox};

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

/// One `[[webhooks]]` entry.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// HMAC-SHA256 key for `X-Fleetmq-Signature`.
    pub secret: String,
    /// Event types to send: exact (`device.online`) or prefix (`command.*`); `*` is
    /// every type. `None`: every type.
    pub events: Option<Vec<String>>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .finish()
    }
}

/// Why a `[[webhooks]]` entry is invalid; messages name the config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookConfigError {
    #[error("invalid value for `webhooks.url`: {url:?} is not an http(s) URL with a host")]
    Url { url: String },
    #[error("invalid value for `webhooks.secret` of {url:?}: must not be empty")]
    EmptySecret { url: String },
    #[error("invalid value for `webhooks.events` of {url:?}: empty; omit it for every event")]
    NoEvents { url: String },
    #[error(
        "invalid value for `webhooks.events` of {url:?}: {pattern:?} is not an event type, \
         a prefix ending in `.*`, or `*`"
    )]
    Pattern { url: String, pattern: String },
    #[error("invalid value for `webhooks.url`: {url:?} is configured twice")]
    Duplicate { url: String },
}

impl WebhookConfig {
    /// Checks one entry: an http(s) URL with a host, a non-empty secret, and event
    /// patterns that are a type, a `prefix.*` or `*`.
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        let url = || self.url.clone();
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|_| WebhookConfigError::Url { url: url() })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(WebhookConfigError::Url { url: url() });
        }
        if self.secret.is_empty() {
            return Err(WebhookConfigError::EmptySecret { url: url() });
        }
        match &self.events {
            Some(patterns) if patterns.is_empty() => {
                Err(WebhookConfigError::NoEvents { url: url() })
            }
            Some(patterns) => patterns.iter().try_for_each(|p| {
                Pattern::parse(p)
                    .map(drop)
                    .ok_or_else(|| WebhookConfigError::Pattern {
                        url: url(),
                        pattern: p.clone(),
                    })
            }),
            None => Ok(()),
        }
    }
}

/// Validates every entry and that no URL appears twice (each URL has one ordered queue).
pub fn validate_webhooks(hooks: &[WebhookConfig]) -> Result<(), WebhookConfigError> {
    for (i, hook) in hooks.iter().enumerate() {
        hook.validate()?;
        if hooks[..i].iter().any(|h| h.url == hook.url) {
            return Err(WebhookConfigError::Duplicate {
                url: hook.url.clone(),
            });
        }
    }
    Ok(())
}

/// One parsed `events` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    /// `command.*` is kept as `command.`.
    Prefix(String),
}

impl Pattern {
    fn parse(p: &str) -> Option<Pattern> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|seg| {
                    !seg.is_empty()
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
        };
        match p.strip_suffix(".*") {
            _ if p == "*" => Some(Pattern::Any),
            Some(prefix) if valid(prefix) => Some(Pattern::Prefix(format!("{prefix}."))),
            None if valid(p) => Some(Pattern::Exact(p.to_owned())),
            _ => None,
        }
    }

    fn matches(&self, kind: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => e == kind,
            Pattern::Prefix(p) => kind.starts_with(p.as_str()),
        }
    }
}

/// Which event types a URL (or a live stream) receives: the `webhooks.events` syntax.
#[derive(Debug, Clone)]
pub struct EventFilter(Option<Vec<Pattern>>);

/// An event type pattern that is not a type, a `prefix.*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?} is not an event type, a prefix ending in `.*`, or `*`")]
pub struct InvalidPattern {
    pub pattern: String,
}

impl EventFilter {
    /// Unparsable patterns (which [`WebhookConfig::validate`] rejects) match nothing.
    fn new(patterns: Option<&[String]>) -> EventFilter {
        EventFilter(patterns.map(|ps| ps.iter().filter_map(|p| Pattern::parse(p)).collect()))
    }

    /// Every event type.
    pub fn any() -> EventFilter {
        EventFilter(None)
    }

    /// A filter from patterns such as `device.online`, `command.*` or `*`; the first
    /// pattern that is none of these is the error.
    pub fn parse<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<EventFilter, InvalidPattern> {
        let parsed = patterns
            .into_iter()
            .map(|p| {
                Pattern::parse(p).ok_or_else(|| InvalidPattern {
                    pattern: p.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventFilter(Some(parsed)))
    }

    /// Whether events of type `kind` pass.
    pub fn matches(&self, kind: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(kind)))
    }
}

/// A configured URL, shared by the bus and its worker.
pub(super) struct Hook {
    pub(super) url: String,
    pub(super) key: ring::hmac::Key,
    pub(super) filter: EventFilter,
    /// Holds at most one permit, so wake-ups coalesce and none is lost while the
    /// worker is busy.
    pub(super) wake: Notify,
}

/// Counters since start, for stats and metrics.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) delivered: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) given_up: AtomicU64,
    /// Events not queued for a URL because its outbox queue was full.
    pub(super) dropped_full: AtomicU64,
    pub(super) store_errors: AtomicU64,
}

pub(super) struct Inner {
    pub(super) outbox: Outbox,
    pub(super) hooks: Vec<Arc<Hook>>,
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
        let urls: Vec<_> = self
            .inner
            .hooks
            .iter()
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
        let mut built: Vec<Arc<Hook>> = Vec::with_capacity(hooks.len());
        for h in hooks {
            if built.iter().any(|b| b.url == h.url) {
                tracing::warn!(url = %redact_url(&h.url), "webhook URL configured twice; using the first");
                continue;
            }
            built.push(Arc::new(Hook {
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, h.secret.as_bytes()),
                filter: EventFilter::new(h.events.as_deref()),
                url: h.url,
                wake: Notify::new(),
            }));
        }
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
                hooks: built,
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
        (self.inner.hooks.iter())
            .filter(|h| h.filter.matches(kind))
            .cloned()
            .collect()
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
        self.inner.hooks.iter().any(|h| h.filter.matches(kind))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str, events: Option<&[&str]>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret: "s".into(),
            events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn filters_match_exact_prefix_and_any() {
        let f = |ps: &[&str]| {
            EventFilter::new(Some(&ps.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
        };
        let cmd = f(&["command.*"]);
        assert!(cmd.matches("command.completed"));
        assert!(!cmd.matches("command"));
        assert!(!cmd.matches("commands.x"));
        assert!(!cmd.matches("device.online"));
        let exact = f(&["device.online", "telemetry"]);
        assert!(exact.matches("device.online") && exact.matches("telemetry"));
        assert!(!exact.matches("device.offline"));
        assert!(f(&["*"]).matches("anything"));
        assert!(EventFilter::new(None).matches("anything"));
        // Patterns validate() rejects match nothing.
        assert!(!f(&["comm*"]).matches("command.completed"));
    }

    #[test]
    fn config_validation_names_the_problem() {
        assert_eq!(
            hook(
                "http://127.0.0.1:9000/hooks",
                Some(&["command.*", "device.online", "*"])
            )
            .validate(),
            Ok(())
        );
        assert_eq!(
            hook("https://example.com/x?token=1", None).validate(),
            Ok(())
        );
        for bad in [
            "ftp://h/x",
            "127.0.0.1:9000/x",
            "http://",
            "not a url",
            "/path",
        ] {
            assert!(
                matches!(
                    hook(bad, None).validate(),
                    Err(WebhookConfigError::Url { .. })
                ),
                "{bad}"
            );
        }
        let mut h = hook("http://h/x", None);
        h.secret.clear();
        assert!(matches!(
            h.validate(),
            Err(WebhookConfigError::EmptySecret { .. })
        ));
        assert!(matches!(
            hook("http://h/x", Some(&[])).validate(),
            Err(WebhookConfigError::NoEvents { .. })
        ));
        for bad in ["comm*", "", ".*", "a..b", "device.*.x", "device online"] {
            let err = hook("http://h/x", Some(&[bad])).validate().unwrap_err();
            assert!(matches!(err, WebhookConfigError::Pattern { .. }), "{bad}");
            assert!(err.to_string().contains("webhooks.events"), "{err}");
        }
        let dup = [
            hook("http://h/x", None),
            hook("http://h/y", None),
            hook("http://h/x", None),
        ];
        assert!(matches!(
            validate_webhooks(&dup),
            Err(WebhookConfigError::Duplicate { .. })
        ));
        assert_eq!(validate_webhooks(&dup[..2]), Ok(()));
    }

    #[test]
    fn debug_hides_the_secret() {
        let h = WebhookConfig {
            secret: "hunter2".into(),
            ..hook("http://u:pw@h/x?k=v", None)
        };
        let s = format!("{h:?}");
        assert!(
            !s.contains("hunter2") && !s.contains("pw") && !s.contains("k=v"),
            "{s}"
        );
    }

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_294_400_123), "2024-03-01T12:00:00.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn parsed_filters_name_the_bad_pattern() {
        let f = EventFilter::parse(["device.online", "command.*"]).unwrap();
        assert!(f.matches("device.online") && f.matches("command.failed"));
        assert!(!f.matches("device.offline"));
        assert!(EventFilter::parse(["*"]).unwrap().matches("x"));
        assert!(EventFilter::any().matches("x"));
        let err = EventFilter::parse(["device.online", "comm*"]).unwrap_err();
        assert_eq!(err.pattern, "comm*");
    }

    #[tokio::test]
    async fn resume_replays_after_the_last_id_then_goes_live() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let outbox = Outbox::open(Arc::new(db), Default::default()).unwrap();
        let options = WebhookOptions {
            replay_capacity: 4,
            ..WebhookOptions::default()
        };
        // Before anything is emitted, an id from an earlier run is a gap.
        let bus = EventBus::with_options(outbox, vec![], options);
        let before = bus.resume(Some("0000000000000001aaaaaaaa"));
        assert_eq!(
            before.gap,
            Some(Gap {
                last_event_id: "0000000000000001aaaaaaaa".into(),
                oldest_available: None
            })
        );
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(bus.emit("x.y", None, serde_json::json!(i)).await.id);
        }
        let mut r = bus.resume(Some(&ids[0]));
        assert!(r.gap.is_none());
        let replayed: Vec<_> = r.replay.iter().map(|e| e.id.clone()).collect();
        assert_eq!(replayed, ids[1..]);
        let next = bus.emit("x.y", None, serde_json::json!(3)).await;
        assert_eq!(r.live.recv().await.unwrap(), next);
        assert!(
            r.live.try_recv().is_err(),
            "nothing replayed comes again live"
        );
        ids.push(next.id);
        assert!(bus.resume(None).replay.is_empty());
        assert!(bus.resume(Some(&ids[3])).replay.is_empty());

        // Two more push ids[0] and ids[1] out of the ring of 4.
        for i in 4..6 {
            ids.push(bus.emit("x.y", None, serde_json::json!(i)).await.id);
        }
        let r = bus.resume(Some(&ids[0]));
        assert_eq!(
            r.gap,
            Some(Gap {
                last_event_id: ids[0].clone(),
                oldest_available: Some(ids[2].clone())
            })
        );
        assert_eq!(r.replay.len(), 4);
        // The last id that fell out is not a gap: nothing after it was lost.
        let r = bus.resume(Some(&ids[1]));
        assert!(r.gap.is_none());
        assert_eq!(r.replay.first().map(|e| &e.id), Some(&ids[2]));
        // An unknown id newer than everything replays nothing.
        let r = bus.resume(Some("ffffffffffffffffffffffff"));
        assert!(r.gap.is_none() && r.replay.is_empty());
    }

    #[tokio::test]
    async fn ids_are_unique_and_ordered_and_events_go_live() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let outbox = Outbox::open(Arc::new(db), Default::default()).unwrap();
        let bus = EventBus::new(outbox, vec![]);
        let mut live = bus.subscribe();
        let dev: DeviceId = "dev-1".parse().unwrap();
        let mut ids = Vec::new();
        for i in 0..50 {
            let e = bus
                .emit("device.online", Some(&dev), serde_json::json!({"i": i}))
                .await;
            assert_eq!(e.id.len(), 24);
            assert!(e.id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(live.recv().await.unwrap(), e);
            ids.push(e.id);
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        // Ordered unless the random counter wrapped within this run (1 in ~10^8).
        assert_eq!(sorted.len(), ids.len());
        let e = bus.emit("alarm.raised", None, serde_json::json!({})).await;
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "alarm.raised");
        assert!(json["device_id"].is_null());
        assert_eq!(json.as_object().unwrap().len(), 5);
        assert!(e.at.ends_with('Z') && e.at.len() == 24, "{}", e.at);
    }

    #[tokio::test]
    async fn emit_many_queues_every_matching_event_in_order_and_goes_live() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("t.redb")).unwrap());
        let outbox = Outbox::open(db.clone(), Default::default()).unwrap();
        let hooks = vec![
            hook("http://127.0.0.1:1/all", None),
            hook("http://127.0.0.1:1/cmd", Some(&["command.*"])),
        ];
        let bus = EventBus::new(outbox, hooks);
        let mut live = bus.subscribe();
        let dev: DeviceId = "dev-1".parse().unwrap();
        let raw = |v: serde_json::Value| serde_json::value::to_raw_value(&v).unwrap();
        let sent = bus
            .emit_many(vec![
                (
                    "command.completed",
                    Some(dev.clone()),
                    raw(serde_json::json!({"n": 1})),
                ),
                (
                    "device.online",
                    Some(dev.clone()),
                    raw(serde_json::json!({"n": 2})),
                ),
                ("command.failed", None, raw(serde_json::json!({"n": 3}))),
            ])
            .await;
        assert_eq!(sent.len(), 3);
        for e in &sent {
            assert_eq!(&live.recv().await.unwrap(), e);
        }
        let (queued, _) = outbox::list(&db, None, None, 100).unwrap();
        let per_url = |url: &str| -> Vec<String> {
            queued
                .iter()
                .filter(|d| d.url == url)
                .map(|d| d.event_type.clone())
                .collect()
        };
        assert_eq!(
            per_url("http://127.0.0.1:1/all"),
            ["command.completed", "device.online", "command.failed"]
        );
        assert_eq!(
            per_url("http://127.0.0.1:1/cmd"),
            ["command.completed", "command.failed"]
        );
    }
}
