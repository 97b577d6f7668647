//! SPEC §7 `device.event`: `GET /api/v1/devices/{id}/events?from=&to=&type=&limit=&cursor=`,
//! what the device published on `device/{id}/events`, newest first.

use fleetmq_broker::fleet::device_events::{DeviceEventsError, EventsQuery};
use http::StatusCode;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::routes::devices::path_id;
use crate::routes::telemetry::{known_device, time_param};
use crate::AppState;

impl From<DeviceEventsError> for ApiError {
    fn from(err: DeviceEventsError) -> Self {
        match err {
            DeviceEventsError::InvalidCursor => Self::BadRequest(err.to_string()),
            DeviceEventsError::InvalidQuery(_) => Self::Unprocessable(err.to_string()),
            other => Self::internal(other),
        }
    }
}

/// `GET .../events`: events newest first, with a cursor for the next page.
pub(crate) async fn list(
    state: &AppState,
    id: &str,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    let query = Query::parse(query, &["from", "to", "type", "limit", "cursor"])?;
    let page = query.page()?;
    let kind = match query.one("type")? {
        Some("") => return Err(ApiError::BadRequest("type must not be empty".to_owned())),
        other => other.map(str::to_owned),
    };
    let q = EventsQuery {
        from_ms: time_param(&query, "from")?,
        to_ms: time_param(&query, "to")?,
        kind,
        limit: page.limit,
        cursor: page.cursor,
    };
    known_device(state, &id).await?;
    let result = state.broker.device_events().query(&id, q).await?;
    Ok(response::json(StatusCode::OK, &result))
}
