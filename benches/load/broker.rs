//! The brokers under test, each started as a child process on free loopback ports: fleetmq
//! (with its devices and service client provisioned through the admin API), bare rumqttd
//! and Mosquitto. Also what the generator reads about a broker process from `/proc`.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mqtt::Login;

const ADMIN_KEY: &str = "fleetmq-bench-admin-key-0123456789";
const SERVICE_PASSWORD: &str = "bench-service-password";

/// Which broker, and how it is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fleetmq {
        encryption: bool,
    },
    Rumqttd,
    Mosquitto,
    /// Mosquitto with `set_tcp_nodelay true` (only with `--mosquitto-nodelay`).
    MosquittoNodelay,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Fleetmq { encryption: false } => "fleetmq ACL",
            Kind::Fleetmq { encryption: true } => "fleetmq ACL+enc",
            Kind::Rumqttd => "rumqttd 0.20",
            Kind::Mosquitto => "mosquitto",
            Kind::MosquittoNodelay => "mosquitto nodelay",
        }
    }
}

/// A device the generator publishes as; `key` is its AES-256 key and generation when
/// payload encryption applies.
#[derive(Clone)]
pub struct Device {
    pub id: String,
    pub login: Login,
    pub key: Option<(Vec<u8>, u8)>,
}

/// A running broker process and the identities to use with it.
pub struct Broker {
    pub kind: Kind,
    pub child: Child,
    pub mqtt: SocketAddr,
    pub devices: Arc<Vec<Device>>,
    /// fleetmq: the service client's credentials; others: anonymous.
    service: Option<(String, String)>,
    /// fleetmq's admin API.
    admin: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The login of a subscriber allowed to read `device/+/telemetry`.
    pub fn subscriber(&self, client_id: &str) -> Login {
        Login {
            client_id: client_id.to_owned(),
            credentials: self.service.clone(),
            persistent: false,
        }
    }

    /// Resident set size of the broker process.
    pub fn rss(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid())
    }

    /// CPU time the broker process used so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }

    /// fleetmq's message and drop counters (`GET /api/v1/stats`), in one line.
    pub async fn counters(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .stats()
            .await?
            .map(|v| format!("messages {}, drops {}", v["messages"], v["drops"])))
    }

    /// Device events (telemetry) fleetmq dropped so far because its fleet queue was full.
    pub async fn queue_full_drops(&self) -> Option<u64> {
        self.stats()
            .await
            .ok()
            .flatten()
            .and_then(|v| v["drops"]["queue_full"].as_u64())
    }

    async fn stats(&self) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(admin) = self.admin else {
            return Ok(None);
        };
        let (status, body) = http(admin, "GET", "/api/v1/stats", None).await?;
        if status != 200 {
            bail!("GET /api/v1/stats answered {status}: {body}");
        }
        Ok(Some(serde_json::from_str(&body)?))
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where to find the brokers' programs.
pub struct Programs {
    pub fleetmq: PathBuf,
    pub rumqttd: Option<PathBuf>,
    pub mosquitto: Option<PathBuf>,
    /// Where broker logs and configs go.
    pub work: PathBuf,
}

impl Programs {
    pub fn find() -> Programs {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_fleetmq"));
        // CARGO_BIN_EXE points into `<target>/<profile>/`.
        let target = built
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
        let rumqttd = std::env::var_os("RUMQTTD_BIN")
            .map(PathBuf::from)
            .or_else(|| Some(target.join("bench-tools/bin/rumqttd")))
            .filter(|p| p.is_file());
        let mosquitto = std::env::var_os("MOSQUITTO_BIN")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/usr/sbin/mosquitto")))
            .filter(|p| p.is_file());
        Programs {
            // Another build of fleetmq (A/B runs against a saved binary).
            fleetmq: std::env::var_os("LOAD_FLEETMQ_BIN").map_or(built, PathBuf::from),
            rumqttd,
            mosquitto,
            work: target.join("bench-load"),
        }
    }

