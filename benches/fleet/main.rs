//! Device-logic benchmark: the release `fleetmq` started as a child process on free
//! loopback ports, driven through its admin API and by simulated devices.
//!
//! ```text
//! cargo bench --bench fleet -- [--quick] [--only commands,telemetry,fanin,trackers]
//!     [--concurrency 1,32] [--commands N] [--repeat N] [--command-rounds N]
//!     [--client-threads N] [--trackers N] [--idle-trackers N] [--alarm-rules N]
//! ```
//!
//! Scenarios (SPEC §5, §6):
//! 1. command round trip: devices answer every command at once; C keep-alive HTTP
//!    connections create commands with `?wait_ms=5000`; commands/s and latency of the
//!    `200 completed` answers.
//! 2. telemetry ingest: 1,000 devices publish JSON telemetry at QoS 0 for a few seconds;
//!    points/s published and persisted (`telemetry.stored` once the queue drained).
//!    With `--alarm-rules N`: then unpaced runs without and with N alarm rules,
//!    alternating (`alarms`).
//! 3. fan-in with telemetry storage on and off: ten publishers into one subscriber.
//! 4. Teltonika trackers (SPEC §10), on a fleetmq of their own: memory per idle tracker,
//!    records/s acked after the durable write, ack latency.
//!
//! Environment: `FLEET_BENCH_BIN` (default: the `fleetmq` cargo built for this bench),
//! `FLEET_BENCH_LOG` (fleetmq's `RUST_LOG`). Data directories and the broker log go to
//! `<target>/bench-fleet/`.
//!
//! - `broker`: starting fleetmq, provisioning, `/proc` CPU times.
//! - `http`: a keep-alive HTTP/1.1 client. `mqtt`: a minimal MQTT 3.1.1 client.
//! - `commands`, `telemetry`, `fanin`, `trackers`: the scenarios. `disk`: fsync and
//!   commit cost. `sim`: `tracker_sim`'s trackers (`examples/tracker_sim/sim/`).
//! - `report`: the markdown table; `trackers_report`: scenario 4's rows of it.
//!
//! Results and their reading are in `docs/benchmarks.md`.

mod alarms;
mod broker;
mod commands;
mod disk;
mod fanin;
mod http;
#[path = "../common/mqtt.rs"]
mod mqtt;
mod report;
#[path = "../../examples/tracker_sim/sim/mod.rs"]
mod sim;
mod telemetry;
mod trackers;
mod trackers_report;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::Broker;
use report::{Results, Setup};
use trackers::LoadSpec;

const SCENARIOS: [&str; 4] = ["commands", "telemetry", "fanin", "trackers"];

/// Sizes of the scenarios (`--quick` shrinks them).
struct Params {
    command_devices: usize,
    commands: usize,
    concurrency: Vec<usize>,
    telemetry_devices: usize,
    telemetry_tasks: usize,
    telemetry_window: Duration,
    /// Offered rates of the telemetry runs, points/s (`None`: unpaced, last).
    telemetry_rates: Vec<Option<f64>>,
    fanin_publishers: usize,
    fanin_per_publisher: u64,
    /// Offered rates of the fan-in runs, msg/s in all (`None`: unpaced).
    fanin_rates: Vec<Option<f64>>,
    repeat: usize,
    trackers: trackers::Plan,
}

impl Params {
    fn full() -> Params {
        Params {
            command_devices: 50,
            commands: 5_000,
            concurrency: vec![1, 32],
            telemetry_devices: 1_000,
            telemetry_tasks: 4,
            telemetry_window: Duration::from_secs(5),
            telemetry_rates: vec![Some(120_000.0), None],
            fanin_publishers: 10,
            fanin_per_publisher: 10_000,
            fanin_rates: vec![None, Some(100_000.0)],
            repeat: 5,
            trackers: trackers::Plan {
                idle_trackers: 2_000,
                trackers: 1_000,
                window: Duration::from_secs(10),
                loads: vec![
                    LoadSpec {
                        rate: Some(60_000.0),
                        records_per_packet: 10,
                    },
                    LoadSpec {
                        rate: None,
                        records_per_packet: 10,
                    },
                    LoadSpec {
                        rate: None,
                        records_per_packet: 1,
                    },
                ],
            },
        }
    }

