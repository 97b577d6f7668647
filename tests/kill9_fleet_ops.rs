//! Issue 17 against the real binary: alarms and a job running across SIGKILL. An active
//! alarm is still active (and acknowledgeable, and clears) after the restart; a job
//! created just before the kill resumes, and every target device gets the job's command
//! exactly once.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::time::Instant;

use support::cli::answer_commands;
use support::{Server, WAIT};

/// Polls `GET path` until `done` accepts the answer (at most [`WAIT`]).
async fn until(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.api("GET", path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        if Instant::now() >= deadline {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{path}: still {status} {body}\nlog, newest first:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes telemetry at QoS 1 and waits for each PUBACK (stored, SPEC §6).
async fn telemetry(server: &Server, id: &str, password: &str, points: &[Value]) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", server.mqtt.port());
    opts.set_credentials(id, password);
    let (client, mut el) = AsyncClient::new(opts, 100);
    for p in points {
        client
            .publish(
                format!("device/{id}/telemetry"),
                QoS::AtLeastOnce,
                false,
                p.to_string(),
            )
            .await
            .expect("queue telemetry");
    }
    let mut acked = 0;
    while acked < points.len() {
        match tokio::time::timeout(WAIT, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("after {acked} PUBACKs: {other:?}"),
        }
    }
    client.disconnect().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_alarm_survives_kill_9_and_is_acknowledged_and_cleared_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let (status, body) = server
        .api("POST", "/api/v1/devices", Some(json!({"id": "k9-oven"})))
        .await;
    assert_eq!(status, 201, "{body}");
    let password = body["credentials"]["password"].as_str().unwrap().to_owned();
    let rule = json!({"name": "hot", "severity": "major", "target": {"all": true},
        "condition": {"key": "temp", "op": ">", "value": 80, "for_s": 30}});
    let (status, body) = server.api("POST", "/api/v1/alarm-rules", Some(rule)).await;
    assert_eq!(status, 201, "{body}");

    let t0 = fleetmq_storage::now_ms() - 120_000;
    let hot = |s: u64, v: u64| json!({"temp": v, "ts": t0 + s * 1000});
    telemetry(&server, "k9-oven", &password, &[hot(0, 90), hot(40, 91)]).await;
    let active = until(&server, "/api/v1/alarms?status=active", |b| {
        b["items"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let alarm_id = active["items"][0]["alarm_id"].as_str().unwrap().to_owned();

    server.kill9().await;
    server.start_again().await;
    let after = until(&server, "/api/v1/alarms?status=active", |_| true).await;
    assert_eq!(after["items"][0]["alarm_id"], alarm_id.as_str(), "{after}");
    let ack = format!("/api/v1/alarms/{alarm_id}/ack");
    let (status, body) = server.api("POST", &ack, None).await;
    assert_eq!(
        (status, body["acknowledged"].clone()),
        (200, json!(true)),
        "{body}"
    );
    telemetry(&server, "k9-oven", &password, &[hot(50, 70), hot(90, 70)]).await;
    until(&server, "/api/v1/alarms?status=cleared", |b| {
        b["items"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
}

/// The job's rate (`per_minute` 20 of 40 devices) stops it half way; it is killed
/// there, and after the restart its window starts empty, so it goes on at once. A
/// device's command sent before its SUBACK is answered too (see `Server::device`): it
/// used to be dropped by the test, which left the job `running` until the command's
/// 30 s answer timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_mid_rollout_gives_every_device_its_command_exactly_once() {
    const DEVICES: usize = 40;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("k9-job-{i:02}")).collect();
    let devices: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
    let (status, body) = server
        .api(
            "POST",
            "/api/v1/devices/bulk",
            Some(json!({"devices": devices})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let passwords: BTreeMap<String, String> = (body["created"].as_array().unwrap().iter())
        .map(|c| {
            let creds = &c["credentials"];
            (
                creds["username"].as_str().unwrap().to_owned(),
                creds["password"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let job = json!({"name": "reboot all", "target": {"devices": ids},
        "command": {"type": "REBOOT", "metadata": {"ticket": "k9"}},
        "rollout": {"per_minute": DEVICES / 2}});
    let (status, body) = server.api("POST", "/api/v1/jobs", Some(job)).await;
    assert_eq!(status, 201, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/jobs/{job_id}");
    // Killed mid-rollout: half the commands queued (the devices are all offline), the
    // rest waiting for the next minute.
    until(&server, &path, |j| j["counts"]["pending"] == DEVICES / 2).await;
    server.kill9().await;
    server.start_again().await;

    for (id, password) in &passwords {
        let (client, events) = server.device(id, password).await;
        answer_commands(client, events, id.clone(), json!({"ok": true}));
    }
    let done = until(&server, &path, |j| j["status"] == "completed").await;
    assert_eq!(done["counts"]["completed"], DEVICES, "{done}");
    for id in &ids {
        let (status, page) = server
            .api("GET", &format!("/api/v1/devices/{id}/commands"), None)
            .await;
        assert_eq!(status, 200, "{page}");
        let mine: Vec<&Value> = (page["items"].as_array().unwrap().iter())
            .filter(|c| c["metadata"]["job_id"] == job_id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{id}: {page}");
    }
}

/// A device online when the broker is killed never sends a disconnect: after the
/// restart its offline window starts anyway, so if it does not come back its offline
/// alarm is raised; one that comes back raises nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_alarm_starts_for_a_device_that_was_online_at_a_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let mut passwords = BTreeMap::new();
    for id in ["k9-gone", "k9-back"] {
        let (status, body) = server
            .api("POST", "/api/v1/devices", Some(json!({"id": id})))
            .await;
        assert_eq!(status, 201, "{body}");
        let password = body["credentials"]["password"].as_str().unwrap().to_owned();
        passwords.insert(id, password);
    }
    let rule = json!({"name": "gone", "severity": "critical", "target": {"all": true},
        "condition": {"offline_for_s": 2}});
    let (status, body) = server.api("POST", "/api/v1/alarm-rules", Some(rule)).await;
    assert_eq!(status, 201, "{body}");
    let mut online = Vec::new();
    for (id, password) in &passwords {
        let (client, mut events) = server.device(id, password).await;
        // A status is stored after the connect's state, in the same or a later commit:
        // once it shows, the broker has stored that the device connected.
        client
            .publish(format!("device/{id}/status"), QoS::AtLeastOnce, false, "{}")
            .await
            .expect("queue status");
        online.push(tokio::spawn(async move {
            while events.poll().await.is_ok() {}
            drop(client);
        }));
        until(&server, &format!("/api/v1/devices/{id}"), |b| {
            b["online"] == json!(true) && !b["reported_status"].is_null()
        })
        .await;
    }

    server.kill9().await;
    for task in online {
        task.abort();
    }
    server.start_again().await;
    let (_back, mut back_events) = server.device("k9-back", &passwords["k9-back"]).await;
    tokio::spawn(async move { while back_events.poll().await.is_ok() {} });
    let active = until(&server, "/api/v1/alarms?status=active", |b| {
        b["items"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let devices: Vec<&str> = (active["items"].as_array().unwrap().iter())
        .filter_map(|a| a["device_id"].as_str())
        .collect();
    assert_eq!(devices, ["k9-gone"], "{active}");
}