    /// Why a broker cannot be run, as a line for the report.
    pub fn missing(&self, kind: Kind) -> Option<String> {
        match kind {
            Kind::Rumqttd if self.rumqttd.is_none() => Some(
                "rumqttd skipped: no binary (set RUMQTTD_BIN, or `cargo install rumqttd --version 0.20.0 --root target/bench-tools`; see docs/benchmarks.md)"
                    .into(),
            ),
            Kind::Mosquitto | Kind::MosquittoNodelay if self.mosquitto.is_none() => {
                Some("mosquitto skipped: /usr/sbin/mosquitto not found (`apt-get install -y mosquitto`, or set MOSQUITTO_BIN)".into())
            }
            _ => None,
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Starts a broker, waits until it accepts, and provisions fleetmq's identities.
pub async fn start(kind: Kind, programs: &Programs, devices: usize) -> anyhow::Result<Broker> {
    std::fs::create_dir_all(&programs.work)?;
    let dir = tempfile::tempdir_in(&programs.work)?;
    let mqtt = free_port()?;
    let log_path = programs.work.join(format!(
        "{}.log",
        kind.label().replace([' ', '+', '.'], "-")
    ));
    let log = std::fs::File::create(&log_path)?;
    let mut admin = None;
    let mut cmd = match kind {
        Kind::Fleetmq { encryption } => {
            let admin_addr = free_port()?;
            admin = Some(admin_addr);
            let mut cmd = Command::new(&programs.fleetmq);
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(dir.path().join("data"));
            cmd.args([
                "--mqtt-tcp",
                &mqtt.to_string(),
                "--mqtt-ws",
                "",
                "--admin-listen",
                &admin_addr.to_string(),
                "--allow-anonymous",
            ]);
            if encryption {
                cmd.arg("--payload-encryption");
            }
            for (name, _) in std::env::vars()
                .filter(|(k, _)| k.starts_with("FLEETMQ_") || k == "MQTT_USE_ADVANCED_SECURITY")
            {
                cmd.env_remove(name);
            }
            cmd.env("FLEETMQ_ADMIN_API_KEY", ADMIN_KEY);
            // fleetmq's own default log filter, unless LOAD_FLEETMQ_LOG names one.
            match std::env::var("LOAD_FLEETMQ_LOG") {
                Ok(filter) => cmd.env("RUST_LOG", filter),
                Err(_) => cmd.env_remove("RUST_LOG"),
            };
            cmd
        }
        Kind::Rumqttd => {
            let config = dir.path().join("rumqttd.toml");
            std::fs::write(&config, rumqttd_config(mqtt))?;
            let mut cmd = Command::new(programs.rumqttd.as_ref().context("no rumqttd binary")?);
            cmd.arg("-q").arg("-c").arg(&config);
            cmd
        }
        Kind::Mosquitto | Kind::MosquittoNodelay => {
            let config = dir.path().join("mosquitto.conf");
            // Everything else at its default: max_queued_messages 1000, max_inflight_messages
            // 20, set_tcp_nodelay false, persistence false.
            let mut text = format!("listener {} 127.0.0.1\nallow_anonymous true\n", mqtt.port());
            if kind == Kind::MosquittoNodelay {
                text.push_str("set_tcp_nodelay true\n");
            }
            std::fs::write(&config, text)?;
            let mut cmd = Command::new(programs.mosquitto.as_ref().context("no mosquitto binary")?);
            cmd.arg("-c").arg(&config);
            cmd
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", kind.label()))?;
    let mut broker = Broker {
        kind,
        child,
        mqtt,
        devices: Arc::new(Vec::new()),
        service: None,
        admin,
        _dir: dir,
    };
    let ready = async {
        wait_listening(&mut broker, mqtt).await?;
        if let Some(admin) = admin {
            wait_listening(&mut broker, admin).await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = ready.await {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: String = tail
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        broker.stop();
        bail!("{e:#}; log tail:\n{tail}");
    }
    match (kind, admin) {
        (Kind::Fleetmq { encryption }, Some(admin)) => {
            let provisioned = provision(admin, devices, encryption).await;
            match provisioned {
                Ok(devices) => {
                    broker.devices = Arc::new(devices);
                    broker.service = Some(("bench-sub".into(), SERVICE_PASSWORD.into()));
                }
                Err(e) => {
                    broker.stop();
                    return Err(e.context("provisioning through the admin API"));
                }
            }
        }
        _ => {
            let plain = (0..devices).map(|i| format!("dev-{i}"));
            broker.devices = Arc::new(
                plain
                    .map(|id| Device {
                        login: Login::anonymous(&id),
                        id,
                        key: None,
                    })
                    .collect(),
            );
        }
    }
    Ok(broker)
}

fn rumqttd_config(mqtt: SocketAddr) -> String {
    // The router and connection settings of rumqttd's shipped `rumqttd.toml`.
    format!(
        r#"id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{mqtt}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
"#
    )
}

async fn wait_listening(broker: &mut Broker, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = broker.child.try_wait()? {
            bail!("{} exited during startup ({status})", broker.kind.label());
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {addr} within 15 s",
                broker.kind.label()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates the service client, then the devices (a few requests at a time).
async fn provision(
    admin: SocketAddr,
    count: usize,
    encryption: bool,
) -> anyhow::Result<Vec<Device>> {
    // The first request alone: the admin key's first check is a slow hash, and the API
    // answers 401 to requests beyond its concurrent slow-check limit.
    let service = serde_json::json!({
        "name": "bench-sub",
        "password": SERVICE_PASSWORD,
        "rules": [{"action": "all", "topic": "#", "allow": true}],
    });
    let (status, body) = http_post(admin, "/api/v1/service-clients", &service).await?;
    if status != 201 {
        bail!("POST /api/v1/service-clients answered {status}: {body}");
    }
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(4));
    for i in 0..count {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let id = format!("dev-{i}");
            let request = serde_json::json!({"id": id, "encrypted": encryption});
            let (status, body) = http_post(admin, "/api/v1/devices", &request).await?;
            if status != 201 {
                bail!("POST /api/v1/devices answered {status}: {body}");
            }
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let user = v["credentials"]["username"]
                .as_str()
                .context("no credentials.username")?
                .to_owned();
            let pass = v["credentials"]["password"]
                .as_str()
                .context("no credentials.password")?
                .to_owned();
            let key = match v.get("key").filter(|k| !k.is_null()) {
                Some(k) => {
                    let b64 = k["base64"].as_str().context("no key.base64")?;
                    let generation = k["generation"].as_u64().context("no key.generation")?;
                    Some((
                        base64::engine::general_purpose::STANDARD.decode(b64)?,
                        u8::try_from(generation)?,
                    ))
                }
                None if encryption => {
                    bail!("device {id} was created without a key although encryption is on")
                }
                None => None,
            };
            anyhow::Ok((
                i,
                Device {
                    login: Login {
                        client_id: id.clone(),
                        credentials: Some((user, pass)),
                        persistent: false,
                    },
                    id,
                    key,
                },
            ))
        });
    }
    let mut devices = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        devices.push(joined??);
    }
    devices.sort_by_key(|(i, _)| *i);
    Ok(devices.into_iter().map(|(_, d)| d).collect())
}

async fn http_post(
    addr: SocketAddr,
    path: &str,
    json: &serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    http(addr, "POST", path, Some(json)).await
}

/// One HTTP/1.1 request to the admin API with `Connection: close`; returns status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let body = json.map(|j| j.to_string()).unwrap_or_default();
    let mut request = String::new();
    write!(
        request,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {ADMIN_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .context("admin API timed out")??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// VmRSS of a process.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?;
    Ok(kb * 1024)
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

/// CPU time all processes used so far, plus time the hypervisor took away: user, nice,
/// system and steal of the `cpu` line of `/proc/stat` (interrupt time is left out: it is
/// not charged to any process).
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let busy: u64 = [0, 1, 2, 7].iter().filter_map(|&i| fields.get(i)).sum();
    Ok(Duration::from_secs_f64(busy as f64 / clock_ticks() as f64))
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
