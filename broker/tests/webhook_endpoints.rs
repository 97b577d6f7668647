//! Webhook endpoints created at runtime (SPEC §8 `/api/v1/webhooks`), through the event
//! bus the admin API calls: a real broker, real device connections producing events, and
//! real HTTP receivers.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::webhooks::{EndpointError, EndpointPatch, EndpointSource, NewEndpoint};
use fleetmq_broker::BrokerConfig;
use fleetmq_storage::outbox::DeliveryStatus;

const SECRET: &str = "runtime-secret-1";
/// How long a receiver is watched for a request that must not come.
const QUIET: Duration = Duration::from_millis(400);

fn endpoint(url: &str, events: Option<&[&str]>) -> NewEndpoint {
    NewEndpoint {
        url: url.to_owned(),
        secret: SECRET.to_owned(),
        events: events.map(|e| e.iter().map(|s| (*s).to_owned()).collect()),
        enabled: true,
    }
}

/// Connects and disconnects `id`: one `device.online` and one `device.offline`.
async fn online_then_offline(b: &TestBroker, id: &str) {
    let mut events = b.handle.events().subscribe();
    let fw = Firmware::connect(b, id, "tok").await;
    next_event(&mut events, |e| e.kind == "device.online").await;
    fw.disconnect().await;
    next_event(&mut events, |e| e.kind == "device.offline").await;
}

#[tokio::test]
async fn a_runtime_endpoint_follows_its_changes_without_a_restart() {
    let mut rx = HookReceiver::start(|_| HookReply::Status(200)).await;
    let b = TestBroker::start().await;
    b.add_device("rt-1", "tok", false).await;
    let bus = b.handle.events();

    let created = bus
        .create_endpoint(endpoint(&rx.url, Some(&["device.online"])))
        .await
        .unwrap();
    assert_eq!(created.source, EndpointSource::Api);
    assert!(created.enabled && created.id.starts_with("wh-"));
    online_then_offline(&b, "rt-1").await;
    let got = rx.next().await;
    assert_eq!(got.kind(), "device.online");
    assert!(got.signed_with(SECRET));
    assert!(
        rx.next_within(QUIET).await.is_none(),
        "filtered: no offline"
    );

    // A new filter applies to the next event.
    let patch = EndpointPatch {
        events: Some(Some(vec!["device.offline".into()])),
        ..EndpointPatch::default()
    };
    bus.update_endpoint(&created.id, patch).await.unwrap();
    online_then_offline(&b, "rt-1").await;
    assert_eq!(rx.next().await.kind(), "device.offline");
    assert!(rx.next_within(QUIET).await.is_none());

    // A new secret signs the next delivery.
    let patch = EndpointPatch {
        secret: Some("rotated".into()),
        events: Some(None),
        ..EndpointPatch::default()
    };
    bus.update_endpoint(&created.id, patch).await.unwrap();
    online_then_offline(&b, "rt-1").await;
    let got = rx.next().await;
    assert!(got.signed_with("rotated") && !got.signed_with(SECRET));
    assert_eq!(rx.next().await.kind(), "device.offline");

    // Disabled: nothing is queued or sent; enabled again: the next event is.
    let off = EndpointPatch {
        enabled: Some(false),
        ..EndpointPatch::default()
    };
    assert!(!bus.update_endpoint(&created.id, off).await.unwrap().enabled);
    online_then_offline(&b, "rt-1").await;
    assert!(rx.next_within(QUIET).await.is_none(), "disabled");
    assert_eq!(bus.backlog().await, 0, "nothing queued while disabled");
    let on = EndpointPatch {
        enabled: Some(true),
        ..EndpointPatch::default()
    };
    bus.update_endpoint(&created.id, on).await.unwrap();
    online_then_offline(&b, "rt-1").await;
    assert_eq!(rx.next().await.kind(), "device.online");
    assert_eq!(rx.next().await.kind(), "device.offline");

    // Deleted: nothing more.
    bus.delete_endpoint(&created.id).await.unwrap();
    assert!(bus.endpoints().is_empty());
    online_then_offline(&b, "rt-1").await;
    assert!(rx.next_within(QUIET).await.is_none(), "deleted");
    assert!(matches!(
        bus.delete_endpoint(&created.id).await,
        Err(EndpointError::NotFound { .. })
    ));
}

