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
///
/// - 1: the first layout.
/// - 2: a device's command history is a chain (`command_heads`, `command_chain`)
///   instead of the `commands_by_device` index ([`crate::commands::migrate_v1_index`]).
pub(crate) const SCHEMA_VERSION: u32 = 2;

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

/// Brings a file of an older schema to [`SCHEMA_VERSION`] inside `txn` and records
/// the new version; `found` is what [`init`] returned. Newer files are left alone (the
/// caller refuses them).
pub(crate) fn upgrade(txn: &WriteTransaction, found: u32) -> Result<(), StoreError> {
    if found >= SCHEMA_VERSION {
        return Ok(());
    }
    tracing::info!(
        from = found,
        to = SCHEMA_VERSION,
        "upgrading the store's schema (one transaction; a large command history takes a while)"
    );
    if found < 2 {
        crate::commands::migrate_v1_index(txn)?;
    }
    txn.open_table(META)?
        .insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
    tracing::info!(from = found, to = SCHEMA_VERSION, "store schema upgraded");
    Ok(())
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
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// Schema 1's `commands_by_device` index becomes the history chain at the first
    /// open by this build, in one transaction, and every reader sees the same commands.
    #[test]
    fn schema_1_command_index_is_migrated() {
        use crate::commands::{self, CommandStatus, COMMAND_CHAIN, COMMAND_HEADS};
        use crate::DeviceId;
        use redb::{ReadableDatabase as _, ReadableTableMetadata as _, TableHandle as _};

        let dev = |s: &str| s.parse::<DeviceId>().unwrap();
        let new = |id: &str, device: &str| crate::test_support::new_command(id, device, "X");
        const V1_BY_DEVICE: redb::TableDefinition<'static, (&str, u64), &str> =
            redb::TableDefinition::new("commands_by_device");

        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let db = store.database();
            commands::write(&db, |w| {
                for (id, d) in [("a", "d1"), ("b", "d1"), ("c", "d2"), ("d", "d1")] {
                    w.create(new(id, d))?;
                }
                let mut b = w.get("b")?.unwrap();
                b.cancel(5, None).unwrap();
                w.put(&b)
            })
            .unwrap();
            // Rewrite the file as schema 1 left it: its index, no chain.
            store
                .write(|txn| {
                    let mut old = txn.open_table(V1_BY_DEVICE)?;
                    for (device, seq, id) in [
                        ("d1", 0, "a"),
                        ("d1", 1, "b"),
                        ("d2", 2, "c"),
                        ("d1", 3, "d"),
                    ] {
                        old.insert((device, seq), id)?;
                    }
                    txn.delete_table(COMMAND_HEADS)?;
                    txn.delete_table(COMMAND_CHAIN)?;
                    txn.open_table(META)?
                        .insert(SCHEMA_VERSION_KEY, 1u32.to_le_bytes().as_slice())?;
                    Ok(())
                })
                .unwrap();
            assert!(commands::list_for_device(&db, &dev("d1"), None, 9, None)
                .unwrap()
                .items
                .is_empty());
        }

        let store = Store::open(dir.path()).unwrap();
        let db = store.database();
        let txn = db.begin_read().unwrap();
        let version = txn.open_table(META).unwrap();
        let version = decode_version(version.get(SCHEMA_VERSION_KEY).unwrap().unwrap().value());
        assert_eq!(version.unwrap(), SCHEMA_VERSION);
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(
            !tables.iter().any(|n| n == "commands_by_device"),
            "{tables:?}"
        );
        assert_eq!(txn.open_table(COMMAND_CHAIN).unwrap().len().unwrap(), 4);
        drop(txn);

        let ids = |device: &str, status: Option<CommandStatus>| {
            let page = commands::list_for_device(&db, &dev(device), status, 10, None).unwrap();
            page.items
                .into_iter()
                .map(|r| r.command_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("d1", None), ["d", "b", "a"]);
        assert_eq!(ids("d1", Some(CommandStatus::Queued)), ["d", "a"]);
        assert_eq!(ids("d2", None), ["c"]);
        // New commands join the migrated chain.
        commands::write(&db, |w| w.create(new("e", "d1")).map(drop)).unwrap();
        assert_eq!(ids("d1", None), ["e", "d", "b", "a"]);
        assert_eq!(
            commands::write(&db, |w| w.remove_device(&dev("d1"))).unwrap(),
            4
        );
        assert!(ids("d1", None).is_empty());
        assert_eq!(ids("d2", None), ["c"]);
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
