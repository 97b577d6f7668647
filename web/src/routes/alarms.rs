//! SPEC §11: alarm rules and alarms.
//!
//! - `POST/GET /api/v1/alarm-rules`, `PUT/DELETE /api/v1/alarm-rules/{rule_id}`: rules;
//!   a change applies to the next telemetry point, a deleted rule's alarms are cleared.
//! - `GET /api/v1/alarms?status=&device=&severity=&acknowledged=&limit=&cursor=`:
//!   newest first; `POST /api/v1/alarms/{alarm_id}/ack`: idempotent.

use fleetmq_broker::fleet::alarms::SEVERITIES;
use fleetmq_storage::alarms::AlarmFilter;
use http::{Request, StatusCode};
use hyper::body::Body;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::json;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::AppState;

/// `POST /api/v1/alarm-rules`: `201` with the rule.
pub(crate) async fn create<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: Value = json::read_request(req, state.config.max_body_bytes).await?;
    let rule = state.broker.alarms().create_rule(&body).await?;
    Ok(response::json(StatusCode::CREATED, &rule))
}

/// `GET /api/v1/alarm-rules`: every rule, by id.
pub(crate) async fn rules(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    Query::parse(query, &[])?;
    let items = state.broker.alarms().rules().await?;
    Ok(response::json(StatusCode::OK, &json!({"items": items})))
}

/// `PUT /api/v1/alarm-rules/{rule_id}`: the whole rule again.
pub(crate) async fn update<B>(
    state: &AppState,
    id: &str,
    req: Request<B>,
) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: Value = json::read_request(req, state.config.max_body_bytes).await?;
    let rule = state.broker.alarms().update_rule(id, &body).await?;
    Ok(response::json(StatusCode::OK, &rule))
}

/// `DELETE /api/v1/alarm-rules/{rule_id}`: `204`.
pub(crate) async fn delete(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    state.broker.alarms().delete_rule(id).await?;
    Ok(response::no_content())
}

/// `GET /api/v1/alarms`.
pub(crate) async fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let names = [
        "status",
        "device",
        "severity",
        "acknowledged",
        "limit",
        "cursor",
    ];
    let query = Query::parse(query, &names)?;
    let page = query.page()?;
    let active = match query.one("status")? {
        None => None,
        Some("active") => Some(true),
        Some("cleared") => Some(false),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "status: {other:?} is not active or cleared"
            )))
        }
    };
    let severity = query.one("severity")?.map(str::to_owned);
    if let Some(s) = severity.as_deref().filter(|s| !SEVERITIES.contains(s)) {
        return Err(ApiError::BadRequest(format!(
            "severity: {s:?} is not critical, major, minor or warning"
        )));
    }
    let cursor = match page.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid cursor {c:?}")))?,
        ),
    };
    let filter = AlarmFilter {
        active,
        device: query.one("device")?.map(str::to_owned),
        severity,
        acknowledged: query.flag("acknowledged")?,
    };
    let (items, next_cursor) = state
        .broker
        .alarms()
        .list(filter, cursor, page.limit)
        .await?;
    let body = json!({"items": items, "next_cursor": next_cursor});
    Ok(response::json(StatusCode::OK, &body))
}

/// `POST /api/v1/alarms/{alarm_id}/ack`: the alarm, acknowledged.
pub(crate) async fn ack(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let alarm = state.broker.alarms().ack(id).await?;
    Ok(response::json(StatusCode::OK, &alarm))
}
