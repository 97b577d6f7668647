//! `GET`/`DELETE /api/v1/retained` over real HTTP against a real broker.

use std::time::Duration;

use bytes::Bytes;
use fleetmq_broker::testing::TestBroker;
use fleetmq_broker::{BrokerConfig, PublishRequest};
use fleetmq_web::{ensure_admin_key, serve, AdminConfig, AppState, RawAdminConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const API_KEY: &str = "test-admin-key-0123456789abcdef";

async fn call(addr: std::net::SocketAddr, method: Method, path: &str) -> (StatusCode, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("x-api-key", API_KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer in time")
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

#[tokio::test]
async fn list_pages_and_delete() {
    let broker = TestBroker::with_config(BrokerConfig::for_tests()).await;
    let data_dir = broker.dir.as_ref().unwrap().path();
    let key = ensure_admin_key(&broker.store, data_dir, Some(API_KEY))
        .await
        .unwrap();
    let config: AdminConfig = RawAdminConfig {
        listen: Some("127.0.0.1:0".into()),
        api_key: Some(API_KEY.into()),
    }
    .validate()
    .unwrap();
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(broker.store.clone(), broker.handle.clone(), key, config);
    let shutdown = CancellationToken::new();
    let _server = tokio::spawn(serve(listener, state, shutdown.clone()));

    for (topic, payload) in [
        ("a/1", &b"text"[..]),
        ("a/2", &[0xff, 0x00][..]),
        ("b/1", &b"other"[..]),
    ] {
        let msg = PublishRequest {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos: 1,
            retain: true,
        };
        broker.handle.publish(msg).await.unwrap();
    }

    let (status, body) = call(addr, Method::GET, "/api/v1/retained?topic=a/%2B&limit=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    assert_eq!(body["items"][0]["topic"], "a/1");
    assert_eq!(body["items"][0]["payload"], "text");
    assert_eq!(body["items"][0]["encoding"], "utf8");
    assert_eq!(body["items"][0]["qos"], 1);
    assert_eq!(body["next_cursor"], "a/1");
    let (_, body) = call(addr, Method::GET, "/api/v1/retained?topic=a/%2B&cursor=a/1").await;
    assert_eq!(body["items"][0]["topic"], "a/2");
    assert_eq!(body["items"][0]["payload"], "/wA=");
    assert_eq!(body["items"][0]["encoding"], "base64");
    assert_eq!(body["next_cursor"], Value::Null);
    let (_, body) = call(addr, Method::GET, "/api/v1/retained").await;
    let topics: Vec<_> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["topic"].clone())
        .collect();
    assert_eq!(topics, [json!("a/1"), json!("a/2"), json!("b/1")]);

    let (status, _) = call(addr, Method::GET, "/api/v1/retained?topic=a/%23/b").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call(addr, Method::DELETE, "/api/v1/retained?topic=a/1").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(addr, Method::DELETE, "/api/v1/retained?topic=a/1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = call(addr, Method::DELETE, "/api/v1/retained").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(broker.store.get_retained("a/1").unwrap().is_none());
    let (_, body) = call(addr, Method::GET, "/api/v1/retained?topic=%23").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    shutdown.cancel();
}
