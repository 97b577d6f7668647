//! `/api/v1/service-clients`: named MQTT users for host applications, with their ACL.

use fleetmq_storage::{now_ms, AclRule, CredentialHash, ServiceClientRecord, StoreError};
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::json;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::time::rfc3339_ms;
use crate::AppState;

/// Shortest service client password.
const MIN_PASSWORD_LEN: usize = 8;
/// Longest service client name, in bytes.
const MAX_NAME_LEN: usize = 128;
/// Most ACL rules one service client may have.
const MAX_RULES: usize = 256;
/// Longest ACL topic filter, in bytes (MQTT's own limit on a topic).
const MAX_TOPIC_LEN: usize = 65_535;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateServiceClient {
    name: String,
    password: String,
    #[serde(default)]
    rules: Vec<AclRule>,
}

/// A service client as the API shows it: never its password hash.
#[derive(Serialize)]
struct ServiceClientView<'a> {
    name: &'a str,
    rules: &'a [AclRule],
    created_at: String,
}

#[derive(Serialize)]
struct ServiceClientList<'a> {
    items: Vec<ServiceClientView<'a>>,
    next_cursor: Option<&'a str>,
}

fn view(record: &ServiceClientRecord) -> ServiceClientView<'_> {
    ServiceClientView {
        name: &record.name,
        rules: &record.rules,
        created_at: rfc3339_ms(record.created_at_ms),
    }
}

/// A name is an MQTT username and shows up in `%u` substitutions: it must not be
/// able to act as a topic wildcard or level separator.
fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "name {name:?}: must be 1 to {MAX_NAME_LEN} bytes without '/', '+', '#' or control characters"
        )))
    }
}

/// Checks an MQTT topic filter as written in a rule (`%c`/`%u` allowed anywhere).
fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return Err("must be 1 to 65535 bytes without NUL".to_owned());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("'#' must be a whole level and the last one".to_owned());
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level".to_owned());
        }
    }
    Ok(())
}

fn validate_create(body: &CreateServiceClient) -> Result<(), ApiError> {
    validate_name(&body.name)?;
    if body.password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::Unprocessable(format!(
            "password: must be at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if body.rules.len() > MAX_RULES {
        return Err(ApiError::Unprocessable(format!(
            "rules: at most {MAX_RULES} are allowed"
        )));
    }
    for (i, rule) in body.rules.iter().enumerate() {
        validate_filter(&rule.topic).map_err(|why| {
            ApiError::Unprocessable(format!("rules[{i}].topic {:?}: {why}", rule.topic))
        })?;
    }
    Ok(())
}

/// `POST /api/v1/service-clients`.
pub(crate) async fn create<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: CreateServiceClient = json::read_request(req, state.config.max_body_bytes).await?;
    validate_create(&body)?;
    let record = state
        .store
        .call(move |s| {
            let record = ServiceClientRecord {
                name: body.name,
                credential: CredentialHash::new(body.password.as_bytes()),
                rules: body.rules,
                created_at_ms: now_ms(),
            };
            s.create_service_client(record.clone()).map(|()| record)
        })
        .await?;
    tracing::info!(service_client = %record.name, "service client created");
    Ok(response::json(StatusCode::CREATED, &view(&record)))
}

/// `GET /api/v1/service-clients`, in name order.
pub(crate) async fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let page = Query::parse(query, &["limit", "cursor"])?.page()?;
    let records = state.store.call(|s| s.list_service_clients()).await?;
    let mut after_cursor = records
        .iter()
        .filter(|r| page.cursor.as_deref().is_none_or(|c| r.name.as_str() > c));
    let items: Vec<_> = after_cursor.by_ref().take(page.limit).map(view).collect();
    let next_cursor = match after_cursor.next() {
        Some(_) => items.last().map(|v| v.name),
        None => None,
    };
    let body = ServiceClientList { items, next_cursor };
    Ok(response::json(StatusCode::OK, &body))
}

/// `DELETE /api/v1/service-clients/{name}`: its open connections are closed.
pub(crate) async fn delete(state: &AppState, name: &str) -> Result<ApiResponse, ApiError> {
    let owned = name.to_owned();
    let broker = state.broker.clone();
    state
        .store
        .call(move |s| {
            s.delete_service_client(&owned)?;
            // Told inside the blocking call: a client hanging up mid-request cannot
            // leave the service client deleted but still connected.
            broker.service_client_removed(&owned);
            Ok::<_, StoreError>(())
        })
        .await?;
    tracing::info!(service_client = %name, "service client deleted");
    Ok(response::no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["#", "a/+/c", "device/%c/#", "+", "a//b", "/"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a+/b", "a/b+"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("backend-1").is_ok());
        for bad in ["", "a/b", "a+", "#", "a\nb"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
