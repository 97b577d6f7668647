//! SPEC §6 presence and reported status end to end: real device connections (TCP and
//! WebSocket, MQTT 3.1.1 and 5), the live event stream, and the stored device state.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::events::FleetEvent;
use fleetmq_broker::Transport;
use fleetmq_storage::{DeviceId, DeviceState};
use rumqttc::{Packet, QoS};
use serde_json::json;
use tokio::sync::broadcast;

/// How long to watch for an event that must not come.
const QUIET: Duration = Duration::from_millis(400);

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

/// The `device.online` / `device.offline` events of `device` among `events`.
fn transitions(events: &[FleetEvent], device: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.device_id.as_deref() == Some(device))
        .filter(|e| e.kind == "device.online" || e.kind == "device.offline")
        .map(|e| e.kind.clone())
        .collect()
}

/// Waits for the next online/offline event of `device` and returns it.
async fn transition(rx: &mut broadcast::Receiver<FleetEvent>, device: &str) -> FleetEvent {
    next_event(rx, |e| {
        e.device_id.as_deref() == Some(device)
            && (e.kind == "device.online" || e.kind == "device.offline")
    })
    .await
}

async fn state(b: &TestBroker, device: &str) -> DeviceState {
    let device = id(device);
    b.store
        .call(move |s| s.device_state(&device))
        .await
        .expect("device state")
}

#[tokio::test]
async fn connect_and_disconnect_emit_one_event_each() {
    let b = TestBroker::start().await;
    b.add_device("pres-1", "tok", false).await;
    let mut rx = b.handle.events().subscribe();

    let fw = Firmware::connect(&b, "pres-1", "tok").await;
    let online = transition(&mut rx, "pres-1").await;
    assert_eq!(online.kind, "device.online");
    assert_eq!(online.data_value()["ip"], "127.0.0.1");
    assert_eq!(online.data_value()["protocol"], "3.1.1");
    assert_eq!(online.data_value()["transport"], "tcp");
    assert!(b.handle.is_device_online(&id("pres-1")));
    let live = b
        .handle
        .services()
        .presence()
        .get(&id("pres-1"))
        .expect("present");
    assert_eq!(live.ip, "127.0.0.1");
    assert_eq!(live.protocol, "3.1.1");
    assert_eq!(live.transport, Transport::Tcp);
    assert_eq!(json!(live.generation), online.data_value()["generation"]);

    // A clean DISCONNECT.
    fw.disconnect().await;
    let offline = transition(&mut rx, "pres-1").await;
    assert_eq!(offline.kind, "device.offline");
    assert!(b.handle.services().presence().get(&id("pres-1")).is_none());
    assert!(!b.handle.is_device_online(&id("pres-1")));

    // A dropped socket (no DISCONNECT) counts the same.
    let fw = Firmware::connect(&b, "pres-1", "tok").await;
    assert_eq!(transition(&mut rx, "pres-1").await.kind, "device.online");
    fw.drop_connection().await;
    assert_eq!(transition(&mut rx, "pres-1").await.kind, "device.offline");

    let rest = events_within(&mut rx, QUIET).await;
    assert!(
        transitions(&rest, "pres-1").is_empty(),
        "one event per transition: {rest:?}"
    );
    let s = state(&b, "pres-1").await;
    assert!(
        s.connected_at_ms.is_some() && s.disconnected_at_ms.is_some() && s.last_seen_ms.is_some()
    );
    assert!(s.disconnected_at_ms >= s.connected_at_ms, "{s:?}");
}

