//! `tracker_sim`: N simulated Teltonika trackers (SPEC §10) against a running fleetmq's
//! `[teltonika]` listener, for trying trackers out and for benchmarks.
//!
//! Each tracker logs in with its IMEI (`--imei-base` plus its index), then sends Codec 8
//! Extended AVL packets of `--records-per-packet` records with a moving GPS position
//! and IO elements (one of them a variable-length NX element, the VIN) at `--rate`
//! records/s, one packet at a time: the next goes after the record-count ack. It
//! answers Codec 12 commands like an FMB tracker (`getinfo` → `INI:…`, `getver` →
//! `Ver:…`, `getgps` → `GPS:…`, anything else → `<command> OK`). With `--provision`
//! it first creates the devices through the admin API. Every 5 s and at exit it prints
//! one summary line on stdout (records sent and acked, ack latency p50/p99); logs go
//! to stderr (`RUST_LOG`).
//!
//! ```text
//! cargo run --release --example tracker_sim -- --addr 127.0.0.1:5027 --count 100 \
//!     --rate 1 --records-per-packet 4 --duration 60 --provision --api-key-file data/admin.key
//! ```
//!
//! Here: the flags and the run. `admin` provisions; `sim/` is the trackers themselves
//! (shared with the `fleet` benchmark).

mod admin;
mod sim;
#[cfg(test)]
mod sim_tests;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use fleetmq_device_plugins::teltonika::Imei;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::sim::stats::Stats;
use crate::sim::tracker::{Pace, Settings, Tracker};

/// How often the summary line is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Trackers between connect and login answer at once.
const LOGIN_CONCURRENCY: usize = 64;

/// Simulated Teltonika trackers for a running fleetmq.
#[derive(Debug, Parser)]
#[command(name = "tracker_sim", disable_version_flag = true)]
struct Args {
    /// The broker's `[teltonika]` listener.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5027")]
    addr: String,
    /// Number of trackers.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// IMEI of the first tracker (15 digits); the others count up from it.
    #[arg(long, default_value = "356307042440000")]
    imei_base: String,
    /// Records per second per tracker; 0 logs in and sends nothing (commands are
    /// still answered).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Send each packet as soon as the previous one is acked (--rate is ignored).
    #[arg(long)]
    unpaced: bool,
    /// Records per AVL packet (1 to 255).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    records_per_packet: u8,
    /// Stop after this many seconds; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Seconds an ack may take before a tracker reconnects and sends the packet again.
    #[arg(long, default_value_t = 30)]
    ack_timeout: u64,
    /// Create the devices (plugin teltonika, id = IMEI) through the admin API first.
    #[arg(long)]
    provision: bool,
    /// Base URL of the admin API, for --provision.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    admin_url: String,
    /// Admin API key; when absent it is read from --api-key-file.
    #[arg(long, env = "FLEETMQ_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the admin API key (written by the broker on first start).
    #[arg(long, value_name = "PATH", default_value = "./data/admin.key")]
    api_key_file: PathBuf,
}

/// The IMEIs `base`, `base + 1`, ... (`count` of them), each 15 digits.
fn imeis(base: &str, count: usize) -> anyhow::Result<Vec<Imei>> {
    let first: u64 = match base.parse::<Imei>() {
        Ok(_) => base.parse()?,
        Err(e) => bail!("--imei-base {base:?}: {e}"),
    };
    (0..count as u64)
        .map(|i| {
            let text = format!("{:015}", first + i);
            text.parse::<Imei>()
                .map_err(|_| anyhow::anyhow!("--imei-base {base} + {i} has more than 15 digits"))
        })
        .collect()
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let addr: SocketAddr = (args.addr.to_socket_addrs().ok())
        .and_then(|mut a| a.next())
        .with_context(|| format!("--addr {:?}: not HOST:PORT", args.addr))?;
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate {}: must be 0 or more", args.rate);
    }
    let per_packet = f64::from(args.records_per_packet);
    let pace = if args.unpaced {
        Pace::Unpaced
    } else if args.rate == 0.0 {
        Pace::Idle
    } else {
        Pace::Every(Duration::from_secs_f64(per_packet / args.rate))
    };
    let record_spacing = if args.rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.rate)
    } else {
        Duration::from_secs(1)
    };
    Ok(Settings {
        addr,
        pace,
        records_per_packet: args.records_per_packet,
        record_spacing,
        ack_timeout: Duration::from_secs(args.ack_timeout.max(1)),
        backoff: Duration::from_secs(1),
    })
}

