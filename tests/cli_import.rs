//! `fleetmq device import` against a real `fleetmq serve`: a CSV and a JSON file become
//! devices through the bulk route, their credentials are written once (stdout, or a new
//! 0600 file), refused rows are named by line with exit 1, and an imported device
//! connects over MQTT with the password the import wrote.

use crate::support;

use std::os::unix::fs::PermissionsExt as _;

use support::Server;

/// `id,password,key_generation,key_base64` rows (without the header) by id.
fn credentials(csv: &str) -> Vec<Vec<String>> {
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("id,password,key_generation,key_base64"),
        "{csv}"
    );
    lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_file_is_imported_and_its_devices_connect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let csv = dir.path().join("devices.csv");
    std::fs::write(
        &csv,
        "id,plugin,labels,encrypted\n\
         csv-1,,site=lab;floor=2,false\n\
         csv-2,json,,true\n\
         \"csv-3\",,\"note=a,b\",\n",
    )
    .expect("write csv");
    let out = dir.path().join("credentials.csv");
    let run = server
        .run(&[
            "device",
            "import",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .await
        .ok();
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(run.stderr.contains("created 3 of 3 devices"), "{run:#?}");
    assert!(run.stderr.contains("shown only this once"), "{run:#?}");
    let mode = std::fs::metadata(&out)
        .expect("out file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let rows = credentials(&std::fs::read_to_string(&out).unwrap());
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["csv-1", "csv-2", "csv-3"]);
    assert_eq!(rows[0][2..], ["", ""]);
    assert_eq!(rows[1][2], "1");
    assert_eq!(rows[1][3].len(), 44, "a base64 AES-256 key");

    let (status, device) = server.api("GET", "/api/v1/devices/csv-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(device["labels"]["floor"], "2");
    let (_, device) = server.api("GET", "/api/v1/devices/csv-3", None).await;
    assert_eq!(device["labels"]["note"], "a,b");

    let (client, _events) = server.device("csv-1", &rows[0][1]).await;
    client.disconnect().await.ok();

    // The file is never overwritten: its passwords would be lost.
    let again = server
        .run(&[
            "device",
            "import",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .await;
    assert_eq!(again.code, 2, "{again:#?}");
    assert_eq!(
        credentials(&std::fs::read_to_string(&out).unwrap()).len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_file_is_imported_and_refused_items_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    server.provision("taken").await;
    let json = dir.path().join("devices.json");
    let items = serde_json::json!([
        {"id": "js-1", "labels": {"site": "lab"}},
        {"id": "taken"},
        {"id": "bad id"},
        {"id": "js-2", "encrypted": true},
    ]);
    std::fs::write(&json, items.to_string()).expect("write json");
    let run = server
        .run(&["device", "import", json.to_str().unwrap()])
        .await;
    assert_eq!(run.code, 1, "{run:#?}");
    let rows = credentials(&run.stdout);
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["js-1", "js-2"]);
    assert!(run.stderr.contains("created 2 of 4 devices"), "{run:#?}");
    assert!(
        run.stderr
            .contains(r#"error: item 2 (taken): device "taken" already exists (conflict)"#),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("error: item 3 (bad id): id:"),
        "{run:#?}"
    );
    let (client, _events) = server.device("js-2", &rows[1][1]).await;
    client.disconnect().await.ok();

    // `{"devices":[...]}` works too, and `--json` prints the API's answer.
    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"devices":[{"id":"js-3"}]}"#).unwrap();
    let run = server
        .run(&["device", "import", body.to_str().unwrap(), "--json"])
        .await
        .ok();
    let answer = run.json();
    assert_eq!(answer["created"][0]["device"]["id"], "js-3");
    assert_eq!(answer["errors"], serde_json::json!([]));

    // A bad file is a usage error before anything is sent.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id,labels\nx,novalue\n").unwrap();
    let run = server
        .run(&["device", "import", bad.to_str().unwrap()])
        .await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("line 2"), "{run:#?}");
    let (_, page) = server.api("GET", "/api/v1/devices", None).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(4));
}

/// More than the API takes in one request: the file is sent in chunks of 10,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_ten_thousand_devices_is_sent_in_chunks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let mut text = String::from("id\n");
    for i in 0..10_001 {
        text.push_str(&format!("many-{i:05}\n"));
    }
    let csv = dir.path().join("many.csv");
    std::fs::write(&csv, text).unwrap();
    let started = std::time::Instant::now();
    let run = server
        .run(&["device", "import", csv.to_str().unwrap()])
        .await
        .ok();
    eprintln!("device import of 10,001 devices: {:?}", started.elapsed());
    assert!(
        run.stderr.contains("created 10001 of 10001"),
        "{}",
        run.stderr
    );
    let rows = credentials(&run.stdout);
    assert_eq!(rows.len(), 10_001);
    assert_eq!(rows[10_000][0], "many-10000");
    let (client, _events) = server.device("many-10000", &rows[10_000][1]).await;
    client.disconnect().await.ok();
}