#[tokio::test]
async fn a_takeover_is_not_a_transition() {
    let b = TestBroker::start().await;
    b.add_device("pres-2", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    let presence = || b.handle.services().presence().get(&id("pres-2"));

    let first = Firmware::connect(&b, "pres-2", "tok").await;
    let online = transition(&mut rx, "pres-2").await;
    assert_eq!(online.kind, "device.online");
    let g1 = presence().expect("online").generation;

    let second = Firmware::connect(&b, "pres-2", "tok").await;
    first.closed_by_broker().await;
    let g2 = eventually("the new connection to be current", || async {
        presence().map(|l| l.generation).filter(|g| *g != g1)
    })
    .await;
    assert!(g2 > g1);
    let during = events_within(&mut rx, QUIET).await;
    assert!(
        transitions(&during, "pres-2").is_empty(),
        "no offline/online for a takeover: {during:?}"
    );
    assert!(b.handle.is_device_online(&id("pres-2")));
    assert_eq!(state(&b, "pres-2").await.generation, g2);

    second.disconnect().await;
    assert_eq!(transition(&mut rx, "pres-2").await.kind, "device.offline");
    let after = events_within(&mut rx, QUIET).await;
    assert!(transitions(&after, "pres-2").is_empty(), "{after:?}");
    assert!(presence().is_none());
}

#[tokio::test]
async fn fast_reconnects_and_takeovers_keep_events_alternating() {
    let b = TestBroker::start().await;
    b.add_device("pres-3", "tok", false).await;
    let mut rx = b.handle.events().subscribe();

    let mut current = Firmware::connect(&b, "pres-3", "tok").await;
    for round in 0..12 {
        current = match round % 3 {
            // Lost socket, then at once a new connection.
            0 => {
                current.drop_connection().await;
                Firmware::connect(&b, "pres-3", "tok").await
            }
            // Clean disconnect, then at once a new connection.
            1 => {
                current.disconnect().await;
                Firmware::connect(&b, "pres-3", "tok").await
            }
            // A new connection while the old one is still up (takeover).
            _ => {
                let next = Firmware::connect(&b, "pres-3", "tok").await;
                current.closed_by_broker().await;
                next
            }
        };
    }
    // Settle: the device is connected now.
    eventually("the device to be online", || async {
        b.handle
            .services()
            .presence()
            .get(&id("pres-3"))
            .map(|_| ())
    })
    .await;
    let mut seen = events_within(&mut rx, QUIET).await;
    current.disconnect().await;
    seen.push(transition(&mut rx, "pres-3").await);
    seen.extend(events_within(&mut rx, QUIET).await);

    let kinds = transitions(&seen, "pres-3");
    assert!(kinds.len() >= 2, "{kinds:?}");
    for (i, k) in kinds.iter().enumerate() {
        let want = if i % 2 == 0 {
            "device.online"
        } else {
            "device.offline"
        };
        assert_eq!(k, want, "events alternate, one per transition: {kinds:?}");
    }
    assert_eq!(kinds.last().map(String::as_str), Some("device.offline"));
    assert!(b.handle.services().presence().get(&id("pres-3")).is_none());
    assert!(!b.handle.is_device_online(&id("pres-3")));
}

#[tokio::test]
async fn presence_shows_protocol_and_transport_of_an_mqtt5_websocket_device() {
    let b = TestBroker::start().await;
    b.add_device("pres-4", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    let (client, el) = connect_v5(&b, Via::Ws, "pres-4", Some(("pres-4", "tok")))
        .await
        .expect("connect");
    let driver = drive_v5(el);
    let online = transition(&mut rx, "pres-4").await;
    assert_eq!(online.kind, "device.online");
    assert_eq!(online.data_value()["protocol"], "5");
    assert_eq!(online.data_value()["transport"], "ws");
    let live = b
        .handle
        .services()
        .presence()
        .get(&id("pres-4"))
        .expect("present");
    assert_eq!((live.protocol, live.transport), ("5", Transport::Ws));
    assert_eq!(live.ip, "127.0.0.1");
    let s = state(&b, "pres-4").await;
    assert_eq!(s.protocol.as_deref(), Some("5"));
    assert_eq!(s.transport.as_deref(), Some("ws"));
    assert_eq!(s.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(s.generation, live.generation);

    client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(WAIT, driver).await;
    assert_eq!(transition(&mut rx, "pres-4").await.kind, "device.offline");
}

#[tokio::test]
async fn reported_status_and_config_version_are_kept() {
    let b = TestBroker::start().await;
    b.add_device("pres-5", "tok", false).await;
    let dev = id("pres-5");
    let v1 = b
        .handle
        .set_device_config(&dev, json!({"brightness": 50}))
        .await
        .expect("config v1");
    assert_eq!((v1.version, v1.reported_version), (1, None));
    let v2 = b
        .handle
        .set_device_config(&dev, json!({"brightness": 70, "tz": "UTC"}))
        .await
        .expect("config v2");
    assert_eq!(v2.version, 2);

    let (client, mut el) = connect_v4(&b, Via::Tcp, "pres-5", Some(("pres-5", "tok")))
        .await
        .expect("connect");
    assert_eq!(
        subscribe_v4(&client, &mut el, "device/pres-5/config", QoS::AtLeastOnce).await,
        [1]
    );
    let (payload, retained) = next_v4(&mut el, |p| match p {
        Packet::Publish(p) if p.topic == "device/pres-5/config" => {
            Some((p.payload.to_vec(), p.retain))
        }
        _ => None,
    })
    .await;
    let config: serde_json::Value = serde_json::from_slice(&payload).expect("config JSON");
    assert_eq!(
        config,
        json!({"version": 2, "config": {"brightness": 70, "tz": "UTC"}})
    );
    assert!(retained, "the config is retained");
    let driver = drive_v4(el);

    let status = r#"{"state":"online","version":"1.0","configVersion":2}"#;
    client
        .publish("device/pres-5/status", QoS::AtLeastOnce, true, status)
        .await
        .expect("publish status");
    let s = eventually("the reported status to be stored", || async {
        let s = state(&b, "pres-5").await;
        s.reported_status.is_some().then_some(s)
    })
    .await;
    let reported: serde_json::Value =
        serde_json::from_str(s.reported_status.as_deref().unwrap()).expect("stored JSON");
    assert_eq!(
        reported,
        json!({"state":"online","version":"1.0","configVersion":2})
    );
    assert_eq!(s.reported_config_version, Some(2));
    assert!(s.reported_status_at_ms.is_some());
    assert_eq!(s.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(s.protocol.as_deref(), Some("3.1.1"));
    assert_eq!(s.transport.as_deref(), Some("tcp"));
    assert!(s.connected_at_ms.is_some() && s.last_seen_ms >= s.connected_at_ms);

    let view = b
        .handle
        .device_config(&dev)
        .await
        .expect("config")
        .expect("a config is set");
    assert_eq!(view.version, 2);
    assert_eq!(view.reported_version, Some(2));
    assert_eq!(view.config, json!({"brightness": 70, "tz": "UTC"}));

    // A later status without configVersion keeps the last reported version.
    client
        .publish(
            "device/pres-5/status",
            QoS::AtLeastOnce,
            true,
            r#"{"state":"busy"}"#,
        )
        .await
        .expect("publish status");
    let s = eventually("the second status", || async {
        let s = state(&b, "pres-5").await;
        s.reported_status
            .as_deref()
            .is_some_and(|r| r.contains("busy"))
            .then_some(s)
    })
    .await;
    assert_eq!(s.reported_config_version, Some(2));

    client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(WAIT, driver).await;
    eventually("the disconnect to be stored", || async {
        state(&b, "pres-5").await.disconnected_at_ms.map(|_| ())
    })
    .await;
}

/// Connects a device whose last will is a retained `{"state":"offline"}` status, publishes
/// a retained online status, and drops the socket so the will fires. Returns once a
/// service client saw the will.
async fn device_dies_with_a_will(b: &TestBroker, device: &str) {
    let status_topic = format!("device/{device}/status");
    let (svc, mut svc_el) = connect_v4(b, Via::Tcp, "backend-1", Some(("backend", "pw")))
        .await
        .expect("service connects");
    subscribe_v4(&svc, &mut svc_el, &status_topic, QoS::AtLeastOnce).await;

    let mut opts = options_v4(b, Via::Tcp, device, Some((device, "tok")));
    opts.set_last_will(rumqttc::LastWill::new(
        &status_topic,
        r#"{"state":"offline"}"#,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    next_v4(&mut el, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    client
        .publish(
            &status_topic,
            QoS::AtLeastOnce,
            true,
            r#"{"state":"online","version":"1.0"}"#,
        )
        .await
        .expect("publish status");
    next_v4(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    let seen = next_v4(&mut svc_el, |p| match p {
        Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    assert_eq!(seen, br#"{"state":"online","version":"1.0"}"#);
    // Lost network: the will fires.
    drop(el);
    let will = next_v4(&mut svc_el, |p| match p {
        Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    assert_eq!(will, br#"{"state":"offline"}"#);
}

#[tokio::test]
async fn a_retained_status_will_survives_a_restart() {
    let config = fleetmq_broker::BrokerConfig::for_tests();
    let b = TestBroker::with_config(config.clone()).await;
    b.add_device("pres-6", "tok", false).await;
    b.add_service("backend", "pw", allow_all()).await;
    device_dies_with_a_will(&b, "pres-6").await;

    let dir = b.stop().await;
    let b = TestBroker::with_config_in(config, dir).await;
    let (svc, mut el) = connect_v4(&b, Via::Tcp, "backend-2", Some(("backend", "pw")))
        .await
        .expect("service connects");
    subscribe_v4(&svc, &mut el, "device/pres-6/status", QoS::AtLeastOnce).await;
    let retained = next_v4(&mut el, |p| match p {
        Packet::Publish(p) => Some((p.payload.to_vec(), p.retain)),
        _ => None,
    })
    .await;
    assert_eq!(
        String::from_utf8_lossy(&retained.0),
        r#"{"state":"offline"}"#,
        "the last retained status is the will"
    );
    assert!(retained.1);
}

#[tokio::test]
async fn a_status_will_becomes_the_reported_status() {
    let b = TestBroker::start().await;
    b.add_device("pres-7", "tok", false).await;
    b.add_service("backend", "pw", allow_all()).await;
    device_dies_with_a_will(&b, "pres-7").await;
    let s = eventually("the will to be the reported status", || async {
        let s = state(&b, "pres-7").await;
        s.disconnected_at_ms.is_some().then_some(s)
    })
    .await;
    let reported: serde_json::Value =
        serde_json::from_str(s.reported_status.as_deref().expect("a status")).unwrap();
    assert_eq!(reported, json!({"state": "offline"}), "{s:?}");
}

#[tokio::test]
async fn device_alarms_become_alarm_events() {
    let b = TestBroker::start().await;
    b.add_device("alarm-1", "tok", false).await;
    let mut events = b.handle.events().subscribe();
    let (dev, el) = connect_v4(&b, Via::Tcp, "alarm-1", Some(("alarm-1", "tok")))
        .await
        .unwrap();
    let _d = drive_v4(el);
    for payload in [
        r#"{"type":"alarm","name":"overheat","state":"raised","temp":91}"#,
        r#"{"type":"door_open"}"#,
        r#"{"type":"alarm","name":"overheat","active":false}"#,
        "not json",
    ] {
        dev.publish(
            "device/alarm-1/events",
            rumqttc::QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
    }
    let mut alarms = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while alarms.len() < 2 && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), events.recv()).await
        {
            if e.kind.starts_with("alarm.") {
                alarms.push((e.kind.clone(), e.data_value()["name"].clone()));
            }
        }
    }
    assert_eq!(
        alarms,
        [
            ("alarm.raised".to_string(), serde_json::json!("overheat")),
            ("alarm.cleared".to_string(), serde_json::json!("overheat"))
        ]
    );
}
