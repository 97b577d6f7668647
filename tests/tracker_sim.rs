//! `tracker_sim`'s trackers (`examples/tracker_sim/sim/`) against the real binary with
//! its `[teltonika]` listener on: they log in, their packets are acked, their records
//! are queryable, and a `getinfo` sent through the admin API completes with the
//! simulated tracker's `INI:` answer.

#[path = "../examples/tracker_sim/sim/mod.rs"]
mod sim;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{free_ports, Server, POLL, WAIT};
use sim::stats::Stats;
use sim::tracker::{Pace, Settings, Tracker};

const IMEIS: [&str; 2] = ["356307042441013", "356307042441021"];

#[tokio::test]
async fn simulated_trackers_are_acked_stored_and_answer_getinfo() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_ports(1)[0];
    let server = Server::start_env(
        dir.path(),
        &[("FLEETMQ_TELTONIKA_LISTEN", &listen.to_string())],
    )
    .await;
    for imei in IMEIS {
        let body = json!({"id": imei, "plugin": "teltonika"});
        let (status, _) = server.api("POST", "/api/v1/devices", Some(body)).await;
        assert_eq!(status, 201);
    }
    let settings = Arc::new(Settings {
        addr: listen,
        pace: Pace::Every(Duration::from_millis(50)),
        records_per_packet: 4,
        record_spacing: Duration::from_millis(10),
        ack_timeout: WAIT,
        backoff: Duration::from_millis(100),
    });
    let stats = Arc::new(Stats::default());
    let cancel = CancellationToken::new();
    let logins = Arc::new(Semaphore::new(2));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, imei) in IMEIS.iter().enumerate() {
        let t = Tracker::new(
            i,
            imei.parse().unwrap(),
            settings.clone(),
            stats.clone(),
            Instant::now(),
        );
        tasks.spawn(t.run(logins.clone(), cancel.clone()));
    }
    let deadline = Instant::now() + WAIT;
    while stats.records_acked.load(Relaxed) < 40 {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            stats.snapshot(),
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }

    let path = format!("/api/v1/devices/{}/commands?wait_ms=10000", IMEIS[0]);
    let (status, cmd) = server
        .api("POST", &path, Some(json!({"type": "getinfo"})))
        .await;
    assert_eq!(
        (status, &cmd["status"]),
        (200, &json!("completed")),
        "{cmd}"
    );
    let answer = cmd["result"]["response"].as_str().unwrap_or_default();
    assert!(answer.starts_with("INI:"), "{cmd}");

    let latest = format!("/api/v1/devices/{}/telemetry/latest", IMEIS[1]);
    let (status, body) = server.api("GET", &latest, None).await;
    assert_eq!(status, 200, "{body}");
    let values = &body["values"];
    for key in ["lat", "lon", "speed", "io_239", "io_256"] {
        assert!(!values[key].is_null(), "{key} missing: {body}");
    }
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    let s = stats.snapshot();
    assert_eq!(
        (
            s.logins_refused,
            s.ack_timeouts,
            s.acks_mismatched,
            s.errors
        ),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.commands_answered, 1);
}
