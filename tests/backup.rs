//! `fleetmq backup` while the broker runs and a device publishes, restore into a fresh
//! data directory, and `fleetmq check` (issue 18, docs/operations.md).

use crate::support;

use std::path::Path;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::{json, Value};
use tokio::time::Instant;

use support::cli::{answer_commands, run};
use support::{fleetmq, Server, WAIT};

/// `fleetmq check --data-dir DIR`.
async fn check(dir: &Path) -> support::cli::Run {
    let mut cmd = fleetmq();
    cmd.arg("check").arg("--data-dir").arg(dir);
    run(cmd).await
}

/// Polls `GET path` until `done` holds for its JSON body.
async fn wait_for(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.api("GET", path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn items(body: &Value) -> &Vec<Value> {
    body["items"].as_array().expect("items")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_devices_publish_restores_into_a_fresh_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let mut server = Server::start(&dir.path().join("a")).await;
    let pw1 = server.provision("d1").await;
    let pw2 = server.provision("d2").await;
    let (client, events) = server.device("d1", &pw1).await;
    answer_commands(client, events, "d1".into(), json!({"ok": 1}));
    let out = (server
        .run(&["command", "send", "d1", "PING", "--wait", "--json"])
        .await)
        .ok();
    let cid = out.json()["command_id"].as_str().expect("id").to_owned();

    // d2 publishes telemetry all through the backup.
    let (publisher, mut publisher_events) = server.device("d2", &pw2).await;
    let pump = tokio::spawn(async move { while publisher_events.poll().await.is_ok() {} });
    let publishing = tokio::spawn(async move {
        for i in 0u64.. {
            let body = json!({"temp": i}).to_string();
            let topic = "device/d2/telemetry";
            if publisher
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    wait_for(&server, "/api/v1/devices/d2/telemetry", |b| {
        !items(b).is_empty()
    })
    .await;

    let backup = dir.path().join("backup.redb");
    let path = backup.to_str().unwrap();
    let out = server.run(&["backup", path]).await.ok();
    assert!(out.stdout.contains("backup written to"), "{out:#?}");
    // An existing file is not replaced without --force.
    let again = server.run(&["backup", path]).await;
    assert_eq!(again.code, 2, "{again:#?}");
    assert!(again.stderr.contains("--force"), "{again:#?}");
    publishing.abort();
    pump.abort();

    // Changes after the backup are not in it.
    server.run(&["command", "send", "d1", "LATER"]).await.ok();
    // `check` cannot run beside the broker, and says so.
    let busy = check(&server.data).await;
    assert_eq!(busy.code, 3, "{busy:#?}");
    assert!(busy.stderr.contains("in use"), "{busy:#?}");
    assert_eq!(server.stop().await, Some(0), "{}", server.log());
    check(&server.data).await.ok();

    // Restore: the file (and the built-in key's file) in a fresh data directory.
    let fresh = dir.path().join("b");
    std::fs::create_dir_all(fresh.join("data")).unwrap();
    std::fs::copy(&backup, fresh.join("data/fleetmq.redb")).unwrap();
    std::fs::copy(server.data.join("admin.key"), fresh.join("data/admin.key")).unwrap();
    // A copy left by a broker killed mid-backup is removed at start.
    let leftover = fresh.join("data/.backup-1-2-0.redb.tmp");
    std::fs::write(&leftover, b"half a copy").unwrap();
    let restored = Server::start(&fresh).await;
    assert!(!leftover.exists(), "{}", restored.log());
    assert_eq!(restored.key, server.key);
    // Devices authenticate with their old tokens.
    restored.device("d1", &pw1).await;
    restored.device("d2", &pw2).await;
    let out = restored
        .run(&["command", "list", "d1", "--json"])
        .await
        .ok();
    let listed = out.json();
    let ids: Vec<&str> = (items(&listed).iter())
        .map(|c| c["command_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [cid.as_str()], "{out:#?}");
    let telemetry = restored
        .api("GET", "/api/v1/devices/d2/telemetry", None)
        .await;
    assert!(!items(&telemetry.1).is_empty(), "{telemetry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_damaged_file_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut server = Server::start(dir.path()).await;
    for i in 0..20 {
        server.provision(&format!("dev-{i}")).await;
    }
    assert_eq!(server.stop().await, Some(0));
    let file = data.join("fleetmq.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = check(&data).await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains(&file.display().to_string()), "{out:#?}");
    assert!(
        out.stderr.contains("restore the file from a backup"),
        "{out:#?}"
    );
    let nothing = check(&dir.path().join("nowhere")).await;
    assert_eq!(nothing.code, 2, "{nothing:#?}");
    assert!(nothing.stderr.contains("no database"), "{nothing:#?}");
}
