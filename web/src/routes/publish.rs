//! `/api/v1/publish`: publish a message as the broker.

use base64::Engine as _;
use bytes::Bytes;
use fleetmq_broker::{PublishError, PublishRequest};
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::json;
use crate::response::{self, ApiResponse};
use crate::AppState;

/// `payload` is the message text; a JSON object, array, number or boolean is sent
/// as its compact JSON text. Binary payloads go in `payload_base64` instead.
/// Neither means an empty payload (which, retained, clears the topic's retained message).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    topic: String,
    payload: Option<Value>,
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

fn payload(body: &Publish) -> Result<Bytes, ApiError> {
    match (&body.payload, &body.payload_base64) {
        (Some(_), Some(_)) => Err(ApiError::Unprocessable(
            "give either payload or payload_base64, not both".to_owned(),
        )),
        (None | Some(Value::Null), None) => Ok(Bytes::new()),
        (Some(Value::String(text)), None) => Ok(Bytes::from(text.clone())),
        (Some(value), None) => Ok(Bytes::from(value.to_string())),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|err| ApiError::Unprocessable(format!("payload_base64: {err}"))),
    }
}

/// `POST /api/v1/publish` → `202 {"published":true}` once the broker took the message
/// (a retained one is stored durably by then).
pub(crate) async fn publish<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: Publish = json::read_request(req, state.config.max_body_bytes).await?;
    if body.qos > 2 {
        return Err(ApiError::Unprocessable(format!(
            "qos {}: must be 0, 1 or 2",
            body.qos
        )));
    }
    let request = PublishRequest {
        payload: payload(&body)?,
        topic: body.topic,
        qos: body.qos,
        retain: body.retain,
    };
    state.broker.publish(request).await.map_err(publish_error)?;
    Ok(response::json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "published": true }),
    ))
}

fn publish_error(err: PublishError) -> ApiError {
    match err {
        PublishError::InvalidTopic(_)
        | PublishError::InvalidQos(_)
        | PublishError::TooLarge { .. } => ApiError::Unprocessable(err.to_string()),
        PublishError::ShuttingDown => ApiError::Unavailable(err.to_string()),
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Publish {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn payload_forms() {
        let p = |json| payload(&body(json));
        assert_eq!(p(r#"{"topic":"t","payload":"hi"}"#).unwrap(), "hi");
        assert_eq!(
            p(r#"{"topic":"t","payload":{"a":1}}"#).unwrap(),
            r#"{"a":1}"#
        );
        assert_eq!(p(r#"{"topic":"t"}"#).unwrap(), "");
        assert_eq!(
            p(r#"{"topic":"t","payload_base64":"AAE="}"#).unwrap(),
            &[0u8, 1][..]
        );
        assert!(p(r#"{"topic":"t","payload_base64":"!!"}"#).is_err());
        assert!(p(r#"{"topic":"t","payload":"a","payload_base64":"AAE="}"#).is_err());
    }
}
