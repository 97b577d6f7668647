//! SPEC §7 end to end: `[[webhooks]]` in the broker config, real device connections and
//! commands producing events, and real HTTP receivers (hyper on 127.0.0.1:0).
//!
//! The broker uses SPEC's backoff (first retry after about 1 s), so tests that need a
//! retry take a little over a second.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fleetmq_broker::fleet::commands::NewCommand;
use fleetmq_broker::BrokerConfig;
use fleetmq_storage::outbox::DeliveryStatus;
use serde_json::json;

const SECRET: &str = "webhook-secret-1";

fn config_with(hooks: Vec<fleetmq_broker::config::WebhookConfig>) -> BrokerConfig {
    let mut config = BrokerConfig::for_tests();
    config.fleet.webhooks = hooks;
    config
}

fn new_command(body: &str) -> NewCommand {
    serde_json::from_str(body).expect("a valid command body")
}

/// Requests until one of type `kind` arrives (others are returned too, in order).
async fn until_kind(rx: &mut HookReceiver, kind: &str) -> Vec<HookRequest> {
    let mut got = Vec::new();
    loop {
        let r = rx.next().await;
        let done = r.kind() == kind;
        got.push(r);
        if done {
            return got;
        }
    }
}

#[tokio::test]
async fn device_online_is_retried_after_a_500_and_signed() {
    let mut rx = HookReceiver::start(|n| HookReply::Status(if n == 0 { 500 } else { 200 })).await;
    let b = TestBroker::with_config(config_with(vec![webhook(&rx.url, SECRET, None)])).await;
    b.add_device("hook-1", "tok", false).await;
    let mut events = b.handle.events().subscribe();
    let _fw = Firmware::connect(&b, "hook-1", "tok").await;
    let online = next_event(&mut events, |e| e.kind == "device.online").await;

    let first = rx.next().await;
    let second = rx.next().await;
    for r in [&first, &second] {
        assert_eq!(r.kind(), "device.online");
        assert_eq!(r.json()["id"], online.id.as_str(), "the same event again");
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert!(r.signed_with(SECRET), "signature: {:?}", r.signature);
        assert!(!r.signed_with("another-secret"));
    }
    assert_eq!(first.body, second.body, "a retry sends the same body");
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_millis(800) && gap < Duration::from_secs(5),
        "first retry after about 1 s, not {gap:?}"
    );

    let body = second.json();
    assert_eq!(body, serde_json::to_value(&online).unwrap());
    let fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields.len(), 5, "{body}");
    for f in ["id", "type", "at", "device_id", "data"] {
        assert!(fields.contains(&f), "{body}");
    }
    assert_eq!(body["device_id"], "hook-1");
    assert!(body["at"].as_str().is_some_and(|a| a.ends_with('Z')));
    assert_eq!(body["data"]["ip"], "127.0.0.1");

    eventually("the delivery to leave the outbox", || async {
        (b.handle.events().backlog().await == 0).then_some(())
    })
    .await;
    assert!(
        rx.next_within(Duration::from_millis(300)).await.is_none(),
        "delivered once after the 200"
    );
}

