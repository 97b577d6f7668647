//! The session record codecs for `crate::fuzz` (feature `fuzzing`; not an API).

use super::records;
use super::{QueuedMessage, SessionRecord};
use crate::error::StoreError;

/// A session record stored under `key`.
pub fn decode_session(key: &str, bytes: &[u8]) -> Result<SessionRecord, StoreError> {
    records::decode_session(key, bytes)
}

/// The bytes the store writes for `s`.
pub fn encode_session(s: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    records::encode_session(s)
}

/// A queued message stored for the session `key`.
pub fn decode_queued(key: &str, bytes: &[u8]) -> Result<QueuedMessage, StoreError> {
    records::decode_queued(key, bytes)
}

/// The bytes the store writes for `m`, queued for the session `key`.
pub fn encode_queued(key: &str, m: &QueuedMessage) -> Result<Vec<u8>, StoreError> {
    records::encode_queued(key, m)
}
