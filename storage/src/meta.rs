//! The `meta` table's hash of the built-in admin API key (named keys are `api_keys`'s).
//! The table and its keys are `schema`'s.

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::schema::{ADMIN_KEY_HASH_KEY, ADMIN_KEY_REVOKED_KEY, META, META_TABLE as TABLE};
use crate::secret::CredentialHash;
use crate::store::Store;

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

    /// Stores (or replaces) the hash of the admin API key; a key revoked before is
    /// back.
    pub fn set_admin_key_hash(&self, hash: &CredentialHash) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(META)?;
            let bytes = codec::encode_credential(at(ADMIN_KEY_HASH_KEY), hash)?;
            table.insert(ADMIN_KEY_HASH_KEY, bytes.as_slice())?;
            table.remove(ADMIN_KEY_REVOKED_KEY)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{cheap_hash, temp_store};

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
