//! Dispatch: path and method to handler, with the API key checked before any
//! `/api/v1/*` route is looked at (so an unauthenticated client learns nothing about
//! which routes exist).
//!
//! [`ROUTES`] is the one list of what the server answers: dispatch looks a path up in
//! it (no table entry, no route), and the OpenAPI completeness test compares it with
//! the published document, so a route nobody documented fails the build's tests.
//!
//! Each route also names the role its state-changing methods need (reads need
//! `viewer`); [`dispatch`] checks it in one place, right after the key, and
//! [`handle`] queues an audit entry for every state-changing `/api/v1` request that
//! presented a valid key, whatever its answer.
//!
//! A path can match more than one pattern (`/api/v1/devices/bulk` is also
//! `/api/v1/devices/{id}` for a device called `bulk`): the first pattern that answers
//! the method wins, so `POST` provisions in bulk while `GET`, `PATCH` and `DELETE` still
//! reach that device.

use fleetmq_storage::{now_ms, ApiRole, AuditEntry};
use http::{Method, Request, StatusCode};
use hyper::body::Body;
use serde_json::json;

use crate::access::{allowed, is_read, required};
use crate::error::ApiError;
use crate::query::path_segments;
use crate::response::ApiResponse;
use crate::routes::{
    alarms, audit, backup, clients, commands, config, connections, device_events, devices,
    devices_bulk, events, jobs, keys, metrics, openapi, publish, retained, service_clients, stats,
    subscribe, telemetry, webhooks,
};
use crate::AppState;

/// One path pattern and the methods it answers. `{name}` matches any one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) path: &'static str,
    /// The methods, as the `Allow` header of a `405` lists them.
    pub(crate) allow: &'static str,
    /// The role its state-changing methods need.
    pub(crate) write: ApiRole,
    /// The least role any of its methods needs: `viewer`, but `operator` for
    /// [`contents`] routes.
    pub(crate) read: ApiRole,
}

impl Route {
    /// The methods this route answers.
    pub(crate) fn methods(&self) -> impl Iterator<Item = &'static str> {
        self.allow.split(", ")
    }

    /// The `{name}` segments' values if `segments` matches this pattern.
    fn capture<'a>(&self, segments: &[&'a str]) -> Option<Vec<&'a str>> {
        let pattern = self.path.strip_prefix('/').unwrap_or(self.path).split('/');
        let mut params = Vec::new();
        let mut segments = segments.iter();
        for part in pattern {
            let segment = segments.next()?;
            if part.starts_with('{') && part.ends_with('}') {
                params.push(*segment);
            } else if part != *segment {
                return None;
            }
        }
        segments.next().is_none().then_some(params)
    }
}

/// A route whose changes an `operator` may make.
const fn route(path: &'static str, allow: &'static str) -> Route {
    Route {
        path,
        allow,
        write: ApiRole::Operator,
        read: ApiRole::Viewer,
    }
}

/// A route whose changes only an `admin` may make: keys, webhooks, service clients,
/// backups (a backup holds every secret hash and the token key).
const fn admin(path: &'static str, allow: &'static str) -> Route {
    Route {
        path,
        allow,
        write: ApiRole::Admin,
        read: ApiRole::Viewer,
    }
}

/// A route that shows message contents as they are routed (live MQTT traffic may carry
/// anything a device sends): even reading it needs an `operator`.
const fn contents(path: &'static str, allow: &'static str) -> Route {
    Route {
        path,
        allow,
        write: ApiRole::Operator,
        read: ApiRole::Operator,
    }
}

