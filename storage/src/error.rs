//! Errors at the storage crate boundary.

use std::path::PathBuf;

/// What can go wrong in a [`Store`](crate::Store) operation.
///
/// [`NotFound`](Self::NotFound), [`Conflict`](Self::Conflict), [`Invalid`](Self::Invalid)
/// and [`Corrupt`](Self::Corrupt) are about one record or request; the other variants
/// mean the database (or the encoder, or the runtime) failed, name the step that failed,
/// and carry the underlying error as their [`source`](std::error::Error::source). Their
/// message repeats the source's, since most callers log an error's message alone.
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
    /// redb could not begin a read or write transaction.
    #[error("cannot begin a database transaction: {source}")]
    Transaction {
        /// redb's error.
        #[source]
        source: Cause,
    },
    /// redb could not set a write transaction's durability.
    #[error("cannot set a write transaction's durability: {source}")]
    Durability {
        /// redb's error.
        #[source]
        source: Cause,
    },
    /// redb could not open (or create, or delete) a table.
    #[error("cannot open a database table: {source}")]
    Table {
        /// redb's error; it names the table.
        #[source]
        source: Cause,
    },
    /// Reading or writing a table's entries failed (I/O, a corrupt page, a value too
    /// large, ...).
    #[error("cannot read or write the database: {source}")]
    Storage {
        /// redb's error.
        #[source]
        source: Cause,
    },
    /// A write transaction could not be committed; none of its changes are stored.
    #[error("cannot commit a database transaction: {source}")]
    Commit {
        /// redb's error.
        #[source]
        source: Cause,
    },
    /// A record could not be encoded for storing; nothing was written.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// The record, e.g. `record for table "devices" key "dev-1"`.
        what: String,
        /// Why (the encoder's error, or the invariant the record broke).
        #[source]
        source: Cause,
    },
    /// A call sent to the blocking pool was cancelled before it ran (the runtime is
    /// shutting down).
    #[error("store call cancelled: {source}")]
    Cancelled {
        /// tokio's error.
        #[source]
        source: Cause,
    },
}

/// The underlying error a [`StoreError`] or [`OpenError`] variant carries: redb's (or
/// the encoder's, or tokio's) own error, boxed so no dependency's type is part of this
/// crate's API. Downcast it if you must tell redb's errors apart.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl StoreError {
    /// [`StoreError::Encode`] of `what`.
    pub(crate) fn encode(what: impl Into<String>, source: impl Into<Cause>) -> StoreError {
        StoreError::Encode {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Each redb error type comes from one kind of operation, so it picks the variant.
macro_rules! redb_error_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::$variant { source: Box::new(e) }
            }
        }
    )*};
}

redb_error_from!(
    redb::TransactionError => Transaction,
    redb::SetDurabilityError => Durability,
    redb::TableError => Table,
    redb::StorageError => Storage,
    redb::CommitError => Commit,
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
        source: Cause,
    },
    /// Another process (a running fleetmq) has the database file open: redb locks it.
    #[error(
        "database {} is in use by another process (a running fleetmq?); stop it first, \
         or use `fleetmq backup` to copy the data while it runs",
        path.display()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database file is damaged (cut short, overwritten): redb gave up reading it.
    #[error(
        "database {} is damaged ({detail}); stop fleetmq and restore the file from a backup, \
         or move it aside to start with an empty database",
        path.display()
    )]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What redb found.
        detail: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn redb_errors_keep_their_cause_and_name_the_step() {
        let err = StoreError::from(redb::TableError::TableDoesNotExist("devices".into()));
        assert!(matches!(err, StoreError::Table { .. }), "{err:?}");
        let source = err.source().expect("a source");
        assert!(matches!(
            source.downcast_ref::<redb::TableError>(),
            Some(redb::TableError::TableDoesNotExist(name)) if name == "devices"
        ));
        let msg = err.to_string();
        assert!(msg.starts_with("cannot open a database table: "), "{msg}");
        assert!(msg.ends_with(&source.to_string()), "{msg}");

        let err = StoreError::from(redb::CommitError::Storage(redb::StorageError::PreviousIo));
        assert!(matches!(err, StoreError::Commit { .. }), "{err:?}");
        assert!(err.source().unwrap().is::<redb::CommitError>());
    }

    #[test]
    fn encode_errors_name_the_record() {
        let err = StoreError::encode("telemetry block", "mixed point formats");
        assert_eq!(
            err.to_string(),
            "cannot encode telemetry block: mixed point formats"
        );
        assert_eq!(err.source().unwrap().to_string(), "mixed point formats");
    }
}
