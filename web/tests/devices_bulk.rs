//! `POST /api/v1/devices/bulk` (SPEC §8) over real HTTP: 10,000 devices in one request,
//! per-item errors that do not stop the others, whole-request refusals that create
//! nothing, and created devices connecting over MQTT with their tokens.

use std::time::Instant;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api::{test_app, TestApp};

const BULK: &str = "/api/v1/devices/bulk";

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|item| item["device"]["id"].as_str().expect("device id"))
        .collect()
}

/// `(index, id, code)` of every error.
fn errors(body: &Value) -> Vec<(u64, Option<&str>, &str)> {
    body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().expect("index"),
                e["id"].as_str(),
                e["error"]["code"].as_str().expect("code"),
            )
        })
        .collect()
}

async fn connects(app: &TestApp, created: &Value) {
    let id = created["credentials"]["username"].as_str().unwrap();
    let password = created["credentials"]["password"].as_str().unwrap();
    assert_eq!(created["device"]["id"], id);
    let (client, _events) = app.mqtt_connect(id, id, password).await;
    client.disconnect().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_devices_in_one_request() {
    let app = test_app().await;
    let devices: Vec<Value> = (0..10_000)
        .map(|i| match i % 3 {
            0 => json!({"id": format!("fleet-{i:05}")}),
            1 => json!({"id": format!("fleet-{i:05}"), "labels": {"site": "lab", "n": i.to_string()}}),
            _ => json!({"id": format!("fleet-{i:05}"), "plugin": "json", "encrypted": true}),
        })
        .collect();
    let body = json!({ "devices": devices }).to_string();
    let started = Instant::now();
    let answer = app.raw_post(BULK, &body).await;
    let took = started.elapsed();
    eprintln!(
        "POST {BULK} with 10,000 devices ({} KiB): {took:?}",
        body.len() / 1024
    );
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "{}",
        answer.body["errors"]
    );
    assert_eq!(answer.body["errors"], json!([]));
    let created = answer.body["created"].as_array().unwrap();
    assert_eq!(created.len(), 10_000);
    assert_eq!(
        ids(&answer.body["created"])[..2],
        ["fleet-00000", "fleet-00001"]
    );
    assert_eq!(
        created[1]["device"]["labels"],
        json!({"site": "lab", "n": "1"})
    );
    assert_eq!(created[2]["key"]["generation"], 1);
    assert!(created[0].get("key").is_none());
    assert_eq!(app.device_count().await, 10_000);
    // PBKDF2 would have taken minutes; a keyed hash each takes about a second in all.
    assert!(took.as_secs() < 60, "{took:?}");

    for i in [0, 4_321, 9_999] {
        connects(&app, &created[i]).await;
    }
    let token = created[7]["credentials"]["password"].as_str().unwrap();
    assert!(app.token_verifies("fleet-00007", token).await);
    assert!(app.mqtt_refused("fleet-00008", "fleet-00008", token).await);
    app.stop().await;
}

#[tokio::test]
async fn one_bad_item_does_not_stop_the_others() {
    let app = test_app().await;
    app.provision("taken").await;
    let svc = json!({"name": "svc", "password": "long-enough-password", "rules": []});
    let answer = app.post("/api/v1/service-clients", svc).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let items = json!([
        {"id": "a", "labels": {"site": "lab"}},
        {"id": "bad id!"},
        {"id": "a"},
        {"id": "taken"},
        {"id": "p", "plugin": "nope"},
        {"id": "l", "labels": {"a:b": "x"}},
        42,
        {"plugin": "json"},
        {"id": "u", "colour": "red"},
        {"id": "svc"},
        {"id": "b", "encrypted": true},
    ]);
    let answer = app.post(BULK, json!({ "devices": items })).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(ids(&answer.body["created"]), ["a", "b"]);
    assert_eq!(
        errors(&answer.body),
        [
            (1, Some("bad id!"), "unprocessable"),
            (2, Some("a"), "conflict"),
            (3, Some("taken"), "conflict"),
            (4, Some("p"), "unprocessable"),
            (5, Some("l"), "unprocessable"),
            (6, None, "unprocessable"),
            (7, None, "unprocessable"),
            (8, Some("u"), "unprocessable"),
            (9, Some("svc"), "conflict"),
        ]
    );
    let message = |i: usize| {
        answer.body["errors"][i]["error"]["message"]
            .as_str()
            .unwrap()
    };
    assert!(message(1).contains("more than once") && message(1).contains("item 0"));
    assert!(message(2).contains("already exists"), "{}", message(2));
    assert!(message(7).contains("colour"), "{}", message(7));
    // Each item fails as `POST /api/v1/devices` would fail it.
    let single = app
        .post("/api/v1/devices", json!({"id": "p", "plugin": "nope"}))
        .await;
    assert_eq!(single.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(single.body["error"]["message"], message(3));

    let created = &answer.body["created"];
    assert_eq!(created[0]["device"]["labels"], json!({"site": "lab"}));
    assert_eq!(created[1]["key"]["generation"], 1);
    assert_eq!(app.device_count().await, 3);
    connects(&app, &created[0]).await;
    connects(&app, &created[1]).await;
    app.stop().await;
}

#[tokio::test]
async fn a_refused_request_creates_nothing() {
    let app = test_app().await;
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"id": format!("d{i}")}))
        .collect();
    let answer = app.post(BULK, json!({ "devices": too_many })).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), "payload_too_large");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("10001") && message.contains("10000"),
        "{message}"
    );

    let huge = format!(
        r#"{{"devices":[{{"id":"x","plugin":"{}"}}]}}"#,
        "a".repeat(17 << 20)
    );
    let answer = app.raw_post(BULK, &huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    for (body, status) in [
        ("{", StatusCode::BAD_REQUEST),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"devices":5}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"[{"id":"a"}]"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"devices":[],"x":1}"#, StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        assert_eq!(app.raw_post(BULK, body).await.status, status, "{body}");
    }
    assert_eq!(app.device_count().await, 0);

    // Nothing to create, or nothing created: 200.
    let answer = app.post(BULK, json!({"devices": []})).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!({"created": [], "errors": []}));
    let answer = app
        .post(BULK, json!({"devices": [{"id": "no/slash"}]}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        errors(&answer.body),
        [(0, Some("no/slash"), "unprocessable")]
    );
    assert_eq!(app.device_count().await, 0);
    app.stop().await;
}

/// `bulk` is a valid device id: only `POST` on that path is the bulk route.
#[tokio::test]
async fn a_device_called_bulk_is_still_a_device() {
    let app = test_app().await;
    app.provision("bulk").await;
    let answer = app.get(BULK).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["id"], "bulk");
    let answer = app.call(Method::PUT, BULK, Some(json!({}))).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let answer = app.call(Method::DELETE, BULK, None).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(app.device_count().await, 0);
    app.stop().await;
}
