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
//!
//! Here: the flags, the shared settings and counters, and the run. `admin` provisions the
//! devices over the admin API, `device` is one simulated device, `mqtt` its connection
//! over rumqttc, `sealer` its payload envelope, `contract` the JSON it exchanges.

mod admin;
mod contract;
mod device;
mod mqtt;
mod rng;
mod sealer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{provision_all, Admin};
use crate::device::spawn_device;
use crate::mqtt::Endpoint;

/// How often the summary line is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// How long a device may take to publish its offline status and disconnect at exit.
pub(crate) const FLUSH_GRACE: Duration = Duration::from_secs(3);

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

/// What every device shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) endpoint: Endpoint,
    pub(crate) v5: bool,
    pub(crate) telemetry_qos: u8,
    pub(crate) telemetry_every: Duration,
    pub(crate) reply_latency: Duration,
    pub(crate) failure_rate: f64,
    pub(crate) version: String,
}

/// Fleet-wide counters behind the summary line.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connected: AtomicUsize,
    pub(crate) telemetry: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) configs: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
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

/// Milliseconds since the Unix epoch, for timestamps and fallback seeds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
        endpoint: Endpoint::parse(&args.mqtt, args.ws.as_deref())?,
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
