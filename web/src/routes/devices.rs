//! `/api/v1/devices`: provisioning, listing with presence, labels, deletion,
//! credential and key rotation.

use std::collections::BTreeMap;

use base64::Engine as _;
use fleetmq_storage::{
    generate_token, now_ms, DeviceCredential, DeviceId, DeviceKey, DeviceRecord, DeviceState,
    NewDevice, StoreError, TokenKey, DEFAULT_PLUGIN,
};
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::json;
use crate::query::Query;
use crate::response::{self, ApiResponse};
use crate::time::rfc3339_ms;
use crate::AppState;

/// Labels a device may carry, and how long their keys and values may be.
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY_LEN: usize = 128;
const MAX_LABEL_VALUE_LEN: usize = 1024;
const MAX_PLUGIN_LEN: usize = 64;
/// Devices read from the store per batch while filtering a list.
const SCAN_BATCH: usize = 512;

/// One device to provision, from `POST /api/v1/devices` or an item of the bulk route.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDevice {
    pub(crate) id: String,
    plugin: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    encrypted: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchDevice {
    labels: BTreeMap<String, String>,
}

/// A device as the API shows it: never its token hash or keys.
#[derive(Serialize)]
struct DeviceView<'a> {
    id: &'a str,
    plugin: &'a str,
    labels: &'a BTreeMap<String, String>,
    /// Whether its payloads are encrypted: its own flag or the global default.
    encrypted: bool,
    online: bool,
    created_at: String,
    /// The current key generation; `null` when its payloads are not encrypted.
    key_generation: Option<u8>,
    /// When its current (or last) connection was made.
    connected_at: Option<String>,
    /// Last time anything was heard from it.
    last_seen: Option<String>,
    ip: Option<String>,
    /// `"3.1.1"` or `"5"`.
    protocol: Option<String>,
    transport: Option<String>,
    /// Its last `device/{id}/status` payload.
    reported_status: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Serialize)]
struct Credentials<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct KeyView {
    generation: u8,
    base64: String,
}

/// A provisioned device with its secrets, shown once.
#[derive(Serialize)]
pub(crate) struct Provisioned<'a> {
    device: DeviceView<'a>,
    credentials: Credentials<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<KeyView>,
}

#[derive(Serialize)]
struct DeviceList<'a> {
    items: Vec<DeviceView<'a>>,
    next_cursor: Option<&'a str>,
}

fn encryption_applies(state: &AppState, record: &DeviceRecord) -> bool {
    record.encrypted || state.broker.payload_encryption_default()
}

fn view<'a>(
    state: &AppState,
    record: &'a DeviceRecord,
    stored: Option<&DeviceState>,
) -> DeviceView<'a> {
    let encrypted = encryption_applies(state, record);
    let live = state.broker.services().presence().get(&record.id);
    let stored = stored.cloned().unwrap_or_default();
    let time = |ms: Option<u64>| ms.map(rfc3339_ms);
    DeviceView {
        id: record.id.as_str(),
        plugin: &record.plugin,
        labels: &record.labels,
        encrypted,
        online: state.broker.is_device_online(&record.id),
        created_at: rfc3339_ms(record.created_at_ms),
        key_generation: encrypted
            .then(|| record.current_key().map(|k| k.generation))
            .flatten(),
        connected_at: time(
            live.as_ref()
                .map(|l| l.connected_at_ms)
                .or(stored.connected_at_ms),
        ),
        last_seen: time(
            live.as_ref()
                .map(|l| l.last_seen_ms)
                .or(stored.last_seen_ms),
        ),
        ip: live.as_ref().map(|l| l.ip.clone()).or(stored.ip),
        protocol: live
            .as_ref()
            .map(|l| l.protocol.to_owned())
            .or(stored.protocol),
        transport: live
            .as_ref()
            .and_then(|l| serde_json::to_value(l.transport).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .or(stored.transport),
        reported_status: stored
            .reported_status
            .and_then(|s| serde_json::value::RawValue::from_string(s).ok()),
    }
}

