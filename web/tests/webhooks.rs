//! `/api/v1/webhooks` over real HTTP: endpoints created at runtime, config-file ones
//! read-only, and deliveries to a real local receiver listed, retried and discarded.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmq_broker::config::WebhookConfig;
use fleetmq_broker::BrokerConfig;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::api::{test_app, test_app_with, TestApp};

const PATIENCE: Duration = Duration::from_secs(10);

/// A local HTTP server that answers every POST with the current `status` and reports
/// each request's JSON body.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    rx: mpsc::UnboundedReceiver<Value>,
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let status = Arc::new(AtomicU16::new(status));
        let (tx, rx) = mpsc::unbounded_channel();
        let answer = status.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, answer) = (tx.clone(), answer.clone());
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (tx, answer) = (tx.clone(), answer.clone());
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                        let status = StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap();
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Receiver { url, status, rx }
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("no webhook request in time")
            .unwrap()
    }

    async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.rx.recv()).await.is_err()
    }
}

/// Polls `check` until it returns `Some`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn patch(app: &TestApp, path: &str, body: Value) -> crate::api::Answer {
    app.call(Method::PATCH, path, Some(body)).await
}

async fn delete(app: &TestApp, path: &str) -> crate::api::Answer {
    app.call(Method::DELETE, path, None).await
}

