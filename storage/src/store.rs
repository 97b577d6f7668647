//! Opening the database, running calls on the blocking pool, and the
//! transaction helpers every table module uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase as _, WriteTransaction};

use crate::error::{OpenError, StoreError};
use crate::schema;
use crate::secret::TokenKey;
use crate::token_key;

/// Bytes of pages redb keeps in memory (nine tenths read cache, one tenth write buffer);
/// redb's default is 1 GiB, which a long-running broker fills with pages it read once.
/// Past it, reads come from the OS page cache (a `pread` of a 4 KiB page). 8 MiB freed
/// the 13–22 MB of telemetry pages cached after the load benchmark, but unpaced telemetry
/// fan-in with storage on fell to 0.83–0.90 of storage off (a write buffer of 0.8 MiB);
/// 32 MiB measured 0.95 (docs/perf-log/session-14.md).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

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
    /// The file's device token key (`token_key`), read once at open.
    token_key: Arc<TokenKey>,
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
    /// every table up front so readers never meet a missing table, upgrading a file
    /// of an older schema (`schema::prepare`), and reading (or, in a new file, creating)
    /// the device token key.
    ///
    /// Blocking; call it before starting the runtime or from the blocking pool.
    pub fn open(data_dir: &Path) -> Result<Store, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        let db = open_file(&path)?;
        let init_err = |source| OpenError::Init {
            path: path.clone(),
            source,
        };
        let found = write_db(&db, true, schema::prepare).map_err(init_err)?;
        if found > schema::SCHEMA_VERSION {
            return Err(OpenError::UnsupportedSchema {
                path: path.clone(),
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        let token_key = token_key::load_or_create(&db).map_err(init_err)?;
        let store = Store {
            db: Arc::new(db),
            path: Arc::new(path),
            token_key: Arc::new(token_key),
        };
        tracing::debug!(path = %store.path.display(), "store opened");
        Ok(store)
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key device tokens are hashed under: [`DeviceCredential::keyed`] for a new
    /// token, [`DeviceCredential::verify`] to check one.
    ///
    /// [`DeviceCredential::keyed`]: crate::secret::DeviceCredential::keyed
    /// [`DeviceCredential::verify`]: crate::secret::DeviceCredential::verify
    pub fn token_key(&self) -> &TokenKey {
        &self.token_key
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
        write_db(&self.db, durable, f)
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

/// [`Store::write_with`] on a database not yet wrapped in a [`Store`].
fn write_db<R>(
    db: &Database,
    durable: bool,
    f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    let out = f(&txn)?;
    crate::metrics::commit(txn)?;
    Ok(out)
}

/// The current unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Opens (or creates) the redb file. redb 3.1 asserts on some damaged files (one cut
/// short panics in `page_manager.rs`) instead of returning an error; that becomes
/// [`OpenError::Damaged`], naming the file and what to do.
fn open_file(path: &Path) -> Result<Database, OpenError> {
    open_with(path, |p| {
        Database::builder().set_cache_size(CACHE_BYTES).create(p)
    })
}

/// Runs `open` (redb's `create` or `open`) on `path`, turning a lock held by another
/// process into [`OpenError::InUse`] and a panic inside redb into [`OpenError::Damaged`].
pub(crate) fn open_with(
    path: &Path,
    open: impl FnOnce(&Path) -> Result<Database, redb::DatabaseError> + std::panic::UnwindSafe,
) -> Result<Database, OpenError> {
    // Quietly: the panic's report would come before, and read worse than, our error.
    let opened = crate::quiet_panic::catch_quietly(|| open(path));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenError::InUse {
            path: path.to_owned(),
        }),
        Ok(Err(source)) => Err(OpenError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        }),
        Err(panic) => {
            let detail = (panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb could not read it".to_owned());
            Err(OpenError::Damaged {
                path: path.to_owned(),
                detail,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Issue 18: a data file cut short stopped the broker with a panic inside redb
    /// ("assertion failed: storage.raw_file_len()? >= header.layout().len()").
    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        for cut in [0.5, 0.1] {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open(dir.path()).unwrap();
                store
                    .write(|txn| {
                        let mut meta = txn.open_table(schema::META)?;
                        for i in 0..2_000u32 {
                            meta.insert(format!("filler-{i}").as_str(), [7u8; 512].as_slice())?;
                        }
                        Ok(())
                    })
                    .unwrap();
            }
            let path = dir.path().join(DB_FILE_NAME);
            let len = std::fs::metadata(&path).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len((len as f64 * cut) as u64).unwrap();
            drop(file);
            let err = match Store::open(dir.path()) {
                Ok(_) => panic!("a file cut to {cut} of its length opened"),
                Err(e) => e,
            };
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
    }

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
