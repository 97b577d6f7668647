//! Real MQTT clients (rumqttc, 3.1.1 and 5, over TCP and WebSocket) against a real broker.
#![allow(dead_code, reason = "each test file uses a different subset")]

#[macro_use]
pub mod conf;

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Transport,
};

pub use fleetmq_broker::testing::TestBroker;

pub const WAIT: Duration = Duration::from_secs(5);

/// Which listener and protocol a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Ws,
}

pub fn options_v4(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> MqttOptions {
    let mut opts = match via {
        Via::Tcp => MqttOptions::new(id, "127.0.0.1", broker.tcp.port()),
        Via::Ws => {
            let mut o = MqttOptions::new(
                id,
                format!("ws://127.0.0.1:{}/mqtt", broker.ws.port()),
                broker.ws.port(),
            );
            o.set_transport(Transport::Ws);
            o
        }
    };
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    opts
}

/// Connects a 3.1.1 client and waits for CONNACK.
pub async fn connect_v4(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut el) = AsyncClient::new(options_v4(broker, via, id, creds), 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK in time")?
        {
            Event::Incoming(Packet::ConnAck(_)) => return Ok((client, el)),
            _ => continue,
        }
    }
}

pub fn options_v5(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> v5::MqttOptions {
    let mut opts = match via {
        Via::Tcp => v5::MqttOptions::new(id, "127.0.0.1", broker.tcp.port()),
        Via::Ws => {
            let mut o = v5::MqttOptions::new(
                id,
                format!("ws://127.0.0.1:{}/mqtt", broker.ws.port()),
                broker.ws.port(),
            );
            o.set_transport(Transport::Ws);
            o
        }
    };
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    opts
}

/// Connects an MQTT 5 client and waits for CONNACK.
pub async fn connect_v5(
    broker: &TestBroker,
    via: Via,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(v5::AsyncClient, v5::EventLoop), v5::ConnectionError> {
    let (client, mut el) = v5::AsyncClient::new(options_v5(broker, via, id, creds), 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK in time")?
        {
            v5::Event::Incoming(v5::mqttbytes::v5::Packet::ConnAck(_)) => return Ok((client, el)),
            _ => continue,
        }
    }
}

/// Polls until a packet matching `pick` arrives (within [`WAIT`]).
pub async fn next_v4<T>(el: &mut EventLoop, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(p) = el.poll().await.expect("connection stays up") {
                if let Some(t) = pick(&p) {
                    return t;
                }
            }
        }
    })
    .await
    .expect("expected packet in time")
}

/// Polls for `d`, collecting every incoming PUBLISH (topic, payload).
pub async fn publishes_v4(el: &mut EventLoop, d: Duration) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(d, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    got.push((p.topic.clone(), p.payload.to_vec()))
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    got
}

pub async fn next_v5<T>(
    el: &mut v5::EventLoop,
    mut pick: impl FnMut(&v5::mqttbytes::v5::Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let v5::Event::Incoming(p) = el.poll().await.expect("connection stays up") {
                if let Some(t) = pick(&p) {
                    return t;
                }
            }
        }
    })
    .await
    .expect("expected packet in time")
}

/// Subscribes and waits for the SUBACK; returns its return codes as bytes.
pub async fn subscribe_v4(
    client: &AsyncClient,
    el: &mut EventLoop,
    filter: &str,
    qos: QoS,
) -> Vec<u8> {
    client
        .subscribe(filter, qos)
        .await
        .expect("queue subscribe");
    next_v4(el, |p| match p {
        Packet::SubAck(a) => Some(
            a.return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                    rumqttc::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
        ),
        _ => None,
    })
    .await
}

/// Keeps an event loop polling in the background (acks, pings).
pub fn drive_v4(mut el: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while el.poll().await.is_ok() {} })
}

pub fn drive_v5(mut el: v5::EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while el.poll().await.is_ok() {} })
}

/// A service client that may read and write everything.
pub fn allow_all() -> Vec<fleetmq_storage::AclRule> {
    vec![fleetmq_storage::AclRule {
        action: fleetmq_storage::AclAction::All,
        topic: "#".into(),
        allow: true,
    }]
}

pub fn addr(broker: &TestBroker) -> SocketAddr {
    broker.tcp
}

// ---- Device-logic helpers: firmware-like devices, fleet events, webhook receivers ----

/// How often bounded polls look again.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `check` every [`POLL`] until it returns `Some`, at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// SPEC §4 envelope, built independently of the broker: `[1, generation, nonce, ct+tag]`.
pub fn seal_envelope(key: &[u8; 32], generation: u8, topic: &str, plain: &[u8]) -> Vec<u8> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut nonce = [0x5a; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("key"));
    let mut data = plain.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(topic.as_bytes()),
        &mut data,
    )
    .expect("seal");
    let mut env = vec![1, generation];
    env.extend_from_slice(&nonce);
    env.extend(data);
    env
}

