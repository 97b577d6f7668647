//! SPEC §7 `device.event`: what a device publishes on `device/{id}/events` is emitted live
//! and stored, and `GET /api/v1/devices/{id}/events` lists it.

use std::time::Duration;

use http::StatusCode;
use rumqttc::QoS;
use serde_json::{json, Value};

use crate::api::{test_app, TestApp};

/// Publishes `payloads` on `device/dev-1/events` as dev-1 (provisioned here), in order.
async fn publish_events(app: &TestApp, payloads: &[Vec<u8>]) {
    let token = app.provision("dev-1").await["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let (client, mut events) = app.mqtt_connect("dev-1", "dev-1", &token).await;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for payload in payloads {
        client
            .publish(
                "device/dev-1/events",
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
    }
}

/// The `items` of a list answer, after checking it is a 200.
async fn items(app: &TestApp, path: &str) -> (Vec<Value>, Value) {
    let answer = app.get(path).await;
    assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    let items = answer.body["items"].as_array().unwrap().clone();
    (items, answer.body["next_cursor"].clone())
}

/// Waits until the device has `n` events stored.
async fn wait_for_stored(app: &TestApp, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (found, _) = items(app, "/api/v1/devices/dev-1/events?limit=1000").await;
        if found.len() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} events stored",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn n_of(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|e| e["data"]["n"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn device_events_go_live_and_are_listed_newest_first_filtered_and_paged() {
    let app = test_app().await;
    let mut live = app.events("?type=device.event", None).await;
    let mut payloads: Vec<Vec<u8>> = (0..5)
        .map(|n| {
            let kind = if n % 2 == 0 { "door_open" } else { "boot" };
            json!({"type": kind, "n": n, "extra": {"deep": [1, 2]}})
                .to_string()
                .into_bytes()
        })
        .collect();
    // Neither stored nor emitted: not JSON, and JSON without a `type`.
    payloads.insert(2, b"not json".to_vec());
    payloads.insert(4, br#"{"n": 99}"#.to_vec());
    publish_events(&app, &payloads).await;

    for n in 0..5 {
        let event = live.next().await;
        assert_eq!(event.event, "device.event");
        assert_eq!(event.data["device_id"], "dev-1");
        assert_eq!(event.data["data"]["n"], n, "{:?}", event.data);
        assert_eq!(event.data["data"]["extra"], json!({"deep": [1, 2]}));
    }
    wait_for_stored(&app, 5).await;

    let (all, next) = items(&app, "/api/v1/devices/dev-1/events").await;
    assert_eq!(n_of(&all), [4, 3, 2, 1, 0]);
    assert_eq!(next, Value::Null);
    assert_eq!(all[0]["type"], "door_open");
    assert_eq!(
        all[0]["data"],
        json!({"type": "door_open", "n": 4, "extra": {"deep": [1, 2]}})
    );
    assert!(all[0]["at"].as_str().unwrap().ends_with('Z'));

    let (doors, _) = items(&app, "/api/v1/devices/dev-1/events?type=door_open").await;
    assert_eq!(n_of(&doors), [4, 2, 0]);
    let (boots, _) = items(&app, "/api/v1/devices/dev-1/events?type=boot").await;
    assert_eq!(n_of(&boots), [3, 1]);

    // Pages of two, by cursor, add up to the whole list.
    let mut paged = Vec::new();
    let mut path = "/api/v1/devices/dev-1/events?limit=2".to_owned();
    loop {
        let (page, next) = items(&app, &path).await;
        assert!(page.len() <= 2);
        paged.extend(page);
        match next.as_str() {
            Some(cursor) => path = format!("/api/v1/devices/dev-1/events?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(n_of(&paged), [4, 3, 2, 1, 0]);

    // from / to, as RFC 3339 or unix milliseconds.
    let newest = all[0]["at"].as_str().unwrap();
    let (from_newest, _) =
        items(&app, &format!("/api/v1/devices/dev-1/events?from={newest}")).await;
    assert!(n_of(&from_newest).starts_with(&[4]));
    let (future, _) = items(&app, "/api/v1/devices/dev-1/events?from=4000000000000").await;
    assert!(future.is_empty());
    let (past, _) = items(&app, "/api/v1/devices/dev-1/events?to=1970-01-02T00:00:00Z").await;
    assert!(past.is_empty());
    let (window, _) = items(
        &app,
        "/api/v1/devices/dev-1/events?from=2000-01-01T00:00:00Z&to=4000000000000&type=boot",
    )
    .await;
    assert_eq!(n_of(&window), [3, 1]);

    let stats = app.get("/api/v1/stats").await;
    assert_eq!(stats.body["device_events"]["stored"], 5);
    assert_eq!(stats.body["device_events"]["refused"], 2);
    let metrics = app.scrape().await;
    assert_eq!(
        metrics.value("fleetmq_device_events_stored_total", &[]),
        5.0
    );
    assert_eq!(
        metrics.value(
            "fleetmq_device_events_not_stored_total",
            &[("cause", "refused")]
        ),
        2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn device_event_parameters_are_checked() {
    let app = test_app().await;
    app.provision("dev-1").await;
    let (empty, next) = items(&app, "/api/v1/devices/dev-1/events").await;
    assert!(empty.is_empty());
    assert_eq!(next, Value::Null);
    let status = |path: &'static str| {
        let app = &app;
        async move { app.get(path).await.status }
    };
    assert_eq!(
        status("/api/v1/devices/ghost/events").await,
        StatusCode::NOT_FOUND
    );
    for bad in [
        "/api/v1/devices/dev-1/events?from=yesterday",
        "/api/v1/devices/dev-1/events?to=soon",
        "/api/v1/devices/dev-1/events?cursor=zzz",
        "/api/v1/devices/dev-1/events?limit=many",
        "/api/v1/devices/dev-1/events?type=",
        "/api/v1/devices/dev-1/events?kind=boot",
        "/api/v1/devices/dev-1/events?limit=5&limit=6",
    ] {
        assert_eq!(status(bad).await, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        status("/api/v1/devices/dev-1/events?limit=1001").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        status("/api/v1/devices/dev-1/events?from=2000&to=1000").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    app.stop().await;
}

/// Deleting a device deletes its events (in the background, like its telemetry): the same
/// id provisioned again starts empty.
#[tokio::test]
async fn a_deleted_device_takes_its_events_along() {
    let app = test_app().await;
    publish_events(&app, &[br#"{"type":"boot","n":0}"#.to_vec()]).await;
    wait_for_stored(&app, 1).await;
    assert_eq!(
        app.delete("/api/v1/devices/dev-1").await.status,
        StatusCode::NO_CONTENT
    );
    let dev: fleetmq_storage::DeviceId = "dev-1".parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.broker.handle.device_events().count(&dev).await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "events not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.provision("dev-1").await;
    let (after, _) = items(&app, "/api/v1/devices/dev-1/events").await;
    assert!(after.is_empty(), "{after:?}");
    app.stop().await;
}
