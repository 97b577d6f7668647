//! Scenario 2, telemetry ingest (SPEC §6): many devices publish JSON telemetry at QoS 0
//! as fast as their sockets take it for a fixed time; then the run waits until the
//! broker's telemetry queue has drained and reads how many points were stored.
//!
//! Also the pieces the fan-in scenario shares: broker counters and waiting for a drain.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::broker::{Broker, CpuMeter, CpuUse, Device};
use crate::mqtt::{connect_many, publish_into, Client, QoS};

/// About 60 bytes of JSON telemetry, as a small device would send it.
pub const PAYLOAD: &[u8] = br#"{"cpu":37.5,"mem":612,"temp":48.25,"uptime":86400,"rssi":-67}"#;

/// Messages per socket write; one write per device per turn.
const BATCH: usize = 8;
/// Send buffer of a publishing device's socket (the kernel doubles it): small, so that
/// "published" is close to what the broker took.
const SEND_BUFFER: u32 = 16 * 1024;

/// The broker counters (`GET /api/v1/stats`) these scenarios read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// PUBLISH packets the broker read from clients.
    pub received: u64,
    /// Telemetry points committed to redb.
    pub stored: u64,
    /// Points dropped because the telemetry queue was full.
    pub dropped_telemetry_queue: u64,
    /// Device events dropped because the link layer's queue to the fleet services was full.
    pub dropped_link_queue: u64,
    /// Payloads the plugin refused.
    pub rejected: u64,
    /// Telemetry write transactions.
    pub batches: u64,
    /// Points waiting in the telemetry queue now (a level, not a counter).
    pub queued: u64,
}

impl Counters {
    pub async fn read(broker: &Broker) -> anyhow::Result<Counters> {
        let v = broker.stats().await?;
        let n = |section: &str, key: &str| v[section][key].as_u64().unwrap_or(0);
        Ok(Counters {
            received: n("messages", "received"),
            stored: n("telemetry", "stored"),
            dropped_telemetry_queue: n("telemetry", "dropped_queue_full"),
            dropped_link_queue: n("drops", "queue_full"),
            rejected: n("telemetry", "rejected"),
            batches: n("telemetry", "batches"),
            queued: n("telemetry", "queued"),
        })
    }

    /// Counter increases since `before` (`queued` stays the current level).
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            received: self.received.saturating_sub(before.received),
            stored: self.stored.saturating_sub(before.stored),
            dropped_telemetry_queue: self
                .dropped_telemetry_queue
                .saturating_sub(before.dropped_telemetry_queue),
            dropped_link_queue: self
                .dropped_link_queue
                .saturating_sub(before.dropped_link_queue),
            rejected: self.rejected.saturating_sub(before.rejected),
            batches: self.batches.saturating_sub(before.batches),
            queued: self.queued,
        }
    }

    /// Telemetry points whose fate is known: stored, dropped or refused.
    pub fn accounted(&self) -> u64 {
        self.stored + self.dropped_telemetry_queue + self.dropped_link_queue + self.rejected
    }
}

