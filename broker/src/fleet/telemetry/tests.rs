//! The telemetry service on a real redb file: batching, queries, retention, overload,
//! restart, and a throughput benchmark (`#[ignore]`).

use std::path::{Path, PathBuf};
use std::time::Instant as StdInstant;

use fleetmq_device_plugins::PluginRegistry;
use fleetmq_storage::now_ms;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tempfile::TempDir;

use super::*;

const WAIT: Duration = Duration::from_secs(20);

pub(super) fn id(s: &str) -> DeviceId {
    s.parse().expect("valid test device id")
}

pub(super) fn json() -> Arc<dyn DevicePlugin> {
    PluginRegistry::builtin().get("json").expect("json plugin")
}

fn open_db(path: &Path) -> Arc<Database> {
    let db = Database::create(path).expect("create db");
    let txn = db.begin_write().expect("begin");
    store::create_tables(&txn).expect("init tables");
    txn.commit().expect("commit");
    Arc::new(db)
}

/// No sweeping beyond the one at start, unless a test asks for it.
pub(super) fn quiet() -> TelemetryConfig {
    TelemetryConfig {
        sweep_every: Duration::from_secs(3_600),
        ..TelemetryConfig::default()
    }
}

pub(super) struct Harness {
    dir: TempDir,
    db: Arc<Database>,
    pub(super) t: Telemetry,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Harness {
    pub(super) fn start(config: TelemetryConfig) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        Harness::start_in(dir, config)
    }

    fn start_in(dir: TempDir, config: TelemetryConfig) -> Harness {
        let db = open_db(&dir.path().join("t.redb"));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let t = Telemetry::start(db.clone(), config, shutdown.clone(), &tracker);
        Harness {
            dir,
            db,
            t,
            shutdown,
            tracker,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("t.redb")
    }

    pub(super) async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(WAIT, self.tracker.wait())
            .await
            .expect("tasks stop");
    }

    pub(super) fn offer(&self, device: &str, payload: &str, at_ms: u64) -> Result<(), Rejected> {
        self.t
            .offer(&id(device), json().as_ref(), payload.as_bytes(), at_ms)
    }

    pub(super) async fn count(&self, device: &str) -> u64 {
        self.t.count(&id(device)).await.expect("count")
    }
}

async fn wait_for_sweeps(t: &Telemetry, at_least: u64) {
    let mut rx = t.shared.sweeps.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|&n| n >= at_least))
        .await
        .expect("sweeper ran")
        .expect("sweeper alive");
}

fn sweeps(t: &Telemetry) -> u64 {
    *t.shared.sweeps.borrow()
}

// ---- config ----------------------------------------------------------------------

