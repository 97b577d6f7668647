//! The admin commands of the `fleetmq` binary (`device`, `command`, `config`, `clients`)
//! against a real `fleetmq serve` over its admin API, with real MQTT devices (rumqttc)
//! where a command needs an answer or a client must be connected. Checks the human
//! output, that `--json` output parses, and the documented exit codes.

use crate::support;

use rumqttc::{Event, Packet};
use serde_json::json;
use tokio::time::Instant;

use support::cli::{answer_commands, run, Tail};
use support::{fleetmq, free_ports, Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_provisioned_listed_shown_rotated_and_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;

    let out = server
        .run(&[
            "device", "add", "sensor-1", "--label", "site=lab", "--label", "floor=2",
        ])
        .await
        .ok();
    assert!(out.stdout.contains("id:"), "{out:#?}");
    assert!(out.stdout.contains("floor=2,site=lab"), "{out:#?}");
    assert!(out.stdout.contains("password:"), "{out:#?}");
    assert!(out.stderr.contains("shown only this once"), "{out:#?}");

    let out = server
        .run(&["device", "add", "sensor-2", "--encrypted", "--json"])
        .await
        .ok();
    let added = out.json();
    assert_eq!(added["device"]["id"], "sensor-2");
    assert_eq!(added["device"]["encrypted"], true);
    assert_eq!(added["key"]["generation"], 1);
    assert!(
        added["credentials"]["password"].as_str().is_some(),
        "{added}"
    );

    // The table has a header and both devices.
    let out = server.run(&["device", "list"]).await.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out:#?}");
    assert!(lines.iter().any(|l| l.starts_with("sensor-1 ")), "{out:#?}");
    assert!(lines.iter().any(|l| l.starts_with("sensor-2 ")), "{out:#?}");

    let out = server
        .run(&[
            "device", "list", "--label", "site:lab", "--online", "false", "--json",
        ])
        .await
        .ok();
    let page = out.json();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["sensor-1"], "{out:#?}");
    let out = server
        .run(&["device", "list", "--online", "true", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["items"], json!([]), "{out:#?}");

    let out = server.run(&["device", "show", "sensor-1"]).await.ok();
    assert!(out.stdout.contains("plugin:"), "{out:#?}");
    assert!(out.stdout.contains("json"), "{out:#?}");
    let out = server
        .run(&["device", "show", "sensor-1", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["labels"], json!({"site": "lab", "floor": "2"}));

    // Rotations print the new secret once.
    let first = added["credentials"]["password"].as_str().expect("password");
    let out = server
        .run(&["device", "rotate-credentials", "sensor-2", "--json"])
        .await
        .ok();
    let rotated = out.json();
    assert_ne!(rotated["credentials"]["password"].as_str(), Some(first));
    assert!(out.stderr.contains("shown only this once"), "{out:#?}");
    let out = server.run(&["device", "rotate-key", "sensor-2"]).await.ok();
    assert!(out.stdout.contains("key_generation:"), "{out:#?}");
    let out = server
        .run(&["device", "show", "sensor-2", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["key_generation"], 2);

    // Errors name the device, the status and the API's code; exit 1.
    let out = server.run(&["device", "show", "sensor-9"]).await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(
        out.stderr.trim(),
        r#"error: device "sensor-9" not found (404 not_found)"#
    );
    let out = server.run(&["device", "add", "sensor-1"]).await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("(409 conflict)"), "{out:#?}");
    let out = server.run(&["device", "add", "bad id!"]).await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("(422 unprocessable)"), "{out:#?}");

    // Usage errors exit 2 before anything is sent.
    let out = server
        .run(&["device", "add", "sensor-3", "--label", "novalue"])
        .await;
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("KEY=VALUE"), "{out:#?}");

    let out = server.run(&["device", "rm", "sensor-1"]).await.ok();
    assert_eq!(out.stdout.trim(), "deleted device sensor-1");
    let out = server.run(&["device", "show", "sensor-1"]).await;
    assert_eq!(out.code, 1, "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_send_waits_for_a_real_device_to_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let password = server.provision("display-1").await;
    let (client, events) = server.device("display-1", &password).await;
    answer_commands(client, events, "display-1".into(), json!({"reloaded": 3}));

    let out = server
        .run(&[
            "command",
            "send",
            "display-1",
            "RELOAD",
            "--params",
            r#"{"force":true}"#,
            "--metadata",
            r#"{"job_id": "123"}"#,
            "--json",
            "--wait",
            "20",
        ])
        .await
        .ok();
    let record = out.json();
    assert_eq!(record["status"], "completed", "{out:#?}");
    assert_eq!(record["result"], json!({"reloaded": 3}));
    assert_eq!(record["params"], json!({"force": true}));
    // Metadata comes back exactly as given, spacing included.
    assert!(
        out.stdout.contains(r#""metadata":{"job_id": "123"}"#),
        "{out:#?}"
    );
    let cid = record["command_id"]
        .as_str()
        .expect("command id")
        .to_owned();

    let out = server.run(&["command", "show", &cid]).await.ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("status:") && l.ends_with("completed")),
        "{out:#?}"
    );
    assert!(out.stdout.contains(r#"{"reloaded":3}"#), "{out:#?}");

    // Human output of a waited send, with the default wait.
    let out = server
        .run(&["command", "send", "display-1", "PING", "--wait"])
        .await
        .ok();
    assert!(out.stdout.contains("completed"), "{out:#?}");

    let out = server
        .run(&["command", "list", "display-1", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["items"].as_array().expect("items").len(), 2);
    let out = server.run(&["command", "list", "display-1"]).await.ok();
    assert!(out.stdout.starts_with("COMMAND ID"), "{out:#?}");
    assert!(out.stdout.contains(&cid), "{out:#?}");

    // A device that is not connected: the command stays queued; a short wait exits 4
    // and prints the record; it can then be cancelled, once.
    server.provision("display-2").await;
    let out = server
        .run(&[
            "command",
            "send",
            "display-2",
            "RELOAD",
            "--wait",
            "1",
            "--json",
        ])
        .await;
    assert_eq!(out.code, 4, "{out:#?}");
    let record = out.json();
    assert_eq!(record["status"], "queued");
    assert!(out.stderr.contains("still queued"), "{out:#?}");
    let queued = record["command_id"].as_str().expect("command id");
    // The command's id was said when the wait began.
    assert!(
        out.stderr.contains(&format!(
            "command {queued} for display-2 is queued; waiting up to 1 s"
        )),
        "{out:#?}"
    );
    let out = server
        .run(&["command", "cancel", queued, "--json"])
        .await
        .ok();
    assert_eq!(out.json()["status"], "cancelled");
    let out = server.run(&["command", "cancel", queued]).await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("(409 conflict)"), "{out:#?}");

    // Without --wait the answer comes at once.
    let out = server
        .run(&["command", "send", "display-2", "RELOAD"])
        .await
        .ok();
    assert!(out.stdout.contains("queued"), "{out:#?}");

    let out = server
        .run(&[
            "command",
            "send",
            "display-2",
            "RELOAD",
            "--params",
            "{nope",
        ])
        .await;
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("--params"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_set_and_read_and_clients_are_listed_and_kicked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let password = server.provision("tracker-1").await;

    let out = server
        .run(&["config", "set", "tracker-1", r#"{"interval_s":5}"#])
        .await
        .ok();
    assert!(out.stdout.contains("version 1"), "{out:#?}");
    let file = dir.path().join("config.json");
    std::fs::write(&file, r#"{"interval_s": 10, "gps": {"enabled": true}}"#).expect("write");
    let at_file = format!("@{}", file.display());
    let out = server
        .run(&["config", "set", "tracker-1", &at_file, "--json"])
        .await
        .ok();
    assert_eq!(out.json()["version"], 2);
    let out = server
        .run(&["config", "get", "tracker-1", "--json"])
        .await
        .ok();
    let view = out.json();
    assert_eq!(view["version"], 2);
    assert_eq!(
        view["config"],
        json!({"interval_s": 10, "gps": {"enabled": true}})
    );
    let out = server.run(&["config", "get", "tracker-1"]).await.ok();
    assert!(out.stdout.starts_with("version:"), "{out:#?}");
    assert!(out.stdout.contains("\"enabled\": true"), "{out:#?}");
    let out = server.run(&["config", "set", "tracker-1", "[1]"]).await;
    assert_eq!(out.code, 2, "{out:#?}");

    // A connected device shows up in `clients` and can be kicked.
    let (_client, mut events) = server.device("tracker-1", &password).await;
    let out = server.run(&["clients"]).await.ok();
    assert!(out.stdout.starts_with("CLIENT ID"), "{out:#?}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("tracker-1 ")),
        "{out:#?}"
    );
    let out = server.run(&["clients", "--json"]).await.ok();
    let clients = out.json();
    let entry = clients["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["client_id"] == "tracker-1")
        .cloned()
        .expect("tracker-1 listed");
    assert_eq!(entry["kind"], "device");

    // `clients show`: its subscription and counters.
    let out = server.run(&["clients", "show", "tracker-1"]).await.ok();
    assert!(out.stdout.starts_with("client_id:"), "{out:#?}");
    assert!(out.stdout.contains("device/tracker-1/command"), "{out:#?}");
    assert!(out.stdout.contains("messages_in:"), "{out:#?}");
    assert!(out.stdout.contains("FILTER"), "{out:#?}");
    let shown = server
        .run(&["clients", "show", "tracker-1", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["subscriptions"][0]["qos"], 1, "{shown}");
    assert!(shown["counters"]["bytes_in"].as_u64() > Some(0), "{shown}");
    let out = server.run(&["clients", "show", "nobody"]).await;
    assert_eq!(out.code, 1, "{out:#?}");

    let out = server.run(&["clients", "kick", "tracker-1"]).await.ok();
    assert_eq!(out.stdout.trim(), "disconnected tracker-1");
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("the kicked device sees its connection end")
        {
            Err(_) | Ok(Event::Incoming(Packet::Disconnect)) => break,
            Ok(_) => {}
        }
    }
    let out = server.run(&["clients", "kick", "nobody"]).await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("(404 not_found)"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_and_key_come_from_the_serve_config_and_failures_have_their_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;

    // No URL, no key: both come from the config `serve` reads, with 0.0.0.0 as loopback
    // and the key from <data_dir>/admin.key.
    let config = dir.path().join("fleetmq.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[admin]\nlisten = \"0.0.0.0:{}\"\n",
            server.data.display().to_string(),
            server.admin.port()
        ),
    )
    .expect("write config");
    let mut cmd = fleetmq();
    cmd.args(["device", "list", "--json", "--config"])
        .arg(&config);
    let out = run(cmd).await.ok();
    assert_eq!(out.json()["items"], json!([]));
    // The same through the environment `serve` reads.
    let mut cmd = fleetmq();
    cmd.args(["clients"])
        .env(
            "FLEETMQ_ADMIN_LISTEN",
            format!("0.0.0.0:{}", server.admin.port()),
        )
        .env("FLEETMQ_DATA_DIR", &server.data);
    run(cmd).await.ok();

    // A wrong key: exit 3, and the message says so.
    let mut cmd = server.cli(&["device", "list"]);
    cmd.env("FLEETMQ_API_KEY", "not-the-admin-key-at-all");
    let out = run(cmd).await;
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(out.stderr.starts_with("error: "), "{out:#?}");
    assert!(out.stderr.contains("401 unauthorized"), "{out:#?}");
    // No key anywhere: exit 3 naming the file it looked for.
    let mut cmd = fleetmq();
    cmd.args(["device", "list", "--url", &server.url()])
        .env("FLEETMQ_DATA_DIR", dir.path().join("nowhere"));
    let out = run(cmd).await;
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(out.stderr.contains("admin.key"), "{out:#?}");

    // Nothing listening: exit 3, naming the URL.
    let closed = free_ports(1)[0];
    let mut cmd = fleetmq();
    cmd.args(["device", "list", "--api-key", "whatever-key-0123456789"])
        .args(["--url", &format!("http://{closed}")]);
    let out = run(cmd).await;
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(
        out.stderr.starts_with(&format!(
            "error: cannot reach the admin API at http://{closed}"
        )),
        "{out:#?}"
    );

    // A bad config file is a usage error naming the key.
    std::fs::write(&config, "[admin]\nlistn = \"x\"\n").expect("write config");
    let mut cmd = fleetmq();
    cmd.args(["device", "list", "--config"]).arg(&config);
    let out = run(cmd).await;
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("listn"), "{out:#?}");

    let mut cmd = fleetmq();
    cmd.arg("--help");
    let out = run(cmd).await.ok();
    for needle in ["serve", "device", "command", "config", "clients", "events"] {
        assert!(
            out.stdout.contains(needle),
            "--help lacks {needle}: {out:#?}"
        );
    }
}

/// Issue 18: `command send --wait` says which command it waits for before the wait,
/// and global flags may come before the command; the wait ends as soon as the command
/// does (here: cancelled through the API while the CLI waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_send_names_its_command_at_once_and_ends_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    server.provision("display-9").await;
    // The flags before the command, and a wrong key in the environment they override.
    let url = server.url();
    let argv = [
        "--url",
        &url,
        "--api-key",
        &server.key,
        "command",
        "send",
        "display-9",
        "RELOAD",
        "--wait",
        "30",
    ];
    let mut cmd = server.cli(&argv);
    cmd.env("FLEETMQ_API_KEY", "wrong")
        .env("FLEETMQ_ADMIN_URL", "http://127.0.0.1:9");
    let mut tail = Tail::spawn(cmd);
    let line = Tail::expect(&mut tail.err, "the waiting line", |l| {
        l.contains("for display-9 is queued; waiting up to 30 s")
    })
    .await;
    let id = line
        .strip_prefix("command ")
        .and_then(|rest| rest.split(' ').next())
        .expect("command id")
        .to_owned();
    let (status, record) = server
        .api("DELETE", &format!("/api/v1/commands/{id}"), None)
        .await;
    assert_eq!(status, 200, "{record}");
    Tail::expect(&mut tail.err, "the outcome", |l| {
        l.contains(&format!("error: command {id} ended cancelled"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_events_are_listed_newest_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let password = server.provision("door-1").await;
    let (client, mut events) = server.device("door-1", &password).await;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for (n, kind) in ["door_open", "boot", "door_open"].iter().enumerate() {
        let payload = json!({"type": kind, "n": n}).to_string();
        client
            .publish(
                "device/door-1/events",
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("queue publish");
    }
    let deadline = Instant::now() + WAIT;
    let all = loop {
        let out = server
            .run(&["device", "events", "door-1", "--json"])
            .await
            .ok();
        let items = out.json()["items"].as_array().expect("items").clone();
        if items.len() == 3 || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ns: Vec<_> = all.iter().map(|e| e["data"]["n"].clone()).collect();
    assert_eq!(ns, [json!(2), json!(1), json!(0)]);

    let out = server
        .run(&[
            "device",
            "events",
            "door-1",
            "--type",
            "door_open",
            "--limit",
            "1",
            "--json",
        ])
        .await
        .ok();
    let page = out.json();
    assert_eq!(page["items"][0]["data"]["n"], 2);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let out = server
        .run(&[
            "device",
            "events",
            "door-1",
            "--type",
            "door_open",
            "--cursor",
            &cursor,
        ])
        .await
        .ok();
    assert!(out.stdout.starts_with("AT"), "{out:#?}");
    assert!(out.stdout.contains(r#""n":0"#), "{out:#?}");
    assert!(!out.stdout.contains("boot"), "{out:#?}");

    let out = server.run(&["device", "events", "nobody"]).await;
    assert_eq!(out.code, 1, "an unknown device is an API error: {out:#?}");
}