#[tokio::test]
async fn command_terminal_events_carry_the_original_metadata() {
    let mut rx = HookReceiver::start(|_| HookReply::Status(204)).await;
    let mut config = config_with(vec![webhook(&rx.url, SECRET, Some(&["command.*"]))]);
    config.fleet.commands.timeout = Duration::from_secs(60);
    let b = TestBroker::with_config(config).await;
    let dev = b.add_device("hook-2", "tok", false).await;
    let away = b.add_device("hook-3", "tok", false).await;
    let engine = b.handle.commands();
    let mut fw = Firmware::connect(&b, "hook-2", "tok").await;

    let meta = |n: u32| json!({"job_id": format!("job-{n}"), "tags": ["a", n]});
    let body = |kind: &str, n: u32, extra: &str| {
        format!(r#"{{"type":"{kind}","metadata":{}{extra}}}"#, meta(n))
    };
    // superseded, then completed, failed, cancelled, and an expired one on an offline device.
    let superseded = engine
        .create(&away, new_command(&body("SET", 1, "")), None)
        .await
        .unwrap()
        .record;
    engine
        .create(&away, new_command(&body("SET", 6, "")), None)
        .await
        .unwrap();
    let expired = engine
        .create(&away, new_command(&body("PING", 5, r#","ttl_s":0"#)), None)
        .await
        .unwrap()
        .record;
    let ok = engine
        .create(&dev, new_command(&body("RELOAD", 2, "")), None)
        .await
        .unwrap()
        .record;
    let bad = engine
        .create(&dev, new_command(&body("REBOOT", 3, "")), None)
        .await
        .unwrap()
        .record;
    for _ in 0..2 {
        let c = fw.next().await;
        if c.command_id() == ok.command_id {
            fw.complete(&ok.command_id, json!({"done": true})).await;
        } else {
            fw.fail(&bad.command_id, "refused").await;
        }
    }
    let cancelled = engine
        .create(
            &dev,
            new_command(&body("WIPE", 4, r#","ttl_s":3600"#)),
            None,
        )
        .await
        .unwrap()
        .record;
    engine.cancel(&cancelled.command_id).await.unwrap();

    let want = [
        (&superseded.command_id, "command.superseded", 1),
        (&expired.command_id, "command.expired", 5),
        (&ok.command_id, "command.completed", 2),
        (&bad.command_id, "command.failed", 3),
        (&cancelled.command_id, "command.cancelled", 4),
    ];
    let mut got = Vec::new();
    while got.len() < want.len() {
        let r = rx.next().await;
        assert!(r.signed_with(SECRET));
        got.push(r.json());
    }
    for (id, kind, n) in want {
        let e = got
            .iter()
            .find(|e| e["data"]["command_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no event for {kind}: {got:?}"));
        assert_eq!(e["type"], kind, "{e}");
        assert_eq!(e["data"]["metadata"], meta(n), "{e}");
        assert_eq!(e["data"]["status"], kind.trim_start_matches("command."));
    }
    let completed = got
        .iter()
        .find(|e| e["type"] == "command.completed")
        .unwrap();
    assert_eq!(completed["data"]["result"], json!({"done": true}));
    assert_eq!(completed["device_id"], "hook-2");
    let failed = got.iter().find(|e| e["type"] == "command.failed").unwrap();
    assert_eq!(failed["data"]["error"], "refused");
}

#[tokio::test]
async fn command_events_carry_metadata_verbatim() {
    let mut rx = HookReceiver::start(|_| HookReply::Status(200)).await;
    let b = TestBroker::with_config(config_with(vec![webhook(
        &rx.url,
        SECRET,
        Some(&["command.*"]),
    )]))
    .await;
    let dev = b.add_device("hook-4", "tok", false).await;
    // An order id past u64 and a price with more digits than an f64 holds.
    let metadata = r#"{"order_id":123456789012345678901234567890,"price":19.999999999999999999}"#;
    let created = b
        .handle
        .commands()
        .create(
            &dev,
            new_command(&format!(r#"{{"type":"X","metadata":{metadata}}}"#)),
            None,
        )
        .await
        .unwrap()
        .record;
    assert_eq!(created.metadata.as_ref().map(|m| m.get()), Some(metadata));
    b.handle
        .commands()
        .cancel(&created.command_id)
        .await
        .unwrap();
    let r = rx.next().await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        body.contains(&format!(r#""metadata":{metadata}"#)),
        "the event should carry the metadata as given: {body}"
    );
}

#[tokio::test]
async fn a_dead_url_does_not_delay_another() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hooks", l.local_addr().unwrap())
    };
    let mut hanging = HookReceiver::start(|_| HookReply::Hang).await;
    let mut healthy = HookReceiver::start(|_| HookReply::Status(200)).await;
    let b = TestBroker::with_config(config_with(vec![
        webhook(&hanging.url, SECRET, None),
        webhook(&refused, SECRET, None),
        webhook(&healthy.url, SECRET, None),
    ]))
    .await;
    let dev = b.add_device("hook-5", "tok", false).await;

    let started = Instant::now();
    let _fw = Firmware::connect(&b, "hook-5", "tok").await;
    assert_eq!(healthy.next().await.kind(), "device.online");
    // The hanging URL got the same event and is still waiting for an answer.
    assert_eq!(hanging.next().await.kind(), "device.online");
    let created = b
        .handle
        .commands()
        .create(&dev, new_command(r#"{"type":"X"}"#), None)
        .await
        .unwrap()
        .record;
    b.handle
        .commands()
        .cancel(&created.command_id)
        .await
        .unwrap();
    let r = healthy.next().await;
    assert_eq!(r.kind(), "command.cancelled");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "the healthy URL was held up: {elapsed:?}"
    );
    assert!(
        hanging
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "the hanging URL is still on its first delivery"
    );

    // The refused URL's deliveries are owed, not lost.
    let owed = eventually("the refused URL to be failing", || async {
        let (all, _) = b.handle.events().deliveries(None, 100, None).await.unwrap();
        let mine: Vec<_> = all.into_iter().filter(|d| d.url == refused).collect();
        (mine.len() == 2 && mine[0].status == DeliveryStatus::Failed).then_some(mine)
    })
    .await;
    // Head of line: the first one carries the error, the second waits behind it and is
    // pending: it was never attempted.
    assert!(owed[0].last_error.is_some(), "{owed:?}");
    assert!(owed[0].next_attempt_at.is_some(), "{owed:?}");
    assert_eq!(owed[1].status, DeliveryStatus::Pending, "{owed:?}");
    assert_eq!(owed[1].attempts, 0, "{owed:?}");
}

#[tokio::test]
async fn an_event_filter_passes_only_matching_types() {
    let mut commands = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut offline = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut all = HookReceiver::start(|_| HookReply::Status(200)).await;
    let b = TestBroker::with_config(config_with(vec![
        webhook(&commands.url, SECRET, Some(&["command.*"])),
        webhook(&offline.url, SECRET, Some(&["device.offline"])),
        webhook(&all.url, SECRET, None),
    ]))
    .await;
    let dev = b.add_device("hook-6", "tok", false).await;

    let mut events = b.handle.events().subscribe();
    let fw = Firmware::connect(&b, "hook-6", "tok").await;
    // Events of different sources are not ordered among themselves: let the online
    // event happen before the command's.
    next_event(&mut events, |e| e.kind == "device.online").await;
    let created = b
        .handle
        .commands()
        .create(&dev, new_command(r#"{"type":"X"}"#), None)
        .await
        .unwrap()
        .record;
    b.handle
        .commands()
        .cancel(&created.command_id)
        .await
        .unwrap();
    // The same for the cancel and the offline event: the command engine and the
    // link record theirs independently.
    next_event(&mut events, |e| e.kind == "command.cancelled").await;
    fw.disconnect().await;

    // Per URL, in order.
    let kinds: Vec<String> = until_kind(&mut all, "device.offline")
        .await
        .iter()
        .map(HookRequest::kind)
        .collect();
    assert_eq!(
        kinds,
        ["device.online", "command.cancelled", "device.offline"]
    );
    assert_eq!(commands.next().await.kind(), "command.cancelled");
    assert_eq!(offline.next().await.kind(), "device.offline");
    let quiet = Duration::from_millis(300);
    assert!(commands.next_within(quiet).await.is_none());
    assert!(offline.next_within(quiet).await.is_none());
}

#[tokio::test]
async fn an_owed_delivery_is_delivered_after_a_restart() {
    let up = Arc::new(AtomicBool::new(false));
    let mut rx = {
        let up = up.clone();
        HookReceiver::start(move |_| {
            HookReply::Status(if up.load(Ordering::SeqCst) { 200 } else { 503 })
        })
        .await
    };
    let config = config_with(vec![webhook(&rx.url, SECRET, Some(&["device.online"]))]);
    let b = TestBroker::with_config(config.clone()).await;
    b.add_device("hook-7", "tok", false).await;
    let mut events = b.handle.events().subscribe();
    let fw = Firmware::connect(&b, "hook-7", "tok").await;
    let online = next_event(&mut events, |e| e.kind == "device.online").await;
    let refused = rx.next().await;
    assert_eq!(refused.json()["id"], online.id.as_str());
    eventually("the delivery to be recorded as failed", || async {
        let (failed, _) = b
            .handle
            .events()
            .deliveries(Some(DeliveryStatus::Failed), 100, None)
            .await
            .unwrap();
        failed
            .iter()
            .any(|d| d.event_id == online.id && d.attempts >= 1)
            .then_some(())
    })
    .await;
    fw.drop_connection().await;

    let dir = b.stop().await;
    up.store(true, Ordering::SeqCst);
    rx.drain();
    let b = TestBroker::with_config_in(config, dir).await;
    let delivered = rx.next().await;
    assert_eq!(delivered.json()["id"], online.id.as_str());
    assert_eq!(
        delivered.body, refused.body,
        "the same event, byte for byte"
    );
    assert!(delivered.signed_with(SECRET));
    eventually("nothing to be owed", || async {
        (b.handle.events().backlog().await == 0).then_some(())
    })
    .await;
}