/// Every route the admin API serves.
pub(crate) const ROUTES: &[Route] = &[
    route("/", "GET"),
    route("/health", "GET"),
    route("/metrics", "GET"),
    route("/api/v1/openapi.json", "GET"),
    route("/api/v1/devices", "GET, POST"),
    route("/api/v1/devices/bulk", "POST"),
    route("/api/v1/devices/{id}", "GET, PATCH, DELETE"),
    route("/api/v1/devices/{id}/rotate-credentials", "POST"),
    route("/api/v1/devices/{id}/rotate-key", "POST"),
    route("/api/v1/devices/{id}/config", "GET, PUT"),
    route("/api/v1/devices/{id}/commands", "GET, POST"),
    route("/api/v1/commands/{command_id}", "GET, DELETE"),
    route("/api/v1/devices/{id}/telemetry", "GET"),
    route("/api/v1/devices/{id}/telemetry/latest", "GET"),
    route("/api/v1/devices/{id}/events", "GET"),
    route("/api/v1/jobs", "GET, POST"),
    route("/api/v1/jobs/{job_id}", "GET, DELETE"),
    route("/api/v1/jobs/{job_id}/commands", "GET"),
    route("/api/v1/alarm-rules", "GET, POST"),
    route("/api/v1/alarm-rules/{rule_id}", "PUT, DELETE"),
    route("/api/v1/alarms", "GET"),
    route("/api/v1/alarms/{alarm_id}/ack", "POST"),
    admin("/api/v1/webhooks", "GET, POST"),
    admin("/api/v1/webhooks/deliveries", "GET"),
    admin("/api/v1/webhooks/deliveries/{delivery_id}", "DELETE"),
    admin("/api/v1/webhooks/deliveries/{delivery_id}/retry", "POST"),
    admin("/api/v1/webhooks/{webhook_id}", "GET, PATCH, DELETE"),
    admin("/api/v1/service-clients", "GET, POST"),
    admin("/api/v1/service-clients/{name}", "PATCH, DELETE"),
    admin("/api/v1/keys", "GET, POST"),
    admin("/api/v1/keys/{name}", "DELETE"),
    route("/api/v1/audit", "GET"),
    admin("/api/v1/backup", "POST"),
    route("/api/v1/clients", "GET"),
    route("/api/v1/clients/{client_id}", "GET, DELETE"),
    route("/api/v1/connections/refused", "GET"),
    route("/api/v1/publish", "POST"),
    route("/api/v1/retained", "GET, DELETE"),
    contents("/api/v1/subscribe", "GET"),
    route("/api/v1/stats", "GET"),
    route("/api/v1/stats/history", "GET"),
    route("/api/v1/events", "GET"),
];

/// What [`handle`] learns about a request for its audit entry.
#[derive(Default)]
struct Seen {
    /// Under `/api/v1`.
    api: bool,
    /// The name of the key it was accepted with.
    key: Option<String>,
    route: Option<&'static str>,
    target: Option<String>,
}

/// Answers one request; every failure becomes a JSON error here.
pub(crate) async fn handle<B>(state: &AppState, req: Request<B>) -> ApiResponse
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut seen = Seen::default();
    let response = match dispatch(state, req, &mut seen).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    let status = response.status().as_u16();
    tracing::debug!(%method, %path, status, "admin api request");
    // Requests without a valid key are not recorded: the refusal counters and the log
    // see them, and nobody can push real entries out of the log without a key.
    if let (true, false, Some(key)) = (seen.api, is_read(&method), seen.key) {
        state.audit.record(AuditEntry {
            at_ms: now_ms(),
            key,
            method: method.as_str().to_owned(),
            route: seen.route.unwrap_or("-").to_owned(),
            target: seen.target,
            status,
        });
    }
    response
}

/// The route for `segments` and `method` with its `{name}` values: the first pattern
/// that matches and answers the method, else the first that matches (its `405` lists
/// what it answers).
fn lookup<'a>(segments: &[&'a str], method: &Method) -> Option<(&'static Route, Vec<&'a str>)> {
    let mut first = None;
    for route in ROUTES {
        let Some(params) = route.capture(segments) else {
            continue;
        };
        if route.methods().any(|m| m == method.as_str()) {
            return Some((route, params));
        }
        first.get_or_insert((route, params));
    }
    first
}

async fn dispatch<B>(
    state: &AppState,
    req: Request<B>,
    seen: &mut Seen,
) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The dashboard's files (its page is `/`, in the table) are open: the page asks for
    // the key itself. They are not API routes, so they are not in the table.
    if crate::dashboard::is_asset_path(req.uri().path()) {
        let (method, path) = (req.method(), req.uri().path());
        return Ok(crate::dashboard::serve(method, path, req.headers()));
    }
    let segments = path_segments(req.uri().path())?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    seen.api = matches!(segments.as_slice(), ["api", "v1", ..]);
    let identity = if seen.api {
        let identity = (state.access)
            .authenticate(&state.store, req.headers())
            .await?;
        seen.key = Some(identity.name.clone());
        Some(identity)
    } else {
        None
    };
    let method = req.method().clone();
    let (route, params) =
        lookup(&segments, &method).ok_or_else(|| ApiError::NotFound("no such route".to_owned()))?;
    seen.route = Some(route.path);
    seen.target = params.first().map(|p| (*p).to_owned());
    let needed = required(seen.api, &method, route.write).map(|n| n.max(route.read));
    if let Some(identity) = &identity {
        if !allowed(identity.role, needed) {
            return Err(ApiError::Forbidden(format!(
                "key {:?} has role {}; {method} {} needs {}",
                identity.name,
                identity.role,
                route.path,
                needed.map_or("-", ApiRole::as_str)
            )));
        }
    }
    let params: Vec<String> = params.into_iter().map(str::to_owned).collect();
    answer(state, route, &params, identity.as_ref(), req).await
}

