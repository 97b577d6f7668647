//! The `meta` table: schema version and the admin API key hash.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::secret::CredentialHash;
use crate::store::Store;

const TABLE: &str = "meta";

/// Setting name → its encoding (see the key constants below).
pub(crate) const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new(TABLE);

/// Key of the file's schema version: a little-endian `u32`.
const SCHEMA_VERSION_KEY: &str = "schema_version";
/// Key of the admin API key hash: `codec::StoredCredential`.
const ADMIN_KEY_HASH_KEY: &str = "admin_key_hash";

/// The layout (set of tables and record versions) this build writes. Bump it
/// only when an older build could misread the file; new record versions alone
/// do not need it, since old builds report them as corrupt instead.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// Creates the table and records the schema version of a new file; returns the
/// version found in the file.
pub(crate) fn init(txn: &WriteTransaction) -> Result<u32, StoreError> {
    let mut table = txn.open_table(META)?;
    let found = match table.get(SCHEMA_VERSION_KEY)? {
        Some(v) => Some(decode_version(v.value())?),
        None => None,
    };
    match found {
        Some(version) => Ok(version),
        None => {
            table.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
            Ok(SCHEMA_VERSION)
        }
    }
}

fn decode_version(bytes: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table: TABLE,
        key: SCHEMA_VERSION_KEY.to_owned(),
        reason: format!("expected 4 bytes, found {}", bytes.len()),
    })?;
    Ok(u32::from_le_bytes(arr))
}

fn at(key: &str) -> Location<'_> {
    Location { table: TABLE, key }
}

impl Store {
    /// The stored hash of the admin API key, if one was set.
    pub fn admin_key_hash(&self) -> Result<Option<CredentialHash>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(META)?;
            match table.get(ADMIN_KEY_HASH_KEY)? {
                Some(v) => Ok(Some(codec::decode_credential(
                    at(ADMIN_KEY_HASH_KEY),
                    v.value(),
                )?)),
                None => Ok(None),
            }
        })
    }

    /// Stores (or replaces) the hash of the admin API key.
    pub fn set_admin_key_hash(&self, hash: &CredentialHash) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(META)?;
            let bytes = codec::encode_credential(at(ADMIN_KEY_HASH_KEY), hash)?;
            table.insert(ADMIN_KEY_HASH_KEY, bytes.as_slice())?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{cheap_hash, temp_store};
    use crate::{OpenError, Store};

    #[test]
    fn admin_key_hash_roundtrip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.admin_key_hash().unwrap(), None);
            store.set_admin_key_hash(&cheap_hash("first")).unwrap();
            let second = cheap_hash("second");
            store.set_admin_key_hash(&second).unwrap();
            assert_eq!(store.admin_key_hash().unwrap(), Some(second));
        }
        let store = Store::open(dir.path()).unwrap();
        let got = store.admin_key_hash().unwrap().unwrap();
        assert!(got.verify(b"second"));
        assert!(!got.verify(b"first"));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write(|txn| {
                    let mut t = txn.open_table(META)?;
                    t.insert(SCHEMA_VERSION_KEY, 99u32.to_le_bytes().as_slice())?;
                    Ok(())
                })
                .unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::UnsupportedSchema {
                    found: 99,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn corrupt_admin_key_is_reported() {
        let (_dir, store) = temp_store();
        store
            .write(|txn| {
                txn.open_table(META)?
                    .insert(ADMIN_KEY_HASH_KEY, [0u8; 3].as_slice())?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            store.admin_key_hash(),
            Err(StoreError::Corrupt { table: "meta", .. })
        ));
    }
}
