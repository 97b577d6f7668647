//! Webhook delivery against real HTTP receivers on 127.0.0.1:0 and a real redb file.
//! Timing uses short configured backoffs; waits are bounded polls, never fixed sleeps.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::super::events::{FleetEvent, WebhookConfig};
use super::*;
use fleetmq_storage::outbox::DeliveryStatus;
use fleetmq_storage::outbox::{Outbox, OutboxLimits};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answer.
    Hang,
}

#[derive(Debug)]
struct Received {
    at: Instant,
    signature: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn event_id(&self) -> String {
        self.json()["id"].as_str().unwrap().to_owned()
    }
}

struct Receiver {
    url: String,
    rx: mpsc::Receiver<Received>,
}

impl Receiver {
    /// A receiver answering request `n` (from 0) with `reply(n)`.
    async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks?token=t", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel(1024);
        let reply = Arc::new(reply);
        let count = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, reply, count) = (tx.clone(), reply.clone(), count.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (tx, reply, count) = (tx.clone(), reply.clone(), count.clone());
                    async move {
                        let header = |name| {
                            (req.headers().get(name))
                                .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
                        };
                        let signature = header(SIGNATURE_HEADER);
                        let content_type = header("content-type");
                        let at = Instant::now();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let received = Received {
                            at,
                            signature,
                            content_type,
                            body,
                        };
                        tx.send(received).await.unwrap();
                        match reply(n) {
                            Reply::Status(s) => {
                                let body = Full::new(Bytes::from_static(b"receiver says no"));
                                let mut response = Response::new(body);
                                *response.status_mut() = s.try_into().unwrap();
                                Ok::<_, Infallible>(response)
                            }
                            Reply::Hang => std::future::pending().await,
                        }
                    }
                });
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Receiver { url, rx }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a request")
            .unwrap()
    }
}

fn hook(url: &str, events: Option<&[&str]>) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        secret: "s3cret".into(),
        events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
    }
}

fn options(first_ms: u64, cap_ms: u64, give_up_ms: u64) -> WebhookOptions {
    WebhookOptions {
        backoff: Backoff {
            first: Duration::from_millis(first_ms),
            cap: Duration::from_millis(cap_ms),
            give_up_after: Duration::from_millis(give_up_ms),
        },
        timeout: Duration::from_secs(5),
        live_capacity: 16,
        replay_capacity: 64,
        telemetry_to_all: false,
    }
}

fn open_bus(dir: &Path, hooks: Vec<WebhookConfig>, options: WebhookOptions) -> EventBus {
    let db = redb::Database::create(dir.join("fleetmq.redb")).unwrap();
    let outbox = Outbox::open(Arc::new(db), OutboxLimits::default()).unwrap();
    EventBus::with_options(outbox, hooks, options)
}

struct Running {
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    fn start(bus: &EventBus) -> Running {
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        spawn_workers(bus, shutdown.clone(), &tracker);
        Running { shutdown, tracker }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(WAIT, self.tracker.wait())
            .await
            .unwrap();
    }
}

/// Polls `check` until it holds (bounded by [`WAIT`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn emit(bus: &EventBus, kind: &str) -> FleetEvent {
    let device: fleetmq_storage::DeviceId = "dev-1".parse().unwrap();
    bus.emit(kind, Some(&device), serde_json::json!({"k": kind}))
        .await
}

