//! `device_sim`: N simulated edge devices speaking the JSON device contract (SPEC §3-§6)
//! against a running fleetmq, for benchmarks and the README walk-through.
//!
//! It provisions `sim-0000`, `sim-0001`, ... through the admin API (an existing device
//! gets fresh credentials instead, and a fresh key when it is encrypted), then runs one
//! MQTT connection per device: a retained `status` with a last will, `telemetry` every
//! `--telemetry-ms`, answers to `command`s (deduplicated by `commandId`) and applied
//! `config`s. With `--encrypted` every payload uses the SPEC §4 envelope both ways.
//! Every 5 s and at exit it prints one summary line on stdout; logs go to stderr
//! (`RUST_LOG`).
//!
//! ```text
//! cargo run --example device_sim -- --count 50 --telemetry-ms 1000 \
//!     --api-key "$(cat data/admin.key)" --failure-rate 0.05 --duration-s 60
//! ```

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use clap::Parser;
use fleetmq_broker::envelope::{self, CryptoError, NonceSource, KEY_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// MQTT keep-alive of every device.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet a device sends or accepts (the broker's default `max_payload`).
const MAX_PACKET: usize = 256 * 1024;
/// Requests a device may queue in its MQTT client before a publish is dropped.
const REQUEST_CAPACITY: usize = 64;
/// Events the network task may queue for its device before it waits.
const INCOMING_CAPACITY: usize = 64;
/// Reconnect backoff: first wait, and the cap it doubles up to.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Admin API requests in flight while provisioning (the broker hashes every token).
const PROVISION_CONCURRENCY: usize = 8;
/// How long one admin API request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the summary line is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// How long a device may take to publish its offline status and disconnect at exit.
const FLUSH_GRACE: Duration = Duration::from_secs(3);
/// Answers remembered per device for re-sent commands.
const ANSWER_LOG_LEN: usize = 1024;
/// The address every simulated device reports.
const DEVICE_IP: &str = "127.0.0.1";

/// Simulated edge devices for a running fleetmq.
#[derive(Debug, Parser)]
#[command(name = "device_sim", disable_version_flag = true)]
struct Args {
    /// MQTT over TCP address of the broker.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Connect over WebSocket to this URL instead, e.g. ws://127.0.0.1:9001/mqtt.
    #[arg(long, value_name = "URL")]
    ws: Option<String>,
    /// Base URL of the admin HTTP API (plain http).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    admin: String,
    /// Admin API key; when absent it is read from --api-key-file.
    #[arg(long, env = "FLEETMQ_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the admin API key (written by the broker on first start).
    #[arg(long, value_name = "PATH", default_value = "./data/admin.key")]
    api_key_file: PathBuf,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Device id prefix; ids are the prefix and a 4-digit index.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// Telemetry period per device, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    telemetry_ms: u64,
    /// QoS of telemetry publishes.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Speak MQTT 5 instead of 3.1.1.
    #[arg(long)]
    v5: bool,
    /// Provision devices with payload encryption and use the SPEC §4 envelope.
    #[arg(long)]
    encrypted: bool,
    /// How long a device takes to answer a command, in milliseconds.
    #[arg(long, default_value_t = 50)]
    reply_latency_ms: u64,
    /// Share of commands answered with `success: false` (0.0..=1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    failure_rate: f64,
    /// Stop after this many seconds; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    duration_s: u64,
    /// Firmware version the devices report in their status.
    #[arg(long = "version", value_name = "VERSION", default_value = "1.0.0")]
    firmware_version: String,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        Ok(_) => Err("must be between 0.0 and 1.0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Where the devices connect.
#[derive(Debug, Clone)]
enum Endpoint {
    Tcp { host: String, port: u16 },
    Ws(String),
}

impl Endpoint {
    fn from_args(args: &Args) -> anyhow::Result<Endpoint> {
        if let Some(url) = &args.ws {
            if !url.starts_with("ws://") {
                bail!("--ws must be a ws:// URL, got {url:?}");
            }
            return Ok(Endpoint::Ws(url.clone()));
        }
        let (host, port) = args
            .mqtt
            .rsplit_once(':')
            .with_context(|| format!("--mqtt must be HOST:PORT, got {:?}", args.mqtt))?;
        let port = port
            .parse()
            .with_context(|| format!("--mqtt port {port:?} is not a port number"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Endpoint::Tcp { host, port })
    }

    /// Host, port and transport for rumqttc: a WebSocket endpoint is its whole URL.
    fn parts(&self) -> (String, u16, rumqttc::Transport) {
        match self {
            Endpoint::Tcp { host, port } => (host.clone(), *port, rumqttc::Transport::Tcp),
            Endpoint::Ws(url) => (url.clone(), 0, rumqttc::Transport::Ws),
        }
    }
}

/// What every device shares.
#[derive(Debug)]
struct Settings {
    endpoint: Endpoint,
    v5: bool,
    telemetry_qos: u8,
    telemetry_every: Duration,
    reply_latency: Duration,
    failure_rate: f64,
    version: String,
}

/// Fleet-wide counters behind the summary line.
#[derive(Debug, Default)]
struct Stats {
    connected: AtomicUsize,
    telemetry: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    duplicates: AtomicU64,
    configs: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self, total: usize, elapsed: Duration) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "[{:>6.1}s] connected {}/{total} | telemetry sent {} | commands answered {} \
             ({} failed, {} duplicates) | configs applied {} | errors {} | publishes dropped {}",
            elapsed.as_secs_f64(),
            self.connected.load(Ordering::Relaxed),
            get(&self.telemetry),
            get(&self.answered),
            get(&self.failed),
            get(&self.duplicates),
            get(&self.configs),
            get(&self.errors),
            get(&self.dropped),
        )
    }
}

/// A small xorshift64* generator for simulated values and failures (not for secrets).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut bytes = [0u8; 8];
        let seed = match SystemRandom::new().fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => unix_ms() ^ 0x9e37_79b9_7f4a_7c15,
        };
        Rng(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[0, max)`.
    fn duration(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------
// Payload envelope (SPEC §4)
// ---------------------------------------------------------------------------------

/// A device's AES-256-GCM key as the admin API hands it out.
#[derive(Clone, Copy)]
struct DeviceKey {
    generation: u8,
    bytes: [u8; KEY_LEN],
}

impl TryFrom<KeyView> for DeviceKey {
    type Error = anyhow::Error;

    fn try_from(view: KeyView) -> anyhow::Result<DeviceKey> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(view.base64.trim())
            .context("device key is not base64")?;
        let bytes = <[u8; KEY_LEN]>::try_from(raw.as_slice())
            .map_err(|_| anyhow!("device key has {} bytes, not {KEY_LEN}", raw.len()))?;
        Ok(DeviceKey {
            generation: view.generation,
            bytes,
        })
    }
}

/// Seals and opens envelopes with one device's key, through the broker's own SPEC §4
/// codec ([`fleetmq_broker::envelope`]).
struct Sealer {
    key: DeviceKey,
    /// One nonce sequence for the device's whole run, reconnects included: its random
    /// prefix keeps it apart from the broker's sources, which seal with the same key.
    nonces: NonceSource,
}

impl Sealer {
    fn new(key: DeviceKey) -> Sealer {
        Sealer {
            key,
            nonces: NonceSource::new(),
        }
    }

    fn seal(&mut self, topic: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce = self.nonces.next();
        envelope::seal(
            &self.key.bytes,
            self.key.generation,
            nonce,
            topic,
            plaintext,
        )
    }

    /// Only our own key generation opens: the simulator never holds an older key.
    fn open(&self, topic: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let DeviceKey { generation, bytes } = self.key;
        let key_for = |g: u8| (g == generation).then_some(bytes);
        envelope::open(key_for, topic, sealed).map(|opened| opened.plaintext)
    }
}

// ---------------------------------------------------------------------------------
// Admin API over plain HTTP/1.1
// ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct NewDevice<'a> {
    id: &'a str,
    labels: SimLabels,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    encrypted: bool,
}

#[derive(Serialize)]
struct SimLabels {
    sim: &'static str,
}

#[derive(Deserialize)]
struct Provisioned {
    device: DeviceView,
    credentials: Credentials,
    key: Option<KeyView>,
}

#[derive(Deserialize)]
struct DeviceView {
    encrypted: bool,
}

#[derive(Deserialize)]
struct Credentials {
    password: String,
}

#[derive(Deserialize)]
struct RotatedCredentials {
    credentials: Credentials,
}

#[derive(Deserialize)]
struct KeyView {
    generation: u8,
    base64: String,
}

#[derive(Deserialize)]
struct RotatedKey {
    key: KeyView,
}

/// A minimal admin API client: one `Connection: close` request per call.
#[derive(Debug)]
struct Admin {
    authority: String,
    base_path: String,
    api_key: String,
}

impl Admin {
    fn new(url: &str, api_key: String) -> anyhow::Result<Admin> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--admin must be an http:// URL, got {url:?}"))?;
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("--admin URL {url:?} names no host");
        }
        Ok(Admin {
            authority: authority.to_owned(),
            base_path: base_path.to_owned(),
            api_key,
        })
    }

    /// One request; answers the status code and the body.
    async fn call(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.authority)
                .await
                .with_context(|| format!("connecting to the admin API at {}", self.authority))?;
            let head = format!(
                "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nx-api-key: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.base_path,
                self.authority,
                self.api_key,
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            parse_http_response(&raw)
        };
        tokio::time::timeout(ADMIN_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within {ADMIN_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path}"))
    }

    /// A request whose 2xx body is `T`; any other status is an error naming the API's message.
    async fn json<T: DeserializeOwned>(&self, method: &str, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.call(method, path, b"").await?;
        if !(200..300).contains(&status) {
            return Err(api_error(method, path, status, &body));
        }
        serde_json::from_slice(&body).with_context(|| format!("{method} {path}: unexpected body"))
    }
}

/// Status code and body of a complete HTTP/1.1 response.
fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response ended inside its headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("response headers are not UTF-8")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("response has no status code")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = &raw[end + 4..];
    Ok((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line not terminated")?;
        let size = std::str::from_utf8(&body[..line_end])?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).context("bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("truncated chunk")?);
        body = body.get(size + 2..).context("truncated chunk")?;
    }
}

fn api_error(method: &str, path: &str, status: u16, body: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    anyhow!("{method} {path}: HTTP {status}: {message}")
}

/// What a device needs to connect.
struct Identity {
    id: String,
    token: String,
    key: Option<DeviceKey>,
}

/// Creates the device, or takes over an existing one with fresh credentials (and a fresh
/// key when it is encrypted: a key is only ever shown when it is made).
async fn provision(admin: &Admin, id: &str, encrypted: bool) -> anyhow::Result<Identity> {
    let body = serde_json::to_vec(&NewDevice {
        id,
        labels: SimLabels { sim: "true" },
        encrypted,
    })?;
    let path = "/api/v1/devices";
    let (status, raw) = admin.call("POST", path, &body).await?;
    let (token, is_encrypted, key) = match status {
        201 => {
            let p: Provisioned = serde_json::from_slice(&raw).context("unexpected 201 body")?;
            (p.credentials.password, p.device.encrypted, p.key)
        }
        409 => {
            let rotated: RotatedCredentials = admin
                .json("POST", &format!("{path}/{id}/rotate-credentials"))
                .await?;
            let device: DeviceView = admin.json("GET", &format!("{path}/{id}")).await?;
            (rotated.credentials.password, device.encrypted, None)
        }
        _ => return Err(api_error("POST", path, status, &raw)),
    };
    if encrypted && !is_encrypted {
        warn!(
            device_id = id,
            "device exists without encryption; it stays plaintext"
        );
    }
    let key = match (is_encrypted, key) {
        (false, _) => None,
        (true, Some(key)) => Some(key),
        (true, None) => {
            let rotated: RotatedKey = admin
                .json("POST", &format!("{path}/{id}/rotate-key"))
                .await?;
            Some(rotated.key)
        }
    };
    Ok(Identity {
        id: id.to_owned(),
        token,
        key: key.map(DeviceKey::try_from).transpose()?,
    })
}

/// Provisions every device, a few at a time; the first failure stops the run.
async fn provision_all(
    admin: Arc<Admin>,
    ids: Vec<String>,
    encrypted: bool,
) -> anyhow::Result<Vec<Identity>> {
    let mut ids = ids.into_iter();
    let Some(first) = ids.next() else {
        return Ok(Vec::new());
    };
    // A broker that just started checks the admin key with a slow hash once and refuses
    // other requests while that check runs: the first request goes alone.
    let first = provision(&admin, &first, encrypted)
        .await
        .with_context(|| format!("provisioning {first}"))?;
    let permits = Arc::new(Semaphore::new(PROVISION_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (index, id) in ids.enumerate() {
        let (admin, permits) = (admin.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let identity = provision(&admin, &id, encrypted)
                .await
                .with_context(|| format!("provisioning {id}"))?;
            anyhow::Ok((index, identity))
        });
    }
    let mut rest = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        rest.push(joined.context("provisioning task failed")??);
    }
    rest.sort_by_key(|(index, _)| *index);
    Ok(std::iter::once(first)
        .chain(rest.into_iter().map(|(_, identity)| identity))
        .collect())
}

// ---------------------------------------------------------------------------------
// MQTT: one face over rumqttc's 3.1.1 and 5 clients
// ---------------------------------------------------------------------------------

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the network task tells its device.
#[derive(Debug)]
enum Incoming {
    Connected,
    Lost(String),
    SubscribeRefused(usize),
    Message { topic: String, payload: Vec<u8> },
}

/// One poll of the event loop, as the device sees it.
enum Polled {
    Event(Incoming),
    SentDisconnect,
    Nothing,
}

fn v4_qos(qos: u8) -> rumqttc::QoS {
    if qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    }
}

fn v5_qos(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    if qos == 0 {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce
    } else {
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
    }
}

/// A client for `identity` with a retained QoS 1 last will on `will_topic`.
fn mqtt_client(
    settings: &Settings,
    identity: &Identity,
    will_topic: &str,
    will: Vec<u8>,
) -> (Client, EventLoop) {
    let (host, port, transport) = settings.endpoint.parts();
    let id = identity.id.as_str();
    if settings.v5 {
        let mut options = rumqttc::v5::MqttOptions::new(id, host, port);
        options
            .set_transport(transport)
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_start(true)
            .set_credentials(id, identity.token.as_str())
            .set_max_packet_size(u32::try_from(MAX_PACKET).ok())
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                will_topic,
                will,
                v5_qos(1),
                true,
                None,
            ));
        let (client, events) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
        (Client::V5(client), EventLoop::V5(Box::new(events)))
    } else {
        let mut options = rumqttc::MqttOptions::new(id, host, port);
        options
            .set_transport(transport)
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_credentials(id, identity.token.as_str())
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_last_will(rumqttc::LastWill::new(will_topic, will, v4_qos(1), true));
        let (client, events) = rumqttc::AsyncClient::new(options, REQUEST_CAPACITY);
        (Client::V4(client), EventLoop::V4(Box::new(events)))
    }
}

impl Client {
    /// Queues a PUBLISH without waiting: the device task must never block on its own
    /// network task.
    fn publish(&self, topic: &str, qos: u8, retain: bool, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.try_publish(topic, v4_qos(qos), retain, payload)?,
            Client::V5(c) => c.try_publish(topic, v5_qos(qos), retain, payload)?,
        }
        Ok(())
    }

    fn subscribe(&self, filter: &str) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.try_subscribe(filter, v4_qos(1))?,
            Client::V5(c) => c.try_subscribe(filter, v5_qos(1))?,
        }
        Ok(())
    }

    fn disconnect(&self) -> anyhow::Result<()> {
        match self {
            Client::V4(c) => c.try_disconnect()?,
            Client::V5(c) => c.try_disconnect()?,
        }
        Ok(())
    }
}

impl EventLoop {
    async fn poll(&mut self) -> Result<Polled, String> {
        match self {
            EventLoop::V4(events) => events.poll().await.map(v4_event).map_err(|e| e.to_string()),
            EventLoop::V5(events) => events.poll().await.map(v5_event).map_err(|e| e.to_string()),
        }
    }
}

fn v4_event(event: rumqttc::Event) -> Polled {
    use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Polled::Event(Incoming::Connected),
        Event::Incoming(Packet::Publish(p)) => Polled::Event(Incoming::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        }),
        Event::Incoming(Packet::SubAck(ack)) => {
            let refused = ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                .count();
            refused_or_nothing(refused)
        }
        Event::Outgoing(Outgoing::Disconnect) => Polled::SentDisconnect,
        _ => Polled::Nothing,
    }
}

fn v5_event(event: rumqttc::v5::Event) -> Polled {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    match event {
        Event::Incoming(Packet::ConnAck(_)) => Polled::Event(Incoming::Connected),
        Event::Incoming(Packet::Publish(p)) => Polled::Event(Incoming::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        }),
        Event::Incoming(Packet::SubAck(ack)) => {
            let refused = ack
                .return_codes
                .iter()
                .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                .count();
            refused_or_nothing(refused)
        }
        Event::Outgoing(Outgoing::Disconnect) => Polled::SentDisconnect,
        _ => Polled::Nothing,
    }
}

fn refused_or_nothing(refused: usize) -> Polled {
    if refused == 0 {
        Polled::Nothing
    } else {
        Polled::Event(Incoming::SubscribeRefused(refused))
    }
}

/// Drives one device's connection: forwards what matters and reconnects with jittered
/// exponential backoff. Ends once DISCONNECT went out, the device is gone, or the run is
/// cancelled while the connection is down.
async fn pump(mut events: EventLoop, tx: mpsc::Sender<Incoming>, cancel: CancellationToken) {
    let mut rng = Rng::seeded();
    let mut backoff = MIN_BACKOFF;
    loop {
        let incoming = match events.poll().await {
            Ok(Polled::Event(incoming)) => incoming,
            Ok(Polled::Nothing) => continue,
            Ok(Polled::SentDisconnect) => return,
            Err(_) if cancel.is_cancelled() => return,
            Err(error) => {
                if tx.send(Incoming::Lost(error)).await.is_err() {
                    return;
                }
                let wait = backoff + rng.duration(backoff / 2);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if matches!(incoming, Incoming::Connected) {
            backoff = MIN_BACKOFF;
        }
        if tx.send(incoming).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------
// The device
// ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct Status<'a> {
    state: &'a str,
    version: &'a str,
    ip: &'a str,
    #[serde(rename = "configVersion", skip_serializing_if = "Option::is_none")]
    config_version: Option<u64>,
}

#[derive(Serialize)]
struct Telemetry {
    cpu: f64,
    memory: u64,
    uptime: u64,
    ts: u64,
}

#[derive(Deserialize)]
struct Command {
    #[serde(rename = "commandId")]
    command_id: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Serialize)]
struct Response<'a> {
    #[serde(rename = "commandId")]
    command_id: &'a str,
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<ResultBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct ResultBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Deserialize)]
struct ConfigUpdate {
    version: u64,
    /// Applying it means logging it: the simulator has nothing to configure.
    #[serde(default)]
    config: Value,
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not serialize a payload");
        Vec::new()
    })
}

/// The answers already given, by `commandId`, so a re-sent command gets the same one.
#[derive(Default)]
struct AnswerLog {
    answers: HashMap<String, (bool, Vec<u8>)>,
    order: VecDeque<String>,
}

impl AnswerLog {
    fn get(&self, command_id: &str) -> Option<(bool, Vec<u8>)> {
        self.answers.get(command_id).cloned()
    }

    fn insert(&mut self, command_id: &str, answer: (bool, Vec<u8>)) {
        if self.order.len() == ANSWER_LOG_LEN {
            if let Some(oldest) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
        self.order.push_back(command_id.to_owned());
        self.answers.insert(command_id.to_owned(), answer);
    }
}

/// An answer waiting for its reply latency.
struct PendingReply {
    due: Instant,
    success: bool,
    payload: Vec<u8>,
}

struct Topics {
    status: String,
    telemetry: String,
    response: String,
    command: String,
    config: String,
}

/// The topics a device publishes on.
#[derive(Debug, Clone, Copy)]
enum Out {
    Status,
    Telemetry,
    Response,
}

impl Topics {
    fn new(id: &str) -> Topics {
        let topic = |leaf: &str| format!("device/{id}/{leaf}");
        Topics {
            status: topic("status"),
            telemetry: topic("telemetry"),
            response: topic("response"),
            command: topic("command"),
            config: topic("config"),
        }
    }

    fn outgoing(&self, out: Out) -> &str {
        match out {
            Out::Status => &self.status,
            Out::Telemetry => &self.telemetry,
            Out::Response => &self.response,
        }
    }
}

struct Device {
    id: String,
    topics: Topics,
    client: Client,
    sealer: Option<Sealer>,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    rng: Rng,
    started: Instant,
    connected: bool,
    failures: u32,
    config_version: u64,
    answers: AnswerLog,
    replies: VecDeque<PendingReply>,
}

/// Sleeps until `due`, or forever when nothing is due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Device {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Incoming>,
        pump: JoinHandle<()>,
        cancel: CancellationToken,
    ) {
        let period = self.settings.telemetry_every;
        // Spread the fleet's telemetry over one period instead of sending it in bursts.
        let first = Instant::now() + self.rng.duration(period);
        let mut telemetry = tokio::time::interval_at(first, period);
        telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let next_reply = self.replies.front().map(|r| r.due);
            tokio::select! {
                () = cancel.cancelled() => break,
                incoming = rx.recv() => match incoming {
                    Some(incoming) => self.on_incoming(incoming),
                    None => break,
                },
                _ = telemetry.tick() => self.send_telemetry(),
                () = sleep_until(next_reply) => self.send_due_replies(),
            }
        }
        self.shutdown(rx, pump).await;
    }

    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Connected => {
                if !self.connected {
                    self.stats.connected.fetch_add(1, Ordering::Relaxed);
                }
                self.connected = true;
                self.failures = 0;
                debug!(device_id = %self.id, "connected");
                for filter in [&self.topics.command, &self.topics.config] {
                    if let Err(e) = self.client.subscribe(filter) {
                        warn!(device_id = %self.id, error = %e, "could not subscribe");
                    }
                }
                self.publish_status("online");
            }
            Incoming::Lost(error) => self.on_lost(&error),
            Incoming::SubscribeRefused(n) => {
                Stats::bump(&self.stats.errors);
                warn!(device_id = %self.id, refused = n, "broker refused a subscription");
            }
            Incoming::Message { topic, payload } => self.on_message(&topic, &payload),
        }
    }

    /// Logs the first failure of a streak at warn, the retries at debug.
    fn on_lost(&mut self, error: &str) {
        if self.connected {
            self.connected = false;
            self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
        if self.failures == 0 {
            warn!(device_id = %self.id, %error, "connection down; reconnecting with backoff");
        } else {
            debug!(device_id = %self.id, %error, attempt = self.failures, "reconnect failed");
        }
        self.failures = self.failures.saturating_add(1);
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if payload.is_empty() {
            debug!(device_id = %self.id, topic, "empty message (retained message cleared)");
            return;
        }
        let plain = match &self.sealer {
            None => Cow::Borrowed(payload),
            Some(sealer) => match sealer.open(topic, payload) {
                Ok(plain) => Cow::Owned(plain),
                Err(e) => {
                    Stats::bump(&self.stats.errors);
                    let ours = sealer.key.generation;
                    warn!(device_id = %self.id, topic, error = %e, key_generation = ours, "could not decrypt a message");
                    return;
                }
            },
        };
        let applied = if topic == self.topics.command {
            serde_json::from_slice(&plain).map(|c| self.on_command(&c))
        } else if topic == self.topics.config {
            serde_json::from_slice(&plain).map(|c| self.on_config(&c))
        } else {
            debug!(device_id = %self.id, topic, "message on an unexpected topic");
            Ok(())
        };
        if let Err(e) = applied {
            Stats::bump(&self.stats.errors);
            warn!(device_id = %self.id, topic, error = %e, "malformed message ignored");
        }
    }

    /// A re-sent command gets its first answer again and is not applied twice.
    fn on_command(&mut self, command: &Command) {
        let (success, payload) = match self.answers.get(&command.command_id) {
            Some(answer) => {
                Stats::bump(&self.stats.duplicates);
                debug!(device_id = %self.id, command_id = %command.command_id, "re-sent command");
                answer
            }
            None => {
                let answer = self.apply(command);
                self.answers.insert(&command.command_id, answer.clone());
                answer
            }
        };
        self.replies.push_back(PendingReply {
            due: Instant::now() + self.settings.reply_latency,
            success,
            payload,
        });
    }

    /// "Runs" a command: fails with probability `--failure-rate`.
    fn apply(&mut self, command: &Command) -> (bool, Vec<u8>) {
        let success = !self.rng.chance(self.settings.failure_rate);
        let response = Response {
            command_id: &command.command_id,
            success,
            result: success.then_some(ResultBody {
                kind: &command.kind,
            }),
            error: (!success).then_some("simulated failure"),
        };
        debug!(device_id = %self.id, command_id = %command.command_id, kind = %command.kind, success, "command");
        (success, to_json(&response))
    }

    fn on_config(&mut self, update: &ConfigUpdate) {
        if update.version == self.config_version {
            return;
        }
        self.config_version = update.version;
        Stats::bump(&self.stats.configs);
        info!(device_id = %self.id, version = update.version, "config applied");
        debug!(device_id = %self.id, config = %update.config, "applied config");
        self.publish_status("online");
    }

    fn send_due_replies(&mut self) {
        let now = Instant::now();
        while self.replies.front().is_some_and(|r| r.due <= now) {
            let Some(reply) = self.replies.pop_front() else {
                break;
            };
            if self.publish(Out::Response, 1, false, &reply.payload) {
                Stats::bump(&self.stats.answered);
                if !reply.success {
                    Stats::bump(&self.stats.failed);
                }
            }
        }
    }

    fn send_telemetry(&mut self) {
        if !self.connected {
            return;
        }
        let telemetry = Telemetry {
            cpu: (50.0 + 45.0 * (self.rng.unit() - 0.5) * 2.0).round(),
            memory: 256 + self.rng.next_u64() % 256,
            uptime: self.started.elapsed().as_secs(),
            ts: unix_ms(),
        };
        let qos = self.settings.telemetry_qos;
        if self.publish(Out::Telemetry, qos, false, &to_json(&telemetry)) {
            Stats::bump(&self.stats.telemetry);
        }
    }

    fn publish_status(&mut self, state: &str) {
        let status = Status {
            state,
            version: &self.settings.version,
            ip: DEVICE_IP,
            config_version: Some(self.config_version),
        };
        self.publish(Out::Status, 1, true, &to_json(&status));
    }

    /// Seals when the device is encrypted; a publish that cannot be queued is counted.
    fn publish(&mut self, out: Out, qos: u8, retain: bool, plain: &[u8]) -> bool {
        let topic = self.topics.outgoing(out);
        let payload = match &mut self.sealer {
            None => plain.to_vec(),
            Some(sealer) => sealer.seal(topic, plain),
        };
        match self.client.publish(topic, qos, retain, payload) {
            Ok(()) => true,
            Err(e) => {
                Stats::bump(&self.stats.dropped);
                debug!(device_id = %self.id, topic, error = %e, "publish dropped");
                false
            }
        }
    }

    /// Says goodbye with a retained offline status (the will only covers a lost
    /// connection), then gives the network task a moment to send it.
    async fn shutdown(mut self, mut rx: mpsc::Receiver<Incoming>, pump: JoinHandle<()>) {
        if self.connected {
            self.publish_status("offline");
            if let Err(e) = self.client.disconnect() {
                debug!(device_id = %self.id, error = %e, "could not queue DISCONNECT");
            }
        }
        let drained =
            tokio::time::timeout(FLUSH_GRACE, async { while rx.recv().await.is_some() {} });
        if drained.await.is_err() {
            debug!(device_id = %self.id, "network task did not finish in time");
        }
        pump.abort();
        if self.connected {
            self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Starts one device: its network task and its logic task, both on `tracker`.
fn spawn_device(
    identity: Identity,
    settings: &Arc<Settings>,
    stats: &Arc<Stats>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let mut sealer = identity.key.map(Sealer::new);
    let topics = Topics::new(&identity.id);
    // No configVersion: the will is fixed at connect time and would report a stale one.
    let will = to_json(&Status {
        state: "offline",
        version: &settings.version,
        ip: DEVICE_IP,
        config_version: None,
    });
    let will = match &mut sealer {
        Some(sealer) => sealer.seal(&topics.status, &will),
        None => will,
    };
    let (client, events) = mqtt_client(settings, &identity, &topics.status, will);
    let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
    let pump = tracker.spawn(pump(events, tx, cancel.clone()));
    let device = Device {
        id: identity.id,
        topics,
        client,
        sealer,
        settings: settings.clone(),
        stats: stats.clone(),
        rng: Rng::seeded(),
        started: Instant::now(),
        connected: false,
        failures: 0,
        config_version: 0,
        answers: AnswerLog::default(),
        replies: VecDeque::new(),
    };
    tracker.spawn(device.run(rx, pump, cancel.clone()));
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

async fn api_key(args: &Args) -> anyhow::Result<String> {
    if let Some(key) = &args.api_key {
        return Ok(key.trim().to_owned());
    }
    let key = tokio::fs::read_to_string(&args.api_key_file)
        .await
        .with_context(|| {
            format!(
                "reading the admin API key from {} (pass --api-key or FLEETMQ_API_KEY)",
                args.api_key_file.display()
            )
        })?;
    Ok(key.trim().to_owned())
}

/// Cancels the run on Ctrl-C, SIGTERM, or after `duration`.
async fn stop_on_signal(duration: Option<Duration>, cancel: CancellationToken) {
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => drop(term.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("Ctrl-C: stopping"),
        () = terminate => info!("SIGTERM: stopping"),
        () = deadline => info!("--duration-s elapsed: stopping"),
        () = cancel.cancelled() => {}
    }
    cancel.cancel();
}

async fn print_summaries(
    stats: Arc<Stats>,
    total: usize,
    started: Instant,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => println!("{}", stats.summary(total, started.elapsed())),
        }
    }
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    Ok(Settings {
        endpoint: Endpoint::from_args(args)?,
        v5: args.v5,
        telemetry_qos: args.qos,
        telemetry_every: Duration::from_millis(args.telemetry_ms),
        reply_latency: Duration::from_millis(args.reply_latency_ms),
        failure_rate: args.failure_rate,
        version: args.firmware_version.clone(),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = Arc::new(settings(&args)?);
    let admin = Arc::new(Admin::new(&args.admin, api_key(&args).await?)?);
    let cancel = CancellationToken::new();
    let duration = (args.duration_s > 0).then(|| Duration::from_secs(args.duration_s));
    let tracker = TaskTracker::new();
    tracker.spawn(stop_on_signal(duration, cancel.clone()));

    let ids: Vec<String> = (0..args.count)
        .map(|i| format!("{}{i:04}", args.prefix))
        .collect();
    info!(count = ids.len(), admin = %args.admin, "provisioning devices");
    let identities = tokio::select! {
        identities = provision_all(admin, ids, args.encrypted) => identities?,
        () = cancel.cancelled() => return Ok(()),
    };
    let encrypted = identities.iter().filter(|d| d.key.is_some()).count();
    info!(count = identities.len(), encrypted, endpoint = ?settings.endpoint, v5 = settings.v5, "starting devices");

    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let total = identities.len();
    for identity in identities {
        spawn_device(identity, &settings, &stats, &tracker, &cancel);
    }
    tracker.spawn(print_summaries(
        stats.clone(),
        total,
        started,
        cancel.clone(),
    ));
    cancel.cancelled().await;
    tracker.close();
    if tokio::time::timeout(FLUSH_GRACE * 2, tracker.wait())
        .await
        .is_err()
    {
        warn!("some devices did not stop in time");
    }
    println!("final {}", stats.summary(total, started.elapsed()));
    Ok(())
}

/// Errors are printed as one chain of causes (no backtrace) and exit with code 1.
#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("device_sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
