//! JSON in and out: reading a request body under the size limit and building JSON
//! responses.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ApiError, ApiResponse};

/// A body that is all there in one piece.
pub(crate) fn full(bytes: impl Into<Bytes>) -> crate::error::ApiBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// Builds a JSON response. Our own response types always serialize; should one ever
/// not, the client gets a 500 instead of a broken body.
pub(crate) fn response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> ApiResponse {
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

/// Reads the whole body, refusing more than `limit` bytes both by the declared
/// `Content-Length` (before reading anything) and while reading (a chunked body or a
/// lying header), then parses it as `T`.
///
/// Syntax errors are `400`; a well-formed document of the wrong shape or with an
/// unacceptable value (unknown field, wrong type, unknown enum variant) is `422`.
pub(crate) async fn read<T, B>(headers: &HeaderMap, body: B, limit: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    check_declared_length(headers, limit)?;
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        Err(err) => return Err(ApiError::BadRequest(format!("cannot read body: {err}"))),
    };
    parse(&bytes)
}

/// [`read`] for a whole request.
pub(crate) async fn read_request<T, B>(req: Request<B>, limit: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    read(&parts.headers, body, limit).await
}

fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let declared = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::BadRequest("invalid Content-Length".to_owned()))?;
    if declared > limit as u64 {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(())
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "request body must be a JSON document".to_owned(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => ApiError::Unprocessable(format!("invalid request body: {err}")),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::BadRequest(format!("malformed JSON: {err}"))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized")]
    struct Probe {
        n: u8,
    }

    async fn read_probe(body: &'static str, limit: usize) -> Result<Probe, ApiError> {
        read(&HeaderMap::new(), Full::new(Bytes::from(body)), limit).await
    }

    #[tokio::test]
    async fn syntax_is_400_shape_is_422() {
        assert!(matches!(
            read_probe("{", 64).await,
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            read_probe("", 64).await,
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            read_probe(r#"{"n":300}"#, 64).await,
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            read_probe(r#"{"n":1,"x":2}"#, 64).await,
            Err(ApiError::Unprocessable(_))
        ));
        assert!(read_probe(r#"{"n":1}"#, 64).await.is_ok());
    }

    #[tokio::test]
    async fn limit_is_enforced_while_reading_and_by_header() {
        assert!(matches!(
            read_probe(r#"{"n":1}      "#, 8).await,
            Err(ApiError::PayloadTooLarge { limit: 8 })
        ));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let body = Full::new(Bytes::from_static(b"{}"));
        let res: Result<Probe, _> = read(&headers, body, 8).await;
        assert!(matches!(res, Err(ApiError::PayloadTooLarge { limit: 8 })));
    }
}
