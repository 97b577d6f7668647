//! SPEC §5 commands: `POST/GET /api/v1/devices/{id}/commands`,
//! `GET/DELETE /api/v1/commands/{command_id}`.

use std::time::Duration;

use fleetmq_broker::fleet::commands::{CommandError, CommandStatus, NewCommand};
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::Serialize;

use crate::error::ApiError;
use crate::json;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::routes::devices::path_id;
use crate::AppState;

/// The longest `?wait_ms` a create may ask for.
const MAX_WAIT_MS: u64 = 60_000;

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        match err {
            CommandError::NotFound => Self::NotFound(err.to_string()),
            CommandError::AlreadyTerminal(_) => Self::Conflict(err.to_string()),
            CommandError::QueueFull { depth } => Self::TooManyRequests {
                message: err.to_string(),
                depth,
            },
            CommandError::Invalid(msg) => Self::Unprocessable(msg),
            CommandError::ShuttingDown => Self::Unavailable(err.to_string()),
            other => Self::internal(other),
        }
    }
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// `POST /api/v1/devices/{id}/commands[?wait_ms=N]` with an optional `Idempotency-Key`.
/// `202` with the record; with `wait_ms`, `200` once it reached a terminal state.
pub(crate) async fn create<B>(
    state: &AppState,
    id: &str,
    req: Request<B>,
) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let id = path_id(id)?;
    let wait_ms = wait_ms(req.uri().query())?;
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
                .to_owned(),
        ),
    };
    let body: NewCommand = json::read_request(req, state.config.max_body_bytes).await?;
    let engine = state.broker.commands();
    // The device as the engine remembers it; a store read only the first time (its
    // entry is dropped when the device is deleted, before the delete is answered).
    let device = match engine.cached_device(&id) {
        Ok(device) => device,
        Err(miss) => {
            let lookup = id.clone();
            let device = state.store.call(move |s| s.get_device(&lookup)).await?;
            let device = device
                .ok_or_else(|| ApiError::NotFound(format!("device {:?} not found", id.as_str())))?;
            engine.remember_device(&device, miss)?
        }
    };
    let record = match wait_ms {
        Some(ms) => {
            engine
                .create_and_wait_for(&device, body, key, Duration::from_millis(ms))
                .await?
                .record
        }
        None => engine.create_for(&device, body, key).await?.record,
    };
    let status = if record.status.is_terminal() && wait_ms.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(response::json(status, &record))
}

/// `GET /api/v1/devices/{id}/commands?status=&limit=&cursor=`, newest first.
pub(crate) async fn list(
    state: &AppState,
    id: &str,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    let query = Query::parse(query, &["status", "limit", "cursor"])?;
    let status = match query.one("status")? {
        None => None,
        Some(text) => Some(
            text.parse::<CommandStatus>()
                .map_err(|_| ApiError::BadRequest(format!("unknown status {text:?}")))?,
        ),
    };
    let page = query.page()?;
    let lookup = id.clone();
    if state
        .store
        .call(move |s| s.get_device(&lookup))
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "device {:?} not found",
            id.as_str()
        )));
    }
    let (items, next_cursor) = state
        .broker
        .commands()
        .list(&id, status, page.limit, page.cursor)
        .await?;
    Ok(response::json(StatusCode::OK, &Page { items, next_cursor }))
}

/// `GET /api/v1/commands/{command_id}`.
/// `GET /api/v1/commands/{command_id}[?wait_ms=N]`: the record; with `wait_ms`, once it
/// is terminal or after N ms, whichever comes first (`200` either way: the status says
/// which).
pub(crate) async fn get(
    state: &AppState,
    command_id: &str,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let engine = state.broker.commands();
    let record = match wait_ms(query)? {
        Some(ms) => {
            engine
                .wait_terminal(command_id, Duration::from_millis(ms))
                .await?
        }
        None => engine.get(command_id).await?,
    };
    Ok(response::json(StatusCode::OK, &record))
}

/// The optional `wait_ms` query parameter: `0..=MAX_WAIT_MS`.
fn wait_ms(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let query = Query::parse(query, &["wait_ms"])?;
    match query.one("wait_ms")? {
        None => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if ms <= MAX_WAIT_MS => Ok(Some(ms)),
            _ => Err(ApiError::BadRequest(format!(
                "wait_ms must be 0..={MAX_WAIT_MS}, got {text:?}"
            ))),
        },
    }
}

/// `DELETE /api/v1/commands/{command_id}`: cancels a command that is not terminal yet.
pub(crate) async fn cancel(state: &AppState, command_id: &str) -> Result<ApiResponse, ApiError> {
    let record = state.broker.commands().cancel(command_id).await?;
    Ok(response::json(StatusCode::OK, &record))
}
