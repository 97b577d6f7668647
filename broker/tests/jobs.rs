//! SPEC §12 end to end: jobs over real provisioned devices, some connected as firmware
//! that answers its commands, with rollout timing shortened through the config.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::commands::CommandStatus;
use fleetmq_broker::fleet::events::FleetEvent;
use fleetmq_broker::fleet::jobs::{JobError, JobView, NewJob};
use fleetmq_broker::BrokerConfig;
use serde_json::json;
use tokio::sync::broadcast;

/// Commands each device received: device id → command ids, in arrival order.
type Received = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

fn config(minute: Duration) -> BrokerConfig {
    let mut config = BrokerConfig::for_tests();
    config.fleet.commands.timeout = Duration::from_secs(60);
    config.fleet.jobs.minute = minute;
    config.fleet.jobs.retry = Duration::from_millis(50);
    config
}

fn new_job(body: serde_json::Value) -> NewJob {
    serde_json::from_value(body).expect("a valid job body")
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

async fn provision(b: &TestBroker, ids: &[String]) {
    for id in ids {
        b.add_device(id, "tok", false).await;
    }
}

/// Connects `id` as firmware that answers every command it gets (`success: false` when
/// `fail`), recording what it received.
async fn answering(b: &TestBroker, id: &str, fail: bool, received: &Received) {
    let mut fw = Firmware::connect(b, id, "tok").await;
    let received = received.clone();
    tokio::spawn(async move {
        loop {
            for cmd in fw.within(Duration::from_millis(20)).await {
                let cid = cmd.command_id().to_owned();
                let first = {
                    let mut r = received.lock().unwrap();
                    let list = r.entry(fw.id.clone()).or_default();
                    let first = !list.contains(&cid);
                    list.push(cid.clone());
                    first
                };
                if first {
                    if fail {
                        fw.fail(&cid, "nope").await;
                    } else {
                        fw.complete(&cid, json!({"ok": true})).await;
                    }
                }
            }
        }
    });
}

async fn job(b: &TestBroker, id: &str) -> JobView {
    b.handle.jobs().get(id).await.expect("job exists")
}

async fn wait_job(b: &TestBroker, id: &str, what: &str, ok: impl Fn(&JobView) -> bool) -> JobView {
    eventually(&format!("job {id}: {what}"), || async {
        let v = job(b, id).await;
        ok(&v).then_some(v)
    })
    .await
}

fn total(v: &JobView) -> u64 {
    let c = v.counts;
    c.pending
        + c.queued
        + c.sent
        + c.delivered
        + c.completed
        + c.failed
        + c.expired
        + c.cancelled
        + c.superseded
}

fn created(v: &JobView) -> u64 {
    u64::from(v.target_count) - v.counts.pending
}

/// The next `kind` event (tolerating a lagging receiver: command events are many).
async fn job_event(rx: &mut broadcast::Receiver<FleetEvent>, kind: &str) -> FleetEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Ok(e) if e.kind == kind => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} event in time"))
}

#[tokio::test]
async fn a_job_aborts_at_its_threshold_and_cancels_the_rest() {
    let b = TestBroker::with_config(config(Duration::from_millis(200))).await;
    let all = ids("ab", 200);
    provision(&b, &all).await;
    let received = Received::default();
    // The first 20 devices are online; every other one of them fails its command.
    for (i, id) in all.iter().take(20).enumerate() {
        answering(&b, id, i % 2 == 1, &received).await;
    }
    let mut events = b.handle.events().subscribe();
    let created = b
        .handle
        .jobs()
        .create(new_job(json!({
            "name": "half fail",
            "target": {"all": true},
            "command": {"type": "OTA", "params": {"v": 2}, "metadata": {"ticket": "42"}},
            "rollout": {"per_minute": 100, "max_in_flight": 40},
            "abort": {"failed_pct": 30, "min_done": 10},
        })))
        .await
        .expect("create job");
    assert_eq!(created.status, "running");
    assert_eq!(created.target_count, 200);
    assert_eq!(
        created.command["metadata"],
        json!({"ticket": "42", "job_id": created.job_id})
    );

    let event = job_event(&mut events, "job.aborted").await;
    assert_eq!(event.data_value()["job_id"], json!(created.job_id));
    let v = job(&b, &created.job_id).await;
    assert_eq!(v.status, "aborted");
    assert!(v.finished_at.is_some());
    assert_eq!(total(&v), 200, "{v:?}");
    let c = v.counts;
    // Nothing is left open, and what had not been created never will be.
    assert_eq!((c.queued, c.sent, c.delivered), (0, 0, 0), "{v:?}");
    assert!(c.failed >= 3, "{v:?}");
    assert!(
        c.cancelled > 0,
        "the offline devices' commands are cancelled: {v:?}"
    );
    assert!(c.pending >= 200 - 20 - 40, "{v:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = job(&b, &created.job_id).await;
    assert_eq!(later.counts, v.counts, "an aborted job stays still");

    // Every failed command is the job's, with its metadata.
    let (failed, next) = b
        .handle
        .jobs()
        .commands(&created.job_id, Some(CommandStatus::Failed), 1000, None)
        .await
        .unwrap();
    assert_eq!(failed.len() as u64, c.failed);
    assert!(next.is_none());
    for cmd in &failed {
        let meta: serde_json::Value =
            serde_json::from_str(cmd.metadata.as_ref().unwrap().get()).unwrap();
        assert_eq!(meta["job_id"], json!(created.job_id));
    }
    // No device received more than one command.
    for (dev, got) in received.lock().unwrap().iter() {
        let distinct: BTreeSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 1, "{dev} got {got:?}");
    }
    let err = b.handle.jobs().cancel(&created.job_id).await.unwrap_err();
    assert!(matches!(err, JobError::NotRunning(..)), "{err}");
}