/// Runs the handler of `route` for `req` (key and role already checked).
async fn answer<B>(
    state: &AppState,
    route: &'static Route,
    params: &[String],
    identity: Option<&crate::access::Identity>,
    req: Request<B>,
) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let p = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    let query = req.uri().query();
    match (route.path, method) {
        ("/", method @ (Method::GET | Method::HEAD)) => {
            Ok(crate::dashboard::serve(&method, "/", req.headers()))
        }
        ("/health", Method::GET) => Ok(crate::response::json(
            StatusCode::OK,
            &json!({"status": "ok"}),
        )),
        ("/metrics", Method::GET) => metrics::get(state).await,
        ("/api/v1/openapi.json", Method::GET) => Ok(openapi::get()),
        ("/api/v1/devices", Method::GET) => devices::list(state, query).await,
        ("/api/v1/devices", Method::POST) => devices::create(state, req).await,
        ("/api/v1/devices/bulk", Method::POST) => devices_bulk::create(state, req).await,
        ("/api/v1/devices/{id}", Method::GET) => devices::get(state, p(0)).await,
        ("/api/v1/devices/{id}", Method::PATCH) => devices::patch(state, p(0), req).await,
        ("/api/v1/devices/{id}", Method::DELETE) => devices::delete(state, p(0)).await,
        ("/api/v1/devices/{id}/rotate-credentials", Method::POST) => {
            devices::rotate_credentials(state, p(0)).await
        }
        ("/api/v1/devices/{id}/rotate-key", Method::POST) => devices::rotate_key(state, p(0)).await,
        ("/api/v1/devices/{id}/config", Method::GET) => config::get(state, p(0)).await,
        ("/api/v1/devices/{id}/config", Method::PUT) => config::put(state, p(0), req).await,
        ("/api/v1/devices/{id}/commands", Method::POST) => commands::create(state, p(0), req).await,
        ("/api/v1/devices/{id}/commands", Method::GET) => commands::list(state, p(0), query).await,
        ("/api/v1/commands/{command_id}", Method::GET) => commands::get(state, p(0), query).await,
        ("/api/v1/commands/{command_id}", Method::DELETE) => commands::cancel(state, p(0)).await,
        ("/api/v1/devices/{id}/telemetry", Method::GET) => {
            telemetry::query(state, p(0), query).await
        }
        ("/api/v1/devices/{id}/telemetry/latest", Method::GET) => {
            telemetry::latest(state, p(0)).await
        }
        ("/api/v1/devices/{id}/events", Method::GET) => {
            device_events::list(state, p(0), query).await
        }
        ("/api/v1/jobs", Method::GET) => jobs::list(state, query).await,
        ("/api/v1/jobs", Method::POST) => jobs::create(state, req).await,
        ("/api/v1/jobs/{job_id}", Method::GET) => jobs::get(state, p(0)).await,
        ("/api/v1/jobs/{job_id}", Method::DELETE) => jobs::cancel(state, p(0)).await,
        ("/api/v1/jobs/{job_id}/commands", Method::GET) => jobs::commands(state, p(0), query).await,
        ("/api/v1/alarm-rules", Method::GET) => alarms::rules(state, query).await,
        ("/api/v1/alarm-rules", Method::POST) => alarms::create(state, req).await,
        ("/api/v1/alarm-rules/{rule_id}", Method::PUT) => alarms::update(state, p(0), req).await,
        ("/api/v1/alarm-rules/{rule_id}", Method::DELETE) => alarms::delete(state, p(0)).await,
        ("/api/v1/alarms", Method::GET) => alarms::list(state, query).await,
        ("/api/v1/alarms/{alarm_id}/ack", Method::POST) => alarms::ack(state, p(0)).await,
        ("/api/v1/webhooks", Method::GET) => webhooks::list(state, query),
        ("/api/v1/webhooks", Method::POST) => webhooks::create(state, req).await,
        ("/api/v1/webhooks/deliveries", Method::GET) => webhooks::deliveries(state, query).await,
        ("/api/v1/webhooks/deliveries/{delivery_id}", Method::DELETE) => {
            webhooks::discard(state, p(0)).await
        }
        ("/api/v1/webhooks/deliveries/{delivery_id}/retry", Method::POST) => {
            webhooks::retry(state, p(0)).await
        }
        ("/api/v1/webhooks/{webhook_id}", Method::GET) => webhooks::get(state, p(0)),
        ("/api/v1/webhooks/{webhook_id}", Method::PATCH) => webhooks::patch(state, p(0), req).await,
        ("/api/v1/webhooks/{webhook_id}", Method::DELETE) => webhooks::delete(state, p(0)).await,
        ("/api/v1/service-clients", Method::GET) => service_clients::list(state, query).await,
        ("/api/v1/service-clients", Method::POST) => service_clients::create(state, req).await,
        ("/api/v1/service-clients/{name}", Method::PATCH) => {
            service_clients::update(state, p(0), req).await
        }
        ("/api/v1/service-clients/{name}", Method::DELETE) => {
            service_clients::delete(state, p(0)).await
        }
        ("/api/v1/clients", Method::GET) => clients::list(state, query),
        ("/api/v1/clients/{client_id}", Method::GET) => clients::get(state, p(0)).await,
        ("/api/v1/clients/{client_id}", Method::DELETE) => clients::kick(state, p(0)),
        ("/api/v1/connections/refused", Method::GET) => connections::refused(state, query),
        ("/api/v1/publish", Method::POST) => publish::publish(state, req).await,
        ("/api/v1/retained", Method::GET) => retained::list(state, req.uri().query()),
        ("/api/v1/retained", Method::DELETE) => retained::delete(state, req.uri().query()).await,
        ("/api/v1/subscribe", Method::GET) => subscribe::stream(state, query),
        ("/api/v1/stats", Method::GET) => stats::get(state).await,
        ("/api/v1/stats/history", Method::GET) => stats::history(state),
        ("/api/v1/keys", Method::GET) => keys::list(state, query).await,
        ("/api/v1/keys", Method::POST) => keys::create(state, req).await,
        ("/api/v1/keys/{name}", Method::DELETE) => keys::delete(state, p(0), identity).await,
        ("/api/v1/audit", Method::GET) => audit::list(state, query).await,
        ("/api/v1/backup", Method::POST) => backup::create(state).await,
        ("/api/v1/events", Method::GET) => events::stream(state, query, req.headers()),
        // A method the table lists but no arm handles is caught by the route tests.
        _ => Err(ApiError::MethodNotAllowed { allow: route.allow }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(path: &str) -> Option<(&'static str, Vec<String>)> {
        let segments = path_segments(path).unwrap();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        ROUTES.iter().find_map(|r| {
            r.capture(&segments)
                .map(|p| (r.path, p.into_iter().map(str::to_owned).collect()))
        })
    }

    #[test]
    fn patterns_capture_segments() {
        assert_eq!(
            find("/api/v1/devices/d%2F1/telemetry/latest"),
            Some((
                "/api/v1/devices/{id}/telemetry/latest",
                vec!["d/1".to_owned()]
            ))
        );
        assert_eq!(find("/api/v1/devices"), Some(("/api/v1/devices", vec![])));
        assert_eq!(find("/api/v1/devices/a/b"), None);
        assert_eq!(find("/api/v1"), None);
        assert_eq!(find("/health/x"), None);
    }

    #[test]
    fn a_path_matching_two_patterns_goes_where_the_method_is_answered() {
        let path = |method: Method| {
            let segments = ["api", "v1", "devices", "bulk"];
            lookup(&segments, &method).map(|(r, p)| (r.path, p))
        };
        assert_eq!(path(Method::POST), Some(("/api/v1/devices/bulk", vec![])));
        // A device called `bulk` is still reachable.
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            assert_eq!(path(method), Some(("/api/v1/devices/{id}", vec!["bulk"])));
        }
        // Neither answers PUT: the first match's 405.
        assert_eq!(path(Method::PUT), Some(("/api/v1/devices/bulk", vec![])));
        let segments = ["api", "v1", "devices", "d1"];
        assert_eq!(
            lookup(&segments, &Method::POST).map(|(r, _)| r.path),
            Some("/api/v1/devices/{id}")
        );
    }

    #[test]
    fn every_route_is_listed_once() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(r.path.starts_with('/'), "{}", r.path);
            assert!(!ROUTES[..i].iter().any(|o| o.path == r.path), "{}", r.path);
            for m in r.methods() {
                assert!(m.parse::<Method>().is_ok() && m == m.to_uppercase(), "{m}");
            }
        }
    }
}
