//! The scale scenario's steps and its report (see `main.rs`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::attack::{open_fds, Counts, Flood};
use crate::broker::{self, service_login, Broker, Device};
use crate::http::Http;
use crate::mqtt::{puback_into, publish_into, Client, Login, Packet, QoS};
use crate::Args;

/// Devices that answer commands in the round-trip steps.
pub const RESPONDERS: usize = 20;

/// What one run measured.
struct Report {
    devices: usize,
    at_once: usize,
    provision: Duration,
    rss_empty: u64,
    connect: Duration,
    rss_idle: u64,
    api: Vec<Duration>,
    mqtt: Vec<Duration>,
    rss_after_commands: u64,
    reconnect: Duration,
    attacked: Option<Attacked>,
    mosquitto: Option<Mosquitto>,
}

/// The reconnect storm again, under a flood of wrong CONNECTs (`--attack`).
struct Attacked {
    in_flight: usize,
    reconnect: Duration,
    /// Reconnects of the clean storm and of this one that were refused and retried.
    retries: (usize, usize),
    /// How long the flood ran, start to the fleet's last SUBACK.
    flooded: Duration,
    counts: Arc<Counts>,
    /// The broker's `connections.refused_by_cause` after the storm (counted since the
    /// restart, so the flood's and any device's).
    refused: serde_json::Value,
    /// Open descriptors of the broker: at the last SUBACK, flood still running; 1 s
    /// after the flood stopped (fleet still connected).
    fds: (usize, usize),
}

/// Reconnects refused and retried by [`connect_all`].
static RETRIES: AtomicUsize = AtomicUsize::new(0);

struct Mosquitto {
    rss_empty: u64,
    connect: Duration,
    rss_idle: u64,
}

pub async fn run(args: &Args) -> anyhow::Result<String> {
    let n = args.devices;
    eprintln!("scale: binary {}", broker::binary().display());
    let limit = (n + 1_000).to_string();
    let env = [("FLEETMQ_MQTT_MAX_CONNECTIONS", limit.as_str())];
    let mut b = Broker::start_with("fleetmq-scale", &env).await?;
    let started = Instant::now();
    b.provision_bulk(n).await?;
    let provision = started.elapsed();
    settle_memory(&b).await;
    let rss_empty = rss(b.pid())?;
    eprintln!("scale: {n} devices provisioned in {provision:?}; connecting ...");
    let devices = b.devices.clone();
    let (mut clients, connect) = connect_all(b.mqtt, &devices, args.at_once, device_topics).await?;
    settle_memory(&b).await;
    let rss_idle = rss(b.pid())?;
    eprintln!("scale: connected in {connect:?}; command round trips ...");
    let responders: Vec<Client> = clients.drain(..RESPONDERS).collect();
    let mut answering = JoinSet::new();
    let answers = Arc::new(AtomicUsize::new(0));
    for (client, device) in responders.into_iter().zip(devices.iter()) {
        answering.spawn(answer(client, device.id.clone(), answers.clone()));
    }
    let api = api_round_trips(b.admin, &devices[..RESPONDERS], args.rtt).await?;
    let mqtt = mqtt_round_trips(b.mqtt, &devices[..RESPONDERS], args.rtt).await?;
    settle_memory(&b).await;
    let rss_after_commands = rss(b.pid())?;
    eprintln!("scale: restarting the broker ...");
    answering.abort_all();
    drop(clients);
    b.restart().await?;
    let (clients, reconnect, clean_retries) = storm(&b, args.at_once).await?;
    drop(clients);
    let attacked = match args.attack {
        Some(k) => Some(attacked_storm(&mut b, args.at_once, k, clean_retries).await?),
        None => None,
    };
    drop(b);
    let mosquitto = if args.mosquitto {
        eprintln!("scale: mosquitto with {n} idle clients ...");
        Some(mosquitto(&devices, args.at_once).await?)
    } else {
        None
    };
    Ok(Report {
        devices: n,
        at_once: args.at_once,
        provision,
        rss_empty,
        connect,
        rss_idle,
        api,
        mqtt,
        rss_after_commands,
        reconnect,
        attacked,
        mosquitto,
    }
    .render())
}

