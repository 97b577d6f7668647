//! SPEC §5 end to end: a real broker, commands created through the engine the admin API
//! uses, and real MQTT devices that answer like firmware (subscribed at QoS 1 to
//! `device/{id}/command`, answering on `device/{id}/response`).
//!
//! Timeouts and TTLs are configured in the hundreds of milliseconds so the tests run on
//! the wall clock against real sockets; every wait is a bounded poll.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::commands::{CommandError, CommandStatus, CommandView, NewCommand};
use fleetmq_broker::BrokerConfig;
use fleetmq_storage::DeviceRecord;
use serde_json::json;

/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(400);

fn config(timeout: Duration, max_retries: u32, ttl: Duration) -> BrokerConfig {
    let mut config = BrokerConfig::for_tests();
    config.fleet.commands.timeout = timeout;
    config.fleet.commands.max_retries = max_retries;
    config.fleet.commands.ttl = ttl;
    config
}

/// Answer timeouts that never fire during a test.
fn patient() -> BrokerConfig {
    config(Duration::from_secs(60), 3, Duration::from_secs(3600))
}

fn new_command(body: &str) -> NewCommand {
    serde_json::from_str(body).expect("a valid command body")
}

async fn create(b: &TestBroker, dev: &DeviceRecord, body: &str) -> CommandView {
    let created = b
        .handle
        .commands()
        .create(dev, new_command(body), None)
        .await
        .expect("create command");
    assert!(!created.replayed);
    created.record
}

async fn get(b: &TestBroker, id: &str) -> CommandView {
    b.handle.commands().get(id).await.expect("command exists")
}

/// Polls until the command has `status`.
async fn wait_status(b: &TestBroker, id: &str, status: CommandStatus) -> CommandView {
    eventually(&format!("command {id} to be {status:?}"), || async {
        let view = get(b, id).await;
        (view.status == status).then_some(view)
    })
    .await
}

async fn wait_terminal(b: &TestBroker, id: &str) -> CommandView {
    let view = b
        .handle
        .commands()
        .wait_terminal(id, WAIT)
        .await
        .expect("wait_terminal");
    assert!(view.status.is_terminal(), "not terminal in time: {view:?}");
    view
}

fn raw(v: &Option<Box<serde_json::value::RawValue>>) -> Option<serde_json::Value> {
    v.as_ref()
        .map(|r| serde_json::from_str(r.get()).expect("stored JSON"))
}