    fn quick() -> Params {
        Params {
            commands: 1_000,
            telemetry_devices: 200,
            telemetry_window: Duration::from_secs(2),
            repeat: 1,
            trackers: trackers::Plan {
                idle_trackers: 500,
                trackers: 200,
                window: Duration::from_secs(3),
                ..Params::full().trackers
            },
            ..Params::full()
        }
    }
}

struct Args {
    quick: bool,
    only: Vec<String>,
    concurrency: Option<Vec<usize>>,
    repeat: Option<usize>,
    commands: Option<usize>,
    /// Messages per fan-in publisher and run (the default runs are ~0.2 s unpaced).
    fanin_messages: Option<usize>,
    /// Runs of the whole concurrency sweep (the VM's speed drifts: one run decides little).
    command_rounds: usize,
    client_threads: usize,
    trackers: Option<usize>,
    idle_trackers: Option<usize>,
    /// Alarm rules in the telemetry comparison (0: no comparison).
    alarm_rules: usize,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

fn number(flag: &str, text: Option<String>) -> Result<usize, String> {
    let text = text.ok_or(format!("{flag} needs a number"))?;
    text.parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or(format!("{flag} {text}: not a positive number"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        only: Vec::new(),
        concurrency: None,
        repeat: None,
        commands: None,
        fanin_messages: None,
        command_rounds: 1,
        client_threads: 2,
        trackers: None,
        idle_trackers: None,
        alarm_rules: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--only" => {
                let list = it
                    .next()
                    .ok_or("--only needs a list, e.g. commands,fanin")?;
                args.only = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = args.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    return Err(format!(
                        "--only: unknown {bad}; known: {}",
                        SCENARIOS.join(",")
                    ));
                }
            }
            "--concurrency" => {
                let list = it.next().ok_or("--concurrency needs a list, e.g. 1,32")?;
                let parsed = list
                    .split(',')
                    .map(|n| number("--concurrency", Some(n.into())));
                args.concurrency = Some(parsed.collect::<Result<_, _>>()?);
            }
            "--repeat" => args.repeat = Some(number("--repeat", it.next())?),
            "--commands" => args.commands = Some(number("--commands", it.next())?),
            "--fanin-messages" => {
                args.fanin_messages = Some(number("--fanin-messages", it.next())?);
            }
            "--command-rounds" => {
                args.command_rounds = number("--command-rounds", it.next())?;
            }
            "--client-threads" => args.client_threads = number("--client-threads", it.next())?,
            "--trackers" => args.trackers = Some(number("--trackers", it.next())?),
            "--idle-trackers" => args.idle_trackers = Some(number("--idle-trackers", it.next())?),
            "--alarm-rules" => args.alarm_rules = number("--alarm-rules", it.next())?,
            // `cargo bench` passes `--bench`; filters and other harness flags are ignored.
            _ => {}
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("fleet: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let started = Instant::now();
    let mut p = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(c) = &args.concurrency {
        p.concurrency = c.clone();
    }
    p.repeat = args.repeat.unwrap_or(p.repeat);
    p.commands = args.commands.unwrap_or(p.commands);
    if let Some(n) = args.fanin_messages {
        p.fanin_per_publisher = n as u64;
    }
    p.trackers.trackers = args.trackers.unwrap_or(p.trackers.trackers);
    p.trackers.idle_trackers = args.idle_trackers.unwrap_or(p.trackers.idle_trackers);
    eprintln!("fleet: binary {}", broker::binary().display());
    let disk = probe_disk().await;
    let mut broker = match Broker::start().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fleet: fleetmq did not start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let needed = [
        (args.wants("commands"), p.command_devices),
        (args.wants("telemetry"), p.telemetry_devices),
        (args.wants("fanin"), 2 * p.fanin_publishers),
    ];
    let count = needed
        .iter()
        .filter(|(w, _)| *w)
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    eprintln!("fleet: provisioning {count} devices ...");
    let provisioning = Instant::now();
    if let Err(e) = broker.provision(count).await {
        eprintln!("fleet: provisioning failed: {e:#}");
        return ExitCode::FAILURE;
    }
    let provision_time = provisioning.elapsed();
    let results = scenarios(&broker, &args, &p).await;
    let setup = Setup {
        command: command_line(),
        mode: if args.quick { "quick" } else { "full" },
        client_threads: args.client_threads,
        took: started.elapsed(),
        disk,
        provisioned: count,
        provision_time,
    };
    println!("{}", report::render(&setup, &results));
    eprintln!("fleet: broker log: {}", broker.log.display());
    if results.notes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn probe_disk() -> Option<disk::DiskCost> {
    let dir = broker::work_dir();
    let probed = tokio::task::spawn_blocking(move || disk::probe(&dir, 200)).await;
    match probed {
        Ok(Ok(cost)) => Some(cost),
        Ok(Err(e)) => {
            eprintln!("fleet: disk probe failed: {e:#}");
            None
        }
        Err(e) => {
            eprintln!("fleet: disk probe failed: {e}");
            None
        }
    }
}

/// Runs the selected scenarios in order; a failed one is noted and the rest go on.
async fn scenarios(broker: &Broker, args: &Args, p: &Params) -> Results {
    let mut r = Results::default();
    let devices = broker.devices.clone();
    if args.wants("commands") {
        eprintln!("fleet: command round trip ...");
        let mine = &devices[..p.command_devices.min(devices.len())];
        match command_runs(broker, mine, p, args.command_rounds).await {
            Ok(runs) => r.commands = runs,
            Err(e) => r.notes.push(format!("command round trip: {e:#}")),
        }
        broker.settle().await;
    }
    if args.wants("telemetry") {
        eprintln!("fleet: telemetry ingest ...");
        let mine = &devices[..p.telemetry_devices.min(devices.len())];
        let (tasks, window) = (p.telemetry_tasks, p.telemetry_window);
        match telemetry::run(broker, mine, tasks, window, &p.telemetry_rates).await {
            Ok(t) => r.telemetry = t,
            Err(e) => r.notes.push(format!("telemetry ingest: {e:#}")),
        }
        broker.settle().await;
        if args.alarm_rules > 0 {
            let plan = alarms::Plan {
                devices: mine,
                tasks,
                window,
                rules: args.alarm_rules,
                rounds: p.repeat.clamp(1, 5),
            };
            match alarms::run(broker, &plan).await {
                Ok(a) => r.alarms = Some(a),
                Err(e) => r.notes.push(format!("telemetry with alarm rules: {e:#}")),
            }
            broker.settle().await;
        }
    }
    if args.wants("fanin") {
        eprintln!("fleet: fan-in ...");
        let plan = fanin::Plan {
            publishers: p.fanin_publishers,
            per_publisher: p.fanin_per_publisher,
            rates: p.fanin_rates.clone(),
            repeat: p.repeat,
        };
        match fanin_runs(broker, &plan).await {
            Ok(f) => r.fanin = f,
            Err(e) => r.notes.push(format!("fan-in: {e:#}")),
        }
    }
    if args.wants("trackers") {
        eprintln!("fleet: Teltonika trackers ...");
        match trackers::run(&p.trackers).await {
            Ok(t) => r.trackers = Some(t),
            Err(e) => r.notes.push(format!("trackers: {e:#}")),
        }
    }
    r
}

async fn command_runs(
    broker: &Broker,
    devices: &[broker::Device],
    p: &Params,
    rounds: usize,
) -> anyhow::Result<Vec<commands::CommandRun>> {
    let _running = commands::start_devices(broker, devices).await?;
    broker.settle().await;
    commands::warm_up(broker, devices).await?;
    let mut runs = Vec::new();
    for round in 1..=rounds {
        for &c in &p.concurrency {
            broker.settle().await;
            eprintln!("fleet:   C={c} (round {round} of {rounds})");
            runs.push(commands::run(broker, devices, c, p.commands).await?);
        }
    }
    Ok(runs)
}

/// Fan-in against `broker` and a second fleetmq with telemetry storage off (the same
/// binary and devices of its own), both running for the whole scenario.
async fn fanin_runs(
    broker: &Broker,
    plan: &fanin::Plan,
) -> anyhow::Result<Vec<fanin::FanInResult>> {
    let mut unstored =
        Broker::start_with("fleetmq-unstored", &[("FLEETMQ_TELEMETRY_STORE", "false")])
            .await
            .context("start the fleetmq with telemetry.store = false")?;
    unstored.provision(plan.publishers).await?;
    fanin::run(broker, &unstored, plan).await
}

fn command_line() -> String {
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if extra.is_empty() {
        "cargo bench --bench fleet".to_owned()
    } else {
        format!("cargo bench --bench fleet -- {}", extra.join(" "))
    }
}
