//! SPEC §5 "a command is written durably before the API answers; after a crash and
//! restart every non-terminal command is still there and continues", against the real
//! binary: commands are created over the admin API, a real MQTT device gets some and
//! answers some, the process is killed with SIGKILL mid-way, and after a restart on the
//! same data directory every command the API acknowledged reaches a terminal state.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use support::{http, Server, POLL, WAIT};

const DEVICE: &str = "k9-display-1";

/// A firmware-like device: subscribed at QoS 1 to its command topic; every received
/// command (commandId, type) goes to `commands`.
struct Device {
    client: AsyncClient,
    commands: mpsc::Receiver<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    async fn connect(mqtt: SocketAddr, password: &str) -> Device {
        let mut opts = MqttOptions::new(DEVICE, "127.0.0.1", mqtt.port());
        opts.set_credentials(DEVICE, password);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 100);
        wait_connack(&mut el).await;
        let topic = format!("device/{DEVICE}/command");
        client
            .subscribe(topic.clone(), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, commands) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            while let Ok(event) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    if p.topic != topic {
                        continue;
                    }
                    let cmd: Value = serde_json::from_slice(&p.payload).expect("command JSON");
                    let id = cmd["commandId"].as_str().expect("commandId").to_owned();
                    let kind = cmd["type"].as_str().expect("type").to_owned();
                    if tx.send((id, kind)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Device {
            client,
            commands,
            task,
        }
    }

    async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(WAIT, self.commands.recv())
            .await
            .expect("a command in time")
            .expect("device connected")
    }

    async fn answer(&self, command_id: &str) {
        let body =
            json!({"commandId": command_id, "success": true, "result": {"done": command_id}});
        self.client
            .publish(
                format!("device/{DEVICE}/response"),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .expect("queue response");
    }
}

async fn wait_connack(el: &mut EventLoop) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("device cannot connect: {e}"),
            Err(_) => panic!("no CONNACK in time"),
        }
    }
}

fn terminal(status: &str) -> bool {
    matches!(
        status,
        "completed" | "failed" | "expired" | "cancelled" | "superseded"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_acknowledged_by_the_api_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;

    let (status, provisioned) = server
        .api("POST", "/api/v1/devices", Some(json!({"id": DEVICE})))
        .await;
    assert_eq!(status, 201, "{provisioned}");
    let password = provisioned["credentials"]["password"]
        .as_str()
        .expect("device password")
        .to_owned();

    // What the API acknowledged: command id → type.
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let path = format!("/api/v1/devices/{DEVICE}/commands");
    for i in 0..6 {
        let body =
            json!({"type": format!("OFFLINE_{i}"), "params": {"i": i}, "metadata": {"n": i}});
        let (status, record) = server.api("POST", &path, Some(body)).await;
        assert_eq!(status, 202, "{record}");
        assert_eq!(record["status"], "queued", "device offline: {record}");
        acknowledged.insert(
            record["command_id"].as_str().unwrap().to_owned(),
            format!("OFFLINE_{i}"),
        );
    }

    // The device gets the queued ones, oldest first, and answers every other one.
    let mut device = Device::connect(server.mqtt, &password).await;
    let mut received = Vec::new();
    for i in 0..6 {
        let (id, kind) = device.next().await;
        assert_eq!(kind, format!("OFFLINE_{i}"), "oldest first");
        received.push(id);
    }
    device.answer(&received[0]).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, record) = server
            .api("GET", &format!("/api/v1/commands/{}", received[0]), None)
            .await;
        if record["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first answer not applied: {record}"
        );
        tokio::time::sleep(POLL).await;
    }
    // More commands while the device is online: sent at once.
    for i in 0..3 {
        let body = json!({"type": format!("ONLINE_{i}")});
        let (status, record) = server.api("POST", &path, Some(body)).await;
        assert_eq!(status, 202, "{record}");
        acknowledged.insert(
            record["command_id"].as_str().unwrap().to_owned(),
            format!("ONLINE_{i}"),
        );
    }
    for _ in 0..3 {
        device.next().await;
    }
    // Answers in flight, then the crash.
    device.answer(&received[2]).await;
    device.answer(&received[4]).await;
    server.kill9().await;
    let _ = tokio::time::timeout(WAIT, device.task).await;
    let first_log = server.log();

    server.start_again().await;
    // Every acknowledged command is still there.
    for id in acknowledged.keys() {
        let (status, record) = server
            .api("GET", &format!("/api/v1/commands/{id}"), None)
            .await;
        assert_eq!(
            status, 200,
            "lost after kill -9: {id} {record}\n{first_log}"
        );
        assert_eq!(record["type"], acknowledged[id].as_str());
    }

    // The device comes back and answers everything it gets (again, if need be).
    let mut device = Device::connect(server.mqtt, &password).await;
    let deadline = Instant::now() + WAIT;
    let mut open: Vec<String> = acknowledged.keys().cloned().collect();
    while !open.is_empty() {
        while let Ok((id, _)) = device.commands.try_recv() {
            device.answer(&id).await;
        }
        let mut still = Vec::new();
        for id in open {
            let (status, record) = server
                .api("GET", &format!("/api/v1/commands/{id}"), None)
                .await;
            assert_eq!(status, 200, "{record}");
            if !terminal(record["status"].as_str().unwrap_or("")) {
                still.push(id);
            }
        }
        open = still;
        assert!(
            Instant::now() < deadline,
            "not terminal after the restart: {open:?}\n{}",
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }

    // Every device-answered command completed; none was lost or duplicated.
    for (id, kind) in &acknowledged {
        let (_, record) = server
            .api("GET", &format!("/api/v1/commands/{id}"), None)
            .await;
        assert_eq!(record["status"], "completed", "{kind}: {record}");
        assert_eq!(record["result"], json!({"done": id}));
    }
    let (status, page) = server.api("GET", &format!("{path}?limit=100"), None).await;
    assert_eq!(status, 200, "{page}");
    let listed: HashSet<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["command_id"].as_str().unwrap())
        .collect();
    let want: HashSet<&str> = acknowledged.keys().map(String::as_str).collect();
    assert_eq!(listed, want, "exactly the acknowledged commands");
    // The metadata of queued ones came through the crash as given.
    let (_, first) = server
        .api("GET", &format!("/api/v1/commands/{}", received[1]), None)
        .await;
    assert_eq!(first["metadata"], json!({"n": 1}));

    device.client.disconnect().await.ok();
    let _ = tokio::time::timeout(WAIT, device.task).await;
    assert_eq!(server.stop().await, Some(0), "{}", server.log());
}