#[tokio::test]
async fn queued_commands_go_out_oldest_first_then_delivered_then_answered() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-1", "tok", false).await;
    let mut events = b.handle.events().subscribe();

    let a = create(&b, &dev, r#"{"type":"RELOAD","params":{"n":1}}"#).await;
    let bb = create(&b, &dev, r#"{"type":"SCREENSHOT"}"#).await;
    let c = create(&b, &dev, r#"{"type":"REBOOT"}"#).await;
    for v in [&a, &bb, &c] {
        assert_eq!(v.status, CommandStatus::Queued, "device offline: {v:?}");
        assert_eq!(v.attempts, 0);
        assert!(v.sent_at.is_none() && v.delivered_at.is_none() && v.completed_at.is_none());
        assert_eq!(v.device_id.as_str(), "disp-1");
    }

    let opts = FirmwareOptions {
        manual_acks: true,
        ..Default::default()
    };
    let mut fw = Firmware::connect_with(&b, "disp-1", "tok", opts).await;
    let got = [fw.next().await, fw.next().await, fw.next().await];
    let ids: Vec<&str> = got.iter().map(|g| g.command_id()).collect();
    assert_eq!(
        ids,
        [&a.command_id, &bb.command_id, &c.command_id],
        "oldest first"
    );
    assert_eq!(
        got[0].json,
        json!({"type":"RELOAD","commandId":a.command_id,"params":{"n":1}})
    );
    assert_eq!(got[1].json["params"], json!({}), "absent params are {{}}");
    assert_eq!(got[0].publish.qos, rumqttc::QoS::AtLeastOnce);

    // No PUBACK yet: `sent`.
    for g in &got {
        let v = wait_status(&b, g.command_id(), CommandStatus::Sent).await;
        assert_eq!(v.attempts, 1);
        assert!(v.sent_at.is_some() && v.delivered_at.is_none(), "{v:?}");
    }
    // The PUBACK makes it `delivered`.
    for g in &got {
        fw.ack(g).await;
    }
    for g in &got {
        let v = wait_status(&b, g.command_id(), CommandStatus::Delivered).await;
        assert!(v.delivered_at.is_some(), "{v:?}");
        assert_eq!(v.attempts, 1);
    }

    fw.complete(&a.command_id, json!({"reloaded": true, "took_ms": 12}))
        .await;
    fw.fail(&bb.command_id, "no display attached").await;
    fw.answer(&c.command_id, json!({"success": true})).await;

    let done = wait_terminal(&b, &a.command_id).await;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(
        raw(&done.result),
        Some(json!({"reloaded": true, "took_ms": 12}))
    );
    assert!(done.error.is_none() && done.completed_at.is_some());

    let failed = wait_terminal(&b, &bb.command_id).await;
    assert_eq!(failed.status, CommandStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("no display attached"));
    assert!(failed.completed_at.is_some());

    let bare = wait_terminal(&b, &c.command_id).await;
    assert_eq!(bare.status, CommandStatus::Completed);
    assert!(bare.result.is_none(), "{bare:?}");

    // One event per terminal state.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut events, |e| e.kind.starts_with("command.")).await;
        let id = e.data_value()["command_id"].as_str().unwrap().to_owned();
        seen.push((e.kind, id));
    }
    seen.sort();
    let mut want = vec![
        ("command.completed".to_owned(), a.command_id.clone()),
        ("command.completed".to_owned(), c.command_id.clone()),
        ("command.failed".to_owned(), bb.command_id.clone()),
    ];
    want.sort();
    assert_eq!(seen, want);

    // Newest first, and filtered by status.
    let (all, _) = b
        .handle
        .commands()
        .list(&dev.id, None, 10, None)
        .await
        .unwrap();
    let listed: Vec<_> = all.iter().map(|v| v.command_id.as_str()).collect();
    assert_eq!(listed, [&c.command_id, &bb.command_id, &a.command_id]);
    let (completed, _) = b
        .handle
        .commands()
        .list(&dev.id, Some(CommandStatus::Completed), 10, None)
        .await
        .unwrap();
    assert_eq!(completed.len(), 2);
    assert!(
        fw.within(QUIET).await.is_empty(),
        "answered commands are not sent again"
    );
}

#[tokio::test]
async fn a_command_for_an_online_device_is_sent_at_once() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-2", "tok", false).await;
    let mut fw = Firmware::connect(&b, "disp-2", "tok").await;
    // The SUBACK reaches the device slightly before the engine hears that the device is
    // ready, so a command created in that window is answered `queued` (and sent a moment
    // later). Once the device got a command, the engine knows it is ready.
    let probe = create(&b, &dev, r#"{"type":"PROBE"}"#).await;
    assert_eq!(fw.next().await.command_id(), probe.command_id);

    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    assert_eq!(created.status, CommandStatus::Sent, "{created:?}");
    assert_eq!(created.attempts, 1);
    let got = fw.next().await;
    assert_eq!(got.command_id(), created.command_id);
    wait_status(&b, &created.command_id, CommandStatus::Delivered).await;
    fw.complete(&created.command_id, json!({})).await;
    assert_eq!(
        wait_terminal(&b, &created.command_id).await.status,
        CommandStatus::Completed
    );
}

#[tokio::test]
async fn an_unanswered_command_is_resent_max_retries_times_then_fails_with_timeout() {
    let b = TestBroker::with_config(config(
        Duration::from_millis(300),
        2,
        Duration::from_secs(3600),
    ))
    .await;
    let dev = b.add_device("disp-3", "tok", false).await;
    let mut fw = Firmware::connect(&b, "disp-3", "tok").await;
    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;

    // The first send and two re-sends, all with the same commandId.
    let copies = [fw.next().await, fw.next().await, fw.next().await];
    for c in &copies {
        assert_eq!(c.command_id(), created.command_id);
        assert_eq!(c.kind(), "RELOAD");
    }
    let gap = |i: usize| copies[i + 1].publish.pkid != copies[i].publish.pkid;
    assert!(gap(0) && gap(1), "each re-send is a new PUBLISH");

    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(done.status, CommandStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("timeout"));
    assert_eq!(done.attempts, 3, "{done:?}");
    assert!(
        done.delivered_at.is_some(),
        "the device acknowledged it: {done:?}"
    );
    assert!(
        fw.within(QUIET).await.is_empty(),
        "no re-send after max_retries"
    );

    // A command's own max_retries: 0 means one send only.
    let once = create(&b, &dev, r#"{"type":"PING","max_retries":0}"#).await;
    assert_eq!(fw.next().await.command_id(), once.command_id);
    let done = wait_terminal(&b, &once.command_id).await;
    assert_eq!(
        (done.status, done.error.as_deref(), done.attempts),
        (CommandStatus::Failed, Some("timeout"), 1)
    );
    assert!(fw.within(QUIET).await.is_empty());
}

#[tokio::test]
async fn a_queued_command_expires_when_its_ttl_runs_out() {
    let b = TestBroker::with_config(config(
        Duration::from_secs(60),
        3,
        Duration::from_millis(300),
    ))
    .await;
    let dev = b.add_device("disp-4", "tok", false).await;
    let mut events = b.handle.events().subscribe();
    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    assert_eq!(created.status, CommandStatus::Queued);
    // A command's own ttl_s: 0 is "now or never" for a device that is not ready.
    let now_or_never = create(&b, &dev, r#"{"type":"PING","ttl_s":0}"#).await;

    let done = wait_terminal(&b, &now_or_never.command_id).await;
    assert_eq!(done.status, CommandStatus::Expired);
    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(done.status, CommandStatus::Expired);
    assert!(done.completed_at.is_some() && done.sent_at.is_none() && done.attempts == 0);
    let e = next_event(&mut events, |e| {
        e.kind == "command.expired" && e.data_value()["command_id"] == created.command_id.as_str()
    })
    .await;
    assert_eq!(e.device_id.as_deref(), Some("disp-4"));

    // The device that connects afterwards does not get expired commands.
    let mut fw = Firmware::connect(&b, "disp-4", "tok").await;
    assert!(fw.within(QUIET).await.is_empty());
}

#[tokio::test]
async fn cancel_is_terminal_and_a_second_cancel_is_already_terminal() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-5", "tok", false).await;
    let engine = b.handle.commands();
    let mut events = b.handle.events().subscribe();

    let queued = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    let cancelled = engine.cancel(&queued.command_id).await.expect("cancel");
    assert_eq!(cancelled.status, CommandStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    assert_eq!(
        get(&b, &queued.command_id).await.status,
        CommandStatus::Cancelled
    );
    match engine.cancel(&queued.command_id).await {
        Err(CommandError::AlreadyTerminal(v)) => {
            assert_eq!(v.command_id, queued.command_id);
            assert_eq!(v.status, CommandStatus::Cancelled);
        }
        other => panic!("second cancel: {other:?}"),
    }
    assert!(matches!(
        engine.cancel("no-such-command").await,
        Err(CommandError::NotFound)
    ));
    let e = next_event(&mut events, |e| e.kind == "command.cancelled").await;
    assert_eq!(e.data_value()["command_id"], queued.command_id.as_str());

    // A cancelled command is never sent.
    let mut fw = Firmware::connect(&b, "disp-5", "tok").await;
    assert!(fw.within(QUIET).await.is_empty());

    // Cancelling a delivered command: the device's answer comes too late to change it.
    let live = create(&b, &dev, r#"{"type":"REBOOT"}"#).await;
    assert_eq!(fw.next().await.command_id(), live.command_id);
    wait_status(&b, &live.command_id, CommandStatus::Delivered).await;
    let view = engine.cancel(&live.command_id).await.expect("cancel");
    assert_eq!(view.status, CommandStatus::Cancelled);
    fw.complete(&live.command_id, json!({"rebooted": true}))
        .await;
    let late = eventually("the late response to be stored", || async {
        let v = get(&b, &live.command_id).await;
        v.late_response.is_some().then_some(v)
    })
    .await;
    assert_eq!(late.status, CommandStatus::Cancelled);
    assert!(late.result.is_none());
}

#[tokio::test]
async fn a_newer_command_of_the_same_type_supersedes_the_pending_one() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-6", "tok", false).await;
    let mut events = b.handle.events().subscribe();

    let old = create(
        &b,
        &dev,
        r#"{"type":"SET_BRIGHTNESS","params":{"v":10},"metadata":{"job":"a"}}"#,
    )
    .await;
    let other = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    let new = create(&b, &dev, r#"{"type":"SET_BRIGHTNESS","params":{"v":20}}"#).await;

    let old_now = get(&b, &old.command_id).await;
    assert_eq!(old_now.status, CommandStatus::Superseded);
    assert!(old_now.completed_at.is_some());
    assert_eq!(
        get(&b, &other.command_id).await.status,
        CommandStatus::Queued
    );
    assert_eq!(get(&b, &new.command_id).await.status, CommandStatus::Queued);
    let e = next_event(&mut events, |e| e.kind == "command.superseded").await;
    assert_eq!(e.data_value()["command_id"], old.command_id.as_str());
    assert_eq!(e.data_value()["metadata"], json!({"job":"a"}));

    // `supersede: false` leaves the pending one alone.
    let kept = create(
        &b,
        &dev,
        r#"{"type":"SET_BRIGHTNESS","params":{"v":30},"supersede":false}"#,
    )
    .await;
    assert_eq!(get(&b, &new.command_id).await.status, CommandStatus::Queued);

    let mut fw = Firmware::connect(&b, "disp-6", "tok").await;
    let got = [fw.next().await, fw.next().await, fw.next().await];
    let ids: Vec<&str> = got.iter().map(|g| g.command_id()).collect();
    assert_eq!(ids, [&other.command_id, &new.command_id, &kept.command_id]);
    assert_eq!(got[1].json["params"], json!({"v": 20}));
    assert!(
        fw.within(QUIET).await.is_empty(),
        "the superseded one is never sent"
    );

    // A superseded command that the device answers anyway keeps its status.
    fw.complete(&old.command_id, json!({})).await;
    let v = eventually("the late response", || async {
        let v = get(&b, &old.command_id).await;
        v.late_response.is_some().then_some(v)
    })
    .await;
    assert_eq!(v.status, CommandStatus::Superseded);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_command() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-7", "tok", false).await;
    let other_dev = b.add_device("disp-8", "tok", false).await;
    let engine = b.handle.commands();

    let first = engine
        .create(
            &dev,
            new_command(r#"{"type":"RELOAD"}"#),
            Some("job-42".into()),
        )
        .await
        .unwrap();
    assert!(!first.replayed);
    // A retried POST, even with a different body, gets the first command back.
    let again = engine
        .create(
            &dev,
            new_command(r#"{"type":"REBOOT","params":{"x":1}}"#),
            Some("job-42".into()),
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.record.command_id, first.record.command_id);
    assert_eq!(again.record.kind, "RELOAD");
    let (all, _) = engine.list(&dev.id, None, 10, None).await.unwrap();
    assert_eq!(all.len(), 1, "nothing else was created");

    // The replay shows the command's current state.
    engine.cancel(&first.record.command_id).await.unwrap();
    let replay = engine
        .create(
            &dev,
            new_command(r#"{"type":"RELOAD"}"#),
            Some("job-42".into()),
        )
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.record.status, CommandStatus::Cancelled);

    // Keys are per device; another key is another command.
    let elsewhere = engine
        .create(
            &other_dev,
            new_command(r#"{"type":"RELOAD"}"#),
            Some("job-42".into()),
        )
        .await
        .unwrap();
    assert!(!elsewhere.replayed);
    assert_ne!(elsewhere.record.command_id, first.record.command_id);
    let fresh = engine
        .create(
            &dev,
            new_command(r#"{"type":"RELOAD"}"#),
            Some("job-43".into()),
        )
        .await
        .unwrap();
    assert!(!fresh.replayed);
    assert_ne!(fresh.record.command_id, first.record.command_id);
}

#[tokio::test]
async fn wait_terminal_returns_the_record_when_terminal_or_when_time_is_up() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-9", "tok", false).await;
    let engine = b.handle.commands();
    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;

    let started = tokio::time::Instant::now();
    let view = engine
        .wait_terminal(&created.command_id, Duration::from_millis(200))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(view.status, CommandStatus::Queued);
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(matches!(
        engine
            .wait_terminal("nope", Duration::from_millis(10))
            .await,
        Err(CommandError::NotFound)
    ));

    // A waiter started before the device answers gets the terminal record.
    let waiter = {
        let engine = engine.clone();
        let id = created.command_id.clone();
        tokio::spawn(async move { engine.wait_terminal(&id, WAIT).await })
    };
    let mut fw = Firmware::connect(&b, "disp-9", "tok").await;
    let got = fw.next().await;
    fw.complete(got.command_id(), json!({"ok": 1})).await;
    let view = waiter.await.unwrap().unwrap();
    assert_eq!(view.status, CommandStatus::Completed);
    assert_eq!(raw(&view.result), Some(json!({"ok": 1})));
    // Already terminal: at once.
    let started = tokio::time::Instant::now();
    let again = engine
        .wait_terminal(&created.command_id, WAIT)
        .await
        .unwrap();
    assert_eq!(again.status, CommandStatus::Completed);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_late_response_is_stored_without_changing_the_status() {
    let b = TestBroker::with_config(config(
        Duration::from_millis(300),
        0,
        Duration::from_secs(3600),
    ))
    .await;
    let dev = b.add_device("disp-10", "tok", false).await;
    let mut fw = Firmware::connect(&b, "disp-10", "tok").await;
    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    assert_eq!(fw.next().await.command_id(), created.command_id);
    let failed = wait_terminal(&b, &created.command_id).await;
    assert_eq!(
        (failed.status, failed.error.as_deref()),
        (CommandStatus::Failed, Some("timeout"))
    );
    let late_before = b.handle.commands().stats().late_responses;

    fw.complete(&created.command_id, json!({"reloaded": true}))
        .await;
    let v = eventually("the late response to be stored", || async {
        let v = get(&b, &created.command_id).await;
        v.late_response.is_some().then_some(v)
    })
    .await;
    assert_eq!(v.status, CommandStatus::Failed, "status unchanged");
    assert_eq!(v.error.as_deref(), Some("timeout"));
    assert!(v.result.is_none());
    assert_eq!(v.completed_at, failed.completed_at);
    let late = raw(&v.late_response).unwrap();
    assert_eq!(late["success"], true, "{late}");
    assert_eq!(late["result"], json!({"reloaded": true}), "{late}");
    assert_eq!(b.handle.commands().stats().late_responses, late_before + 1);
}

#[tokio::test]
async fn responses_to_unknown_or_foreign_commands_are_counted_and_dropped() {
    let b = TestBroker::with_config(patient()).await;
    let dev_a = b.add_device("disp-11", "tok", false).await;
    b.add_device("disp-12", "tok", false).await;
    let mut a = Firmware::connect(&b, "disp-11", "tok").await;
    let intruder = Firmware::connect(&b, "disp-12", "tok").await;
    let before = b.handle.commands().stats().unknown_responses;

    a.complete("0000000000000000-no-such-command", json!({}))
        .await;
    eventually("the unknown response to be counted", || async {
        (b.handle.commands().stats().unknown_responses == before + 1).then_some(())
    })
    .await;

    // Another device answering this device's command id changes nothing.
    let created = create(&b, &dev_a, r#"{"type":"RELOAD"}"#).await;
    assert_eq!(a.next().await.command_id(), created.command_id);
    wait_status(&b, &created.command_id, CommandStatus::Delivered).await;
    intruder
        .complete(&created.command_id, json!({"pwned": true}))
        .await;
    eventually("the foreign response to be counted", || async {
        (b.handle.commands().stats().unknown_responses == before + 2).then_some(())
    })
    .await;
    let v = get(&b, &created.command_id).await;
    assert_eq!(v.status, CommandStatus::Delivered, "{v:?}");
    assert!(v.result.is_none() && v.late_response.is_none());

    a.complete(&created.command_id, json!({"ok": true})).await;
    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(raw(&done.result), Some(json!({"ok": true})));
}

#[tokio::test]
async fn a_full_queue_refuses_new_commands_with_its_depth() {
    let mut cfg = patient();
    cfg.fleet.commands.max_queued_per_device = 3;
    let b = TestBroker::with_config(cfg).await;
    let dev = b.add_device("disp-13", "tok", false).await;
    let other = b.add_device("disp-14", "tok", false).await;
    let engine = b.handle.commands();

    let t1 = create(&b, &dev, r#"{"type":"T1"}"#).await;
    let t2 = create(&b, &dev, r#"{"type":"T2"}"#).await;
    create(&b, &dev, r#"{"type":"T3"}"#).await;
    match engine
        .create(&dev, new_command(r#"{"type":"T4"}"#), None)
        .await
    {
        Err(CommandError::QueueFull { depth }) => assert_eq!(depth, 3),
        other => panic!("expected QueueFull: {other:?}"),
    }
    let (all, _) = engine.list(&dev.id, None, 10, None).await.unwrap();
    assert_eq!(all.len(), 3, "the refused command was not stored");

    // Superseding one of the same type keeps the depth, so it is accepted.
    let t1b = create(&b, &dev, r#"{"type":"T1","params":{"again":true}}"#).await;
    assert_eq!(
        get(&b, &t1.command_id).await.status,
        CommandStatus::Superseded
    );
    assert!(matches!(
        engine
            .create(
                &dev,
                new_command(r#"{"type":"T1","supersede":false}"#),
                None
            )
            .await,
        Err(CommandError::QueueFull { depth: 3 })
    ));
    // Other devices have their own queue.
    create(&b, &other, r#"{"type":"T4"}"#).await;
    // A terminal command frees its place.
    engine.cancel(&t2.command_id).await.unwrap();
    create(&b, &dev, r#"{"type":"T4"}"#).await;
    assert_eq!(get(&b, &t1b.command_id).await.status, CommandStatus::Queued);
}

#[tokio::test]
async fn metadata_is_returned_byte_for_byte() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-15", "tok", false).await;
    let mut events = b.handle.events().subscribe();
    // Odd spacing, key order, number forms and escapes that a JSON round trip would change.
    let metadata =
        r#"{"job_id":"123",  "z":1, "a":[1.50,1e3,-0.0], "s":"caf\u00e9 \/ x", "n":null}"#;
    let body = format!(r#"{{"type":"RELOAD","metadata":{metadata}}}"#);
    let created = create(&b, &dev, &body).await;
    let stored = |v: &CommandView| v.metadata.as_ref().map(|m| m.get().to_owned());
    assert_eq!(stored(&created).as_deref(), Some(metadata));
    assert_eq!(
        stored(&get(&b, &created.command_id).await).as_deref(),
        Some(metadata)
    );
    let (listed, _) = b
        .handle
        .commands()
        .list(&dev.id, None, 1, None)
        .await
        .unwrap();
    assert_eq!(stored(&listed[0]).as_deref(), Some(metadata));

    let mut fw = Firmware::connect(&b, "disp-15", "tok").await;
    let got = fw.next().await;
    assert!(
        got.json.get("metadata").is_none(),
        "metadata is for the host, not the device: {}",
        got.json
    );
    fw.complete(got.command_id(), json!({})).await;
    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(stored(&done).as_deref(), Some(metadata));
    // As the API serializes it.
    let text = serde_json::to_string(&done).unwrap();
    assert!(
        text.contains(&format!(r#""metadata":{metadata}"#)),
        "{text}"
    );

    // Without metadata there is none.
    let none = create(&b, &dev, r#"{"type":"PING"}"#).await;
    assert!(none.metadata.is_none());

    // The terminal event carries it (as JSON).
    let e = next_event(&mut events, |e| e.kind == "command.completed").await;
    let want: serde_json::Value = serde_json::from_str(metadata).unwrap();
    assert_eq!(e.data_value()["metadata"], want);
}

#[tokio::test]
async fn an_encrypted_device_gets_sealed_commands_and_its_sealed_answer_completes_them() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("sealed-1", "tok", true).await;
    let key = dev.current_key().expect("an encrypted device has a key");
    let (generation, k) = (key.generation, key.key);
    let mut events = b.handle.events().subscribe();
    let opts = FirmwareOptions {
        key: Some((generation, k)),
        ..Default::default()
    };
    let mut fw = Firmware::connect_with(&b, "sealed-1", "tok", opts).await;

    let created = create(&b, &dev, r#"{"type":"RELOAD","params":{"url":"x"}}"#).await;
    let got = fw.next().await;
    assert_eq!(got.generation, Some(generation));
    let env = &got.publish.payload;
    assert_eq!(env[0], 1, "envelope version");
    assert_eq!(env[1], generation);
    let plain = got.json.to_string();
    assert_eq!(env.len(), 2 + 12 + plain.len() + 16, "ciphertext + tag");
    assert!(
        !env.windows(created.command_id.len())
            .any(|w| w == created.command_id.as_bytes()),
        "the command id is not visible on the wire"
    );
    assert_eq!(got.command_id(), created.command_id);
    assert_eq!(got.json["params"], json!({"url": "x"}));

    // A plaintext answer from an encrypted device does not decrypt and is dropped.
    let plaintext = json!({"commandId": created.command_id, "success": true}).to_string();
    fw.client
        .publish(
            "device/sealed-1/response",
            rumqttc::QoS::AtLeastOnce,
            false,
            plaintext.into_bytes(),
        )
        .await
        .unwrap();
    next_event(&mut events, |e| e.kind == "device.decrypt_failed").await;
    assert_ne!(
        get(&b, &created.command_id).await.status,
        CommandStatus::Completed
    );

    fw.complete(&created.command_id, json!({"sealed": "yes"}))
        .await;
    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(raw(&done.result), Some(json!({"sealed": "yes"})));
}

#[tokio::test]
async fn commands_survive_a_restart_and_continue() {
    let cfg = patient();
    let b = TestBroker::with_config(cfg.clone()).await;
    let dev = b.add_device("disp-16", "tok", false).await;
    let opts = FirmwareOptions {
        manual_acks: true,
        ..Default::default()
    };
    let mut fw = Firmware::connect_with(&b, "disp-16", "tok", opts).await;

    // Delivered (acknowledged, unanswered).
    let delivered = create(&b, &dev, r#"{"type":"A","metadata":{"k":1}}"#).await;
    let got = fw.next().await;
    fw.ack(&got).await;
    wait_status(&b, &delivered.command_id, CommandStatus::Delivered).await;
    // Sent (never acknowledged).
    let sent = create(&b, &dev, r#"{"type":"B"}"#).await;
    assert_eq!(fw.next().await.command_id(), sent.command_id);
    assert_eq!(get(&b, &sent.command_id).await.status, CommandStatus::Sent);
    fw.drop_connection().await;
    eventually("the device to be offline", || async {
        (!b.handle.is_device_online(&dev.id)).then_some(())
    })
    .await;
    // Queued while the device is away.
    let queued = create(&b, &dev, r#"{"type":"C","params":{"p":true}}"#).await;
    assert_eq!(queued.status, CommandStatus::Queued);
    // Already terminal before the restart.
    let cancelled = create(&b, &dev, r#"{"type":"D"}"#).await;
    b.handle
        .commands()
        .cancel(&cancelled.command_id)
        .await
        .unwrap();

    let dir = b.stop().await;
    let b = TestBroker::with_config_in(cfg, dir).await;
    let statuses = [
        (&delivered, CommandStatus::Delivered),
        (&sent, CommandStatus::Sent),
        (&queued, CommandStatus::Queued),
        (&cancelled, CommandStatus::Cancelled),
    ];
    for (v, status) in statuses {
        let now = get(&b, &v.command_id).await;
        assert_eq!(now.status, status, "after the restart: {now:?}");
    }
    assert_eq!(
        raw(&get(&b, &delivered.command_id).await.metadata),
        Some(json!({"k": 1}))
    );

    let mut fw = Firmware::connect(&b, "disp-16", "tok").await;
    let got = [fw.next().await, fw.next().await, fw.next().await];
    let mut ids: Vec<&str> = got.iter().map(|g| g.command_id()).collect();
    ids.sort();
    let mut want = vec![
        delivered.command_id.as_str(),
        sent.command_id.as_str(),
        queued.command_id.as_str(),
    ];
    want.sort();
    assert_eq!(ids, want, "re-sent and queued ones, not the cancelled one");
    let queued_got = got
        .iter()
        .find(|g| g.command_id() == queued.command_id)
        .unwrap();
    assert_eq!(queued_got.json["params"], json!({"p": true}));
    for g in &got {
        fw.complete(g.command_id(), json!({"after": "restart"}))
            .await;
    }
    for v in [&delivered, &sent, &queued] {
        let done = wait_terminal(&b, &v.command_id).await;
        assert_eq!(done.status, CommandStatus::Completed, "{done:?}");
        assert_eq!(raw(&done.result), Some(json!({"after": "restart"})));
    }
    assert_eq!(get(&b, &delivered.command_id).await.attempts, 2);
    assert_eq!(get(&b, &sent.command_id).await.attempts, 2);
    assert_eq!(get(&b, &queued.command_id).await.attempts, 1);
    assert!(fw.within(QUIET).await.is_empty());
}

#[tokio::test]
async fn a_takeover_gets_the_unanswered_commands_again() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-17", "tok", false).await;
    let opts = FirmwareOptions {
        manual_acks: true,
        ..Default::default()
    };
    let mut first = Firmware::connect_with(&b, "disp-17", "tok", opts).await;
    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    assert_eq!(first.next().await.command_id(), created.command_id);

    // The same device id connects again: the old connection is closed, the command that
    // never got a PUBACK goes to the new one.
    let mut second = Firmware::connect(&b, "disp-17", "tok").await;
    first.closed_by_broker().await;
    assert_eq!(second.next().await.command_id(), created.command_id);
    wait_status(&b, &created.command_id, CommandStatus::Delivered).await;
    second.complete(&created.command_id, json!({})).await;
    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(done.attempts, 2);
    assert!(second.within(QUIET).await.is_empty());
}

#[tokio::test]
async fn an_answer_timeout_while_offline_waits_for_the_next_connection() {
    let b = TestBroker::with_config(config(
        Duration::from_millis(200),
        1,
        Duration::from_secs(3600),
    ))
    .await;
    let dev = b.add_device("disp-18", "tok", false).await;
    let mut fw = Firmware::connect(&b, "disp-18", "tok").await;
    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    assert_eq!(fw.next().await.command_id(), created.command_id);
    wait_status(&b, &created.command_id, CommandStatus::Delivered).await;
    fw.drop_connection().await;

    // Several answer timeouts pass while the device is away.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = get(&b, &created.command_id).await;
    assert_eq!(v.status, CommandStatus::Delivered, "{v:?}");

    let mut fw = Firmware::connect(&b, "disp-18", "tok").await;
    assert_eq!(fw.next().await.command_id(), created.command_id);
    fw.complete(&created.command_id, json!({"late": false}))
        .await;
    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(done.status, CommandStatus::Completed, "{done:?}");
}

#[tokio::test]
async fn a_persistent_session_gets_queued_commands_without_subscribing_again() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-19", "tok", false).await;
    let topic = "device/disp-19/command";
    let persistent = || {
        let mut o = options_v4(&b, Via::Tcp, "disp-19", Some(("disp-19", "tok")));
        o.set_clean_session(false);
        o
    };
    let (client, mut el) = rumqttc::AsyncClient::new(persistent(), 10);
    next_v4(&mut el, |p| {
        matches!(p, rumqttc::Packet::ConnAck(_)).then_some(())
    })
    .await;
    assert_eq!(
        subscribe_v4(&client, &mut el, topic, rumqttc::QoS::AtLeastOnce).await,
        [1]
    );
    client.disconnect().await.unwrap();
    drive_v4(el).await.unwrap();
    // The client is done once its DISCONNECT is written; the broker may not have read
    // it yet. Offline in the fleet's presence means the engine has the connection's
    // `Gone` queued ahead of the create below.
    eventually("the device to be offline", || async {
        let presence = b.handle.services().presence();
        presence.get(&dev.id).is_none().then_some(())
    })
    .await;

    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    assert_eq!(created.status, CommandStatus::Queued);
    let (_client, mut el) = rumqttc::AsyncClient::new(persistent(), 10);
    let present = next_v4(&mut el, |p| match p {
        rumqttc::Packet::ConnAck(a) => Some(a.session_present),
        _ => None,
    })
    .await;
    assert!(present, "the broker kept the session");
    let payload = next_v4(&mut el, |p| match p {
        rumqttc::Packet::Publish(p) if p.topic == topic => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    let cmd: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(cmd["commandId"], created.command_id.as_str());
}

#[tokio::test]
async fn a_wildcard_subscription_covering_the_command_topic_makes_a_device_ready() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-20", "tok", false).await;
    let created = create(&b, &dev, r#"{"type":"RELOAD"}"#).await;
    let (client, mut el) = connect_v4(&b, Via::Ws, "disp-20", Some(("disp-20", "tok")))
        .await
        .unwrap();
    client
        .subscribe("device/disp-20/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let payload = next_v4(&mut el, |p| match p {
        rumqttc::Packet::Publish(p) if p.topic == "device/disp-20/command" => {
            Some(p.payload.to_vec())
        }
        _ => None,
    })
    .await;
    let cmd: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(cmd["commandId"], created.command_id.as_str());
}

#[tokio::test]
async fn an_mqtt5_device_receives_and_answers_commands() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-21", "tok", false).await;
    let created = create(&b, &dev, r#"{"type":"RELOAD","params":{"a":1}}"#).await;
    let (client, mut el) = connect_v5(&b, Via::Tcp, "disp-21", Some(("disp-21", "tok")))
        .await
        .unwrap();
    client
        .subscribe("device/disp-21/command", Q5::AtLeastOnce)
        .await
        .unwrap();
    let payload = next_v5(&mut el, |p| match p {
        P5::Publish(p) if p.topic.as_ref() == b"device/disp-21/command" => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    let cmd: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(cmd["commandId"], created.command_id.as_str());
    assert_eq!(cmd["params"], json!({"a": 1}));
    let answer = json!({"commandId": created.command_id, "success": true, "result": {"v": 5}});
    client
        .publish(
            "device/disp-21/response",
            Q5::AtLeastOnce,
            false,
            answer.to_string(),
        )
        .await
        .unwrap();
    let _driver = drive_v5(el);
    let done = wait_terminal(&b, &created.command_id).await;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(raw(&done.result), Some(json!({"v": 5})));
}

#[tokio::test]
async fn many_queued_commands_are_all_delivered_in_order() {
    const N: usize = 60;
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-22", "tok", false).await;
    let mut ids = Vec::new();
    for i in 0..N {
        let body = format!(r#"{{"type":"T{i}","params":{{"i":{i}}}}}"#);
        ids.push(create(&b, &dev, &body).await.command_id);
    }
    let mut fw = Firmware::connect(&b, "disp-22", "tok").await;
    let mut got = Vec::new();
    for _ in 0..N {
        got.push(fw.next().await.command_id().to_owned());
    }
    assert_eq!(got, ids, "every one, oldest first");
    for id in &ids {
        wait_status(&b, id, CommandStatus::Delivered).await;
        fw.complete(id, json!({})).await;
    }
    for id in &ids {
        assert_eq!(wait_terminal(&b, id).await.status, CommandStatus::Completed);
    }
    assert_eq!(b.handle.commands().stats().by_status["completed"], N as u64);
}

#[tokio::test]
async fn an_answer_without_command_id_answers_the_oldest_sent_command() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-23", "tok", false).await;
    let older = create(&b, &dev, r#"{"type":"A"}"#).await;
    let newer = create(&b, &dev, r#"{"type":"B"}"#).await;
    let mut fw = Firmware::connect(&b, "disp-23", "tok").await;
    fw.next().await;
    fw.next().await;
    wait_status(&b, &newer.command_id, CommandStatus::Delivered).await;
    fw.publish("response", br#"{"success":true,"result":{"who":"me"}}"#)
        .await;
    let done = wait_terminal(&b, &older.command_id).await;
    assert_eq!(done.status, CommandStatus::Completed);
    assert_eq!(
        get(&b, &newer.command_id).await.status,
        CommandStatus::Delivered
    );
}

#[tokio::test]
async fn a_deleted_device_has_its_commands_cancelled_and_forgotten() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-24", "tok", false).await;
    let mut events = b.handle.events().subscribe();
    let a = create(&b, &dev, r#"{"type":"A","metadata":{"m":1}}"#).await;
    let c = create(&b, &dev, r#"{"type":"C"}"#).await;
    // The create route's device cache knows it ...
    let engine = b.handle.commands();
    let miss = engine.cached_device(&dev.id).unwrap_err();
    engine.remember_device(&dev, miss).unwrap();
    assert!(engine.cached_device(&dev.id).is_ok());
    let id = dev.id.clone();
    b.store.call(move |s| s.delete_device(&id)).await.unwrap();
    b.handle.device_removed(&dev.id);
    // ... and forgets it before the delete is answered, not when the background
    // cleanup gets its turn (it cannot run before this test task yields).
    assert!(
        engine.cached_device(&dev.id).is_err(),
        "a deleted device is still cached"
    );
    let mut cancelled = Vec::new();
    for _ in 0..2 {
        let e = next_event(&mut events, |e| e.kind == "command.cancelled").await;
        assert_eq!(e.data_value()["error"], "device deleted");
        cancelled.push(e.data_value()["command_id"].as_str().unwrap().to_owned());
    }
    cancelled.sort();
    let mut want = vec![a.command_id.clone(), c.command_id.clone()];
    want.sort();
    assert_eq!(cancelled, want);
    eventually("the records to be removed", || async {
        matches!(
            b.handle.commands().get(&a.command_id).await,
            Err(CommandError::NotFound)
        )
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_commands_for_an_online_device_all_arrive() {
    const N: usize = 300;
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-25", "tok", false).await;
    let mut fw = Firmware::connect(&b, "disp-25", "tok").await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..N {
        let (engine, dev) = (b.handle.commands().clone(), dev.clone());
        burst.spawn(async move {
            let body = format!(r#"{{"type":"T{i}"}}"#);
            engine
                .create(&dev, new_command(&body), None)
                .await
                .expect("create")
                .record
                .command_id
        });
    }
    let mut ids: Vec<String> = burst.join_all().await;
    let mut got: Vec<String> = Vec::new();
    while got.len() < N {
        let batch = fw.within(Duration::from_secs(1)).await;
        if batch.is_empty() {
            break;
        }
        got.extend(batch.iter().map(|c| c.command_id().to_owned()));
    }
    ids.sort();
    got.sort();
    assert_eq!(got.len(), N, "received {} of {N} commands", got.len());
    assert_eq!(got, ids);
}

#[tokio::test]
async fn concurrent_creates_with_one_idempotency_key_make_one_command() {
    let b = TestBroker::with_config(patient()).await;
    let dev = b.add_device("disp-26", "tok", false).await;
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (engine, dev) = (b.handle.commands().clone(), dev.clone());
        creates.spawn(async move {
            let body = format!(r#"{{"type":"RELOAD","params":{{"i":{i}}}}}"#);
            engine
                .create(&dev, new_command(&body), Some("same-key".into()))
                .await
                .expect("create")
        });
    }
    let results = creates.join_all().await;
    let first: Vec<_> = results.iter().filter(|c| !c.replayed).collect();
    assert_eq!(first.len(), 1, "exactly one create made a command");
    assert!(results
        .iter()
        .all(|c| c.record.command_id == first[0].record.command_id));
    let (all, _) = b
        .handle
        .commands()
        .list(&dev.id, None, 100, None)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn ttls_and_idempotency_keys_carry_over_a_restart() {
    let cfg = config(Duration::from_secs(60), 3, Duration::from_millis(500));
    let b = TestBroker::with_config(cfg.clone()).await;
    let dev = b.add_device("disp-27", "tok", false).await;
    let keyed = b
        .handle
        .commands()
        .create(
            &dev,
            new_command(r#"{"type":"A","ttl_s":3600}"#),
            Some("restart-key".into()),
        )
        .await
        .unwrap()
        .record;
    let short = create(&b, &dev, r#"{"type":"B"}"#).await;
    let dir = b.stop().await;
    // The TTL runs out while the broker is down.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let b = TestBroker::with_config_in(cfg, dir).await;
    let done = wait_terminal(&b, &short.command_id).await;
    assert_eq!(done.status, CommandStatus::Expired);
    let again = b
        .handle
        .commands()
        .create(
            &dev,
            new_command(r#"{"type":"A"}"#),
            Some("restart-key".into()),
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.record.command_id, keyed.command_id);
    assert_eq!(again.record.status, CommandStatus::Queued);
}
