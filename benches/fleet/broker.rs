//! The fleetmq under test: the release binary started as a child process on free
//! loopback ports with a fresh data directory, its devices and service client
//! provisioned through the admin API, and what `/proc` says about it.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::http::{Http, ADMIN_KEY};
use crate::mqtt::Login;

/// The service client that subscribes in the fan-in scenario and publishes its
/// "plain" (non-device) traffic. It may read and write `device/#` and `plain/#`.
pub const SERVICE_NAME: &str = "bench-fleet";
const SERVICE_PASSWORD: &str = "bench-fleet-service-password";

/// A provisioned device: its id and token.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub password: String,
}

impl Device {
    /// client id = username = device id, password = token (SPEC §2).
    pub fn login(&self) -> Login {
        Login::password(&self.id, &self.id, &self.password)
    }
}

/// A running fleetmq; killed when dropped.
pub struct Broker {
    child: Child,
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
    pub devices: Arc<Vec<Device>>,
    pub log: PathBuf,
    /// The `FLEETMQ_*` settings it was started with (a restart uses them again).
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The login of the service client, as connection `client_id`.
pub fn service_login(client_id: &str) -> Login {
    Login::password(client_id, SERVICE_NAME, SERVICE_PASSWORD)
}

/// Where the benchmark keeps data directories and the broker log.
pub fn work_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_fleetmq"));
    // CARGO_BIN_EXE points into `<target>/<profile>/`.
    let target = bin
        .parent()
        .and_then(|p| p.parent())
        .map_or_else(|| PathBuf::from("target"), |p| p.to_path_buf());
    target.join("bench-fleet")
}

/// The fleetmq binary: `FLEET_BENCH_BIN`, or the one cargo built for this bench
/// (`target/release/fleetmq` under `cargo bench`, rebuilt when sources changed).
pub fn binary() -> PathBuf {
    std::env::var_os("FLEET_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_fleetmq")))
}

pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Broker {
    /// Starts fleetmq and waits until both listeners accept.
    pub async fn start() -> anyhow::Result<Broker> {
        Broker::start_with("fleetmq", &[]).await
    }

    /// [`Broker::start`] with these `FLEETMQ_*` settings in its environment, logging to
    /// `<work dir>/{name}.log`.
    pub async fn start_with(name: &str, env: &[(&str, &str)]) -> anyhow::Result<Broker> {
        let work = work_dir();
        std::fs::create_dir_all(&work)?;
        let dir = tempfile::tempdir_in(&work)?;
        let (mqtt, admin) = (free_port()?, free_port()?);
        let log = work.join(format!("{name}.log"));
        std::fs::File::create(&log)?;
        let env: Vec<(String, String)> = (env.iter())
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn(dir.path(), mqtt, admin, &env, &log)?;
        let mut broker = Broker {
            child,
            mqtt,
            admin,
            devices: Arc::new(Vec::new()),
            log,
            env,
            dir,
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// SIGTERM, wait for the exit, start again on the same data directory and ports.
    #[allow(dead_code, reason = "used by the scale bench only")]
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        self.child = spawn(self.dir.path(), self.mqtt, self.admin, &self.env, &self.log)?;
        self.wait_ready().await
    }

    /// Waits until both listeners accept.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let (mqtt, admin) = (self.mqtt, self.admin);
        for addr in [mqtt, admin] {
            self.wait_listening(addr).await.with_context(|| {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                format!("log tail (newest first):\n{}", tail.join("\n"))
            })?;
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts (at most 20 s), failing early if fleetmq exits.
    pub async fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("fleetmq exited during startup ({status})");
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("fleetmq did not listen on {addr} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates the service client, then `count` devices `fleet-0`.. (a few requests at a
    /// time: each costs the broker one PBKDF2 hash).
    pub async fn provision(&mut self, count: usize) -> anyhow::Result<()> {
        self.create_service().await?;
        let workers = 4.min(count.max(1));
        let mut tasks = JoinSet::new();
        for w in 0..workers {
            let admin = self.admin;
            tasks.spawn(async move {
                let mut http = Http::new(admin);
                let mut made = Vec::new();
                for i in (w..count).step_by(workers) {
                    made.push((i, create_device(&mut http, &format!("fleet-{i}")).await?));
                }
                anyhow::Ok(made)
            });
        }
        let mut devices = Vec::with_capacity(count);
        while let Some(joined) = tasks.join_next().await {
            devices.extend(joined??);
        }
        devices.sort_by_key(|(i, _)| *i);
        self.devices = Arc::new(devices.into_iter().map(|(_, d)| d).collect());
        Ok(())
    }

    /// The service client, then `count` devices `fleet-0`.. through the bulk route
    /// (SPEC §8), 10,000 per request.
    #[allow(dead_code, reason = "used by the scale bench only")]
    pub async fn provision_bulk(&mut self, count: usize) -> anyhow::Result<()> {
        self.create_service().await?;
        let mut http = Http::new(self.admin);
        let mut devices = Vec::with_capacity(count);
        let ids: Vec<String> = (0..count).map(|i| format!("fleet-{i}")).collect();
        for chunk in ids.chunks(10_000) {
            let items: Vec<_> = chunk
                .iter()
                .map(|id| serde_json::json!({ "id": id }))
                .collect();
            let body = serde_json::json!({ "devices": items });
            let r = http.post("/api/v1/devices/bulk", &body).await?;
            if r.status != 201 {
                bail!(
                    "POST /api/v1/devices/bulk answered {}: {}",
                    r.status,
                    r.text()
                );
            }
            for item in r.json()?["created"].as_array().context("no created")? {
                let creds = &item["credentials"];
                devices.push(Device {
                    id: creds["username"].as_str().context("username")?.to_owned(),
                    password: creds["password"].as_str().context("password")?.to_owned(),
                });
            }
        }
        self.devices = Arc::new(devices);
        Ok(())
    }

    /// The service client of [`SERVICE_NAME`].
    async fn create_service(&mut self) -> anyhow::Result<()> {
        // The first request alone: the admin key's first check is a slow hash too.
        let mut http = Http::new(self.admin);
        let service = serde_json::json!({
            "name": SERVICE_NAME,
            "password": SERVICE_PASSWORD,
            "rules": [
                {"action": "all", "topic": "device/#", "allow": true},
                {"action": "all", "topic": "plain/#", "allow": true},
            ],
        });
        let r = http.post("/api/v1/service-clients", &service).await?;
        if r.status != 201 {
            bail!(
                "POST /api/v1/service-clients answered {}: {}",
                r.status,
                r.text()
            );
        }
        Ok(())
    }

    /// `GET /api/v1/stats`.
    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let r = Http::new(self.admin).get("/api/v1/stats").await?;
        if r.status != 200 {
            bail!("GET /api/v1/stats answered {}: {}", r.status, r.text());
        }
        r.json()
    }

    /// Waits (up to 60 s) until the broker is idle: under 5% of one core over 250 ms.
    /// Work queued behind the last scenario (presence writes after mass connects and
    /// disconnects, telemetry batches, command events) would otherwise run during, and
    /// take CPU from, the next measurement.
    pub async fn settle(&self) -> Duration {
        let started = Instant::now();
        let window = Duration::from_millis(250);
        while started.elapsed() < Duration::from_secs(60) {
            let before = cpu_time(self.pid()).unwrap_or_default();
            tokio::time::sleep(window).await;
            let used = cpu_time(self.pid())
                .unwrap_or_default()
                .saturating_sub(before);
            if used.as_secs_f64() < 0.05 * window.as_secs_f64() {
                break;
            }
        }
        started.elapsed()
    }
}

/// `fleetmq serve` on `dir/data`, appending to `log`.
fn spawn(
    dir: &std::path::Path,
    mqtt: SocketAddr,
    admin: SocketAddr,
    env: &[(String, String)],
    log: &std::path::Path,
) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new().append(true).open(log)?;
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--mqtt-tcp", &mqtt.to_string(), "--mqtt-ws", ""])
        .args(["--admin-listen", &admin.to_string()]);
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLEETMQ_")) {
        cmd.env_remove(name);
    }
    cmd.env_remove("MQTT_USE_ADVANCED_SECURITY")
        .env("FLEETMQ_ADMIN_API_KEY", ADMIN_KEY)
        .envs(env.iter().map(|(k, v)| (k, v)));
    // fleetmq's own default log filter unless FLEET_BENCH_LOG names one.
    match std::env::var("FLEET_BENCH_LOG") {
        Ok(filter) => cmd.env("RUST_LOG", filter),
        Err(_) => cmd.env_remove("RUST_LOG"),
    };
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    cmd.spawn()
        .with_context(|| format!("start {}", binary().display()))
}

