//! Fleet scale (issue 15): N devices on one node, beside Mosquitto holding N idle clients.
//!
//! ```text
//! cargo bench --bench scale -- [--devices 19000] [--at-once 256] [--rtt 500]
//!     [--no-mosquitto] [--job] [--attack [200]]
//! ```
//!
//! 1. fleetmq (the release binary, `FLEET_BENCH_BIN` to run another) on a fresh data
//!    directory; N devices provisioned through the bulk route (SPEC §8).
//! 2. Every device connects (token, MQTT 3.1.1, keep-alive 600 s) and subscribes to
//!    `device/{id}/command` and `device/{id}/config` at QoS 1, `--at-once` at a time:
//!    the connect rate, then, once the broker is idle, RSS and RSS per idle device.
//! 3. Command round trips, one at a time, to 20 of the devices, which answer at once:
//!    through the API (`POST .../commands?wait_ms=5000` until `200 completed`) and over
//!    MQTT (a service client publishes on `device/{id}/command`, the device answers on
//!    `device/{id}/response`, the service client receives it). RSS again.
//! 4. The broker restarts (SIGTERM, same data); every device reconnects and subscribes
//!    again, `--at-once` at a time: time until the last SUBACK.
//!    With `--attack [CONNECTIONS]` (default 200 in flight) the broker then restarts
//!    once more and the storm runs again while a flood of wrong-password CONNECTs from
//!    127.0.0.2–5 hits it (`attack.rs`): both times, their ratio (target ≤ 2×), the
//!    flood's CONNACK codes, the broker's refusal causes and its open descriptors.
//! 5. Mosquitto (`MOSQUITTO_BIN`, default `/usr/sbin/mosquitto`) with N anonymous
//!    clients that subscribe to the same two topics: RSS per idle client.
//!
//! `--job` runs instead: N devices provisioned and connected as in 1–2, all answering
//! commands, then one job (SPEC §12) to all of them at full speed (`job.rs`).
//!
//! The open-file limit must allow N sockets in this process and in each broker.

mod attack;
#[path = "../fleet/broker.rs"]
#[allow(dead_code, reason = "shared with the fleet bench, used in part")]
mod broker;
#[path = "../fleet/http.rs"]
#[allow(dead_code, reason = "shared with the fleet bench, used in part")]
mod http;
mod job;
#[path = "../common/mqtt.rs"]
mod mqtt;
mod run;

use std::process::ExitCode;

/// What to run.
pub struct Args {
    pub devices: usize,
    pub at_once: usize,
    pub rtt: usize,
    pub mosquitto: bool,
    /// Run the job scenario instead.
    pub job: bool,
    /// Flood the second reconnect storm with this many wrong CONNECTs in flight.
    pub attack: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        devices: 19_000,
        at_once: 256,
        rtt: 500,
        mosquitto: true,
        job: false,
        attack: None,
    };
    let mut it = std::env::args().skip(1).peekable();
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            let text = it.next().ok_or(format!("{name} needs a number"))?;
            text.parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or(format!("{name} {text}: not a positive number"))
        };
        match flag.as_str() {
            "--devices" => args.devices = number("--devices")?,
            "--at-once" => args.at_once = number("--at-once")?,
            "--rtt" => args.rtt = number("--rtt")?,
            "--no-mosquitto" => args.mosquitto = false,
            "--job" => args.job = true,
            "--attack" => {
                let given = it.peek().and_then(|t| t.parse().ok()).filter(|&n| n > 0);
                if given.is_some() {
                    it.next();
                }
                args.attack = Some(given.unwrap_or(200));
            }
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    if args.devices < run::RESPONDERS {
        return Err(format!("--devices must be at least {}", run::RESPONDERS));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) if args.job => rt.block_on(job::run(&args)),
        Ok(rt) => rt.block_on(run::run(&args)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}
