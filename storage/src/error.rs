//! Errors at the storage crate boundary.

use std::path::PathBuf;

/// What can go wrong in a [`Store`](crate::Store) operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record does not exist. `kind` is e.g. `"device"` or `"service client"`.
    #[error("{kind} {key:?} not found")]
    NotFound {
        /// What kind of record was looked up.
        kind: &'static str,
        /// Its key (device id, client name, topic).
        key: String,
    },
    /// A record with this key (or this MQTT username) already exists.
    #[error("{kind} {key:?} already exists")]
    Conflict {
        /// What kind of record holds the key.
        kind: &'static str,
        /// The contested key.
        key: String,
    },
    /// The request is not valid for the current state, e.g. the key generation
    /// counter of a device is exhausted.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table:?} at key {key:?}: {reason}")]
    Corrupt {
        /// The redb table holding the record.
        table: &'static str,
        /// The record's key.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// redb reported an error (I/O, storage, transaction, commit).
    #[error("database error: {0}")]
    Database(String),
}

macro_rules! database_error_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(e.to_string())
            }
        }
    )*};
}

database_error_from!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

/// Why [`Store::open`](crate::Store::open) failed. Every variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The data directory could not be created.
    #[error("cannot create data directory {}", path.display())]
    CreateDir {
        /// The data directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// redb could not open or create the database file (missing permissions,
    /// another process holds it, not a redb file, ...).
    #[error("cannot open database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::DatabaseError,
    },
    /// The database opened, but creating its tables or reading its metadata failed.
    #[error("cannot initialise database {}", path.display())]
    Init {
        /// The database file.
        path: PathBuf,
        /// The failing store operation.
        #[source]
        source: StoreError,
    },
    /// The file was written by a newer fleetmq with a format this build cannot read.
    #[error(
        "database {} has schema version {found}; this build understands up to {supported}",
        path.display()
    )]
    UnsupportedSchema {
        /// The database file.
        path: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Highest version this build understands.
        supported: u32,
    },
}
