//! `GET`/`DELETE /api/v1/retained` over real HTTP against a real broker.

use std::time::Duration;

use bytes::Bytes;
use fleetmq_broker::fleet::rfc3339_ms;
use fleetmq_broker::testing::TestBroker;
use fleetmq_broker::{BrokerConfig, PublishRequest};
use fleetmq_web::{ensure_admin_key, serve, AdminConfig, AppState, RawAdminConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
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

/// A broker with `config` and the admin API in front of it.
async fn start(config: BrokerConfig) -> (TestBroker, std::net::SocketAddr, CancellationToken) {
    let broker = TestBroker::with_config(config).await;
    let data_dir = broker.dir.as_ref().unwrap().path();
    let key = ensure_admin_key(&broker.store, data_dir, Some(API_KEY))
        .await
        .unwrap();
    let config: AdminConfig = RawAdminConfig {
        listen: Some("127.0.0.1:0".into()),
        api_key: Some(API_KEY.into()),
        tls: None,
    }
    .validate()
    .unwrap();
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(broker.store.clone(), broker.handle.clone(), key, config);
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, state, shutdown.clone()));
    (broker, addr, shutdown)
}

#[tokio::test]
async fn list_pages_and_delete() {
    let (broker, addr, shutdown) = start(BrokerConfig::for_tests()).await;
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

/// A retained message's MQTT 5 properties and expiry are shown as stored: user
/// properties in order with repeats, correlation data in base64; none for a message
/// published without them.
#[tokio::test]
async fn list_shows_v5_properties_and_expiry() {
    let mut config = BrokerConfig::for_tests();
    config.allow_anonymous = true;
    let (broker, addr, shutdown) = start(config).await;

    let mut opts = MqttOptions::new("props-publisher", "127.0.0.1", broker.tcp.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 10);
    let before_ms = unix_ms();
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..PublishProperties::default()
    };
    client
        .publish_with_properties("p/rich", QoS::AtLeastOnce, true, "{}", properties)
        .await
        .unwrap();
    client
        .publish("p/plain", QoS::AtLeastOnce, true, "x")
        .await
        .unwrap();
    let mut acks = 0;
    while acks < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("PUBACK in time")
            .unwrap();
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acks += 1;
        }
    }
    let acked_ms = unix_ms();

    let (status, body) = call(addr, Method::GET, "/api/v1/retained?topic=p/%2B").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rich = &body["items"][1];
    assert_eq!(rich["topic"], "p/rich");
    assert_eq!(
        rich["properties"],
        json!({
            "payload_format_indicator": 1,
            "content_type": "application/json",
            "response_topic": "reply/here",
            "correlation_data": "AGNvcnI=",
            "user_properties": [
                {"key": "b", "value": "2"},
                {"key": "a", "value": "1"},
                {"key": "b", "value": "3"},
            ],
        })
    );
    // Same fixed-width format, so text order is time order: one hour after the publish.
    let expires = rich["expires_at"].as_str().expect("an expiry time");
    let (earliest, latest) = (
        rfc3339_ms(before_ms + 3_600_000),
        rfc3339_ms(acked_ms + 3_600_000),
    );
    assert!(
        (earliest.as_str()..=latest.as_str()).contains(&expires),
        "{expires} not in {earliest}..={latest}"
    );
    let plain = &body["items"][0];
    assert_eq!(plain["topic"], "p/plain");
    assert_eq!(plain["properties"], json!({"user_properties": []}));
    assert_eq!(plain["expires_at"], Value::Null);
    shutdown.cancel();
}

fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(since.unwrap().as_millis()).unwrap()
}
