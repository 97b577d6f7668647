//! `GET /api/v1/connections/refused`, and refused attempts in `/api/v1/stats` and
//! `/metrics`, from real refused MQTT CONNECTs.

use http::{Method, StatusCode};

use crate::api::{test_app, Auth};

#[tokio::test]
async fn refused_attempts_are_listed_counted_and_scraped_without_secrets() {
    let app = test_app().await;
    let token = app.provision("dev-1").await["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        assert!(app.mqtt_refused("dev-1", "dev-1", "stale-token-123").await);
    }
    assert!(app.mqtt_refused("ghost", "ghost", "ghost-secret-456").await);
    assert!(app.mqtt_refused("not-dev-1", "dev-1", &token).await);

    let all = app.get("/api/v1/connections/refused").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let text = all.body.to_string();
    for secret in ["stale-token-123", "ghost-secret-456", token.as_str()] {
        assert!(!text.contains(secret), "a secret in {text}");
    }
    let items = all.body["items"].as_array().unwrap();
    let summary: Vec<_> = (items.iter())
        .map(|i| {
            (
                i["client_id"].as_str().unwrap(),
                i["cause"].as_str().unwrap(),
                i["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("not-dev-1", "client_id_mismatch", 1),
            ("ghost", "unknown_device", 1),
            ("dev-1", "wrong_token", 2),
        ]
    );
    let wrong = &items[2];
    assert_eq!(wrong["username"], "dev-1");
    assert_eq!(wrong["protocol"], "3.1.1");
    assert_eq!(wrong["transport"], "tcp");
    assert!(wrong["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(wrong["at"].as_str().unwrap().ends_with('Z'), "{wrong}");
    assert!(wrong["first_at"].as_str().unwrap() <= wrong["at"].as_str().unwrap());
    assert_eq!(all.body["next_cursor"], serde_json::Value::Null);
    assert_eq!(all.body["suppressed"], 0);

    // A device's page: by client id or username.
    let mine = app.get("/api/v1/connections/refused?identity=dev-1").await;
    let causes: Vec<_> = (mine.body["items"].as_array().unwrap().iter())
        .map(|i| i["cause"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(causes, ["client_id_mismatch", "wrong_token"]);

    // Pages follow the cursor.
    let first = app.get("/api/v1/connections/refused?limit=2").await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 2);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = app
        .get(&format!(
            "/api/v1/connections/refused?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest.body["items"][0]["client_id"], "dev-1");
    assert_eq!(rest.body["next_cursor"], serde_json::Value::Null);
    let bad = app.get("/api/v1/connections/refused?cursor=x").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = app.get("/api/v1/connections/refused?client=x").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let open = (app.send(Method::GET, "/api/v1/connections/refused", Auth::None, None)).await;
    assert_eq!(open.status, StatusCode::UNAUTHORIZED);

    let stats = app.get("/api/v1/stats").await.body;
    let by_cause = &stats["connections"]["refused_by_cause"];
    assert_eq!(by_cause["wrong_token"], 2);
    assert_eq!(by_cause["unknown_device"], 1);
    assert_eq!(by_cause["client_id_mismatch"], 1);
    assert_eq!(by_cause["backoff"], 0);
    assert_eq!(stats["connections"]["backoff"]["identities"], 0);

    let scrape = app.scrape().await;
    let refused = |cause| scrape.value("fleetmq_connect_refused_total", &[("cause", cause)]);
    assert_eq!(refused("wrong_token"), 2.0);
    assert_eq!(refused("unknown_device"), 1.0);
    assert_eq!(refused("connect_timeout"), 0.0);
    assert_eq!(refused("backoff"), 0.0);
    let blocked = |scope| scrape.value("fleetmq_auth_backoff_blocked", &[("scope", scope)]);
    assert_eq!((blocked("identity"), blocked("address")), (0.0, 0.0));
    app.stop().await;
}

/// A flood of wrong tokens for one device backs it off (from that address); the backoff
/// shows in the list, the stats and the metrics.
#[tokio::test]
async fn a_backed_off_identity_is_visible() {
    let app = test_app().await;
    app.provision("dev-1").await;
    for i in 0..7 {
        assert!(
            app.mqtt_refused("dev-1", "dev-1", &format!("guess-{i}"))
                .await
        );
    }
    let stats = app.get("/api/v1/stats").await.body;
    assert_eq!(stats["connections"]["refused_by_cause"]["wrong_token"], 5);
    assert_eq!(stats["connections"]["refused_by_cause"]["backoff"], 2);
    assert_eq!(stats["connections"]["backoff"]["identities"], 1);
    let mine = app.get("/api/v1/connections/refused?identity=dev-1").await;
    assert_eq!(mine.body["items"][0]["cause"], "backoff");
    assert_eq!(mine.body["items"][0]["count"], 2);
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("fleetmq_connect_refused_total", &[("cause", "backoff")]),
        2.0
    );
    assert_eq!(
        scrape.value("fleetmq_auth_backoff_blocked", &[("scope", "identity")]),
        1.0
    );
    app.stop().await;
}
