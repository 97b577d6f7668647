//! Dispatch: path and method to handler, with the API key checked before any
//! `/api/v1/*` route is looked at (so an unauthenticated client learns nothing about
//! which routes exist).

use http::{Method, Request, StatusCode};
use hyper::body::Body;
use serde_json::json;

use crate::error::{ApiError, ApiResponse};
use crate::query::path_segments;
use crate::routes::{
    clients, commands, config, devices, publish, retained, service_clients, stats, telemetry,
    webhooks,
};
use crate::AppState;

/// Answers one request; every failure becomes a JSON error here.
pub(crate) async fn handle<B>(state: &AppState, req: Request<B>) -> ApiResponse
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match dispatch(state, req).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "admin api request");
    response
}

async fn dispatch<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let segments = path_segments(req.uri().path())?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["health"] => match *req.method() {
            Method::GET => Ok(crate::json::response(
                StatusCode::OK,
                &json!({"status": "ok"}),
            )),
            _ => not_allowed("GET"),
        },
        ["api", "v1", rest @ ..] => {
            state.key.authorize(req.headers()).await?;
            api(state, req, rest).await
        }
        _ => Err(no_route()),
    }
}

/// Every `/api/v1/*` route; `path` is what follows `/api/v1/`.
async fn api<B>(state: &AppState, req: Request<B>, path: &[&str]) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    match (path, method) {
        (["devices"], Method::GET) => devices::list(state, req.uri().query()).await,
        (["devices"], Method::POST) => devices::create(state, req).await,
        (["devices"], _) => not_allowed("GET, POST"),
        (["devices", id], Method::GET) => devices::get(state, id).await,
        (["devices", id], Method::PATCH) => devices::patch(state, id, req).await,
        (["devices", id], Method::DELETE) => devices::delete(state, id).await,
        (["devices", _], _) => not_allowed("GET, PATCH, DELETE"),
        (["devices", id, "rotate-credentials"], Method::POST) => {
            devices::rotate_credentials(state, id).await
        }
        (["devices", id, "rotate-key"], Method::POST) => devices::rotate_key(state, id).await,
        (["devices", _, "rotate-credentials" | "rotate-key"], _) => not_allowed("POST"),
        (["devices", id, "config"], Method::GET) => config::get(state, id).await,
        (["devices", id, "config"], Method::PUT) => config::put(state, id, req).await,
        (["devices", _, "config"], _) => not_allowed("GET, PUT"),
        (["devices", id, "commands"], Method::POST) => commands::create(state, id, req).await,
        (["devices", id, "commands"], Method::GET) => {
            commands::list(state, id, req.uri().query()).await
        }
        (["devices", _, "commands"], _) => not_allowed("GET, POST"),
        (["commands", cid], Method::GET) => commands::get(state, cid).await,
        (["commands", cid], Method::DELETE) => commands::cancel(state, cid).await,
        (["commands", _], _) => not_allowed("GET, DELETE"),
        (["devices", id, "telemetry"], Method::GET) => {
            telemetry::query(state, id, req.uri().query()).await
        }
        (["devices", _, "telemetry"], _) => not_allowed("GET"),
        (["devices", id, "telemetry", "latest"], Method::GET) => telemetry::latest(state, id).await,
        (["devices", _, "telemetry", "latest"], _) => not_allowed("GET"),
        (["webhooks", "deliveries"], Method::GET) => {
            webhooks::deliveries(state, req.uri().query()).await
        }
        (["webhooks", "deliveries"], _) => not_allowed("GET"),
        (["service-clients"], Method::GET) => service_clients::list(state, req.uri().query()).await,
        (["service-clients"], Method::POST) => service_clients::create(state, req).await,
        (["service-clients"], _) => not_allowed("GET, POST"),
        (["service-clients", name], Method::DELETE) => service_clients::delete(state, name).await,
        (["service-clients", _], _) => not_allowed("DELETE"),
        (["clients"], Method::GET) => clients::list(state, req.uri().query()),
        (["clients"], _) => not_allowed("GET"),
        (["clients", id], Method::DELETE) => clients::kick(state, id),
        (["clients", _], _) => not_allowed("DELETE"),
        (["publish"], Method::POST) => publish::publish(state, req).await,
        (["publish"], _) => not_allowed("POST"),
        (["retained"], Method::GET) => retained::list(state, req.uri().query()),
        (["retained"], Method::DELETE) => retained::delete(state, req.uri().query()).await,
        (["retained"], _) => not_allowed("GET, DELETE"),
        (["stats"], Method::GET) => stats::get(state).await,
        (["stats"], _) => not_allowed("GET"),
        _ => Err(no_route()),
    }
}

fn not_allowed(allow: &'static str) -> Result<ApiResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}

fn no_route() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}
