//! SPEC §5 under load, end to end: many commands created at once share the engine's
//! group-committed transactions, and still none reaches its device before its send is
//! stored, and every one is answered through the connection's direct path to the engine
//! (PUBACK → `delivered`, answer → `completed`).

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::commands::{CommandStatus, NewCommand};
use fleetmq_broker::BrokerConfig;
use serde_json::json;

const DEVICES: usize = 8;
const PER_DEVICE: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_are_stored_before_they_are_sent_and_all_complete() {
    let mut config = BrokerConfig::for_tests();
    config.fleet.commands.timeout = Duration::from_secs(60);
    let b = TestBroker::with_config(config).await;
    let mut devices = Vec::new();
    let mut firmware = tokio::task::JoinSet::new();
    for i in 0..DEVICES {
        let id = format!("batch-{i}");
        devices.push(b.add_device(&id, "tok", false).await);
        let mut fw = Firmware::connect(&b, &id, "tok").await;
        let engine = b.handle.commands().clone();
        firmware.spawn(async move {
            for _ in 0..PER_DEVICE {
                let cmd = fw.next().await;
                let id = cmd.command_id().to_owned();
                // What the store has committed when the device has the command.
                let stored = engine.get(&id).await.expect("stored before it was sent");
                assert!(
                    matches!(
                        stored.status,
                        CommandStatus::Sent | CommandStatus::Delivered
                    ),
                    "{stored:?}"
                );
                fw.complete(&id, json!({"ok": true})).await;
            }
            fw
        });
    }

    let mut creates = tokio::task::JoinSet::new();
    for n in 0..DEVICES * PER_DEVICE {
        let (engine, dev) = (b.handle.commands().clone(), devices[n % DEVICES].clone());
        creates.spawn(async move {
            let body = format!(r#"{{"type":"T{n}","supersede":false}}"#);
            let req: NewCommand = serde_json::from_str(&body).expect("valid body");
            let created = engine.create_and_wait(&dev, req, None, WAIT).await;
            created.expect("create").record
        });
    }
    while let Some(done) = creates.join_next().await {
        let view = done.expect("create task");
        assert_eq!(view.status, CommandStatus::Completed, "{view:?}");
        assert!(view.delivered_at.is_some(), "PUBACK seen: {view:?}");
    }
    while let Some(fw) = firmware.join_next().await {
        fw.expect("device task");
    }
    let stats = b.handle.commands().stats();
    assert_eq!(stats.by_status["completed"], (DEVICES * PER_DEVICE) as u64);
    assert_eq!(stats.unknown_responses + stats.late_responses, 0);
}
