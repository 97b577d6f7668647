//! SPEC §7 end to end: `device.event` for what devices publish on `device/{id}/events`
//! (to webhooks and the live stream, stored across restarts, pruned by retention), and the
//! batched `telemetry` event, against real MQTT devices and real HTTP receivers.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use fleetmq_broker::fleet::device_events::EventsQuery;
use fleetmq_broker::BrokerConfig;
use fleetmq_storage::{now_ms, DeviceId};
use serde_json::{json, Value};

const SECRET: &str = "webhook-secret-2";

fn config_with(hooks: Vec<fleetmq_broker::config::WebhookConfig>) -> BrokerConfig {
    let mut config = BrokerConfig::for_tests();
    config.fleet.webhooks = hooks;
    config
}

fn id(s: &str) -> DeviceId {
    s.parse().unwrap()
}

/// Waits until `device` has `n` events stored; returns them, newest first.
async fn stored(b: &TestBroker, device: &str, n: usize) -> Vec<Value> {
    eventually("the events to be stored", || async {
        let page = b
            .handle
            .device_events()
            .query(&id(device), EventsQuery::default())
            .await
            .unwrap();
        let items = serde_json::to_value(&page).unwrap()["items"].clone();
        let items = items.as_array().unwrap().clone();
        (items.len() == n).then_some(items)
    })
    .await
}

/// Requests of type `kind` received within `d`.
async fn of_kind_within(rx: &mut HookReceiver, kind: &str, d: Duration) -> Vec<HookRequest> {
    let deadline = tokio::time::Instant::now() + d;
    let mut got = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.next_within(d)).await {
        if r.kind() == kind {
            got.push(r);
        }
    }
    got
}