#[tokio::test]
async fn config_endpoints_are_listed_read_only_and_urls_stay_unique() {
    let rx = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut config = BrokerConfig::for_tests();
    config.fleet.webhooks = vec![webhook(&rx.url, SECRET, Some(&["command.*"]))];
    let b = TestBroker::with_config(config).await;
    let bus = b.handle.events();
    let listed = bus.endpoints();
    assert_eq!(listed.len(), 1);
    let from_config = &listed[0];
    assert_eq!(from_config.source, EndpointSource::Config);
    assert_eq!(from_config.url, rx.url);
    assert_eq!(from_config.created_at, None);
    assert!(matches!(
        bus.update_endpoint(&from_config.id, EndpointPatch::default())
            .await,
        Err(EndpointError::Conflict(_))
    ));
    assert!(matches!(
        bus.delete_endpoint(&from_config.id).await,
        Err(EndpointError::Conflict(_))
    ));
    assert!(matches!(
        bus.create_endpoint(endpoint(&rx.url, None)).await,
        Err(EndpointError::Conflict(_))
    ));
    for bad in [
        endpoint("ftp://x.example/h", None),
        endpoint("http://x.example/h", Some(&["no pe"])),
        endpoint("http://x.example/h", Some(&[])),
        NewEndpoint {
            secret: String::new(),
            ..endpoint("http://x.example/h", None)
        },
    ] {
        assert!(matches!(
            bus.create_endpoint(bad).await,
            Err(EndpointError::Invalid(_))
        ));
    }
    assert_eq!(bus.endpoints().len(), 1, "nothing was created");
}

#[tokio::test]
async fn deliveries_owed_to_a_runtime_endpoint_survive_a_restart() {
    let up = Arc::new(AtomicBool::new(false));
    let mut rx = {
        let up = up.clone();
        HookReceiver::start(move |_| {
            HookReply::Status(if up.load(Ordering::SeqCst) { 200 } else { 503 })
        })
        .await
    };
    let config = BrokerConfig::for_tests();
    let b = TestBroker::with_config(config.clone()).await;
    b.add_device("rt-2", "tok", false).await;
    let created = (b.handle.events())
        .create_endpoint(endpoint(&rx.url, Some(&["device.*"])))
        .await
        .unwrap();
    online_then_offline(&b, "rt-2").await;
    let refused = rx.next().await;
    assert_eq!(refused.kind(), "device.online");
    let owed = eventually("one failed and one pending", || async {
        let (items, _) = (b.handle.events())
            .deliveries_of(Some(&created.id), None, 10, None)
            .await
            .unwrap();
        let statuses: Vec<_> = items.iter().map(|d| d.status).collect();
        (statuses == [DeliveryStatus::Failed, DeliveryStatus::Pending]).then_some(items)
    })
    .await;
    assert!(owed
        .iter()
        .all(|d| d.webhook_id.as_deref() == Some(created.id.as_str())));

    let dir = b.stop().await;
    up.store(true, Ordering::SeqCst);
    rx.drain();
    let b = TestBroker::with_config_in(config, dir).await;
    assert_eq!(b.handle.events().endpoints(), vec![created.clone()]);
    let first = rx.next().await;
    assert_eq!(first.body, refused.body, "the same event, byte for byte");
    assert!(first.signed_with(SECRET));
    assert_eq!(rx.next().await.kind(), "device.offline");
    eventually("nothing to be owed", || async {
        (b.handle.events().backlog().await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn retry_sends_at_once_and_discard_removes_and_counts() {
    let up = Arc::new(AtomicBool::new(false));
    let mut rx = {
        let up = up.clone();
        HookReceiver::start(move |_| {
            HookReply::Status(if up.load(Ordering::SeqCst) { 200 } else { 500 })
        })
        .await
    };
    let b = TestBroker::start().await;
    b.add_device("rt-3", "tok", false).await;
    let bus = b.handle.events();
    let created = bus
        .create_endpoint(endpoint(&rx.url, Some(&["device.*"])))
        .await
        .unwrap();
    online_then_offline(&b, "rt-3").await;
    rx.next().await;
    // Second attempt after about 1 s; the next one would wait about 2 s more.
    rx.next().await;
    let (items, _) = bus
        .deliveries_of(Some(&created.id), None, 10, None)
        .await
        .unwrap();
    let (head, behind) = (&items[0], &items[1]);
    let failing = eventually("two failed attempts recorded", || async {
        let d = bus.delivery(&head.id).await.unwrap();
        (d.attempts == 2).then_some(d)
    })
    .await;
    assert_eq!(failing.status, DeliveryStatus::Failed);
    assert_eq!(behind.status, DeliveryStatus::Pending);

    // Discard the pending one: gone, counted.
    bus.discard_delivery(&behind.id).await.unwrap();
    assert_eq!(bus.webhook_stats().discarded, 1);
    assert!(matches!(
        bus.delivery(&behind.id).await,
        Err(EndpointError::NotFound { .. })
    ));
    assert!(matches!(
        bus.discard_delivery(&behind.id).await,
        Err(EndpointError::NotFound { .. })
    ));

    // Retry the failing head: sent now, not after the backoff.
    up.store(true, Ordering::SeqCst);
    let asked = std::time::Instant::now();
    bus.retry_delivery(&head.id).await.unwrap();
    let sent = rx.next().await;
    assert_eq!(sent.kind(), "device.online");
    assert!(
        asked.elapsed() < Duration::from_millis(1_000),
        "sent {:?} after the retry",
        asked.elapsed()
    );
    eventually("nothing to be owed", || async {
        (bus.backlog().await == 0).then_some(())
    })
    .await;
    assert!(rx.next_within(QUIET).await.is_none(), "the discarded one");
    assert!(matches!(
        bus.retry_delivery("12345").await,
        Err(EndpointError::NotFound { .. })
    ));
}
