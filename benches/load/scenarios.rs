//! The load scenarios. Each is bounded in count and time and measures one thing:
//! fan-in throughput (QoS 0 and QoS 1), QoS 1 round-trip latency, connection rate, and
//! broker memory per idle connection.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::broker::{cpu_time, machine_busy, Broker, Device};
use crate::mqtt::{self, Client, Login, Packet, PacketType, PubAck, Publish, QoS, Sealer};

/// Sizes of the scenarios (`--quick` shrinks them).
#[derive(Debug, Clone)]
pub struct Params {
    pub payload: usize,
    pub publishers: usize,
    pub qos0_messages: usize,
    pub qos1_messages: usize,
    /// Outstanding PUBACKs per QoS 1 publisher.
    pub window: usize,
    pub rr_iterations: usize,
    pub connections: usize,
    pub connect_concurrency: usize,
    pub idle: usize,
    /// Fan-in ends this long after the last message when some never arrive.
    pub grace: Duration,
    /// Upper bound for one fan-in run.
    pub deadline: Duration,
    /// The fan-in subscriber connects with a persistent session (Clean Session = 0).
    pub persistent_subscriber: bool,
}

impl Params {
    pub fn full() -> Params {
        Params {
            payload: 64,
            publishers: 10,
            qos0_messages: 200_000,
            qos1_messages: 200_000,
            window: 32,
            rr_iterations: 2_000,
            connections: 3_000,
            connect_concurrency: 64,
            idle: 2_000,
            grace: Duration::from_secs(1),
            deadline: Duration::from_secs(30),
            persistent_subscriber: false,
        }
    }

    pub fn quick() -> Params {
        Params {
            qos0_messages: 20_000,
            qos1_messages: 20_000,
            rr_iterations: 300,
            connections: 500,
            idle: 300,
            ..Params::full()
        }
    }
}

/// CPU used by the broker and by this generator over one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub broker: Duration,
    pub client: Duration,
    /// Every other process on the machine: non-zero means the numbers were disturbed.
    pub other: Duration,
    pub wall: Duration,
}

struct CpuMeter {
    pid: u32,
    broker: Duration,
    client: Duration,
    machine: Duration,
    started: Instant,
}

impl CpuMeter {
    fn start(broker: &Broker) -> CpuMeter {
        CpuMeter {
            pid: broker.pid(),
            broker: broker.cpu(),
            client: own_cpu(),
            machine: machine_busy().unwrap_or_default(),
            started: Instant::now(),
        }
    }

    fn stop(&self) -> Cpu {
        let broker = cpu_time(self.pid)
            .unwrap_or_default()
            .saturating_sub(self.broker);
        let client = own_cpu().saturating_sub(self.client);
        let machine = machine_busy()
            .unwrap_or_default()
            .saturating_sub(self.machine);
        Cpu {
            broker,
            client,
            other: machine.saturating_sub(broker + client),
            wall: self.started.elapsed(),
        }
    }
}

fn own_cpu() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

#[derive(Debug, Clone, Copy)]
pub struct FanIn {
    pub sent: usize,
    pub received: usize,
    /// Payloads that were not the 64-byte plaintext (e.g. not decrypted).
    pub bad_payloads: usize,
    /// From the start signal to the last message received.
    pub secs: f64,
    /// From the start signal until every publisher had written (QoS 0) or been acked (QoS 1).
    pub publish_secs: f64,
    pub cpu: Cpu,
    /// fleetmq: telemetry points its fleet queue dropped meanwhile (routing is not affected).
    pub telemetry_dropped: Option<u64>,
}

impl FanIn {
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.secs.max(1e-9)
    }
    pub fn loss_pct(&self) -> f64 {
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent.max(1) as f64
    }
}

