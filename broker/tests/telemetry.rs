//! SPEC §6 telemetry end to end: devices publish on `device/{id}/telemetry` over real MQTT
//! connections; points are read back newest first, by key, and as latest values.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::telemetry::{TelemetryPage, TelemetryQuery};
use fleetmq_device_plugins::rfc3339::format_utc_ms;
use fleetmq_storage::{now_ms, DeviceId};
use serde_json::json;

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

/// Flushes until `device` has `n` points stored (the link hands telemetry to the store
/// asynchronously, so one flush may come before the points were offered).
async fn stored(b: &TestBroker, device: &str, n: u64) {
    let device = id(device);
    eventually(&format!("{n} telemetry points of {device}"), || async {
        b.handle.telemetry().flush().await;
        let count = b.handle.telemetry().count(&device).await.expect("count");
        assert!(count <= n, "more points than published: {count}");
        (count == n).then_some(())
    })
    .await;
}

async fn query(b: &TestBroker, device: &str, q: TelemetryQuery) -> TelemetryPage {
    b.handle
        .telemetry()
        .query(&id(device), q)
        .await
        .expect("query")
}

fn keys(k: &[&str]) -> Option<Vec<String>> {
    Some(k.iter().map(|s| (*s).to_owned()).collect())
}

#[tokio::test]
async fn points_are_stored_and_read_newest_first_with_key_filters_and_latest() {
    let b = TestBroker::start().await;
    b.add_device("tel-1", "tok", false).await;
    let fw = Firmware::connect(&b, "tel-1", "tok").await;

    let now = now_ms();
    let minute_ago = now - 60_000;
    let half_minute_ago = now - 30_000;
    let rfc = format_utc_ms(half_minute_ago as i64).expect("format");
    // No `ts`: stamped when received.
    fw.publish("telemetry", br#"{"cpu":40,"memory":512,"uptime":3600}"#)
        .await;
    // `ts` as unix ms.
    fw.publish(
        "telemetry",
        json!({"cpu": 41, "ts": minute_ago}).to_string().as_bytes(),
    )
    .await;
    // `ts` as RFC 3339, with a nested object.
    fw.publish(
        "telemetry",
        json!({"cpu": 42, "temp": 20.5, "gps": {"lat": 1.5}, "ts": rfc})
            .to_string()
            .as_bytes(),
    )
    .await;
    stored(&b, "tel-1", 3).await;

    let page = query(&b, "tel-1", TelemetryQuery::default()).await;
    assert_eq!(page.items.len(), 3, "{page:?}");
    assert!(page.next_cursor.is_none());
    let ts: Vec<u64> = page.items.iter().map(|p| p.ts_ms).collect();
    assert!(ts[0] >= now, "the point without ts has the receive time");
    assert_eq!(&ts[1..], [half_minute_ago, minute_ago], "newest first");
    let values = |i: usize| serde_json::Value::Object(page.items[i].values.clone());
    assert_eq!(values(0), json!({"cpu":40,"memory":512,"uptime":3600}));
    assert_eq!(values(1), json!({"cpu":42,"temp":20.5,"gps":{"lat":1.5}}));
    assert_eq!(values(2), json!({"cpu":41}), "`ts` is not a value");
    assert_eq!(page.items[1].ts, rfc);
    assert_eq!(page.items[2].ts, format_utc_ms(minute_ago as i64).unwrap());

    // Only points carrying a wanted key, with only those keys.
    let temp = query(
        &b,
        "tel-1",
        TelemetryQuery {
            keys: keys(&["temp"]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(temp.items.len(), 1);
    assert_eq!(
        serde_json::Value::Object(temp.items[0].values.clone()),
        json!({"temp": 20.5})
    );
    let cpu = query(
        &b,
        "tel-1",
        TelemetryQuery {
            keys: keys(&["cpu", "nope"]),
            ..Default::default()
        },
    )
    .await;
    let cpus: Vec<_> = cpu.items.iter().map(|p| p.values["cpu"].clone()).collect();
    assert_eq!(cpus, [json!(40), json!(42), json!(41)]);
    assert!(cpu.items.iter().all(|p| p.values.len() == 1));

    // Time range and paging.
    let recent = query(
        &b,
        "tel-1",
        TelemetryQuery {
            from_ms: Some(now - 45_000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(recent.items.len(), 2);
    let old = query(
        &b,
        "tel-1",
        TelemetryQuery {
            to_ms: Some(now - 45_000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(old.items.len(), 1);
    assert_eq!(old.items[0].ts_ms, minute_ago);
    let first = query(
        &b,
        "tel-1",
        TelemetryQuery {
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.items.len(), 2);
    let cursor = first.next_cursor.clone().expect("a next page");
    let second = query(
        &b,
        "tel-1",
        TelemetryQuery {
            limit: 2,
            cursor: Some(cursor),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].ts_ms, minute_ago);
    assert!(second.next_cursor.is_none());

    // The latest value of every key, by timestamp.
    let latest = b
        .handle
        .telemetry()
        .latest(&id("tel-1"))
        .await
        .expect("latest");
    let names: Vec<&str> = latest.keys().map(String::as_str).collect();
    assert_eq!(names, ["cpu", "gps", "memory", "temp", "uptime"]);
    assert_eq!(latest["cpu"].value, json!(40));
    assert_eq!(latest["cpu"].ts_ms, ts[0]);
    assert_eq!(latest["temp"].value, json!(20.5));
    assert_eq!(latest["temp"].ts_ms, half_minute_ago);
    assert_eq!(latest["temp"].ts, rfc);
    assert_eq!(latest["gps"].value, json!({"lat": 1.5}));

    // Another device's telemetry is its own.
    let other = query(&b, "tel-2", TelemetryQuery::default()).await;
    assert!(other.items.is_empty());
    fw.disconnect().await;
}

#[tokio::test]
async fn non_json_telemetry_raises_bad_payload_and_is_not_stored() {
    let b = TestBroker::start().await;
    b.add_device("tel-3", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    let fw = Firmware::connect(&b, "tel-3", "tok").await;
    let rejected_before = b.handle.telemetry().stats().rejected;

    fw.publish("telemetry", b"cpu=40").await;
    let e = next_event(&mut rx, |e| e.kind == "device.bad_payload").await;
    assert_eq!(e.device_id.as_deref(), Some("tel-3"));
    assert_eq!(e.data_value()["topic"], "device/tel-3/telemetry");
    assert!(e.data_value()["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    // Valid JSON that is not an object is refused too.
    fw.publish("telemetry", b"[1,2,3]").await;
    next_event(&mut rx, |e| e.kind == "device.bad_payload").await;

    fw.publish("telemetry", br#"{"ok":1}"#).await;
    stored(&b, "tel-3", 1).await;
    let page = query(&b, "tel-3", TelemetryQuery::default()).await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(
        serde_json::Value::Object(page.items[0].values.clone()),
        json!({"ok": 1})
    );
    assert_eq!(b.handle.telemetry().stats().rejected, rejected_before + 2);
    // The connection stays up after bad payloads.
    assert!(b.handle.is_device_online(&id("tel-3")));
    let rest = events_within(&mut rx, Duration::from_millis(200)).await;
    assert!(
        rest.iter().all(|e| e.kind != "device.bad_payload"),
        "{rest:?}"
    );
    fw.disconnect().await;
}

#[tokio::test]
async fn telemetry_of_an_encrypted_device_is_stored_as_plaintext() {
    let b = TestBroker::start().await;
    let dev = b.add_device("tel-4", "tok", true).await;
    let key = dev.current_key().expect("key");
    let opts = FirmwareOptions {
        key: Some((key.generation, key.key)),
        ..Default::default()
    };
    let fw = Firmware::connect_with(&b, "tel-4", "tok", opts).await;
    fw.publish("telemetry", br#"{"battery":87}"#).await;
    stored(&b, "tel-4", 1).await;
    let latest = b
        .handle
        .telemetry()
        .latest(&id("tel-4"))
        .await
        .expect("latest");
    assert_eq!(latest["battery"].value, json!(87));
    fw.disconnect().await;
}

#[tokio::test]
async fn points_survive_a_restart_and_retention_keeps_the_newest() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.fleet.telemetry.max_points_per_device = 5;
    config.fleet.telemetry.sweep_every = Duration::from_secs(3600);
    let b = TestBroker::with_config(config.clone()).await;
    b.add_device("tel-5", "tok", false).await;
    let fw = Firmware::connect(&b, "tel-5", "tok").await;
    let base = now_ms() - 10_000;
    for i in 0..8u64 {
        fw.publish(
            "telemetry",
            json!({"n": i, "ts": base + i}).to_string().as_bytes(),
        )
        .await;
    }
    stored(&b, "tel-5", 8).await;
    fw.disconnect().await;

    let dir = b.stop().await;
    let b = TestBroker::with_config_in(config, dir).await;
    // The sweeper also runs once at start; either way, sweeping now leaves 5.
    b.handle.telemetry().sweep_now().await.expect("sweep");
    let page = query(&b, "tel-5", TelemetryQuery::default()).await;
    let ns: Vec<_> = page.items.iter().map(|p| p.values["n"].clone()).collect();
    assert_eq!(ns, [json!(7), json!(6), json!(5), json!(4), json!(3)]);
    let latest = b
        .handle
        .telemetry()
        .latest(&id("tel-5"))
        .await
        .expect("latest");
    assert_eq!(latest["n"].value, json!(7));
}

/// `telemetry.store = false`: telemetry still reaches its subscribers and is still
/// checked (a refused payload raises `device.bad_payload`), but nothing is stored.
#[tokio::test]
async fn with_storage_off_telemetry_is_routed_and_checked_but_not_stored() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.fleet.telemetry.store = false;
    let b = TestBroker::with_config(config).await;
    b.add_device("tel-6", "tok", false).await;
    b.add_service("collector", "pw", allow_all()).await;
    let (sub, mut el) = connect_v4(&b, Via::Tcp, "collector", Some(("collector", "pw")))
        .await
        .expect("collector connects");
    subscribe_v4(
        &sub,
        &mut el,
        "device/+/telemetry",
        rumqttc::QoS::AtLeastOnce,
    )
    .await;
    let mut rx = b.handle.events().subscribe();
    let fw = Firmware::connect(&b, "tel-6", "tok").await;

    fw.publish("telemetry", br#"{"cpu":40}"#).await;
    fw.publish("telemetry", b"cpu=41").await;
    let got = publishes_v4(&mut el, Duration::from_millis(500)).await;
    assert_eq!(
        got,
        vec![
            (
                "device/tel-6/telemetry".to_owned(),
                br#"{"cpu":40}"#.to_vec()
            ),
            ("device/tel-6/telemetry".to_owned(), b"cpu=41".to_vec()),
        ]
    );
    let e = next_event(&mut rx, |e| e.kind == "device.bad_payload").await;
    assert_eq!(e.data_value()["topic"], "device/tel-6/telemetry");

    b.handle.telemetry().flush().await;
    let s = b.handle.telemetry().stats();
    assert_eq!((s.not_stored, s.rejected, s.stored), (1, 1, 0));
    assert_eq!(
        query(&b, "tel-6", TelemetryQuery::default()).await.items,
        vec![]
    );
    fw.disconnect().await;
}

/// SPEC §6: a QoS 1/2 telemetry message is acknowledged only once its point is stored.
/// Batches otherwise wait an hour and the queue holds 8 points, so before this rule the
/// acknowledged points sat unwritten or were dropped; QoS 0 is still dropped (counted).
async fn acknowledged_telemetry_is_stored(via: conf::Via, ver: conf::Ver) {
    use conf::{Conn, In, Target};
    let t = Target::with(|c| {
        c.fleet.telemetry.batch_delay = Duration::from_secs(3_600);
        c.fleet.telemetry.queue = 8;
    })
    .await;
    let b = t.broker.as_ref().expect("fleetmq");
    b.add_device("tel-ack", "tok", false).await;
    let mut c = t.open(via, ver).await;
    let mut conn = Conn::new("tel-ack");
    conn.login = Some(("tel-ack".into(), "tok".into()));
    assert_eq!(c.connect(conn).await.code, 0);
    let topic = "device/tel-ack/telemetry";
    for i in 0..200 {
        c.publish(topic, format!(r#"{{"q0":{i}}}"#).as_bytes(), 0, false)
            .await;
    }
    // Pipelined, as a device with a send window does; every ack in order [MQTT-4.6.0-2].
    let mut sent = Vec::new();
    for i in 0..100 {
        let q = if i % 10 == 9 { 2 } else { 1 };
        let payload = format!(r#"{{"n":{i}}}"#);
        sent.push((c.publish(topic, payload.as_bytes(), q, false).await, q));
    }
    let mut acked = Vec::new();
    while acked.len() < sent.len() {
        match c.recv().await.expect("an ack") {
            In::PubAck { pkid, reason } | In::PubRec { pkid, reason } => {
                assert_eq!(reason, 0);
                acked.push(pkid);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let with_qos = |q: u8| -> Vec<u16> {
        (sent.iter())
            .filter(|(_, qos)| *qos == q)
            .map(|(pkid, _)| *pkid)
            .collect()
    };
    let acked_of =
        |ids: &[u16]| -> Vec<u16> { acked.iter().copied().filter(|p| ids.contains(p)).collect() };
    let (qos1, qos2) = (with_qos(1), with_qos(2));
    assert_eq!(acked_of(&qos1), qos1, "PUBACKs in order");
    assert_eq!(acked_of(&qos2), qos2, "PUBRECs in order");
    // No flush: what was acknowledged is already in the store.
    let page = query(
        b,
        "tel-ack",
        TelemetryQuery {
            keys: keys(&["n"]),
            limit: 1_000,
            ..TelemetryQuery::default()
        },
    )
    .await;
    let mut got: Vec<u64> = (page.items.iter())
        .filter_map(|p| p.values.get("n").and_then(|v| v.as_u64()))
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..100).collect::<Vec<u64>>());
    b.handle.telemetry().flush().await;
    let s = b.handle.telemetry().stats();
    assert!(
        s.dropped_queue_full > 0,
        "QoS 0 may still be dropped: {s:?}"
    );
    assert_eq!(s.dropped_queue_full + s.stored, 300, "{s:?}");
}
crate::matrix!(
    acknowledged_qos1_and_qos2_telemetry_is_already_stored,
    acknowledged_telemetry_is_stored
);
