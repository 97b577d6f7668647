//! `fleetmq events` against a real `fleetmq serve`: one line per event (`--json`: the
//! event's JSON), filters by type and device, and a stream that drops when the server
//! restarts is picked up again by itself, resuming with `Last-Event-ID`.

use crate::support;

use serde_json::Value;

use support::cli::{resilient_device, Tail};
use support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_followed_and_the_stream_is_resumed_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let password = server.provision("ev-1").await;

    let mut json_tail = Tail::spawn(server.cli(&["events", "--json", "--device", "ev-1"]));
    let mut human_tail = Tail::spawn(server.cli(&["events", "--type", "command.*,device.online"]));
    for tail in [&mut json_tail, &mut human_tail] {
        Tail::expect(&mut tail.err, "connected", |l| l.contains("following")).await;
    }

    resilient_device(&server, "ev-1", &password);
    let line = Tail::expect(&mut json_tail.out, "device.online as JSON", |l| {
        l.contains("device.online")
    })
    .await;
    let event: Value = serde_json::from_str(&line).expect("--json prints the data JSON");
    assert_eq!(event["type"], "device.online");
    assert_eq!(event["device_id"], "ev-1");
    assert!(event["id"].as_str().is_some(), "{event}");

    server
        .run(&["command", "send", "ev-1", "RELOAD", "--wait", "20"])
        .await
        .ok();
    let line = Tail::expect(&mut human_tail.out, "command.completed", |l| {
        l.contains("command.completed")
    })
    .await;
    // at type device data
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert!(fields[0].ends_with('Z'), "{line}");
    assert_eq!(fields[1..3], ["command.completed", "ev-1"], "{line}");
    assert!(fields[3].contains(r#""status":"completed""#), "{line}");

    // The stream drops with the server; both followers come back on their own.
    server.restart().await;
    for tail in [&mut json_tail, &mut human_tail] {
        Tail::expect(&mut tail.err, "reconnected", |l| l.contains("following")).await;
        // It resumed with Last-Event-ID: the restarted server no longer has events that
        // old and says so with a gap frame, which the CLI reports.
        Tail::expect(&mut tail.err, "a gap after the restart", |l| {
            l.starts_with("warning: some events were missed")
        })
        .await;
    }
    server
        .run(&["command", "send", "ev-1", "PING", "--wait", "20"])
        .await
        .ok();
    Tail::expect(
        &mut human_tail.out,
        "PING completed after the restart",
        |l| l.contains("command.completed") && l.contains("PING"),
    )
    .await;
    let line = Tail::expect(&mut json_tail.out, "PING after the restart as JSON", |l| {
        l.contains("command.completed") && l.contains("PING")
    })
    .await;
    let event: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(event["data"]["type"], "PING");
}