async fn api_key(args: &Args) -> anyhow::Result<String> {
    if let Some(key) = &args.api_key {
        return Ok(key.trim().to_owned());
    }
    let path = &args.api_key_file;
    let key = tokio::fs::read_to_string(path).await.with_context(|| {
        format!(
            "reading the admin API key from {} (or pass --api-key)",
            path.display()
        )
    })?;
    Ok(key.trim().to_owned())
}

/// Cancels the run on Ctrl-C or after `duration`.
async fn stop_after(duration: Option<Duration>, cancel: CancellationToken) {
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping"),
        () = deadline => tracing::info!("--duration elapsed: stopping"),
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
    let mut tick = tokio::time::interval_at(started + SUMMARY_EVERY, SUMMARY_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => println!("{}", stats.summary(total, started.elapsed())),
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = Arc::new(settings(&args)?);
    let imeis = imeis(&args.imei_base, args.count)?;
    if args.provision {
        let admin = Arc::new(Admin::new(&args.admin_url, api_key(&args).await?)?);
        tracing::info!(count = imeis.len(), admin = %args.admin_url, "provisioning trackers");
        let ids = imeis.iter().map(ToString::to_string).collect();
        admin::provision_all(admin, ids).await?;
    }
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let duration = (args.duration > 0).then(|| Duration::from_secs(args.duration));
    tasks.spawn(stop_after(duration, cancel.clone()));
    let stats = Arc::new(Stats::default());
    let logins = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
    let started = Instant::now();
    let total = imeis.len();
    tracing::info!(count = total, addr = %settings.addr, pace = ?settings.pace, "starting trackers");
    for (index, imei) in imeis.into_iter().enumerate() {
        // First packets spread over one interval, so the trackers do not send in step.
        let offset = match settings.pace {
            Pace::Every(every) => every.mul_f64(index as f64 / total as f64),
            Pace::Idle | Pace::Unpaced => Duration::ZERO,
        };
        let t = Tracker::new(
            index,
            imei,
            settings.clone(),
            stats.clone(),
            started + offset,
        );
        tasks.spawn(t.run(logins.clone(), cancel.clone()));
    }
    tasks.spawn(print_summaries(
        stats.clone(),
        total,
        started,
        cancel.clone(),
    ));
    cancel.cancelled().await;
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some trackers did not stop in time");
    }
    println!("final {}", stats.summary(total, started.elapsed()));
    Ok(())
}

/// Errors are printed as one chain of causes and exit with code 1.
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
            eprintln!("tracker_sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imeis_count_up_and_stay_fifteen_digits() {
        let got = imeis("356307042440998", 3).unwrap();
        let got: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["356307042440998", "356307042440999", "356307042441000"]
        );
        assert!(imeis("999999999999999", 2).is_err());
        assert!(imeis("12345", 1).is_err());
        assert_eq!(
            imeis("000000000000001", 1).unwrap()[0].as_str(),
            "000000000000001"
        );
    }

    #[test]
    fn the_rate_sets_the_packet_interval() {
        let args = Args::parse_from(["tracker_sim", "--rate", "50", "--records-per-packet", "10"]);
        let s = settings(&args).unwrap();
        assert_eq!(s.pace, Pace::Every(Duration::from_millis(200)));
        assert_eq!(s.record_spacing, Duration::from_millis(20));
        let idle = settings(&Args::parse_from(["tracker_sim", "--rate", "0"])).unwrap();
        assert_eq!(idle.pace, Pace::Idle);
        let unpaced = settings(&Args::parse_from(["tracker_sim", "--unpaced"])).unwrap();
        assert_eq!(unpaced.pace, Pace::Unpaced);
        assert!(settings(&Args::parse_from(["tracker_sim", "--rate=-1"])).is_err());
    }
}
