//! Scenario 3, fan-in with telemetry storage on and off: ten publishers at QoS 0 into one
//! subscriber (the service client), as fast as the broker takes it; measured is what
//! the subscriber receives per second.
//!
//! Four kinds of traffic, same payload, same topic depth, same subscriber identity:
//! - `Telemetry`: devices publish `device/{id}/telemetry`; the fleet services decode and
//!   store every message (storage on).
//! - `Unstored`: the same, against a second fleetmq started with `telemetry.store =
//!   false`: every message is checked by the device's plugin and routed, none stored
//!   (storage off: what the "telemetry storage on vs off" compares).
//! - `Events`: other devices publish `device/{id}/events`; the link layer hands each
//!   message to the fleet services, which parse it (alarm events) and store nothing: the
//!   queue hop and a JSON parse without the store.
//! - `Plain`: service-client connections publish `plain/{n}/data`; the fleet services
//!   never see it (routing and ACL only: no device path at all).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::broker::{service_login, Broker, CpuMeter, CpuUse, Device};
use crate::mqtt::{connect_many, publish_into, Client, Login, PacketType, QoS};
use crate::telemetry::{drain, Counters, PAYLOAD};

/// Messages per socket write.
const BATCH: usize = 16;
/// A run ends this long after the last message arrived when some never do.
const GRACE: Duration = Duration::from_secs(1);
/// Upper bound of one run.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Telemetry,
    Unstored,
    Events,
    Plain,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Telemetry, Mode::Unstored, Mode::Events, Mode::Plain];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Telemetry => "storage on: devices → `device/+/telemetry`",
            Mode::Unstored => {
                "storage off (`telemetry.store = false`): devices → `device/+/telemetry`"
            }
            Mode::Events => "parsed, not stored: devices → `device/+/events`",
            Mode::Plain => "no device path: service client → `plain/+/data`",
        }
    }

    fn filter(self) -> &'static str {
        match self {
            Mode::Telemetry | Mode::Unstored => "device/+/telemetry",
            Mode::Events => "device/+/events",
            Mode::Plain => "plain/+/data",
        }
    }
}

/// One fan-in run.
#[derive(Debug, Clone, Copy, Default)]
pub struct FanInRun {
    pub publishers: usize,
    pub sent: u64,
    pub received: u64,
    /// From the first write until the last message reached the subscriber.
    pub wall: Duration,
    pub counters: Counters,
    /// Cores in use until the last message arrived.
    pub cpu: CpuUse,
    /// Broker CPU from the first write until the telemetry queue had drained.
    pub broker_cpu_all: Duration,
}

impl FanInRun {
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Broker CPU per message sent, storing included, in µs.
    pub fn cpu_per_message_us(&self) -> f64 {
        self.broker_cpu_all.as_secs_f64() * 1e6 / self.sent.max(1) as f64
    }
}

/// Every run of one mode at one offered rate; the report shows the median.
#[derive(Debug, Clone)]
pub struct FanInResult {
    pub mode: Mode,
    /// Offered msg/s in all; `None`: as fast as the broker takes it.
    pub offered: Option<f64>,
    pub runs: Vec<FanInRun>,
}

impl FanInResult {
    /// The run with the median throughput (unpaced) or median CPU per message (paced).
    pub fn median(&self) -> FanInRun {
        let mut runs = self.runs.clone();
        match self.offered {
            None => runs.sort_by(|a, b| a.rate().total_cmp(&b.rate())),
            Some(_) => {
                runs.sort_by(|a, b| a.cpu_per_message_us().total_cmp(&b.cpu_per_message_us()))
            }
        }
        runs.get(runs.len() / 2).copied().unwrap_or_default()
    }
}

/// What the subscriber has received: a count and when the last one came (ns after
/// `base`).
struct Received {
    count: AtomicU64,
    last_ns: AtomicU64,
    base: Instant,
}

