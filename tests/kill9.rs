//! SPEC §5 "a command is written durably before the API answers; after a crash and
//! restart every non-terminal command is still there and continues", against the real
//! binary: commands are created over the admin API, a real MQTT device gets some and
//! answers some, the process is killed with SIGKILL mid-way, and after a restart on the
//! same data directory every command the API acknowledged reaches a terminal state.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_fleetmq");
const API_KEY: &str = "kill9-test-admin-key-0123456789";
/// How long `serve` may take to answer on the admin port.
const STARTUP: Duration = Duration::from_secs(30);
/// How long anything else may take.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);
const DEVICE: &str = "k9-display-1";

/// `n` distinct free loopback ports: bound together on port 0, then released.
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// A running `fleetmq serve`; killed if the test panics.
struct Server {
    child: Child,
    mqtt: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Server {
    async fn start(data_dir: &Path, log: PathBuf) -> Server {
        let ports = free_ports(2);
        let mut cmd = Command::new(BIN);
        for (name, _) in std::env::vars_os() {
            let leaks = name
                .to_str()
                .is_some_and(|n| n.starts_with("FLEETMQ_") || n == "MQTT_USE_ADVANCED_SECURITY");
            if leaks {
                cmd.env_remove(name);
            }
        }
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--mqtt-tcp")
            .arg(ports[0].to_string())
            .arg("--mqtt-ws")
            .arg("")
            .arg("--admin-listen")
            .arg(ports[1].to_string())
            .env("FLEETMQ_ADMIN_API_KEY", API_KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("spawn fleetmq serve");
        let mut server = Server {
            child,
            mqtt: ports[0],
            admin: ports[1],
            log,
        };
        server.wait_healthy().await;
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("fleetmq serve exited early ({status}):\n{}", self.log());
            }
            if let Ok((200, _)) = http(self.admin, "GET", "/health", None).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "admin API not up within {STARTUP:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = http(self.admin, method, path, body.map(|b| b.to_string()))
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

    /// SIGKILL: no shutdown, no flush.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
        }
        #[cfg(not(unix))]
        let _ = status;
    }

    /// SIGTERM, then the exit code.
    async fn terminate(&mut self) -> Option<i32> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection with the API key; (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body = body.unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             x-api-key: {API_KEY}\r\ncontent-type: application/json\r\n\
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

/// A firmware-like device: subscribed at QoS 1 to its command topic; every received
/// command (commandId, type) goes to `commands`.
struct Device {
    client: AsyncClient,
    commands: mpsc::Receiver<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    async fn connect(mqtt: SocketAddr, password: &str) -> Device {
        let mut opts = MqttOptions::new(DEVICE, "127.0.0.1", mqtt.port());
        opts.set_credentials(DEVICE, password);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 100);
        wait_connack(&mut el).await;
        let topic = format!("device/{DEVICE}/command");
        client
            .subscribe(topic.clone(), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, commands) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            while let Ok(event) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = event {
                    if p.topic != topic {
                        continue;
                    }
                    let cmd: Value = serde_json::from_slice(&p.payload).expect("command JSON");
                    let id = cmd["commandId"].as_str().expect("commandId").to_owned();
                    let kind = cmd["type"].as_str().expect("type").to_owned();
                    if tx.send((id, kind)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Device {
            client,
            commands,
            task,
        }
    }

    async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(WAIT, self.commands.recv())
            .await
            .expect("a command in time")
            .expect("device connected")
    }

    async fn answer(&self, command_id: &str) {
        let body =
            json!({"commandId": command_id, "success": true, "result": {"done": command_id}});
        self.client
            .publish(
                format!("device/{DEVICE}/response"),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .expect("queue response");
    }
}

async fn wait_connack(el: &mut EventLoop) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("device cannot connect: {e}"),
            Err(_) => panic!("no CONNACK in time"),
        }
    }
}

