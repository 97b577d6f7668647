//! Durable commands (SPEC §5): the record, its state machine, its on-disk
//! format, and the tables that index it.
//!
//! Tables (all created by [`create_tables`]):
//! - `commands`: command id → versioned [`CommandRecord`] (postcard).
//! - `commands_by_device`: `(device, seq)` → command id, every command of a device in
//!   creation order (`seq` is a store-wide counter), for listing and deleting.
//! - `commands_open`: the same key for non-terminal commands only, so "what does this
//!   device still owe" (delivery on connect, supersede, queue depth) never scans history.
//! - `command_deadlines`: `(deadline_ms, command id)`, one entry per non-terminal command,
//!   so one timer can sleep until the earliest and restarts reload it.
//! - `command_idempotency`: `(device, Idempotency-Key)` → command id.
//! - `command_counters`: the next `seq` and the number of records in each status.
//! - `command_unannounced`: terminal commands whose event may not have been emitted yet;
//!   the engine re-emits them after a crash (at least once).
//!
//! [`CommandWriter`] is the only writer, and it keeps every index in step with the
//! records: callers change a record through its transition methods and hand it to
//! [`CommandWriter::put`], which diffs it against the stored version.
//!
//! JSON values (`params`, `metadata`, `result`, `late_response`) are stored as JSON text:
//! postcard cannot decode `serde_json::Value`, and text keeps `metadata` byte-for-byte.
//! This module does not parse them; the engine checks them when it builds a view.
//!
//! Submodules: `record` (the record and its state machine), `format` (its versioned
//! postcard encoding), `writer` ([`CommandWriter`], which keeps a transaction's changed
//! records decoded and stores each once at the end).

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase as _, ReadableTable,
    TableDefinition, TableError, WriteTransaction,
};

use crate::error::StoreError;
use crate::ids::DeviceId;

mod format;
mod record;
mod writer;

use format::decode_command;
pub use record::{
    CommandRecord, CommandStatus, InvalidTransition, NewCommandRecord, UnknownStatus,
};
pub use writer::CommandWriter;

const COMMANDS_TABLE: &str = "commands";

/// Command id → `StoredCommand`.
pub(crate) const COMMANDS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(COMMANDS_TABLE);
/// `(device id, seq)` → command id, every command.
pub(crate) const COMMANDS_BY_DEVICE: TableDefinition<'static, (&str, u64), &str> =
    TableDefinition::new("commands_by_device");
/// `(device id, seq)` → command id, non-terminal commands only.
pub(crate) const COMMANDS_OPEN: TableDefinition<'static, (&str, u64), &str> =
    TableDefinition::new("commands_open");
/// `(deadline unix ms, command id)`, one per non-terminal command.
pub(crate) const COMMAND_DEADLINES: TableDefinition<'static, (u64, &str), ()> =
    TableDefinition::new("command_deadlines");
/// `(device id, idempotency key)` → command id.
pub(crate) const COMMAND_IDEMPOTENCY: TableDefinition<'static, (&str, &str), &str> =
    TableDefinition::new("command_idempotency");
/// [`NEXT_SEQ`] and `status/<status>` → count.
pub(crate) const COMMAND_COUNTERS: TableDefinition<'static, &str, u64> =
    TableDefinition::new("command_counters");
/// Terminal commands whose event is not known to be emitted.
pub(crate) const COMMAND_UNANNOUNCED: TableDefinition<'static, &str, ()> =
    TableDefinition::new("command_unannounced");

/// Counter key of the next `seq` to hand out.
const NEXT_SEQ: &str = "next_seq";

/// How many index entries one [`list_for_device`] call reads at most, so a filter that
/// matches little never scans a whole history in one request.
pub const LIST_SCAN_BUDGET: usize = 10_000;

// ---- reading ----------------------------------------------------------------

fn status_key(s: CommandStatus) -> &'static str {
    match s {
        CommandStatus::Queued => "status/queued",
        CommandStatus::Sent => "status/sent",
        CommandStatus::Delivered => "status/delivered",
        CommandStatus::Completed => "status/completed",
        CommandStatus::Failed => "status/failed",
        CommandStatus::Expired => "status/expired",
        CommandStatus::Cancelled => "status/cancelled",
        CommandStatus::Superseded => "status/superseded",
    }
}

/// A range of `(device, seq)` keys.
type DeviceRange<'a> = (Bound<(&'a str, u64)>, Bound<(&'a str, u64)>);

/// Bounds covering every `(device, seq)` key of one device, below `below` if given.
fn device_range(device: &str, below: Option<u64>) -> DeviceRange<'_> {
    let upper = match below {
        Some(seq) => Bound::Excluded((device, seq)),
        None => Bound::Included((device, u64::MAX)),
    };
    (Bound::Included((device, 0)), upper)
}

