//! One simulated device: its status, telemetry, answers to commands and applied configs.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admin::Identity;
use crate::contract::{to_json, Command, ConfigUpdate, Response, ResultBody, Status, Telemetry};
use crate::mqtt::{mqtt_client, pump, Client, Incoming};
use crate::rng::Rng;
use crate::sealer::Sealer;
use crate::{unix_ms, Settings, Stats, FLUSH_GRACE};

/// Events the network task may queue for its device before it waits.
const INCOMING_CAPACITY: usize = 64;
/// Answers remembered per device for re-sent commands.
const ANSWER_LOG_LEN: usize = 1024;
/// The address every simulated device reports.
const DEVICE_IP: &str = "127.0.0.1";

/// The answers already given, by `commandId`, so a re-sent command gets the same one.
#[derive(Default)]
struct AnswerLog {
    answers: HashMap<String, (bool, Vec<u8>)>,
    order: VecDeque<String>,
}

impl AnswerLog {
    fn get(&self, command_id: &str) -> Option<(bool, Vec<u8>)> {
        self.answers.get(command_id).cloned()
    }

    fn insert(&mut self, command_id: &str, answer: (bool, Vec<u8>)) {
        if self.order.len() == ANSWER_LOG_LEN {
            if let Some(oldest) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
        self.order.push_back(command_id.to_owned());
        self.answers.insert(command_id.to_owned(), answer);
    }
}

/// An answer waiting for its reply latency.
struct PendingReply {
    due: Instant,
    success: bool,
    payload: Vec<u8>,
}

/// A device's topics (SPEC §3).
struct Topics {
    status: String,
    telemetry: String,
    response: String,
    command: String,
    config: String,
}

impl Topics {
    fn new(id: &str) -> Topics {
        let topic = |leaf: &str| format!("device/{id}/{leaf}");
        Topics {
            status: topic("status"),
            telemetry: topic("telemetry"),
            response: topic("response"),
            command: topic("command"),
            config: topic("config"),
        }
    }

