//! Errors: [`ApiError`] is what a request handler fails with and is turned into an HTTP
//! answer in exactly one place ([`ApiError::into_response`]); [`WebError`] is what
//! starting the admin API fails with.

use std::error::Error as StdError;
use std::path::PathBuf;

use fleetmq_broker::fleet::FleetError;
use fleetmq_storage::{DeleteKeyError, StoreError};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use crate::response::{self, ApiResponse};

/// Why a request failed. The message of every variant but `Internal` is shown to the
/// client; an internal cause is logged and replaced by a generic message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ApiError {
    /// The request itself is malformed: bad JSON, bad query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// No API key, or the wrong one.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid key whose role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The path exists but not with this method; `allow` lists the methods it has.
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// More items than one request may carry (`POST /api/v1/devices/bulk`).
    #[error(
        "{got} {what} in one request; at most {max} are allowed, split them into several requests"
    )]
    TooManyItems {
        what: &'static str,
        got: usize,
        max: usize,
    },
    /// Well-formed, but a value is not acceptable (bad device id, bad qos, ...).
    #[error("{0}")]
    Unprocessable(String),
    /// A per-device queue is full (commands); `depth` is how many are waiting.
    #[error("{message}")]
    TooManyRequests { message: String, depth: usize },
    /// The broker cannot take the request right now (shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// Our own fault; the cause goes to the log, never to the client.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
    /// For `too_many_requests`: how many commands are already waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    depth: Option<usize>,
}

impl ApiError {
    /// Wraps our own failure; the cause is logged when the response is built.
    pub(crate) fn internal(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Internal(cause.into())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge { .. } | Self::TooManyItems { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The `code` and `message` of the error envelope; an internal cause is logged here
    /// and replaced by a generic message. Also what one item of a bulk request that
    /// failed on its own answers with.
    pub(crate) fn code_and_message(&self) -> (&'static str, String) {
        let (_, code) = self.status_and_code();
        let message = match self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "admin api request failed");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        (code, message)
    }

    /// The one place an error becomes an HTTP answer.
    pub(crate) fn into_response(self) -> ApiResponse {
        let (status, _) = self.status_and_code();
        let (code, message) = self.code_and_message();
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: &message,
                depth: match &self {
                    Self::TooManyRequests { depth, .. } => Some(*depth),
                    _ => None,
                },
            },
        };
        let mut response = response::json(status, &body);
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { .. } => Self::NotFound(err.to_string()),
            StoreError::Conflict { .. } => Self::Conflict(err.to_string()),
            StoreError::Invalid(msg) => Self::Unprocessable(msg),
            other => Self::internal(other),
        }
    }
}

impl From<DeleteKeyError> for ApiError {
    fn from(err: DeleteKeyError) -> Self {
        match err {
            DeleteKeyError::NotFound(_) => Self::NotFound(err.to_string()),
            DeleteKeyError::LastAdmin(_) => Self::Conflict(err.to_string()),
            DeleteKeyError::Store(e) => e.into(),
            other => Self::internal(other),
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(err: FleetError) -> Self {
        match err {
            FleetError::NotFound { .. } => Self::NotFound(err.to_string()),
            FleetError::Conflict { .. } => Self::Conflict(err.to_string()),
            FleetError::Invalid(msg) => Self::Unprocessable(msg),
            FleetError::QueueFull { depth } => Self::TooManyRequests {
                message: err.to_string(),
                depth,
            },
            other => Self::internal(other),
        }
    }
}

/// Why the admin API could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    #[error("admin key: storage error: {0}")]
    Store(#[from] StoreError),
    #[error("admin key: cannot write {}: {source}", path.display())]
    WriteKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `admin.tls`: a certificate or key file cannot be used.
    #[error("{key}: {}: {reason}", path.display())]
    Tls {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}