#[tokio::test]
async fn rollout_paces_per_minute_and_in_flight_and_cancel_stops_it() {
    let b = TestBroker::with_config(config(Duration::from_millis(400))).await;
    let all = ids("pace", 12);
    provision(&b, &all).await;
    let jobs = b.handle.jobs();
    // per_minute: 5 at once, then 5 more a "minute" later. The devices are offline.
    let paced = jobs
        .create(new_job(json!({
            "name": "paced", "target": {"devices": all},
            "command": {"type": "PING"}, "rollout": {"per_minute": 5},
        })))
        .await
        .unwrap();
    let v = wait_job(&b, &paced.job_id, "5 created", |v| created(v) == 5).await;
    assert_eq!(v.counts.queued, 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        created(&job(&b, &paced.job_id).await),
        5,
        "within the minute"
    );
    wait_job(&b, &paced.job_id, "10 created", |v| created(v) == 10).await;
    wait_job(&b, &paced.job_id, "all created", |v| created(v) == 12).await;
    assert_eq!(
        job(&b, &paced.job_id).await.status,
        "running",
        "queued is not terminal"
    );

    // max_in_flight: 3 open commands, then it waits for one to end.
    let capped = jobs
        .create(new_job(json!({
            "name": "capped", "target": {"devices": all},
            "command": {"type": "OTHER"}, "rollout": {"max_in_flight": 3},
        })))
        .await
        .unwrap();
    wait_job(&b, &capped.job_id, "3 created", |v| created(v) == 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(created(&job(&b, &capped.job_id).await), 3);
    // Cancelling one of its commands frees a slot.
    let (open, _) = jobs.commands(&capped.job_id, None, 10, None).await.unwrap();
    b.handle
        .commands()
        .cancel(&open[0].command_id)
        .await
        .unwrap();
    wait_job(&b, &capped.job_id, "4 created", |v| created(v) == 4).await;

    let mut events = b.handle.events().subscribe();
    let cancelled = jobs.cancel(&capped.job_id).await.unwrap();
    assert_eq!(cancelled.status, "cancelled");
    let c = cancelled.counts;
    assert_eq!(
        (c.pending, c.queued, c.cancelled),
        (8, 0, 4),
        "{cancelled:?}"
    );
    let event = job_event(&mut events, "job.cancelled").await;
    assert_eq!(event.data_value()["counts"]["cancelled"], json!(4));
    assert!(matches!(
        jobs.cancel(&capped.job_id).await,
        Err(JobError::NotRunning(..))
    ));
    assert!(matches!(jobs.get("nope").await, Err(JobError::NotFound)));
    // The paced job's commands were superseded by nothing: they are of another type.
    assert_eq!(job(&b, &paced.job_id).await.counts.queued, 12);
}

#[tokio::test]
async fn a_job_over_a_label_completes_with_its_event() {
    let b = TestBroker::with_config(config(Duration::from_millis(200))).await;
    let all = ids("lbl", 6);
    provision(&b, &all).await;
    for id in all.iter().take(4) {
        let id: fleetmq_storage::DeviceId = id.parse().unwrap();
        let labels = BTreeMap::from([("model".to_owned(), "x1".to_owned())]);
        b.store
            .call(move |s| s.set_device_labels(&id, labels))
            .await
            .unwrap();
    }
    let received = Received::default();
    for id in &all {
        answering(&b, id, false, &received).await;
    }
    let mut events = b.handle.events().subscribe();
    let j = b
        .handle
        .jobs()
        .create(new_job(json!({
            "name": "x1 only", "target": {"label": "model:x1"}, "command": {"type": "RELOAD"},
        })))
        .await
        .unwrap();
    assert_eq!(j.target_count, 4);
    let event = job_event(&mut events, "job.completed").await;
    assert_eq!(event.data_value()["counts"]["completed"], json!(4));
    let v = job(&b, &j.job_id).await;
    assert_eq!(v.status, "completed");
    assert_eq!(v.counts.completed, 4);
    let got = received.lock().unwrap().clone();
    let devices: Vec<_> = got.keys().cloned().collect();
    assert_eq!(devices, all[..4], "only the labelled devices");
    assert!(got.values().all(|c| c.len() == 1), "{got:?}");

    // Bad requests are refused before anything is stored.
    let jobs = b.handle.jobs();
    for body in [
        json!({"name": "n", "target": {"label": "model:none"}, "command": {"type": "A"}}),
        json!({"name": "n", "target": {"devices": ["missing"]}, "command": {"type": "A"}}),
        json!({"name": "n", "target": {"all": true, "label": "a:b"}, "command": {"type": "A"}}),
        json!({"name": "", "target": {"all": true}, "command": {"type": "A"}}),
        json!({"name": "n", "target": {"all": true}, "command": {"type": "A", "metadata": 1}}),
        json!({"name": "n", "target": {"all": true}, "command": {"type": "A", "bogus": 1}}),
        json!({"name": "n", "target": {"all": true}, "command": {"type": "A"},
               "rollout": {"per_minute": 0}}),
        json!({"name": "n", "target": {"all": true}, "command": {"type": "A"},
               "abort": {"failed_pct": 101}}),
    ] {
        let err = jobs.create(new_job(body.clone())).await.unwrap_err();
        assert!(matches!(err, JobError::Invalid(_)), "{body}: {err}");
    }
    assert_eq!(jobs.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_job_resumes_after_a_restart_without_repeating_or_skipping_a_device() {
    // A long "minute": the job stops after its first 10 commands until the restart.
    let b = TestBroker::with_config(config(Duration::from_secs(3_600))).await;
    let all = ids("rs", 30);
    provision(&b, &all).await;
    let j = b
        .handle
        .jobs()
        .create(new_job(json!({
            "name": "resume", "target": {"devices": all},
            "command": {"type": "OTA", "metadata": {"k": 1}}, "rollout": {"per_minute": 10},
        })))
        .await
        .unwrap();
    wait_job(&b, &j.job_id, "10 created", |v| created(v) == 10).await;
    // A crash between creating the 11th command and recording it: the command exists
    // (created with the job's key for that device), the job's progress does not say so.
    let eleventh = b.store.call({
        let id = all[10].parse().unwrap();
        move |s| s.get_device(&id)
    });
    let eleventh = eleventh.await.unwrap().unwrap();
    let body = json!({"type": "OTA", "metadata": {"k": 1, "job_id": j.job_id}});
    let orphan = b
        .handle
        .commands()
        .create(
            &eleventh,
            serde_json::from_value(body).unwrap(),
            Some(format!("job:{}", j.job_id)),
        )
        .await
        .unwrap()
        .record;
    let before = job(&b, &j.job_id).await;
    assert_eq!(created(&before), 10);
    let dir = b.stop().await;

    let b = TestBroker::with_config_in(config(Duration::from_millis(100)), dir).await;
    let received = Received::default();
    for id in &all {
        answering(&b, id, false, &received).await;
    }
    let v = wait_job(&b, &j.job_id, "completed", |v| v.status == "completed").await;
    assert_eq!(v.counts.completed, 30, "{v:?}");
    assert_eq!(total(&v), 30);
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 30, "every device got the job's command: {got:?}");
    for (dev, cmds) in &got {
        let distinct: BTreeSet<_> = cmds.iter().collect();
        assert_eq!(distinct.len(), 1, "{dev} got {cmds:?}");
    }
    assert_eq!(
        got[&all[10]],
        std::slice::from_ref(&orphan.command_id),
        "the orphan was adopted"
    );
    let (cmds, _) = b
        .handle
        .jobs()
        .commands(&j.job_id, None, 1000, None)
        .await
        .unwrap();
    let devices: Vec<_> = cmds.iter().map(|c| c.device_id.to_string()).collect();
    assert_eq!(devices, all);
}
