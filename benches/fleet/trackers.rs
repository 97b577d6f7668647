//! Scenario 4, Teltonika trackers (SPEC §10), on a fleetmq of its own with the
//! `[teltonika]` listener on: the trackers are `tracker_sim`'s (`examples/tracker_sim/sim/`),
//! logged in by IMEI over TCP, each with one Codec 8 Extended packet at a time awaiting
//! its record-count ack, which the broker sends after the records are durably stored.
//!
//! - Idle: N trackers log in and send nothing; memory per tracker = (broker RSS after −
//!   before) ÷ N. Runs first, on the fresh broker.
//! - Load: M trackers send packets of R records, paced at a total rate or unpaced (the
//!   next packet right after the ack); records acked per second over the window, ack
//!   latency (packet written → ack read, in the generator), and how the telemetry
//!   writer batched them (commits, records per commit).
//!
//! Mosquitto has no Teltonika listener, so nothing here is a ratio to it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{free_port, Broker, CpuMeter, CpuUse};
use crate::http::Http;
use crate::sim::stats::{Snapshot, Stats};
use crate::sim::tracker::{Pace, Settings, Tracker};
use crate::telemetry::{drain, Counters};

/// The first tracker's IMEI; the others count up from it.
const IMEI_BASE: u64 = 356_307_042_000_000;
/// Trackers between connect and login answer at once.
const LOGIN_CONCURRENCY: usize = 64;
/// How long the trackers may take to log in.
const LOGIN_WAIT: Duration = Duration::from_secs(60);
/// How long tokio keeps an idle blocking-pool thread (its default): the logins' store
/// lookups start up to one per login in flight, and their stacks and allocator caches
/// are RSS until they exit.
pub const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Load before the measured window, so it starts in the steady state.
const WARM_UP: Duration = Duration::from_secs(1);

/// One load run.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Records/s offered by all trackers together; `None`: unpaced.
    pub rate: Option<f64>,
    pub records_per_packet: u8,
}

/// What the scenario runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub idle_trackers: usize,
    pub trackers: usize,
    pub window: Duration,
    pub loads: Vec<LoadSpec>,
}

/// Memory of idle tracker connections.
#[derive(Debug, Default)]
pub struct IdleResult {
    pub trackers: usize,
    pub rss_before: u64,
    /// Once the logins' work is done (the broker is idle).
    pub rss_settled: u64,
    /// Once the threads the logins started have exited as well.
    pub rss_after: u64,
    /// Broker threads before, once settled, and at the end.
    pub threads: [u64; 3],
    pub login_time: Duration,
}

impl IdleResult {
    pub fn per_tracker(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.trackers.max(1) as f64
    }
}

/// One load run's measurements.
#[derive(Debug)]
pub struct LoadRun {
    pub spec: LoadSpec,
    pub trackers: usize,
    pub window: Duration,
    /// Tracker counters over the window.
    pub sim: Snapshot,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Broker counters over the window.
    pub broker: Counters,
    pub cpu: CpuUse,
    /// Over the whole run, warm-up and wind-down included: records acked, and stored.
    pub acked_total: u64,
    pub stored_total: u64,
}