#[tokio::test]
async fn receivers_get_signed_json() {
    let mut rx = Receiver::start(|_| Reply::Status(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(
        dir.path(),
        vec![hook(&rx.url, None)],
        options(50, 100, 60_000),
    );
    let running = Running::start(&bus);

    let event = emit(&bus, "device.online").await;
    let got = rx.next().await;
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    let signature = got.signature.as_deref().unwrap();
    let tag = signature.strip_prefix("sha256=").unwrap();
    assert_eq!(tag.len(), 64);
    let tag: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&tag[i..i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
    ring::hmac::verify(&key, &got.body, &tag).expect("signature verifies with the secret");
    let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other");
    assert!(ring::hmac::verify(&wrong, &got.body, &tag).is_err());

    assert_eq!(got.json(), serde_json::to_value(&event).unwrap());
    assert_eq!(got.json()["device_id"], "dev-1");
    assert_eq!(got.json()["type"], "device.online");
    eventually("the delivery to leave the outbox", || async {
        bus.backlog().await == 0
    })
    .await;
    assert_eq!(bus.webhook_stats().delivered, 1);
    running.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_growing_gaps() {
    let mut rx = Receiver::start(|n| Reply::Status(if n < 2 { 500 } else { 200 })).await;
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(
        dir.path(),
        vec![hook(&rx.url, None)],
        options(100, 10_000, 60_000),
    );
    let running = Running::start(&bus);

    let event = emit(&bus, "command.completed").await;
    let attempts = [rx.next().await, rx.next().await, rx.next().await];
    assert!(attempts.iter().all(|a| a.event_id() == event.id));
    let gap1 = attempts[1].at - attempts[0].at;
    let gap2 = attempts[2].at - attempts[1].at;
    // 100 ms, then 200 ms (less a millisecond of rounding of the stored timestamps).
    assert!(gap1 >= Duration::from_millis(99), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(199), "{gap2:?}");
    assert!(gap2 > gap1, "{gap1:?} then {gap2:?}");

    eventually("the delivery to leave the outbox", || async {
        bus.backlog().await == 0
    })
    .await;
    let stats = bus.webhook_stats();
    assert_eq!((stats.delivered, stats.failed_attempts), (1, 2));
    assert!(
        rx.rx.try_recv().is_err(),
        "delivered exactly once after the 200"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_dead_url_does_not_delay_a_healthy_one() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hooks", l.local_addr().unwrap())
    };
    let mut hanging = Receiver::start(|_| Reply::Hang).await;
    let mut healthy = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = vec![
        hook(&refused, None),
        hook(&hanging.url, None),
        hook(&healthy.url, None),
    ];
    // The hanging URL holds its worker for the whole 5 s timeout.
    let bus = open_bus(dir.path(), hooks, options(10_000, 10_000, 60_000));
    let running = Running::start(&bus);

    let started = Instant::now();
    let mut sent = Vec::new();
    for kind in ["device.online", "device.event", "device.offline"] {
        sent.push(emit(&bus, kind).await.id);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(healthy.next().await.event_id());
    }
    assert_eq!(got, sent);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(hanging.next().await.event_id(), sent[0]);

    eventually(
        "the refused URL to be failing and the healthy one done",
        || async {
            let (failed, _) = bus
                .deliveries(Some(DeliveryStatus::Failed), 100, None)
                .await
                .unwrap();
            // The head was attempted; the two behind it never were: pending.
            failed.iter().filter(|d| d.url == refused).count() == 1 && bus.backlog().await == 6
        },
    )
    .await;
    let (failed, _) = bus
        .deliveries(Some(DeliveryStatus::Failed), 100, None)
        .await
        .unwrap();
    let head = failed.iter().find(|d| d.url == refused).unwrap();
    assert!(
        head.last_error
            .as_deref()
            .unwrap()
            .contains("request failed"),
        "{head:?}"
    );
    assert!(head.next_attempt_at.is_some());
    // The hanging URL's deliveries are still pending: its first attempt has not ended;
    // so are the refused URL's two that wait behind its failing head.
    let (pending, _) = bus
        .deliveries(Some(DeliveryStatus::Pending), 100, None)
        .await
        .unwrap();
    assert_eq!(pending.len(), 5);
    assert_eq!(pending.iter().filter(|d| d.url == hanging.url).count(), 3);
    assert!(pending
        .iter()
        .filter(|d| d.url == refused)
        .all(|d| d.attempts == 0 && d.next_attempt_at.is_none()));
    assert_eq!(bus.backlog().await, 6);
    running.stop().await;
}

#[tokio::test]
async fn events_are_filtered_per_url() {
    let mut commands = Receiver::start(|_| Reply::Status(200)).await;
    let mut online = Receiver::start(|_| Reply::Status(200)).await;
    let mut all = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = vec![
        hook(&commands.url, Some(&["command.*"])),
        hook(&online.url, Some(&["device.online"])),
        hook(&all.url, None),
    ];
    let bus = open_bus(dir.path(), hooks, options(50, 100, 60_000));
    let running = Running::start(&bus);

    let kinds = [
        "device.online",
        "command.completed",
        "device.event",
        "command.failed",
    ];
    let mut ids = Vec::new();
    for kind in kinds {
        ids.push(emit(&bus, kind).await.id);
    }
    let mut got_all = Vec::new();
    for _ in 0..4 {
        got_all.push(all.next().await.event_id());
    }
    assert_eq!(got_all, ids);
    assert_eq!(commands.next().await.event_id(), ids[1]);
    assert_eq!(commands.next().await.event_id(), ids[3]);
    assert_eq!(online.next().await.event_id(), ids[0]);
    eventually("every delivery to be done", || async {
        bus.backlog().await == 0
    })
    .await;
    // Seven deliveries in all: nothing else was queued.
    assert_eq!(bus.webhook_stats().delivered, 7);
    assert!(commands.rx.try_recv().is_err() && online.rx.try_recv().is_err());
    running.stop().await;
}

#[tokio::test]
async fn owed_deliveries_survive_a_restart() {
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let mut rx = Receiver::start(move |_| {
        Reply::Status(if flag.load(Ordering::SeqCst) {
            200
        } else {
            503
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = rx.url.clone();
    let hooks = || vec![hook(&url, None)];

    // Before the restart: the receiver is down.
    let bus = open_bus(dir.path(), hooks(), options(100, 200, 60_000));
    let running = Running::start(&bus);
    let ids = [
        emit(&bus, "alarm.raised").await.id,
        emit(&bus, "alarm.cleared").await.id,
    ];
    assert_eq!(rx.next().await.event_id(), ids[0]);
    eventually("the failure to be recorded", || async {
        let (failed, _) = bus
            .deliveries(Some(DeliveryStatus::Failed), 10, None)
            .await
            .unwrap();
        failed.first().is_some_and(|d| d.attempts >= 1)
    })
    .await;
    running.stop().await;
    drop(bus);
    while rx.rx.try_recv().is_ok() {}

    // After: the same file, a new bus. What is owed is listed before workers start.
    let bus = open_bus(dir.path(), hooks(), options(100, 200, 60_000));
    let (failed, next) = bus.deliveries(None, 10, None).await.unwrap();
    assert_eq!(next, None);
    let listed: Vec<_> = failed.iter().map(|d| d.event_id.clone()).collect();
    assert_eq!(listed, ids);
    assert_eq!(failed[0].status, DeliveryStatus::Failed);
    assert_eq!(failed[1].status, DeliveryStatus::Pending, "never attempted");
    assert!(failed[0].attempts >= 1 && failed[0].last_error.as_deref().unwrap().contains("503"));
    assert_eq!(bus.backlog().await, 2);

    up.store(true, Ordering::SeqCst);
    let running = Running::start(&bus);
    assert_eq!(rx.next().await.event_id(), ids[0]);
    assert_eq!(rx.next().await.event_id(), ids[1]);
    eventually("the backlog to drain", || async {
        bus.backlog().await == 0
    })
    .await;
    running.stop().await;
    drop(bus);

    // "Delivered" is committed without fsync; closing the database persists it.
    let bus = open_bus(dir.path(), hooks(), options(100, 200, 60_000));
    assert_eq!(bus.backlog().await, 0);
}

#[tokio::test]
async fn a_full_url_queue_drops_new_events_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("fleetmq.redb")).unwrap();
    let limits = OutboxLimits {
        max_owed_per_url: 1,
        ..OutboxLimits::default()
    };
    let outbox = Outbox::open(Arc::new(db), limits).unwrap();
    let hooks = vec![
        hook("http://127.0.0.1:1/a", None),
        hook("http://127.0.0.1:1/b", Some(&["x.*"])),
    ];
    let bus = EventBus::with_options(outbox, hooks, options(50, 50, 60_000));
    let mut live = bus.subscribe();
    emit(&bus, "device.online").await;
    let second = emit(&bus, "device.offline").await;
    assert_eq!(bus.backlog().await, 1);
    assert_eq!(bus.webhook_stats().dropped_full, 1);
    // Still streamed live.
    live.recv().await.unwrap();
    assert_eq!(live.recv().await.unwrap(), second);
}

#[tokio::test]
async fn https_urls_are_spoken_to_over_tls() {
    // A plain-HTTP receiver behind an https URL: the TLS handshake fails, and the
    // receiver never sees a request it can parse.
    let mut rx = Receiver::start(|_| Reply::Status(200)).await;
    let url = rx.url.replace("http://", "https://");
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(
        dir.path(),
        vec![hook(&url, None)],
        options(10_000, 10_000, 60_000),
    );
    let running = Running::start(&bus);
    emit(&bus, "device.online").await;
    eventually("the attempt to fail", || async {
        let (failed, _) = bus
            .deliveries(Some(DeliveryStatus::Failed), 10, None)
            .await
            .unwrap();
        failed.first().is_some_and(|d| d.attempts == 1)
    })
    .await;
    let (failed, _) = bus.deliveries(None, 10, None).await.unwrap();
    let error = failed[0].last_error.as_deref().unwrap();
    // rustls's complaint about the plain-HTTP answer to its ClientHello.
    assert!(
        error.starts_with("request failed: client error (Connect)")
            && error.contains("InvalidContentType"),
        "{error}"
    );
    assert!(rx.rx.try_recv().is_err());
    running.stop().await;
}

#[tokio::test]
async fn deliveries_are_listed_then_given_up() {
    let mut rx = Receiver::start(|_| Reply::Status(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(dir.path(), vec![hook(&rx.url, None)], options(50, 50, 400));
    let running = Running::start(&bus);
    let ids = [
        emit(&bus, "command.failed").await.id,
        emit(&bus, "command.expired").await.id,
    ];
    rx.next().await;

    eventually("the head to be listed as failed", || async {
        let (failed, _) = bus
            .deliveries(Some(DeliveryStatus::Failed), 10, None)
            .await
            .unwrap();
        failed.len() == 1 && failed[0].attempts >= 1
    })
    .await;
    let (page, cursor) = bus.deliveries(None, 1, None).await.unwrap();
    assert_eq!(page[0].event_id, ids[0]);
    assert_eq!(page[0].url, rx.url);
    assert!(page[0].last_error.as_deref().unwrap().contains("HTTP 500"));
    assert!(page[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("receiver says no"));
    let (page, cursor) = bus.deliveries(None, 1, cursor).await.unwrap();
    assert_eq!((page[0].event_id.as_str(), cursor), (ids[1].as_str(), None));
    assert!(matches!(
        bus.deliveries(None, 1, Some("x".into())).await,
        Err(StoreError::Invalid(_))
    ));

    eventually("both to be given up", || async { bus.backlog().await == 0 }).await;
    let (dead, _) = bus
        .deliveries(Some(DeliveryStatus::Dead), 10, None)
        .await
        .unwrap();
    assert_eq!(
        dead.iter().map(|d| d.event_id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert!(dead.iter().all(|d| d.next_attempt_at.is_none()));
    let json = serde_json::to_value(&dead[0]).unwrap();
    assert_eq!(json["status"], "dead");
    eventually("the counter", || async {
        bus.webhook_stats().given_up == 2
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn deliveries_to_unconfigured_urls_are_given_up_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_bus(
        dir.path(),
        vec![hook("http://127.0.0.1:1/old", None)],
        options(50, 50, 60_000),
    );
    emit(&bus, "device.online").await;
    assert_eq!(bus.backlog().await, 1);
    drop(bus);

    let bus = open_bus(dir.path(), vec![], options(50, 50, 60_000));
    let running = Running::start(&bus);
    eventually("the old URL's delivery to be given up", || async {
        bus.backlog().await == 0
    })
    .await;
    let (dead, _) = bus
        .deliveries(Some(DeliveryStatus::Dead), 10, None)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("no longer configured"));
    running.stop().await;
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = Backoff::default();
    let secs = |n| b.delay(n).as_secs();
    assert_eq!(
        [secs(1), secs(2), secs(3), secs(10), secs(11), secs(1_000)],
        [1, 2, 4, 512, 600, 600]
    );
    assert_eq!(b.delay(0), Duration::from_secs(1));
    assert_eq!(b.give_up_after, Duration::from_secs(86_400));
}

#[test]
fn urls_are_redacted_for_logs() {
    assert_eq!(
        redact_url("https://u:p@h.example:8443/a/b?token=x"),
        "https://h.example:8443/a/b"
    );
    assert_eq!(redact_url("http://h/x"), "http://h/x");
    assert_eq!(redact_url("not a url"), "<invalid url>");
}
