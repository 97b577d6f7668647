//! `fleetmq alarm list | ack | rules` against a real `fleetmq serve`, with a device
//! alarm raised over MQTT.

use crate::support;

use rumqttc::QoS;
use serde_json::json;

use support::{Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_listed_acknowledged_and_rules_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let rule = json!({"name": "overheat", "severity": "critical", "target": {"all": true},
        "condition": {"key": "temp", "op": ">", "value": 80, "for_s": 30}});
    let (status, _) = server.api("POST", "/api/v1/alarm-rules", Some(rule)).await;
    assert_eq!(status, 201);
    let out = server.run(&["alarm", "rules"]).await.ok();
    assert!(out.stdout.contains("overheat"), "{out:#?}");
    assert!(out.stdout.contains("temp > 80 for 30 s"), "{out:#?}");

    let password = server.provision("cli-al").await;
    let (client, mut events) = server.device("cli-al", &password).await;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let payload = json!({"type": "alarm.raised", "name": "door", "severity": "minor"});
    client
        .publish(
            "device/cli-al/events",
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let id = loop {
        let out = server
            .run(&["alarm", "list", "--status", "active", "--json"])
            .await
            .ok();
        if let Some(a) = out.json()["items"]
            .as_array()
            .and_then(|i| i.first().cloned())
        {
            break a["alarm_id"].as_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no alarm listed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let out = server
        .run(&["alarm", "list", "--device", "cli-al"])
        .await
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out:#?}");
    assert!(
        lines[1].contains("minor") && lines[1].contains("door"),
        "{out:#?}"
    );

    for _ in 0..2 {
        let out = server.run(&["alarm", "ack", &id]).await.ok();
        assert!(out.stdout.contains("acknowledged_at"), "{out:#?}");
    }
    let out = server
        .run(&["alarm", "list", "--acknowledged", "true", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["items"][0]["alarm_id"], id.as_str());
    let missing = server.run(&["alarm", "ack", "987654"]).await;
    assert_eq!(missing.code, 1, "{missing:#?}");
}
