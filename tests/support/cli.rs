//! The CLI tests' part of the harness: runs of the admin commands pointed at a
//! [`Server`], long-running ones ([`Tail`]), and rumqttc devices.

use std::process::Stdio;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

use super::{fleetmq, Server, WAIT};

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

impl Server {
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
    ///
    /// The broker may send a queued command before the SUBACK (MQTT 3.1.1 §3.8.4 allows
    /// it, and fleetmq does); such PUBLISHes are put back in front of the event loop's
    /// queue, so the next `poll` returns them. Dropping them would leave the command
    /// `delivered` (rumqttc acknowledged it) and unanswered until its answer timeout.
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
        let mut early = Vec::new();
        loop {
            let event = tokio::time::timeout_at(deadline, events.poll())
                .await
                .expect("SUBACK in time")
                .expect("device connection");
            match event {
                Event::Incoming(Packet::SubAck(_)) => break,
                Event::Incoming(Packet::Publish(_)) => early.push(event),
                _ => {}
            }
        }
        for event in early.into_iter().rev() {
            events.state.events.push_front(event);
        }
        (client, events)
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
