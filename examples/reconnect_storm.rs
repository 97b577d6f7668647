//! Reconnect storm: what one device-token check costs, and how long a fleet of N devices
//! takes to reconnect all at once after a broker restart (SPEC §2, issue 15).
//!
//! ```text
//! cargo build --release --bin fleetmq
//! cargo run --release --example reconnect_storm -- [--count 2000] [--rounds 2]
//!     [--bin target/release/fleetmq] [--data DIR] [--provision bulk|single|none]
//!     [--at-once N] [--tls | --tls-rsa]
//! ```
//!
//! 1. In this process: microseconds per check of a keyed hash and of a PBKDF2 hash at
//!    the production cost.
//! 2. Starts `fleetmq serve` (`--bin`) on `DIR/data` and provisions `--count` devices
//!    `storm-00000`.. through the admin API: in one bulk request per 10,000, or one
//!    request per device (`single`, for a broker without the bulk route). Their tokens
//!    go to `DIR/tokens.json`; `--provision none` reuses them, so another binary can be
//!    run on the same data (an upgrade: records written by the old one).
//! 3. Each round: SIGTERM, start again on the same data, then every device connects at
//!    once (one task each, MQTT 3.1.1, TCP; with `--at-once N`, at most N CONNECTs
//!    waiting for their CONNACK) and stays connected until the last CONNACK. Reported:
//!    the time to the last CONNACK, and the broker's CPU time meanwhile. All at once, a
//!    fleet larger than the listener's accept backlog (1,024) also waits for SYN
//!    retransmits (1 s, then 3 s), whatever authentication costs.
//!
//! With `--tls` the devices connect over TLS (a certificate made for the run, ECDSA P-256,
//! or RSA-2048 with `--tls-rsa`; TLS 1.3):
//! the first round makes full handshakes, later rounds resume the sessions with the
//! tickets the broker issued before its restart; each round says how many resumed.
//!
//! `DIR` defaults to a temporary directory (removed at the end).

#[path = "../benches/fleet/http.rs"]
#[allow(dead_code, reason = "shared with the fleet bench, used in part")]
mod http;
#[path = "../benches/common/mqtt.rs"]
mod mqtt;
#[path = "reconnect_storm/tls.rs"]
mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleetmq_storage::{CredentialHash, DeviceCredential, TokenKey};
use serde_json::{json, Value};

