//! `GET /api/v1/openapi.json`: the API described as OpenAPI 3.1, kept by hand in
//! `web/src/openapi.json` and compiled into the binary. The route tests hold it to
//! [`crate::router::ROUTES`]: a route missing from either side fails them.

use http::{header, HeaderValue, Response, StatusCode};

use crate::response::ApiResponse;

/// The document, as served.
pub(crate) const DOCUMENT: &str = include_str!("../openapi.json");

/// `GET /api/v1/openapi.json`.
pub(crate) fn get() -> ApiResponse {
    let mut response = Response::new(crate::response::full(DOCUMENT));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::router::ROUTES;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let mut out = BTreeSet::new();
        for (path, item) in paths {
            for (key, _) in item.as_object().expect("path item") {
                if METHODS.contains(&key.as_str()) {
                    out.insert((path.clone(), key.to_uppercase()));
                }
            }
        }
        out
    }

    fn routed() -> BTreeSet<(String, String)> {
        (ROUTES.iter())
            .flat_map(|r| r.methods().map(|m| (r.path.to_owned(), m.to_owned())))
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let (documented, routed) = (documented(), routed());
        let missing: Vec<_> = routed.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from openapi.json: {missing:?}"
        );
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            extra.is_empty(),
            "openapi.json documents routes nobody serves: {extra:?}"
        );
    }

    #[test]
    fn every_reference_resolves_and_every_api_operation_lists_its_errors() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}: no success answer"
                );
                if path.starts_with("/api/v1/") {
                    assert!(
                        responses.contains_key("401"),
                        "{method} {path}: the key check's 401 is not listed"
                    );
                }
            }
        }
    }

    fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| collect_refs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