/// Restarts the broker and times the reconnect storm while `in_flight` wrong CONNECTs
/// at a time hit it from other addresses.
async fn attacked_storm(
    b: &mut Broker,
    at_once: usize,
    in_flight: usize,
    clean_retries: usize,
) -> anyhow::Result<Attacked> {
    eprintln!("scale: restarting the broker; reconnect storm under a flood of {in_flight} ...");
    b.restart().await?;
    let flood = Flood::start(b.mqtt, b.devices.clone(), in_flight);
    let flood_started = Instant::now();
    // Let the flood reach full speed before the fleet comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let storm = storm(b, at_once).await;
    let fds_during = open_fds(b.pid())?;
    let flooded = flood_started.elapsed();
    let counts = flood.stop().await;
    let (clients, reconnect, retries) = storm?;
    let refused = b.stats().await?["connections"]["refused_by_cause"].clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_after = open_fds(b.pid())?;
    drop(clients);
    Ok(Attacked {
        in_flight,
        reconnect,
        retries: (clean_retries, retries),
        flooded,
        counts,
        refused,
        fds: (fds_during, fds_after),
    })
}

/// Every device reconnects after a restart: the clients, the time until the last
/// SUBACK, and how many CONNECTs were refused and retried.
async fn storm(b: &Broker, at_once: usize) -> anyhow::Result<(Vec<Client>, Duration, usize)> {
    RETRIES.store(0, Ordering::Relaxed);
    let (clients, took) = connect_all(b.mqtt, &b.devices, at_once, device_topics).await?;
    Ok((clients, took, RETRIES.load(Ordering::Relaxed)))
}

/// What a device subscribes to (SPEC §3).
pub fn device_topics(id: &str) -> [String; 2] {
    [
        format!("device/{id}/command"),
        format!("device/{id}/config"),
    ]
}

/// Connects every device (`at_once` in flight), each subscribing to `topics(id)` at
/// QoS 1; the clients, and the time until the last SUBACK.
pub async fn connect_all(
    addr: SocketAddr,
    devices: &[Device],
    at_once: usize,
    topics: fn(&str) -> [String; 2],
) -> anyhow::Result<(Vec<Client>, Duration)> {
    let gate = Arc::new(Semaphore::new(at_once));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, device) in devices.iter().enumerate() {
        let (gate, login) = (gate.clone(), device.login());
        let id = device.id.clone();
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await?;
            let mut client = reconnect(addr, &login).await?;
            for topic in topics(&id) {
                client.subscribe(&topic, QoS::AtLeastOnce).await?;
            }
            anyhow::Ok((i, client))
        });
    }
    let mut clients = Vec::with_capacity(devices.len());
    while let Some(joined) = tasks.join_next().await {
        clients.push(joined??);
    }
    let took = started.elapsed();
    clients.sort_by_key(|(i, _)| *i);
    Ok((clients.into_iter().map(|(_, c)| c).collect(), took))
}

