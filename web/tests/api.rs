//! The admin API over real HTTP, against a real store in a temporary directory.
//!
//! Every test builds its app through [`test_app`], the one place that wires store,
//! broker, key and config together (other modules of this test binary use it too).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fleetmq_broker::testing::TestBroker;
use fleetmq_broker::BrokerConfig;
use fleetmq_storage::{DeviceId, Store};
use fleetmq_web::{ensure_admin_key, serve, AdminConfig, AppState, RawAdminConfig};
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) const API_KEY: &str = "test-admin-key-0123456789abcdef";
const MAX_BODY: usize = 64 * 1024;
/// Upper bound for anything a test waits for over the network.
const PATIENCE: Duration = Duration::from_secs(10);
/// Event stream keepalive interval in these tests (15 s in production).
const KEEPALIVE: Duration = Duration::from_millis(200);

pub(crate) struct TestApp {
    pub(crate) addr: SocketAddr,
    pub(crate) store: Store,
    pub(crate) broker: TestBroker,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

/// A real broker (fresh store in a temp dir), the configured test key, and the API on
/// port 0 sharing the broker's store.
pub(crate) async fn test_app() -> TestApp {
    test_app_with(BrokerConfig::for_tests()).await
}

pub(crate) async fn test_app_with(broker_config: BrokerConfig) -> TestApp {
    test_app_keyed(broker_config, Some(API_KEY)).await
}

/// [`test_app`] with a generated built-in key (`admin`, in `<data_dir>/admin.key`)
/// instead of the configured one; returns the app and that key.
pub(crate) async fn test_app_generated_key() -> (TestApp, String) {
    let app = test_app_keyed(BrokerConfig::for_tests(), None).await;
    let dir = app.broker.dir.as_ref().expect("broker data dir").path();
    let key = std::fs::read_to_string(dir.join(fleetmq_web::ADMIN_KEY_FILE)).unwrap();
    (app, key.trim_end().to_owned())
}

/// [`test_app`] on the data dir of an app stopped before (a restart).
pub(crate) async fn test_app_in(dir: tempfile::TempDir) -> TestApp {
    let broker = TestBroker::with_config_in(BrokerConfig::for_tests(), dir).await;
    app_on(broker, Some(API_KEY)).await
}

async fn test_app_keyed(broker_config: BrokerConfig, configured: Option<&str>) -> TestApp {
    app_on(TestBroker::with_config(broker_config).await, configured).await
}

async fn app_on(broker: TestBroker, configured: Option<&str>) -> TestApp {
    let store = broker.store.clone();
    let data_dir = broker.dir.as_ref().expect("broker data dir").path();
    let key = ensure_admin_key(&store, data_dir, configured)
        .await
        .unwrap();
    let mut config: AdminConfig = RawAdminConfig {
        listen: Some("127.0.0.1:0".into()),
        api_key: configured.map(str::to_owned),
        tls: None,
    }
    .validate()
    .unwrap();
    config.max_body_bytes = MAX_BODY;
    config.sse_keepalive = KEEPALIVE;
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(store.clone(), broker.handle.clone(), key, config);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, state, shutdown.clone()));
    TestApp {
        addr,
        store,
        broker,
        client: Client::builder(TokioExecutor::new()).build_http(),
        shutdown,
        server,
    }
}

