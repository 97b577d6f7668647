//! Opening files of other schema versions: a newer one is refused, an older one is
//! upgraded in place. A module of its own because it exercises the store, the schema
//! and the command tables together, above all of them.

use redb::{ReadableDatabase as _, ReadableTableMetadata as _, TableHandle as _};

use crate::commands::{self, tests::new_cmd, CommandStatus};
use crate::error::OpenError;
use crate::ids::DeviceId;
use crate::schema::{
    decode_version, COMMAND_CHAIN, COMMAND_HEADS, META, SCHEMA_VERSION, SCHEMA_VERSION_KEY,
};
use crate::store::Store;

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
    let dev = |s: &str| s.parse::<DeviceId>().unwrap();
    let new = |id: &str, device: &str| new_cmd(id, device, "X");
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