/// Waits until the telemetry sent since `before` is accounted for (or nothing changed for
/// a while with an empty queue); returns the counters since `before` and when `stored`
/// last grew.
pub async fn drain(
    broker: &Broker,
    before: &Counters,
    expected: u64,
) -> anyhow::Result<(Counters, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Counters::read(broker).await?.since(before);
    let mut last_growth = Instant::now();
    let mut quiet_polls = 0;
    loop {
        if last.accounted() >= expected && last.queued == 0 {
            return Ok((last, last_growth));
        }
        if quiet_polls >= 10 || Instant::now() > deadline {
            return Ok((last, last_growth));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Counters::read(broker).await?.since(before);
        if now.stored > last.stored {
            last_growth = Instant::now();
        }
        let changed = now.stored != last.stored || now.received != last.received;
        quiet_polls = if changed || now.queued > 0 {
            0
        } else {
            quiet_polls + 1
        };
        last = now;
    }
}

/// One telemetry ingest run.
#[derive(Debug, Default)]
pub struct TelemetryRun {
    pub devices: usize,
    pub tasks: usize,
    /// The offered rate in points/s; `None`: as fast as the sockets take it.
    pub offered: Option<f64>,
    /// From the first write until every publisher stopped.
    pub window: Duration,
    /// Messages written to the sockets during the window.
    pub published: u64,
    /// Messages the broker had read when the window closed.
    pub received_in_window: u64,
    /// From the first write until the last point was stored.
    pub persist_wall: Duration,
    pub counters: Counters,
    pub cpu: CpuUse,
    pub connect_time: Duration,
}

impl TelemetryRun {
    pub fn published_rate(&self) -> f64 {
        self.published as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn persisted_rate(&self) -> f64 {
        self.counters.stored as f64 / self.persist_wall.as_secs_f64().max(1e-9)
    }
}

/// A publishing task's connections, each with its pre-built batch.
type Group = Vec<(Client, Bytes)>;

/// Connects `devices` once, then runs once per entry of `rates` (points/s offered;
/// `None` = unpaced), `tasks` tasks publishing through them for `window` each. An
/// unpaced run may stop a write half-way at the end of its window, so it must be last.
pub async fn run(
    broker: &Broker,
    devices: &[Device],
    tasks: usize,
    window: Duration,
    rates: &[Option<f64>],
) -> anyhow::Result<Vec<TelemetryRun>> {
    if rates.iter().rev().skip(1).any(Option::is_none) {
        anyhow::bail!("the unpaced telemetry run must be the last");
    }
    let connecting = Instant::now();
    let logins = devices.iter().map(Device::login).collect();
    let clients = connect_many(broker.mqtt, logins, 16, Some(SEND_BUFFER))
        .await
        .context("connecting the telemetry devices")?;
    let connect_time = connecting.elapsed();
    // Presence work for the connects (a durable write each) runs after the CONNACKs.
    broker.settle().await;
    let tasks = tasks.max(1);
    let mut groups: Vec<Group> = (0..tasks).map(|_| Vec::new()).collect();
    for (i, (client, device)) in clients.into_iter().zip(devices).enumerate() {
        let topic = format!("device/{}/telemetry", device.id);
        let mut batch = BytesMut::with_capacity(BATCH * (topic.len() + PAYLOAD.len() + 4));
        for _ in 0..BATCH {
            publish_into(&mut batch, &topic, QoS::AtMostOnce, 0, PAYLOAD)?;
        }
        groups[i % tasks].push((client, batch.freeze()));
    }
    let mut runs = Vec::new();
    for &rate in rates {
        eprintln!(
            "fleet:   offered {}",
            rate.map_or("unpaced".into(), |r| format!("{r}/s"))
        );
        let mut run = once(broker, &mut groups, window, rate, devices.len()).await?;
        run.connect_time = connect_time;
        runs.push(run);
        broker.settle().await;
    }
    Ok(runs)
}

async fn once(
    broker: &Broker,
    groups: &mut Vec<Group>,
    window: Duration,
    rate: Option<f64>,
    devices: usize,
) -> anyhow::Result<TelemetryRun> {
    let tasks = groups.len();
    // Paced: every device writes one batch per interval, tasks staggered evenly.
    let interval = rate.map(|r| Duration::from_secs_f64(BATCH as f64 * devices as f64 / r));
    let before = Counters::read(broker).await?;
    let meter = CpuMeter::start(broker);
    let started = Instant::now();
    let until = started + window;
    let mut publishers = JoinSet::new();
    for (k, group) in std::mem::take(groups).into_iter().enumerate() {
        let first = started + interval.map_or(Duration::ZERO, |i| i * k as u32 / tasks as u32);
        publishers.spawn(publish(group, first, until, interval));
    }
    let mut published = 0;
    while let Some(joined) = publishers.join_next().await {
        let (sent, group) = joined??;
        published += sent;
        groups.push(group);
    }
    let publish_wall = started.elapsed();
    let cpu = meter.stop();
    let at_close = Counters::read(broker).await?.since(&before);
    let (counters, stored_by) = drain(broker, &before, published).await?;
    Ok(TelemetryRun {
        devices,
        tasks,
        offered: rate,
        window: publish_wall,
        published,
        received_in_window: at_close.received,
        persist_wall: stored_by.saturating_duration_since(started),
        counters,
        cpu,
        connect_time: Duration::ZERO,
    })
}

/// Writes each connection's batch in turn until `until`: once per `interval` if paced,
/// else back to back (a write still blocked at `until` is abandoned). Returns the
/// messages written and the connections, kept open until the broker read everything.
async fn publish(
    mut group: Group,
    first: Instant,
    until: Instant,
    interval: Option<Duration>,
) -> anyhow::Result<(u64, Group)> {
    let mut sent = 0u64;
    let Some(every) = interval else {
        'flood: loop {
            for (client, batch) in &mut group {
                match tokio::time::timeout_at(until.into(), client.stream.write_all(batch)).await {
                    Err(_) => break 'flood,
                    Ok(written) => written?,
                }
                sent += BATCH as u64;
            }
        }
        return Ok((sent, group));
    };
    let mut next = first;
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        for (client, batch) in &mut group {
            client.stream.write_all(batch).await?;
            sent += BATCH as u64;
        }
        next += every;
    }
    Ok((sent, group))
}
