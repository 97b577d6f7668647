//! SPEC §11 end to end: alarm rules over telemetry a real MQTT device publishes with
//! explicit `ts` values (so `for_s` runs on telemetry time, not on the test's clock),
//! offline alarms, device-reported alarms, acknowledgement and a restart.
//!
//! A "probe" rule (`probe > 0`, raised at once, cleared when `probe` is 0) tells a test
//! that the evaluator has seen a point: its event comes from the same batch or later.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::events::FleetEvent;
use fleetmq_broker::BrokerConfig;
use fleetmq_storage::alarms::AlarmFilter;
use fleetmq_storage::now_ms;
use serde_json::{json, Value};
use tokio::sync::broadcast::Receiver;

/// Telemetry time 0 of every test: a day ago, well inside what devices are believed.
fn s(seconds: u64) -> u64 {
    static T0: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    T0.get_or_init(|| now_ms() - 86_400_000) + seconds * 1000
}

async fn rule(b: &TestBroker, body: Value) -> String {
    let r = b.handle.alarms().create_rule(&body).await.expect("rule");
    r["rule_id"].as_str().unwrap().to_owned()
}

fn threshold(name: &str, device: &str, key: &str, op: &str, value: f64, for_s: u64) -> Value {
    json!({"name": name, "severity": "major", "target": {"devices": [device]},
           "condition": {"key": key, "op": op, "value": value, "for_s": for_s}})
}

async fn point(fw: &Firmware, ts: u64, mut values: Value) {
    values["ts"] = json!(ts);
    fw.publish("telemetry", values.to_string().as_bytes()).await;
}

/// The next `alarm.*` event of kind `kind` named `name`.
async fn alarm_event(rx: &mut Receiver<FleetEvent>, kind: &str, name: &str) -> Value {
    let e = next_event(rx, |e| e.kind == kind && e.data_value()["name"] == name).await;
    e.data_value()
}

async fn alarms_of(b: &TestBroker, device: &str) -> Vec<Value> {
    let filter = AlarmFilter {
        device: Some(device.to_owned()),
        ..Default::default()
    };
    b.handle.alarms().list(filter, None, 100).await.unwrap().0
}

fn named<'a>(alarms: &'a [Value], name: &str) -> Vec<&'a Value> {
    alarms.iter().filter(|a| a["name"] == name).collect()
}

#[tokio::test]
async fn a_rule_raises_after_for_s_clears_with_hysteresis_once_per_device() {
    let b = TestBroker::start().await;
    b.add_device("al-1", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    let mut hot = threshold("hot", "al-1", "temp", ">", 80.0, 30);
    hot["clear"] = json!({"key": "temp", "op": "<", "value": 75, "for_s": 10});
    rule(&b, hot).await;
    rule(&b, threshold("probe", "al-1", "probe", ">", 0.0, 0)).await;
    let fw = Firmware::connect(&b, "al-1", "tok").await;

    point(&fw, s(0), json!({"temp": 85})).await;
    point(&fw, s(10), json!({"temp": 90})).await;
    point(&fw, s(29), json!({"temp": 90, "probe": 1})).await;
    alarm_event(&mut rx, "alarm.raised", "probe").await;
    assert!(
        named(&alarms_of(&b, "al-1").await, "hot").is_empty(),
        "29 s < 30 s"
    );

    point(&fw, s(30), json!({"temp": 86})).await;
    let raised = alarm_event(&mut rx, "alarm.raised", "hot").await;
    assert_eq!(
        raised["raised_at"],
        fleetmq_broker::fleet::rfc3339_ms(s(30))
    );
    assert_eq!(raised["value"], 86.0);
    assert_eq!(raised["status"], "active");
    assert_eq!(raised["source"], "rule");
    assert_eq!(raised["device_id"], "al-1");

    // Still hot, and 78 is not below the clear threshold: nothing new.
    point(&fw, s(31), json!({"temp": 95})).await;
    point(&fw, s(40), json!({"temp": 78})).await;
    point(&fw, s(41), json!({"temp": 74})).await;
    point(&fw, s(50), json!({"temp": 70, "probe": 0})).await;
    alarm_event(&mut rx, "alarm.cleared", "probe").await;
    let hot = alarms_of(&b, "al-1").await;
    let hot = named(&hot, "hot");
    assert_eq!(hot.len(), 1, "one alarm per (rule, device): {hot:?}");
    assert_eq!(hot[0]["status"], "active", "9 s of the 10 s clear window");

    point(&fw, s(51), json!({"temp": 70})).await;
    let cleared = alarm_event(&mut rx, "alarm.cleared", "hot").await;
    assert_eq!(cleared["alarm_id"], raised["alarm_id"]);
    assert_eq!(
        cleared["cleared_at"],
        fleetmq_broker::fleet::rfc3339_ms(s(51))
    );
    assert_eq!(cleared["status"], "cleared");
}

#[tokio::test]
async fn ack_is_idempotent_and_emits_its_event_once() {
    let b = TestBroker::start().await;
    b.add_device("al-2", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    rule(&b, threshold("low", "al-2", "battery", "<", 20.0, 0)).await;
    let fw = Firmware::connect(&b, "al-2", "tok").await;
    point(&fw, s(0), json!({"battery": 10})).await;
    let raised = alarm_event(&mut rx, "alarm.raised", "low").await;
    let id = raised["alarm_id"].as_str().unwrap();

    let first = b.handle.alarms().ack(id).await.unwrap();
    let second = b.handle.alarms().ack(id).await.unwrap();
    assert_eq!(first["acknowledged"], true);
    assert_eq!(first, second);
    let acks: Vec<_> = events_within(&mut rx, Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|e| e.kind == "alarm.acknowledged")
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].data_value()["alarm_id"], id);
    assert!(b.handle.alarms().ack("999999").await.is_err());

    // A deleted device's active alarm is cleared.
    b.handle.device_removed(&"al-2".parse().unwrap());
    let cleared = alarm_event(&mut rx, "alarm.cleared", "low").await;
    assert_eq!(cleared["alarm_id"], id);
}