struct Args {
    count: usize,
    rounds: usize,
    bin: PathBuf,
    data: Option<PathBuf>,
    provision: String,
    at_once: Option<usize>,
    tls: bool,
    rsa: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        count: 2_000,
        rounds: 2,
        bin: PathBuf::from("target/release/fleetmq"),
        data: None,
        provision: "bulk".into(),
        at_once: None,
        tls: false,
        rsa: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => args.count = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--bin" => args.bin = value()?.into(),
            "--data" => args.data = Some(value()?.into()),
            "--provision" => args.provision = value()?,
            "--at-once" => args.at_once = Some(value()?.parse()?),
            "--tls" => args.tls = true,
            "--tls-rsa" => (args.tls, args.rsa) = (true, true),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// Median time of one check, over `n` checks.
fn per_check(n: usize, check: impl Fn() -> bool) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            assert!(std::hint::black_box(check()));
            started.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

fn measure_checks() {
    let key = TokenKey::from_bytes(&fleetmq_storage::generate_key());
    let token = fleetmq_storage::generate_token();
    let keyed = DeviceCredential::keyed(&key, token.as_bytes());
    let legacy = DeviceCredential::Legacy(CredentialHash::new(token.as_bytes()));
    let fast = per_check(10_000, || keyed.verify(&key, token.as_bytes()));
    let slow = per_check(20, || legacy.verify(&key, token.as_bytes()));
    println!("token check, median: keyed HMAC-SHA256 {fast:?}, PBKDF2 (100,000 rounds) {slow:?}");
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

const ADMIN_KEY: &str = http::ADMIN_KEY;

/// A running `fleetmq serve`.
struct Broker {
    child: Child,
    mqtt: SocketAddr,
    admin: SocketAddr,
    /// The TLS listener, with `--tls`.
    tls: Option<SocketAddr>,
}

impl Broker {
    async fn start(bin: &Path, dir: &Path, tls: bool) -> anyhow::Result<Broker> {
        let (mqtt, admin) = (free_port()?, free_port()?);
        let tls = if tls { Some(free_port()?) } else { None };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))?;
        let mut command = Command::new(bin);
        if let Some(addr) = tls {
            command
                .env("FLEETMQ_MQTT_TLS_LISTEN", addr.to_string())
                .env("FLEETMQ_MQTT_TLS_CERT", dir.join("server.pem"))
                .env("FLEETMQ_MQTT_TLS_KEY", dir.join("server.key"));
        }
        let child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--mqtt-tcp", &mqtt.to_string(), "--mqtt-ws", ""])
            .args(["--admin-listen", &admin.to_string()])
            .env("FLEETMQ_ADMIN_API_KEY", ADMIN_KEY)
            .env("FLEETMQ_MQTT_MAX_CONNECTIONS", "20000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let broker = Broker {
            child,
            mqtt,
            admin,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in [Some(mqtt), Some(admin), tls].into_iter().flatten() {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if Instant::now() > deadline {
                    bail!("fleetmq did not listen on {addr}; see {}", dir.display());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(broker)
    }

    /// SIGTERM, and wait for the exit.
    fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }

    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        let fields: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        // CLK_TCK is 100 on Linux.
        Duration::from_millis(fields.iter().sum::<u64>() * 10)
    }
}

impl Drop for Broker {
    /// A run that fails leaves no broker behind (after `stop`, the child is gone already).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Provisions the devices; returns id → token.
async fn provision(
    b: &Broker,
    count: usize,
    bulk: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let ids: Vec<String> = (0..count).map(|i| format!("storm-{i:05}")).collect();
    let mut http = http::Http::new(b.admin);
    let mut tokens = BTreeMap::new();
    let started = Instant::now();
    if bulk {
        for chunk in ids.chunks(10_000) {
            let devices: Vec<Value> = chunk.iter().map(|id| json!({ "id": id })).collect();
            let answer = http
                .post("/api/v1/devices/bulk", &json!({ "devices": devices }))
                .await?;
            if answer.status != 201 {
                bail!("bulk provisioning: {} {}", answer.status, answer.text());
            }
            for item in answer.json()?["created"].as_array().context("created")? {
                let creds = &item["credentials"];
                let (id, token) = (creds["username"].as_str(), creds["password"].as_str());
                tokens.insert(
                    id.context("id")?.to_owned(),
                    token.context("token")?.to_owned(),
                );
            }
        }
    } else {
        for id in &ids {
            let answer = http.post("/api/v1/devices", &json!({ "id": id })).await?;
            if answer.status != 201 {
                bail!("provisioning {id}: {} {}", answer.status, answer.text());
            }
            let token = answer.json()?["credentials"]["password"]
                .as_str()
                .map(str::to_owned);
            tokens.insert(id.clone(), token.context("token")?);
        }
    }
    println!(
        "provisioned {count} devices ({}): {:?}",
        if bulk { "bulk" } else { "one request each" },
        started.elapsed()
    );
    Ok(tokens)
}

/// Every device connects at once; how long until the last CONNACK, and how many TLS
/// handshakes resumed a session.
async fn storm(
    b: &Broker,
    tokens: &BTreeMap<String, String>,
    at_once: usize,
    tls: Option<&tls::Client>,
) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, (id, token)) in tokens.iter().enumerate() {
        let login = mqtt::Login::password(id, id, token);
        let gate = gate.clone();
        match (tls, b.tls) {
            (Some(client), Some(addr)) => {
                let client = client.device(n);
                tasks.spawn(async move {
                    let _permit = gate.acquire_owned().await?;
                    client.connect(addr, &login).await.map(Connected::Tls)
                });
            }
            _ => {
                let addr = b.mqtt;
                tasks.spawn(async move {
                    let _permit = gate.acquire_owned().await?;
                    // Refused CONNACKs are errors (`connect_within` checks the code).
                    mqtt::Client::connect_within(addr, &login, 600, Duration::from_secs(600))
                        .await
                        .map(Connected::Tcp)
                });
            }
        }
    }
    let mut connected = Vec::with_capacity(tokens.len());
    while let Some(joined) = tasks.join_next().await {
        connected.push(joined??);
    }
    let took = started.elapsed();
    let resumed = (connected.iter())
        .filter(|c| matches!(c, Connected::Tls((_, true))))
        .count();
    Ok((took, resumed))
}

/// A device connection held until the storm ends.
enum Connected {
    Tcp(#[allow(dead_code, reason = "held open")] mqtt::Client),
    /// The stream, and whether its handshake resumed a session.
    Tls((Box<tls::Stream>, bool)),
}

async fn run(args: Args, dir: &Path) -> anyhow::Result<()> {
    let tokens_file = dir.join("tokens.json");
    let tls = if args.tls {
        Some(tls::Client::new(dir, args.count, args.rsa)?)
    } else {
        None
    };
    let mut broker = Broker::start(&args.bin, dir, args.tls).await?;
    let tokens = match args.provision.as_str() {
        "none" => serde_json::from_slice(&std::fs::read(&tokens_file)?)?,
        mode => {
            let tokens = provision(&broker, args.count, mode == "bulk").await?;
            std::fs::write(&tokens_file, serde_json::to_vec(&tokens)?)?;
            tokens
        }
    };
    for round in 1..=args.rounds {
        broker.stop()?;
        broker = Broker::start(&args.bin, dir, args.tls).await?;
        let cpu = broker.cpu();
        let at_once = args.at_once.unwrap_or(tokens.len()).max(1);
        let (took, resumed) = storm(&broker, &tokens, at_once, tls.as_ref()).await?;
        let cpu = broker.cpu().saturating_sub(cpu);
        let over = if args.tls {
            format!(" over TLS ({resumed} sessions resumed)")
        } else {
            String::new()
        };
        println!(
            "round {round}: {} devices ({at_once} at once) reconnected after a restart{over} in {took:?} ({:.0}/s), broker CPU {cpu:?}",
            tokens.len(),
            tokens.len() as f64 / took.as_secs_f64()
        );
    }
    broker.stop()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    measure_checks();
    match args.data.clone() {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            run(args, &dir).await
        }
        None => {
            let dir = tempfile::tempdir()?;
            run(args, dir.path()).await
        }
    }
}