fn key_view(key: &DeviceKey) -> KeyView {
    KeyView {
        generation: key.generation,
        base64: base64::engine::general_purpose::STANDARD.encode(key.key),
    }
}

/// A device id from a path: one that cannot be valid names no device.
pub(crate) fn path_id(id: &str) -> Result<DeviceId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("device {id:?} not found")))
}

/// The record, or `404`.
fn found(id: &DeviceId, record: Option<DeviceRecord>) -> Result<DeviceRecord, ApiError> {
    record.ok_or_else(|| {
        ApiError::from(StoreError::NotFound {
            kind: "device",
            key: id.to_string(),
        })
    })
}

fn validate_plugin(plugin: &str) -> Result<(), ApiError> {
    let ok = !plugin.is_empty()
        && plugin.len() <= MAX_PLUGIN_LEN
        && plugin
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "plugin {plugin:?}: must be 1 to {MAX_PLUGIN_LEN} of [a-z0-9_-]"
        )))
    }
}

/// Label keys are non-empty and free of `:` (the `label=k:v` filter splits on it).
fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::Unprocessable(format!(
            "labels: at most {MAX_LABELS} are allowed"
        )));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN || key.contains(':') {
            return Err(ApiError::Unprocessable(format!(
                "label key {key:?}: must be 1 to {MAX_LABEL_KEY_LEN} bytes without ':'"
            )));
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            return Err(ApiError::Unprocessable(format!(
                "label {key:?}: value is longer than {MAX_LABEL_VALUE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// A provisioning request that passed validation.
pub(crate) struct ValidDevice {
    pub(crate) id: DeviceId,
    plugin: String,
    labels: BTreeMap<String, String>,
    encrypted: bool,
}

/// Checks one device to provision: its id (SPEC §2), a plugin this broker has, labels.
pub(crate) fn validate_create(
    state: &AppState,
    body: CreateDevice,
) -> Result<ValidDevice, ApiError> {
    let id: DeviceId = body
        .id
        .parse()
        .map_err(|err| ApiError::Unprocessable(format!("id: {err}")))?;
    let plugin = body.plugin.unwrap_or_else(|| DEFAULT_PLUGIN.to_owned());
    validate_plugin(&plugin)?;
    if !state.broker.has_plugin(&plugin) {
        return Err(ApiError::Unprocessable(format!(
            "plugin {plugin:?}: this broker has no such plugin"
        )));
    }
    let labels = body.labels.unwrap_or_default();
    validate_labels(&labels)?;
    Ok(ValidDevice {
        id,
        plugin,
        labels,
        encrypted: body.encrypted.unwrap_or(false),
    })
}

impl ValidDevice {
    /// The record to create with a new token, which is returned for the answer: only its
    /// keyed hash is stored.
    pub(crate) fn issue(self, key: &TokenKey, created_at_ms: u64) -> (NewDevice, String) {
        let token = generate_token();
        let new = NewDevice {
            id: self.id,
            plugin: self.plugin,
            labels: self.labels,
            encrypted: self.encrypted,
            credential: DeviceCredential::keyed(key, token.as_bytes()),
            created_at_ms,
        };
        (new, token)
    }
}

/// The answer for a device just provisioned with `token`.
pub(crate) fn provisioned<'a>(
    state: &AppState,
    record: &'a DeviceRecord,
    token: &'a str,
) -> Provisioned<'a> {
    let key = encryption_applies(state, record)
        .then(|| record.current_key().map(key_view))
        .flatten();
    Provisioned {
        device: view(state, record, None),
        credentials: Credentials {
            username: record.id.as_str(),
            password: token,
        },
        key,
    }
}

/// `POST /api/v1/devices`: the token is returned here once and only its keyed hash is
/// stored.
pub(crate) async fn create<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: CreateDevice = json::read_request(req, state.config.max_body_bytes).await?;
    let valid = validate_create(state, body)?;
    let (record, token) = state
        .store
        .call(move |s| {
            let (new, token) = valid.issue(s.token_key(), now_ms());
            s.create_device(new).map(|record| (record, token))
        })
        .await?;
    tracing::info!(device_id = %record.id, "device provisioned");
    let body = provisioned(state, &record, &token);
    Ok(response::json(StatusCode::CREATED, &body))
}

/// The filters of `GET /api/v1/devices`.
struct ListFilter {
    online: Option<bool>,
    labels: Vec<(String, String)>,
}

impl ListFilter {
    fn is_empty(&self) -> bool {
        self.online.is_none() && self.labels.is_empty()
    }

    fn matches(&self, state: &AppState, record: &DeviceRecord) -> bool {
        let labels_match = self
            .labels
            .iter()
            .all(|(k, v)| record.labels.get(k) == Some(v));
        labels_match
            && self
                .online
                .is_none_or(|want| state.broker.is_device_online(&record.id) == want)
    }
}

fn parse_list_query(
    query: Option<&str>,
) -> Result<(ListFilter, usize, Option<DeviceId>), ApiError> {
    let query = Query::parse(query, &["online", "label", "limit", "cursor"])?;
    let page = query.page()?;
    let cursor = page
        .cursor
        .map(|c| {
            c.parse::<DeviceId>()
                .map_err(|_| ApiError::BadRequest(format!("cursor {c:?} is not a device id")))
        })
        .transpose()?;
    let labels = query
        .all("label")
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ApiError::BadRequest(format!("label {l:?}: expected key:value")))
        })
        .collect::<Result<_, _>>()?;
    let filter = ListFilter {
        online: query.flag("online")?,
        labels,
    };
    Ok((filter, page.limit, cursor))
}