/// A telemetry payload as devices send it (SPEC §3: a JSON object), padded to `len` bytes.
fn payload(len: usize, seq: usize) -> Vec<u8> {
    let mut json = format!(r#"{{"seq":{seq},"cpu":{},"memory":512,"pad":""#, seq % 100);
    while json.len() + 2 < len {
        json.push('x');
    }
    json.push_str("\"}");
    json.into_bytes()
}

/// Every PUBLISH a publisher will send, encoded back to back; all have the same length.
struct Frames {
    bytes: Bytes,
    frame_len: usize,
    count: usize,
}

fn build_frames(
    device: &Device,
    qos: QoS,
    count: usize,
    payload_len: usize,
) -> anyhow::Result<Frames> {
    let topic = format!("device/{}/telemetry", device.id);
    let mut sealer = device
        .key
        .as_ref()
        .map(|(key, generation)| Sealer::new(key, *generation))
        .transpose()?;
    let mut bytes = BytesMut::new();
    for seq in 0..count {
        let plain = payload(payload_len, seq);
        let body = match sealer.as_mut() {
            Some(s) => s.seal(&topic, &plain),
            None => plain,
        };
        mqtt::publish_into(&mut bytes, &topic, qos, (seq % 65_535) as u16 + 1, &body)?;
    }
    let frame_len = bytes.len() / count.max(1);
    if frame_len * count != bytes.len() {
        bail!("payloads of different lengths: the windowed sender needs equal frames");
    }
    Ok(Frames {
        bytes: bytes.freeze(),
        frame_len,
        count,
    })
}

/// N publishers → 1 subscriber on `device/+/telemetry`, at QoS 0 or 1.
pub async fn fan_in(broker: &Broker, p: &Params, qos: QoS) -> anyhow::Result<FanIn> {
    let total = if qos == QoS::AtMostOnce {
        p.qos0_messages
    } else {
        p.qos1_messages
    };
    let per = total / p.publishers;
    // A persistent subscriber gets a fresh client id every run (nothing to resume) and
    // its session is discarded afterwards, so later runs queue nothing for it.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Relaxed);
    let mut login = broker.subscriber(&format!("bench-sub-q{}-{run}", qos as u8));
    login.persistent = p.persistent_subscriber;
    let mut sub = Client::connect(broker.mqtt, &login, 600).await?;
    sub.chunk = 256 * 1024;
    sub.subscribe("device/+/telemetry", qos).await?;
    let mut publishers = Vec::new();
    for device in broker.devices.iter().take(p.publishers) {
        let mut client = Client::connect(broker.mqtt, &device.login, 600).await?;
        client.chunk = 16 * 1024;
        publishers.push((client, build_frames(device, qos, per, p.payload)?));
    }
    if publishers.len() < p.publishers {
        bail!(
            "only {} devices for {} publishers",
            publishers.len(),
            p.publishers
        );
    }
    let sent = per * publishers.len();
    let drops_before = broker.queue_full_drops().await;
    let meter = CpuMeter::start(broker);
    let start = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for (client, frames) in publishers {
        let done = done.clone();
        let window = p.window;
        tasks.spawn(async move {
            let result = if qos == QoS::AtMostOnce {
                publish_all(client, frames).await
            } else {
                publish_windowed(client, frames, window).await
            };
            done.fetch_add(1, Relaxed);
            result.map(|c| (c, start.elapsed()))
        });
    }
    let n = tasks.len();
    let mut received = 0;
    let mut bad = 0;
    let mut last = start;
    let mut quiet_since: Option<Instant> = None;
    // CPU is sampled while messages arrive, so a grace period after a loss is not counted.
    let (mut cpu, mut sampled) = (Cpu::default(), start);
    let mut acks = BytesMut::new();
    let payload_len = p.payload;
    while received < sent && start.elapsed() < p.deadline {
        if done.load(Relaxed) == n {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.max(last).elapsed() > p.grace {
                break;
            }
        }
        match timeout(Duration::from_millis(50), sub.fill()).await {
            Err(_) => continue,
            Ok(Ok(0)) => bail!("the broker closed the subscriber after {received} messages"),
            Ok(r) => {
                r?;
            }
        }
        let before = received;
        while let Some(packet) = sub.next_packet()? {
            if let Packet::Publish(publish) = packet {
                received += 1;
                bad += usize::from(publish.payload.len() != payload_len);
                if publish.qos == QoS::AtLeastOnce {
                    mqtt::puback_into(&mut acks, publish.pkid)?;
                }
            }
        }
        if received > before {
            last = Instant::now();
            if last - sampled >= Duration::from_millis(20) {
                cpu = meter.stop();
                sampled = last;
            }
        }
        if !acks.is_empty() {
            sub.stream.write_all(&acks).await?;
            acks.clear();
        }
    }
    let secs = (last - start).as_secs_f64();
    if received >= sent || cpu.wall.is_zero() {
        cpu = meter.stop();
    }
    let mut publish_secs: f64 = 0.0;
    let mut keep = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (client, took) = joined??;
        publish_secs = publish_secs.max(took.as_secs_f64());
        keep.push(client);
    }
    drop(keep);
    if login.persistent {
        drop(sub);
        login.persistent = false;
        drop(Client::connect(broker.mqtt, &login, 600).await?);
    }
    let drops_after = broker.queue_full_drops().await;
    Ok(FanIn {
        sent,
        received,
        bad_payloads: bad,
        secs,
        publish_secs,
        cpu,
        telemetry_dropped: drops_before
            .zip(drops_after)
            .map(|(b, a)| a.saturating_sub(b)),
    })
}

