//! Device tokens the API issues are keyed hashes (SPEC §2), also when rotating the token
//! of a device an older install stored with PBKDF2.

use http::StatusCode;
use serde_json::json;

use crate::api::test_app;

#[tokio::test]
async fn rotating_a_legacy_device_issues_a_keyed_hash() {
    let app = test_app().await;
    app.broker.add_legacy_device("old-1", "old-token").await;
    assert!(
        !app.token_verifies("old-1", "old-token").await,
        "still PBKDF2"
    );
    let answer = app
        .post("/api/v1/devices/old-1/rotate-credentials", json!({}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let token = answer.body["credentials"]["password"].as_str().unwrap();
    assert_eq!(token.len(), 64, "256 bits as hex");
    assert!(app.token_verifies("old-1", token).await);
    assert!(app.mqtt_refused("old-1", "old-1", "old-token").await);
    let (client, _events) = app.mqtt_connect("old-1", "old-1", token).await;
    client.disconnect().await.ok();
    app.stop().await;
}