fn terminal(status: &str) -> bool {
    matches!(
        status,
        "completed" | "failed" | "expired" | "cancelled" | "superseded"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_acknowledged_by_the_api_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, dir.path().join("first.log")).await;

    let (status, provisioned) = server
        .api("POST", "/api/v1/devices", Some(json!({"id": DEVICE})))
        .await;
    assert_eq!(status, 201, "{provisioned}");
    let password = provisioned["credentials"]["password"]
        .as_str()
        .expect("device password")
        .to_owned();

    // What the API acknowledged: command id → type.
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let path = format!("/api/v1/devices/{DEVICE}/commands");
    for i in 0..6 {
        let body =
            json!({"type": format!("OFFLINE_{i}"), "params": {"i": i}, "metadata": {"n": i}});
        let (status, record) = server.api("POST", &path, Some(body)).await;
        assert_eq!(status, 202, "{record}");
        assert_eq!(record["status"], "queued", "device offline: {record}");
        acknowledged.insert(
            record["command_id"].as_str().unwrap().to_owned(),
            format!("OFFLINE_{i}"),
        );
    }

    // The device gets the queued ones, oldest first, and answers every other one.
    let mut device = Device::connect(server.mqtt, &password).await;
    let mut received = Vec::new();
    for i in 0..6 {
        let (id, kind) = device.next().await;
        assert_eq!(kind, format!("OFFLINE_{i}"), "oldest first");
        received.push(id);
    }
    device.answer(&received[0]).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, record) = server
            .api("GET", &format!("/api/v1/commands/{}", received[0]), None)
            .await;
        if record["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first answer not applied: {record}"
        );
        tokio::time::sleep(POLL).await;
    }
    // More commands while the device is online: sent at once.
    for i in 0..3 {
        let body = json!({"type": format!("ONLINE_{i}")});
        let (status, record) = server.api("POST", &path, Some(body)).await;
        assert_eq!(status, 202, "{record}");
        acknowledged.insert(
            record["command_id"].as_str().unwrap().to_owned(),
            format!("ONLINE_{i}"),
        );
    }
    for _ in 0..3 {
        device.next().await;
    }
    // Answers in flight, then the crash.
    device.answer(&received[2]).await;
    device.answer(&received[4]).await;
    server.kill9();
    let _ = tokio::time::timeout(WAIT, device.task).await;
    let first_log = server.log();

    let mut server = Server::start(&data, dir.path().join("second.log")).await;
    // Every acknowledged command is still there.
    for id in acknowledged.keys() {
        let (status, record) = server
            .api("GET", &format!("/api/v1/commands/{id}"), None)
            .await;
        assert_eq!(
            status, 200,
            "lost after kill -9: {id} {record}\n{first_log}"
        );
        assert_eq!(record["type"], acknowledged[id].as_str());
    }

    // The device comes back and answers everything it gets (again, if need be).
    let mut device = Device::connect(server.mqtt, &password).await;
    let deadline = Instant::now() + WAIT;
    let mut open: Vec<String> = acknowledged.keys().cloned().collect();
    while !open.is_empty() {
        while let Ok((id, _)) = device.commands.try_recv() {
            device.answer(&id).await;
        }
        let mut still = Vec::new();
        for id in open {
            let (status, record) = server
                .api("GET", &format!("/api/v1/commands/{id}"), None)
                .await;
            assert_eq!(status, 200, "{record}");
            if !terminal(record["status"].as_str().unwrap_or("")) {
                still.push(id);
            }
        }
        open = still;
        assert!(
            Instant::now() < deadline,
            "not terminal after the restart: {open:?}\n{}",
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }

    // Every device-answered command completed; none was lost or duplicated.
    for (id, kind) in &acknowledged {
        let (_, record) = server
            .api("GET", &format!("/api/v1/commands/{id}"), None)
            .await;
        assert_eq!(record["status"], "completed", "{kind}: {record}");
        assert_eq!(record["result"], json!({"done": id}));
    }
    let (status, page) = server.api("GET", &format!("{path}?limit=100"), None).await;
    assert_eq!(status, 200, "{page}");
    let listed: HashSet<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["command_id"].as_str().unwrap())
        .collect();
    let want: HashSet<&str> = acknowledged.keys().map(String::as_str).collect();
    assert_eq!(listed, want, "exactly the acknowledged commands");
    // The metadata of queued ones came through the crash as given.
    let (_, first) = server
        .api("GET", &format!("/api/v1/commands/{}", received[1]), None)
        .await;
    assert_eq!(first["metadata"], json!({"n": 1}));

    device.client.disconnect().await.ok();
    let _ = tokio::time::timeout(WAIT, device.task).await;
    assert_eq!(server.terminate().await, Some(0), "{}", server.log());
}

