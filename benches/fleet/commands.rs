//! Scenario 1, command round trip (SPEC §5): simulated devices answer every command at
//! once; the driver creates commands with `?wait_ms` over C keep-alive HTTP connections
//! and times each request until its `200` with status `completed`.
//!
//! Each HTTP connection owns a disjoint set of devices and has one request in flight, so
//! no command supersedes another (SPEC §5: a newer command of the same type for the same
//! device supersedes an older one that is not terminal).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::broker::{Broker, CpuMeter, CpuUse, Device};
use crate::http::Http;
use crate::mqtt::{puback_into, publish_into, Client, Packet, QoS};
use crate::report::Phases;

/// How long a create waits for a terminal state.
const WAIT_MS: u64 = 5_000;

/// One measured run at one concurrency.
#[derive(Debug, Default)]
pub struct CommandRun {
    pub concurrency: usize,
    pub devices: usize,
    pub requested: usize,
    pub wall: Duration,
    /// Latency of every `200` answer with status `completed`.
    pub latencies: Vec<Duration>,
    /// Everything else, by outcome (`202 sent`, `200 failed`, `error`, ...).
    pub not_completed: BTreeMap<String, usize>,
    /// Mean time between the record's timestamps, over completed commands.
    pub phases: Phases,
    pub cpu: CpuUse,
}

impl CommandRun {
    pub fn completed(&self) -> usize {
        self.latencies.len()
    }

    pub fn rate(&self) -> f64 {
        self.completed() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// What a device receives on `device/{id}/command` (the json plugin's encoding).
#[derive(Deserialize)]
struct CommandMsg<'a> {
    #[serde(rename = "commandId", borrow)]
    command_id: &'a str,
}

/// What a device answers on `device/{id}/response`.
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "commandId")]
    command_id: &'a str,
    success: bool,
}

/// The parts of the command record (SPEC §5) the driver looks at.
#[derive(Deserialize)]
struct Record {
    status: String,
    created_at: String,
    sent_at: Option<String>,
    delivered_at: Option<String>,
    completed_at: Option<String>,
}

/// Connects `devices`, subscribes each to its command topic, and answers every command
/// until the returned set is dropped.
pub async fn start_devices(broker: &Broker, devices: &[Device]) -> anyhow::Result<JoinSet<()>> {
    let mut connecting = JoinSet::new();
    for device in devices.iter().cloned() {
        let addr = broker.mqtt;
        connecting.spawn(async move {
            let mut client = Client::connect_with(addr, &device.login(), None).await?;
            client
                .subscribe(&format!("device/{}/command", device.id), QoS::AtLeastOnce)
                .await?;
            anyhow::Ok((client, device.id))
        });
    }
    let mut running = JoinSet::new();
    while let Some(joined) = connecting.join_next().await {
        let (client, id) = joined??;
        running.spawn(async move {
            if let Err(e) = answer_commands(client, &id).await {
                eprintln!("fleet: device {id} stopped: {e:#}");
            }
        });
    }
    Ok(running)
}

/// A device's loop: PUBACK every command and answer it with `success: true` at QoS 1,
/// both in one write.
async fn answer_commands(mut client: Client, id: &str) -> anyhow::Result<()> {
    let response_topic = format!("device/{id}/response");
    let mut out = BytesMut::with_capacity(1024);
    let mut pkid: u16 = 0;
    loop {
        if client.fill().await? == 0 {
            bail!("connection closed by the broker");
        }
        while let Some(packet) = client.next_packet()? {
            let Packet::Publish(command) = packet else {
                continue; // PUBACKs for our answers
            };
            if command.qos != QoS::AtMostOnce {
                puback_into(&mut out, command.pkid)?;
            }
            if let Ok(cmd) = serde_json::from_slice::<CommandMsg<'_>>(&command.payload) {
                let answer = Answer {
                    command_id: cmd.command_id,
                    success: true,
                };
                if let Ok(body) = serde_json::to_vec(&answer) {
                    pkid = pkid % 60_000 + 1;
                    publish_into(&mut out, &response_topic, QoS::AtLeastOnce, pkid, &body)?;
                }
            }
        }
        if !out.is_empty() {
            client.stream.write_all(&out).await?;
            out.clear();
        }
    }
}

/// One request's outcome: latency, and the record's phases when it completed.
struct Sample {
    latency: Duration,
    outcome: Result<Phases, String>,
}