/// An answer: status, headers and the body parsed as JSON (`Null` when empty).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    None,
    ApiKey(&'a str),
    Header(&'a str),
}

impl TestApp {
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<&str>,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        match auth {
            Auth::None => {}
            Auth::ApiKey(key) => req = req.header("x-api-key", key),
            Auth::Header(value) => req = req.header(header::AUTHORIZATION, value),
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
        let response = self.client.request(req.body(body).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A request with the test key and no body; the answer's body as bytes.
    pub(crate) async fn send_raw(
        &self,
        method: Method,
        path: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("x-api-key", API_KEY);
        let response = self
            .client
            .request(req.body(Full::default()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    /// A request with exactly these headers and no body.
    pub(crate) async fn send_with_headers(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let response = self
            .client
            .request(req.body(Full::default()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        self.send(method, path, Auth::ApiKey(API_KEY), body.as_deref())
            .await
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn raw_post(&self, path: &str, body: &str) -> Answer {
        self.send(Method::POST, path, Auth::ApiKey(API_KEY), Some(body))
            .await
    }

    pub(crate) async fn provision(&self, id: &str) -> Value {
        let answer = self.post("/api/v1/devices", json!({ "id": id })).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }

    pub(crate) async fn device_count(&self) -> u64 {
        self.store.call(|s| s.count_devices()).await.unwrap()
    }

    /// Whether the stored credential is a keyed hash (never PBKDF2 for a token the API
    /// issued) of `token`.
    pub(crate) async fn token_verifies(&self, id: &str, token: &str) -> bool {
        let id: DeviceId = id.parse().unwrap();
        let token = token.to_owned();
        self.store
            .call(move |s| {
                let found = s.get_device(&id).unwrap();
                found.is_some_and(|d| {
                    !d.credential.is_legacy()
                        && d.credential.verify(s.token_key(), token.as_bytes())
                })
            })
            .await
    }

    /// Stops the server and the broker; the broker's data dir, for a restart.
    pub(crate) async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        self.broker.stop().await
    }

    pub(crate) fn mqtt_options(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.broker.tcp.port());
        options.set_credentials(username, password);
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    /// Connects over MQTT and waits for a successful CONNACK.
    pub(crate) async fn mqtt_connect(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> (AsyncClient, EventLoop) {
        let (client, mut events) =
            AsyncClient::new(self.mqtt_options(client_id, username, password), 16);
        let connack = next_packet(&mut events, |p| matches!(p, Packet::ConnAck(_))).await;
        assert!(connack.is_ok(), "{client_id} not connected: {connack:?}");
        (client, events)
    }

    /// Whether a CONNECT with these credentials is refused.
    pub(crate) async fn mqtt_refused(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> bool {
        let (_client, mut events) =
            AsyncClient::new(self.mqtt_options(client_id, username, password), 16);
        let first = tokio::time::timeout(PATIENCE, events.poll())
            .await
            .expect("no answer to CONNECT");
        matches!(first, Err(ConnectionError::ConnectionRefused(_)))
    }
}

/// Every API route with a body that would succeed if the key were right.
pub(crate) fn every_api_route() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/v1/devices", None),
        (
            Method::POST,
            "/api/v1/devices",
            Some(json!({"id": "dev-1"})),
        ),
        (
            Method::POST,
            "/api/v1/devices/bulk",
            Some(json!({"devices": [{"id": "dev-1"}]})),
        ),
        (Method::GET, "/api/v1/devices/dev-1", None),
        (
            Method::PATCH,
            "/api/v1/devices/dev-1",
            Some(json!({"labels": {}})),
        ),
        (Method::DELETE, "/api/v1/devices/dev-1", None),
        (
            Method::POST,
            "/api/v1/devices/dev-1/rotate-credentials",
            None,
        ),
        (Method::POST, "/api/v1/devices/dev-1/rotate-key", None),
        (
            Method::POST,
            "/api/v1/service-clients",
            Some(json!({"name": "svc", "password": "long-enough", "rules": []})),
        ),
        (Method::GET, "/api/v1/service-clients", None),
        (
            Method::PATCH,
            "/api/v1/service-clients/svc",
            Some(json!({"rules": []})),
        ),
        (Method::DELETE, "/api/v1/service-clients/svc", None),
        (Method::GET, "/api/v1/clients", None),
        (Method::GET, "/api/v1/clients/dev-1", None),
        (Method::DELETE, "/api/v1/clients/dev-1", None),
        (
            Method::POST,
            "/api/v1/publish",
            Some(json!({"topic": "a/b", "payload": "x"})),
        ),
        (Method::GET, "/api/v1/stats", None),
        (Method::GET, "/api/v1/devices/dev-1/config", None),
        (
            Method::PUT,
            "/api/v1/devices/dev-1/config",
            Some(json!({"interval": 5})),
        ),
        (
            Method::POST,
            "/api/v1/devices/dev-1/commands",
            Some(json!({"type": "RELOAD"})),
        ),
        (Method::GET, "/api/v1/devices/dev-1/commands", None),
        (Method::GET, "/api/v1/commands/c-1", None),
        (Method::DELETE, "/api/v1/commands/c-1", None),
        (Method::GET, "/api/v1/devices/dev-1/telemetry", None),
        (Method::GET, "/api/v1/devices/dev-1/telemetry/latest", None),
        (Method::GET, "/api/v1/devices/dev-1/events", None),
        (Method::GET, "/api/v1/webhooks/deliveries", None),
        (
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"name": "j", "target": {"all": true}, "command": {"type": "RELOAD"}})),
        ),
        (Method::GET, "/api/v1/jobs", None),
        (Method::GET, "/api/v1/jobs/j-1", None),
        (Method::DELETE, "/api/v1/jobs/j-1", None),
        (Method::GET, "/api/v1/jobs/j-1/commands", None),
        (
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/h", "secret": "s"})),
        ),
        (Method::GET, "/api/v1/webhooks", None),
        (Method::GET, "/api/v1/webhooks/wh-1", None),
        (
            Method::PATCH,
            "/api/v1/webhooks/wh-1",
            Some(json!({"enabled": false})),
        ),
        (Method::DELETE, "/api/v1/webhooks/wh-1", None),
        (Method::POST, "/api/v1/webhooks/deliveries/1/retry", None),
        (Method::DELETE, "/api/v1/webhooks/deliveries/1", None),
        (Method::GET, "/api/v1/events", None),
        (Method::GET, "/api/v1/subscribe?filter=%23", None),
        (Method::GET, "/api/v1/openapi.json", None),
        (Method::POST, "/api/v1/backup", None),
        (Method::GET, "/api/v1/no-such-route", None),
    ]
}

#[tokio::test]
async fn health_is_open() {
    let app = test_app().await;
    let answer = app.send(Method::GET, "/health", Auth::None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!({"status": "ok"}));
    app.stop().await;
}

#[tokio::test]
async fn every_api_route_needs_the_key_and_a_refused_request_changes_nothing() {
    let app = test_app().await;
    let basic = format!("Basic {API_KEY}");
    let wrong = [
        Auth::None,
        Auth::ApiKey("wrong-key"),
        Auth::ApiKey(""),
        Auth::Header("Bearer wrong-key"),
        Auth::Header(&basic),
    ];
    for (method, path, body) in every_api_route() {
        for auth in wrong {
            let body = body.as_ref().map(Value::to_string);
            let answer = app.send(method.clone(), path, auth, body.as_deref()).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(answer.error_code(), "unauthorized", "{method} {path}");
            assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
        }
    }
    assert_eq!(app.device_count().await, 0);
    let clients = app.get("/api/v1/service-clients").await;
    assert_eq!(clients.body["items"], json!([]));
    let hooks = app.get("/api/v1/webhooks").await;
    assert_eq!(hooks.body["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn both_key_headers_are_accepted() {
    let app = test_app().await;
    let x_api_key = app
        .send(Method::GET, "/api/v1/devices", Auth::ApiKey(API_KEY), None)
        .await;
    assert_eq!(x_api_key.status, StatusCode::OK);
    let bearer = format!("Bearer {API_KEY}");
    let bearer = app
        .send(Method::GET, "/api/v1/devices", Auth::Header(&bearer), None)
        .await;
    assert_eq!(bearer.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = test_app().await;
    // `/` is the dashboard (tests/dashboard.rs); an unknown file under it is a 404 too.
    for path in [
        "/assets/nope.js",
        "/nope",
        "/api/v1/nope",
        "/api/v1/devices/a/b",
        "/api/v2/devices",
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.error_code(), "not_found", "{path}");
        assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    }
    let answer = app.call(Method::PUT, "/api/v1/devices", None).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.error_code(), "method_not_allowed");
    assert_eq!(answer.headers[header::ALLOW], "GET, POST");
    let answer = app.get("/api/v1/devices/x/rotate-key").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let answer = app.call(Method::POST, "/health", None).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_400_and_invalid_values_422_and_change_nothing() {
    let app = test_app().await;
    let cases: &[(&str, &str, StatusCode)] = &[
        ("/api/v1/devices", "{", StatusCode::BAD_REQUEST),
        ("/api/v1/devices", "", StatusCode::BAD_REQUEST),
        ("/api/v1/devices", "not json", StatusCode::BAD_REQUEST),
        (
            "/api/v1/devices",
            r#"{"id":"bad id"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/devices",
            r#"{"id":"-starts-badly"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/devices",
            r#"{"id":"ok","colour":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/devices",
            r#"{"id":"ok","labels":{"a:b":"c"}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/devices",
            r#"{"id":"ok","plugin":""}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/devices",
            r#"{"id":"ok","encrypted":"yes"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/api/v1/devices", "[]", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/v1/service-clients", "{", StatusCode::BAD_REQUEST),
        (
            "/api/v1/service-clients",
            r#"{"name":"svc","password":"short"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/service-clients",
            r#"{"name":"a/b","password":"long-enough"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/service-clients",
            r#"{"name":"svc","password":"long-enough","rules":[{"action":"write","topic":"a","allow":true}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/service-clients",
            r#"{"name":"svc","password":"long-enough","rules":[{"action":"all","topic":"a/#/b","allow":true}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/api/v1/publish", "{", StatusCode::BAD_REQUEST),
        (
            "/api/v1/publish",
            r#"{"topic":"a","qos":3}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/publish",
            r#"{"topic":"a","qos":-1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/publish",
            r#"{"topic":"a","payload":"x","payload_base64":"eA=="}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/v1/publish",
            r#"{"topic":"a","payload_base64":"!"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (path, body, status) in cases {
        let answer = app.raw_post(path, body).await;
        assert_eq!(answer.status, *status, "{path} {body}: {}", answer.body);
        let code = if *status == StatusCode::BAD_REQUEST {
            "bad_request"
        } else {
            "unprocessable"
        };
        assert_eq!(answer.error_code(), code, "{path} {body}");
        assert!(answer.body["error"]["message"].is_string());
    }
    assert_eq!(app.device_count().await, 0);
    let clients = app.get("/api/v1/service-clients").await;
    assert_eq!(clients.body["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn patch_with_invalid_labels_changes_nothing() {
    let app = test_app().await;
    app.provision("dev-1").await;
    let path = "/api/v1/devices/dev-1";
    let ok = app
        .call(Method::PATCH, path, Some(json!({"labels": {"site": "a"}})))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    for body in [
        json!({"labels": {"": "x"}}),
        json!({"labels": {"site": 1}}),
        json!({}),
    ] {
        let answer = app.call(Method::PATCH, path, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    assert_eq!(app.get(path).await.body["labels"], json!({"site": "a"}));
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = test_app().await;
    let big = format!(r#"{{"id":"dev-1","plugin":"{}"}}"#, "a".repeat(MAX_BODY));
    let answer = app.raw_post("/api/v1/devices", &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), "payload_too_large");

    // No Content-Length: the limit holds while reading.
    let status = chunked_post(app.addr, "/api/v1/devices", big.as_bytes()).await;
    assert_eq!(status, 413);
    assert_eq!(app.device_count().await, 0);
    app.stop().await;
}

/// Polls the MQTT event loop until a packet matching `want` arrives (`Ok`) or the
/// connection fails (`Err`).
pub(crate) async fn next_packet(
    events: &mut EventLoop,
    want: impl Fn(&Packet) -> bool,
) -> Result<Packet, ConnectionError> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.poll().await? {
                Event::Incoming(packet) if want(&packet) => return Ok(packet),
                _ => {}
            }
        }
    })
    .await
    .expect("nothing happened on the MQTT connection")
}

/// Polls until the broker closes the connection.
pub(crate) async fn closed_by_broker(events: &mut EventLoop) -> bool {
    next_packet(events, |_| false).await.is_err()
}

/// Sends a chunked POST over a raw socket and returns the status code.
async fn chunked_post(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {API_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(4096) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before it has read everything.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn provisioning_returns_the_token_once_and_stores_only_its_hash() {
    let app = test_app().await;
    let created = app
        .post(
            "/api/v1/devices",
            json!({"id": "dev-1", "labels": {"site": "berlin"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let body = created.body;
    assert_eq!(body["device"]["id"], "dev-1");
    assert_eq!(body["device"]["plugin"], "json");
    assert_eq!(body["device"]["labels"], json!({"site": "berlin"}));
    assert_eq!(body["device"]["online"], false);
    assert!(body["device"]["created_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(body["credentials"]["username"], "dev-1");
    let token = body["credentials"]["password"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert!(app.token_verifies("dev-1", token).await);

    let shown = app.get("/api/v1/devices/dev-1").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body, body["device"]);
    assert!(!shown.body.to_string().contains(token));
    app.stop().await;
}

#[tokio::test]
async fn an_encrypted_device_gets_its_key() {
    let app = test_app().await;
    let created = app
        .post("/api/v1/devices", json!({"id": "enc-1", "encrypted": true}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["key"]["generation"], 1);
    let key = created.body["key"]["base64"].as_str().unwrap();
    assert_eq!(key.len(), 44, "32 bytes in base64");
    assert_eq!(created.body["device"]["encrypted"], true);
    assert_eq!(created.body["device"]["key_generation"], 1);

    let rotated = app
        .post("/api/v1/devices/enc-1/rotate-key", json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_eq!(rotated.body["key"]["generation"], 2);
    assert_ne!(rotated.body["key"]["base64"], key);
    assert_eq!(
        app.get("/api/v1/devices/enc-1").await.body["key_generation"],
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn a_duplicate_device_is_409_and_keeps_its_token() {
    let app = test_app().await;
    let first = app.provision("dev-1").await;
    let token = first["credentials"]["password"].as_str().unwrap();
    let again = app
        .post(
            "/api/v1/devices",
            json!({"id": "dev-1", "labels": {"x": "y"}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.error_code(), "conflict");
    assert!(app.token_verifies("dev-1", token).await);
    assert_eq!(
        app.get("/api/v1/devices/dev-1").await.body["labels"],
        json!({})
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_devices_are_404() {
    let app = test_app().await;
    for id in ["nobody", "bad%20id", "-x"] {
        let path = format!("/api/v1/devices/{id}");
        assert_eq!(app.get(&path).await.status, StatusCode::NOT_FOUND, "{id}");
        let patch = app
            .call(Method::PATCH, &path, Some(json!({"labels": {}})))
            .await;
        assert_eq!(patch.status, StatusCode::NOT_FOUND, "{id}");
        let delete = app.call(Method::DELETE, &path, None).await;
        assert_eq!(delete.status, StatusCode::NOT_FOUND, "{id}");
        for action in ["rotate-credentials", "rotate-key"] {
            let answer = app.post(&format!("{path}/{action}"), json!({})).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{id} {action}");
        }
    }
    assert_eq!(app.device_count().await, 0);
    // The message names the id as sent, not the server's type for it.
    for path in [
        "/api/v1/devices/nobody/commands",
        "/api/v1/devices/nobody/telemetry",
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            answer.body["error"]["message"], "device \"nobody\" not found",
            "{path}"
        );
    }
    let create = app
        .post("/api/v1/devices/nobody/commands", json!({"type": "PING"}))
        .await;
    assert_eq!(
        create.body["error"]["message"],
        "device \"nobody\" not found"
    );
    app.stop().await;
}

#[tokio::test]
async fn rotating_credentials_replaces_the_token() {
    let app = test_app().await;
    let created = app.provision("dev-1").await;
    let old = created["credentials"]["password"].as_str().unwrap();
    let rotated = app
        .post("/api/v1/devices/dev-1/rotate-credentials", json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_eq!(rotated.body["credentials"]["username"], "dev-1");
    let new = rotated.body["credentials"]["password"].as_str().unwrap();
    assert_ne!(new, old);
    assert!(app.token_verifies("dev-1", new).await);
    assert!(!app.token_verifies("dev-1", old).await);
    app.stop().await;
}

#[tokio::test]
async fn patch_replaces_labels_and_delete_removes() {
    let app = test_app().await;
    app.post(
        "/api/v1/devices",
        json!({"id": "dev-1", "labels": {"a": "1", "b": "2"}}),
    )
    .await;
    let path = "/api/v1/devices/dev-1";
    let patched = app
        .call(Method::PATCH, path, Some(json!({"labels": {"c": "3"}})))
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.body["labels"], json!({"c": "3"}));

    let deleted = app.call(Method::DELETE, path, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(deleted.body, Value::Null);
    assert_eq!(app.get(path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.device_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn device_lists_page_and_filter() {
    let app = test_app().await;
    for (id, site) in [
        ("d1", "a"),
        ("d2", "b"),
        ("d3", "a"),
        ("d4", "a"),
        ("d5", "b"),
    ] {
        app.post(
            "/api/v1/devices",
            json!({"id": id, "labels": {"site": site}}),
        )
        .await;
    }
    let ids = |answer: &Answer| -> Vec<String> {
        let items = answer.body["items"].as_array().unwrap();
        items
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = app.get("/api/v1/devices?limit=2").await;
    assert_eq!(ids(&first), ["d1", "d2"]);
    assert_eq!(first.body["next_cursor"], "d2");
    let second = app.get("/api/v1/devices?limit=2&cursor=d2").await;
    assert_eq!(ids(&second), ["d3", "d4"]);
    let last = app.get("/api/v1/devices?limit=2&cursor=d4").await;
    assert_eq!(ids(&last), ["d5"]);
    assert_eq!(last.body["next_cursor"], Value::Null);

    let site_a = app.get("/api/v1/devices?label=site:a&limit=2").await;
    assert_eq!(ids(&site_a), ["d1", "d3"]);
    assert_eq!(site_a.body["next_cursor"], "d3");
    let rest = app
        .get("/api/v1/devices?label=site:a&limit=2&cursor=d3")
        .await;
    assert_eq!(ids(&rest), ["d4"]);
    assert_eq!(rest.body["next_cursor"], Value::Null);
    let offline = app.get("/api/v1/devices?online=false").await;
    assert_eq!(ids(&offline).len(), 5);
    assert!(ids(&app.get("/api/v1/devices?online=true").await).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn bad_list_parameters_are_refused() {
    let app = test_app().await;
    let cases = [
        ("limit=abc", StatusCode::BAD_REQUEST),
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("limit=1001", StatusCode::UNPROCESSABLE_ENTITY),
        ("online=maybe", StatusCode::BAD_REQUEST),
        ("label=nocolon", StatusCode::BAD_REQUEST),
        ("cursor=bad%20id", StatusCode::BAD_REQUEST),
        ("colour=red", StatusCode::BAD_REQUEST),
    ];
    for (query, status) in cases {
        let answer = app.get(&format!("/api/v1/devices?{query}")).await;
        assert_eq!(answer.status, status, "{query}");
    }
    let ok = app.get("/api/v1/devices?limit=1000").await;
    assert_eq!(ok.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn service_clients_never_show_secrets() {
    let app = test_app().await;
    let rules = json!([{"action": "subscribe", "topic": "device/+/telemetry", "allow": true}]);
    let body = json!({"name": "backend", "password": "backend-password", "rules": rules});
    let created = app.post("/api/v1/service-clients", body.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["name"], "backend");
    assert_eq!(created.body["rules"], rules);
    let again = app.post("/api/v1/service-clients", body).await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    let list = app.get("/api/v1/service-clients").await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "backend");
    let text = list.body.to_string();
    assert!(!text.contains("backend-password") && !text.contains("credential"));

    let gone = app
        .call(Method::DELETE, "/api/v1/service-clients/backend", None)
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let again = app
        .call(Method::DELETE, "/api/v1/service-clients/backend", None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn a_service_client_cannot_take_a_device_id() {
    let app = test_app().await;
    app.provision("dev-1").await;
    let body = json!({"name": "dev-1", "password": "long-enough"});
    let answer = app.post("/api/v1/service-clients", body).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let device = app.post("/api/v1/devices", json!({"id": "svc"})).await;
    assert_eq!(device.status, StatusCode::CREATED);
    let svc = app
        .post(
            "/api/v1/service-clients",
            json!({"name": "svc", "password": "long-enough"}),
        )
        .await;
    assert_eq!(svc.status, StatusCode::CONFLICT);
    app.stop().await;
}

#[tokio::test]
async fn clients_stats_and_kicking_nobody() {
    let app = test_app().await;
    let clients = app.get("/api/v1/clients").await;
    assert_eq!(clients.status, StatusCode::OK);
    assert_eq!(clients.body["items"], json!([]));
    let kick = app
        .call(Method::DELETE, "/api/v1/clients/nobody", None)
        .await;
    assert_eq!(kick.status, StatusCode::NOT_FOUND);
    let stats = app.get("/api/v1/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert!(stats.body["connections"].is_object());
    app.stop().await;
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let app = test_app().await;
    let addr = app.addr;
    app.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn presence_comes_from_the_broker() {
    let app = test_app().await;
    let created = app.provision("dev-1").await;
    app.provision("dev-2").await;
    let token = created["credentials"]["password"].as_str().unwrap();
    let (_client, mut events) = app.mqtt_connect("dev-1", "dev-1", token).await;

    assert_eq!(app.get("/api/v1/devices/dev-1").await.body["online"], true);
    assert_eq!(app.get("/api/v1/devices/dev-2").await.body["online"], false);
    let online = app.get("/api/v1/devices?online=true").await;
    assert_eq!(online.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(online.body["items"][0]["id"], "dev-1");
    let offline = app.get("/api/v1/devices?online=false").await;
    assert_eq!(offline.body["items"][0]["id"], "dev-2");

    let clients = app.get("/api/v1/clients").await;
    assert_eq!(clients.status, StatusCode::OK);
    assert_eq!(clients.body["items"][0]["client_id"], "dev-1");
    assert_eq!(clients.body["items"][0]["kind"], "device");

    let kicked = app
        .call(Method::DELETE, "/api/v1/clients/dev-1", None)
        .await;
    assert_eq!(kicked.status, StatusCode::NO_CONTENT);
    assert!(closed_by_broker(&mut events).await);
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_device_disconnects_it_and_its_token_stops_working() {
    let app = test_app().await;
    let created = app.provision("dev-1").await;
    let token = created["credentials"]["password"].as_str().unwrap();
    let (_client, mut events) = app.mqtt_connect("dev-1", "dev-1", token).await;

    let deleted = app
        .call(Method::DELETE, "/api/v1/devices/dev-1", None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(closed_by_broker(&mut events).await);
    assert!(app.mqtt_refused("dev-1", "dev-1", token).await);
    app.stop().await;
}

#[tokio::test]
async fn rotated_credentials_disconnect_and_refuse_the_old_token() {
    let app = test_app().await;
    let created = app.provision("dev-1").await;
    let old = created["credentials"]["password"].as_str().unwrap();
    let (_client, mut events) = app.mqtt_connect("dev-1", "dev-1", old).await;

    let rotated = app
        .post("/api/v1/devices/dev-1/rotate-credentials", json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let new = rotated.body["credentials"]["password"].as_str().unwrap();
    assert!(closed_by_broker(&mut events).await);
    assert!(app.mqtt_refused("dev-1", "dev-1", old).await);
    let _reconnected = app.mqtt_connect("dev-1", "dev-1", new).await;
    app.stop().await;
}

#[tokio::test]
async fn published_messages_reach_a_service_client() {
    let app = test_app().await;
    let rules = json!([{"action": "subscribe", "topic": "news/#", "allow": true}]);
    let created = app
        .post(
            "/api/v1/service-clients",
            json!({"name": "backend", "password": "backend-password", "rules": rules}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let (client, mut events) = app
        .mqtt_connect("backend-1", "backend", "backend-password")
        .await;
    client.subscribe("news/#", QoS::AtLeastOnce).await.unwrap();
    let suback = next_packet(&mut events, |p| matches!(p, Packet::SubAck(_))).await;
    let Ok(Packet::SubAck(suback)) = suback else {
        panic!("no SUBACK: {suback:?}")
    };
    assert!(matches!(
        suback.return_codes[0],
        rumqttc::SubscribeReasonCode::Success(_)
    ));

    let published = app
        .post(
            "/api/v1/publish",
            json!({"topic": "news/a", "payload": {"n": 1}, "qos": 1}),
        )
        .await;
    assert_eq!(published.status, StatusCode::ACCEPTED, "{}", published.body);
    assert_eq!(published.body, json!({"published": true}));
    let msg = next_packet(&mut events, |p| matches!(p, Packet::Publish(_))).await;
    let Ok(Packet::Publish(msg)) = msg else {
        panic!("no PUBLISH: {msg:?}")
    };
    assert_eq!(msg.topic, "news/a");
    assert_eq!(&msg.payload[..], br#"{"n":1}"#);

    let deleted = app
        .call(Method::DELETE, "/api/v1/service-clients/backend", None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(closed_by_broker(&mut events).await);
    assert!(
        app.mqtt_refused("backend-1", "backend", "backend-password")
            .await
    );
    app.stop().await;
}

#[tokio::test]
async fn the_broker_refuses_bad_publishes_with_422() {
    let app = test_app_with(BrokerConfig {
        max_payload: 16,
        ..BrokerConfig::for_tests()
    })
    .await;
    for body in [
        json!({"topic": "a/+", "payload": "x"}),
        json!({"topic": "", "payload": "x"}),
        json!({"topic": "$SYS/x", "payload": "x"}),
        json!({"topic": "a", "payload": "x".repeat(17)}),
    ] {
        let answer = app.post("/api/v1/publish", body.clone()).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer.error_code(), "unprocessable");
    }
    app.stop().await;
}

#[tokio::test]
async fn global_encryption_gives_every_device_a_key() {
    let app = test_app_with(BrokerConfig {
        payload_encryption: true,
        ..BrokerConfig::for_tests()
    })
    .await;
    let created = app.provision("dev-1").await;
    assert_eq!(created["key"]["generation"], 1);
    assert_eq!(created["device"]["encrypted"], true);
    assert_eq!(created["device"]["key_generation"], 1);
    app.stop().await;
}

#[tokio::test]
async fn without_encryption_no_key_is_shown() {
    let app = test_app().await;
    let created = app.provision("dev-1").await;
    assert!(created.get("key").is_none(), "{created}");
    assert_eq!(created["device"]["encrypted"], false);
    assert_eq!(created["device"]["key_generation"], Value::Null);
    app.stop().await;
}

impl TestApp {
    async fn put(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }
}

/// The create route remembers devices it looked up; a deleted device is forgotten before
/// its delete is answered, so a create right after it is a 404, and a device provisioned
/// again under the same id gets commands again.
#[tokio::test]
async fn commands_for_a_deleted_device_are_refused_at_once() {
    let app = test_app().await;
    app.provision("dev-1").await;
    let path = "/api/v1/devices/dev-1/commands";
    let first = app.post(path, json!({"type": "RELOAD"})).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let again = app.post(path, json!({"type": "PING"})).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(
        app.delete("/api/v1/devices/dev-1").await.status,
        StatusCode::NO_CONTENT
    );
    let after = app.post(path, json!({"type": "RELOAD"})).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{}", after.body);
    app.provision("dev-1").await;
    let back = app.post(path, json!({"type": "RELOAD"})).await;
    assert_eq!(back.status, StatusCode::ACCEPTED, "{}", back.body);
}

#[tokio::test]
async fn commands_are_created_listed_read_and_cancelled() {
    let app = test_app().await;
    app.provision("dev-1").await;
    let body = json!({"type": "RELOAD", "params": {"a": 1}, "metadata": {"job_id": "123"}});
    let created = app
        .post("/api/v1/devices/dev-1/commands", body.clone())
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.body);
    assert_eq!(created.body["status"], "queued", "the device is offline");
    assert_eq!(created.body["metadata"], json!({"job_id": "123"}));
    let id = created.body["command_id"].as_str().unwrap().to_owned();
    let read = app.get(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(
        (read.status, read.body["type"].clone()),
        (StatusCode::OK, json!("RELOAD"))
    );
    let list = app
        .get("/api/v1/devices/dev-1/commands?status=queued")
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let cancelled = app.delete(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(
        (cancelled.status, cancelled.body["status"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let again = app.delete(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(
        (again.status, again.error_code()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert_eq!(
        app.get("/api/v1/commands/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post("/api/v1/devices/ghost/commands", json!({"type": "X"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/devices/ghost/commands").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/devices/dev-1/commands?status=bogus")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // Malformed and invalid bodies change nothing.
    assert_eq!(
        app.raw_post("/api/v1/devices/dev-1/commands", "{")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.post("/api/v1/devices/dev-1/commands", json!({"params": {}}))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.post(
            "/api/v1/devices/dev-1/commands",
            json!({"type": "X", "bogus": 1})
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let all = app.get("/api/v1/devices/dev-1/commands").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 1);
}

/// A device's command list pages newest first through the opaque `next_cursor`; a
/// cursor that is no command of the device (another device's, or a number) is a 422.
#[tokio::test]
async fn command_lists_page_by_cursor() {
    let app = test_app().await;
    app.provision("dev-1").await;
    app.provision("dev-2").await;
    let mut ids = Vec::new();
    for kind in ["A", "B", "C"] {
        let created = app
            .post("/api/v1/devices/dev-1/commands", json!({ "type": kind }))
            .await;
        assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.body);
        ids.push(created.body["command_id"].as_str().unwrap().to_owned());
    }
    let other = app
        .post("/api/v1/devices/dev-2/commands", json!({ "type": "A" }))
        .await;
    let other = other.body["command_id"].as_str().unwrap().to_owned();
    let types = |page: &Answer| -> Vec<String> {
        page.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap().to_owned())
            .collect()
    };

    let first = app.get("/api/v1/devices/dev-1/commands?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(types(&first), ["C", "B"]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = app
        .get(&format!(
            "/api/v1/devices/dev-1/commands?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(types(&second), ["A"]);
    assert!(second.body["next_cursor"].is_null(), "{}", second.body);
    assert_eq!(second.body["items"][0]["command_id"], ids[0].as_str());

    for bad in [other.as_str(), "1"] {
        let answer = app
            .get(&format!("/api/v1/devices/dev-1/commands?cursor={bad}"))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn idempotency_keys_and_the_queue_cap() {
    let mut config = BrokerConfig::for_tests();
    config.fleet.commands.max_queued_per_device = 2;
    let app = test_app_with(config).await;
    app.provision("dev-1").await;
    let post = |key: &'static str, kind: &'static str| {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/api/v1/devices/dev-1/commands", app.addr))
            .header("x-api-key", API_KEY)
            .header(header::CONTENT_TYPE, "application/json");
        if !key.is_empty() {
            req = req.header("idempotency-key", key);
        }
        let body = Full::new(Bytes::from(
            json!({"type": kind, "supersede": false}).to_string(),
        ));
        app.client.request(req.body(body).unwrap())
    };
    let first: Value = serde_json::from_slice(
        &post("k-1", "A")
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    let second: Value = serde_json::from_slice(
        &post("k-1", "A")
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(
        first["command_id"], second["command_id"],
        "same Idempotency-Key, same command"
    );
    assert_eq!(post("", "B").await.unwrap().status(), StatusCode::ACCEPTED);
    let full = post("", "C").await.unwrap();
    assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value =
        serde_json::from_slice(&full.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["depth"], 2);
}

#[tokio::test]
async fn config_is_versioned_and_validated() {
    let app = test_app().await;
    app.provision("dev-1").await;
    assert_eq!(
        app.get("/api/v1/devices/dev-1/config").await.status,
        StatusCode::NOT_FOUND
    );
    let v1 = app
        .put("/api/v1/devices/dev-1/config", json!({"interval": 5}))
        .await;
    assert_eq!(
        (v1.status, v1.body["version"].clone()),
        (StatusCode::OK, json!(1))
    );
    let bad = app.put("/api/v1/devices/dev-1/config", json!([1])).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let current = app.get("/api/v1/devices/dev-1/config").await;
    assert_eq!(current.body["version"], 1);
    assert_eq!(current.body["config"], json!({"interval": 5}));
    assert_eq!(current.body["reported_version"], Value::Null);
    assert_eq!(
        app.put("/api/v1/devices/ghost/config", json!({}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn telemetry_and_webhook_routes_check_their_parameters() {
    let app = test_app().await;
    app.provision("dev-1").await;
    let empty = app.get("/api/v1/devices/dev-1/telemetry").await;
    assert_eq!(
        (empty.status, empty.body["items"].clone()),
        (StatusCode::OK, json!([]))
    );
    assert_eq!(
        app.get("/api/v1/devices/dev-1/telemetry/latest")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/devices/ghost/telemetry").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/devices/dev-1/telemetry?from=yesterday")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/api/v1/devices/dev-1/telemetry?cursor=zzz")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let ok = app.get("/api/v1/devices/dev-1/telemetry?from=2026-01-01T00:00:00Z&to=1999999999999&keys=cpu,mem&limit=5").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(
        app.get("/api/v1/webhooks/deliveries").await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/webhooks/deliveries?status=failed")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/webhooks/deliveries?status=nope")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/api/v1/webhooks/deliveries?cursor=abc")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let stats = app.get("/api/v1/stats").await;
    assert!(
        stats.body["commands"]["by_status"].is_object(),
        "{}",
        stats.body
    );
    assert!(stats.body["telemetry"]["stored"].is_u64());
    assert!(stats.body["webhooks"]["backlog"].is_u64());
    assert!(stats.body["connections"]["current"].is_u64());
}

// ---- GET /api/v1/events ----------------------------------------------------------

/// One server-sent event: a frame with `event:` (comments are skipped).
#[derive(Debug)]
pub(crate) struct SseEvent {
    id: Option<String>,
    pub(crate) event: String,
    pub(crate) data: Value,
}

/// An open `GET /api/v1/events` stream read frame by frame.
pub(crate) struct Sse {
    body: hyper::body::Incoming,
    buf: String,
    keepalives: usize,
}

impl TestApp {
    /// Opens the event stream and checks its headers.
    pub(crate) async fn events(&self, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = Request::get(format!("http://{}/api/v1/events{query}", self.addr))
            .header("x-api-key", API_KEY);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let response = self
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        Sse {
            body: response.into_body(),
            buf: String::new(),
            keepalives: 0,
        }
    }

    async fn emit(&self, kind: &str, device: &str) -> String {
        let device: DeviceId = device.parse().unwrap();
        let events = self.broker.handle.events();
        events.emit(kind, Some(&device), json!({})).await.id
    }
}

impl Sse {
    /// The next frame's text, without its blank line; `None` once the stream ended.
    async fn frame(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame = self.buf[..end].to_owned();
                self.buf.drain(..end + 2);
                return Some(frame);
            }
            let next = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("no event within the patience");
            match next {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next event, skipping comments; panics if the stream ends.
    pub(crate) async fn next(&mut self) -> SseEvent {
        loop {
            let frame = self.frame().await.expect("the stream ended");
            let mut event = SseEvent {
                id: None,
                event: String::new(),
                data: Value::Null,
            };
            for line in frame.lines() {
                if line == ": keepalive" {
                    self.keepalives += 1;
                } else if let Some(id) = line.strip_prefix("id: ") {
                    event.id = Some(id.to_owned());
                } else if let Some(kind) = line.strip_prefix("event: ") {
                    event.event = kind.to_owned();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data = serde_json::from_str(data).expect("data is one line of JSON");
                } else {
                    panic!("unexpected line {line:?} in frame {frame:?}");
                }
            }
            if !event.event.is_empty() {
                return event;
            }
        }
    }
}

#[tokio::test]
async fn events_stream_what_devices_do_filtered_by_type_and_device() {
    let app = test_app().await;
    let mut all = app.events("", None).await;
    let mut dev2 = app.events("?type=device.*&device_id=dev-2", None).await;
    let mut cmds = app.events("?type=command.cancelled,alarm.*", None).await;
    let tok1 = app.provision("dev-1").await["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let tok2 = app.provision("dev-2").await["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_c1, mut e1) = app.mqtt_connect("dev-1", "dev-1", &tok1).await;
    let online = all.next().await;
    assert_eq!(online.event, "device.online");
    assert_eq!(online.data["type"], "device.online");
    assert_eq!(online.data["device_id"], "dev-1");
    assert_eq!(online.id.as_deref(), online.data["id"].as_str());
    assert!(online.data["at"].as_str().unwrap().ends_with('Z'));
    let (_c2, mut e2) = app.mqtt_connect("dev-2", "dev-2", &tok2).await;
    tokio::spawn(async move { while e1.poll().await.is_ok() {} });
    tokio::spawn(async move { while e2.poll().await.is_ok() {} });
    let first = dev2.next().await;
    assert_eq!(
        (first.event.as_str(), first.data["device_id"].as_str()),
        ("device.online", Some("dev-2")),
        "the dev-1 event is filtered out"
    );
    let created = app
        .post(
            "/api/v1/devices/dev-2/commands",
            json!({"type": "RELOAD", "metadata": {"m": 1}}),
        )
        .await;
    let id = created.body["command_id"].as_str().unwrap().to_owned();
    app.delete(&format!("/api/v1/commands/{id}")).await;
    let cancelled = cmds.next().await;
    assert_eq!(cancelled.event, "command.cancelled");
    assert_eq!(cancelled.data["data"]["command_id"], id.as_str());
    assert_eq!(cancelled.data["data"]["metadata"], json!({"m": 1}));
    app.stop().await;
}

#[tokio::test]
async fn events_resume_after_the_last_event_id_without_gap_or_duplicate() {
    let app = test_app().await;
    let ids = [
        app.emit("device.online", "dev-1").await,
        app.emit("device.offline", "dev-1").await,
        app.emit("device.online", "dev-2").await,
    ];
    let mut resumed = app.events("", Some(&ids[0])).await;
    let after = app.emit("alarm.raised", "dev-2").await;
    for want in [&ids[1], &ids[2], &after] {
        assert_eq!(resumed.next().await.id.as_ref(), Some(want));
    }
    // The query parameter works for clients that cannot set headers, and filters
    // apply to the replay too.
    let query = format!("?last_event_id={}&device_id=dev-2", ids[0]);
    let mut by_param = app.events(&query, None).await;
    assert_eq!(by_param.next().await.id.as_ref(), Some(&ids[2]));
    assert_eq!(by_param.next().await.id.as_ref(), Some(&after));
    let live = app.emit("device.offline", "dev-2").await;
    assert_eq!(by_param.next().await.id, Some(live.clone()));
    assert_eq!(resumed.next().await.id, Some(live));
    app.stop().await;
}

#[tokio::test]
async fn events_resumed_from_before_the_buffer_start_with_a_gap_frame() {
    let app = test_app().await;
    let first = app.emit("device.online", "dev-1").await;
    let stale = "0000000000000001aaaaaaaa";
    let mut stream = app.events("", Some(stale)).await;
    let gap = stream.next().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.id, None, "a gap frame moves no client's last event id");
    assert_eq!(
        gap.data,
        json!({"last_event_id": stale, "oldest_available": first})
    );
    assert_eq!(stream.next().await.id, Some(first));
    app.stop().await;
}

/// Current-thread runtime: the burst below runs without the stream being polled, so
/// the broadcast overtakes this client deterministically.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_event_client_gets_a_gap_frame_and_never_blocks_the_broker() {
    let app = test_app().await;
    let mut stream = app.events("", None).await;
    let seen = app.emit("device.online", "dev-1").await;
    assert_eq!(stream.next().await.id, Some(seen.clone()));
    // More than the live buffer (1024) in one go: emitting never waits for readers.
    let mut last = String::new();
    for _ in 0..1100 {
        last = app.emit("device.offline", "dev-1").await;
    }
    let gap = stream.next().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data["last_event_id"], seen.as_str());
    assert_eq!(gap.data["missed"], 1100 - 1024);
    let oldest = gap.data["oldest_available"].as_str().unwrap().to_owned();
    let mut next = stream.next().await;
    assert_eq!(next.id.as_deref(), Some(oldest.as_str()));
    while next.id.as_deref() != Some(last.as_str()) {
        next = stream.next().await;
        assert_eq!(next.event, "device.offline");
    }
    app.stop().await;
}

#[tokio::test]
async fn idle_event_streams_get_keepalives_and_end_at_shutdown() {
    let app = test_app().await;
    let mut stream = app.events("", None).await;
    let frame = stream.frame().await.unwrap();
    assert_eq!(frame, ": keepalive");
    // The drain must not wait for the open stream.
    app.shutdown.cancel();
    let server = tokio::time::timeout(fleetmq_web::DRAIN_DEADLINE / 2, app.server)
        .await
        .expect("the open event stream held up the drain");
    server.unwrap().unwrap();
    while stream.frame().await.is_some() {}
    app.broker.stop().await;
}

#[tokio::test]
async fn bad_event_stream_parameters_are_400() {
    let app = test_app().await;
    for query in [
        "?type=comm*",
        "?type=device.online,",
        "?device_id=not%20a%20device",
        "?last_event_id=xyz",
        "?bogus=1",
        "?type=a&type=b",
    ] {
        let answer = app.get(&format!("/api/v1/events{query}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.error_code(), "bad_request", "{query}");
    }
    app.stop().await;
}

// ---- GET /metrics ----------------------------------------------------------------

/// A scrape parsed strictly: every sample belongs to a family declared before it with
/// `# HELP` and `# TYPE`, counters end in `_total`, histogram buckets are cumulative.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    types: std::collections::BTreeMap<String, String>,
    /// `name{k="v",...}` with labels sorted → value.
    samples: std::collections::BTreeMap<String, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        let mut helped = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has text");
                assert!(!help.is_empty(), "{line}");
                assert!(helped.insert(name.to_owned()), "second HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter without _total: {line}");
                }
                assert!(name.starts_with("fleetmq_"), "{line}");
                let old = scrape.types.insert(name.to_owned(), kind.to_owned());
                assert!(old.is_none(), "second TYPE: {line}");
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                scrape.sample(line);
            }
        }
        scrape.check_histograms();
        scrape
    }

    fn sample(&mut self, line: &str) {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels: Vec<String> = split_labels(body);
                labels.sort();
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (self.types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(
            self.types.contains_key(family),
            "sample before its TYPE: {line}"
        );
        let key = format!("{name}{{{}}}", labels.join(","));
        assert!(
            self.samples.insert(key, value).is_none(),
            "duplicate: {line}"
        );
    }

    fn check_histograms(&self) {
        for (name, _) in self.types.iter().filter(|(_, t)| *t == "histogram") {
            let prefix = format!("{name}_bucket{{");
            let buckets: Vec<(f64, f64)> = (self.samples.iter())
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| {
                    let le = k.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    (le, *v)
                })
                .collect();
            let mut sorted = buckets.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                sorted.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name} not cumulative"
            );
            let inf = sorted.last().expect("buckets").1;
            assert_eq!(Some(inf), self.get(&format!("{name}_count"), &[]), "{name}");
        }
    }

    /// The value of a series; labels in any order.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        labels.sort();
        self.samples
            .get(&format!("{name}{{{}}}", labels.join(",")))
            .copied()
    }

    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}

/// `k="v"` pairs of a label set, honouring `\"` and `\\` escapes.
fn split_labels(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in body.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    assert!(!quoted, "unterminated label value in {body}");
    if !current.is_empty() {
        out.push(current);
    }
    for label in &out {
        let (k, v) = label.split_once('=').expect("label is k=v");
        assert!(
            !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
            "{label}"
        );
    }
    out
}

impl TestApp {
    /// `GET /metrics` without a key, parsed.
    pub(crate) async fn scrape(&self) -> Scrape {
        let req = Request::get(format!("http://{}/metrics", self.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.client.request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Scrape::parse(std::str::from_utf8(&bytes).unwrap())
    }
}

#[tokio::test]
async fn metrics_move_with_mqtt_traffic_and_a_command() {
    let app = test_app().await;
    let before = app.scrape().await;
    let token = app.provision("dev-1").await["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut completions = app.events("?type=command.completed", None).await;
    let (client, mut events) = app.mqtt_connect("dev-1", "dev-1", &token).await;
    client
        .subscribe("device/dev-1/command", QoS::AtLeastOnce)
        .await
        .unwrap();
    next_packet(&mut events, |p| matches!(p, Packet::SubAck(_)))
        .await
        .unwrap();
    let created = app
        .post("/api/v1/devices/dev-1/commands", json!({"type": "RELOAD"}))
        .await;
    let Packet::Publish(command) = next_packet(&mut events, |p| matches!(p, Packet::Publish(_)))
        .await
        .unwrap()
    else {
        unreachable!()
    };
    let command: Value = serde_json::from_slice(&command.payload).unwrap();
    assert_eq!(command["commandId"], created.body["command_id"]);
    let answer = json!({"commandId": command["commandId"], "success": true}).to_string();
    client
        .publish("device/dev-1/response", QoS::AtLeastOnce, false, answer)
        .await
        .unwrap();
    let telemetry = json!({"temp": 21.5}).to_string();
    client
        .publish("device/dev-1/telemetry", QoS::AtLeastOnce, false, telemetry)
        .await
        .unwrap();
    // Not this device's topic: dropped by the ACL. The PUBACK of the next publish
    // says the broker has seen it.
    client
        .publish("device/dev-2/telemetry", QoS::AtMostOnce, false, "{}")
        .await
        .unwrap();
    client
        .publish("device/dev-1/status", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let mut acks = 0;
    while acks < 2 {
        next_packet(&mut events, |p| matches!(p, Packet::PubAck(_)))
            .await
            .unwrap();
        acks += 1;
    }
    assert_eq!(completions.next().await.event, "command.completed");
    app.broker.handle.telemetry().flush().await;

    let after = app.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        let was = before.get(name, labels).unwrap_or(0.0);
        let is = after.value(name, labels);
        assert!(is > was, "{name} {labels:?} did not move: {was} → {is}");
    };
    let tcp_v4 = [("listener", "tcp"), ("protocol", "3.1.1")];
    assert_eq!(before.value("fleetmq_connections", &tcp_v4), 0.0);
    assert_eq!(after.value("fleetmq_connections", &tcp_v4), 1.0);
    assert_eq!(
        after.value("fleetmq_connections_by_kind", &[("kind", "device")]),
        1.0
    );
    moved("fleetmq_connections_accepted_total", &[]);
    for kind in ["connect", "subscribe", "publish", "puback"] {
        moved("fleetmq_packets_received_total", &[("type", kind)]);
    }
    for kind in ["connack", "suback", "publish", "puback"] {
        moved("fleetmq_packets_sent_total", &[("type", kind)]);
    }
    moved("fleetmq_messages_received_total", &[]);
    moved("fleetmq_messages_sent_total", &[]);
    moved("fleetmq_bytes_received_total", &[]);
    moved("fleetmq_bytes_sent_total", &[]);
    moved("fleetmq_dropped_total", &[("cause", "acl_publish")]);
    assert_eq!(
        after.value("fleetmq_dropped_total", &[("cause", "too_large")]),
        0.0
    );
    // Slow consumers: exposed (and idle here).
    assert_eq!(
        after.value("fleetmq_dropped_total", &[("cause", "slow_consumer")]),
        0.0
    );
    assert_eq!(after.value("fleetmq_publisher_pauses_total", &[]), 0.0);
    assert_eq!(
        after.value("fleetmq_slow_consumers_disconnected_total", &[]),
        0.0
    );
    assert_eq!(
        after.value("fleetmq_commands", &[("status", "completed")]),
        1.0
    );
    assert_eq!(
        after.value("fleetmq_commands", &[("status", "queued")]),
        0.0
    );
    assert_eq!(
        after.value("fleetmq_command_round_trip_seconds_count", &[]),
        1.0
    );
    moved("fleetmq_telemetry_points_stored_total", &[]);
    moved("fleetmq_redb_commit_seconds_count", &[]);
    assert_eq!(after.value("fleetmq_webhook_backlog", &[]), 0.0);
    assert_eq!(
        after.value(
            "fleetmq_webhook_deliveries_total",
            &[("outcome", "delivered")]
        ),
        0.0
    );
    assert!(after.value("fleetmq_uptime_seconds", &[]) >= 0.0);
    drop(client);
    app.stop().await;
}

// ---- GET /api/v1/openapi.json ----------------------------------------------------

/// Documented routes another branch serves (the dashboard); see the unit test in
/// `routes/openapi.rs`.
const SERVED_ELSEWHERE: &[(&str, &str)] = &[("/", "get")];

/// Every documented (path, method) reaches a handler: not `405`, not "no such route".
#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = test_app().await;
    let doc = app.get("/api/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    let mut probed = 0;
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if method == "parameters"
                || SERVED_ELSEWHERE.contains(&(path.as_str(), method.as_str()))
            {
                continue;
            }
            // Ids nobody has: reads and deletes answer 404 "not found" from their
            // handler, writes 400 for the empty body; nothing changes.
            let concrete = path
                .split('/')
                .map(|s| if s.starts_with('{') { "probe-x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let req = Request::builder()
                .method(m.clone())
                .uri(format!("http://{}{concrete}", app.addr))
                .header("x-api-key", API_KEY)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = app.client.request(req).await.unwrap();
            let status = response.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            if status == StatusCode::NOT_FOUND {
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                assert_ne!(
                    body["error"]["message"], "no such route",
                    "{m} {path} is documented but not routed"
                );
            }
            probed += 1;
        }
    }
    assert!(probed >= 27, "only {probed} operations documented");
    assert_eq!(app.device_count().await, 0);
    app.stop().await;
}