/// `GET /api/v1/devices`: pages through the store in id order, keeping the devices
/// that pass the filters; `next_cursor` is set only when another match exists.
pub(crate) async fn list(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let (filter, limit, mut after) = parse_list_query(query)?;
    let mut items: Vec<DeviceRecord> = Vec::new();
    let mut has_more = false;
    'scan: loop {
        // Unfiltered, one extra record tells whether another page exists.
        let batch_size = if filter.is_empty() {
            limit + 1
        } else {
            SCAN_BATCH.max(limit + 1)
        };
        let from = after.clone();
        let batch = state
            .store
            .call(move |s| s.list_devices(from.as_ref(), batch_size))
            .await?;
        let exhausted = batch.len() < batch_size;
        for record in batch {
            after = Some(record.id.clone());
            if filter.matches(state, &record) {
                if items.len() == limit {
                    has_more = true;
                    break 'scan;
                }
                items.push(record);
            }
        }
        if exhausted {
            break;
        }
    }
    let next_cursor = if has_more {
        items.last().map(|r| r.id.as_str())
    } else {
        None
    };
    let ids: Vec<DeviceId> = items.iter().map(|r| r.id.clone()).collect();
    let states = state
        .store
        .call(move |s| {
            ids.iter()
                .map(|id| s.device_state(id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let body = DeviceList {
        items: items
            .iter()
            .zip(&states)
            .map(|(r, st)| view(state, r, Some(st)))
            .collect(),
        next_cursor,
    };
    Ok(response::json(StatusCode::OK, &body))
}

/// `GET /api/v1/devices/{id}`.
pub(crate) async fn get(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    let lookup = id.clone();
    let (record, stored) = state
        .store
        .call(move |s| Ok::<_, StoreError>((s.get_device(&lookup)?, s.device_state(&lookup)?)))
        .await?;
    let record = found(&id, record)?;
    Ok(response::json(
        StatusCode::OK,
        &view(state, &record, Some(&stored)),
    ))
}

/// `PATCH /api/v1/devices/{id}`: `{"labels":{...}}` replaces the labels.
pub(crate) async fn patch<B>(
    state: &AppState,
    id: &str,
    req: Request<B>,
) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let id = path_id(id)?;
    let body: PatchDevice = json::read_request(req, state.config.max_body_bytes).await?;
    validate_labels(&body.labels)?;
    let record = state
        .store
        .call(move |s| s.set_device_labels(&id, body.labels))
        .await?;
    Ok(response::json(StatusCode::OK, &view(state, &record, None)))
}

/// `DELETE /api/v1/devices/{id}`: removed from the store first, so by the time the
/// broker drops the connection a reconnect can no longer authenticate.
pub(crate) async fn delete(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    let broker = state.broker.clone();
    let removed = state
        .store
        .call(move |s| {
            // Told inside the blocking call: a client hanging up mid-request cannot
            // leave the device deleted but still connected.
            let removed = s.delete_device(&id)?;
            broker.device_removed(&removed.id);
            Ok::<_, StoreError>(removed)
        })
        .await?;
    tracing::info!(device_id = %removed.id, "device deleted");
    Ok(response::no_content())
}

/// `POST /api/v1/devices/{id}/rotate-credentials`: a new token, stored as a keyed hash
/// (also for a device that still had a legacy PBKDF2 one); the old one stops working
/// and a connection made with it is closed.
pub(crate) async fn rotate_credentials(
    state: &AppState,
    id: &str,
) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    let broker = state.broker.clone();
    let (record, token) = state
        .store
        .call(move |s| {
            let token = generate_token();
            let credential = DeviceCredential::keyed(s.token_key(), token.as_bytes());
            let record = s.set_device_credential(&id, credential)?;
            // Inside the blocking call, as in `delete`.
            broker.device_credentials_changed(&record.id);
            Ok::<_, StoreError>((record, token))
        })
        .await?;
    tracing::info!(device_id = %record.id, "device credentials rotated");
    let credentials = Credentials {
        username: record.id.as_str(),
        password: &token,
    };
    Ok(response::json(
        StatusCode::OK,
        &serde_json::json!({ "credentials": credentials }),
    ))
}

/// `POST /api/v1/devices/{id}/rotate-key`: key generation n+1; n stays valid for the
/// grace period.
pub(crate) async fn rotate_key(state: &AppState, id: &str) -> Result<ApiResponse, ApiError> {
    let id = path_id(id)?;
    let broker = state.broker.clone();
    let record = state
        .store
        .call(move |s| {
            let record = s.rotate_device_key(&id, now_ms())?;
            // Inside the blocking call, as in `delete`.
            broker.device_updated(&record);
            Ok::<_, StoreError>(record)
        })
        .await?;
    let key = record.current_key().map(key_view).ok_or_else(|| {
        ApiError::internal(format!("device {} has no key after rotation", record.id))
    })?;
    tracing::info!(device_id = %record.id, generation = key.generation, "device key rotated");
    Ok(response::json(
        StatusCode::OK,
        &serde_json::json!({ "key": key }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked() {
        let ok: BTreeMap<_, _> = [("site".to_owned(), "a:b".to_owned())].into();
        assert!(validate_labels(&ok).is_ok());
        let colon: BTreeMap<_, _> = [("a:b".to_owned(), "x".to_owned())].into();
        assert!(validate_labels(&colon).is_err());
        let empty: BTreeMap<_, _> = [(String::new(), "x".to_owned())].into();
        assert!(validate_labels(&empty).is_err());
    }

    #[test]
    fn plugins_are_checked() {
        assert!(validate_plugin("json").is_ok());
        assert!(validate_plugin("teltonika-codec8").is_ok());
        assert!(validate_plugin("").is_err());
        assert!(validate_plugin("JSON").is_err());
        assert!(validate_plugin("a/b").is_err());
    }
}
