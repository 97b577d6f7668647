//! What the real-binary tests share: a `fleetmq serve` on free loopback ports with a
//! fresh data directory ([`Server`]: started, stopped with SIGTERM or SIGKILL, started
//! again on the same ports and data), a minimal HTTP client of its admin API
//! ([`http`]), and for the CLI tests, runs of the admin commands ([`cli`]).

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub mod cli;
pub mod raw;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleetmq");
/// How long `serve` may take to answer on the admin port.
pub const STARTUP: Duration = Duration::from_secs(30);
/// How long one CLI run, one HTTP exchange, one MQTT step or a shutdown may take.
pub const WAIT: Duration = Duration::from_secs(30);
pub const POLL: Duration = Duration::from_millis(25);

/// `n` distinct free loopback ports: bound together on port 0, then released.
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// The caller's environment variables that would change how `fleetmq` runs: every
/// `FLEETMQ_*` and rumqttd's `MQTT_USE_ADVANCED_SECURITY`. Tests remove them.
pub fn leaking_vars() -> impl Iterator<Item = std::ffi::OsString> {
    std::env::vars_os().map(|(name, _)| name).filter(|name| {
        name.to_str()
            .is_some_and(|n| n.starts_with("FLEETMQ_") || n == "MQTT_USE_ADVANCED_SECURITY")
    })
}

/// `fleetmq` with no [`leaking_vars`] of the caller; `TEST_FLEETMQ_BIN` runs another
/// build instead (to show a test fails against an older one).
pub fn fleetmq() -> tokio::process::Command {
    let bin = std::env::var_os("TEST_FLEETMQ_BIN").unwrap_or_else(|| BIN.into());
    let mut cmd = tokio::process::Command::new(bin);
    for name in leaking_vars() {
        cmd.env_remove(name);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A running `fleetmq serve` (MQTT over TCP, no WebSocket) with the admin key it
/// generated; killed on drop. Its log (stderr, every start appended) is in `dir`.
pub struct Server {
    /// `None` only while being built.
    child: Option<tokio::process::Child>,
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
    pub data: PathBuf,
    pub key: String,
    log: PathBuf,
    anonymous: bool,
    /// The Teltonika listener, when started with one ([`Server::start_with_trackers`]).
    pub teltonika: Option<SocketAddr>,
    /// Settings in `serve`'s environment (`FLEETMQ_*`).
    env: Vec<(String, String)>,
}

impl Server {
    /// Devices and service clients only (SPEC §2), data in `dir/data`.
    pub async fn start(dir: &Path) -> Server {
        Server::start_with(dir, false, Vec::new()).await
    }

    /// With `--allow-anonymous`: a plain MQTT broker for any client.
    pub async fn start_anonymous(dir: &Path) -> Server {
        Server::start_with(dir, true, Vec::new()).await
    }

    /// With a Teltonika listener (SPEC §10) besides MQTT.
    pub async fn start_with_trackers(dir: &Path) -> Server {
        Server::start_on(dir, false, true, Vec::new()).await
    }

    /// [`Server::start`] with these `FLEETMQ_*` settings in its environment.
    pub async fn start_env(dir: &Path, env: &[(&str, &str)]) -> Server {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Server::start_on(dir, false, false, env.collect()).await
    }

    async fn start_with(dir: &Path, anonymous: bool, env: Vec<(String, String)>) -> Server {
        Server::start_on(dir, anonymous, false, env).await
    }

    async fn start_on(
        dir: &Path,
        anonymous: bool,
        trackers: bool,
        env: Vec<(String, String)>,
    ) -> Server {
        let ports = free_ports(3);
        let mut server = Server {
            child: None,
            mqtt: ports[0],
            admin: ports[1],
            data: dir.join("data"),
            key: String::new(),
            log: dir.join("serve.log"),
            anonymous,
            teltonika: trackers.then_some(ports[2]),
            env,
        };
        server.start_again().await;
        // The key file is written before the admin API answers.
        let key = std::fs::read_to_string(server.data.join("admin.key")).expect("admin.key");
        server.key = key.trim().to_owned();
        server
    }

    /// Starts `serve` on this server's ports and data directory (after [`Server::stop`]
    /// or [`Server::kill9`]) and waits until the admin API answers.
    pub async fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = fleetmq();
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--mqtt-tcp")
            .arg(self.mqtt.to_string())
            .arg("--mqtt-ws")
            .arg("")
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        if self.anonymous {
            cmd.arg("--allow-anonymous");
        }
        if let Some(addr) = self.teltonika {
            cmd.env("FLEETMQ_TELTONIKA_LISTEN", addr.to_string());
        }
        let logged = self.log().len();
        self.child = Some(cmd.spawn().expect("spawn fleetmq serve"));
        let deadline = Instant::now() + STARTUP;
        // Over https (`admin.tls`) the plain /health probe cannot answer: the API is up
        // once it says so in this start's part of the log.
        let https = self.https();
        let up = |this: &Server| {
            this.log()
                .get(logged..)
                .is_some_and(|l| l.contains("admin api listening"))
        };
        while !(if https {
            up(self)
        } else {
            healthy(self.admin).await
        }) {
            if let Ok(Some(status)) = self.child().try_wait() {
                panic!("fleetmq serve exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "not up:\n{}", self.log());
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, then the exit code once it has exited.
    pub async fn stop(&mut self) -> Option<i32> {
        let pid = self.child().id().expect("running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success());
        let exited = tokio::time::timeout(WAIT, self.child().wait()).await;
        let status = exited
            .unwrap_or_else(|_| panic!("no exit after SIGTERM:\n{}", self.log()))
            .expect("wait");
        status.code()
    }

    /// SIGKILL: no shutdown, no flush.
    pub async fn kill9(&mut self) {
        self.child().start_kill().expect("SIGKILL");
        let status = self.child().wait().await.expect("reap");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }

    /// SIGTERM, exit 0, then started again on the same ports and data directory.
    pub async fn restart(&mut self) {
        assert_eq!(self.stop().await, Some(0), "{}", self.log());
        self.start_again().await;
    }

    fn child(&mut self) -> &mut tokio::process::Child {
        self.child.as_mut().expect("started")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin API's base URL: `https` when started with `FLEETMQ_ADMIN_TLS_CERT`.
    pub fn url(&self) -> String {
        let scheme = if self.https() { "https" } else { "http" };
        format!("{scheme}://{}", self.admin)
    }

    fn https(&self) -> bool {
        self.env.iter().any(|(k, _)| k == "FLEETMQ_ADMIN_TLS_CERT")
    }

    /// One admin API request with the key; (status, JSON body or `null` when empty).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(self.admin, &self.key, method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()));
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"))
        };
        (status, json)
    }
}

/// One `GET /health`; true on a 200.
pub async fn healthy(admin: SocketAddr) -> bool {
    matches!(http(admin, "", "GET", "/health", None).await, Ok((200, _)))
}

/// One HTTP/1.1 request on a fresh connection with `key` as `x-api-key`;
/// (status, body), a chunked body reassembled.
pub async fn http(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body = body.unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             x-api-key: {key}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        parse_response(&response)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::other("HTTP request timed out"))?
}

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let bad =
        |what: &str| std::io::Error::other(format!("{what}: {:?}", String::from_utf8_lossy(raw)));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            if size == 0 {
                break;
            }
            let start = eol + 2;
            out.extend_from_slice(rest.get(start..start + size).ok_or_else(|| bad("chunk"))?);
            rest = rest
                .get(start + size + 2..)
                .ok_or_else(|| bad("chunk end"))?;
        }
        body = out;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
