//! On-disk encodings of the outbox records (postcard). A new format is a new
//! variant, never an edit to an existing one; the golden-byte test pins them.
//! Decoding never panics: undecodable bytes, trailing bytes and unknown versions
//! come back as [`StoreError::Corrupt`].

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::schema::{OUTBOX_DELIVERIES_TABLE, OUTBOX_URLS_TABLE};

/// A delivery as stored. A new format is a new variant, never an edit to `V1`.
#[derive(Serialize, Deserialize)]
enum StoredDelivery {
    V1(DeliveryV1),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeliveryV1 {
    pub(super) url: String,
    pub(super) event_id: String,
    pub(super) event_type: String,
    pub(super) body: Vec<u8>,
    pub(super) created_at_ms: u64,
    pub(super) attempts: u32,
    pub(super) last_attempt_at_ms: Option<u64>,
    pub(super) last_error: Option<String>,
    /// `Some` once given up.
    pub(super) dead_at_ms: Option<u64>,
}

/// A URL's queue and retry state as stored.
#[derive(Serialize, Deserialize)]
enum StoredUrlState {
    V1(UrlStateV1),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UrlStateV1 {
    /// Entries of this URL in `QUEUE`.
    pub(super) owed: u64,
    /// Consecutive failed attempts; 0 after a success.
    pub(super) failures: u32,
    /// When the current failure streak began.
    pub(super) failing_since_ms: Option<u64>,
    /// Not before this unix ms (0: now).
    pub(super) next_attempt_at_ms: u64,
}

pub(super) fn corrupt(
    table: &'static str,
    key: impl fmt::Display,
    reason: impl Into<String>,
) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value)
        .map_err(|e| StoreError::encode(format!("record for table {table:?}"), e))
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: impl fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| corrupt(table, &key, e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(
            table,
            key,
            format!("{} trailing bytes", rest.len()),
        ));
    }
    Ok(value)
}

pub(super) fn encode_delivery(d: &DeliveryV1) -> Result<Vec<u8>, StoreError> {
    // The record is cloned into the enum only to encode it; bodies are small.
    encode(OUTBOX_DELIVERIES_TABLE, &StoredDelivery::V1(d.clone()))
}

pub(super) fn decode_delivery(id: u64, bytes: &[u8]) -> Result<DeliveryV1, StoreError> {
    match decode(OUTBOX_DELIVERIES_TABLE, id, bytes)? {
        StoredDelivery::V1(d) => Ok(d),
    }
}

pub(super) fn encode_state(s: &UrlStateV1) -> Result<Vec<u8>, StoreError> {
    encode(OUTBOX_URLS_TABLE, &StoredUrlState::V1(*s))
}

pub(super) fn decode_state(url: &str, bytes: &[u8]) -> Result<UrlStateV1, StoreError> {
    match decode(OUTBOX_URLS_TABLE, url, bytes)? {
        StoredUrlState::V1(s) => Ok(s),
    }
}