/// One mode's publishers (with their pre-built batches) and its subscriber.
struct Setup {
    mode: Mode,
    publishers: Vec<(Client, Bytes)>,
    received: Arc<Received>,
    _subscriber: JoinSet<()>,
}

/// How a fan-in run is sized.
#[derive(Debug, Clone)]
pub struct Plan {
    pub publishers: usize,
    pub per_publisher: u64,
    /// Offered rates (msg/s in all) of the runs; `None`: as fast as the broker takes it.
    pub rates: Vec<Option<f64>>,
    pub repeat: usize,
}

/// Runs every mode at every rate `repeat` times (taking turns). `broker.devices` needs
/// `2 * publishers`: a device has one connection, so `Telemetry` and `Events` publish
/// as different devices. `unstored` is a second fleetmq with `telemetry.store = false`
/// and `publishers` devices of its own, for `Mode::Unstored`.
pub async fn run(
    broker: &Broker,
    unstored: &Broker,
    plan: &Plan,
) -> anyhow::Result<Vec<FanInResult>> {
    let publishers = plan.publishers;
    let (devices, others) = (&broker.devices, &unstored.devices);
    if devices.len() < 2 * publishers || others.len() < publishers {
        bail!(
            "fan-in needs {} + {publishers} devices, have {} + {}",
            2 * publishers,
            devices.len(),
            others.len()
        );
    }
    let mut setups = Vec::new();
    for mode in Mode::ALL {
        let (on, mine) = match mode {
            Mode::Events => (broker, &devices[publishers..2 * publishers]),
            Mode::Telemetry | Mode::Plain => (broker, &devices[..publishers]),
            Mode::Unstored => (unstored, &others[..publishers]),
        };
        setups.push(prepare(on, mine, mode).await?);
    }
    broker.settle().await;
    unstored.settle().await;
    let mut results = Vec::new();
    for &offered in &plan.rates {
        for mode in Mode::ALL {
            let runs = Vec::new();
            results.push(FanInResult {
                mode,
                offered,
                runs,
            });
        }
    }
    for round in 0..plan.repeat {
        for (r, &rate) in plan.rates.iter().enumerate() {
            for k in 0..setups.len() {
                // Rotate the order each round, so a slow spell does not hit one mode only.
                let i = (k + round) % setups.len();
                let label = rate.map_or("unpaced".into(), |r| format!("{r}/s"));
                eprintln!(
                    "fleet:   fan-in {:?} {label} (round {})",
                    setups[i].mode,
                    round + 1
                );
                let on = if setups[i].mode == Mode::Unstored {
                    unstored
                } else {
                    broker
                };
                let run = once(on, &mut setups[i], plan.per_publisher, rate).await?;
                results[r * setups.len() + i].runs.push(run);
                on.settle().await;
            }
        }
    }
    Ok(results)
}