/// Answers every command the device receives, until its connection ends.
fn answer_everything(mut device: Device) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((id, _)) = device.commands.recv().await {
            device.answer(&id).await;
        }
    })
}

/// Creates commands in a loop; every `202` goes to `acked`. Ends at the first failure.
fn creator(
    admin: SocketAddr,
    key: String,
    n: usize,
    acked: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = format!("/api/v1/devices/{DEVICE}/commands");
        for i in 0.. {
            let body = json!({"type": format!("C{n}_{i}"), "supersede": false}).to_string();
            match http(admin, &key, "POST", &path, Some(body)).await {
                Ok((202, text)) => {
                    let record: Value = serde_json::from_str(&text).expect("record");
                    let id = record["command_id"].as_str().expect("id").to_owned();
                    if acked.send(id).await.is_err() {
                        return;
                    }
                }
                Ok((status, text)) => panic!("create answered {status}: {text}"),
                Err(_) => return, // the server is gone
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_created_while_the_process_is_killed_are_not_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let (status, provisioned) = server
        .api("POST", "/api/v1/devices", Some(json!({"id": DEVICE})))
        .await;
    assert_eq!(status, 201, "{provisioned}");
    let password = provisioned["credentials"]["password"]
        .as_str()
        .expect("device password")
        .to_owned();
    let device = Device::connect(server.mqtt, &password).await;
    let answering = answer_everything(device);

    // Four clients create commands as fast as the API answers; the device answers each.
    let (tx, mut rx) = mpsc::channel(100_000);
    let creators: Vec<_> = (0..4)
        .map(|n| creator(server.admin, server.key.clone(), n, tx.clone()))
        .collect();
    drop(tx);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 60 {
        let id = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("creates in time")
            .expect("creators running");
        acknowledged.push(id);
    }
    server.kill9().await;
    for c in creators {
        tokio::time::timeout(WAIT, c)
            .await
            .expect("creators stop once the server is gone")
            .expect("creator");
    }
    while let Some(id) = rx.recv().await {
        acknowledged.push(id);
    }
    let _ = tokio::time::timeout(WAIT, answering).await;

    server.start_again().await;
    let device = Device::connect(server.mqtt, &password).await;
    let _answering = answer_everything(device);
    let deadline = Instant::now() + WAIT;
    let mut open = acknowledged.clone();
    while !open.is_empty() {
        let mut still = Vec::new();
        for id in open {
            let (status, record) = server
                .api("GET", &format!("/api/v1/commands/{id}"), None)
                .await;
            assert_eq!(status, 200, "acknowledged, then lost: {id}: {record}");
            if record["status"] != "completed" {
                assert!(
                    !terminal(record["status"].as_str().unwrap_or("")),
                    "{record}"
                );
                still.push(id);
            }
        }
        open = still;
        assert!(
            Instant::now() < deadline,
            "{} of {} not completed after the restart: {open:?}\n{}",
            open.len(),
            acknowledged.len(),
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// SPEC §6 "acknowledged means stored": every telemetry point a device got a PUBACK for
/// is there after SIGKILL right after the last PUBACK and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_telemetry_survives_kill_9() {
    const POINTS: u64 = 500;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let id = "k9-meter-1";
    let (status, provisioned) = server
        .api("POST", "/api/v1/devices", Some(json!({"id": id})))
        .await;
    assert_eq!(status, 201, "{provisioned}");
    let password = provisioned["credentials"]["password"].as_str().unwrap();

    let mut opts = MqttOptions::new(id, "127.0.0.1", server.mqtt.port());
    opts.set_credentials(id, password);
    opts.set_inflight(100);
    let (client, mut el) = AsyncClient::new(opts, 1_000);
    wait_connack(&mut el).await;
    let publisher = tokio::spawn(async move {
        for n in 0..POINTS {
            let body = json!({"n": n}).to_string();
            client
                .publish(
                    format!("device/{id}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .expect("queue telemetry");
        }
        client
    });
    let mut acked = 0;
    while acked < POINTS {
        match tokio::time::timeout(WAIT, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("after {acked} PUBACKs: {other:?}"),
        }
    }
    server.kill9().await;
    drop(publisher.await);
    server.start_again().await;

    let (status, page) = server
        .api(
            "GET",
            &format!("/api/v1/devices/{id}/telemetry?limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut got: Vec<u64> = (page["items"].as_array().expect("items").iter())
        .filter_map(|p| p["values"]["n"].as_u64())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..POINTS).collect::<Vec<_>>());
}
