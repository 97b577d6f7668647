//! The command record codec for `crate::fuzz` (feature `fuzzing`; not an API).

use super::format;
use super::CommandRecord;
use crate::error::StoreError;

/// A command record stored under `key` (its command id).
pub fn decode_command(key: &str, bytes: &[u8]) -> Result<CommandRecord, StoreError> {
    format::decode_command(key, bytes)
}

/// The bytes the store writes for `rec`.
pub fn encode_command(rec: &CommandRecord) -> Result<Vec<u8>, StoreError> {
    format::encode_command(rec)
}

/// A new `queued` record, as the store creates it (for seed records).
pub fn new_command(new: super::NewCommandRecord, seq: u64) -> CommandRecord {
    CommandRecord::new(new, seq)
}
