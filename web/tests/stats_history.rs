//! `GET /api/v1/stats/history` keeps its samples across a restart on the same data dir
//! (real store file, real broker and server restarted).

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::api::{test_app, test_app_in};

fn sample_times(body: &Value) -> Vec<u64> {
    let points = body["points"].as_array().expect("points");
    points
        .iter()
        .map(|p| p["at_ms"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn samples_survive_a_restart() {
    let app = test_app().await;
    // The sampler takes its first sample at start and stores it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let kept = app.store.call(|s| s.stats_samples(0)).await.unwrap();
        if let Some(first) = kept.first() {
            break first.at_ms;
        }
        assert!(tokio::time::Instant::now() < deadline, "no sample stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let before = app.get("/api/v1/stats/history").await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(sample_times(&before.body)[0], first);
    let dir = app.stop().await;

    // Samples are a millisecond-keyed table: make the restart's own first sample later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let app = test_app_in(dir).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let kept = app.store.call(|s| s.stats_samples(0)).await.unwrap();
        if kept.len() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sample after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = app.get("/api/v1/stats/history").await;
    assert_eq!(after.status, StatusCode::OK);
    let times = sample_times(&after.body);
    assert_eq!(times[0], first, "{}", after.body);
    assert!(times.len() >= 2, "{}", after.body);
    assert!(times[1] > first, "{}", after.body);
    // The counters start at zero again: no rate across the restart.
    assert_eq!(after.body["points"][1]["messages_in_per_s"], Value::Null);
    app.stop().await;
}
