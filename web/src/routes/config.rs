//! `/api/v1/devices/{id}/config` (SPEC §6): versioned configuration, published retained.

use http::{Request, StatusCode};
use hyper::body::Body;

use crate::error::ApiError;
use crate::json;
use crate::response::{self, ApiResponse};
use crate::routes::devices::path_id;
use crate::AppState;

/// `GET`: `{"version","config","reported_version"}`; 404 if the device or its config is unknown.
pub(crate) async fn get(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    match state.broker.device_config(&id).await? {
        Some(view) => Ok(response::json(StatusCode::OK, &view)),
        None => Err(ApiError::NotFound(format!(
            "device {id:?} has no configuration yet"
        ))),
    }
}

/// `PUT`: a JSON object becomes version n+1, published retained at QoS 1.
pub(crate) async fn put<B>(
    state: &AppState,
    id: &str,
    req: Request<B>,
) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let id = path_id(id)?;
    let config: serde_json::Value = json::read_request(req, state.config.max_body_bytes).await?;
    let view = state.broker.set_device_config(&id, config).await?;
    Ok(response::json(StatusCode::OK, &view))
}