#[tokio::test]
async fn endpoints_are_validated_and_their_secret_is_never_shown() {
    let mut config = BrokerConfig::for_tests();
    config.fleet.webhooks = vec![WebhookConfig {
        url: "http://127.0.0.1:9/from-config".into(),
        secret: "config-secret".into(),
        events: Some(vec!["command.*".into()]),
    }];
    let app = test_app_with(config).await;

    let listed = app.get("/api/v1/webhooks").await;
    assert_eq!(listed.status, StatusCode::OK);
    let from_config = listed.body["items"][0].clone();
    assert_eq!(from_config["source"], "config");
    assert_eq!(from_config["url"], "http://127.0.0.1:9/from-config");
    assert_eq!(from_config["events"], json!(["command.*"]));
    let config_path = format!("/api/v1/webhooks/{}", from_config["id"].as_str().unwrap());
    for answer in [
        patch(&app, &config_path, json!({"enabled": false})).await,
        delete(&app, &config_path).await,
    ] {
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("config file"), "{message}");
    }

    let good = json!({"url": "http://127.0.0.1:9/api", "secret": "api-secret"});
    for (body, status) in [
        (
            json!({"url": "ftp://x/h", "secret": "s"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "http://x/h", "secret": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "http://x/h", "secret": "s", "events": ["no pe"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "http://x/h"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "http://x/h", "secret": "s", "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "http://127.0.0.1:9/from-config", "secret": "s"}),
            StatusCode::CONFLICT,
        ),
    ] {
        let answer = app.post("/api/v1/webhooks", body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
    }
    let malformed = app.raw_post("/api/v1/webhooks", "{not json").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.get("/api/v1/webhooks").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let created = app.post("/api/v1/webhooks", good).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/webhooks/{id}");
    assert_eq!(created.body["source"], "api");
    assert_eq!(created.body["enabled"], true);
    assert_eq!(created.body["events"], Value::Null);
    assert!(created.body["created_at"].is_string());
    let one = app.get(&path).await;
    assert_eq!(one.body, created.body);

    let changed = patch(
        &app,
        &path,
        json!({"events": ["device.*"], "secret": "new-secret"}),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["events"], json!(["device.*"]));
    for (body, status) in [
        (
            json!({"events": "device.*"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"url": "gopher://x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"secret": ""}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"url": "http://127.0.0.1:9/from-config"}),
            StatusCode::CONFLICT,
        ),
    ] {
        let answer = patch(&app, &path, body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
    }
    assert_eq!(
        app.get(&path).await.body,
        changed.body,
        "refused changes change nothing"
    );

    // The secret appears in no answer.
    let everything = [
        app.get("/api/v1/webhooks").await.body,
        app.get(&path).await.body,
        created.body.clone(),
        changed.body.clone(),
    ];
    for body in everything {
        let text = body.to_string();
        assert!(!text.contains("secret"), "{text}");
    }

    assert_eq!(
        app.get("/api/v1/webhooks/wh-nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        patch(&app, "/api/v1/webhooks/wh-nope", json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let limited = app.get("/api/v1/webhooks?limit=1").await;
    assert_eq!(limited.body["items"].as_array().unwrap().len(), 1);
    let cursor = limited.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = app.get(&format!("/api/v1/webhooks?cursor={cursor}")).await;
    assert_eq!(rest.body["items"][0]["id"], id.as_str());
    assert_eq!(rest.body["next_cursor"], Value::Null);

    assert_eq!(delete(&app, &path).await.status, StatusCode::NO_CONTENT);
    assert_eq!(delete(&app, &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("/api/v1/webhooks/deliveries?webhook={id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for (method, path) in [
        (Method::POST, "/api/v1/webhooks/deliveries/999/retry"),
        (Method::DELETE, "/api/v1/webhooks/deliveries/999"),
        (Method::DELETE, "/api/v1/webhooks/deliveries/abc"),
    ] {
        assert_eq!(
            app.call(method, path, None).await.status,
            StatusCode::NOT_FOUND
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn deliveries_are_pending_until_attempted_and_can_be_retried_or_discarded() {
    let mut rx = Receiver::start(500).await;
    let app = test_app().await;
    let device = app.provision("hook-dev").await;
    let token = device["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = app
        .post(
            "/api/v1/webhooks",
            json!({"url": rx.url, "secret": "s", "events": ["device.*"]}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();

    let mut events = app.broker.handle.events().subscribe();
    let (client, mut el) = app.mqtt_connect("hook-dev", "hook-dev", &token).await;
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(PATIENCE, async { while el.poll().await.is_ok() {} }).await;
    loop {
        let e = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap();
        if e.kind == "device.offline" {
            break;
        }
    }
    assert_eq!(rx.next().await["type"], "device.online");
    let list = format!("/api/v1/webhooks/deliveries?webhook={id}");
    let items = eventually("one failed, one pending", || async {
        let items = app.get(&list).await.body["items"].clone();
        let statuses: Vec<_> = (items.as_array().unwrap().iter())
            .map(|d| d["status"].as_str().unwrap().to_owned())
            .collect();
        (statuses == ["failed", "pending"]).then_some(items)
    })
    .await;
    let (head, behind) = (&items[0], &items[1]);
    assert_eq!(head["webhook_id"], id.as_str());
    assert_eq!(behind["attempts"], 0);
    let failed = app.get(&format!("{list}&status=failed")).await.body;
    assert_eq!(failed["items"].as_array().unwrap().len(), 1);
    let pending = app.get(&format!("{list}&status=pending")).await.body;
    assert_eq!(pending["items"][0]["id"], behind["id"]);

    // Discard the pending one: gone and counted.
    let behind_path = format!(
        "/api/v1/webhooks/deliveries/{}",
        behind["id"].as_str().unwrap()
    );
    assert_eq!(
        delete(&app, &behind_path).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(&app, &behind_path).await.status,
        StatusCode::NOT_FOUND
    );
    let stats = app.get("/api/v1/stats").await.body;
    assert_eq!(stats["webhooks"]["discarded"], 1, "{stats}");

    // Retry the failed one once the receiver is back: sent at once.
    rx.next().await; // the second attempt, about 1 s after the first; the next waits 2 s
    eventually("the second failure to be recorded", || async {
        let d = app.get(&list).await.body["items"][0].clone();
        (d["attempts"] == 2).then_some(())
    })
    .await;
    rx.status.store(200, Ordering::SeqCst);
    let asked = Instant::now();
    let retry = format!(
        "/api/v1/webhooks/deliveries/{}/retry",
        head["id"].as_str().unwrap()
    );
    let answer = app.post(&retry, Value::Null).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(rx.next().await["type"], "device.online");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    eventually("nothing owed", || async {
        let items = app.get(&list).await.body["items"].clone();
        (items == json!([])).then_some(())
    })
    .await;
    assert!(
        rx.quiet_for(Duration::from_millis(300)).await,
        "the discarded one"
    );
    app.stop().await;
}
