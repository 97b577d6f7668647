//! `GET /api/v1/clients/{client_id}` (a live connection's subscriptions and counters) and
//! `PATCH /api/v1/service-clients/{name}` (rules applied to connected clients at once),
//! over real HTTP and real MQTT connections.

use std::time::Duration;

use http::{Method, StatusCode};
use rumqttc::{AsyncClient, EventLoop, Packet, QoS};
use serde_json::{json, Value};

use crate::api::{closed_by_broker, next_packet, test_app, Auth, TestApp};
use crate::keys::{audit_items, create_key};

async fn service_client(app: &TestApp, name: &str, rules: Value) {
    let created = app
        .post(
            "/api/v1/service-clients",
            json!({"name": name, "password": format!("{name}-password"), "rules": rules}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}

async fn connect(app: &TestApp, client_id: &str, name: &str) -> (AsyncClient, EventLoop) {
    app.mqtt_connect(client_id, name, &format!("{name}-password"))
        .await
}

async fn subscribe(client: &AsyncClient, events: &mut EventLoop, filter: &str, qos: QoS) {
    client.subscribe(filter, qos).await.unwrap();
    let suback = next_packet(events, |p| matches!(p, Packet::SubAck(_))).await;
    let Ok(Packet::SubAck(suback)) = suback else {
        panic!("no SUBACK: {suback:?}")
    };
    assert!(
        matches!(
            suback.return_codes[0],
            rumqttc::SubscribeReasonCode::Success(_)
        ),
        "{filter}: {suback:?}"
    );
}

/// The next PUBLISH's topic.
async fn next_topic(events: &mut EventLoop) -> String {
    match next_packet(events, |p| matches!(p, Packet::Publish(_))).await {
        Ok(Packet::Publish(p)) => p.topic,
        other => panic!("no PUBLISH: {other:?}"),
    }
}

/// Polls a client's event loop until it ends (publishes go out meanwhile).
fn drive(mut events: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while events.poll().await.is_ok() {} })
}