/// Decodes the record `id` from `table`, if present.
fn load(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<CommandRecord>, StoreError> {
    match table.get(id)? {
        Some(v) => decode_command(id, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Opens a table for reading; a table that was never created reads as empty.
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'_, K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn counts_from(
    table: &impl ReadableTable<&'static str, u64>,
) -> Result<BTreeMap<CommandStatus, u64>, StoreError> {
    let mut out = BTreeMap::new();
    for s in CommandStatus::ALL {
        let n = table.get(status_key(s))?.map_or(0, |v| v.value());
        out.insert(s, n);
    }
    Ok(out)
}

/// The command `id`, if stored.
pub fn get(db: &Database, id: &str) -> Result<Option<CommandRecord>, StoreError> {
    let txn = db.begin_read()?;
    match open_read(&txn, COMMANDS)? {
        Some(table) => load(&table, id),
        None => Ok(None),
    }
}

/// One page of a device's commands, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandPage {
    /// The records.
    pub items: Vec<CommandRecord>,
    /// Pass as `before_seq` to get the next page; `None` when there is no more.
    pub next_before_seq: Option<u64>,
}

/// A device's commands, newest first, optionally only those in `status`, at most `limit`
/// (at least 1), created before `before_seq` when given.
///
/// Reads at most [`LIST_SCAN_BUDGET`] index entries; when a filter matches little, the
/// page may be short but still carries a `next_before_seq`. Undecodable records are
/// skipped and logged (one bad record must not hide a device's history).
pub fn list_for_device(
    db: &Database,
    device: &DeviceId,
    status: Option<CommandStatus>,
    limit: usize,
    before_seq: Option<u64>,
) -> Result<CommandPage, StoreError> {
    let limit = limit.max(1);
    let empty = CommandPage {
        items: Vec::new(),
        next_before_seq: None,
    };
    let txn = db.begin_read()?;
    let only_open = status.is_some_and(|s| !s.is_terminal());
    let index = if only_open {
        COMMANDS_OPEN
    } else {
        COMMANDS_BY_DEVICE
    };
    let (Some(index), Some(commands)) = (open_read(&txn, index)?, open_read(&txn, COMMANDS)?)
    else {
        return Ok(empty);
    };
    let mut items = Vec::new();
    let mut scanned = 0;
    for entry in index
        .range(device_range(device.as_str(), before_seq))?
        .rev()
    {
        let (key, id) = entry?;
        let seq = key.value().1;
        scanned += 1;
        match load(&commands, id.value()) {
            Ok(Some(rec)) if status.is_none_or(|s| rec.status == s) => items.push(rec),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "skipping corrupt command"),
        }
        if items.len() > limit {
            items.truncate(limit);
            let next_before_seq = items.last().map(|r| r.seq);
            return Ok(CommandPage {
                items,
                next_before_seq,
            });
        }
        if scanned >= LIST_SCAN_BUDGET {
            return Ok(CommandPage {
                items,
                next_before_seq: Some(seq),
            });
        }
    }
    Ok(CommandPage {
        items,
        next_before_seq: None,
    })
}

/// The earliest stored deadline, unix ms.
pub fn earliest_deadline(db: &Database) -> Result<Option<u64>, StoreError> {
    let txn = db.begin_read()?;
    match open_read(&txn, COMMAND_DEADLINES)? {
        Some(t) => Ok(t.first()?.map(|(k, _)| k.value().0)),
        None => Ok(None),
    }
}

/// How many stored commands are in each status (every status present).
pub fn status_counts(db: &Database) -> Result<BTreeMap<CommandStatus, u64>, StoreError> {
    let txn = db.begin_read()?;
    match open_read(&txn, COMMAND_COUNTERS)? {
        Some(t) => counts_from(&t),
        None => Ok(CommandStatus::ALL.into_iter().map(|s| (s, 0)).collect()),
    }
}

/// Terminal commands whose event is not known to have been emitted (see
/// [`CommandWriter::mark_announced`]). Undecodable ones are skipped and logged.
pub fn unannounced(db: &Database) -> Result<Vec<CommandRecord>, StoreError> {
    let txn = db.begin_read()?;
    let (Some(ids), Some(commands)) = (
        open_read(&txn, COMMAND_UNANNOUNCED)?,
        open_read(&txn, COMMANDS)?,
    ) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in ids.iter()? {
        let (id, _) = entry?;
        match load(&commands, id.value()) {
            Ok(Some(rec)) => out.push(rec),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "skipping corrupt command"),
        }
    }
    Ok(out)
}

// ---- writing ----------------------------------------------------------------

/// Creates every command table; part of opening the database.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(COMMANDS)?;
    txn.open_table(COMMANDS_BY_DEVICE)?;
    txn.open_table(COMMANDS_OPEN)?;
    txn.open_table(COMMAND_DEADLINES)?;
    txn.open_table(COMMAND_IDEMPOTENCY)?;
    txn.open_table(COMMAND_COUNTERS)?;
    txn.open_table(COMMAND_UNANNOUNCED)?;
    Ok(())
}

/// Runs `f` in one write transaction over the command tables and commits it durably
/// (`Durability::Immediate`); if `f` fails, nothing changes.
pub fn write<R>(
    db: &Database,
    f: impl FnOnce(&mut CommandWriter<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let out = {
        let mut writer = CommandWriter::open(&txn)?;
        let out = f(&mut writer)?;
        writer.finish()?;
        out
    };
    crate::metrics::commit(txn)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
