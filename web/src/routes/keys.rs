//! `/api/v1/keys`: named admin API keys with roles (SPEC §8). The secret is returned
//! once, by `POST`; only its keyed hash is stored. The built-in key (`config` or
//! `admin`) is listed too; a generated one can be revoked like a named key, a
//! configured one only by removing it from the configuration.

use fleetmq_storage::{
    generate_token, now_ms, valid_api_key_name, ApiKeyRecord, ApiRole, DeleteKeyError,
    MAX_API_KEY_NAME_LEN,
};
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::{Deserialize, Serialize};

use crate::access::Identity;
use crate::auth::{CONFIGURED_KEY_NAME, GENERATED_KEY_NAME};
use crate::error::ApiError;
use crate::json;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::time::rfc3339_ms;
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    role: ApiRole,
}

/// A key as the API shows it: never its secret or hash.
#[derive(Serialize)]
struct KeyView {
    name: String,
    role: ApiRole,
    /// `None` for the built-in key.
    created_at: Option<String>,
    /// The built-in key (`admin.api_key` or `<data_dir>/admin.key`).
    builtin: bool,
}

#[derive(Serialize)]
struct Created {
    key: KeyView,
    secret: String,
}

#[derive(Serialize)]
struct KeyList {
    items: Vec<KeyView>,
    next_cursor: Option<String>,
}

fn view(record: &ApiKeyRecord) -> KeyView {
    KeyView {
        name: record.name.clone(),
        role: record.role,
        created_at: Some(rfc3339_ms(record.created_at_ms)),
        builtin: false,
    }
}

/// `POST /api/v1/keys`: `201 {"key":{…},"secret":"…"}`.
pub(crate) async fn create<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: CreateKey = json::read_request(req, state.config.max_body_bytes).await?;
    if !valid_api_key_name(&body.name) {
        return Err(ApiError::Unprocessable(format!(
            "name {:?}: must be 1 to {MAX_API_KEY_NAME_LEN} characters of A-Z a-z 0-9 . _ -",
            body.name
        )));
    }
    if [CONFIGURED_KEY_NAME, GENERATED_KEY_NAME].contains(&body.name.as_str()) {
        return Err(ApiError::Conflict(format!(
            "API key {:?} already exists (the name of the built-in key)",
            body.name
        )));
    }
    let secret = generate_token();
    let record = ApiKeyRecord {
        name: body.name,
        role: body.role,
        hash: state.store.token_key().hash(secret.as_bytes()),
        created_at_ms: now_ms(),
    };
    let stored = record.clone();
    let access = state.access.clone();
    state
        .store
        .call(move |s| {
            s.create_api_key(&stored)?;
            access.invalidate();
            Ok::<_, fleetmq_storage::StoreError>(())
        })
        .await?;
    tracing::info!(key = %record.name, role = %record.role, "admin API key created");
    let body = Created {
        key: view(&record),
        secret,
    };
    Ok(response::json(StatusCode::CREATED, &body))
}

/// `GET /api/v1/keys`, in name order, the built-in key among them.
pub(crate) async fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let page = Query::parse(query, &["limit", "cursor"])?.page()?;
    let named = state.access.named(&state.store).await?;
    let mut all: Vec<KeyView> = named.iter().map(view).collect();
    let builtin = &state.access.builtin;
    if !builtin.is_revoked() {
        all.push(KeyView {
            name: builtin.name().to_owned(),
            role: ApiRole::Admin,
            created_at: None,
            builtin: true,
        });
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut after_cursor = all
        .into_iter()
        .filter(|k| page.cursor.as_deref().is_none_or(|c| k.name.as_str() > c));
    let items: Vec<KeyView> = after_cursor.by_ref().take(page.limit).collect();
    let next_cursor = match after_cursor.next() {
        Some(_) => items.last().map(|k| k.name.clone()),
        None => None,
    };
    Ok(response::json(
        StatusCode::OK,
        &KeyList { items, next_cursor },
    ))
}

/// `DELETE /api/v1/keys/{name}`: `409` for the last admin key and a configured one.
pub(crate) async fn delete(
    state: &AppState,
    name: &str,
    by: Option<&Identity>,
) -> Result<ApiResponse, ApiError> {
    let builtin = state.access.builtin.clone();
    if name == builtin.name() && !builtin.is_revoked() {
        if builtin.is_configured() {
            return Err(ApiError::Conflict(format!(
                "API key {name:?} is set by admin.api_key; remove it from the configuration and restart"
            )));
        }
        let owned = name.to_owned();
        state
            .store
            .call(move |s| {
                s.revoke_admin_key(&owned)?;
                builtin.revoke();
                Ok::<_, DeleteKeyError>(())
            })
            .await?;
    } else {
        let owned = name.to_owned();
        let access = state.access.clone();
        state
            .store
            .call(move |s| {
                s.delete_api_key(&owned)?;
                access.invalidate();
                Ok::<_, DeleteKeyError>(())
            })
            .await?;
    }
    let by = by.map_or("-", |i| i.name.as_str());
    tracing::info!(key = %name, by = %by, "admin API key revoked");
    Ok(response::no_content())
}
