//! Opening the database, running calls on the blocking pool, and the
//! transaction helpers every table module uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase as _, WriteTransaction};

use crate::error::{OpenError, StoreError};
use crate::schema;

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "fleetmq.redb";

/// Handle to the fleetmq database. Cheap to clone; clones share one
/// `redb::Database` (which does its own locking, so no extra mutex).
///
/// Every method is blocking: from async code go through [`Store::call`].
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) `<data_dir>/fleetmq.redb`, creating `data_dir` and
    /// every table up front so readers never meet a missing table, and upgrading a file
    /// of an older schema (`schema::prepare`).
    ///
    /// Blocking; call it before starting the runtime or from the blocking pool.
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        let db = Database::create(&path).map_err(|source| OpenError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Store {
            db: Arc::new(db),
            path: Arc::new(path),
        };
        store.init()?;
        tracing::debug!(path = %store.path.display(), "store opened");
        Ok(store)
    }

    fn init(&self) -> Result<(), OpenError> {
        let init_err = |source| OpenError::Init {
            path: self.path.to_path_buf(),
            source,
        };
        let found = self.write(schema::prepare).map_err(init_err)?;
        if found > schema::SCHEMA_VERSION {
            return Err(OpenError::UnsupportedSchema {
                path: self.path.to_path_buf(),
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on tokio's blocking pool, so redb and password hashing never
    /// run on an async worker thread. A panic in `f` is resumed in the caller.
    ///
    /// Must be called from within a tokio runtime.
    pub async fn call<F, R>(&self, f: F) -> R
    where
        F: FnOnce(&Store) -> R + Send + 'static,
        R: Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Blocking tasks are only cancelled when the runtime shuts down,
            // and then nothing is left to receive the result.
            Err(e) => panic!("store call cancelled by runtime shutdown: {e}"),
        }
    }

    /// The redb database, for modules that keep their own tables (commands, telemetry,
    /// the webhook outbox) and manage their own transactions. Use it only off the async
    /// threads.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Runs `f` in one write transaction and commits it durably; if `f`
    /// fails, the transaction is aborted and nothing changes.
    pub(crate) fn write<R>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.write_with(true, f)
    }

    /// [`Store::write`], or without waiting for the disk when `durable` is false: the
    /// commit is then persisted by the next durable one, and lost by a crash before.
    pub(crate) fn write_with<R>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let out = f(&txn)?;
        crate::metrics::commit(txn)?;
        Ok(out)
    }

    /// Runs `f` in one read transaction (a consistent snapshot).
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }
}

/// The current unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{decode_version, META, SCHEMA_VERSION, SCHEMA_VERSION_KEY};
    use std::time::Duration;

    #[test]
    fn open_creates_dir_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        let store = Store::open(&data).unwrap();
        assert_eq!(store.path(), data.join(DB_FILE_NAME));
        assert!(data.join(DB_FILE_NAME).is_file());
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert!(matches!(err, OpenError::CreateDir { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");

        let data = dir.path().join("garbage");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join(DB_FILE_NAME), [0xffu8; 4096]).unwrap();
        let err = Store::open(&data).unwrap_err();
        assert!(err.to_string().contains(DB_FILE_NAME), "{err}");
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
        use crate::commands::{self, CommandStatus};
        use crate::ids::DeviceId;
        use crate::schema::{COMMAND_CHAIN, COMMAND_HEADS};
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
    fn now_ms_is_plausible() {
        // 2020-01-01 < now < 2200-01-01
        let now = now_ms();
        assert!(now > 1_577_836_800_000 && now < 7_258_118_400_000, "{now}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn call_runs_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let async_thread = std::thread::current().id();

        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // If `call` ran `f` inline on this (only) async thread, `f` would wait
        // for a message the second branch can never send.
        let ((thread, received), ()) = tokio::join!(
            store.call(move |_| {
                let got = rx.recv_timeout(Duration::from_secs(10)).is_ok();
                (std::thread::current().id(), got)
            }),
            async move { tx.send(()).unwrap() },
        );
        assert_ne!(thread, async_thread);
        assert!(received);
        // The closure gets a working store.
        assert_eq!(store.call(|s| s.count_devices()).await.unwrap(), 0);
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn call_resumes_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.call(|_| panic!("boom")).await
    }
}