async fn prepare(broker: &Broker, devices: &[Device], mode: Mode) -> anyhow::Result<Setup> {
    let (logins, topics): (Vec<Login>, Vec<String>) = match mode {
        Mode::Telemetry | Mode::Unstored | Mode::Events => devices
            .iter()
            .map(|d| {
                let leaf = if mode == Mode::Events {
                    "events"
                } else {
                    "telemetry"
                };
                (d.login(), format!("device/{}/{leaf}", d.id))
            })
            .unzip(),
        Mode::Plain => (0..devices.len())
            .map(|n| {
                (
                    service_login(&format!("plain-pub-{n}")),
                    format!("plain/{n}/data"),
                )
            })
            .unzip(),
    };
    let clients = connect_many(broker.mqtt, logins, 16, None).await?;
    let publishers = clients
        .into_iter()
        .zip(&topics)
        .map(|(c, topic)| anyhow::Ok((c, batch_for(topic)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut subscriber = Client::connect_with(
        broker.mqtt,
        &service_login(&format!("fanin-sub-{mode:?}")),
        None,
    )
    .await?;
    subscriber.subscribe(mode.filter(), QoS::AtMostOnce).await?;
    let received = Arc::new(Received {
        count: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        base: Instant::now(),
    });
    let mut task = JoinSet::new();
    task.spawn(count_messages(subscriber, received.clone()));
    Ok(Setup {
        mode,
        publishers,
        received,
        _subscriber: task,
    })
}

fn batch_for(topic: &str) -> anyhow::Result<Bytes> {
    let mut batch = BytesMut::with_capacity(BATCH * (topic.len() + PAYLOAD.len() + 4));
    for _ in 0..BATCH {
        publish_into(&mut batch, topic, QoS::AtMostOnce, 0, PAYLOAD)?;
    }
    Ok(batch.freeze())
}

async fn count_messages(mut client: Client, received: Arc<Received>) {
    loop {
        match client.fill().await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut n = 0;
        loop {
            match client.skip_packet() {
                Ok(Some(kind)) => n += u64::from(kind == PacketType::Publish),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("fleet: fan-in subscriber stopped: {e:#}");
                    return;
                }
            }
        }
        if n > 0 {
            let at = u64::try_from(received.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            received.last_ns.store(at, Relaxed);
            received.count.fetch_add(n, Relaxed);
        }
    }
}

/// One run of one mode.
async fn once(
    broker: &Broker,
    setup: &mut Setup,
    per_publisher: u64,
    rate: Option<f64>,
) -> anyhow::Result<FanInRun> {
    let count = setup.publishers.len();
    // Paced: each publisher writes one batch per interval, publishers staggered evenly.
    let interval = rate.map(|r| Duration::from_secs_f64(BATCH as f64 * count as f64 / r));
    let before = Counters::read(broker).await?;
    let got = &setup.received;
    let start_count = got.count.load(Relaxed);
    let meter = CpuMeter::start(broker);
    let started = Instant::now();
    let turns = per_publisher.div_ceil(BATCH as u64);
    let mut writers = JoinSet::new();
    for (k, (client, batch)) in std::mem::take(&mut setup.publishers)
        .into_iter()
        .enumerate()
    {
        let first = started + interval.map_or(Duration::ZERO, |i| i * k as u32 / count as u32);
        writers.spawn(write_batches(client, batch, turns, first, interval));
    }
    let publishers = writers.len();
    let mut sent = 0;
    while let Some(joined) = writers.join_next().await {
        let (n, client, batch) = joined??;
        sent += n;
        setup.publishers.push((client, batch));
    }
    let all_sent = Instant::now();
    loop {
        let received = got.count.load(Relaxed) - start_count;
        let last = got.base + Duration::from_nanos(got.last_ns.load(Relaxed));
        let idle = Instant::now().saturating_duration_since(last.max(all_sent));
        if received >= sent || idle > GRACE || started.elapsed() > DEADLINE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = got.count.load(Relaxed) - start_count;
    let last = got.base + Duration::from_nanos(got.last_ns.load(Relaxed));
    // The broker idles once the last message is out; averaged up to there.
    let cpu = meter.stop_over(last.saturating_duration_since(started));
    let expected = if setup.mode == Mode::Telemetry {
        sent
    } else {
        0
    };
    let (counters, _) = drain(broker, &before, expected).await?;
    Ok(FanInRun {
        publishers,
        sent,
        received,
        wall: last.saturating_duration_since(started),
        counters,
        cpu,
        broker_cpu_all: meter.stop().broker_total,
    })
}

/// Writes `batch` `turns` times: back to back, or once per `interval` from `first`.
async fn write_batches(
    mut client: Client,
    batch: Bytes,
    turns: u64,
    first: Instant,
    interval: Option<Duration>,
) -> anyhow::Result<(u64, Client, Bytes)> {
    let mut next = first;
    for _ in 0..turns {
        if let Some(every) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += every;
        }
        client.stream.write_all(&batch).await?;
    }
    Ok((turns * BATCH as u64, client, batch))
}