/// The client's detail once `ready` holds for it (counters move asynchronously).
async fn detail_when(app: &TestApp, client_id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = app.get(&format!("/api/v1/clients/{client_id}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        if ready(&answer.body) || tokio::time::Instant::now() > deadline {
            return answer.body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_shows_its_subscriptions_and_counters() {
    let app = test_app().await;
    let rules = json!([
        {"action": "all", "topic": "a/#", "allow": true},
        {"action": "subscribe", "topic": "b/+", "allow": true},
    ]);
    service_client(&app, "backend", rules).await;
    let (client, mut events) = connect(&app, "backend-1", "backend").await;
    subscribe(&client, &mut events, "a/#", QoS::AtLeastOnce).await;
    subscribe(&client, &mut events, "$share/g/b/+", QoS::AtMostOnce).await;
    client
        .publish("z/denied", QoS::AtMostOnce, false, "no")
        .await
        .unwrap();
    client
        .publish("a/x", QoS::AtMostOnce, false, "hello")
        .await
        .unwrap();
    assert_eq!(next_topic(&mut events).await, "a/x");

    let body = detail_when(&app, "backend-1", |b| {
        b["counters"]["messages_out"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(body["client_id"], "backend-1");
    assert_eq!(body["kind"], "service");
    assert_eq!(body["username"], "backend");
    assert_eq!(body["keepalive_s"], 30);
    assert_eq!(body["clean_start"], true);
    assert_eq!(body["session_persistent"], false);
    let subs = body["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "{body}");
    assert_eq!(subs[0]["filter"], "$share/g/b/+");
    assert_eq!(subs[0]["share_group"], "g");
    assert_eq!(subs[0]["qos"], 0);
    assert_eq!(subs[1]["filter"], "a/#");
    assert_eq!(subs[1]["qos"], 1);
    assert_eq!(subs[1]["share_group"], Value::Null);
    assert_eq!(subs[1]["no_local"], false);
    assert_eq!(subs[1]["retain_handling"], 0);
    let counters = &body["counters"];
    assert_eq!(counters["messages_in"], 2, "{counters}");
    assert_eq!(counters["messages_out"], 1, "{counters}");
    assert!(counters["bytes_in"].as_u64().unwrap() > 20, "{counters}");
    assert!(counters["bytes_out"].as_u64().unwrap() > 10, "{counters}");
    assert_eq!(counters["dropped_by_cause"], json!({"acl_publish": 1}));
    assert_eq!(counters["inflight_out"], 0);
    assert_eq!(counters["queued_out"], 0);

    let missing = app.get("/api/v1/clients/nobody").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "not_found");
    app.stop().await;
}

#[tokio::test]
async fn a_device_shows_its_subscriptions() {
    let app = test_app().await;
    let provisioned = app.provision("dev-1").await;
    let token = provisioned["credentials"]["password"].as_str().unwrap();
    let (client, mut events) = app.mqtt_connect("dev-1", "dev-1", token).await;
    subscribe(
        &client,
        &mut events,
        "device/dev-1/command",
        QoS::AtLeastOnce,
    )
    .await;
    let _events = drive(events);
    let body = detail_when(&app, "dev-1", |b| b["subscriptions"] != json!([])).await;
    assert_eq!(body["kind"], "device");
    assert_eq!(body["subscriptions"][0]["filter"], "device/dev-1/command");
    assert_eq!(body["subscriptions"][0]["qos"], 1);
    app.stop().await;
}

#[tokio::test]
async fn new_rules_apply_to_a_connected_service_client() {
    let app = test_app().await;
    let watch = json!([{"action": "subscribe", "topic": "t/#", "allow": true}]);
    service_client(&app, "watcher", watch).await;
    let only_a = json!([{"action": "publish", "topic": "t/a", "allow": true}]);
    service_client(&app, "backend", only_a).await;
    let (watcher, mut seen) = connect(&app, "watcher-1", "watcher").await;
    subscribe(&watcher, &mut seen, "t/#", QoS::AtLeastOnce).await;
    let (backend, events) = connect(&app, "backend-1", "backend").await;
    let backend_events = drive(events);

    // Denied, then allowed: the watcher's first message is the allowed one.
    for topic in ["t/b", "t/a"] {
        backend
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    assert_eq!(next_topic(&mut seen).await, "t/a");

    let only_b = json!([{"action": "publish", "topic": "t/b", "allow": true}]);
    let patched = app
        .call(
            Method::PATCH,
            "/api/v1/service-clients/backend",
            Some(json!({"rules": only_b})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["rules"], only_b);
    assert!(patched.body.get("password").is_none());
    for topic in ["t/a", "t/b"] {
        backend
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    assert_eq!(next_topic(&mut seen).await, "t/b");
    assert!(
        !backend_events.is_finished(),
        "rules alone must not disconnect"
    );

    let items = audit_items(&app, 3).await;
    let entry = items
        .iter()
        .find(|e| e["method"] == "PATCH")
        .expect("the PATCH is audited");
    assert_eq!(entry["route"], "/api/v1/service-clients/{name}");
    assert_eq!(entry["target"], "backend");
    assert_eq!(entry["status"], 200);
    app.stop().await;
}

#[tokio::test]
async fn a_new_password_closes_the_connections_and_replaces_the_old_one() {
    let app = test_app().await;
    let rules = json!([{"action": "all", "topic": "t/#", "allow": true}]);
    service_client(&app, "backend", rules.clone()).await;
    let (_backend, mut events) = connect(&app, "backend-1", "backend").await;
    let rotated = app
        .call(
            Method::PATCH,
            "/api/v1/service-clients/backend",
            Some(json!({"rotate_password": true})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_eq!(rotated.body["rules"], rules, "rules are kept");
    let password = rotated.body["password"].as_str().unwrap().to_owned();
    assert!(closed_by_broker(&mut events).await);
    assert!(
        app.mqtt_refused("backend-1", "backend", "backend-password")
            .await
    );
    let _again = app.mqtt_connect("backend-1", "backend", &password).await;

    let chosen = app
        .call(
            Method::PATCH,
            "/api/v1/service-clients/backend",
            Some(json!({"password": "chosen-password"})),
        )
        .await;
    assert_eq!(chosen.status, StatusCode::OK, "{}", chosen.body);
    assert!(
        chosen.body.get("password").is_none(),
        "a chosen one is not echoed"
    );
    let _third = app
        .mqtt_connect("backend-2", "backend", "chosen-password")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn bad_updates_are_refused_and_change_nothing() {
    let app = test_app().await;
    let rules = json!([{"action": "publish", "topic": "t/a", "allow": true}]);
    service_client(&app, "backend", rules.clone()).await;
    let path = "/api/v1/service-clients/backend";
    let bad = [
        json!({"rules": [{"action": "publish", "topic": "t/#/x", "allow": true}]}),
        json!({}),
        json!({"password": "short"}),
        json!({"password": "long-enough-1", "rotate_password": true}),
    ];
    for body in bad {
        let answer = app.call(Method::PATCH, path, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer.error_code(), "unprocessable", "{}", answer.body);
    }
    let unknown_field = app
        .call(Method::PATCH, path, Some(json!({"name": "other"})))
        .await;
    assert_eq!(unknown_field.status, StatusCode::UNPROCESSABLE_ENTITY);
    let missing = app
        .call(
            Method::PATCH,
            "/api/v1/service-clients/nope",
            Some(json!({"rules": []})),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    for role in ["viewer", "operator"] {
        let key = create_key(&app, &format!("{role}-1"), role).await;
        let body = json!({"rules": []}).to_string();
        let answer = app
            .send(Method::PATCH, path, Auth::ApiKey(&key), Some(&body))
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{role}");
    }
    let list = app.get("/api/v1/service-clients").await;
    assert_eq!(list.body["items"][0]["rules"], rules);
    assert!(
        !app.mqtt_refused("backend-1", "backend", "backend-password")
            .await
    );
    app.stop().await;
}
