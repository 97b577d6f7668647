//! The dashboard (SPEC §8 `GET /`): static files compiled into the binary, served
//! without a key. The page itself asks for the API key and sends it on every API call.
//!
//! Every answer carries an `ETag` (a hash of the file's bytes, computed once) and
//! `cache-control: no-cache`, so a browser revalidates with `If-None-Match` and gets a
//! `304` until the binary changes: no stale script after an upgrade, no re-download
//! otherwise. The content security policy allows nothing but this origin.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use ring::digest;

use crate::error::ApiError;
use crate::response::ApiResponse;

/// One embedded file: the URL path it answers and its content type.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    // `$path` is the URL path, which is also the file path under `web/`.
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("..", $path)),
        }
    };
}

/// Every file the dashboard consists of; `/` is `index.html`.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_bytes!("../assets/index.html"),
    },
    asset!("/assets/style.css", CSS),
    asset!("/assets/logo.svg", SVG),
    asset!("/assets/js/app.js", JS),
    asset!("/assets/js/api.js", JS),
    asset!("/assets/js/dom.js", JS),
    asset!("/assets/js/live.js", JS),
    asset!("/assets/js/sse.js", JS),
    asset!("/assets/js/chart.js", JS),
    asset!("/assets/js/refusals.js", JS),
    asset!("/assets/js/alarms.js", JS),
    asset!("/assets/js/labels.js", JS),
    asset!("/assets/js/payload.js", JS),
    asset!("/assets/js/client_detail.js", JS),
    asset!("/assets/js/pages/overview.js", JS),
    asset!("/assets/js/pages/devices.js", JS),
    asset!("/assets/js/pages/device.js", JS),
    asset!("/assets/js/pages/clients.js", JS),
    asset!("/assets/js/pages/client.js", JS),
    asset!("/assets/js/pages/service_clients.js", JS),
    asset!("/assets/js/pages/jobs.js", JS),
    asset!("/assets/js/pages/webhooks.js", JS),
    asset!("/assets/js/pages/alarms.js", JS),
    asset!("/assets/js/pages/keys.js", JS),
    asset!("/assets/js/pages/audit.js", JS),
    asset!("/assets/js/pages/topics.js", JS),
    asset!("/assets/js/pages/topics_live.js", JS),
];

/// Only this origin; no inline script or style, so injected markup cannot run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; form-action 'none'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// `ETag` values, in the order of [`ASSETS`], hashed on first use.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let hash = digest::digest(&digest::SHA256, asset.body);
                let hex: String = hash.as_ref()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                HeaderValue::from_str(&format!("\"{hex}\""))
                    .expect("a quoted hex string is a valid header value")
            })
            .collect()
    })
}

/// Whether `path` is one of the dashboard's files besides the page itself (which the
/// router's table serves as `/`).
pub(crate) fn is_asset_path(path: &str) -> bool {
    path.starts_with("/assets/")
}

/// Answers `GET`/`HEAD` for an embedded file; `404` for an unknown one.
pub(crate) fn serve(method: &Method, path: &str, headers: &HeaderMap) -> ApiResponse {
    if method != Method::GET && method != Method::HEAD {
        return ApiError::MethodNotAllowed { allow: "GET, HEAD" }.into_response();
    }
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::NotFound("no such file".to_owned()).into_response();
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if method == Method::HEAD {
        (StatusCode::OK, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(asset.body))
    };
    let mut response = Response::new(crate::response::full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if status == StatusCode::OK {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if method == Method::HEAD {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
        }
    }
    if asset.content_type == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_unique_and_owned() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(a.path == "/" || is_asset_path(a.path), "{}", a.path);
            assert!(ASSETS[i + 1..].iter().all(|b| b.path != a.path));
        }
        assert!(!is_asset_path("/api/v1/devices") && !is_asset_path("/"));
    }

    #[test]
    fn etag_revalidation() {
        let first = serve(&Method::GET, "/assets/style.css", &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        let again = serve(&Method::GET, "/assets/style.css", &headers);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = serve(&Method::GET, "/assets/js/app.js", &headers);
        assert_eq!(other.status(), StatusCode::OK);
    }
}
