//! Engine tests: a real redb in a temp dir, paused tokio time, and recording sinks in
//! place of the link layer and the webhook outbox.

use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use fleetmq_storage::{DeviceCredential, TokenHash};

use super::*;
use serde_json::Value;

// ---- doubles and harness --------------------------------------------------------

/// One PUBLISH the engine handed to the link layer.
#[derive(Debug, Clone, PartialEq)]
struct Delivery {
    device: String,
    generation: u64,
    command_id: String,
    payload: Value,
    /// The command's status in the store's last commit when it was handed over.
    committed: Option<CommandStatus>,
}

#[derive(Default)]
struct RecordingSink {
    sent: Mutex<Vec<Delivery>>,
    refuse: AtomicBool,
    /// The engine's database, read (committed state only) at every hand-over.
    db: std::sync::OnceLock<std::sync::Weak<Database>>,
}

impl CommandSink for RecordingSink {
    fn deliver(
        &self,
        id: &DeviceId,
        generation: u64,
        command_id: &str,
        payload: bytes::Bytes,
    ) -> bool {
        if self.refuse.load(Ordering::SeqCst) {
            return false;
        }
        let committed = self
            .db
            .get()
            .and_then(std::sync::Weak::upgrade)
            .and_then(|db| {
                let rec = fleetmq_storage::commands::get(&db, command_id).unwrap();
                rec.map(|r| r.status())
            });
        self.sent.lock().unwrap().push(Delivery {
            device: id.to_string(),
            generation,
            command_id: command_id.to_owned(),
            payload: serde_json::from_slice(&payload).unwrap(),
            committed,
        });
        true
    }
}

#[derive(Debug, Clone)]
struct Event {
    kind: &'static str,
    device: Option<DeviceId>,
    data: Value,
}

#[derive(Default)]
struct RecordingEvents(Mutex<Vec<Event>>);

impl EventSink for RecordingEvents {
    fn emit(
        &self,
        kind: &'static str,
        device: Option<&DeviceId>,
        data: Box<serde_json::value::RawValue>,
    ) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let device = device.cloned();
        let data: Value = serde_json::from_str(data.get()).unwrap();
        Box::pin(async move { self.0.lock().unwrap().push(Event { kind, device, data }) })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    db: Arc<Database>,
    engine: CommandEngine,
    sink: Arc<RecordingSink>,
    events: Arc<RecordingEvents>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    config: CommandsConfig,
}

fn config() -> CommandsConfig {
    CommandsConfig {
        timeout: Duration::from_secs(10),
        max_retries: 2,
        ttl: Duration::from_secs(3_600),
        max_queued_per_device: 1_000,
        history: None,
        prune_every: Duration::from_secs(3_600),
    }
}

impl Harness {
    fn new(config: CommandsConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::open(dir, config)
    }

    fn open(dir: tempfile::TempDir, config: CommandsConfig) -> Harness {
        let db = Arc::new(Database::create(dir.path().join("fleetmq.redb")).unwrap());
        let sink = Arc::new(RecordingSink::default());
        let _ = sink.db.set(Arc::downgrade(&db));
        let events = Arc::new(RecordingEvents::default());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let engine = CommandEngine::start(
            db.clone(),
            config.clone(),
            sink.clone(),
            events.clone(),
            PluginRegistry::builtin(),
            shutdown.clone(),
            &tracker,
        );
        Harness {
            dir,
            db,
            engine,
            sink,
            events,
            shutdown,
            tracker,
            config,
        }
    }

    /// Stops the engine, closes the database and starts a fresh engine on the same file,
    /// as a process restart would.
    async fn restart(self) -> Harness {
        let Harness {
            dir,
            db,
            engine,
            shutdown,
            tracker,
            config,
            ..
        } = self;
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        drop(engine);
        assert_eq!(
            Arc::strong_count(&db),
            1,
            "the engine still holds the database"
        );
        drop(db);
        Harness::open(dir, config)
    }

    async fn create(&self, dev: &str, body: &str) -> Result<Created, CommandError> {
        self.create_keyed(dev, body, None).await
    }

    async fn create_keyed(
        &self,
        dev: &str,
        body: &str,
        key: Option<&str>,
    ) -> Result<Created, CommandError> {
        let req: NewCommand = serde_json::from_str(body).unwrap();
        self.engine
            .create(&device(dev), req, key.map(str::to_owned))
            .await
    }

    async fn id(&self, dev: &str, body: &str) -> String {
        self.create(dev, body).await.unwrap().record.command_id
    }

    async fn get(&self, id: &str) -> CommandView {
        self.engine.get(id).await.unwrap()
    }

    async fn status(&self, id: &str) -> CommandStatus {
        self.get(id).await.status
    }

    async fn ready(&self, dev: &str, generation: u64) {
        self.engine.device_ready(&device(dev), generation).await;
        self.engine.flush().await;
    }