/// Sends `count` commands over `concurrency` connections; worker `w` uses the devices
/// `w, w + concurrency, ...` in turn.
pub async fn run(
    broker: &Broker,
    devices: &[Device],
    concurrency: usize,
    count: usize,
) -> anyhow::Result<CommandRun> {
    if concurrency == 0 || concurrency > devices.len() {
        bail!(
            "concurrency {concurrency} needs 1..={} devices (one in-flight command per device)",
            devices.len()
        );
    }
    let next = Arc::new(AtomicUsize::new(0));
    let meter = CpuMeter::start(broker);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        let mine: Vec<String> = devices
            .iter()
            .skip(w)
            .step_by(concurrency)
            .map(|d| d.id.clone())
            .collect();
        let (admin, next) = (broker.admin, next.clone());
        workers.spawn(async move { drive(admin, mine, next, count).await });
    }
    let mut samples = Vec::with_capacity(count);
    while let Some(joined) = workers.join_next().await {
        samples.extend(joined?);
    }
    let wall = started.elapsed();
    let mut run = CommandRun {
        concurrency,
        devices: devices.len(),
        requested: count,
        wall,
        cpu: meter.stop(),
        ..CommandRun::default()
    };
    let mut phases = Vec::new();
    for s in samples {
        match s.outcome {
            Ok(p) => {
                run.latencies.push(s.latency);
                phases.push(p.with_total(s.latency));
            }
            Err(what) => *run.not_completed.entry(what).or_default() += 1,
        }
    }
    run.phases = Phases::mean(&phases);
    Ok(run)
}

/// One HTTP connection's share of the run.
async fn drive(
    admin: std::net::SocketAddr,
    devices: Vec<String>,
    next: Arc<AtomicUsize>,
    count: usize,
) -> Vec<Sample> {
    let mut http = Http::new(admin);
    let body = serde_json::to_vec(&serde_json::json!({"type": "PING"})).unwrap_or_default();
    let paths: Vec<String> = devices
        .iter()
        .map(|id| format!("/api/v1/devices/{id}/commands?wait_ms={WAIT_MS}"))
        .collect();
    let mut samples = Vec::new();
    for path in paths.iter().cycle() {
        if next.fetch_add(1, Relaxed) >= count {
            break;
        }
        let t0 = Instant::now();
        let answer = http.request("POST", path, Some(&body)).await;
        let latency = t0.elapsed();
        let outcome = match answer {
            Ok(r) => judge(r.status, &r.body),
            Err(e) => {
                eprintln!("fleet: command request failed: {e:#}");
                Err("error".to_owned())
            }
        };
        samples.push(Sample { latency, outcome });
    }
    samples
}

/// `Ok(phases)` for a `200` with status `completed`; otherwise a label for the outcome.
fn judge(status: u16, body: &[u8]) -> Result<Phases, String> {
    let record: Record = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(_) => return Err(format!("{status} (not a command record)")),
    };
    if status != 200 || record.status != "completed" {
        return Err(format!("{status} {}", record.status));
    }
    phases_of(&record).ok_or_else(|| format!("{status} completed, bad timestamps"))
}

fn phases_of(r: &Record) -> Option<Phases> {
    let created = ms_of_day(&r.created_at)?;
    let at = |t: &Option<String>| t.as_deref().and_then(ms_of_day);
    let (sent, delivered, completed) =
        (at(&r.sent_at)?, at(&r.delivered_at)?, at(&r.completed_at)?);
    // Differences modulo a day, so a run across midnight (UTC) stays right.
    let diff = |a: u64, b: u64| ((b + 86_400_000 - a) % 86_400_000) as f64;
    Some(Phases {
        queued_to_sent: diff(created, sent),
        sent_to_delivered: diff(sent, delivered),
        delivered_to_completed: diff(delivered, completed),
        outside: 0.0,
        total: 0.0,
    })
}

/// Milliseconds since midnight of an RFC 3339 UTC timestamp with milliseconds, as the
/// API writes them (`2025-01-01T12:34:56.789Z`).
fn ms_of_day(ts: &str) -> Option<u64> {
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let ms: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    Some(((h * 60 + m) * 60 + s) * 1_000 + ms)
}

/// One command per device, each required to complete: every device is connected,
/// subscribed and known ready to the engine before anything is timed.
pub async fn warm_up(broker: &Broker, devices: &[Device]) -> anyhow::Result<()> {
    let mut http = Http::new(broker.admin);
    let body = serde_json::json!({"type": "PING"});
    for d in devices {
        let path = format!("/api/v1/devices/{}/commands?wait_ms={WAIT_MS}", d.id);
        let r = http.post(&path, &body).await?;
        let status = r
            .json()
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_owned));
        if r.status != 200 || status.as_deref() != Some("completed") {
            bail!(
                "warm-up command for {} answered {} {}",
                d.id,
                r.status,
                r.text()
            );
        }
    }
    Ok(())
}
