//! What the CLI tests share: a real `fleetmq serve` on free loopback ports with a
//! generated admin key ([`Server`]), CLI runs pointed at it ([`Server::run`]) and
//! long-running ones ([`Tail`]), and rumqttc devices.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleetmq");
/// How long `serve` may take to answer on the admin port.
pub const STARTUP: Duration = Duration::from_secs(30);
/// How long one CLI run or one MQTT step may take.
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

/// `fleetmq` with no `FLEETMQ_*` variable of the caller leaking in.
pub fn fleetmq() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let leaks = name
            .to_str()
            .is_some_and(|n| n.starts_with("FLEETMQ_") || n == "MQTT_USE_ADVANCED_SECURITY");
        if leaks {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// What one CLI run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {self:#?}"))
    }
}

pub async fn run(mut cmd: tokio::process::Command) -> Run {
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the CLI finished in time")
        .expect("run fleetmq");
    Run {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One `GET /health`; true on a 200.
pub async fn healthy(admin: SocketAddr) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let request = format!("GET /health HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer.starts_with(b"HTTP/1.1 200")
}

/// A running `fleetmq serve` with a generated admin key; killed on drop.
pub struct Server {
    child: tokio::process::Child,
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
    pub data: PathBuf,
    pub key: String,
    log: PathBuf,
}

impl Server {
    pub async fn start(dir: &Path) -> Server {
        let ports = free_ports(2);
        let data = dir.join("data");
        let log = dir.join("serve.log");
        let child = Server::spawn(&data, ports[0], ports[1], &log);
        let mut server = Server {
            child,
            mqtt: ports[0],
            admin: ports[1],
            data,
            key: String::new(),
            log,
        };
        server.wait_healthy().await;
        // The key file is written before the admin API answers.
        let key = std::fs::read_to_string(server.data.join("admin.key")).expect("admin.key");
        server.key = key.trim().to_owned();
        server
    }

    fn spawn(
        data: &Path,
        mqtt: SocketAddr,
        admin: SocketAddr,
        log: &Path,
    ) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        fleetmq()
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .arg("--mqtt-tcp")
            .arg(mqtt.to_string())
            .arg("--mqtt-ws")
            .arg("")
            .arg("--admin-listen")
            .arg(admin.to_string())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fleetmq serve")
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP;
        while !healthy(self.admin).await {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fleetmq serve exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "not up:\n{}", self.log());
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, wait for exit 0, then start again on the same ports and data directory.
    pub async fn restart(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("serve stops after SIGTERM")
            .expect("wait");
        assert_eq!(status.code(), Some(0), "{}", self.log());
        self.child = Server::spawn(&self.data, self.mqtt, self.admin, &self.log);
        self.wait_healthy().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `fleetmq ARGS...` pointed at this server through the environment.
    pub fn cli(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = fleetmq();
        cmd.args(args)
            .env("FLEETMQ_ADMIN_URL", self.url())
            .env("FLEETMQ_API_KEY", &self.key);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        run(self.cli(args)).await
    }

    /// Provisions `id` and returns its MQTT password.
    pub async fn provision(&self, id: &str) -> String {
        let out = self.run(&["device", "add", id, "--json"]).await.ok();
        out.json()["credentials"]["password"]
            .as_str()
            .expect("a password")
            .to_owned()
    }

    /// A device connected over MQTT 3.1.1 (CONNACK seen), subscribed to its commands.
    pub async fn device(&self, id: &str, password: &str) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(id, "127.0.0.1", self.mqtt.port());
        options.set_credentials(id, password);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 16);
        client
            .subscribe(format!("device/{id}/command"), QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        let deadline = Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, events.poll())
                .await
                .expect("SUBACK in time")
                .expect("device connection");
            if let Event::Incoming(Packet::SubAck(_)) = event {
                return (client, events);
            }
        }
    }
}

/// Answers every command on `device/{id}/command` with `success: true` and `result`.
pub fn answer_commands(client: AsyncClient, mut events: EventLoop, id: String, result: Value) {
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            let Event::Incoming(Packet::Publish(publish)) = event else {
                continue;
            };
            let Ok(command) = serde_json::from_slice::<Value>(&publish.payload) else {
                continue;
            };
            let response = json!({
                "commandId": command["commandId"],
                "success": true,
                "result": result,
            });
            let _ = client
                .publish(
                    format!("device/{id}/response"),
                    QoS::AtLeastOnce,
                    false,
                    response.to_string(),
                )
                .await;
        }
    });
}

/// A long-running CLI (`fleetmq events`) whose stdout and stderr lines are read as they come.
pub struct Tail {
    _child: tokio::process::Child,
    pub out: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub err: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Tail {
    pub fn spawn(mut cmd: tokio::process::Command) -> Tail {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fleetmq events");
        let lines = |pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().expect("stdout")));
        let err = lines(Box::new(child.stderr.take().expect("stderr")));
        Tail {
            _child: child,
            out,
            err,
        }
    }

    /// The next line of `which` that satisfies `wanted`; panics after [`WAIT`].
    pub async fn expect(
        which: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, which.recv()).await {
                Ok(Some(line)) if wanted(&line) => return line,
                Ok(Some(line)) => seen.push(line),
                Ok(None) => panic!("{what}: the CLI exited; it printed {seen:#?}"),
                Err(_) => panic!("{what}: not within {WAIT:?}; it printed {seen:#?}"),
            }
        }
    }
}

/// A device that answers every command, and reconnects after the broker restarts.
pub fn resilient_device(server: &Server, id: &str, password: &str) {
    let mut options = MqttOptions::new(id, "127.0.0.1", server.mqtt.port());
    options.set_credentials(id, password);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 16);
    let id = id.to_owned();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe(format!("device/{id}/command"), QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let Ok(command) = serde_json::from_slice::<Value>(&publish.payload) else {
                        continue;
                    };
                    let response = json!({"commandId": command["commandId"], "success": true});
                    let _ = client
                        .publish(
                            format!("device/{id}/response"),
                            QoS::AtLeastOnce,
                            false,
                            response.to_string(),
                        )
                        .await;
                }
                Ok(_) => {}
                // The broker is restarting: rumqttc reconnects on the next poll.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}
