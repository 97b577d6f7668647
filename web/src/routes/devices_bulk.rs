//! `POST /api/v1/devices/bulk`: up to [`MAX_BULK_DEVICES`] devices in one request and one
//! durable transaction (SPEC §8).
//!
//! Items are taken in order, each as `POST /api/v1/devices` would take it: one that would
//! fail there (invalid id or labels, a plugin this broker does not have, an id taken by a
//! device, a service client or an earlier item of the same request) is listed in `errors`
//! with the code and message that route would answer, and the others are created. What
//! fails the whole request creates nothing: malformed JSON (`400`), a body without a
//! `devices` array (`422`), more than [`MAX_BULK_DEVICES`] items or a body over
//! `max_bulk_body_bytes` (`413`), a store failure (`500`).
//!
//! The answer is `201` when at least one device was created, else `200`:
//! `{"created":[{device, credentials, key?}], "errors":[{index, id, error:{code, message}}]}`,
//! both in request order. Tokens are hashed with the install's key (microseconds each), so
//! the full 10,000 take about as long as the one transaction that stores them.

use std::collections::HashMap;

use fleetmq_storage::{now_ms, DeviceRecord, Store, StoreError};
use http::{Request, StatusCode};
use hyper::body::Body;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::json;
use crate::response::{self, ApiResponse};
use crate::routes::devices::{
    provisioned, validate_create, CreateDevice, Provisioned, ValidDevice,
};
use crate::AppState;

/// The most devices one request may provision.
pub(crate) const MAX_BULK_DEVICES: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    /// Kept raw so that one malformed item fails alone.
    devices: Vec<Box<RawValue>>,
}

/// The answer.
#[derive(Serialize)]
struct BulkAnswer<'a> {
    created: Vec<Provisioned<'a>>,
    errors: Vec<ItemError>,
}

/// One item that was not created.
#[derive(Serialize)]
struct ItemError {
    /// Its position in `devices`, from 0.
    index: usize,
    /// Its `id` as given, if it had a string one.
    id: Option<String>,
    error: ItemErrorDetail,
}

/// The error envelope's `{"code","message"}`.
#[derive(Serialize)]
struct ItemErrorDetail {
    code: &'static str,
    message: String,
}

impl ItemError {
    fn new(index: usize, id: Option<String>, err: &ApiError) -> ItemError {
        let (code, message) = err.code_and_message();
        ItemError {
            index,
            id,
            error: ItemErrorDetail { code, message },
        }
    }
}

/// A valid item and where it was in the request.
struct Planned {
    index: usize,
    device: ValidDevice,
}

/// What the store made of one planned item.
struct Outcome {
    index: usize,
    id: String,
    result: Result<DeviceRecord, StoreError>,
    token: String,
}

/// `POST /api/v1/devices/bulk`.
pub(crate) async fn create<B>(state: &AppState, req: Request<B>) -> Result<ApiResponse, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body: BulkRequest = json::read_request(req, state.config.max_bulk_body_bytes).await?;
    if body.devices.len() > MAX_BULK_DEVICES {
        return Err(ApiError::TooManyItems {
            what: "devices",
            got: body.devices.len(),
            max: MAX_BULK_DEVICES,
        });
    }
    let (planned, mut errors) = validate_all(state, body.devices);
    let outcomes = state.store.call(move |s| provision(s, planned)).await?;
    let mut created = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        match outcome.result {
            Ok(record) => created.push((record, outcome.token)),
            Err(err) => {
                let err = ApiError::from(err);
                errors.push(ItemError::new(outcome.index, Some(outcome.id), &err));
            }
        }
    }
    errors.sort_by_key(|e| e.index);
    tracing::info!(
        created = created.len(),
        refused = errors.len(),
        "devices provisioned in bulk"
    );
    let status = if created.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let answer = BulkAnswer {
        created: created
            .iter()
            .map(|(record, token)| provisioned(state, record, token))
            .collect(),
        errors,
    };
    Ok(response::json(status, &answer))
}

/// Checks every item; returns the valid ones and the errors of the others. An id seen
/// in an earlier valid item is a conflict, as it would be one request later.
fn validate_all(state: &AppState, items: Vec<Box<RawValue>>) -> (Vec<Planned>, Vec<ItemError>) {
    let mut planned = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut first_at: HashMap<String, usize> = HashMap::with_capacity(items.len());
    for (index, raw) in items.into_iter().enumerate() {
        match validate_item(state, &raw) {
            Ok(device) => {
                let id = device.id.as_str();
                if let Some(first) = first_at.get(id) {
                    let err = ApiError::Conflict(format!(
                        "device {id:?} is listed more than once in this request (first as item {first})"
                    ));
                    errors.push(ItemError::new(index, Some(id.to_owned()), &err));
                    continue;
                }
                first_at.insert(id.to_owned(), index);
                planned.push(Planned { index, device });
            }
            Err((id, err)) => errors.push(ItemError::new(index, id, &err)),
        }
    }
    (planned, errors)
}

/// One item as `POST /api/v1/devices` would check it; on failure, with its id if it has
/// a string one.
fn validate_item(
    state: &AppState,
    raw: &RawValue,
) -> Result<ValidDevice, (Option<String>, ApiError)> {
    let body: CreateDevice = serde_json::from_str(raw.get()).map_err(|err| {
        let err = ApiError::Unprocessable(format!("invalid device: {err}"));
        (id_of(raw), err)
    })?;
    let id = body.id.clone();
    validate_create(state, body).map_err(|err| (Some(id), err))
}

/// The `id` of an item that is not a valid device object, if it has a string one.
fn id_of(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_str::<IdOnly>(raw.get()).ok().map(|i| i.id)
}

/// Issues every planned device a token and creates them all in one transaction (on the
/// blocking pool).
fn provision(store: &Store, planned: Vec<Planned>) -> Result<Vec<Outcome>, StoreError> {
    let now = now_ms();
    let mut news = Vec::with_capacity(planned.len());
    let mut issued = Vec::with_capacity(planned.len());
    for Planned { index, device } in planned {
        let (new, token) = device.issue(store.token_key(), now);
        issued.push((index, new.id.to_string(), token));
        news.push(new);
    }
    let results = store.create_devices(news)?;
    Ok(issued
        .into_iter()
        .zip(results)
        .map(|((index, id, token), result)| Outcome {
            index,
            id,
            result,
            token,
        })
        .collect())
}
