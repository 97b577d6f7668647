//! `GET /api/v1/subscribe`: live MQTT messages as server-sent events, over real HTTP
//! and real MQTT against a real broker.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rumqttc::{AsyncClient, QoS};
use serde_json::{json, Value};

use crate::api::{test_app, TestApp, API_KEY};

const PATIENCE: Duration = Duration::from_secs(10);

/// An open subscription stream read event by event.
struct Live {
    body: hyper::body::Incoming,
    buf: String,
}

/// Opens `/api/v1/subscribe?filter=` with `key`: the stream, or the error status and body.
async fn open(app: &TestApp, filter: &str, key: &str) -> Result<Live, (StatusCode, Value)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let filter = percent_encode(filter);
    let req = Request::get(format!(
        "http://{}/api/v1/subscribe?filter={filter}",
        app.addr
    ))
    .header("x-api-key", key)
    .body(Full::new(Bytes::new()))
    .unwrap();
    let response = client.request(req).await.unwrap();
    let status = response.status();
    if status != StatusCode::OK {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        return Err((status, serde_json::from_slice(&bytes).unwrap()));
    }
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut live = Live {
        body: response.into_body(),
        buf: String::new(),
    };
    let (kind, data) = live.next().await;
    assert_eq!(kind, "subscribed");
    assert_eq!(data["filter"], filter_decoded(&filter));
    Ok(live)
}

fn percent_encode(s: &str) -> String {
    s.replace('%', "%25")
        .replace('#', "%23")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('$', "%24")
}

fn filter_decoded(s: &str) -> String {
    s.replace("%2B", "+")
        .replace("%23", "#")
        .replace("%2F", "/")
        .replace("%24", "$")
        .replace("%25", "%")
}

impl Live {
    /// The next event (type and data), skipping comments.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = Value::Null;
                for line in frame.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = k.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).expect("data is one line of JSON");
                    }
                }
                if !kind.is_empty() {
                    return (kind, data);
                }
                continue;
            }
            let next = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("no event within the patience")
                .expect("the stream ended")
                .unwrap();
            if let Ok(data) = next.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next `message` event's data.
    async fn message(&mut self) -> Value {
        let (kind, data) = self.next().await;
        assert_eq!(kind, "message", "{data}");
        data
    }
}

async fn publish(app: &TestApp, topic: &str, payload: Value) {
    let answer = app
        .post(
            "/api/v1/publish",
            json!({"topic": topic, "payload": payload, "qos": 1}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
}

/// A service client allowed to publish under `fleet/`, connected; its event loop polled.
async fn mqtt_publisher(app: &TestApp) -> AsyncClient {
    let rules = json!([{"action": "publish", "topic": "fleet/#", "allow": true}]);
    let created = app
        .post(
            "/api/v1/service-clients",
            json!({"name": "pub", "password": "pub-password", "rules": rules}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let (client, mut events) = app.mqtt_connect("pub-1", "pub", "pub-password").await;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

async fn create_key(app: &TestApp, name: &str, role: &str) -> String {
    let answer = app
        .post("/api/v1/keys", json!({"name": name, "role": role}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn mqtt_and_api_publishes_arrive_filtered_with_plus_and_hash() {
    let app = test_app().await;
    let mut plus = open(&app, "fleet/+/temp", API_KEY).await.unwrap();
    let mut hash = open(&app, "fleet/#", API_KEY).await.unwrap();
    let client = mqtt_publisher(&app).await;
    client
        .publish("fleet/a/temp", QoS::AtLeastOnce, true, &[0xff, 0x00][..])
        .await
        .unwrap();
    for live in [&mut plus, &mut hash] {
        let m = live.message().await;
        assert_eq!(m["topic"], "fleet/a/temp");
        assert_eq!(
            (m["qos"].as_u64(), m["retain"].as_bool()),
            (Some(1), Some(true))
        );
        assert_eq!(m["client_id"], "pub-1");
        assert_eq!((m["size"].as_u64(), &m["payload"]), (Some(2), &Value::Null));
        assert_eq!(m["payload_base64"], "/wA=");
        assert!(m["at"].as_str().unwrap().ends_with('Z'));
    }
    // Matches `fleet/#` only (the MQTT client's send is asynchronous: read it before the
    // API publishes); then `other/x` matches neither.
    client
        .publish("fleet/a/b/temp", QoS::AtMostOnce, false, "deep")
        .await
        .unwrap();
    let deep = hash.message().await;
    assert_eq!(
        (&deep["topic"], &deep["payload"]),
        (&json!("fleet/a/b/temp"), &json!("deep"))
    );
    publish(&app, "other/x", json!("nobody")).await;
    publish(&app, "fleet/b/temp", json!({"c": 21})).await;
    for live in [&mut hash, &mut plus] {
        let m = live.message().await;
        assert_eq!(m["topic"], "fleet/b/temp", "{m}");
        assert_eq!(m["payload"], r#"{"c":21}"#);
        assert_eq!(m["client_id"], Value::Null);
        assert_eq!(m["qos"], 1);
    }
    app.stop().await;
}

#[tokio::test]
async fn filters_are_validated_roles_checked_and_taps_limited() {
    let app = test_app().await;
    for bad in ["a/#/b", "a+", "$share/g/a"] {
        let (status, body) = open(&app, bad, API_KEY).await.err().unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(body["error"]["code"], "unprocessable", "{body}");
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{}/api/v1/subscribe", app.addr))
        .header("x-api-key", API_KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 400);

    let viewer = create_key(&app, "viewer-1", "viewer").await;
    let (status, body) = open(&app, "#", &viewer).await.err().unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    let operator = create_key(&app, "operator-1", "operator").await;

    let mut open_taps = Vec::new();
    for _ in 0..fleetmq_broker::MAX_TAPS {
        open_taps.push(open(&app, "#", &operator).await.unwrap());
    }
    let (status, body) = open(&app, "#", API_KEY).await.err().unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    // A client that goes away gives its tap back.
    drop(open_taps.pop());
    let mut again = None;
    for _ in 0..50 {
        match open(&app, "t", API_KEY).await {
            Ok(live) => {
                again = Some(live);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut again = again.expect("the closed stream's tap is free again");
    publish(&app, "t", json!("x")).await;
    assert_eq!(again.message().await["payload"], "x");
    app.stop().await;
}