    fn outgoing(&self, out: Out) -> &str {
        match out {
            Out::Status => &self.status,
            Out::Telemetry => &self.telemetry,
            Out::Response => &self.response,
        }
    }
}

/// The topics a device publishes on.
#[derive(Debug, Clone, Copy)]
enum Out {
    Status,
    Telemetry,
    Response,
}

/// The logic of one device; its network task (`mqtt::pump`) feeds it [`Incoming`]s.
struct Device {
    id: String,
    topics: Topics,
    client: Client,
    sealer: Option<Sealer>,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    rng: Rng,
    started: Instant,
    connected: bool,
    failures: u32,
    config_version: u64,
    answers: AnswerLog,
    replies: VecDeque<PendingReply>,
}

/// Sleeps until `due`, or forever when nothing is due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Device {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Incoming>,
        pump: JoinHandle<()>,
        cancel: CancellationToken,
    ) {
        let period = self.settings.telemetry_every;
        // Spread the fleet's telemetry over one period instead of sending it in bursts.
        let first = Instant::now() + self.rng.duration(period);
        let mut telemetry = tokio::time::interval_at(first, period);
        telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let next_reply = self.replies.front().map(|r| r.due);
            tokio::select! {
                () = cancel.cancelled() => break,
                incoming = rx.recv() => match incoming {
                    Some(incoming) => self.on_incoming(incoming),
                    None => break,
                },
                _ = telemetry.tick() => self.send_telemetry(),
                () = sleep_until(next_reply) => self.send_due_replies(),
            }
        }
        self.shutdown(rx, pump).await;
    }

    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Connected => {
                if !self.connected {
                    self.stats.connected.fetch_add(1, Ordering::Relaxed);
                }
                self.connected = true;
                self.failures = 0;
                debug!(device_id = %self.id, "connected");
                for filter in [&self.topics.command, &self.topics.config] {
                    if let Err(e) = self.client.subscribe(filter) {
                        warn!(device_id = %self.id, error = %e, "could not subscribe");
                    }
                }
                self.publish_status("online");
            }
            Incoming::Lost(error) => self.on_lost(&error),
            Incoming::SubscribeRefused(n) => {
                Stats::bump(&self.stats.errors);
                warn!(device_id = %self.id, refused = n, "broker refused a subscription");
            }
            Incoming::Message { topic, payload } => self.on_message(&topic, &payload),
        }
    }

    /// Logs the first failure of a streak at warn, the retries at debug.
    fn on_lost(&mut self, error: &str) {
        if self.connected {
            self.connected = false;
            self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
        if self.failures == 0 {
            warn!(device_id = %self.id, %error, "connection down; reconnecting with backoff");
        } else {
            debug!(device_id = %self.id, %error, attempt = self.failures, "reconnect failed");
        }
        self.failures = self.failures.saturating_add(1);
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if payload.is_empty() {
            debug!(device_id = %self.id, topic, "empty message (retained message cleared)");
            return;
        }
        let Some(plain) = self.plaintext(topic, payload) else {
            return;
        };
        let applied = if topic == self.topics.command {
            serde_json::from_slice(&plain).map(|c| self.on_command(&c))
        } else if topic == self.topics.config {
            serde_json::from_slice(&plain).map(|c| self.on_config(&c))
        } else {
            debug!(device_id = %self.id, topic, "message on an unexpected topic");
            Ok(())
        };
        if let Err(e) = applied {
            Stats::bump(&self.stats.errors);
            warn!(device_id = %self.id, topic, error = %e, "malformed message ignored");
        }
    }

    /// The payload as is, or opened when the device is encrypted; an envelope that does
    /// not open (another key generation, failed authentication, ...) is counted and
    /// logged, and gives `None`.
    fn plaintext<'a>(&self, topic: &str, payload: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let Some(sealer) = &self.sealer else {
            return Some(Cow::Borrowed(payload));
        };
        match sealer.open(topic, payload) {
            Ok(plain) => Some(Cow::Owned(plain)),
            Err(e) => {
                Stats::bump(&self.stats.errors);
                let ours = sealer.generation();
                warn!(device_id = %self.id, topic, error = %e, key_generation = ours, "could not decrypt a message");
                None
            }
        }
    }

    /// A re-sent command gets its first answer again and is not applied twice.
    fn on_command(&mut self, command: &Command) {
        let (success, payload) = match self.answers.get(&command.command_id) {
            Some(answer) => {
                Stats::bump(&self.stats.duplicates);
                debug!(device_id = %self.id, command_id = %command.command_id, "re-sent command");
                answer
            }
            None => {
                let answer = self.apply(command);
                self.answers.insert(&command.command_id, answer.clone());
                answer
            }
        };
        self.replies.push_back(PendingReply {
            due: Instant::now() + self.settings.reply_latency,
            success,
            payload,
        });
    }

    /// "Runs" a command: fails with probability `--failure-rate`.
    fn apply(&mut self, command: &Command) -> (bool, Vec<u8>) {
        let success = !self.rng.chance(self.settings.failure_rate);
        let response = Response {
            command_id: &command.command_id,
            success,
            result: success.then_some(ResultBody {
                kind: &command.kind,
            }),
            error: (!success).then_some("simulated failure"),
        };
        debug!(device_id = %self.id, command_id = %command.command_id, kind = %command.kind, success, "command");
        (success, to_json(&response))
    }

    fn on_config(&mut self, update: &ConfigUpdate) {
        if update.version == self.config_version {
            return;
        }
        self.config_version = update.version;
        Stats::bump(&self.stats.configs);
        info!(device_id = %self.id, version = update.version, "config applied");
        debug!(device_id = %self.id, config = %update.config, "applied config");
        self.publish_status("online");
    }

    fn send_due_replies(&mut self) {
        let now = Instant::now();
        while self.replies.front().is_some_and(|r| r.due <= now) {
            let Some(reply) = self.replies.pop_front() else {
                break;
            };
            if self.publish(Out::Response, 1, false, &reply.payload) {
                Stats::bump(&self.stats.answered);
                if !reply.success {
                    Stats::bump(&self.stats.failed);
                }
            }
        }
    }

    fn send_telemetry(&mut self) {
        if !self.connected {
            return;
        }
        let telemetry = Telemetry {
            cpu: (50.0 + 45.0 * (self.rng.unit() - 0.5) * 2.0).round(),
            memory: 256 + self.rng.next_u64() % 256,
            uptime: self.started.elapsed().as_secs(),
            ts: unix_ms(),
        };
        let qos = self.settings.telemetry_qos;
        if self.publish(Out::Telemetry, qos, false, &to_json(&telemetry)) {
            Stats::bump(&self.stats.telemetry);
        }
    }

    fn publish_status(&mut self, state: &str) {
        let status = Status {
            state,
            version: &self.settings.version,
            ip: DEVICE_IP,
            config_version: Some(self.config_version),
        };
        self.publish(Out::Status, 1, true, &to_json(&status));
    }

    /// Seals when the device is encrypted; a publish that cannot be queued is counted.
    fn publish(&mut self, out: Out, qos: u8, retain: bool, plain: &[u8]) -> bool {
        let topic = self.topics.outgoing(out);
        let payload = match &mut self.sealer {
            None => plain.to_vec(),
            Some(sealer) => sealer.seal(topic, plain),
        };
        match self.client.publish(topic, qos, retain, payload) {
            Ok(()) => true,
            Err(e) => {
                Stats::bump(&self.stats.dropped);
                debug!(device_id = %self.id, topic, error = %e, "publish dropped");
                false
            }
        }
    }

    /// Says goodbye with a retained offline status (the will only covers a lost
    /// connection), then gives the network task a moment to send it.
    async fn shutdown(mut self, mut rx: mpsc::Receiver<Incoming>, pump: JoinHandle<()>) {
        if self.connected {
            self.publish_status("offline");
            if let Err(e) = self.client.disconnect() {
                debug!(device_id = %self.id, error = %e, "could not queue DISCONNECT");
            }
        }
        let drained =
            tokio::time::timeout(FLUSH_GRACE, async { while rx.recv().await.is_some() {} });
        if drained.await.is_err() {
            debug!(device_id = %self.id, "network task did not finish in time");
        }
        pump.abort();
        if self.connected {
            self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Starts one device: its network task and its logic task, both on `tracker`.
pub(crate) fn spawn_device(
    identity: Identity,
    settings: &Arc<Settings>,
    stats: &Arc<Stats>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let mut sealer = identity.key.map(Sealer::new);
    let topics = Topics::new(&identity.id);
    // No configVersion: the will is fixed at connect time and would report a stale one.
    let will = to_json(&Status {
        state: "offline",
        version: &settings.version,
        ip: DEVICE_IP,
        config_version: None,
    });
    let will = match &mut sealer {
        Some(sealer) => sealer.seal(&topics.status, &will),
        None => will,
    };
    let (client, events) = mqtt_client(settings, &identity, &topics.status, will);
    let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
    let pump = tracker.spawn(pump(events, tx, cancel.clone()));
    let device = Device {
        id: identity.id,
        topics,
        client,
        sealer,
        settings: settings.clone(),
        stats: stats.clone(),
        rng: Rng::seeded(),
        started: Instant::now(),
        connected: false,
        failures: 0,
        config_version: 0,
        answers: AnswerLog::default(),
        replies: VecDeque::new(),
    };
    tracker.spawn(device.run(rx, pump, cancel.clone()));
}
