//! `fleetmq job ...` against a real `fleetmq serve`: a job created for offline devices,
//! listed, shown with its counts and its commands, and cancelled. Human output, `--json`
//! and exit codes.

use crate::support;

use std::time::Duration;

use tokio::time::Instant;

use support::{Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_created_listed_shown_and_cancelled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    for id in ["job-dev-1", "job-dev-2", "job-dev-3"] {
        server.provision(id).await;
    }
    let created = server
        .run(&[
            "job",
            "create",
            "fw 2.1",
            "OTA",
            "--device",
            "job-dev-1,job-dev-2",
            "--device",
            "job-dev-3",
            "--params",
            r#"{"url":"u"}"#,
            "--metadata",
            r#"{"ticket":"42"}"#,
            "--max-in-flight",
            "2",
            "--abort-failed-pct",
            "10",
            "--abort-min-done",
            "2",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(created["status"], "running", "{created}");
    assert_eq!(created["target_count"], 3);
    assert_eq!(created["abort"]["min_done"], 2);
    let id = created["job_id"].as_str().unwrap().to_owned();

    let table = server.run(&["job", "list"]).await.ok();
    assert!(table.stdout.starts_with("JOB ID"), "{table:#?}");
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("fw 2.1"),
        "{table:#?}"
    );
    let shown = server.run(&["job", "show", &id]).await.ok();
    let line = |name: &str| {
        let found = shown.stdout.lines().find(|l| l.starts_with(name));
        found.map(|l| l[name.len()..].trim().to_owned())
    };
    assert_eq!(line("status:").as_deref(), Some("running"), "{shown:#?}");
    assert!(line("counts:").unwrap().contains("pending"), "{shown:#?}");
    // The devices are offline: two commands queued (the in-flight cap), one pending.
    let deadline = Instant::now() + WAIT;
    let queued = loop {
        let page = server
            .run(&["job", "show", &id, "--status", "queued", "--json"])
            .await
            .ok()
            .json();
        if page["items"].as_array().map(Vec::len) == Some(2) || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(queued["items"].as_array().unwrap().len(), 2, "{queued}");
    assert_eq!(queued["items"][0]["metadata"]["job_id"], id.as_str());

    let cancelled = server
        .run(&["job", "cancel", &id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["counts"]["cancelled"], 2);
    assert_eq!(cancelled["counts"]["pending"], 1);
    let again = server.run(&["job", "cancel", &id]).await;
    assert_eq!(again.code, 1, "{again:#?}");

    let usage = server.run(&["job", "create", "n", "A"]).await;
    assert_eq!(usage.code, 2, "no target: {usage:#?}");
    let bad = server
        .run(&["job", "create", "n", "A", "--label", "none:here"])
        .await;
    assert_eq!(bad.code, 1, "matches no device: {bad:#?}");
}