#[test]
fn config_defaults_and_validation() {
    let c = RawTelemetryConfig::default().validate().unwrap();
    assert_eq!(c, TelemetryConfig::default());
    assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.max_points_per_device, 100_000);

    let raw: RawTelemetryConfig =
        serde_json::from_str(r#"{"retention_days":30,"max_points_per_device":5}"#).unwrap();
    let c = raw.validate().unwrap();
    assert_eq!(c.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(c.max_points_per_device, 5);

    let bad = |j: &str| {
        serde_json::from_str::<RawTelemetryConfig>(j)
            .unwrap()
            .validate()
            .unwrap_err()
            .key
    };
    assert_eq!(bad(r#"{"retention_days":0}"#), "telemetry.retention_days");
    assert_eq!(
        bad(r#"{"max_points_per_device":0}"#),
        "telemetry.max_points_per_device"
    );
    let unknown = serde_json::from_str::<RawTelemetryConfig>(r#"{"retention":1}"#).unwrap_err();
    assert!(unknown.to_string().contains("retention"), "{unknown}");
}

#[test]
fn parse_time_accepts_rfc3339_and_unix_ms() {
    assert_eq!(
        TelemetryQuery::parse_time("1700000000000"),
        Some(1_700_000_000_000)
    );
    assert_eq!(
        TelemetryQuery::parse_time("2023-11-14T22:13:20.000Z"),
        Some(1_700_000_000_000)
    );
    for bad in [
        "",
        "-5",
        "1969-12-31T23:59:59Z",
        "yesterday",
        "99999999999999999999999",
    ] {
        assert_eq!(TelemetryQuery::parse_time(bad), None, "{bad:?}");
    }
}

#[test]
fn max_ts_is_the_last_formattable_instant() {
    let max = i64::try_from(MAX_TS_MS).unwrap();
    assert_eq!(
        rfc3339::format_utc_ms(max).as_deref(),
        Some("9999-12-31T23:59:59.999Z")
    );
    assert_eq!(rfc3339::format_utc_ms(max + 1), None);
    let err = decode(&id("d"), json().as_ref(), b"{}", MAX_TS_MS + 1).unwrap_err();
    assert!(
        matches!(err, PluginError::InvalidField { field: "ts", .. }),
        "{err:?}"
    );
    assert!(decode(&id("d"), json().as_ref(), b"{}", MAX_TS_MS).is_ok());
}

// ---- ingest ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_batched_into_few_commits() {
    // A long delay: batches end only when full or flushed, so the count is exact.
    let h = Harness::start(TelemetryConfig {
        batch_max: 1_000,
        batch_delay: Duration::from_secs(3_600),
        ..quiet()
    });
    let now = now_ms();
    let n = 5_000u64;
    for i in 0..n {
        let device = format!("dev-{}", i % 50);
        h.offer(&device, &format!(r#"{{"n":{i}}}"#), now + i)
            .unwrap();
    }
    h.t.flush().await;
    let s = h.t.stats();
    assert_eq!(s.stored, n);
    assert_eq!(
        s.dropped_queue_full + s.rejected + s.dropped_write_failed,
        0
    );
    assert_eq!(s.batches, 5, "{s:?}");
    assert_eq!(s.queued, 0);
    let mut total = 0;
    for d in 0..50 {
        total += h.count(&format!("dev-{d}")).await;
    }
    assert_eq!(total, n);
    h.stop().await;
}

#[tokio::test]
async fn flush_with_nothing_queued_returns() {
    let h = Harness::start(quiet());
    h.t.flush().await;
    assert_eq!(h.t.stats().batches, 0);
    h.stop().await;
    // After shutdown, flush returns at once.
    h.t.flush().await;
}

#[tokio::test]
async fn bad_payloads_are_rejected_and_counted() {
    let h = Harness::start(quiet());
    let now = now_ms();
    for payload in [
        &b"not json"[..],
        b"[1,2]",
        b"",
        b"\xff\xfe",
        b"42",
        b"{\"a\":",
    ] {
        let err =
            h.t.offer(&id("d"), json().as_ref(), payload, now)
                .unwrap_err();
        assert!(
            matches!(err, Rejected::NotJson { .. }),
            "{payload:?}: {err:?}"
        );
    }
    h.offer("d", r#"{"ok":true}"#, now).unwrap();
    h.t.flush().await;
    let s = h.t.stats();
    assert_eq!((s.rejected, s.stored), (6, 1));
    assert_eq!(h.count("d").await, 1);
    h.stop().await;
}

/// `telemetry.store = false`: every payload is still checked (refused ones counted and
/// reported to the caller for `device.bad_payload`), none is stored.
#[tokio::test]
async fn with_storage_off_payloads_are_checked_and_not_stored() {
    let h = Harness::start(TelemetryConfig {
        store: false,
        ..quiet()
    });
    let now = now_ms();
    h.offer("d", r#"{"cpu":40}"#, now).unwrap();
    h.offer("d", r#"{"cpu":41,"ts":"2024-03-01T12:34:56Z"}"#, now)
        .unwrap();
    let err = h.offer("d", "not json", now).unwrap_err();
    assert!(matches!(err, Rejected::NotJson { .. }), "{err:?}");
    // A timestamp RFC 3339 cannot show is refused as when storing.
    let err = h.offer("d", "{}", MAX_TS_MS + 1).unwrap_err();
    assert!(matches!(err, Rejected::NotJson { .. }), "{err:?}");
    h.t.flush().await;
    let s = h.t.stats();
    assert_eq!(
        (s.not_stored, s.rejected, s.stored, s.batches),
        (2, 2, 0, 0)
    );
    assert_eq!(h.count("d").await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_and_counts_without_blocking() {
    let h = Harness::start(TelemetryConfig {
        queue: 4,
        batch_max: 2,
        batch_delay: Duration::ZERO,
        ..quiet()
    });
    // Hold redb's single write transaction so the writer's first commit waits.
    let blocker = h.db.begin_write().unwrap();
    let now = now_ms();
    let (mut accepted, mut dropped) = (0u64, 0u64);
    for i in 0..100 {
        match h.offer("d", &format!(r#"{{"i":{i}}}"#), now) {
            Ok(()) => accepted += 1,
            Err(Rejected::QueueFull) => dropped += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(dropped >= 90, "accepted {accepted}, dropped {dropped}");
    assert_eq!(h.t.stats().dropped_queue_full, dropped);
    drop(blocker);
    h.t.flush().await;
    assert_eq!(h.t.stats().stored, accepted);
    assert_eq!(h.count("d").await, accepted);
    // Capacity is back.
    h.offer("d", r#"{"i":-1}"#, now).unwrap();
    h.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn decode_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..128), at in any::<u64>()) {
        let _ = decode(&id("d"), json().as_ref(), &payload, at);
    }
}

#[test]
fn offer_never_panics_on_arbitrary_payloads() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(async { Harness::start(quiet()) });
    let json_like = r#"\{(("[a-z]{0,3}"|"ts"):(-?[0-9]{1,22}(\.[0-9]{1,3})?(e[0-9]{1,3})?|"[ -~]{0,24}"|true|null|\[[0-9,]{0,4}\]|\{("x":1)?\}),?){0,5}\}"#;
    let payloads = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        json_like.prop_map(String::into_bytes),
    ];
    let mut runner = TestRunner::new(ProptestConfig::with_cases(2_000));
    let offered = AtomicU64::new(0);
    runner
        .run(
            &(payloads, prop_oneof![0..=MAX_TS_MS, any::<u64>()]),
            |(payload, at)| {
                offered.fetch_add(1, Relaxed);
                let _ = h.t.offer(&id("fuzz"), json().as_ref(), &payload, at);
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(h.t.flush());
    let s = h.t.stats();
    assert_eq!(
        s.stored + s.rejected + s.dropped_queue_full + s.dropped_write_failed,
        offered.load(Relaxed)
    );
    assert!(s.stored > 0 && s.rejected > 0, "{s:?}");
    // Whatever was stored reads back.
    let page = rt
        .block_on(h.t.query(
            &id("fuzz"),
            TelemetryQuery {
                limit: MAX_LIMIT,
                ..TelemetryQuery::default()
            },
        ))
        .unwrap();
    assert!(!page.items.is_empty());
    rt.block_on(h.stop());
}

// ---- reads -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_pages_newest_first_with_range_keys_and_cursor() {
    let h = Harness::start(quiet());
    let base = now_ms() - 10_000;
    for i in 0..3_000u64 {
        let payload = if i % 2 == 0 {
            format!(r#"{{"n":{i},"even":true,"s":"x"}}"#)
        } else {
            format!(r#"{{"n":{i}}}"#)
        };
        h.offer("q", &payload, base + i).unwrap();
    }
    h.offer("other", r#"{"n":-1}"#, base).unwrap();
    h.t.flush().await;
    let d = id("q");

    // All of it, in pages of at most MAX_LIMIT (a larger limit is clamped).
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            h.t.query(
                &d,
                TelemetryQuery {
                    limit: 5_000,
                    cursor: cursor.take(),
                    ..TelemetryQuery::default()
                },
            )
            .await
            .unwrap();
        assert!(page.items.len() <= MAX_LIMIT);
        seen.extend(page.items.iter().map(|p| p.values["n"].as_u64().unwrap()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, (0..3_000).rev().collect::<Vec<u64>>());

    // Range, key filter and limit together.
    let page =
        h.t.query(
            &d,
            TelemetryQuery {
                from_ms: Some(base + 100),
                to_ms: Some(base + 200),
                keys: Some(vec!["even".into(), "missing".into()]),
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 10);
    assert_eq!(page.items[0].ts_ms, base + 200);
    assert_eq!(page.items[9].ts_ms, base + 182);
    assert!(page.next_cursor.is_some());
    let first = &page.items[0];
    assert_eq!(
        Value::Object(first.values.clone()),
        serde_json::json!({"even": true})
    );
    let expected_ts = rfc3339::format_utc_ms(i64::try_from(base + 200).unwrap()).unwrap();
    assert_eq!(first.ts, expected_ts);
    assert!(first.ts.ends_with('Z'));
    // The JSON shape the API serves.
    let v = serde_json::to_value(&page).unwrap();
    assert_eq!(v["items"][0]["values"]["even"], true);
    assert!(v["next_cursor"].is_string());

    // Errors.
    let err =
        h.t.query(
            &d,
            TelemetryQuery {
                cursor: Some("garbage".into()),
                ..TelemetryQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TelemetryError::InvalidCursor), "{err:?}");
    let err =
        h.t.query(
            &d,
            TelemetryQuery {
                from_ms: Some(2),
                to_ms: Some(1),
                ..TelemetryQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TelemetryError::InvalidQuery(_)), "{err:?}");
    // An unknown device has an empty history.
    let page =
        h.t.query(&id("nobody"), TelemetryQuery::default())
            .await
            .unwrap();
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    h.stop().await;
}

#[tokio::test]
async fn latest_has_the_newest_value_of_every_key() {
    let h = Harness::start(quiet());
    let now = now_ms();
    h.offer(
        "d",
        r#"{"cpu":40,"disk":{"free":3},"name":"a"}"#,
        now - 2_000,
    )
    .unwrap();
    h.offer("d", r#"{"cpu":41}"#, now - 1_000).unwrap();
    // A device timestamp older than what is stored does not replace it.
    h.offer("d", &format!(r#"{{"cpu":1,"ts":{}}}"#, now - 5_000), now)
        .unwrap();
    h.t.flush().await;
    let l = h.t.latest(&id("d")).await.unwrap();
    assert_eq!(l.keys().collect::<Vec<_>>(), ["cpu", "disk", "name"]);
    assert_eq!(l["cpu"].value, serde_json::json!(41));
    assert_eq!(l["cpu"].ts_ms, now - 1_000);
    assert_eq!(l["disk"].value, serde_json::json!({"free": 3}));
    assert_eq!(l["name"].ts_ms, now - 2_000);
    assert_eq!(
        l["name"].ts,
        rfc3339::format_utc_ms(i64::try_from(now - 2_000).unwrap()).unwrap()
    );
    assert!(h.t.latest(&id("nobody")).await.unwrap().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn forget_device_removes_queued_and_stored_points() {
    let h = Harness::start(quiet());
    let now = now_ms();
    for i in 0..20 {
        h.offer("gone", &format!(r#"{{"i":{i}}}"#), now).unwrap();
        h.offer("kept", &format!(r#"{{"i":{i}}}"#), now).unwrap();
    }
    // Not flushed: forget_device must still catch what is queued.
    assert_eq!(h.t.forget_device(&id("gone")).await.unwrap(), 20);
    assert_eq!(h.count("gone").await, 0);
    assert!(h.t.latest(&id("gone")).await.unwrap().is_empty());
    assert_eq!(h.count("kept").await, 20);
    h.stop().await;
}

// ---- retention ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_enforces_age_and_count() {
    let h = Harness::start(TelemetryConfig {
        retention: Duration::from_secs(60),
        max_points_per_device: 10,
        sweep_every: Duration::from_millis(10),
        ..TelemetryConfig::default()
    });
    let now = now_ms();
    for i in 0..5 {
        h.offer("aged", &format!(r#"{{"i":{i}}}"#), now - 120_000 + i)
            .unwrap();
    }
    for i in 0..3 {
        h.offer("aged", &format!(r#"{{"i":{i}}}"#), now + i)
            .unwrap();
    }
    for i in 0..30 {
        h.offer("chatty", &format!(r#"{{"i":{i}}}"#), now - 1_000 + i)
            .unwrap();
    }
    h.t.flush().await;
    // Two more sweeps: at least one started after the flush.
    wait_for_sweeps(&h.t, sweeps(&h.t) + 2).await;
    assert_eq!(h.count("aged").await, 3);
    assert_eq!(h.count("chatty").await, 10);
    let page =
        h.t.query(&id("chatty"), TelemetryQuery::default())
            .await
            .unwrap();
    let kept: Vec<u64> = page
        .items
        .iter()
        .map(|p| p.values["i"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, (20..30).rev().collect::<Vec<u64>>());
    assert_eq!(h.t.stats().swept, 5 + 20);
    h.stop().await;
}

#[tokio::test]
async fn sweep_now_removes_expired_latest_values() {
    let h = Harness::start(TelemetryConfig {
        retention: Duration::from_secs(60),
        ..quiet()
    });
    let now = now_ms();
    h.offer("d", r#"{"old":1}"#, now - 120_000).unwrap();
    h.offer("d", r#"{"new":1}"#, now).unwrap();
    h.t.flush().await;
    // The sweep at start may already have run after the flush; either way one point goes.
    h.t.sweep_now().await.unwrap();
    assert_eq!(h.t.stats().swept, 1);
    assert_eq!(h.count("d").await, 1);
    let l = h.t.latest(&id("d")).await.unwrap();
    assert_eq!(l.keys().collect::<Vec<_>>(), ["new"]);
    h.stop().await;
}

// ---- lifecycle -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_the_queue_and_restart_keeps_points() {
    let h = Harness::start(TelemetryConfig {
        batch_delay: Duration::from_secs(3_600),
        ..quiet()
    });
    let now = now_ms();
    for i in 0..100u64 {
        h.offer("d", &format!(r#"{{"i":{i}}}"#), now + i).unwrap();
    }
    // No flush: shutdown itself must commit what is queued.
    h.stop().await;
    assert_eq!(h.t.stats().stored, 100);
    assert_eq!(
        h.offer("d", r#"{"late":1}"#, now),
        Err(Rejected::ShuttingDown)
    );
    assert_eq!(h.t.stats().dropped_shutdown, 1);

    let path = h.path();
    let Harness { dir, db, t, .. } = h;
    drop((db, t));
    let reopened = open_db(&path);
    assert_eq!(store::count(&reopened, &id("d")).unwrap(), 100);
    drop(reopened);

    let h = Harness::start_in(dir, quiet());
    let page =
        h.t.query(&id("d"), TelemetryQuery::default())
            .await
            .unwrap();
    assert_eq!(page.items.len(), 100);
    assert_eq!(page.items[0].values["i"], 99);
    assert_eq!(h.t.latest(&id("d")).await.unwrap()["i"].value, 99);
    // New points continue after the stored ones.
    h.offer("d", r#"{"i":100}"#, now + 100).unwrap();
    h.t.flush().await;
    assert_eq!(h.count("d").await, 101);
    h.stop().await;
}

// ---- benchmark -----------------------------------------------------------------------

/// Points persisted per second through `offer` (decode included) from 1 000 devices.
/// `cargo test --release -- --ignored --nocapture bench_`
#[test]
#[ignore = "benchmark; run in release mode"]
fn bench_ingest_1k_devices() {
    const DEVICES: usize = 1_000;
    const POINTS: u64 = 400_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = Harness::start(quiet());
        let devices: Arc<Vec<DeviceId>> = Arc::new(
            (0..DEVICES)
                .map(|i| id(&format!("device-{i:04}")))
                .collect(),
        );
        let base = now_ms() - 60_000;
        let started = StdInstant::now();
        let mut producers = Vec::new();
        for p in 0..2u64 {
            let t = h.t.clone();
            let devices = devices.clone();
            producers.push(tokio::spawn(async move {
                let plugin = json();
                let mut i = p;
                while i < POINTS {
                    let device = &devices[(i % DEVICES as u64) as usize];
                    let payload = format!(
                        r#"{{"cpu":{},"memory":{},"uptime":{},"temp":{}.5}}"#,
                        i % 100,
                        512 + i % 7,
                        3_600 + i,
                        20 + i % 15
                    );
                    match t.offer(
                        device,
                        plugin.as_ref(),
                        payload.as_bytes(),
                        base + i / 1_000,
                    ) {
                        Ok(()) => i += 2,
                        Err(Rejected::QueueFull) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
        for p in producers {
            p.await.unwrap();
        }
        h.t.flush().await;
        let elapsed = started.elapsed();
        let s = h.t.stats();
        assert_eq!(s.stored, POINTS);
        println!(
            "telemetry ingest: {POINTS} points from {DEVICES} devices persisted in {:.2?}: \
             {:.0} points/s ({} batches, {} queue-full retries)",
            elapsed,
            POINTS as f64 / elapsed.as_secs_f64(),
            s.batches,
            s.dropped_queue_full,
        );
        let query_started = StdInstant::now();
        let page =
            h.t.query(
                &devices[7],
                TelemetryQuery {
                    limit: MAX_LIMIT,
                    ..TelemetryQuery::default()
                },
            )
            .await
            .unwrap();
        println!(
            "query of {} points: {:.2?}",
            page.items.len(),
            query_started.elapsed()
        );
        let sweep_started = StdInstant::now();
        h.t.sweep_now().await.unwrap();
        println!(
            "sweep with nothing to remove: {:.2?}",
            sweep_started.elapsed()
        );
        h.stop().await;
    });
}

/// The storage layer alone: `insert_batch` at two batch sizes, showing why the
/// default `batch_max` is large (per-commit fsync and page copies dominate small ones).
#[test]
#[ignore = "benchmark; run in release mode"]
fn bench_insert_batch_only() {
    let plugin = json();
    let base = now_ms() - 60_000;
    let total = 400_000u64;
    let points: Vec<store::NewPoint> = (0..total)
        .map(|i| {
            let payload = format!(r#"{{"cpu":{},"memory":512,"uptime":{}}}"#, i % 100, i);
            decode(
                &id(&format!("device-{:04}", i % 1_000)),
                plugin.as_ref(),
                payload.as_bytes(),
                base + i / 1_000,
            )
            .unwrap()
        })
        .collect();
    for batch in [2_048, TelemetryConfig::default().batch_max] {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("t.redb"));
        let started = StdInstant::now();
        for chunk in points.chunks(batch) {
            store::insert_batch(&db, chunk).unwrap();
        }
        let elapsed = started.elapsed();
        println!(
            "insert_batch, {batch}-point batches: {total} points in {:.2?}: {:.0} points/s",
            elapsed,
            total as f64 / elapsed.as_secs_f64()
        );
    }
}

/// Decoding alone: `decode` of the fan-in bench's payload, per point.
#[test]
#[ignore = "benchmark; run in release mode"]
fn bench_decode_only() {
    let plugin = json();
    let device = id("device-0001");
    let payload = br#"{"cpu":37.5,"mem":612,"temp":48.25,"uptime":86400,"rssi":-67}"#;
    let n = 1_000_000u32;
    let started = StdInstant::now();
    for i in 0..n {
        let p = decode(
            &device,
            plugin.as_ref(),
            payload,
            1_700_000_000_000 + u64::from(i),
        );
        std::hint::black_box(p.unwrap());
    }
    let elapsed = started.elapsed();
    println!(
        "decode: {n} points in {elapsed:.2?}: {:.2} µs/point",
        elapsed.as_secs_f64() * 1e6 / f64::from(n)
    );
}
