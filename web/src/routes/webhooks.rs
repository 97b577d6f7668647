//! SPEC §7: `GET /api/v1/webhooks/deliveries?status=pending|failed|dead&limit=&cursor=`,
//! what the durable outbox still owes (and what it gave up on).

use fleetmq_storage::outbox::DeliveryStatus;
use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::AppState;

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// `GET /api/v1/webhooks/deliveries`.
pub(crate) async fn deliveries(
    state: &AppState,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["status", "limit", "cursor"])?;
    let status = match query.one("status")? {
        None => None,
        Some(text) => Some(text.parse::<DeliveryStatus>().map_err(|_| {
            ApiError::BadRequest(format!(
                "unknown status {text:?}; use pending, failed or dead"
            ))
        })?),
    };
    let page = query.page()?;
    let (items, next_cursor) = state
        .broker
        .events()
        .deliveries(status, page.limit, page.cursor)
        .await
        .map_err(|e| match e {
            fleetmq_storage::StoreError::Invalid(msg) => ApiError::BadRequest(msg),
            other => ApiError::from(other),
        })?;
    Ok(response::json(StatusCode::OK, &Page { items, next_cursor }))
}
