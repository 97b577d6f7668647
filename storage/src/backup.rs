//! Backups and the integrity check.
//!
//! [`Store::backup_to`] copies every table into a fresh redb file inside one read
//! transaction: redb's read transactions see one committed snapshot, so the copy is
//! consistent while the broker keeps writing. (A copy of the file itself is not: the
//! header and the pages it points to change under the reader. redb's savepoints live
//! inside the same file and are no copy at all.) The copy carries `meta` whole, so the
//! device token key, the admin key hash and the schema version come along and device
//! tokens keep working against a restored file.
//!
//! [`check_file`] runs redb's own integrity check, which needs the file to itself: a
//! running broker holds redb's lock, and that is reported as [`OpenError::InUse`].

use std::fs::OpenOptions;
use std::path::Path;

use redb::{
    Database, Key, MultimapTableHandle as _, ReadTransaction, ReadableDatabase as _,
    ReadableTable as _, ReadableTableMetadata as _, TableDefinition, TableError, TableHandle as _,
    Value, WriteTransaction,
};

use crate::error::{OpenError, StoreError};
use crate::schema::*;
use crate::store::{open_with, Store};

/// What [`Store::backup_to`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Tables copied (empty ones included).
    pub tables: usize,
    /// Entries copied over all tables.
    pub entries: u64,
}

/// What [`check_file`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Every page checksum and the allocator state were consistent.
    Clean,
    /// redb found inconsistencies and repaired them (the file was changed).
    Repaired,
}

impl Store {
    /// Writes a consistent copy of every table to a new redb file at `dest`, which must
    /// not exist yet. Blocking; a large store takes a while (and as much disk again).
    ///
    /// On failure the partial file is removed.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupSummary, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(|e| StoreError::Invalid(format!("cannot create {}: {e}", dest.display())))?;
        let copied = (|| {
            let target = Database::builder()
                .create_file(file)
                .map_err(|e| StoreError::Invalid(format!("{}: {e}", dest.display())))?;
            let snapshot = self.database().begin_read()?;
            let txn = target.begin_write()?;
            let summary = copy_all(&snapshot, &txn)?;
            txn.commit()?;
            Ok(summary)
        })();
        if copied.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        copied
    }
}

/// Copies the tables [`copy_all`] knows, in one place so a new table is one line.
macro_rules! copy_tables {
    ($from:expr, $to:expr, $summary:expr, $names:expr; $($table:expr),* $(,)?) => {$(
        if let Some(entries) = copy($from, $to, $table)? {
            $summary.tables += 1;
            $summary.entries += entries;
            $names.push($table.name());
        }
    )*};
}

/// Copies every table of `from` into `to`; a table of `from` this build does not know
/// is an error, so a backup never silently leaves data behind.
fn copy_all(from: &ReadTransaction, to: &WriteTransaction) -> Result<BackupSummary, StoreError> {
    let mut summary = BackupSummary {
        tables: 0,
        entries: 0,
    };
    let mut names: Vec<&str> = Vec::new();
    copy_tables!(from, to, summary, names;
        META, API_KEYS, AUDIT, DEVICES, SERVICE_CLIENTS, RETAINED, DEVICE_STATE,
        DEVICE_CONFIG, SESSIONS, SESSION_QUEUE,
        COMMANDS, COMMAND_HEADS, COMMAND_CHAIN, COMMANDS_OPEN, COMMAND_DEADLINES,
        COMMAND_IDEMPOTENCY, COMMAND_COUNTERS, COMMAND_UNANNOUNCED,
        TELEMETRY_BLOCKS, TELEMETRY_POINTS, TELEMETRY_LATEST, TELEMETRY_META,
        DEVICE_EVENTS, DEVICE_EVENTS_BY_AGE, DEVICE_EVENT_COUNTS, DEVICE_EVENTS_META,
        OUTBOX_DELIVERIES, OUTBOX_QUEUE, OUTBOX_DEAD, OUTBOX_URLS, OUTBOX_META,
        WEBHOOK_ENDPOINTS, JOBS, JOB_TARGETS, JOB_COMMANDS,
        ALARM_RULES, ALARMS, ALARM_STATE, ALARMS_META, STATS_HISTORY,
    );
    let unknown = (from.list_tables()?.map(|t| t.name().to_owned()))
        .chain(from.list_multimap_tables()?.map(|t| t.name().to_owned()))
        .find(|name| !names.contains(&name.as_str()));
    match unknown {
        Some(name) => Err(StoreError::Invalid(format!(
            "table {name:?} is not known to the backup; this build cannot copy the file"
        ))),
        None => Ok(summary),
    }
}