/// Opens a SPEC §4 envelope; `None` if it is not one sealed with `key` for `topic`.
pub fn open_envelope(key: &[u8; 32], topic: &str, env: &[u8]) -> Option<(u8, Vec<u8>)> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    if env.len() < 14 + 16 || env[0] != 1 {
        return None;
    }
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(&env[2..14]).ok()?;
    let mut data = env[14..].to_vec();
    let plain = k
        .open_in_place(nonce, Aad::from(topic.as_bytes()), &mut data)
        .ok()?;
    Some((env[1], plain.to_vec()))
}

/// A command as a [`Firmware`] received it.
#[derive(Debug, Clone)]
pub struct ReceivedCommand {
    /// The PUBLISH as it arrived (for manual acks).
    pub publish: rumqttc::Publish,
    /// The plaintext payload, parsed.
    pub json: serde_json::Value,
    /// The key generation of the envelope, for an encrypted device.
    pub generation: Option<u8>,
}

impl ReceivedCommand {
    pub fn command_id(&self) -> &str {
        self.json["commandId"].as_str().expect("commandId")
    }

    pub fn kind(&self) -> &str {
        self.json["type"].as_str().expect("type")
    }
}

/// How a [`Firmware`] connects.
#[derive(Debug, Clone, Default)]
pub struct FirmwareOptions {
    /// Hold back PUBACKs until [`Firmware::ack`].
    pub manual_acks: bool,
    /// The device's key (generation, key) when it is encrypted.
    pub key: Option<(u8, [u8; 32])>,
    /// Connect over WebSocket instead of TCP.
    pub ws: bool,
}

/// A device that behaves like firmware: MQTT 3.1.1, subscribed at QoS 1 to
/// `device/{id}/command`, answering on `device/{id}/response`.
pub struct Firmware {
    pub id: String,
    pub client: AsyncClient,
    key: Option<(u8, [u8; 32])>,
    commands: tokio::sync::mpsc::Receiver<ReceivedCommand>,
    task: tokio::task::JoinHandle<()>,
}

impl Firmware {
    /// Connects with `token`, subscribes to its command topic and waits for the SUBACK.
    pub async fn connect(b: &TestBroker, id: &str, token: &str) -> Firmware {
        Firmware::connect_with(b, id, token, FirmwareOptions::default()).await
    }

    pub async fn connect_with(
        b: &TestBroker,
        id: &str,
        token: &str,
        o: FirmwareOptions,
    ) -> Firmware {
        let via = if o.ws { Via::Ws } else { Via::Tcp };
        let mut opts = options_v4(b, via, id, Some((id, token)));
        opts.set_manual_acks(o.manual_acks);
        let (client, mut el) = AsyncClient::new(opts, 100);
        loop {
            let event = tokio::time::timeout(WAIT, el.poll())
                .await
                .expect("CONNACK in time")
                .expect("device connects");
            if let Event::Incoming(Packet::ConnAck(_)) = event {
                break;
            }
        }
        let topic = format!("device/{id}/command");
        client
            .subscribe(topic.clone(), QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        let (tx, commands) = tokio::sync::mpsc::channel(1024);
        let (subacked, suback) = tokio::sync::oneshot::channel();
        let key = o.key;
        let task = tokio::spawn(async move {
            let mut subacked = Some(subacked);
            // Any error ends the loop: polling again would make rumqttc reconnect.
            while let Ok(event) = el.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(ack)) => {
                        if let Some(s) = subacked.take() {
                            let _ = s.send(ack.return_codes);
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) if p.topic == topic => {
                        let (generation, plain) = match &key {
                            Some((_, k)) => {
                                let (g, plain) = open_envelope(k, &topic, &p.payload)
                                    .expect("a command sealed with the device key");
                                (Some(g), plain)
                            }
                            None => (None, p.payload.to_vec()),
                        };
                        let json = serde_json::from_slice(&plain).expect("command is JSON");
                        let cmd = ReceivedCommand {
                            publish: p,
                            json,
                            generation,
                        };
                        if tx.send(cmd).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        });
        let codes = tokio::time::timeout(WAIT, suback)
            .await
            .expect("SUBACK in time")
            .expect("connection stays up until the SUBACK");
        assert!(
            matches!(
                codes.as_slice(),
                [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            ),
            "command subscription granted at QoS 1: {codes:?}"
        );
        Firmware {
            id: id.to_owned(),
            client,
            key,
            commands,
            task,
        }
    }

    /// The next command, within [`WAIT`].
    pub async fn next(&mut self) -> ReceivedCommand {
        tokio::time::timeout(WAIT, self.commands.recv())
            .await
            .expect("a command in time")
            .expect("device connection alive")
    }

    /// Every command that arrives within `d`.
    pub async fn within(&mut self, d: Duration) -> Vec<ReceivedCommand> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(d, async {
            while let Some(c) = self.commands.recv().await {
                got.push(c);
            }
        })
        .await;
        got
    }

    /// Sends the PUBACK held back by [`FirmwareOptions::manual_acks`].
    pub async fn ack(&self, cmd: &ReceivedCommand) {
        self.client.ack(&cmd.publish).await.expect("queue PUBACK");
    }

    /// Publishes `payload` (sealed when the device is encrypted) on `device/{id}/{leaf}`.
    pub async fn publish(&self, leaf: &str, payload: &[u8]) {
        let topic = format!("device/{}/{leaf}", self.id);
        let payload = match &self.key {
            Some((g, k)) => seal_envelope(k, *g, &topic, payload),
            None => payload.to_vec(),
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
    }

    /// Answers `{"commandId": id, ...fields}` on the response topic.
    pub async fn answer(&self, command_id: &str, fields: serde_json::Value) {
        let mut body = serde_json::json!({ "commandId": command_id });
        if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
            b.extend(f.clone());
        }
        self.publish("response", body.to_string().as_bytes()).await;
    }

    pub async fn complete(&self, command_id: &str, result: serde_json::Value) {
        self.answer(
            command_id,
            serde_json::json!({"success": true, "result": result}),
        )
        .await;
    }

    pub async fn fail(&self, command_id: &str, error: &str) {
        self.answer(
            command_id,
            serde_json::json!({"success": false, "error": error}),
        )
        .await;
    }

    /// Sends DISCONNECT and waits for the connection to end.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }

    /// Drops the socket without DISCONNECT (a crash or a lost network).
    pub async fn drop_connection(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Waits until the broker closed the connection (e.g. a takeover).
    pub async fn closed_by_broker(self) {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the broker closes the connection")
            .expect("device task");
    }
}

/// The next fleet event matching `pick` (others are skipped), within [`WAIT`].
pub async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<fleetmq_broker::fleet::events::FleetEvent>,
    mut pick: impl FnMut(&fleetmq_broker::fleet::events::FleetEvent) -> bool,
) -> fleetmq_broker::fleet::events::FleetEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = rx.recv().await.expect("event stream alive, not lagging");
            if pick(&e) {
                return e;
            }
        }
    })
    .await
    .expect("expected event in time")
}

