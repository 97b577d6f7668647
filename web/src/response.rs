//! What every answer is made of: the body and response types, and the builders for a
//! body in one piece, a JSON document and `204 No Content`. A leaf: both `error` (which
//! turns an [`ApiError`](crate::error::ApiError) into a JSON answer) and `json` (which
//! reads request bodies into `ApiError`s) build on it without importing each other.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

/// The body of every answer: a whole JSON document, or a stream (`/api/v1/events`).
pub(crate) type ApiBody = UnsyncBoxBody<Bytes, Infallible>;
/// The response type of every handler.
pub(crate) type ApiResponse = Response<ApiBody>;

/// A body that is all there in one piece.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// A `text/event-stream` answer whose body is the chunks `next` makes of `feed`, until
/// it gives `None` (`/api/v1/events`, `/api/v1/subscribe`).
pub(crate) fn event_stream<F, Fut>(feed: F, next: fn(F) -> Fut) -> ApiResponse
where
    F: Send + 'static,
    Fut: std::future::Future<Output = Option<(Bytes, F)>> + Send + 'static,
{
    let frames = futures_util::stream::unfold(feed, move |feed| async move {
        let (chunk, feed) = next(feed).await?;
        Some((Ok::<_, Infallible>(hyper::body::Frame::data(chunk)), feed))
    });
    let mut response = Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells buffering reverse proxies (nginx) to pass frames on at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Builds a JSON response. Our own response types always serialize; should one ever
/// not, the client gets a 500 instead of a broken body.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> ApiResponse {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(err) => {
            tracing::error!(error = %err, "cannot serialize admin api response");
            let fallback = br#"{"error":{"code":"internal","message":"internal error"}}"#;
            (StatusCode::INTERNAL_SERVER_ERROR, fallback.to_vec())
        }
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `204 No Content`.
pub(crate) fn no_content() -> ApiResponse {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