    async fn respond(&self, dev: &str, payload: &str) {
        self.engine.response(&device(dev), payload.as_bytes()).await;
        self.engine.flush().await;
    }

    fn sent_ids(&self) -> Vec<String> {
        let sent = self.sink.sent.lock().unwrap();
        sent.iter().map(|d| d.command_id.clone()).collect()
    }

    fn events(&self) -> Vec<Event> {
        self.events.0.lock().unwrap().clone()
    }

    fn event_kinds(&self) -> Vec<&'static str> {
        self.events().iter().map(|e| e.kind).collect()
    }
}

fn device(id: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.parse().unwrap(),
        plugin: "json".into(),
        labels: Default::default(),
        encrypted: false,
        credential: DeviceCredential::Keyed(TokenHash { tag: [0; 32] }),
        keys: Vec::new(),
        created_at_ms: 0,
    }
}

fn dev_id(id: &str) -> DeviceId {
    id.parse().unwrap()
}

/// Advances paused time, then lets the worker catch up.
async fn advance(h: &Harness, secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    h.engine.flush().await;
}

// ---- lifecycle ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn create_offline_is_queued_durably_with_the_spec_record() {
    let h = Harness::new(config());
    let created = h
        .create("d1", r#"{"type":"RELOAD","params":{"x":1}}"#)
        .await
        .unwrap();
    assert!(!created.replayed);
    let v = created.record;
    assert_eq!((v.status, v.attempts), (CommandStatus::Queued, 0));
    // Committed before `create` returned: readable straight from redb.
    let stored = store::get(&h.db, &v.command_id).unwrap().unwrap();
    assert_eq!(stored.status(), CommandStatus::Queued);

    let json = serde_json::to_value(&v).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "command_id",
        "device_id",
        "type",
        "params",
        "metadata",
        "status",
        "attempts",
        "created_at",
        "sent_at",
        "delivered_at",
        "completed_at",
        "result",
        "error",
        "late_response",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(json["type"], "RELOAD");
    assert_eq!(json["params"], serde_json::json!({"x":1}));
    assert_eq!(json["status"], "queued");
    assert_eq!(json["sent_at"], Value::Null);
    assert!(json["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(h.sink.sent.lock().unwrap().is_empty());
    assert_eq!(h.engine.stats().by_status["queued"], 1);
    assert_eq!(h.engine.stats().by_status.len(), 8);
}

#[tokio::test(start_paused = true)]
async fn ready_sends_queued_oldest_first_then_ack_and_answers_finish_them() {
    let h = Harness::new(config());
    let a = h.id("d1", r#"{"type":"A","params":{"n":1}}"#).await;
    let b = h.id("d1", r#"{"type":"B"}"#).await;
    let c = h.id("d1", r#"{"type":"C","metadata":{"job":7}}"#).await;
    h.id("d2", r#"{"type":"A"}"#).await;
    h.ready("d1", 5).await;
    assert_eq!(h.sent_ids(), [a.clone(), b.clone(), c.clone()]);
    let first = h.sink.sent.lock().unwrap()[0].clone();
    assert_eq!((first.device.as_str(), first.generation), ("d1", 5));
    assert_eq!(
        first.payload,
        serde_json::json!({"type":"A","commandId":a,"params":{"n":1}})
    );
    let va = h.get(&a).await;
    assert_eq!((va.status, va.attempts), (CommandStatus::Sent, 1));
    assert!(va.sent_at.is_some() && va.delivered_at.is_none());

    h.engine.acked(&dev_id("d1"), 5, &a).await;
    h.engine.flush().await;
    let va = h.get(&a).await;
    assert_eq!(va.status, CommandStatus::Delivered);
    assert!(va.delivered_at.is_some());

    h.respond(
        "d1",
        &format!(r#"{{"commandId":"{a}","success":true,"result":{{"ok":1}}}}"#),
    )
    .await;
    let va = h.get(&a).await;
    assert_eq!(va.status, CommandStatus::Completed);
    assert_eq!(va.result.unwrap().get(), r#"{"ok":1}"#);
    assert!(va.completed_at.is_some());

    h.respond(
        "d1",
        &format!(r#"{{"commandId":"{c}","success":false,"error":"boom"}}"#),
    )
    .await;
    let vc = h.get(&c).await;
    assert_eq!(
        (vc.status, vc.error.as_deref()),
        (CommandStatus::Failed, Some("boom"))
    );

    let events = h.events();
    assert_eq!(h.event_kinds(), ["command.completed", "command.failed"]);
    assert_eq!(events[0].device, Some(dev_id("d1")));
    assert_eq!(events[0].data["command_id"], a.as_str());
    assert_eq!(events[1].data["metadata"], serde_json::json!({"job":7}));
    assert_eq!(h.status(&b).await, CommandStatus::Sent);
    let stats = h.engine.stats();
    assert_eq!(
        (
            stats.by_status["queued"],
            stats.by_status["sent"],
            stats.by_status["completed"],
            stats.by_status["failed"]
        ),
        (1, 1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn create_for_a_ready_device_sends_at_once() {
    let h = Harness::new(config());
    h.ready("d1", 1).await;
    let v = h.create("d1", r#"{"type":"A"}"#).await.unwrap().record;
    assert_eq!((v.status, v.attempts), (CommandStatus::Sent, 1));
    assert_eq!(h.sent_ids(), [v.command_id]);
}

#[tokio::test(start_paused = true)]
async fn unanswered_commands_are_resent_then_fail_with_timeout() {
    let h = Harness::new(config()); // timeout 10 s, 2 re-sends
    h.ready("d1", 1).await;
    let a = h.id("d1", r#"{"type":"A"}"#).await;
    h.engine.acked(&dev_id("d1"), 1, &a).await;
    advance(&h, 9).await;
    assert_eq!(h.sent_ids().len(), 1);
    advance(&h, 1).await;
    assert_eq!(h.sent_ids().len(), 2);
    let v = h.get(&a).await;
    // A re-send of a delivered command keeps it delivered.
    assert_eq!((v.status, v.attempts), (CommandStatus::Delivered, 2));
    advance(&h, 10).await;
    assert_eq!(h.get(&a).await.attempts, 3);
    advance(&h, 10).await;
    let v = h.get(&a).await;
    assert_eq!(
        (v.status, v.attempts, v.error.as_deref()),
        (CommandStatus::Failed, 3, Some("timeout"))
    );
    assert_eq!(h.sent_ids().len(), 3);
    assert_eq!(h.event_kinds(), ["command.failed"]);
    // Per-command settings override the config.
    let b = h
        .id("d1", r#"{"type":"B","timeout_s":2,"max_retries":0}"#)
        .await;
    advance(&h, 2).await;
    assert_eq!(h.status(&b).await, CommandStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn queued_commands_expire_at_their_ttl() {
    let h = Harness::new(config());
    let a = h
        .id("d1", r#"{"type":"A","ttl_s":60,"metadata":{"m":1}}"#)
        .await;
    let b = h.id("d1", r#"{"type":"B"}"#).await; // config ttl: 1 h
    advance(&h, 59).await;
    assert_eq!(h.status(&a).await, CommandStatus::Queued);
    advance(&h, 1).await;
    let v = h.get(&a).await;
    assert_eq!(v.status, CommandStatus::Expired);
    assert!(v.completed_at.is_some());
    assert_eq!(h.status(&b).await, CommandStatus::Queued);
    let events = h.events();
    assert_eq!(h.event_kinds(), ["command.expired"]);
    assert_eq!(events[0].data["metadata"], serde_json::json!({"m":1}));
    // ttl_s 0: only if the device is ready now.
    let c = h.id("d1", r#"{"type":"C","ttl_s":0}"#).await;
    h.engine.flush().await;
    assert_eq!(h.status(&c).await, CommandStatus::Expired);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_while_offline_waits_for_the_next_connection_until_the_ttl() {
    let h = Harness::new(config());
    h.ready("d1", 1).await;
    let a = h.id("d1", r#"{"type":"A","ttl_s":100}"#).await;
    h.engine.device_gone(&dev_id("d1"), 1).await;
    advance(&h, 30).await;
    let v = h.get(&a).await;
    assert_eq!(
        (v.status, v.attempts),
        (CommandStatus::Sent, 1),
        "no retry used offline"
    );
    h.ready("d1", 2).await;
    let last = h.sink.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!((last.command_id.as_str(), last.generation), (a.as_str(), 2));
    assert_eq!(h.get(&a).await.attempts, 2);

    // Offline past the TTL: it was sent, so it fails rather than expires.
    h.engine.device_gone(&dev_id("d1"), 2).await;
    advance(&h, 100).await;
    let v = h.get(&a).await;
    assert_eq!(
        (v.status, v.error.as_deref()),
        (CommandStatus::Failed, Some("timeout"))
    );
}

#[tokio::test(start_paused = true)]
async fn reconnects_resend_unanswered_commands_but_repeats_do_not() {
    let h = Harness::new(config());
    h.ready("d1", 1).await;
    let a = h.id("d1", r#"{"type":"A"}"#).await;
    h.ready("d1", 1).await; // e.g. a second SUBSCRIBE on the same connection
    assert_eq!(h.sent_ids(), [a.as_str()]);
    h.engine.device_gone(&dev_id("d1"), 0).await; // stale: not the current connection
    h.ready("d1", 0).await; // stale: older than the current connection
    assert_eq!(h.sent_ids().len(), 1);
    h.ready("d1", 2).await; // takeover by a new connection
    assert_eq!(h.sent_ids(), [a.as_str(), a.as_str()]);
    // A PUBACK from another device does not count.
    h.engine.acked(&dev_id("d2"), 2, &a).await;
    h.engine.flush().await;
    assert_eq!(h.status(&a).await, CommandStatus::Sent);
}

/// SPEC §5: a device must never act on a command a crash could make the API forget, so
/// nothing reaches a connection before the transaction that records it is durable.
/// (Failed before the fix: the create's send saw no record, the queued one's `queued`.)
#[tokio::test(start_paused = true)]
async fn commands_reach_the_device_only_after_their_send_is_committed() {
    let h = Harness::new(config()); // timeout 10 s, 2 re-sends
    let queued = h.id("d1", r#"{"type":"A"}"#).await;
    h.ready("d1", 1).await;
    let created = h.id("d1", r#"{"type":"B"}"#).await;
    advance(&h, 11).await; // both re-sent
    h.ready("d1", 2).await; // both re-sent to a new connection
    let sent = h.sink.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 6, "{sent:?}");
    for id in [&queued, &created] {
        assert_eq!(sent.iter().filter(|d| d.command_id == *id).count(), 3);
    }
    for d in &sent {
        assert_eq!(d.committed, Some(CommandStatus::Sent), "{d:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_is_gone_is_not_ready_and_gets_its_commands_again() {
    let h = Harness::new(config());
    h.sink.refuse.store(true, Ordering::SeqCst);
    h.ready("d1", 1).await;
    let a = h.id("d1", r#"{"type":"A"}"#).await;
    // Handed over after its commit, as the connection vanished: recorded as sent (like a
    // PUBLISH the network lost), never given to the device.
    let v = h.get(&a).await;
    assert_eq!((v.status, v.attempts), (CommandStatus::Sent, 1));
    assert!(h.sent_ids().is_empty());
    h.sink.refuse.store(false, Ordering::SeqCst);
    let b = h.id("d1", r#"{"type":"B"}"#).await;
    assert_eq!(
        h.status(&b).await,
        CommandStatus::Queued,
        "device no longer ready"
    );
    h.ready("d1", 2).await;
    assert_eq!(h.sent_ids(), [a, b]);
}

#[tokio::test(start_paused = true)]
async fn newer_commands_of_the_same_type_supersede_older_ones() {
    let h = Harness::new(config());
    let a1 = h.id("d1", r#"{"type":"A","metadata":{"n":1}}"#).await;
    let b = h.id("d1", r#"{"type":"B"}"#).await;
    let other = h.id("d2", r#"{"type":"A"}"#).await;
    let a2 = h.id("d1", r#"{"type":"A"}"#).await;
    h.engine.flush().await;
    assert_eq!(h.status(&a1).await, CommandStatus::Superseded);
    assert_eq!(h.status(&b).await, CommandStatus::Queued);
    assert_eq!(h.status(&other).await, CommandStatus::Queued);
    assert_eq!(h.status(&a2).await, CommandStatus::Queued);
    let events = h.events();
    assert_eq!(h.event_kinds(), ["command.superseded"]);
    assert_eq!(events[0].data["metadata"], serde_json::json!({"n":1}));
    let a3 = h.id("d1", r#"{"type":"A","supersede":false}"#).await;
    h.engine.flush().await;
    assert_eq!(h.status(&a2).await, CommandStatus::Queued);
    assert_eq!(h.status(&a3).await, CommandStatus::Queued);
    // Sent commands are superseded too.
    h.ready("d1", 1).await;
    h.id("d1", r#"{"type":"B"}"#).await;
    assert_eq!(h.status(&b).await, CommandStatus::Superseded);
}

#[tokio::test(start_paused = true)]
async fn cancel_before_terminal_only() {
    let h = Harness::new(config());
    let a = h.id("d1", r#"{"type":"A"}"#).await;
    let v = h.engine.cancel(&a).await.unwrap();
    assert_eq!(v.status, CommandStatus::Cancelled);
    match h.engine.cancel(&a).await {
        Err(CommandError::AlreadyTerminal(v)) => assert_eq!(v.status, CommandStatus::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.engine.cancel("nope").await,
        Err(CommandError::NotFound)
    ));
    assert!(matches!(
        h.engine.get("nope").await,
        Err(CommandError::NotFound)
    ));
    h.engine.flush().await;
    assert_eq!(h.event_kinds(), ["command.cancelled"]);
    // A sent command can be cancelled; its late answer is kept, not applied.
    h.ready("d1", 1).await;
    let b = h.id("d1", r#"{"type":"B"}"#).await;
    h.engine.cancel(&b).await.unwrap();
    h.respond("d1", &format!(r#"{{"commandId":"{b}","success":true}}"#))
        .await;
    let v = h.get(&b).await;
    assert_eq!(v.status, CommandStatus::Cancelled);
    assert!(v.late_response.is_some());
}

#[tokio::test(start_paused = true)]
async fn idempotency_key_replays_the_first_command() {
    let h = Harness::new(config());
    let first = h
        .create_keyed("d1", r#"{"type":"A"}"#, Some("k1"))
        .await
        .unwrap();
    let again = h
        .create_keyed("d1", r#"{"type":"B"}"#, Some("k1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.record.command_id, first.record.command_id);
    assert_eq!(again.record.kind, "A");
    let (items, _) = h.engine.list(&dev_id("d1"), None, 100, None).await.unwrap();
    assert_eq!(items.len(), 1);
    let other_device = h
        .create_keyed("d2", r#"{"type":"A"}"#, Some("k1"))
        .await
        .unwrap();
    let other_key = h
        .create_keyed("d1", r#"{"type":"C"}"#, Some("k2"))
        .await
        .unwrap();
    assert!(!other_device.replayed && !other_key.replayed);
    assert_ne!(other_key.record.command_id, first.record.command_id);
    // A replay returns the current record.
    h.engine.cancel(&first.record.command_id).await.unwrap();
    let again = h
        .create_keyed("d1", r#"{"type":"A"}"#, Some("k1"))
        .await
        .unwrap();
    assert_eq!(
        (again.replayed, again.record.status),
        (true, CommandStatus::Cancelled)
    );
}

#[tokio::test(start_paused = true)]
async fn wait_terminal_returns_on_terminal_or_after_max() {
    let h = Harness::new(config());
    h.ready("d1", 1).await;
    let a = h.id("d1", r#"{"type":"A"}"#).await;
    let engine = h.engine.clone();
    let id = a.clone();
    let waiter =
        tokio::spawn(async move { engine.wait_terminal(&id, Duration::from_secs(60)).await });
    tokio::task::yield_now().await;
    h.respond("d1", &format!(r#"{{"commandId":"{a}","success":true}}"#))
        .await;
    let v = waiter.await.unwrap().unwrap();
    assert_eq!(v.status, CommandStatus::Completed);
    // Already terminal: at once.
    assert_eq!(
        h.engine
            .wait_terminal(&a, Duration::ZERO)
            .await
            .unwrap()
            .status,
        CommandStatus::Completed
    );
    // Never terminal: the current record after `max`.
    let b = h.id("d1", r#"{"type":"B"}"#).await;
    let start = tokio::time::Instant::now();
    let v = h
        .engine
        .wait_terminal(&b, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(v.status, CommandStatus::Sent);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(matches!(
        h.engine.wait_terminal("nope", Duration::from_secs(1)).await,
        Err(CommandError::NotFound)
    ));
}

#[tokio::test(start_paused = true)]
async fn late_unknown_and_malformed_responses() {
    let h = Harness::new(config());
    h.ready("d1", 1).await;
    let a = h.id("d1", r#"{"type":"A"}"#).await;
    let b = h.id("d1", r#"{"type":"B"}"#).await;
    // Without an id, the oldest sent command is answered.
    h.respond("d1", r#"{"success":true,"result":1}"#).await;
    assert_eq!(h.status(&a).await, CommandStatus::Completed);
    assert_eq!(h.status(&b).await, CommandStatus::Sent);
    // After the terminal status: stored, status unchanged, counted.
    h.respond(
        "d1",
        &format!(r#"{{"commandId":"{a}","success":false,"error":"again"}}"#),
    )
    .await;
    let v = h.get(&a).await;
    assert_eq!(v.status, CommandStatus::Completed);
    let late: Value = serde_json::from_str(v.late_response.unwrap().get()).unwrap();
    assert_eq!(
        (late["success"].clone(), late["error"].clone()),
        (Value::Bool(false), "again".into())
    );
    // Unknown ids, and ids of another device's commands, are counted and dropped.
    h.respond("d1", r#"{"commandId":"nope","success":true}"#)
        .await;
    h.respond("d2", &format!(r#"{{"commandId":"{b}","success":true}}"#))
        .await;
    assert_eq!(h.status(&b).await, CommandStatus::Sent);
    h.respond("d1", "not json").await;
    h.respond("d1", r#"{"commandId":"x"}"#).await;
    let s = h.engine.stats();
    assert_eq!(
        (s.late_responses, s.unknown_responses, s.malformed_responses),
        (1, 2, 2)
    );
    assert_eq!(h.event_kinds(), ["command.completed"]);
}

#[tokio::test(start_paused = true)]
async fn a_device_may_not_have_more_than_the_cap_pending() {
    let h = Harness::new(CommandsConfig {
        max_queued_per_device: 3,
        ..config()
    });
    for t in ["A", "B", "C"] {
        h.id("d1", &format!(r#"{{"type":"{t}"}}"#)).await;
    }
    match h.create("d1", r#"{"type":"D"}"#).await {
        Err(CommandError::QueueFull { depth }) => assert_eq!(depth, 3),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.create("d1", r#"{"type":"A","supersede":false}"#).await,
        Err(CommandError::QueueFull { depth: 3 })
    ));
    // Superseding makes room; other devices are not affected; nothing was superseded by
    // the refused creates.
    assert_eq!(h.engine.stats().by_status["superseded"], 0);
    h.id("d1", r#"{"type":"A"}"#).await;
    h.id("d2", r#"{"type":"D"}"#).await;
}

#[tokio::test(start_paused = true)]
async fn metadata_round_trips_byte_for_byte() {
    let h = Harness::new(config());
    let raw = r#"{"b":1,  "a":[1,2], "u":"\u00e9"}"#;
    let body = format!(r#"{{"type":"A","metadata":{raw}}}"#);
    let v = h.create("d1", &body).await.unwrap().record;
    let out = serde_json::to_string(&v).unwrap();
    assert!(out.contains(&format!(r#""metadata":{raw}"#)), "{out}");
    let got = h.get(&v.command_id).await;
    assert_eq!(got.metadata.as_ref().unwrap().get(), raw);
    let (items, _) = h.engine.list(&dev_id("d1"), None, 10, None).await.unwrap();
    assert_eq!(items[0].metadata.as_ref().unwrap().get(), raw);
    h.engine.cancel(&v.command_id).await.unwrap();
    h.engine.flush().await;
    assert_eq!(
        h.events()[0].data["metadata"],
        serde_json::from_str::<Value>(raw).unwrap()
    );
    // No metadata is null.
    let v = h
        .create("d1", r#"{"type":"B","metadata":null}"#)
        .await
        .unwrap()
        .record;
    assert!(serde_json::to_string(&v)
        .unwrap()
        .contains(r#""metadata":null"#));
}

// ---- restarts -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn after_a_restart_every_pending_command_continues() {
    let h = Harness::new(config());
    let queued = h.id("d1", r#"{"type":"Q"}"#).await;
    let expiring = h.id("d2", r#"{"type":"E","ttl_s":30}"#).await;
    h.ready("d3", 1).await;
    let sent = h.id("d3", r#"{"type":"S"}"#).await;
    let doomed = h.id("d3", r#"{"type":"T","max_retries":0}"#).await;
    let h = h.restart().await;
    h.engine.flush().await;
    let s = h.engine.stats();
    assert_eq!((s.by_status["queued"], s.by_status["sent"]), (2, 2));

    // The sent ones are re-sent when the device is ready again, the queued one sent.
    h.ready("d3", 7).await;
    assert_eq!(h.sent_ids(), [sent.clone(), doomed.clone()]);
    assert_eq!(h.get(&sent).await.attempts, 2);
    h.ready("d1", 1).await;
    assert_eq!(h.status(&queued).await, CommandStatus::Sent);

    // Deadlines stored before the restart still fire.
    advance(&h, 30).await;
    assert_eq!(h.status(&expiring).await, CommandStatus::Expired);
    assert_eq!(h.status(&doomed).await, CommandStatus::Failed);
    // Re-sent at +10 s (its 3rd attempt), out of retries at +20 s.
    let v = h.get(&sent).await;
    assert_eq!((v.status, v.attempts), (CommandStatus::Failed, 3));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_that_passed_while_stopped_fires_at_start() {
    let h = Harness::new(config());
    h.ready("d1", 1).await;
    let a = h
        .id("d1", r#"{"type":"A","timeout_s":1,"max_retries":0}"#)
        .await;
    let stored_deadline = store::get(&h.db, &a)
        .unwrap()
        .unwrap()
        .next_deadline_ms()
        .unwrap();
    let h = h.restart().await;
    // The new engine's clock starts at the real time; wait until the stored deadline.
    let wait = stored_deadline.saturating_sub(fleetmq_storage::now_ms()) / 1_000 + 1;
    advance(&h, wait).await;
    assert_eq!(h.status(&a).await, CommandStatus::Failed);
    assert_eq!(h.event_kinds(), ["command.failed"]);
}

#[tokio::test(start_paused = true)]
async fn events_a_crash_lost_are_emitted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join("fleetmq.redb")).unwrap();
        store::write(&db, |w| {
            let mut rec = w.create(NewCommandRecord {
                command_id: "c1".into(),
                device_id: dev_id("d1"),
                kind: "A".into(),
                params_json: "{}".into(),
                metadata_json: Some(r#"{"k":"v"}"#.into()),
                idempotency_key: None,
                timeout_ms: 1_000,
                max_retries: 0,
                ttl_ms: 1_000,
                created_at_ms: 1_000,
            })?;
            rec.cancel(2_000, None).unwrap();
            w.put(&rec)
        })
        .unwrap();
    }
    let h = Harness::open(dir, config());
    h.engine.flush().await;
    let events = h.events();
    assert_eq!(h.event_kinds(), ["command.cancelled"]);
    assert_eq!(events[0].data["metadata"], serde_json::json!({"k":"v"}));
    // Once emitted, never again.
    let h = h.restart().await;
    h.engine.flush().await;
    assert!(h.events().is_empty());
}

// ---- the rest of the API ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn forgetting_a_device_cancels_then_removes_its_commands() {
    let h = Harness::new(config());
    let a = h.id("d1", r#"{"type":"A","metadata":{"x":true}}"#).await;
    let b = h.id("d1", r#"{"type":"B"}"#).await;
    h.engine.cancel(&b).await.unwrap();
    let keep = h.id("d2", r#"{"type":"A"}"#).await;
    h.engine.forget_device(&dev_id("d1")).await;
    h.engine.flush().await;
    assert!(matches!(
        h.engine.get(&a).await,
        Err(CommandError::NotFound)
    ));
    assert!(matches!(
        h.engine.get(&b).await,
        Err(CommandError::NotFound)
    ));
    assert_eq!(h.status(&keep).await, CommandStatus::Queued);
    let events = h.events();
    assert_eq!(h.event_kinds(), ["command.cancelled", "command.cancelled"]);
    assert_eq!(events[1].data["command_id"], a.as_str());
    assert_eq!(events[1].data["error"], "device deleted");
    assert_eq!(events[1].data["metadata"], serde_json::json!({"x":true}));
    let s = h.engine.stats();
    assert_eq!((s.by_status["queued"], s.by_status["cancelled"]), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn list_pages_and_filters() {
    let h = Harness::new(config());
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.id("d1", &format!(r#"{{"type":"T{i}"}}"#)).await);
    }
    h.engine.cancel(&ids[1]).await.unwrap();
    let d1 = dev_id("d1");
    let (page, cursor) = h.engine.list(&d1, None, 2, None).await.unwrap();
    let got: Vec<_> = page.iter().map(|v| v.command_id.clone()).collect();
    assert_eq!(got, [ids[4].clone(), ids[3].clone()]);
    let (page, cursor) = h.engine.list(&d1, None, 2, cursor).await.unwrap();
    assert_eq!(page[0].command_id, ids[2]);
    let (page, cursor) = h.engine.list(&d1, None, 2, cursor).await.unwrap();
    assert_eq!((page.len(), cursor), (1, None));
    let (page, _) = h
        .engine
        .list(&d1, Some(CommandStatus::Cancelled), 100, None)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    let (page, _) = h
        .engine
        .list(&d1, Some(CommandStatus::Queued), 0, None)
        .await
        .unwrap();
    assert_eq!(page.len(), 1, "limit 0 is clamped to 1");
    assert!(matches!(
        h.engine.list(&d1, None, 10, Some("x".into())).await,
        Err(CommandError::Invalid(_))
    ));
    // Another device's command is no cursor for this one.
    let other = h.id("d2", r#"{"type":"T0"}"#).await;
    for status in [None, Some(CommandStatus::Queued)] {
        assert!(matches!(
            h.engine.list(&d1, status, 10, Some(other.clone())).await,
            Err(CommandError::Invalid(_))
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_change_nothing() {
    let h = Harness::new(config());
    for body in [
        r#"{"type":""}"#,
        r#"{"type":"A","params":[1]}"#,
        r#"{"type":"A","params":"x"}"#,
        r#"{"type":"A","timeout_s":0}"#,
        r#"{"type":"A","timeout_s":86401}"#,
        r#"{"type":"A","ttl_s":99999999999}"#,
        r#"{"type":"A","max_retries":101}"#,
    ] {
        assert!(
            matches!(h.create("d1", body).await, Err(CommandError::Invalid(_))),
            "{body}"
        );
    }
    let long_key = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
    assert!(matches!(
        h.create_keyed("d1", r#"{"type":"A"}"#, Some(&long_key))
            .await,
        Err(CommandError::Invalid(_))
    ));
    let mut odd = device("d1");
    odd.plugin = "no-such-plugin".into();
    let req: NewCommand = serde_json::from_str(r#"{"type":"A"}"#).unwrap();
    assert!(matches!(
        h.engine.create(&odd, req, None).await,
        Err(CommandError::Invalid(_))
    ));
    assert!(serde_json::from_str::<NewCommand>(r#"{"type":"A","bogus":1}"#).is_err());
    assert!(serde_json::from_str::<NewCommand>(r#"{"params":{}}"#).is_err());
    let (items, _) = h.engine.list(&dev_id("d1"), None, 10, None).await.unwrap();
    assert!(items.is_empty());
    assert_eq!(h.engine.stats().by_status.values().sum::<u64>(), 0);
}

#[tokio::test(start_paused = true)]
async fn calls_after_shutdown_fail_cleanly() {
    let h = Harness::new(config());
    let a = h.id("d1", r#"{"type":"A"}"#).await;
    h.shutdown.cancel();
    h.tracker.close();
    h.tracker.wait().await;
    assert!(matches!(
        h.create("d1", r#"{"type":"B"}"#).await,
        Err(CommandError::ShuttingDown)
    ));
    assert!(matches!(
        h.engine.cancel(&a).await,
        Err(CommandError::ShuttingDown)
    ));
    h.engine.device_ready(&device("d1"), 1).await; // ignored, no panic
                                                   // Reads still work.
    assert_eq!(h.status(&a).await, CommandStatus::Queued);
}

#[tokio::test(start_paused = true)]
async fn concurrent_creates_are_serialized() {
    let h = Harness::new(config());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let engine = h.engine.clone();
        tasks.push(tokio::spawn(async move {
            let req: NewCommand = serde_json::from_str(r#"{"type":"A"}"#).unwrap();
            let key = Some(format!("k{}", i % 10));
            engine.create(&device("d1"), req, key).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(!t.await.unwrap().replayed);
    }
    h.engine.flush().await;
    // One command per idempotency key; of those, all but the newest superseded.
    assert_eq!(created, 10);
    let s = h.engine.stats();
    assert_eq!((s.by_status["queued"], s.by_status["superseded"]), (1, 9));
    assert_eq!(h.event_kinds().len(), 9);
}

#[tokio::test(start_paused = true)]
async fn the_device_cache_forgets_deleted_devices_even_mid_lookup() {
    let h = Harness::new(config());
    let dev = device("d1");
    let miss = h.engine.cached_device(&dev.id).unwrap_err();
    h.engine.remember_device(&dev, miss).unwrap();
    assert_eq!(h.engine.cached_device(&dev.id).unwrap().id, dev.id);
    h.engine.forget_cached_device(&dev.id);
    assert!(h.engine.cached_device(&dev.id).is_err());
    // A store read that started before a delete is used once, never remembered.
    let miss = h.engine.cached_device(&dev.id).unwrap_err();
    h.engine.forget_cached_device(&dev.id);
    assert_eq!(h.engine.remember_device(&dev, miss).unwrap().id, dev.id);
    assert!(h.engine.cached_device(&dev.id).is_err());
    // A device whose plugin this broker lacks is refused and not remembered.
    let mut odd = device("d2");
    odd.plugin = "nope".into();
    let miss = h.engine.cached_device(&odd.id).unwrap_err();
    assert!(matches!(
        h.engine.remember_device(&odd, miss),
        Err(CommandError::Invalid(_))
    ));
    assert!(h.engine.cached_device(&odd.id).is_err());
}

/// With `history_days`, finished commands older than it are pruned by the engine's
/// timer, from the old end of each device's history; unfinished ones stay.
#[tokio::test(start_paused = true)]
async fn finished_commands_older_than_the_history_are_pruned() {
    let day = Duration::from_secs(86_400);
    let h = Harness::new(CommandsConfig {
        history: Some(day),
        ttl: 2 * day,
        ..config()
    });
    let done = h.id("d1", r#"{"type":"A"}"#).await;
    h.engine.cancel(&done).await.unwrap();
    let waiting = h.id("d1", r#"{"type":"B"}"#).await;
    let other = h.id("d2", r#"{"type":"A"}"#).await;
    h.engine.cancel(&other).await.unwrap();

    // Not a day old yet: nothing goes.
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert_eq!(h.engine.prune_now().await.unwrap(), 0);

    // The hourly timer prunes both cancelled commands once they are a day old.
    let mut waited = Duration::ZERO;
    while h.engine.stats().pruned < 2 {
        assert!(waited < 2 * day, "not pruned: {:?}", h.engine.stats());
        tokio::time::sleep(Duration::from_secs(600)).await;
        waited += Duration::from_secs(600);
    }
    assert!(matches!(
        h.engine.get(&done).await,
        Err(CommandError::NotFound)
    ));
    assert!(matches!(
        h.engine.get(&other).await,
        Err(CommandError::NotFound)
    ));
    let (items, cursor) = h.engine.list(&dev_id("d1"), None, 10, None).await.unwrap();
    let ids: Vec<_> = items.iter().map(|v| v.command_id.clone()).collect();
    assert_eq!((ids, cursor), (vec![waiting.clone()], None));
    assert_eq!(h.engine.stats().by_status["cancelled"], 0);
    assert_eq!(h.engine.stats().by_status["queued"], 1);

    // The queued one expires after its TTL (two days) and is pruned a day later.
    tokio::time::sleep(day).await;
    assert_eq!(h.status(&waiting).await, CommandStatus::Expired);
    tokio::time::sleep(day + Duration::from_secs(3_600)).await;
    h.engine.prune_now().await.unwrap();
    assert!(matches!(
        h.engine.get(&waiting).await,
        Err(CommandError::NotFound)
    ));
    assert_eq!(h.engine.stats().pruned, 3);
}