/// Every fleet event within `d`.
pub async fn events_within(
    rx: &mut tokio::sync::broadcast::Receiver<fleetmq_broker::fleet::events::FleetEvent>,
    d: Duration,
) -> Vec<fleetmq_broker::fleet::events::FleetEvent> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(d, async {
        while let Ok(e) = rx.recv().await {
            got.push(e);
        }
    })
    .await;
    got
}

/// How a [`HookReceiver`] answers one request.
#[derive(Debug, Clone, Copy)]
pub enum HookReply {
    Status(u16),
    /// Never answer.
    Hang,
}

/// One POST a [`HookReceiver`] got.
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub at: std::time::Instant,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
}

impl HookRequest {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    pub fn kind(&self) -> String {
        self.json()["type"].as_str().expect("type").to_owned()
    }

    /// Checks `X-Fleetmq-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let Some(hex) = self
            .signature
            .as_deref()
            .and_then(|s| s.strip_prefix("sha256="))
        else {
            return false;
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        let tag: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        ring::hmac::verify(&key, &self.body, &tag).is_ok()
    }
}

/// A webhook receiver: a hyper 1 server on `127.0.0.1:0` answering request `n` (from 0)
/// with `reply(n)`.
pub struct HookReceiver {
    pub url: String,
    rx: tokio::sync::mpsc::Receiver<HookRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl HookReceiver {
    pub async fn start(reply: impl Fn(usize) -> HookReply + Send + Sync + 'static) -> HookReceiver {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!(
            "http://{}/hooks",
            listener.local_addr().expect("receiver address")
        );
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let reply = std::sync::Arc::new(reply);
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, reply, count) = (tx.clone(), reply.clone(), count.clone());
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tx, reply, count) = (tx.clone(), reply.clone(), count.clone());
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let signature = header("x-fleetmq-signature");
                            let content_type = header("content-type");
                            let at = std::time::Instant::now();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = tx
                                .send(HookRequest {
                                    at,
                                    signature,
                                    content_type,
                                    body,
                                })
                                .await;
                            match reply(n) {
                                HookReply::Status(s) => {
                                    let mut response = hyper::Response::new(
                                        http_body_util::Full::new(bytes::Bytes::new()),
                                    );
                                    *response.status_mut() =
                                        hyper::StatusCode::from_u16(s).expect("status");
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                                HookReply::Hang => std::future::pending().await,
                            }
                        }
                    },
                );
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        HookReceiver { url, rx, task }
    }

    /// The next request, within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Option<HookRequest> {
        tokio::time::timeout(d, self.rx.recv()).await.ok().flatten()
    }

    /// The next request, within [`WAIT`].
    pub async fn next(&mut self) -> HookRequest {
        self.next_within(WAIT)
            .await
            .expect("a webhook request in time")
    }

    /// Requests already received, without waiting.
    pub fn drain(&mut self) -> Vec<HookRequest> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `[[webhooks]]` entry.
pub fn webhook(
    url: &str,
    secret: &str,
    events: Option<&[&str]>,
) -> fleetmq_broker::config::WebhookConfig {
    fleetmq_broker::config::WebhookConfig {
        url: url.to_owned(),
        secret: secret.to_owned(),
        events: events.map(|e| e.iter().map(|s| (*s).to_owned()).collect()),
    }
}
