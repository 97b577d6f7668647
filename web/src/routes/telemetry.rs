//! SPEC §6 telemetry: `GET /api/v1/devices/{id}/telemetry?from=&to=&keys=&limit=&cursor=`
//! (newest first) and `GET /api/v1/devices/{id}/telemetry/latest`.

use fleetmq_broker::fleet::telemetry::{TelemetryError, TelemetryQuery};
use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::routes::devices::path_id;
use crate::AppState;

impl From<TelemetryError> for ApiError {
    fn from(err: TelemetryError) -> Self {
        match err {
            TelemetryError::InvalidCursor => Self::BadRequest(err.to_string()),
            TelemetryError::InvalidQuery(_) => Self::Unprocessable(err.to_string()),
            other => Self::internal(other),
        }
    }
}

pub(crate) async fn known_device(
    state: &AppState,
    id: &fleetmq_storage::DeviceId,
) -> Result<(), ApiError> {
    let lookup = id.clone();
    match state.store.call(move |s| s.get_device(&lookup)).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!(
            "device {:?} not found",
            id.as_str()
        ))),
    }
}

pub(crate) fn time_param(query: &Query, name: &str) -> Result<Option<u64>, ApiError> {
    match query.one(name)? {
        None => Ok(None),
        Some(text) => TelemetryQuery::parse_time(text).map(Some).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be RFC 3339 or unix milliseconds, got {text:?}"
            ))
        }),
    }
}

/// `GET .../telemetry`: points newest first, with a cursor for the next page.
pub(crate) async fn query(
    state: &AppState,
    id: &str,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    let query = Query::parse(query, &["from", "to", "keys", "limit", "cursor"])?;
    let page = query.page()?;
    let keys = query.one("keys")?.map(|k| {
        k.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let q = TelemetryQuery {
        from_ms: time_param(&query, "from")?,
        to_ms: time_param(&query, "to")?,
        keys,
        limit: page.limit,
        cursor: page.cursor,
    };
    known_device(state, &id).await?;
    let result = state.broker.telemetry().query(&id, q).await?;
    Ok(response::json(StatusCode::OK, &result))
}

#[derive(Serialize)]
struct Latest<T> {
    device_id: String,
    values: T,
}

/// `GET .../telemetry/latest`: the newest value of every key.
pub(crate) async fn latest(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    known_device(state, &id).await?;
    let values = state.broker.telemetry().latest(&id).await?;
    Ok(response::json(
        StatusCode::OK,
        &Latest {
            device_id: id.to_string(),
            values,
        },
    ))
}
