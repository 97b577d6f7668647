//! The CLI commands of issue 18 against a real `fleetmq serve`: `telemetry`, `events
//! --history`/`--since`, `service-client`, `publish`, `subscribe` and `stats`, each
//! checked by its output and by what it did (an MQTT client that connects with the
//! service client's credentials, a retained message a subscriber gets), and errors that
//! name the admin URL and where the key came from.

use crate::support;

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::time::Instant;

use support::cli::{run, Run, Tail};
use support::{fleetmq, Server, WAIT};

/// Runs `args` until `done` accepts the run; panics after [`WAIT`].
async fn until(server: &Server, args: &[&str], done: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = server.run(args).await.ok();
        if done(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never as wanted: {out:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `events` until CONNACK (`Ok`) or the connection fails (`Err`).
async fn connack(events: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        let event = tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("CONNACK in time")?;
        if let Event::Incoming(Packet::ConnAck(_)) = event {
            return Ok(());
        }
    }
}

/// The next PUBLISH's topic and payload.
async fn next_message(events: &mut EventLoop) -> (String, String) {
    loop {
        let event = tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("a message in time")
            .expect("connection");
        if let Event::Incoming(Packet::Publish(p)) = event {
            return (p.topic, String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
}

fn service_client(server: &Server, name: &str, password: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(format!("{name}-test"), "127.0.0.1", server.mqtt.port());
    options.set_credentials(name, password);
    AsyncClient::new(options, 16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_event_history_are_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let password = server.provision("tel-1").await;
    let (device, events) = server.device("tel-1", &password).await;
    let driver = tokio::spawn(async move {
        let mut events = events;
        while events.poll().await.is_ok() {}
    });
    for (topic, payload) in [
        ("device/tel-1/telemetry", r#"{"cpu":40,"temp":20.5}"#),
        ("device/tel-1/telemetry", r#"{"cpu":41}"#),
        ("device/tel-1/events", r#"{"type":"door_open","door":2}"#),
        ("device/tel-1/events", r#"{"type":"boot"}"#),
    ] {
        device
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
    }

    let page = until(&server, &["telemetry", "tel-1", "--json"], |r| {
        r.json()["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await
    .json();
    assert_eq!(
        page["items"][0]["values"]["cpu"], 41,
        "newest first: {page}"
    );
    let table = server.run(&["telemetry", "tel-1"]).await.ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TS", "cpu", "temp"], "{table:#?}");
    let newest: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(newest[1..], ["41", "-"], "{table:#?}");
    let oldest: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(oldest[1..], ["40", "20.5"], "{table:#?}");
    let one = server
        .run(&[
            "telemetry",
            "tel-1",
            "--keys",
            "temp",
            "--limit",
            "1",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(one["items"][0]["values"], serde_json::json!({"temp": 20.5}));
    let latest = server.run(&["telemetry", "tel-1", "--latest"]).await.ok();
    assert!(latest.stdout.starts_with("KEY"), "{latest:#?}");
    let row = |key: &str| {
        (latest.stdout.lines())
            .find(|l| l.starts_with(key))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
    };
    assert_eq!(row("cpu").as_deref(), Some("41"), "{latest:#?}");
    assert_eq!(row("temp").as_deref(), Some("20.5"), "{latest:#?}");
    let missing = server.run(&["telemetry", "nope"]).await;
    assert_eq!(missing.code, 1, "{missing:#?}");

    // History: what the device published on its events topic, newest first.
    let args = ["events", "--history", "--device", "tel-1", "--json"];
    let page = until(&server, &args, |r| {
        r.json()["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await
    .json();
    assert_eq!(page["items"][0]["type"], "boot", "{page}");
    let table = server
        .run(&[
            "events",
            "--history",
            "--device",
            "tel-1",
            "--type",
            "door_open",
        ])
        .await
        .ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{table:#?}");
    assert!(lines[0].starts_with("AT"), "{table:#?}");
    assert!(lines[1].contains("door_open") && lines[1].contains(r#""door":2"#));
    // --since replays the buffered stream events after an id: all of them after "0",
    // only the later one after the first's id.
    let since = |id: &str| {
        let args = ["events", "--json", "--type", "device.event", "--since", id];
        Tail::spawn(server.cli(&args))
    };
    let mut all = since("0");
    let first = Tail::expect(&mut all.out, "replayed", |l| l.contains("door_open")).await;
    let first: Value = serde_json::from_str(&first).expect("JSON");
    let mut after = since(first["id"].as_str().expect("an event id"));
    let next = Tail::expect(&mut after.out, "replayed", |_| true).await;
    assert!(next.contains(r#""type":"boot""#), "{next}");
    let pattern = ["events", "--history", "--device", "tel-1", "--type", "d*"];
    assert_eq!(server.run(&pattern).await.code, 2);
    assert_eq!(server.run(&["events", "--history"]).await.code, 2);
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_clients_publish_subscribe_and_stats() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let mqtt = server.mqtt.to_string();

    let out = server
        .run(&[
            "service-client",
            "add",
            "backend",
            "--password",
            "a-long-secret",
            "--rule",
            "deny:subscribe:site/secret",
            "--rule",
            "allow:all:site/#",
        ])
        .await
        .ok();
    assert!(out.stdout.starts_with("created service client backend"));
    assert!(!out.stdout.contains("a-long-secret"), "{out:#?}");
    assert!(
        out.stdout.contains("deny    subscribe  site/secret"),
        "{out:#?}"
    );
    let bare = server
        .run(&["service-client", "add", "mute", "--password", "12345678"])
        .await
        .ok();
    assert!(bare.stderr.contains("no rules"), "{bare:#?}");
    let short = (server.run(&["service-client", "add", "x", "--password", "short"])).await;
    assert_eq!(short.code, 1, "{short:#?}");

    let list = server.run(&["service-client", "list"]).await.ok();
    assert!(list.stdout.starts_with("NAME"), "{list:#?}");
    assert!(list
        .stdout
        .contains("backend  deny:subscribe:site/secret,allow:all:site/#"));
    let shown = (server.run(&["service-client", "show", "backend", "--json"])).await;
    let shown = shown.ok().json();
    assert_eq!(shown["rules"][1]["topic"], "site/#", "{shown}");
    let none = server.run(&["service-client", "show", "nope"]).await;
    assert_eq!(none.code, 1, "{none:#?}");

    // update: new rules (the same ones, in a new order and back), and a new password.
    let out = server
        .run(&[
            "service-client",
            "update",
            "backend",
            "--rule",
            "allow:all:site/#",
        ])
        .await
        .ok();
    assert!(
        out.stdout.starts_with("updated service client backend"),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("site/secret"), "{out:#?}");
    let back = [
        "service-client",
        "update",
        "backend",
        "--rule",
        "deny:subscribe:site/secret",
        "--rule",
        "allow:all:site/#",
        "--json",
    ];
    let back = server.run(&back).await.ok().json();
    assert_eq!(back["rules"][0]["topic"], "site/secret", "{back}");
    let rotated = server
        .run(&["service-client", "update", "mute", "--rotate-password"])
        .await
        .ok();
    assert!(rotated.stdout.contains("password:"), "{rotated:#?}");
    assert!(rotated.stdout.contains("shown once"), "{rotated:#?}");
    let nothing = server.run(&["service-client", "update", "mute"]).await;
    assert_eq!(nothing.code, 2, "{nothing:#?}");
    assert!(nothing.stderr.contains("nothing to change"), "{nothing:#?}");
    let unknown = (server.run(&["service-client", "update", "nope", "--no-rules"])).await;
    assert_eq!(unknown.code, 1, "{unknown:#?}");

    // publish: retained, then a `subscribe` started later gets it, as a service client.
    let out = server
        .run(&["publish", "site/a", r#"{"x": 1}"#, "--retain", "--qos", "1"])
        .await
        .ok();
    assert_eq!(
        out.stdout.trim(),
        "published 8 bytes to site/a (qos 1, retained)"
    );
    // The address from `serve`'s own setting (mqtt.tcp), the credentials from the
    // environment: none of these variables upsets the config loader.
    let mut cmd = server.cli(&["subscribe", "site/#", "-C", "1"]);
    cmd.env("FLEETMQ_MQTT_TCP", &mqtt)
        .env("FLEETMQ_MQTT_USERNAME", "backend")
        .env("FLEETMQ_MQTT_PASSWORD", "a-long-secret");
    let out = run(cmd).await.ok();
    assert_eq!(out.stdout, "site/a {\"x\": 1}\n", "{out:#?}");

    // A live subscriber (--json) sees what is published after it subscribed.
    let mut cmd = server.cli(&["subscribe", "site/+/live", "--mqtt", &mqtt, "--json"]);
    cmd.args(["-u", "backend", "-P", "a-long-secret"]);
    let mut tail = Tail::spawn(cmd);
    Tail::expect(&mut tail.err, "subscribed", |l| l.contains("subscribed")).await;
    server.run(&["publish", "site/1/live", "hello"]).await.ok();
    let line = Tail::expect(&mut tail.out, "the message", |_| true).await;
    let message: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(message["topic"], "site/1/live");
    assert_eq!(message["payload"], "hello");
    assert_eq!(message["retain"], false);

    // The ACL applies: a denied filter and a wrong password are errors.
    let denied = ["subscribe", "site/secret", "--mqtt", &mqtt, "-u", "backend"];
    let mut cmd = server.cli(&denied);
    cmd.args(["-P", "a-long-secret"]);
    let out = run(cmd).await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out
        .stderr
        .contains("refused the subscription to site/secret"));
    let mut cmd = server.cli(&["subscribe", "site/#", "--mqtt", &mqtt]);
    cmd.args(["-u", "backend", "-P", "wrong-password"]);
    let out = run(cmd).await;
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(out.stderr.contains("refused the connection as \"backend\""));

    // An MQTT client of its own with the service client's credentials: allowed, and
    // gets what `publish` sends.
    let (client, mut events) = service_client(&server, "backend", "a-long-secret");
    connack(&mut events).await.expect("backend connects");
    client.subscribe("site/b", QoS::AtLeastOnce).await.unwrap();
    loop {
        let event = events.poll().await.expect("connection");
        if let Event::Incoming(Packet::SubAck(_)) = event {
            break;
        }
    }
    server
        .run(&["publish", "site/b", "two", "--qos", "1"])
        .await
        .ok();
    assert_eq!(
        next_message(&mut events).await,
        ("site/b".into(), "two".into())
    );

    // stats: a table of dotted names; the connected service clients are counted.
    let stats = server.run(&["stats", "--json"]).await.ok().json();
    let current = stats["connections"]["service_clients"].as_u64().unwrap();
    assert!(current >= 2, "{stats}");
    let table = server.run(&["stats"]).await.ok();
    assert!(table.stdout.starts_with("NAME"), "{table:#?}");
    let row = (table.stdout.lines())
        .find(|l| l.starts_with("connections.service_clients "))
        .unwrap_or_else(|| panic!("{table:#?}"));
    assert_eq!(
        row.split_whitespace().nth(1),
        Some(current.to_string().as_str())
    );
    let some = server.run(&["stats", "connections.service"]).await.ok();
    assert_eq!(some.stdout.lines().count(), 2, "{some:#?}");
    assert_eq!(server.run(&["stats", "nothing.like.this"]).await.code, 2);

    // delete: its connections are closed, and it cannot connect again.
    let out = server.run(&["service-client", "rm", "backend"]).await.ok();
    assert!(out.stdout.contains("deleted service client backend"));
    let deadline = Instant::now() + WAIT;
    while tokio::time::timeout_at(deadline, events.poll())
        .await
        .expect("closed in time")
        .is_ok()
    {}
    let (_client, mut again) = service_client(&server, "backend", "a-long-secret");
    assert!(connack(&mut again).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_url_and_the_keys_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;

    let mut cmd = server.cli(&["stats"]);
    cmd.env("FLEETMQ_API_KEY", "not-the-admin-key-at-all");
    let out = run(cmd).await;
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(out.stderr.contains(&server.url()), "{out:#?}");
    assert!(out.stderr.contains("came from FLEETMQ_API_KEY"), "{out:#?}");

    // Another directory's admin.key: the message names that file.
    let other = dir.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("admin.key"), "some-other-brokers-key\n").unwrap();
    let mut cmd = fleetmq();
    cmd.args(["stats", "--url", &server.url()])
        .env("FLEETMQ_DATA_DIR", &other);
    let out = run(cmd).await;
    assert_eq!(out.code, 3, "{out:#?}");
    let file = other.join("admin.key").display().to_string();
    assert!(
        out.stderr.contains(&format!("came from {file}")),
        "{out:#?}"
    );

    // A viewer key refused a change (403): the URL and the key's source again.
    let key = server
        .run(&["key", "create", "ro", "--role", "viewer", "--json"])
        .await
        .ok()
        .json();
    let viewer = key["secret"].as_str().expect("the secret").to_owned();
    let out = server
        .run(&["publish", "x/y", "z", "--api-key", &viewer])
        .await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("403"), "{out:#?}");
    assert!(out.stderr.contains("came from --api-key"), "{out:#?}");

    // `command send --wait` off a terminal: the id at once, no progress line.
    let password = server.provision("quiet-1").await;
    let (_device, _events) = server.device("quiet-1", &password).await;
    let out = server
        .run(&["command", "send", "quiet-1", "PING", "--wait", "1"])
        .await;
    assert_eq!(out.code, 4, "{out:#?}");
    assert!(out.stderr.contains("waiting up to 1 s"), "{out:#?}");
    assert!(!out.stderr.contains('\r'), "{out:#?}");
    // On a terminal (util-linux `script` gives it one): a progress line redrawn in place.
    let line = format!("{} command send quiet-1 PING --wait 2", support::BIN);
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("FLEETMQ_ADMIN_URL", server.url())
        .env("FLEETMQ_API_KEY", &server.key)
        .stdin(std::process::Stdio::null());
    let out = run(cmd).await;
    assert_eq!(out.code, 4, "{out:#?}");
    assert!(out.stdout.contains("\r\x1b[2K| waiting for "), "{out:#?}");
    // The status shown is the one last read (queued or sent: the device never answers).
    assert!(out.stdout.contains(" (1 s)"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_through_the_admin_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    // No MQTT credentials: the admin key of `serve`'s data directory.
    let cmd = server.cli(&["subscribe", "--api", "site/+/live", "--json", "-C", "2"]);
    let mut tail = Tail::spawn(cmd);
    Tail::expect(&mut tail.err, "subscribed", |l| l.contains("subscribed")).await;
    server.run(&["publish", "other/x", "not this"]).await.ok();
    server.run(&["publish", "site/1/live", "hello"]).await.ok();
    let line = Tail::expect(&mut tail.out, "the message", |_| true).await;
    let message: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(message["topic"], "site/1/live", "{message}");
    assert_eq!(message["payload"], "hello");
    assert_eq!(message["qos"], 0);

    // The text form; the process ends after -C messages.
    let cmd = server.cli(&["subscribe", "--api", "site/#", "-C", "1"]);
    let mut tail = Tail::spawn(cmd);
    Tail::expect(&mut tail.err, "subscribed", |l| l.contains("subscribed")).await;
    server.run(&["publish", "site/text", "x y"]).await.ok();
    let line = Tail::expect(&mut tail.out, "the message", |_| true).await;
    assert_eq!(line, "site/text x y");

    // One filter only; a bad filter is the API's 422.
    let out = server.run(&["subscribe", "--api", "a/#", "b/#"]).await;
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.contains("--api follows one topic filter"),
        "{out:#?}"
    );
    let out = server.run(&["subscribe", "--api", "a/#/b"]).await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("invalid topic filter"), "{out:#?}");
}
