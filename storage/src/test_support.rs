//! Shared test fixtures.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use crate::ids::DeviceId;
use crate::model::NewDevice;
use crate::secret::{CredentialHash, DeviceCredential};
use crate::store::Store;

/// A temporary store; keep the `TempDir` alive as long as the store.
pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

/// A cheap hash, so tests do not spend 100k PBKDF2 rounds each.
pub(crate) fn cheap_hash(secret: &str) -> CredentialHash {
    CredentialHash::with_iterations(secret.as_bytes(), NonZeroU32::MIN)
}

pub(crate) fn id(s: &str) -> DeviceId {
    s.parse().expect("valid test device id")
}

/// A device whose token is its id, stored as a cheap legacy (PBKDF2) hash, so it
/// verifies under any store's token key.
pub(crate) fn new_device(s: &str) -> NewDevice {
    NewDevice {
        id: id(s),
        plugin: "json".into(),
        labels: BTreeMap::from([("site".to_owned(), "lobby".to_owned())]),
        encrypted: false,
        credential: DeviceCredential::Legacy(cheap_hash(s)),
        created_at_ms: 1_000,
    }
}

/// Lower-case hex of `bytes`, for golden-byte tests of stored records.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string written by [`hex`].
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