/// A device's CONNECT, retried (up to 20 times, 100 ms apart, counted in [`RETRIES`])
/// while it is refused, as a device would.
async fn reconnect(addr: SocketAddr, login: &Login) -> anyhow::Result<Client> {
    let within = Duration::from_secs(120);
    let mut tries = 0;
    loop {
        match Client::connect_within(addr, login, 600, within).await {
            Ok(client) => return Ok(client),
            Err(e) if tries >= 20 => return Err(e),
            Err(_) => {
                tries += 1;
                RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A device that acknowledges every command and answers it `success: true`, counting
/// its answers in `answers`.
pub async fn answer(
    mut client: Client,
    id: String,
    answers: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let topic = format!("device/{id}/response");
    let mut out = BytesMut::new();
    let mut next_pkid = 0u16;
    let mut answered = 0;
    while client.fill().await? > 0 {
        while let Some(packet) = client.next_packet()? {
            let Packet::Publish(p) = packet else { continue };
            if p.qos != QoS::AtMostOnce {
                puback_into(&mut out, p.pkid)?;
            }
            let command: serde_json::Value = serde_json::from_slice(&p.payload)?;
            let body = serde_json::json!({"commandId": command["commandId"], "success": true});
            next_pkid = next_pkid % 60_000 + 1;
            publish_into(
                &mut out,
                &topic,
                QoS::AtLeastOnce,
                next_pkid,
                &body.to_string().into_bytes(),
            )?;
            answered += 1;
        }
        client.stream.write_all(&out).await?;
        out.clear();
        answers.fetch_add(answered, Ordering::Relaxed);
        answered = 0;
    }
    Ok(())
}

/// `rounds` commands through the API, one at a time, each until `200 completed`.
async fn api_round_trips(
    admin: SocketAddr,
    devices: &[Device],
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut http = Http::new(admin);
    let body = br#"{"type":"PING"}"#;
    let mut took = Vec::with_capacity(rounds);
    for (round, device) in devices.iter().cycle().take(rounds).enumerate() {
        let path = format!("/api/v1/devices/{}/commands?wait_ms=5000", device.id);
        let t0 = Instant::now();
        let r = http.request("POST", &path, Some(body)).await?;
        took.push(t0.elapsed());
        let status = r.json().ok().map(|v| v["status"].clone());
        if r.status != 200 || status.as_ref().and_then(|s| s.as_str()) != Some("completed") {
            bail!("API round trip {round}: {} {}", r.status, r.text());
        }
    }
    Ok(took)
}

/// `rounds` commands published by a service client on a device's command topic, each
/// until the device's answer reaches the service client.
async fn mqtt_round_trips(
    addr: SocketAddr,
    devices: &[Device],
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut service = Client::connect(addr, &service_login("scale-service"), 600).await?;
    service
        .subscribe("device/+/response", QoS::AtLeastOnce)
        .await?;
    let mut out = BytesMut::new();
    let mut took = Vec::with_capacity(rounds);
    for (round, device) in devices.iter().cycle().take(rounds).enumerate() {
        let command_id = format!("mqtt-{round}");
        let body = serde_json::json!({"commandId": command_id, "type": "PING"}).to_string();
        let topic = format!("device/{}/command", device.id);
        let pkid = u16::try_from(round % 60_000 + 1)?;
        publish_into(&mut out, &topic, QoS::AtLeastOnce, pkid, body.as_bytes())?;
        let t0 = Instant::now();
        service.stream.write_all(&out).await?;
        out.clear();
        'answer: loop {
            if service.fill().await? == 0 {
                bail!("the broker closed the service client");
            }
            while let Some(packet) = service.next_packet()? {
                let Packet::Publish(p) = packet else { continue };
                puback_into(&mut out, p.pkid)?;
                let answer: serde_json::Value = serde_json::from_slice(&p.payload)?;
                if answer["commandId"] == command_id.as_str() {
                    took.push(t0.elapsed());
                    break 'answer;
                }
            }
        }
        service.stream.write_all(&out).await?;
        out.clear();
    }
    Ok(took)
}

/// Mosquitto with the same number of idle clients, anonymous, on the same topics.
async fn mosquitto(devices: &[Device], at_once: usize) -> anyhow::Result<Mosquitto> {
    let bin = std::env::var_os("MOSQUITTO_BIN").unwrap_or_else(|| "/usr/sbin/mosquitto".into());
    let dir = tempfile::tempdir()?;
    let addr = broker::free_port()?;
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {} 127.0.0.1\nallow_anonymous true\n", addr.port()),
    )?;
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {bin:?}"))?;
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rss_empty = rss(child.id())?;
        let anonymous: Vec<Device> = (devices.iter())
            .map(|d| Device {
                id: d.id.clone(),
                password: String::new(),
            })
            .collect();
        let (clients, connect) = connect_anonymous(addr, &anonymous, at_once).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_idle = rss(child.id())?;
        drop(clients);
        Ok(Mosquitto {
            rss_empty,
            connect,
            rss_idle,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// [`connect_all`] for anonymous clients with the devices' client ids.
async fn connect_anonymous(
    addr: SocketAddr,
    devices: &[Device],
    at_once: usize,
) -> anyhow::Result<(Vec<Client>, Duration)> {
    let gate = Arc::new(Semaphore::new(at_once));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for device in devices {
        let gate = gate.clone();
        let login = Login::anonymous(device.id.clone());
        let topics = device_topics(&device.id);
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await?;
            let mut client =
                Client::connect_within(addr, &login, 600, Duration::from_secs(120)).await?;
            for topic in topics {
                client.subscribe(&topic, QoS::AtLeastOnce).await?;
            }
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::with_capacity(devices.len());
    while let Some(joined) = tasks.join_next().await {
        clients.push(joined??);
    }
    Ok((clients, started.elapsed()))
}

/// Resident set size of a process, bytes (`VmRSS`).
/// Waits until the broker is idle, then past jemalloc's 10 s decay: the RSS read then is
/// what the broker holds, not what its background threads are about to give back (every
/// RSS reading of this bench, the empty broker's included).
pub(crate) async fn settle_memory(b: &Broker) {
    b.settle().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
}

pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn per(delta: u64, n: usize) -> String {
    let each = delta as f64 / n.max(1) as f64;
    format!("{:.0} B", each)
}

impl Report {
    fn render(&self) -> String {
        let n = self.devices;
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
        let rate = |d: Duration| {
            format!(
                "{:.0}/s ({:.2} s)",
                n as f64 / d.as_secs_f64(),
                d.as_secs_f64()
            )
        };
        let us = |v: &[Duration]| {
            format!(
                "{} / {} µs",
                percentile(v, 0.5).as_micros(),
                percentile(v, 0.99).as_micros()
            )
        };
        let idle = self.rss_idle.saturating_sub(self.rss_empty);
        let after = self.rss_after_commands.saturating_sub(self.rss_empty);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "## scale: {n} devices ({} connecting at once)\n",
            self.at_once
        );
        let _ = writeln!(t, "| metric | fleetmq | mosquitto | fleetmq ÷ mosquitto |");
        let _ = writeln!(t, "|---|---:|---:|---:|");
        let m = self.mosquitto.as_ref();
        let m_idle = m.map(|m| m.rss_idle.saturating_sub(m.rss_empty));
        let ratio = |a: u64, b: Option<u64>| match b {
            Some(b) if b > 0 => format!("{:.1}x", a as f64 / b as f64),
            _ => "–".into(),
        };
        let dash = || "–".to_owned();
        let _ = writeln!(
            t,
            "| RSS per idle device | {} | {} | {} |",
            per(idle, n),
            m_idle.map_or_else(dash, |d| per(d, n)),
            ratio(idle, m_idle)
        );
        let _ = writeln!(
            t,
            "| RSS with {n} idle devices (empty broker) | {} ({}) | {} ({}) | {} |",
            mib(self.rss_idle),
            mib(self.rss_empty),
            m.map_or_else(dash, |m| mib(m.rss_idle)),
            m.map_or_else(dash, |m| mib(m.rss_empty)),
            ratio(self.rss_idle, m.map(|m| m.rss_idle))
        );
        let _ = writeln!(
            t,
            "| RSS per device after the round trips | {} | – | – |",
            per(after, n)
        );
        let _ = writeln!(
            t,
            "| connect + 2 SUBSCRIBEs, devices/s | {} | {} | – |",
            rate(self.connect),
            m.map_or_else(dash, |m| rate(m.connect))
        );
        let _ = writeln!(
            t,
            "| reconnect after a restart, devices/s | {} | – | – |",
            rate(self.reconnect)
        );
        let _ = writeln!(
            t,
            "| command round trip, API `?wait_ms`, p50 / p99 | {} | – | – |",
            us(&self.api)
        );
        let _ = writeln!(
            t,
            "| command round trip, MQTT service → device → service, p50 / p99 | {} | – | – |",
            us(&self.mqtt)
        );
        let _ = writeln!(
            t,
            "\nprovisioning {n} devices (bulk route): {:.2} s",
            self.provision.as_secs_f64()
        );
        if let Some(a) = &self.attacked {
            a.render(&mut t, self.reconnect);
        }
        t
    }
}

impl Attacked {
    fn render(&self, t: &mut String, clean: Duration) {
        let c = &self.counts;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let sent = get(&c.sent);
        let ratio = self.reconnect.as_secs_f64() / clean.as_secs_f64();
        let verdict = if ratio <= 2.0 { "met" } else { "missed" };
        let _ = writeln!(
            t,
            "\nreconnect storm under a flood of {} wrong CONNECTs in flight (from {} \
             addresses): {:.2} s vs {:.2} s clean = {ratio:.2}x (target <= 2x: {verdict}); \
             refused and retried: {} clean, {} flooded",
            self.in_flight,
            crate::attack::SOURCES.len(),
            self.reconnect.as_secs_f64(),
            clean.as_secs_f64(),
            self.retries.0,
            self.retries.1,
        );
        let secs = self.flooded.as_secs_f64();
        let _ = writeln!(
            t,
            "flood: {sent} CONNECTs in {secs:.2} s ({:.0}/s); CONNACK not authorised {}, \
             bad user name or password {}, server unavailable/busy {}, other {}, accepted {}; \
             no CONNACK {}, TCP failed {}",
            sent as f64 / secs,
            get(&c.not_authorized),
            get(&c.bad_credentials),
            get(&c.unavailable),
            get(&c.other_code),
            get(&c.accepted),
            get(&c.no_connack),
            get(&c.failed),
        );
        let _ = writeln!(
            t,
            "broker refusals by cause since the restart: {}",
            self.refused
        );
        let _ = writeln!(
            t,
            "broker open descriptors: {} at the last SUBACK (flood running), {} 1 s after \
             the flood stopped",
            self.fds.0, self.fds.1
        );
    }
}
