//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`).
//!
//! **Not an API.** Thin wrappers around the crate-private decoders of bytes read from
//! redb, and the encoders that wrote them, so `fuzz/` can check that whatever decodes
//! also encodes and decodes back to the same record. They may change or go away with
//! any commit; nothing outside `fuzz/` may use them, which is why they exist only under
//! a feature no other crate turns on.
//!
//! Covered: the `codec` records (devices, service clients, retained messages, the admin
//! key hash), sessions and their queued messages, commands, and the telemetry records
//! (blocks, the old per-point rows, per-device summaries). Left out: the outbox, device
//! state and device config records, which are serde-derived postcard structs with no
//! hand-written checks.

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::model::{DeviceRecord, RetainedMessage, ServiceClientRecord};
use crate::schema::{DEVICES_TABLE, META_TABLE, RETAINED_TABLE, SERVICE_CLIENTS_TABLE};
use crate::secret::CredentialHash;

pub use crate::commands::fuzz::{decode_command, encode_command, new_command};
pub use crate::sessions::fuzz::{decode_queued, decode_session, encode_queued, encode_session};
pub use crate::telemetry::fuzz::{
    block_header, decode_block, decode_point, decode_summary, encode_block, encode_summary,
    object_values, BlockPoint, SummaryView,
};

fn at<'a>(table: &'static str, key: &'a str) -> Location<'a> {
    Location { table, key }
}

/// A device record stored under `key`.
pub fn decode_device(key: &str, bytes: &[u8]) -> Result<DeviceRecord, StoreError> {
    codec::decode_device(at(DEVICES_TABLE, key), bytes)
}

/// The bytes the store writes for `d`.
pub fn encode_device(d: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    codec::encode_device(at(DEVICES_TABLE, d.id.as_str()), d)
}

/// A service client record stored under `key`.
pub fn decode_service_client(key: &str, bytes: &[u8]) -> Result<ServiceClientRecord, StoreError> {
    codec::decode_service_client(at(SERVICE_CLIENTS_TABLE, key), bytes)
}

/// The bytes the store writes for `c`.
pub fn encode_service_client(c: &ServiceClientRecord) -> Result<Vec<u8>, StoreError> {
    codec::encode_service_client(at(SERVICE_CLIENTS_TABLE, &c.name), c)
}

/// A retained message stored under `key` (its topic).
pub fn decode_retained(key: &str, bytes: &[u8]) -> Result<RetainedMessage, StoreError> {
    codec::decode_retained(at(RETAINED_TABLE, key), bytes)
}

/// The bytes the store writes for `m`.
pub fn encode_retained(m: &RetainedMessage) -> Result<Vec<u8>, StoreError> {
    codec::encode_retained(at(RETAINED_TABLE, &m.topic), m)
}

/// A stand-alone credential hash (the admin key).
pub fn decode_credential(bytes: &[u8]) -> Result<CredentialHash, StoreError> {
    codec::decode_credential(at(META_TABLE, "admin_key_hash"), bytes)
}

/// The bytes the store writes for `c`.
pub fn encode_credential(c: &CredentialHash) -> Result<Vec<u8>, StoreError> {
    codec::encode_credential(at(META_TABLE, "admin_key_hash"), c)
}