impl LoadRun {
    pub fn records_per_s(&self) -> f64 {
        self.sim.records_acked as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn commits_per_s(&self) -> f64 {
        self.broker.batches as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn records_per_commit(&self) -> f64 {
        self.broker.stored as f64 / self.broker.batches.max(1) as f64
    }

    /// Broker CPU per record acked, µs.
    pub fn cpu_per_record_us(&self) -> f64 {
        self.cpu.broker_total.as_secs_f64() * 1e6 / self.sim.records_acked.max(1) as f64
    }
}

#[derive(Debug, Default)]
pub struct TrackerResults {
    pub idle: Option<IdleResult>,
    pub loads: Vec<LoadRun>,
    pub provisioned: usize,
    pub provision_time: Duration,
}

/// Starts the tracker broker, provisions, and runs the idle measurement, then each load.
pub async fn run(plan: &Plan) -> anyhow::Result<TrackerResults> {
    let addr = free_port()?;
    let listen = addr.to_string();
    let mut broker =
        Broker::start_with("fleetmq-trackers", &[("FLEETMQ_TELTONIKA_LISTEN", &listen)])
            .await
            .context("start the fleetmq with a [teltonika] listener")?;
    broker.wait_listening(addr).await?;
    let count = plan.idle_trackers.max(plan.trackers);
    eprintln!("fleet:   provisioning {count} trackers ...");
    let provisioning = Instant::now();
    let imeis = provision(&broker, count).await?;
    let mut r = TrackerResults {
        provisioned: count,
        provision_time: provisioning.elapsed(),
        ..TrackerResults::default()
    };
    broker.settle().await;
    let fleet = Fleet {
        broker: &broker,
        addr,
        imeis: &imeis,
    };
    eprintln!("fleet:   {} idle trackers ...", plan.idle_trackers);
    r.idle = Some(fleet.idle(plan.idle_trackers).await?);
    for &spec in &plan.loads {
        broker.settle().await;
        eprintln!(
            "fleet:   {} trackers, {} records per packet, {} ...",
            plan.trackers,
            spec.records_per_packet,
            spec.rate
                .map_or("unpaced".into(), |r| format!("{r} records/s"))
        );
        r.loads
            .push(fleet.load(plan.trackers, plan.window, spec).await?);
    }
    Ok(r)
}

/// Devices with plugin `teltonika`, 4 requests at a time (each costs a token hash).
async fn provision(broker: &Broker, count: usize) -> anyhow::Result<Arc<Vec<String>>> {
    let imeis: Vec<String> = (0..count as u64)
        .map(|i| (IMEI_BASE + i).to_string())
        .collect();
    let imeis = Arc::new(imeis);
    let workers = 4.min(count.max(1));
    let mut tasks = JoinSet::new();
    for w in 0..workers {
        let (admin, imeis) = (broker.admin, imeis.clone());
        tasks.spawn(async move {
            let mut http = Http::new(admin);
            for imei in imeis.iter().skip(w).step_by(workers) {
                let body = serde_json::json!({"id": imei, "plugin": "teltonika"});
                let r = http.post("/api/v1/devices", &body).await?;
                if r.status != 201 {
                    bail!(
                        "POST /api/v1/devices {imei} answered {}: {}",
                        r.status,
                        r.text()
                    );
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(imeis)
}

/// The trackers of one measurement, running until cancelled.
struct Running {
    stats: Arc<Stats>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    count: usize,
}

impl Running {
    /// Waits until every tracker is logged in.
    async fn logged_in(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while self.stats.connected.load(Relaxed) < self.count as i64 {
            let s = self.stats.snapshot();
            if started.elapsed() > LOGIN_WAIT {
                bail!(
                    "{} of {} trackers logged in after {LOGIN_WAIT:?} ({s:?})",
                    s.connected,
                    self.count
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    /// Cancels the trackers and waits until they closed their sockets.
    async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Fleet<'a> {
    broker: &'a Broker,
    addr: std::net::SocketAddr,
    imeis: &'a [String],
}

impl Fleet<'_> {
    fn start(
        &self,
        count: usize,
        pace: Pace,
        records_per_packet: u8,
        spacing: Duration,
    ) -> Running {
        let settings = Arc::new(Settings {
            addr: self.addr,
            pace,
            records_per_packet,
            record_spacing: spacing,
            ack_timeout: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
        });
        let stats = Arc::new(Stats::default());
        let cancel = CancellationToken::new();
        let logins = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
        let mut tasks = JoinSet::new();
        let first = tokio::time::Instant::now();
        for (i, imei) in self.imeis.iter().take(count).enumerate() {
            let offset = match pace {
                Pace::Every(every) => every.mul_f64(i as f64 / count as f64),
                Pace::Idle | Pace::Unpaced => Duration::ZERO,
            };
            let imei = imei.parse().expect("a 15-digit IMEI");
            let t = Tracker::new(i, imei, settings.clone(), stats.clone(), first + offset);
            tasks.spawn(t.run(logins.clone(), cancel.clone()));
        }
        Running {
            stats,
            cancel,
            tasks,
            count,
        }
    }

    async fn idle(&self, count: usize) -> anyhow::Result<IdleResult> {
        let pid = self.broker.pid();
        let sample = || anyhow::Ok((status(pid, "VmRSS:")? * 1024, status(pid, "Threads:")?));
        let (rss_before, threads_before) = sample()?;
        let running = self.start(count, Pace::Idle, 1, Duration::from_secs(1));
        let login_time = running.logged_in().await?;
        // Presence writes for the logins run after the answers.
        self.broker.settle().await;
        let (rss_settled, threads_settled) = sample()?;
        tokio::time::sleep(BLOCKING_THREAD_KEEP_ALIVE + Duration::from_secs(2)).await;
        let (rss_after, threads_after) = sample()?;
        running.stop().await;
        Ok(IdleResult {
            trackers: count,
            rss_before,
            rss_settled,
            rss_after,
            threads: [threads_before, threads_settled, threads_after],
            login_time,
        })
    }

    async fn load(
        &self,
        count: usize,
        window: Duration,
        spec: LoadSpec,
    ) -> anyhow::Result<LoadRun> {
        let per_tracker = spec.rate.map(|r| r / count as f64);
        let per_packet = f64::from(spec.records_per_packet);
        let pace = per_tracker.map_or(Pace::Unpaced, |r| {
            Pace::Every(Duration::from_secs_f64(per_packet / r))
        });
        let spacing = Duration::from_secs_f64(1.0 / per_tracker.unwrap_or(1_000.0));
        let at_start = Counters::read(self.broker).await?;
        let running = self.start(count, pace, spec.records_per_packet, spacing);
        running.logged_in().await?;
        tokio::time::sleep(WARM_UP).await;
        running.stats.ack_latency.reset();
        let (sim0, broker0, meter) = (
            running.stats.snapshot(),
            Counters::read(self.broker).await?,
            CpuMeter::start(self.broker),
        );
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let (sim1, broker1, cpu) = (
            running.stats.snapshot(),
            Counters::read(self.broker).await?,
            meter.stop(),
        );
        let elapsed = started.elapsed();
        let latency = &running.stats.ack_latency;
        let (p50, p99, max) = (
            latency.quantile(0.5),
            latency.quantile(0.99),
            latency.quantile(1.0),
        );
        let stats = running.stats.clone();
        running.stop().await;
        let (total, _) = drain(self.broker, &at_start, stats.snapshot().records_acked).await?;
        Ok(LoadRun {
            spec,
            trackers: count,
            window: elapsed,
            sim: sim1.since(&sim0),
            p50,
            p99,
            max,
            broker: broker1.since(&broker0),
            cpu,
            acked_total: stats.snapshot().records_acked,
            stored_total: total.stored,
        })
    }
}

/// A number field of `/proc/PID/status` (`VmRSS:` is in kB).
fn status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let value: u64 = (status.lines())
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?
        .parse()?;
    Ok(value)
}
