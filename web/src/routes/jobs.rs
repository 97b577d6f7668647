//! SPEC §12 jobs: `POST/GET /api/v1/jobs`, `GET/DELETE /api/v1/jobs/{job_id}`,
//! `GET /api/v1/jobs/{job_id}/commands?status=&limit=&cursor=`.

use fleetmq_broker::fleet::commands::CommandStatus;
use fleetmq_broker::fleet::jobs::{JobError, NewJob};
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::Serialize;

use crate::error::ApiError;
use crate::json;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::AppState;

impl From<JobError> for ApiError {
    fn from(err: JobError) -> Self {
        match err {
            JobError::NotFound => Self::NotFound(err.to_string()),
            JobError::NotRunning(..) => Self::Conflict(err.to_string()),
            JobError::Invalid(msg) => Self::Unprocessable(msg),
            JobError::Unavailable => Self::Unavailable(err.to_string()),
            other => Self::internal(other),
        }
    }
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// `POST /api/v1/jobs`: `201` with the job.
pub(crate) async fn create<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: NewJob = json::read_request(req, state.config.max_body_bytes).await?;
    let job = state.broker.jobs().create(body).await?;
    Ok(response::json(StatusCode::CREATED, &job))
}

/// `GET /api/v1/jobs`, newest first.
pub(crate) async fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    Query::parse(query, &[])?;
    let items = state.broker.jobs().list().await?;
    Ok(response::json(StatusCode::OK, &Items { items }))
}

/// `GET /api/v1/jobs/{job_id}`.
pub(crate) async fn get(state: &AppState, job_id: &str) -> Result<ApiResponse, ApiError> {
    let job = state.broker.jobs().get(job_id).await?;
    Ok(response::json(StatusCode::OK, &job))
}

/// `DELETE /api/v1/jobs/{job_id}`: cancels a running job (`409` once it ended).
pub(crate) async fn cancel(state: &AppState, job_id: &str) -> Result<ApiResponse, ApiError> {
    let job = state.broker.jobs().cancel(job_id).await?;
    Ok(response::json(StatusCode::OK, &job))
}

/// `GET /api/v1/jobs/{job_id}/commands?status=&limit=&cursor=`, in target order.
pub(crate) async fn commands(
    state: &AppState,
    job_id: &str,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["status", "limit", "cursor"])?;
    let status = match query.one("status")? {
        None => None,
        Some(text) => Some(
            text.parse::<CommandStatus>()
                .map_err(|_| ApiError::BadRequest(format!("unknown status {text:?}")))?,
        ),
    };
    let page = query.page()?;
    let cursor = page
        .cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<u32>()
                .map_err(|_| ApiError::BadRequest(format!("cursor {c:?} is not valid")))
        })
        .transpose()?;
    let (items, next) = state
        .broker
        .jobs()
        .commands(job_id, status, page.limit, cursor)
        .await?;
    let next_cursor = next.map(|n| n.to_string());
    Ok(response::json(StatusCode::OK, &Page { items, next_cursor }))
}