async fn publish_all(mut client: Client, frames: Frames) -> anyhow::Result<Client> {
    client.stream.write_all(&frames.bytes).await?;
    Ok(client)
}

/// Sends with at most `window` PUBLISHes awaiting their PUBACK; returns when all are acked.
async fn publish_windowed(
    mut client: Client,
    frames: Frames,
    window: usize,
) -> anyhow::Result<Client> {
    let (mut next, mut acked) = (0usize, 0usize);
    while acked < frames.count {
        let upto = (acked + window).min(frames.count);
        if next < upto {
            client
                .stream
                .write_all(&frames.bytes[next * frames.frame_len..upto * frames.frame_len])
                .await?;
            next = upto;
        }
        match timeout(Duration::from_secs(10), client.fill()).await {
            Err(_) => bail!("no PUBACK within 10 s ({acked}/{} acked)", frames.count),
            Ok(Ok(0)) => bail!("publisher closed by the broker after {acked} acks"),
            Ok(r) => {
                r?;
            }
        }
        while let Some(kind) = client.skip_packet()? {
            acked += usize::from(kind == PacketType::PubAck);
        }
    }
    Ok(client)
}

#[derive(Debug, Clone)]
pub struct Latency {
    pub samples: Vec<Duration>,
    pub cpu: Cpu,
}

impl Latency {
    pub fn percentile(&self, pct: usize) -> Duration {
        let i = (self.samples.len() * pct / 100).min(self.samples.len().saturating_sub(1));
        self.samples.get(i).copied().unwrap_or_default()
    }
}

/// One device publishes QoS 1, one subscriber receives (and acks) it; the next message
/// goes only after both the delivery and the publisher's PUBACK arrived.
pub async fn request_response(broker: &Broker, p: &Params) -> anyhow::Result<Latency> {
    let device = broker.devices.first().context("no device")?;
    let topic = format!("device/{}/telemetry", device.id);
    let mut sub = Client::connect(broker.mqtt, &broker.subscriber("bench-sub-rr"), 600).await?;
    sub.subscribe("device/+/telemetry", QoS::AtLeastOnce)
        .await?;
    let mut publisher = Client::connect(broker.mqtt, &device.login, 600).await?;
    let mut sealer = device
        .key
        .as_ref()
        .map(|(k, g)| Sealer::new(k, *g))
        .transpose()?;
    let warmup = 100;
    let mut samples = Vec::with_capacity(p.rr_iterations);
    let mut frame = BytesMut::with_capacity(256);
    let mut ack = BytesMut::with_capacity(4);
    let mut meter = None;
    for i in 0..warmup + p.rr_iterations {
        if i == warmup {
            meter = Some(CpuMeter::start(broker));
        }
        let plain = payload(p.payload, i);
        let body = match sealer.as_mut() {
            Some(s) => s.seal(&topic, &plain),
            None => plain,
        };
        frame.clear();
        mqtt::publish_into(
            &mut frame,
            &topic,
            QoS::AtLeastOnce,
            (i % 65_535) as u16 + 1,
            &body,
        )?;
        let t0 = Instant::now();
        publisher.stream.write_all(&frame).await?;
        let delivered: Publish = sub.expect(Duration::from_secs(5)).await?;
        let took = t0.elapsed();
        ack.clear();
        mqtt::puback_into(&mut ack, delivered.pkid)?;
        sub.stream.write_all(&ack).await?;
        publisher.expect::<PubAck>(Duration::from_secs(5)).await?;
        if i >= warmup {
            samples.push(took);
        }
    }
    samples.sort();
    let cpu = meter.map(|m| m.stop()).unwrap_or_default();
    Ok(Latency { samples, cpu })
}