/// Answers every command the device receives, until its connection ends.
fn answer_everything(mut device: Device) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((id, _)) = device.commands.recv().await {
            device.answer(&id).await;
        }
    })
}

/// Creates commands in a loop; every `202` goes to `acked`. Ends at the first failure.
fn creator(
    admin: SocketAddr,
    n: usize,
    acked: mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = format!("/api/v1/devices/{DEVICE}/commands");
        for i in 0.. {
            let body = json!({"type": format!("C{n}_{i}"), "supersede": false}).to_string();
            match http(admin, "POST", &path, Some(body)).await {
                Ok((202, text)) => {
                    let record: Value = serde_json::from_str(&text).expect("record");
                    let id = record["command_id"].as_str().expect("id").to_owned();
                    if acked.send(id).await.is_err() {
                        return;
                    }
                }
                Ok((status, text)) => panic!("create answered {status}: {text}"),
                Err(_) => return, // the server is gone
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_created_while_the_process_is_killed_are_not_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut server = Server::start(&data, dir.path().join("first.log")).await;
    let (status, provisioned) = server
        .api("POST", "/api/v1/devices", Some(json!({"id": DEVICE})))
        .await;
    assert_eq!(status, 201, "{provisioned}");
    let password = provisioned["credentials"]["password"]
        .as_str()
        .expect("device password")
        .to_owned();
    let device = Device::connect(server.mqtt, &password).await;
    let answering = answer_everything(device);

    // Four clients create commands as fast as the API answers; the device answers each.
    let (tx, mut rx) = mpsc::channel(100_000);
    let creators: Vec<_> = (0..4)
        .map(|n| creator(server.admin, n, tx.clone()))
        .collect();
    drop(tx);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 60 {
        let id = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("creates in time")
            .expect("creators running");
        acknowledged.push(id);
    }
    server.kill9();
    for c in creators {
        tokio::time::timeout(WAIT, c)
            .await
            .expect("creators stop once the server is gone")
            .expect("creator");
    }
    while let Some(id) = rx.recv().await {
        acknowledged.push(id);
    }
    let _ = tokio::time::timeout(WAIT, answering).await;

    let server = Server::start(&data, dir.path().join("second.log")).await;
    let device = Device::connect(server.mqtt, &password).await;
    let _answering = answer_everything(device);
    let deadline = Instant::now() + WAIT;
    let mut open = acknowledged.clone();
    while !open.is_empty() {
        let mut still = Vec::new();
        for id in open {
            let (status, record) = server
                .api("GET", &format!("/api/v1/commands/{id}"), None)
                .await;
            assert_eq!(status, 200, "acknowledged, then lost: {id}: {record}");
            if record["status"] != "completed" {
                assert!(
                    !terminal(record["status"].as_str().unwrap_or("")),
                    "{record}"
                );
                still.push(id);
            }
        }
        open = still;
        assert!(
            Instant::now() < deadline,
            "{} of {} not completed after the restart: {open:?}\n{}",
            open.len(),
            acknowledged.len(),
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }
}