#[tokio::test]
async fn an_offline_alarm_raises_after_offline_for_s_and_clears_on_return() {
    let b = TestBroker::start().await;
    b.add_device("al-3", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    rule(
        &b,
        json!({"name": "gone", "severity": "critical", "target": {"all": true},
               "condition": {"offline_for_s": 1}}),
    )
    .await;
    let fw = Firmware::connect(&b, "al-3", "tok").await;
    let left = now_ms();
    fw.disconnect().await;
    let raised = alarm_event(&mut rx, "alarm.raised", "gone").await;
    assert!(now_ms() - left >= 1_000, "raised after 1 s offline");
    assert_eq!(raised["severity"], "critical");
    let _fw = Firmware::connect(&b, "al-3", "tok").await;
    let cleared = alarm_event(&mut rx, "alarm.cleared", "gone").await;
    assert_eq!(cleared["alarm_id"], raised["alarm_id"]);
}

/// A rule made while a device is offline watches it at once: it has been offline since
/// its disconnect, so it raises `offline_for_s` after that; a connected device and one
/// that never connected raise nothing.
#[tokio::test]
async fn a_new_offline_rule_raises_for_a_device_already_offline() {
    let b = TestBroker::start().await;
    for id in ["al-gone", "al-here", "al-never"] {
        b.add_device(id, "tok", false).await;
    }
    let gone = Firmware::connect(&b, "al-gone", "tok").await;
    let _here = Firmware::connect(&b, "al-here", "tok").await;
    let mut rx = b.handle.events().subscribe();
    let left = now_ms();
    gone.disconnect().await;
    next_event(&mut rx, |e| e.kind == "device.offline").await;
    rule(
        &b,
        json!({"name": "late", "severity": "major", "target": {"all": true},
               "condition": {"offline_for_s": 1}}),
    )
    .await;
    let raised = alarm_event(&mut rx, "alarm.raised", "late").await;
    assert_eq!(raised["device_id"], "al-gone", "{raised}");
    assert!(now_ms() - left >= 1_000, "raised 1 s after the disconnect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(named(&alarms_of(&b, "al-here").await, "late").is_empty());
    assert!(named(&alarms_of(&b, "al-never").await, "late").is_empty());
}

#[tokio::test]
async fn a_device_reported_alarm_is_an_alarm() {
    let b = TestBroker::start().await;
    b.add_device("al-4", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    let fw = Firmware::connect(&b, "al-4", "tok").await;
    let payload = json!({"type": "alarm.raised", "name": "door", "severity": "minor"});
    fw.publish("events", payload.to_string().as_bytes()).await;
    // Raised again while active: still one alarm.
    fw.publish("events", payload.to_string().as_bytes()).await;
    let raised = alarm_event(&mut rx, "alarm.raised", "door").await;
    assert_eq!(raised["source"], "device");
    assert_eq!(raised["severity"], "minor");
    assert_eq!(raised["rule_id"], Value::Null);
    assert_eq!(raised["value"], payload);
    let cleared = json!({"type": "alarm", "name": "door", "state": "cleared"});
    fw.publish("events", cleared.to_string().as_bytes()).await;
    let cleared = alarm_event(&mut rx, "alarm.cleared", "door").await;
    assert_eq!(cleared["alarm_id"], raised["alarm_id"]);
    assert_eq!(alarms_of(&b, "al-4").await.len(), 1);
}

#[tokio::test]
async fn rules_active_alarms_and_windows_survive_a_restart() {
    let config = BrokerConfig::for_tests();
    let b = TestBroker::with_config(config.clone()).await;
    b.add_device("al-5", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    rule(&b, threshold("slow", "al-5", "temp", ">", 80.0, 30)).await;
    rule(&b, threshold("fast", "al-5", "temp", ">", 50.0, 0)).await;
    rule(&b, threshold("probe", "al-5", "probe", ">", 0.0, 0)).await;
    let fw = Firmware::connect(&b, "al-5", "tok").await;
    point(&fw, s(0), json!({"temp": 85})).await;
    // Same point, same step: the slow rule's window is stored with it.
    let fast = alarm_event(&mut rx, "alarm.raised", "fast").await;
    drop(fw);
    let dir = b.stop().await;

    let b = TestBroker::with_config_in(config, dir).await;
    let mut rx = b.handle.events().subscribe();
    assert_eq!(b.handle.alarms().rules().await.unwrap().len(), 3);
    let fw = Firmware::connect(&b, "al-5", "tok").await;
    point(&fw, s(30), json!({"temp": 60})).await;
    point(&fw, s(31), json!({"temp": 40})).await;
    let cleared = alarm_event(&mut rx, "alarm.cleared", "fast").await;
    assert_eq!(
        cleared["alarm_id"], fast["alarm_id"],
        "the active alarm survived"
    );
    // 60 at 30 s is not above 80: the window had started at 0 s and stopped.
    assert!(named(&alarms_of(&b, "al-5").await, "slow").is_empty());

    point(&fw, s(40), json!({"temp": 90, "probe": 1})).await;
    alarm_event(&mut rx, "alarm.raised", "probe").await;
    drop(fw);
    let dir = b.stop().await;
    // The window from 40 s survives: 70 s raises at once after the restart.
    let b = TestBroker::with_config_in(BrokerConfig::for_tests(), dir).await;
    let mut rx = b.handle.events().subscribe();
    let fw = Firmware::connect(&b, "al-5", "tok").await;
    point(&fw, s(70), json!({"temp": 81})).await;
    let slow = alarm_event(&mut rx, "alarm.raised", "slow").await;
    assert_eq!(slow["raised_at"], fleetmq_broker::fleet::rfc3339_ms(s(70)));
}

#[tokio::test]
async fn a_rule_change_applies_to_the_next_point() {
    let b = TestBroker::start().await;
    b.add_device("al-6", "tok", false).await;
    let mut rx = b.handle.events().subscribe();
    let id = rule(&b, threshold("hot", "al-6", "temp", ">", 100.0, 0)).await;
    rule(&b, threshold("probe", "al-6", "probe", ">", 0.0, 0)).await;
    let fw = Firmware::connect(&b, "al-6", "tok").await;
    point(&fw, s(0), json!({"temp": 90, "probe": 1})).await;
    alarm_event(&mut rx, "alarm.raised", "probe").await;
    assert!(named(&alarms_of(&b, "al-6").await, "hot").is_empty());

    let changed = threshold("hot", "al-6", "temp", ">", 80.0, 0);
    b.handle.alarms().update_rule(&id, &changed).await.unwrap();
    point(&fw, s(1), json!({"temp": 90})).await;
    let raised = alarm_event(&mut rx, "alarm.raised", "hot").await;
    assert_eq!(raised["raised_at"], fleetmq_broker::fleet::rfc3339_ms(s(1)));

    // Deleting the rule clears its alarm.
    b.handle.alarms().delete_rule(&id).await.unwrap();
    let cleared = alarm_event(&mut rx, "alarm.cleared", "hot").await;
    assert_eq!(cleared["alarm_id"], raised["alarm_id"]);
}