#[tokio::test]
async fn device_events_reach_webhooks_and_the_live_stream_with_the_payload() {
    let mut events_hook = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut alarms_hook = HookReceiver::start(|_| HookReply::Status(200)).await;
    let b = TestBroker::with_config(config_with(vec![
        webhook(&events_hook.url, SECRET, Some(&["device.event"])),
        webhook(&alarms_hook.url, SECRET, Some(&["alarm.*"])),
    ]))
    .await;
    b.add_device("ev-1", "tok", false).await;
    let mut live = b.handle.events().subscribe();
    let fw = Firmware::connect(&b, "ev-1", "tok").await;
    let door = json!({"type": "door_open", "door": 2, "nested": {"a": [1, null]}});
    let alarm = json!({"type": "alarm.raised", "code": 7});
    fw.publish("events", door.to_string().as_bytes()).await;
    fw.publish("events", b"not json").await;
    fw.publish("events", alarm.to_string().as_bytes()).await;

    for want in [&door, &alarm] {
        let got = events_hook.next().await;
        assert!(got.signed_with(SECRET));
        let body = got.json();
        assert_eq!(body["type"], "device.event");
        assert_eq!(body["device_id"], "ev-1");
        assert_eq!(&body["data"], want);
        let streamed = next_event(&mut live, |e| e.kind == "device.event").await;
        assert_eq!(&streamed.data_value(), want);
        assert_eq!(streamed.id, body["id"].as_str().unwrap());
    }
    // Alarms are alarms (SPEC §11) and raise alarm events, to those who want them.
    let raised = alarms_hook.next().await;
    assert_eq!(raised.kind(), "alarm.raised");
    let data = raised.json()["data"].clone();
    assert_eq!(data["value"], alarm);
    assert_eq!(data["source"], "device");
    assert_eq!(data["name"], "7");
    assert!(alarms_hook
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    assert!(events_hook
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(b.handle.device_events().stats().refused, 1);
    stored(&b, "ev-1", 2).await;
}

#[tokio::test]
async fn device_events_survive_a_restart() {
    let config = BrokerConfig::for_tests();
    let b = TestBroker::with_config(config.clone()).await;
    b.add_device("ev-2", "tok", false).await;
    let fw = Firmware::connect(&b, "ev-2", "tok").await;
    for n in 0..3 {
        let payload = json!({"type": "tick", "n": n}).to_string();
        fw.publish("events", payload.as_bytes()).await;
    }
    stored(&b, "ev-2", 3).await;
    drop(fw);
    let dir = b.stop().await;

    let b = TestBroker::with_config_in(config, dir).await;
    let items = stored(&b, "ev-2", 3).await;
    let ns: Vec<&Value> = items.iter().map(|e| &e["data"]["n"]).collect();
    assert_eq!(ns, [2, 1, 0]);
    assert_eq!(items[0]["type"], "tick");
}

#[tokio::test]
async fn device_events_are_pruned_by_age_and_count() {
    let mut config = BrokerConfig::for_tests();
    config.fleet.telemetry.retention = Duration::from_millis(400);
    config.fleet.telemetry.max_points_per_device = 3;
    config.fleet.telemetry.sweep_every = Duration::from_secs(3_600);
    let b = TestBroker::with_config(config).await;
    b.add_device("ev-3", "tok", false).await;
    let fw = Firmware::connect(&b, "ev-3", "tok").await;
    for n in 0..5 {
        let payload = json!({"type": "tick", "n": n}).to_string();
        fw.publish("events", payload.as_bytes()).await;
    }
    stored(&b, "ev-3", 5).await;
    let events = b.handle.device_events();
    assert_eq!(events.sweep_now().await.unwrap(), 2, "the cap keeps 3");
    let kept = stored(&b, "ev-3", 3).await;
    let ns: Vec<&Value> = kept.iter().map(|e| &e["data"]["n"]).collect();
    assert_eq!(ns, [4, 3, 2]);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        events.sweep_now().await.unwrap(),
        3,
        "all older than the retention"
    );
    assert_eq!(events.count(&id("ev-3")).await.unwrap(), 0);
}

/// Publishes telemetry points `(ts_ms, values)` at QoS 1 and waits until they are stored.
async fn publish_points(b: &TestBroker, fw: &Firmware, points: &[(u64, Value)]) {
    let before = b.handle.telemetry().count(&id(&fw.id)).await.unwrap();
    for (ts, values) in points {
        let mut object = values.clone();
        object["ts"] = json!(ts);
        fw.publish("telemetry", object.to_string().as_bytes()).await;
    }
    let want = before + points.len() as u64;
    eventually("the points to be stored", || async {
        (b.handle.telemetry().count(&id(&fw.id)).await.unwrap() == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn telemetry_events_go_only_to_webhooks_that_name_them_batched_per_device() {
    let mut named = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut every = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut prefix = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut config = config_with(vec![
        webhook(&named.url, SECRET, Some(&["telemetry", "device.online"])),
        webhook(&every.url, SECRET, None),
        webhook(&prefix.url, SECRET, Some(&["*"])),
    ]);
    // The timer never fires here: events go out when the test says, so the points of
    // one `publish_points` always make one event.
    config.fleet.telemetry.webhook_interval = Duration::from_secs(3_600);
    let b = TestBroker::with_config(config).await;
    b.add_device("tl-1", "tok", false).await;
    b.add_device("tl-2", "tok", false).await;
    let fw1 = Firmware::connect(&b, "tl-1", "tok").await;
    let fw2 = Firmware::connect(&b, "tl-2", "tok").await;
    let t0 = now_ms() - 10_000;
    // Out of order, with a second shape: latest takes each key's newest value.
    publish_points(
        &b,
        &fw1,
        &[
            (t0 + 1_000, json!({"temp": 1, "hum": 40})),
            (t0 + 3_000, json!({"temp": 3, "hum": 50})),
            (t0 + 2_000, json!({"temp": 2, "volt": 12.5})),
        ],
    )
    .await;
    publish_points(&b, &fw2, &[(t0, json!({"lat": 1.5, "lon": 2.5}))]).await;
    b.handle.telemetry().send_webhook_events_now().await;

    let got = of_kind_within(&mut named, "telemetry", Duration::from_millis(500)).await;
    let by_device = |d: &str| -> Vec<Value> {
        (got.iter())
            .map(HookRequest::json)
            .filter(|e| e["device_id"] == d)
            .collect()
    };
    let one = by_device("tl-1");
    assert_eq!(one.len(), 1, "one event for the three points: {one:?}");
    assert!(got[0].signed_with(SECRET));
    assert_eq!(
        one[0]["data"],
        json!({
            "record_count": 3,
            "first_ts": fleetmq_broker::fleet::rfc3339_ms(t0 + 1_000),
            "latest_ts": fleetmq_broker::fleet::rfc3339_ms(t0 + 3_000),
            "latest": {"temp": 3, "hum": 50, "volt": 12.5},
        })
    );
    let two = by_device("tl-2");
    assert_eq!(two.len(), 1);
    assert_eq!(two[0]["data"]["record_count"], 1);
    assert_eq!(two[0]["data"]["latest"], json!({"lat": 1.5, "lon": 2.5}));
    // Nothing new, nothing sent; then only what is new.
    b.handle.telemetry().send_webhook_events_now().await;
    assert!(
        of_kind_within(&mut named, "telemetry", Duration::from_millis(300))
            .await
            .is_empty()
    );
    publish_points(&b, &fw1, &[(t0 + 500, json!({"temp": 0}))]).await;
    b.handle.telemetry().send_webhook_events_now().await;
    let next = named.next().await.json();
    assert_eq!(next["device_id"], "tl-1");
    assert_eq!(next["data"]["record_count"], 1);
    assert_eq!(next["data"]["latest"], json!({"temp": 0}));
    // Filters that do not name `telemetry` get none, though they take every other event.
    for hook in [&mut every, &mut prefix] {
        let kinds: Vec<String> = hook.drain().iter().map(HookRequest::kind).collect();
        assert!(kinds.contains(&"device.online".to_owned()), "{kinds:?}");
        assert!(!kinds.contains(&"telemetry".to_owned()), "{kinds:?}");
    }
}

#[tokio::test]
async fn telemetry_events_coalesce_to_one_per_device_per_interval() {
    let mut hook = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut config = config_with(vec![webhook(&hook.url, SECRET, Some(&["telemetry"]))]);
    let interval = Duration::from_millis(250);
    config.fleet.telemetry.webhook_interval = interval;
    let b = TestBroker::with_config(config).await;
    b.add_device("tl-3", "tok", false).await;
    let fw = Firmware::connect(&b, "tl-3", "tok").await;
    let start = Instant::now();
    let t0 = now_ms() - 100_000;
    let mut published = 0u64;
    // About a second of points in small batches: a few events, never one per point.
    while start.elapsed() < Duration::from_millis(1_000) {
        let batch: Vec<(u64, Value)> = (0..20)
            .map(|i| (t0 + published + i, json!({"n": published + i})))
            .collect();
        publish_points(&b, &fw, &batch).await;
        published += 20;
    }
    let mut events = Vec::new();
    let mut counted = 0;
    while counted < published {
        let r = hook.next().await;
        let body = r.json();
        assert_eq!(body["type"], "telemetry");
        counted += body["data"]["record_count"].as_u64().unwrap();
        // The id starts with the unix ms the event was emitted at.
        let emitted = u64::from_str_radix(&body["id"].as_str().unwrap()[..16], 16).unwrap();
        events.push((emitted, body));
    }
    assert_eq!(counted, published, "every point counted once");
    assert!(
        events.len() < published as usize / 10,
        "{} events for {published} points",
        events.len()
    );
    for pair in events.windows(2) {
        let gap = Duration::from_millis(pair[1].0 - pair[0].0);
        // The flushes are an interval apart; emitting one may take a little.
        assert!(gap >= interval / 2, "events {gap:?} apart");
    }
    let last = &events.last().unwrap().1["data"];
    assert_eq!(last["latest"], json!({"n": published - 1}));
    assert_eq!(
        last["latest_ts"],
        fleetmq_broker::fleet::rfc3339_ms(t0 + published - 1)
    );
}

#[tokio::test]
async fn telemetry_webhook_true_sends_it_to_every_webhook() {
    let mut hook = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut config = config_with(vec![webhook(&hook.url, SECRET, None)]);
    config.fleet.telemetry.webhook = true;
    config.fleet.telemetry.webhook_interval = Duration::from_millis(100);
    let b = TestBroker::with_config(config).await;
    b.add_device("tl-4", "tok", false).await;
    let fw = Firmware::connect(&b, "tl-4", "tok").await;
    publish_points(&b, &fw, &[(now_ms(), json!({"x": 1}))]).await;
    let got = of_kind_within(&mut hook, "telemetry", Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["data"]["latest"], json!({"x": 1}));
}

/// A webhook endpoint created at runtime that names `telemetry` gets telemetry events:
/// whether some webhook wants them is asked per committed batch, not at start.
#[tokio::test]
async fn a_runtime_endpoint_naming_telemetry_gets_telemetry_events() {
    let mut rx = HookReceiver::start(|_| HookReply::Status(200)).await;
    let mut config = config_with(vec![]);
    config.fleet.telemetry.webhook_interval = Duration::from_secs(3_600);
    let b = TestBroker::with_config(config).await;
    b.add_device("tl-rt", "tok", false).await;
    let fw = Firmware::connect(&b, "tl-rt", "tok").await;
    let t0 = now_ms() - 10_000;
    // No webhook wants telemetry yet: nothing is gathered for one.
    publish_points(&b, &fw, &[(t0, json!({"temp": 1}))]).await;
    let endpoint = fleetmq_broker::fleet::webhooks::NewEndpoint {
        url: rx.url.clone(),
        secret: SECRET.to_owned(),
        events: Some(vec!["telemetry".to_owned()]),
        enabled: true,
    };
    b.handle.events().create_endpoint(endpoint).await.unwrap();
    publish_points(&b, &fw, &[(t0 + 1_000, json!({"temp": 2}))]).await;
    b.handle.telemetry().send_webhook_events_now().await;
    let got = of_kind_within(&mut rx, "telemetry", Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let event = got[0].json();
    assert_eq!(event["device_id"], "tl-rt");
    assert_eq!(event["data"]["record_count"], 1, "only what came after it");
    assert_eq!(event["data"]["latest"], json!({"temp": 2}));
}
