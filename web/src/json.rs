//! JSON in: reading a request body under the size limit and parsing it, with the
//! `400`/`413`/`422` each failure is. JSON answers are built in `response`.

use http::{header, HeaderMap, Request};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
    use bytes::Bytes;
    use http::HeaderValue;
    use http_body_util::Full;

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
