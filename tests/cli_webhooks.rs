//! `fleetmq webhook ...` against a real `fleetmq serve`: endpoints added, listed, changed
//! and removed at runtime, and a delivery to a URL nobody answers listed as failed,
//! retried and discarded. Human output, `--json` and exit codes.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use support::{free_ports, Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_managed_and_deliveries_retried_and_discarded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    // Nobody listens there: every attempt fails at once.
    let dead = format!("http://{}/hook", free_ports(1)[0]);

    let out = server
        .run(&[
            "webhook", "add", &dead, "--secret", "s3cret", "--events", "device.*",
        ])
        .await
        .ok();
    assert!(out.stdout.starts_with("created webhook wh-"), "{out:#?}");
    assert!(!out.stdout.contains("s3cret"), "{out:#?}");
    let other = server
        .run(&[
            "webhook",
            "add",
            "http://127.0.0.1:9/other",
            "--secret",
            "x",
            "--disabled",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(other["enabled"], false);
    let other_id = other["id"].as_str().unwrap().to_owned();

    let listed = server.run(&["webhook", "list", "--json"]).await.ok().json();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let id = (items.iter())
        .find(|e| e["url"] == dead.as_str())
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .unwrap();
    let table = server.run(&["webhook", "list"]).await.ok();
    assert!(table.stdout.starts_with("ID"), "{table:#?}");
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("device.*"),
        "{table:#?}"
    );

    let out = server
        .run(&["webhook", "update", &other_id, "--enable", "--events", "*"])
        .await
        .ok();
    assert!(out.stdout.contains("updated webhook"), "{out:#?}");
    assert!(out.stdout.contains("true"), "{out:#?}");
    // The admin API's own `--url` (here from the environment) is not the endpoint's.
    assert!(out.stdout.contains("http://127.0.0.1:9/other"), "{out:#?}");
    let nothing = server.run(&["webhook", "update", &other_id]).await;
    assert_eq!(nothing.code, 2, "{nothing:#?}");
    let missing = server
        .run(&["webhook", "update", "wh-nope", "--disable"])
        .await;
    assert_eq!(missing.code, 1, "{missing:#?}");
    assert!(missing.stderr.contains("not found"), "{missing:#?}");
    let bad = server
        .run(&["webhook", "add", "ftp://x/h", "--secret", "s"])
        .await;
    assert_eq!(bad.code, 1, "{bad:#?}");
    assert!(bad.stderr.contains("422"), "{bad:#?}");
    let out = server.run(&["webhook", "remove", &other_id]).await.ok();
    assert!(out.stdout.contains("removed webhook"), "{out:#?}");

    // A device comes online: its event fails at the dead URL.
    let password = server.provision("wh-dev").await;
    let (_client, events) = server.device("wh-dev", &password).await;
    let driver = tokio::spawn(async move {
        let mut events = events;
        while events.poll().await.is_ok() {}
    });
    let deadline = Instant::now() + WAIT;
    let delivery = loop {
        let page = server
            .run(&[
                "webhook",
                "deliveries",
                "--webhook",
                &id,
                "--status",
                "failed",
                "--json",
            ])
            .await
            .ok()
            .json();
        if let Some(d) = page["items"].as_array().and_then(|i| i.first()) {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "no failed delivery: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivery_id = delivery["id"].as_str().unwrap().to_owned();
    assert_eq!(delivery["event_type"], "device.online");
    let table = server
        .run(&["webhook", "deliveries", "--status", "failed"])
        .await
        .ok();
    assert!(table.stdout.contains("STATUS"), "{table:#?}");
    assert!(table.stdout.contains("failed"), "{table:#?}");

    let out = server.run(&["webhook", "retry", &delivery_id]).await.ok();
    assert!(out.stdout.contains("due now"), "{out:#?}");
    let out = server.run(&["webhook", "discard", &delivery_id]).await.ok();
    assert!(out.stdout.contains("discarded"), "{out:#?}");
    let again = server.run(&["webhook", "discard", &delivery_id]).await;
    assert_eq!(again.code, 1, "{again:#?}");
    let left = server
        .run(&["webhook", "deliveries", "--webhook", &id, "--json"])
        .await
        .ok()
        .json();
    let left: Vec<&Value> = left["items"].as_array().unwrap().iter().collect();
    assert!(
        left.iter().all(|d| d["id"] != delivery_id.as_str()),
        "{left:?}"
    );
    driver.abort();
}
