//! `fleetmq key ...` and `fleetmq audit` against a real `fleetmq serve`.

use crate::support;

use std::time::Duration;

use tokio::time::Instant;

use support::cli::run;
use support::{Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_used_listed_and_revoked_and_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;

    let out = server
        .run(&["key", "create", "watcher", "--role", "viewer"])
        .await
        .ok();
    assert!(
        out.stdout.contains("role:") && out.stdout.contains("viewer"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("shown only this once"), "{out:#?}");
    let secret = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("secret:"))
        .expect("a secret line")
        .trim()
        .to_owned();

    let out = server
        .run(&["key", "create", "ops", "--role", "operator", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["key"]["role"], "operator");

    // The viewer reads, and is refused a change (exit 1, the API's 403).
    let mut as_viewer = server.cli(&["device", "list"]);
    as_viewer.env("FLEETMQ_API_KEY", &secret);
    run(as_viewer).await.ok();
    let mut as_viewer = server.cli(&["device", "add", "d1"]);
    as_viewer.env("FLEETMQ_API_KEY", &secret);
    let refused = run(as_viewer).await;
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(refused.stderr.contains("403 forbidden"), "{refused:#?}");

    let out = server.run(&["key", "list"]).await.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("admin ") && l.contains("built-in")),
        "{out:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("watcher ") && l.contains("viewer")),
        "{out:#?}"
    );
    assert!(!out.stdout.contains(&secret));

    let out = server.run(&["key", "delete", "watcher"]).await.ok();
    assert!(out.stdout.contains("revoked watcher"), "{out:#?}");
    let gone = server.run(&["key", "delete", "watcher"]).await;
    assert_eq!(gone.code, 1, "{gone:#?}");
    let last = server.run(&["key", "delete", "admin"]).await;
    assert_eq!(last.code, 1, "the last admin key stays: {last:#?}");
    assert!(last.stderr.contains("409"), "{last:#?}");

    // Written off the request path: wait for the five changes to be recorded.
    let deadline = Instant::now() + WAIT;
    let entries = loop {
        let out = server.run(&["audit", "--json"]).await.ok();
        let items = out.json()["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 6 || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen: Vec<(String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("admin", 409),
        ("admin", 404),
        ("admin", 204),
        ("watcher", 403),
        ("admin", 201),
        ("admin", 201),
    ];
    let expected: Vec<(String, u64)> = expected.iter().map(|(k, s)| (k.to_string(), *s)).collect();
    assert_eq!(seen, expected);

    let out = server.run(&["audit", "--limit", "2"]).await.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("AT"), "{out:#?}");
    assert_eq!(lines.len(), 3, "{out:#?}");
    assert!(
        lines[1].contains("DELETE") && lines[1].contains("/api/v1/keys/{name}"),
        "{out:#?}"
    );
}
