//! Load benchmark: fleetmq (ACL; ACL + payload decryption) side by side with bare rumqttd
//! 0.20 and Mosquitto, each started here as a child process on free loopback ports.
//!
//! ```text
//! cargo bench --bench load -- [--quick] [--repeat N] [--only fleetmq|rumqttd|mosquitto]
//!     [--scenarios idle,connect,rr,qos1,qos0] [--client-threads N] [--mosquitto-nodelay]
//!     [--persistent-subscriber]
//! ```
//!
//! `--repeat N` runs every broker N times (taking turns) and reports the median run;
//! `--mosquitto-nodelay` adds a Mosquitto run with `set_tcp_nodelay true` (its default
//! is false). `--persistent-subscriber`: the fan-in subscriber connects with a persistent
//! session (Clean Session = 0; fleetmq then keeps its ledger, see `docs/architecture.md`).
//! Environment: `LOAD_FLEETMQ_BIN` (another fleetmq build, for A/B runs), `RUMQTTD_BIN` (default `<target>/bench-tools/bin/rumqttd`),
//! `MOSQUITTO_BIN` (default `/usr/sbin/mosquitto`), `LOAD_FLEETMQ_LOG` (fleetmq's
//! `RUST_LOG`; unset: fleetmq's own default). A broker that is not installed is skipped
//! with a line saying how to install it.
//!
//! - `mqtt`: the hand-rolled MQTT 3.1.1 client and the SPEC §4 envelope sealer.
//! - `broker`: starting the brokers, provisioning fleetmq, reading `/proc`.
//! - `scenarios`: fan-in at QoS 0/1, QoS 1 round trip, connection rate, idle memory.
//! - `report`: the markdown tables.
//!
//! Results and their reading are in `docs/benchmarks.md`.

mod broker;
#[path = "../common/mqtt.rs"]
mod mqtt;
mod report;
mod scenarios;

use std::process::ExitCode;
use std::time::Instant;

use broker::{Broker, Kind, Programs};
use report::{Results, Runs};
use scenarios::Params;

struct Args {
    quick: bool,
    only: Option<String>,
    client_threads: usize,
    mosquitto_nodelay: bool,
    persistent_subscriber: bool,
    /// Runs per broker; the report shows the median.
    repeat: usize,
    /// Which scenarios to run (all by default).
    scenarios: Vec<String>,
}