/// Copies one table; `None` if `from` does not have it (only older files have some).
fn copy<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<'static, K, V>,
) -> Result<Option<u64>, StoreError> {
    let source = match from.open_table(table) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut target = to.open_table(table)?;
    for entry in source.iter()? {
        let (key, value) = entry?;
        target.insert(key.value(), value.value())?;
    }
    Ok(Some(source.len()?))
}

/// Runs redb's integrity check on the database file at `path` (repairing what redb can).
/// The file must exist and no other process may have it open.
pub fn check_file(path: &Path) -> Result<Integrity, OpenError> {
    if !path.is_file() {
        return Err(OpenError::Open {
            path: path.to_owned(),
            source: "no such file".into(),
        });
    }
    let mut db = open_with(path, |p| Database::open(p))?;
    let damaged = |detail: String| OpenError::Damaged {
        path: path.to_owned(),
        detail,
    };
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity()));
    match checked {
        Ok(Ok(true)) => Ok(Integrity::Clean),
        Ok(Ok(false)) => Ok(Integrity::Repaired),
        Ok(Err(e)) => Err(damaged(e.to_string())),
        Err(_) => Err(damaged("redb's integrity check failed".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::DeviceCredential;
    use crate::test_support::{id, new_device, temp_store};
    use crate::DB_FILE_NAME;

    #[test]
    fn a_backup_opens_as_a_store_with_the_same_devices_and_token_key() {
        let (_dir, store) = temp_store();
        let mut device = new_device("d1");
        device.credential = DeviceCredential::keyed(store.token_key(), b"tok-1");
        store.create_device(device).unwrap();
        store.create_device(new_device("d2")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join(DB_FILE_NAME);
        let summary = store.backup_to(&dest).unwrap();
        assert!(summary.tables >= 30, "{summary:?}");
        assert!(summary.entries >= 3, "{summary:?}");
        // The destination must be new.
        assert!(store.backup_to(&dest).is_err());
        assert!(dest.is_file());
        drop(store);

        let restored = Store::open(out.path()).unwrap();
        assert_eq!(restored.count_devices().unwrap(), 2);
        let d1 = restored.get_device(&id("d1")).unwrap().unwrap();
        assert!(d1.credential.verify(restored.token_key(), b"tok-1"));
        assert!(!d1.credential.verify(restored.token_key(), b"tok-2"));
        drop(restored);
        assert_eq!(check_file(&dest).unwrap(), Integrity::Clean);
    }

    #[test]
    fn every_table_of_a_new_file_is_copied() {
        let (_dir, store) = temp_store();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("copy.redb");
        let summary = store.backup_to(&dest).unwrap();
        let db = store.database();
        let txn = db.begin_read().unwrap();
        assert_eq!(summary.tables, txn.list_tables().unwrap().count());
    }

    #[test]
    fn check_reports_a_file_in_use_and_a_missing_one() {
        let (dir, store) = temp_store();
        let err = check_file(store.path()).unwrap_err();
        assert!(matches!(err, OpenError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains("stop it first"), "{err}");
        drop(store);
        assert_eq!(
            check_file(&dir.path().join(DB_FILE_NAME)).unwrap(),
            Integrity::Clean
        );
        let missing = dir.path().join("nope.redb");
        assert!(check_file(&missing)
            .unwrap_err()
            .to_string()
            .contains("nope.redb"));
    }

    #[test]
    fn check_names_a_damaged_file() {
        let (dir, store) = temp_store();
        for i in 0..200 {
            store
                .create_device(new_device(&format!("dev-{i}")))
                .unwrap();
        }
        let path = store.path().to_owned();
        drop(store);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 2).unwrap();
        drop(file);
        let err = check_file(&path).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("restore the file from a backup"), "{text}");
        drop(dir);
    }
}