async fn create_device(http: &mut Http, id: &str) -> anyhow::Result<Device> {
    let r = http
        .post("/api/v1/devices", &serde_json::json!({ "id": id }))
        .await?;
    if r.status != 201 {
        bail!("POST /api/v1/devices answered {}: {}", r.status, r.text());
    }
    let v = r.json()?;
    let password = v["credentials"]["password"]
        .as_str()
        .context("no credentials.password")?;
    Ok(Device {
        id: id.to_owned(),
        password: password.to_owned(),
    })
}

/// User + system CPU time of a process (all threads), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
        + fields.get(12).context("no stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU time this process (the load generator) used so far.
pub fn own_cpu() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time all processes used so far plus time the hypervisor took away (user, nice,
/// system and steal of `/proc/stat`'s `cpu` line).
fn machine_busy() -> Duration {
    let busy = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok([0, 1, 2, 7].iter().filter_map(|&i| fields.get(i)).sum())
    };
    Duration::from_secs_f64(busy().unwrap_or(0) as f64 / clock_ticks() as f64)
}

/// CPU used by the broker, the generator and everything else over one measurement.
pub struct CpuMeter {
    pid: u32,
    broker: Duration,
    client: Duration,
    machine: Duration,
    started: Instant,
}

/// What a [`CpuMeter`] measured: seconds of CPU per wall second (2.0 = both cores).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub broker: f64,
    pub client: f64,
    /// Other processes and the hypervisor: more than ~0.15 means a disturbed run.
    pub other: f64,
    pub broker_total: Duration,
}

impl CpuUse {
    /// Whether something else on the machine took a noticeable share of it.
    pub fn disturbed(&self) -> bool {
        self.other > 0.15
    }
}

impl CpuMeter {
    pub fn start(broker: &Broker) -> CpuMeter {
        CpuMeter {
            pid: broker.pid(),
            broker: cpu_time(broker.pid()).unwrap_or_default(),
            client: own_cpu(),
            machine: machine_busy(),
            started: Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        self.stop_over(self.started.elapsed())
    }

    /// Like [`CpuMeter::stop`], with CPU use averaged over `active` (the part of the time
    /// since the start during which the work ran) instead of all of it.
    pub fn stop_over(&self, active: Duration) -> CpuUse {
        let wall = active.as_secs_f64().max(1e-9);
        let broker = cpu_time(self.pid)
            .unwrap_or_default()
            .saturating_sub(self.broker);
        let client = own_cpu().saturating_sub(self.client);
        let machine = machine_busy().saturating_sub(self.machine);
        let other = machine.saturating_sub(broker).saturating_sub(client);
        CpuUse {
            broker: broker.as_secs_f64() / wall,
            client: client.as_secs_f64() / wall,
            other: other.as_secs_f64() / wall,
            broker_total: broker,
        }
    }
}
