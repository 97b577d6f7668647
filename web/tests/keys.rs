//! Named API keys, roles and the audit log over real HTTP against a real store; and
//! the cross-origin stance (no CORS headers at all).

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api::{every_api_route, test_app, test_app_generated_key, Auth, TestApp, API_KEY};

/// Creates a key with the built-in key; returns its secret.
pub(crate) async fn create_key(app: &TestApp, name: &str, role: &str) -> String {
    let answer = app
        .post("/api/v1/keys", json!({"name": name, "role": role}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["secret"].as_str().unwrap().to_owned()
}

/// Every documented route and method (the OpenAPI document equals the route table,
/// `routes::openapi`'s tests), paths filled in with the ids `every_api_route` uses.
async fn documented_routes(app: &TestApp) -> Vec<(Method, String, &'static str)> {
    let doc = app.get("/api/v1/openapi.json").await.body;
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        if !template.starts_with("/api/v1/") {
            continue;
        }
        let path = template
            .replace("{id}", "dev-1")
            .replace("{command_id}", "c-1")
            .replace("{job_id}", "j-1")
            .replace("{client_id}", "dev-1")
            .replace("{name}", "svc");
        for method in item.as_object().unwrap().keys() {
            if let Ok(m) = method.to_uppercase().parse::<Method>() {
                let area = [
                    "/api/v1/keys",
                    "/api/v1/webhooks",
                    "/api/v1/service-clients",
                    "/api/v1/backup",
                ]
                .into_iter()
                .find(|a| template.starts_with(a))
                .unwrap_or("operator");
                out.push((m, path.clone(), area));
            }
        }
    }
    out
}

fn body_for(method: &Method, path: &str) -> Option<String> {
    every_api_route()
        .into_iter()
        .find(|(m, p, _)| m == method && *p == path)
        .and_then(|(_, _, body)| body)
        .map(|b| b.to_string())
}

#[tokio::test]
async fn roles_are_checked_from_the_route_table() {
    let app = test_app().await;
    let viewer = create_key(&app, "viewer-1", "viewer").await;
    let operator = create_key(&app, "operator-1", "operator").await;
    let routes = documented_routes(&app).await;
    assert!(routes
        .iter()
        .any(|(m, p, _)| m == Method::POST && p == "/api/v1/keys"));
    for (method, path, area) in &routes {
        let body = body_for(method, path);
        let read = *method == Method::GET;
        if read && path == "/api/v1/events" {
            continue; // A stream; `api.rs` covers it.
        }
        if read && path == "/api/v1/subscribe" {
            // Message contents: even reading needs an operator (`subscribe.rs` streams).
            let as_viewer = app
                .send(method.clone(), path, Auth::ApiKey(&viewer), None)
                .await;
            assert_eq!(as_viewer.status, StatusCode::FORBIDDEN, "viewer GET {path}");
            continue;
        }
        let as_viewer = app
            .send(method.clone(), path, Auth::ApiKey(&viewer), body.as_deref())
            .await;
        if read {
            assert!(
                ![401, 403].contains(&as_viewer.status.as_u16()),
                "viewer {method} {path}: {}",
                as_viewer.status
            );
        } else {
            assert_eq!(
                as_viewer.status,
                StatusCode::FORBIDDEN,
                "viewer {method} {path}"
            );
            assert_eq!(as_viewer.error_code(), "forbidden");
        }
        if !read && *area != "operator" {
            let as_operator = app
                .send(
                    method.clone(),
                    path,
                    Auth::ApiKey(&operator),
                    body.as_deref(),
                )
                .await;
            assert_eq!(
                as_operator.status,
                StatusCode::FORBIDDEN,
                "operator {method} {path}"
            );
        }
    }
    // Refused before anything happened.
    assert_eq!(app.device_count().await, 0);
    // An operator may change devices; a viewer may read them.
    let created = app
        .send(
            Method::POST,
            "/api/v1/devices",
            Auth::ApiKey(&operator),
            Some(r#"{"id":"dev-op"}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let read = app
        .send(
            Method::GET,
            "/api/v1/devices/dev-op",
            Auth::ApiKey(&viewer),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    // Without a key: 401 as before, named keys or not.
    let none = app
        .send(Method::GET, "/api/v1/keys", Auth::None, None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked() {
    let app = test_app().await;
    let answer = app
        .post(
            "/api/v1/keys",
            json!({"name": "ci.bot_1", "role": "operator"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let secret = answer.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert_eq!(answer.body["key"]["name"], "ci.bot_1");
    assert_eq!(answer.body["key"]["role"], "operator");
    assert!(answer.body["key"]["created_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // The secret works at once, in either header.
    let bearer = format!("Bearer {secret}");
    let stats = app
        .send(Method::GET, "/api/v1/stats", Auth::Header(&bearer), None)
        .await;
    assert_eq!(stats.status, StatusCode::OK);

    let list = app.get("/api/v1/keys").await;
    let names: Vec<&str> = (list.body["items"].as_array().unwrap().iter())
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci.bot_1", "config"]);
    assert_eq!(list.body["items"][1]["builtin"], true);
    assert_eq!(list.body["items"][1]["role"], "admin");
    assert!(!list.body.to_string().contains(&secret));
    let page = app.get("/api/v1/keys?limit=1").await;
    assert_eq!(page.body["next_cursor"], "ci.bot_1");

    for (body, status) in [
        (json!({"name": "ci.bot_1", "role": "viewer"}), 409),
        (json!({"name": "config", "role": "viewer"}), 409),
        (json!({"name": "admin", "role": "viewer"}), 409),
        (json!({"name": "no spaces", "role": "viewer"}), 422),
        (json!({"name": "x".repeat(65), "role": "viewer"}), 422),
        (json!({"name": "ok", "role": "root"}), 422),
        (json!({"name": "ok"}), 422),
    ] {
        let answer = app.post("/api/v1/keys", body.clone()).await;
        assert_eq!(answer.status.as_u16(), status, "{body}: {}", answer.body);
    }

    let gone = app
        .call(Method::DELETE, "/api/v1/keys/ci.bot_1", None)
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let stats = app
        .send(Method::GET, "/api/v1/stats", Auth::ApiKey(&secret), None)
        .await;
    assert_eq!(stats.status, StatusCode::UNAUTHORIZED, "revoked at once");
    let again = app
        .call(Method::DELETE, "/api/v1/keys/ci.bot_1", None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    // The configured key is the configuration's to remove.
    let config = app.call(Method::DELETE, "/api/v1/keys/config", None).await;
    assert_eq!(config.status, StatusCode::CONFLICT);
    assert_eq!(app.get("/api/v1/stats").await.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn the_last_admin_key_cannot_be_revoked() {
    let (app, generated) = test_app_generated_key().await;
    let builtin = Auth::ApiKey(&generated);
    let send = |method: Method, path: &'static str, auth, body: Option<&'static str>| {
        let app = &app;
        async move { app.send(method, path, auth, body).await }
    };
    // Alone, the generated key stays.
    let answer = send(Method::DELETE, "/api/v1/keys/admin", builtin, None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    let body = Some(r#"{"name":"ops","role":"admin"}"#);
    let ops = send(Method::POST, "/api/v1/keys", builtin, body).await;
    let ops = ops.body["secret"].as_str().unwrap().to_owned();
    let ops = Auth::ApiKey(&ops);
    // With another admin, the built-in key may go, and stays gone.
    let answer = send(Method::DELETE, "/api/v1/keys/admin", ops, None).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    let answer = send(Method::GET, "/api/v1/stats", builtin, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let list = send(Method::GET, "/api/v1/keys", ops, None).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let revoked = app.store.call(|s| s.admin_key_revoked()).await.unwrap();
    assert!(revoked, "a restart does not generate a new key");
    // `ops` is the last admin now: not even it may revoke itself.
    let answer = send(Method::DELETE, "/api/v1/keys/ops", ops, None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last admin"));
    // With a second admin it may.
    let body = Some(r#"{"name":"ops2","role":"admin"}"#);
    let ops2 = send(Method::POST, "/api/v1/keys", ops, body).await;
    assert_eq!(ops2.status, StatusCode::CREATED);
    let answer = send(Method::DELETE, "/api/v1/keys/ops", ops, None).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let answer = send(Method::GET, "/api/v1/stats", ops, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// The audit log's items once it holds at least `n` (it is written off the request
/// path).
pub(crate) async fn audit_items(app: &TestApp, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = app.get("/api/v1/audit?limit=1000").await;
        assert_eq!(answer.status, StatusCode::OK);
        let items = answer.body["items"].as_array().unwrap().clone();
        if items.len() >= n || Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_state_changing_request_is_audited_newest_first() {
    let app = test_app().await;
    let viewer = create_key(&app, "auditor", "viewer").await;
    let provisioned = app.provision("dev-a").await;
    let password = provisioned["credentials"]["password"].as_str().unwrap();
    let refused = app
        .send(
            Method::DELETE,
            "/api/v1/devices/dev-a",
            Auth::ApiKey(&viewer),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    // Reads and requests without a valid key are not recorded.
    app.get("/api/v1/devices").await;
    app.send(
        Method::DELETE,
        "/api/v1/devices/dev-a",
        Auth::ApiKey("nope"),
        None,
    )
    .await;
    let missing = app.call(Method::DELETE, "/api/v1/devices/nope", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let items = audit_items(&app, 4).await;
    assert_eq!(items.len(), 4, "{items:?}");
    let summary: Vec<(&str, &str, &str, Value, u64)> = (items.iter())
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap();
            (
                s("key"),
                s("method"),
                s("route"),
                e["target"].clone(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "config",
                "DELETE",
                "/api/v1/devices/{id}",
                json!("nope"),
                404
            ),
            (
                "auditor",
                "DELETE",
                "/api/v1/devices/{id}",
                json!("dev-a"),
                403
            ),
            ("config", "POST", "/api/v1/devices", Value::Null, 201),
            ("config", "POST", "/api/v1/keys", Value::Null, 201),
        ]
    );
    assert!(items[0]["at"].as_str().unwrap().ends_with('Z'));
    let everything = serde_json::to_string(&items).unwrap();
    assert!(!everything.contains(password) && !everything.contains(&viewer));

    // Paging: newest first, a cursor to the older ones.
    let first = app.get("/api/v1/audit?limit=3").await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 3);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = app
        .get(&format!("/api/v1/audit?limit=3&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"], json!([items[3]]));
    assert_eq!(rest.body["next_cursor"], Value::Null);
    let bad = app.get("/api/v1/audit?cursor=x").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let scrape = app.scrape().await;
    assert!(scrape.value("fleetmq_audit_written_total", &[]) >= 4.0);
    assert_eq!(scrape.value("fleetmq_audit_dropped_total", &[]), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn audit_entries_survive_a_stop_and_restart_of_the_server() {
    let app = test_app().await;
    app.provision("dev-b").await;
    let store = app.store.clone();
    // Stopping writes what is still queued.
    app.stop().await;
    let page = store.call(|s| s.list_audit(None, 10)).await.unwrap();
    let routes: Vec<&str> = page.entries.iter().map(|(_, e)| e.route.as_str()).collect();
    assert_eq!(routes, ["/api/v1/devices"]);
}

#[tokio::test]
async fn no_cross_origin_access_is_granted() {
    let app = test_app().await;
    // A preflight carries no key: refused like any keyless request, no CORS headers.
    let origin = "https://evil.example";
    let preflight = app
        .send_with_headers(
            Method::OPTIONS,
            "/api/v1/devices",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-api-key"),
            ],
        )
        .await;
    assert_eq!(preflight.status, StatusCode::UNAUTHORIZED);
    // Even a request that carries the key gets no CORS header, so a browser on another
    // origin cannot read the answer.
    let simple = app
        .send_with_headers(
            Method::GET,
            "/api/v1/devices",
            &[("origin", origin), ("x-api-key", API_KEY)],
        )
        .await;
    assert_eq!(simple.status, StatusCode::OK);
    for answer in [&preflight, &simple] {
        let cors: Vec<_> = (answer.headers.keys())
            .filter(|h| h.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{cors:?}");
    }
    app.stop().await;
}
