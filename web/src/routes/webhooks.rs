//! SPEC §7, §8: webhook endpoints and their deliveries.
//!
//! - `POST/GET /api/v1/webhooks`, `GET/PATCH/DELETE /api/v1/webhooks/{id}`: endpoints
//!   created at runtime (`source: api`) and those of the config file (`source: config`,
//!   read-only: `409` on PATCH and DELETE). The secret is write-only.
//! - `GET /api/v1/webhooks/deliveries?webhook=&status=pending|failed|dead&limit=&cursor=`:
//!   what the durable outbox still owes (and what it gave up on).
//! - `POST /api/v1/webhooks/deliveries/{id}/retry`, `DELETE /api/v1/webhooks/deliveries/{id}`:
//!   attempt one now; discard one.

use fleetmq_broker::fleet::webhooks::{EndpointError, EndpointPatch, NewEndpoint};
use fleetmq_storage::outbox::DeliveryStatus;
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::json;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::AppState;

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    url: String,
    secret: String,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchWebhook {
    url: Option<String>,
    secret: Option<String>,
    /// Absent: unchanged; `null`: every event type; a list: those patterns.
    #[serde(default)]
    events: Option<serde_json::Value>,
    enabled: Option<bool>,
}

impl From<EndpointError> for ApiError {
    fn from(err: EndpointError) -> Self {
        match err {
            EndpointError::NotFound { .. } => Self::NotFound(err.to_string()),
            EndpointError::Invalid(msg) => Self::Unprocessable(msg),
            EndpointError::Conflict(msg) => Self::Conflict(msg),
            EndpointError::Storage(e) => Self::from(e),
            other => Self::internal(other),
        }
    }
}

/// `POST /api/v1/webhooks`: `201` with the endpoint (without its secret).
pub(crate) async fn create<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: CreateWebhook = json::read_request(req, state.config.max_body_bytes).await?;
    let new = NewEndpoint {
        url: body.url,
        secret: body.secret,
        events: body.events,
        enabled: body.enabled,
    };
    let view = state.broker.events().create_endpoint(new).await?;
    Ok(response::json(StatusCode::CREATED, &view))
}

/// `GET /api/v1/webhooks`: every endpoint, the config file's first; the cursor is the
/// last id of the previous page.
pub(crate) fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let page = Query::parse(query, &["limit", "cursor"])?.page()?;
    let mut all = state.broker.events().endpoints();
    if let Some(cursor) = &page.cursor {
        let at = (all.iter().position(|e| &e.id == cursor))
            .ok_or_else(|| ApiError::BadRequest(format!("invalid cursor {cursor:?}")))?;
        all.drain(..=at);
    }
    let more = all.len() > page.limit;
    all.truncate(page.limit);
    let next_cursor = more.then(|| all.last().map(|e| e.id.clone())).flatten();
    let page = Page {
        items: all,
        next_cursor,
    };
    Ok(response::json(StatusCode::OK, &page))
}

/// `GET /api/v1/webhooks/{id}`.
pub(crate) fn get(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let view = state.broker.events().endpoint(id)?;
    Ok(response::json(StatusCode::OK, &view))
}

/// `PATCH /api/v1/webhooks/{id}`: `{"url"?, "secret"?, "events"?, "enabled"?}`.
pub(crate) async fn patch<B>(
    state: &AppState,
    id: &str,
    req: Request<B>,
) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: PatchWebhook = json::read_request(req, state.config.max_body_bytes).await?;
    let events = match body.events {
        None => None,
        Some(serde_json::Value::Null) => Some(None),
        Some(value) => Some(Some(serde_json::from_value(value).map_err(|_| {
            ApiError::Unprocessable("`events` must be a list of strings or null".into())
        })?)),
    };
    let patch = EndpointPatch {
        url: body.url,
        secret: body.secret,
        events,
        enabled: body.enabled,
    };
    let view = state.broker.events().update_endpoint(id, patch).await?;
    Ok(response::json(StatusCode::OK, &view))
}

/// `DELETE /api/v1/webhooks/{id}`: `204`; what it was owed is given up.
pub(crate) async fn delete(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    state.broker.events().delete_endpoint(id).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/webhooks/deliveries`.
pub(crate) async fn deliveries(
    state: &AppState,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["webhook", "status", "limit", "cursor"])?;
    let status = match query.one("status")? {
        None => None,
        Some(text) => Some(text.parse::<DeliveryStatus>().map_err(|_| {
            ApiError::BadRequest(format!(
                "unknown status {text:?}; use pending, failed or dead"
            ))
        })?),
    };
    let webhook = query.one("webhook")?;
    let page = query.page()?;
    let (items, next_cursor) = state
        .broker
        .events()
        .deliveries_of(webhook, status, page.limit, page.cursor)
        .await
        .map_err(|e| match e {
            EndpointError::Storage(fleetmq_storage::StoreError::Invalid(msg)) => {
                ApiError::BadRequest(msg)
            }
            other => ApiError::from(other),
        })?;
    Ok(response::json(StatusCode::OK, &Page { items, next_cursor }))
}

/// `POST /api/v1/webhooks/deliveries/{id}/retry`: the delivery, due now.
pub(crate) async fn retry(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let view = state.broker.events().retry_delivery(id).await?;
    Ok(response::json(StatusCode::OK, &view))
}

/// `DELETE /api/v1/webhooks/deliveries/{id}`: `204`.
pub(crate) async fn discard(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    state.broker.events().discard_delivery(id).await?;
    Ok(response::no_content())
}