const SCENARIOS: [&str; 5] = ["idle", "connect", "rr", "qos1", "qos0"];

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == scenario)
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        only: None,
        client_threads: 1,
        mosquitto_nodelay: false,
        persistent_subscriber: false,
        repeat: 1,
        scenarios: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--mosquitto-nodelay" => args.mosquitto_nodelay = true,
            "--persistent-subscriber" => args.persistent_subscriber = true,
            "--repeat" => {
                let n = it.next().ok_or("--repeat needs a number")?;
                args.repeat = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--repeat {n}: not a positive number"))?;
            }
            "--scenarios" => {
                let list = it.next().ok_or("--scenarios needs a list, e.g. rr,qos0")?;
                args.scenarios = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = args
                    .scenarios
                    .iter()
                    .find(|s| !SCENARIOS.contains(&s.as_str()))
                {
                    return Err(format!(
                        "--scenarios: unknown {bad}; known: {}",
                        SCENARIOS.join(",")
                    ));
                }
            }
            "--only" => {
                args.only = Some(
                    it.next()
                        .ok_or("--only needs fleetmq, rumqttd or mosquitto")?,
                )
            }
            "--client-threads" => {
                let n = it.next().ok_or("--client-threads needs a number")?;
                args.client_threads = n
                    .parse()
                    .map_err(|_| format!("--client-threads {n}: not a number"))?;
            }
            // `cargo bench` passes `--bench`; filters and other harness flags are ignored.
            _ => {}
        }
    }
    if let Some(only) = &args.only {
        if !["fleetmq", "rumqttd", "mosquitto"].contains(&only.as_str()) {
            return Err(format!(
                "--only {only}: expected fleetmq, rumqttd or mosquitto"
            ));
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let mut params = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    params.persistent_subscriber = args.persistent_subscriber;
    let programs = Programs::find();
    let mut kinds = vec![
        Kind::Fleetmq { encryption: false },
        Kind::Fleetmq { encryption: true },
        Kind::Rumqttd,
        Kind::Mosquitto,
    ];
    if args.mosquitto_nodelay {
        kinds.push(Kind::MosquittoNodelay);
    }
    kinds.retain(|k| match args.only.as_deref() {
        Some("fleetmq") => matches!(k, Kind::Fleetmq { .. }),
        Some("rumqttd") => *k == Kind::Rumqttd,
        Some("mosquitto") => matches!(k, Kind::Mosquitto | Kind::MosquittoNodelay),
        _ => true,
    });
    let started = Instant::now();
    let mut notes = Vec::new();
    kinds.retain(|&k| match programs.missing(k) {
        Some(why) => {
            eprintln!("load: {why}");
            notes.push(why);
            false
        }
        None => true,
    });
    let mut all: Vec<Runs> = kinds
        .iter()
        .map(|&kind| Runs {
            kind,
            runs: Vec::new(),
        })
        .collect();
    // Brokers take turns within each round, so a slow spell of the machine hits all of them.
    for round in 1..=args.repeat {
        for runs in &mut all {
            let kind = runs.kind;
            eprintln!(
                "load: {} (run {round} of {}) ...",
                kind.label(),
                args.repeat
            );
            match broker::start(kind, &programs, params.connect_concurrency).await {
                Ok(b) => {
                    runs.runs.push(run_broker(&b, &params, &args).await);
                    b.stop();
                }
                Err(e) => {
                    eprintln!("load: {} did not start: {e:#}", kind.label());
                    notes.push(format!("{} did not start: {e:#}", kind.label()));
                }
            }
        }
    }
    all.retain(|k| !k.runs.is_empty());
    let setup = report::Setup {
        params: &params,
        mode: if args.quick { "quick" } else { "full" },
        client_threads: args.client_threads,
        repeat: args.repeat,
        took: started.elapsed(),
    };
    print!("{}", report::render(&all, &setup, &notes));
    if all.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// How long after the last scenario the broker's RSS is read.
const RSS_SETTLE: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs the selected scenarios against one broker, idle memory first (on a fresh heap);
/// a failed scenario is noted and the rest go on.
async fn run_broker(b: &Broker, p: &Params, args: &Args) -> Results {
    let mut r = Results::new(b.kind);
    r.rss_start = b.rss().ok();
    let step = |name: &str| eprintln!("load:   {name}");
    if args.wants("idle") {
        step("idle connections");
        r.idle = r.note("idle connections", scenarios::idle_connections(b, p).await);
    }
    if args.wants("rr") {
        step("QoS 1 request/response");
        r.latency = r.note(
            "QoS 1 request/response",
            scenarios::request_response(b, p).await,
        );
    }
    if args.wants("qos1") {
        step("QoS 1 fan-in");
        r.qos1 = r.note(
            "QoS 1 fan-in",
            scenarios::fan_in(b, p, mqtt::QoS::AtLeastOnce).await,
        );
    }
    if args.wants("qos0") {
        step("QoS 0 fan-in");
        r.qos0 = r.note(
            "QoS 0 fan-in",
            scenarios::fan_in(b, p, mqtt::QoS::AtMostOnce).await,
        );
    }
    // Last: fleetmq's device reconnects leave presence work queued for seconds, which
    // would otherwise run during (and take CPU from) the scenarios after it.
    if args.wants("connect") {
        step("connection rate (anonymous)");
        let anonymous = scenarios::anonymous("rate");
        let rate = scenarios::connection_rate(b, p, p.connect_concurrency, anonymous).await;
        r.connect_anonymous = r.note("connection rate", rate);
        if matches!(b.kind, Kind::Fleetmq { .. }) {
            step("connection rate (devices)");
            r.connect_device = device_reconnects(b, p, &mut r).await;
        }
    }
    // jemalloc returns freed pages to the system on a 10 s decay: read after it, the RSS
    // is what the broker still holds, not what it is about to give back.
    tokio::time::sleep(RSS_SETTLE).await;
    r.rss_end = b.rss().ok();
    let counters = b.counters().await;
    r.counters = r.note("broker counters", counters).flatten();
    r
}

/// Each worker reconnects as its own device; one slow (PBKDF2) check per device is paid
/// first, so the measured run is the cached-credential path.
async fn device_reconnects(b: &Broker, p: &Params, r: &mut Results) -> Option<scenarios::ConnRate> {
    let devices = b.devices.clone();
    let workers = p.connect_concurrency.min(devices.len());
    let warm = Params {
        connections: workers,
        ..p.clone()
    };
    let warmed =
        scenarios::connection_rate(b, &warm, workers, scenarios::as_devices(devices.clone())).await;
    r.note("device warm-up", warmed);
    let rate = scenarios::connection_rate(b, p, workers, scenarios::as_devices(devices)).await;
    r.note("device connection rate", rate)
}
