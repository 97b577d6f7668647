//! SPEC §11 over real HTTP: alarm rules, a real MQTT device's telemetry raising an
//! alarm, listing with filters, acknowledging and deleting the rule.

use std::time::Duration;

use http::{Method, StatusCode};
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::api::{test_app, TestApp};

async fn wait_for_alarms(app: &TestApp, query: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = app.get(&format!("/api/v1/alarms?{query}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let items = answer.body["items"].as_array().unwrap().clone();
        if items.len() == n {
            return items;
        }
        assert!(tokio::time::Instant::now() < deadline, "{query}: {items:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rules_raise_alarms_that_are_listed_acknowledged_and_cleared() {
    let app = test_app().await;
    let bad = app
        .post(
            "/api/v1/alarm-rules",
            json!({"name": "x", "severity": "huge"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let rule = json!({"name": "overheat", "severity": "critical",
        "target": {"label": "site:lab"},
        "condition": {"key": "temp", "op": ">", "value": 80, "for_s": 30},
        "clear": {"key": "temp", "op": "<", "value": 75, "for_s": 0}});
    let created = app.post("/api/v1/alarm-rules", rule.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["rule_id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["target"], json!({"label": "site:lab"}));
    assert_eq!(created.body["condition"]["op"], ">");
    let listed = app.get("/api/v1/alarm-rules").await;
    assert_eq!(listed.body["items"][0]["rule_id"], id.as_str());

    let token = app.provision("dev-1").await["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let labels = json!({"labels": {"site": "lab"}});
    let patched = app
        .call(Method::PATCH, "/api/v1/devices/dev-1", Some(labels))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let (client, mut events) = app.mqtt_connect("dev-1", "dev-1", &token).await;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let t0 = fleetmq_storage::now_ms() - 3_600_000;
    for (s, temp) in [(0, 85), (20, 90), (30, 88)] {
        let point = json!({"temp": temp, "ts": t0 + s * 1000});
        let payload = point.to_string();
        client
            .publish("device/dev-1/telemetry", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let active = wait_for_alarms(&app, "status=active&device=dev-1", 1).await;
    let alarm = &active[0];
    assert_eq!(alarm["severity"], "critical");
    assert_eq!(alarm["rule_id"], id.as_str());
    assert_eq!(alarm["value"], 88.0);
    assert_eq!(alarm["acknowledged"], false);
    let alarm_id = alarm["alarm_id"].as_str().unwrap();
    wait_for_alarms(&app, "severity=minor", 0).await;
    wait_for_alarms(&app, "acknowledged=false", 1).await;

    for _ in 0..2 {
        let acked = app
            .post(&format!("/api/v1/alarms/{alarm_id}/ack"), json!({}))
            .await;
        assert_eq!(acked.status, StatusCode::OK, "{}", acked.body);
        assert_eq!(acked.body["acknowledged"], true);
    }
    wait_for_alarms(&app, "acknowledged=true&severity=critical", 1).await;
    let missing = app.post("/api/v1/alarms/424242/ack", json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let wrong = app.get("/api/v1/alarms?status=sleepy").await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);

    let mut changed = rule;
    changed["severity"] = json!("major");
    let put = app
        .call(
            Method::PUT,
            &format!("/api/v1/alarm-rules/{id}"),
            Some(changed),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["severity"], "major");
    let deleted = app.delete(&format!("/api/v1/alarm-rules/{id}")).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let cleared = wait_for_alarms(&app, "status=cleared", 1).await;
    assert_eq!(cleared[0]["alarm_id"], alarm_id);
    let gone = app.delete(&format!("/api/v1/alarm-rules/{id}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let stats = app.get("/api/v1/stats").await;
    assert_eq!(stats.body["alarms"]["dropped_points"], 0, "{}", stats.body);
    app.stop().await;
}
