//! `/api/v1/jobs` over real HTTP (SPEC §12): create, read, list, the job's commands,
//! cancel, and the refusals. The runner itself is tested in the broker crate.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use crate::api::test_app;

#[tokio::test]
async fn jobs_are_created_read_listed_and_cancelled() {
    let app = test_app().await;
    for id in ["dev-1", "dev-2", "dev-3"] {
        app.provision(id).await;
    }
    let body = json!({
        "name": "fw 2.1",
        "target": {"devices": ["dev-1", "dev-2", "dev-3"]},
        "command": {"type": "OTA", "params": {"url": "u"}, "metadata": {"ticket": "42"}},
        "rollout": {"max_in_flight": 1},
        "abort": {"failed_pct": 10, "min_done": 2},
    });
    let created = app.post("/api/v1/jobs", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let job = created.body;
    let id = job["job_id"].as_str().unwrap().to_owned();
    assert_eq!(job["status"], "running");
    assert_eq!(job["target_count"], 3);
    assert_eq!(job["finished_at"], json!(null));
    assert_eq!(job["rollout"]["max_in_flight"], 1);

    // The devices are offline: one command queued, the others wait for it.
    let path = format!("/api/v1/jobs/{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let read = loop {
        let read = app.get(&path).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.body);
        if read.body["counts"]["queued"] == 1 || Instant::now() > deadline {
            break read.body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(read["counts"]["queued"], 1, "{read}");
    assert_eq!(read["counts"]["pending"], 2, "{read}");
    let list = app.get("/api/v1/jobs").await;
    assert_eq!(list.body["items"][0]["job_id"], json!(id));
    let cmds = app.get(&format!("{path}/commands?status=queued")).await;
    assert_eq!(cmds.status, StatusCode::OK, "{}", cmds.body);
    let items = cmds.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["device_id"], "dev-1");
    assert_eq!(items[0]["metadata"], json!({"ticket": "42", "job_id": id}));
    assert_eq!(cmds.body["next_cursor"], json!(null));
    let page = app.get(&format!("{path}/commands?limit=1&cursor=1")).await;
    assert_eq!(page.body["items"], json!([]));

    let cancelled = app.delete(&path).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["counts"]["cancelled"], 1);
    assert_eq!(cancelled.body["counts"]["pending"], 2);
    assert!(cancelled.body["finished_at"].is_string());
    let again = app.delete(&path).await;
    assert_eq!(
        (again.status, again.error_code()),
        (StatusCode::CONFLICT, "conflict")
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_job_requests_are_refused() {
    let app = test_app().await;
    app.provision("dev-1").await;
    assert_eq!(
        app.get("/api/v1/jobs/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/api/v1/jobs/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/jobs/nope/commands").await.status,
        StatusCode::NOT_FOUND
    );
    for body in [
        json!({"name": "n", "target": {"label": "no-colon"}, "command": {"type": "A"}}),
        json!({"name": "n", "target": {"devices": ["ghost"]}, "command": {"type": "A"}}),
        json!({"name": "n", "target": {}, "command": {"type": "A"}}),
        json!({"name": "n", "target": {"all": true}, "command": {"type": ""}}),
    ] {
        let answer = app.post("/api/v1/jobs", body.clone()).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            answer.body
        );
    }
    let answer = app
        .post(
            "/api/v1/jobs",
            json!({"name": "n", "command": {"type": "A"}}),
        )
        .await;
    assert!(answer.status.is_client_error(), "{}", answer.body);
    let created = app
        .post(
            "/api/v1/jobs",
            json!({"name": "n", "target": {"all": true}, "command": {"type": "A"}}),
        )
        .await;
    let id = created.body["job_id"].as_str().unwrap().to_owned();
    let bad = app
        .get(&format!("/api/v1/jobs/{id}/commands?status=bogus"))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}
