//! `/api/v1/stats`: the broker's counters.

use http::StatusCode;

use crate::error::{ApiError, ApiResponse};
use crate::json;
use crate::AppState;

/// `GET /api/v1/stats`.
pub(crate) fn get(state: &AppState) -> Result<ApiResponse, ApiError> {
    Ok(json::response(StatusCode::OK, &state.broker.stats()))
}
