//! The dashboard's static files over real HTTP: served without a key with the right
//! content types and cache headers, revalidated by ETag, and self-contained (no URL
//! outside this origin, every referenced file embedded).

use std::net::SocketAddr;

use bytes::Bytes;
use fleetmq_broker::testing::TestBroker;
use fleetmq_web::{ensure_admin_key, serve, AppState, RawAdminConfig, ASSETS};
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const API_KEY: &str = "test-admin-key-0123456789abcdef";
/// The one absolute URL the assets may contain: an XML namespace name, never fetched.
const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";

struct App {
    addr: SocketAddr,
    _broker: TestBroker,
    shutdown: CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn app() -> App {
    let broker = TestBroker::start().await;
    let store = broker.store.clone();
    let dir = broker.dir.as_ref().expect("broker data dir").path();
    let key = ensure_admin_key(&store, dir, Some(API_KEY)).await.unwrap();
    let config = RawAdminConfig {
        listen: Some("127.0.0.1:0".into()),
        api_key: Some(API_KEY.into()),
        tls: None,
    }
    .validate()
    .unwrap();
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(store, broker.handle.clone(), key, config);
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(listener, state, shutdown.clone()));
    App {
        addr,
        _broker: broker,
        shutdown,
    }
}

async fn fetch(
    app: &App,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", app.addr));
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn expected_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        None => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some(other) => panic!("asset {path} has an unexpected extension {other}"),
    }
}

#[tokio::test]
async fn every_asset_is_served_without_a_key_with_its_type_and_etag() {
    let app = app().await;
    for asset in ASSETS {
        let (status, headers, body) = fetch(&app, Method::GET, asset.path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{}", asset.path);
        assert_eq!(
            headers[header::CONTENT_TYPE],
            expected_type(asset.path),
            "{}",
            asset.path
        );
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{}", asset.path);
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(&body[..], asset.body, "{}", asset.path);
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");

        let (status, headers, body) = fetch(
            &app,
            Method::GET,
            asset.path,
            &[(header::IF_NONE_MATCH, &etag)],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{}", asset.path);
        assert_eq!(headers[header::ETAG], etag.as_str());
        assert!(body.is_empty());
    }

    let (status, headers, _) = fetch(&app, Method::GET, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));

    let (status, headers, body) = fetch(&app, Method::HEAD, "/assets/js/app.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );

    let (status, _, _) = fetch(&app, Method::GET, "/assets/nope.js", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, _) = fetch(&app, Method::POST, "/", &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET");
    let (status, headers, _) = fetch(&app, Method::POST, "/assets/style.css", &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET, HEAD");
    let (status, headers, body) = fetch(&app, Method::HEAD, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    // The API behind it still wants the key.
    let (status, _, _) = fetch(&app, Method::GET, "/api/v1/stats", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Every `http://` / `https://` URL in the embedded files, but the SVG namespace name.
fn absolute_urls(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for scheme in ["http://", "https://"] {
        let mut rest = text;
        while let Some(at) = rest.find(scheme) {
            let url: String = rest[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '`' | ')' | '>'))
                .collect();
            if url != SVG_NAMESPACE {
                found.push(url);
            }
            rest = &rest[at + scheme.len()..];
        }
    }
    found
}

/// The quoted value after each occurrence of `marker` (e.g. `src="`).
fn quoted_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    let quote = marker.chars().last().unwrap();
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let start = at + marker.len();
            text[start..]
                .find(quote)
                .map(|end| &text[start..start + end])
        })
        .collect()
}

/// Resolves `reference` (absolute, or relative to the file at `from`) to a URL path.
fn resolve(from: &str, reference: &str) -> String {
    if reference.starts_with('/') {
        return reference.to_owned();
    }
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for segment in reference.split('/') {
        match segment {
            "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[test]
fn the_page_needs_nothing_from_another_origin() {
    let known: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
    for asset in ASSETS {
        let text = std::str::from_utf8(asset.body).expect("assets are UTF-8 text");
        let urls = absolute_urls(text);
        assert!(urls.is_empty(), "{} refers to {urls:?}", asset.path);
        assert!(
            !text.contains("\"//") && !text.contains("'//") && !text.contains("url(//"),
            "{} has a protocol-relative URL",
            asset.path
        );
        let mut references = Vec::new();
        for marker in ["src=\"", "href=\"", "src: '", "from '", "import('"] {
            references.extend(quoted_after(text, marker));
        }
        for reference in references.into_iter().filter(|r| !r.starts_with('#')) {
            let path = resolve(asset.path, reference);
            assert!(
                known.contains(&path.as_str()),
                "{} refers to {reference} ({path}), which is not embedded",
                asset.path
            );
        }
    }
}

#[test]
fn references_resolve() {
    assert_eq!(
        resolve("/assets/js/pages/device.js", "../api.js"),
        "/assets/js/api.js"
    );
    assert_eq!(
        resolve("/assets/js/app.js", "./live.js"),
        "/assets/js/live.js"
    );
    assert_eq!(
        absolute_urls("a http://x.example/y b http://www.w3.org/2000/svg"),
        ["http://x.example/y"]
    );
}

#[test]
fn every_file_under_assets_is_embedded() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut on_disk = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(&root).unwrap().to_str().unwrap();
                on_disk.push(format!("/assets/{}", rel.replace('\\', "/")));
            }
        }
    }
    let embedded: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
    for path in on_disk.iter().filter(|p| !p.ends_with("index.html")) {
        assert!(embedded.contains(&path.as_str()), "{path} is not in ASSETS");
    }
}

fn asset(path: &str) -> &'static str {
    let found = ASSETS.iter().find(|a| a.path == path).expect(path);
    std::str::from_utf8(found.body).unwrap()
}

/// Issue 18: what a new operator hit stays fixed where a static look can tell (the
/// browser tests, tests/browser/operator.test.mjs, check the rest on the page).
#[test]
fn what_a_new_operator_hit_stays_fixed() {
    // Command ids are shown whole: their first characters are only a time.
    for a in ASSETS {
        let text = std::str::from_utf8(a.body).unwrap();
        assert!(
            !text.contains("command_id.slice("),
            "{} cuts a command id",
            a.path
        );
    }
    // Chart axis labels are at least 11 px (the SVG is drawn at 1 unit = 1 px).
    let css = asset("/assets/style.css");
    let rule = css
        .split_once("svg.chart text {")
        .expect("a rule for chart text")
        .1;
    let px: f64 = rule
        .split_once("font-size:")
        .unwrap()
        .1
        .trim_start()
        .split_once("px")
        .unwrap()
        .0
        .parse()
        .unwrap();
    assert!(px >= 11.0, "chart labels at {px} px");
    // The live stream is asked for every kind of event.
    assert!(!asset("/assets/js/live.js").contains("events?type="));
    // The devices filter goes through the one label parser.
    assert!(asset("/assets/js/pages/devices.js").contains("labelQuery("));
}

#[tokio::test]
async fn the_overview_trend_is_kept_by_the_server() {
    let app = app().await;
    let (status, _, body) = fetch(
        &app,
        Method::GET,
        "/api/v1/stats/history",
        &[(header::HeaderName::from_static("x-api-key"), API_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["interval_s"], 60);
    let points = body["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 121, "{body}");
    for field in ["at", "at_ms", "connections", "devices_online"] {
        assert!(points[0].get(field).is_some(), "{field} missing: {body}");
    }
    let (status, _, _) = fetch(&app, Method::GET, "/api/v1/stats/history", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