#[derive(Debug, Clone, Default)]
pub struct ConnRate {
    pub ok: usize,
    pub failed: usize,
    pub secs: f64,
    pub first_error: Option<String>,
    pub cpu: Cpu,
    /// TCP connect to CONNACK, per successful connection (sorted at the end).
    pub connack: Vec<Duration>,
    /// Connections the broker did not close within 2 s of DISCONNECT.
    pub not_closed: usize,
}

impl ConnRate {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }

    pub fn connack_percentile(&self, pct: usize) -> Duration {
        let i = (self.connack.len() * pct / 100).min(self.connack.len().saturating_sub(1));
        self.connack.get(i).copied().unwrap_or_default()
    }
}

/// `p.connections` times: TCP connect, CONNECT, CONNACK, DISCONNECT, wait for the
/// broker to close — `concurrency` at a time. `login(worker, i)` names the client.
pub async fn connection_rate(
    broker: &Broker,
    p: &Params,
    concurrency: usize,
    login: impl Fn(usize, usize) -> Login + Send + Sync + 'static,
) -> anyhow::Result<ConnRate> {
    let login = Arc::new(login);
    let next = Arc::new(AtomicUsize::new(0));
    let result = Arc::new(Mutex::new(ConnRate::default()));
    let meter = CpuMeter::start(broker);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let (login, next, result, addr, total) = (
            login.clone(),
            next.clone(),
            result.clone(),
            broker.mqtt,
            p.connections,
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= total {
                    return;
                }
                let outcome = timeout(
                    Duration::from_secs(5),
                    connect_once(addr, &login(worker, i)),
                )
                .await;
                let mut r = result.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(Ok((connack, closed))) => {
                        r.ok += 1;
                        r.connack.push(connack);
                        r.not_closed += usize::from(!closed);
                    }
                    Ok(Err(e)) => {
                        r.failed += 1;
                        r.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        r.failed += 1;
                        r.first_error
                            .get_or_insert_with(|| "no CONNACK within 5 s".into());
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut r = result.lock().unwrap_or_else(|e| e.into_inner()).clone();
    r.secs = start.elapsed().as_secs_f64();
    r.cpu = meter.stop();
    r.connack.sort();
    Ok(r)
}

/// One connection's life: its time to CONNACK, and whether the broker closed it after
/// DISCONNECT (waiting for that keeps teardown inside the measurement and leaves
/// TIME_WAIT on the broker's side).
async fn connect_once(
    addr: std::net::SocketAddr,
    login: &Login,
) -> anyhow::Result<(Duration, bool)> {
    let t0 = Instant::now();
    let mut client = Client::connect(addr, login, 60).await?;
    let connack = t0.elapsed();
    client.disconnect().await?;
    let closed = timeout(Duration::from_secs(2), async {
        while matches!(client.fill().await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok();
    Ok((connack, closed))
}

/// A login per connection: anonymous with a unique client id.
pub fn anonymous(prefix: &'static str) -> impl Fn(usize, usize) -> Login + Send + Sync + 'static {
    move |_, i| Login::anonymous(format!("{prefix}-{i}"))
}

/// Worker `w` reconnects as device `w` again and again (the cached-credential path).
pub fn as_devices(
    devices: Arc<Vec<Device>>,
) -> impl Fn(usize, usize) -> Login + Send + Sync + 'static {
    move |w, _| devices[w % devices.len()].login.clone()
}

#[derive(Debug, Clone, Copy)]
pub struct Idle {
    pub held: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub cpu: Cpu,
}

impl Idle {
    pub fn bytes_per_conn(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / self.held.max(1) as f64
    }
}

/// Holds `p.idle` connected, idle anonymous clients and compares the broker's RSS.
pub async fn idle_connections(broker: &Broker, p: &Params) -> anyhow::Result<Idle> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = broker.rss()?;
    let meter = CpuMeter::start(broker);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..p.connect_concurrency {
        let (next, addr, total) = (next.clone(), broker.mqtt, p.idle);
        tasks.spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= total {
                    return anyhow::Ok(held);
                }
                let client =
                    Client::connect(addr, &Login::anonymous(format!("idle-{i}")), 600).await?;
                held.push(client.stream);
            }
        });
    }
    let mut held: Vec<TcpStream> = Vec::with_capacity(p.idle);
    while let Some(joined) = tasks.join_next().await {
        held.extend(joined??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = broker.rss()?;
    let idle = Idle {
        held: held.len(),
        rss_before,
        rss_after,
        cpu: meter.stop(),
    };
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(idle)
}
