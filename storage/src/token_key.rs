//! The install's device token key: 32 bytes from the OS RNG, created by the first open
//! of a database file and kept in its `meta` table, durably, like everything else that
//! must survive a restart. Device tokens are stored as HMAC-SHA256 under it
//! ([`TokenKey`]); losing it would lock out every device until its token is rotated, so
//! it is never replaced once written, and a copy of the file (a backup) carries it along.

use redb::{Database, Durability, ReadableDatabase as _};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::schema::{META, META_TABLE};
use crate::secret::TokenKey;

/// Key of the device token key in `meta`: `codec::StoredTokenKey`.
pub(crate) const TOKEN_KEY_KEY: &str = "device_token_key";

const AT: Location<'static> = Location {
    table: META_TABLE,
    key: TOKEN_KEY_KEY,
};

/// The file's token key; created (and committed durably) if the file has none yet.
pub(crate) fn load_or_create(db: &Database) -> Result<TokenKey, StoreError> {
    if let Some(key) = load(db)? {
        return Ok(key);
    }
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let (bytes, key) = TokenKey::generate();
    txn.open_table(META)?.insert(
        TOKEN_KEY_KEY,
        codec::encode_token_key(AT, &bytes)?.as_slice(),
    )?;
    crate::metrics::commit(txn)?;
    tracing::info!("created this install's device token key");
    Ok(key)
}

fn load(db: &Database) -> Result<Option<TokenKey>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    let Some(value) = table.get(TOKEN_KEY_KEY)? else {
        return Ok(None);
    };
    let bytes = codec::decode_token_key(AT, value.value())?;
    Ok(Some(TokenKey::from_bytes(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn created_once_and_kept_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let hash = {
            let store = Store::open(dir.path()).unwrap();
            store.token_key().hash(b"token")
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.token_key().hash(b"token"), hash);
        let other = tempfile::tempdir().unwrap();
        let other = Store::open(other.path()).unwrap();
        assert_ne!(other.token_key().hash(b"token"), hash);
    }

    #[test]
    fn corrupt_key_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .write(|txn| {
                    txn.open_table(META)?
                        .insert(TOKEN_KEY_KEY, [0u8; 5].as_slice())?;
                    Ok(())
                })
                .unwrap();
        }
        // Never replaced by a fresh key: that would lock every device out.
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("fleetmq.redb"), "{err}");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            source.as_deref().is_some_and(|s| s.contains(TOKEN_KEY_KEY)),
            "{err:?}"
        );
    }
}
