//! `/api/v1/retained`: list retained messages by topic filter, delete one by topic.

use base64::Engine;
use fleetmq_broker::RetainedError;
use fleetmq_storage::RetainedMessage;
use http::StatusCode;
use serde::Serialize;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::time::rfc3339_ms;
use crate::AppState;

/// A retained message as the API shows it: UTF-8 payloads as text, others in base64.
#[derive(Serialize)]
struct RetainedView<'a> {
    topic: &'a str,
    payload: String,
    /// `"utf8"` or `"base64"`.
    encoding: &'static str,
    qos: u8,
    stored_at: String,
    /// When its MQTT 5 Message Expiry Interval runs out; `null`: never.
    expires_at: Option<String>,
    /// The MQTT 5 PUBLISH properties it is delivered with (to v5 subscribers).
    properties: PropertiesView<'a>,
}

/// A retained message's publisher properties; absent ones are left out, user
/// properties keep their order and repeats [MQTT-3.3.2-18].
#[derive(Serialize)]
struct PropertiesView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_format_indicator: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_topic: Option<&'a str>,
    /// Binary in MQTT, so base64 here.
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_data: Option<String>,
    user_properties: Vec<UserProperty<'a>>,
}

#[derive(Serialize)]
struct UserProperty<'a> {
    key: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct RetainedList<'a> {
    items: Vec<RetainedView<'a>>,
    next_cursor: Option<&'a str>,
}

fn view(m: &RetainedMessage) -> RetainedView<'_> {
    let base64 = &base64::engine::general_purpose::STANDARD;
    let (payload, encoding) = match std::str::from_utf8(&m.payload) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (base64.encode(&m.payload), "base64"),
    };
    let p = &m.properties;
    RetainedView {
        topic: &m.topic,
        payload,
        encoding,
        qos: m.qos,
        stored_at: rfc3339_ms(m.stored_at_ms),
        expires_at: m.expires_at_ms.map(rfc3339_ms),
        properties: PropertiesView {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.as_deref(),
            response_topic: p.response_topic.as_deref(),
            correlation_data: p.correlation_data.as_ref().map(|d| base64.encode(d)),
            user_properties: p
                .user_properties
                .iter()
                .map(|(key, value)| UserProperty { key, value })
                .collect(),
        },
    }
}

fn api_error(e: RetainedError) -> ApiError {
    match e {
        RetainedError::InvalidTopic(_) => ApiError::Unprocessable(e.to_string()),
        other => ApiError::Internal(Box::new(other)),
    }
}

/// `GET /api/v1/retained?topic=<filter>&limit=&cursor=` (filter default `#`), by topic.
pub(crate) fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["topic", "limit", "cursor"])?;
    let page = query.page()?;
    let filter = query.one("topic")?.unwrap_or("#");
    let all = state.broker.retained(filter).map_err(api_error)?;
    let mut after_cursor = all
        .iter()
        .filter(|m| page.cursor.as_deref().is_none_or(|c| m.topic.as_str() > c));
    let items: Vec<_> = after_cursor.by_ref().take(page.limit).map(view).collect();
    let next_cursor = match after_cursor.next() {
        Some(_) => items.last().map(|v| v.topic),
        None => None,
    };
    Ok(response::json(
        StatusCode::OK,
        &RetainedList { items, next_cursor },
    ))
}

/// `DELETE /api/v1/retained?topic=<exact topic>`: 404 when there is none.
pub(crate) async fn delete(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["topic"])?;
    let Some(topic) = query.one("topic")? else {
        return Err(ApiError::BadRequest(
            "query parameter `topic` is required".into(),
        ));
    };
    if !state
        .broker
        .delete_retained(topic)
        .await
        .map_err(api_error)?
    {
        return Err(ApiError::NotFound(format!(
            "no retained message on {topic:?}"
        )));
    }
    tracing::info!(topic, "retained message deleted");
    Ok(response::no_content())
}
