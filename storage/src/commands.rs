//! Durable commands (SPEC §5): the record, its state machine, its on-disk
//! format, and the tables that index it.
//!
//! Tables (defined in `schema`, all created by [`create_tables`]):
//! - `commands`: command id → versioned [`CommandRecord`] (postcard).
//! - `command_heads`: device → id of its newest command, and `command_chain`: command id
//!   → id of the same device's previous command (`""` for its first). Together a
//!   newest-first list of every command of a device, for listing and deleting. (Schema 1
//!   kept a `(device, seq)` index instead; it cost every commit one B-tree leaf per
//!   device in the batch plus their branch pages, about half of a command commit's
//!   pages, where the chain's entries are appended at the right edge of one tree and the
//!   heads are one entry per device. `schema` migrates it.)
//! - `commands_open`: `(device, seq)` → command id (`seq` is a store-wide counter, so
//!   this is creation order) for non-terminal commands only, so "what does this device
//!   still owe" (delivery on connect, supersede, queue depth) never scans history.
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
use crate::schema::{
    self, COMMANDS, COMMANDS_OPEN, COMMAND_CHAIN, COMMAND_COUNTERS, COMMAND_DEADLINES,
    COMMAND_HEADS, COMMAND_UNANNOUNCED,
};

mod format;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod record;
mod writer;

use format::decode_command;
pub use record::{
    CommandRecord, CommandStatus, InvalidTransition, NewCommandRecord, UnknownStatus,
};
pub use writer::{CommandWriter, PruneStep};

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

/// The commands `ids`, in their order (`None` where absent), from one snapshot.
pub fn get_many(db: &Database, ids: &[String]) -> Result<Vec<Option<CommandRecord>>, StoreError> {
    let txn = db.begin_read()?;
    let Some(table) = open_read(&txn, COMMANDS)? else {
        return Ok(vec![None; ids.len()]);
    };
    ids.iter().map(|id| load(&table, id)).collect()
}

/// One page of a device's commands, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandPage {
    /// The records.
    pub items: Vec<CommandRecord>,
    /// Pass as `from` to get the next page: the id of the next command to look at.
    /// `None` when there is no more.
    pub next: Option<String>,
}

/// A device's commands, newest first, optionally only those in `status`, at most `limit`
/// (at least 1), starting with the command `from` (a [`CommandPage::next`]) when given.
/// [`StoreError::Invalid`] if `from` is not a command of `device`.
///
/// Looks at most [`LIST_SCAN_BUDGET`] commands; when a filter matches little, the page
/// may be short but still carries a `next`. Undecodable records are skipped and logged
/// (one bad record must not hide a device's history).
pub fn list_for_device(
    db: &Database,
    device: &DeviceId,
    status: Option<CommandStatus>,
    limit: usize,
    from: Option<&str>,
) -> Result<CommandPage, StoreError> {
    let limit = limit.max(1);
    let txn = db.begin_read()?;
    let tables = (
        open_read(&txn, COMMANDS)?,
        open_read(&txn, COMMAND_HEADS)?,
        open_read(&txn, COMMAND_CHAIN)?,
        open_read(&txn, COMMANDS_OPEN)?,
    );
    let (Some(commands), Some(heads), Some(chain), Some(open)) = tables else {
        return match from {
            Some(id) => Err(bad_cursor(device, id)),
            None => Ok(CommandPage {
                items: Vec::new(),
                next: None,
            }),
        };
    };
    let page = Paging {
        items: Vec::new(),
        limit,
        status,
        scanned: 0,
    };
    if status.is_some_and(|s| !s.is_terminal()) {
        // Non-terminal commands are all in the open index: no history walk.
        return list_open(&commands, &open, device, from, page);
    }
    list_history(&commands, &heads, &chain, device, from, page)
}

/// A page of `device`'s commands from the open index (non-terminal ones only), newest
/// first, from command `from` on.
fn list_open(
    commands: &ReadOnlyTable<&'static str, &'static [u8]>,
    open: &ReadOnlyTable<(&'static str, u64), &'static str>,
    device: &DeviceId,
    from: Option<&str>,
    mut page: Paging,
) -> Result<CommandPage, StoreError> {
    let dev = device.as_str();
    let upper = match from {
        None => Bound::Included((dev, u64::MAX)),
        Some(id) => match load(commands, id) {
            Ok(Some(rec)) if rec.device_id == *device => Bound::Included((dev, rec.seq)),
            _ => return Err(bad_cursor(device, id)),
        },
    };
    for entry in open.range((Bound::Included((dev, 0)), upper))?.rev() {
        let (_, id) = entry?;
        if let Some(next) = page.offer(commands, id.value())? {
            return Ok(page.finish(Some(next)));
        }
    }
    Ok(page.finish(None))
}

/// A page of `device`'s commands along its chain (every command), newest first, from
/// command `from` on.
fn list_history(
    commands: &ReadOnlyTable<&'static str, &'static [u8]>,
    heads: &ReadOnlyTable<&'static str, &'static str>,
    chain: &ReadOnlyTable<&'static str, &'static str>,
    device: &DeviceId,
    from: Option<&str>,
    mut page: Paging,
) -> Result<CommandPage, StoreError> {
    let mut cursor = match from {
        None => heads.get(device.as_str())?.map(|v| v.value().to_owned()),
        Some(id) => {
            let known = chain.get(id)?.is_some();
            match load(commands, id) {
                Ok(Some(rec)) if known && rec.device_id == *device => Some(id.to_owned()),
                // An unreadable record cannot say whose it is; its chain entry can lead on.
                Err(_) if known => Some(id.to_owned()),
                _ => return Err(bad_cursor(device, id)),
            }
        }
    };
    while let Some(id) = cursor {
        if let Some(next) = page.offer(commands, &id)? {
            return Ok(page.finish(Some(next)));
        }
        cursor = previous(chain, &id)?;
    }
    Ok(page.finish(None))
}

/// The same device's command before `id` in its history, if one is still stored. The
/// history ends at a device's first command (chain entry `""`), and where older ones
/// were pruned: the chain entry names a command that has none left.
fn previous(
    chain: &impl ReadableTable<&'static str, &'static str>,
    id: &str,
) -> Result<Option<String>, StoreError> {
    let prev = match chain.get(id)? {
        Some(prev) if !prev.value().is_empty() => prev.value().to_owned(),
        _ => return Ok(None),
    };
    Ok(chain.get(prev.as_str())?.is_some().then_some(prev))
}

fn bad_cursor(device: &DeviceId, id: &str) -> StoreError {
    StoreError::Invalid(format!("cursor {id:?} is not a command of device {device}"))
}

/// A page of [`list_for_device`] being filled.
struct Paging {
    items: Vec<CommandRecord>,
    limit: usize,
    status: Option<CommandStatus>,
    scanned: usize,
}

impl Paging {
    /// Looks at command `id`; returns it back when the page is full or the budget spent
    /// before it, so it starts the next page.
    fn offer(
        &mut self,
        commands: &ReadOnlyTable<&'static str, &'static [u8]>,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        if self.items.len() >= self.limit || self.scanned >= LIST_SCAN_BUDGET {
            return Ok(Some(id.to_owned()));
        }
        self.scanned += 1;
        match load(commands, id) {
            Ok(Some(rec)) if self.status.is_none_or(|s| rec.status == s) => self.items.push(rec),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "skipping corrupt command"),
        }
        Ok(None)
    }

    fn finish(self, next: Option<String>) -> CommandPage {
        CommandPage {
            items: self.items,
            next,
        }
    }
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
    schema::create_command_tables(txn)
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
mod table_tests;
#[cfg(test)]
pub(crate) mod tests;
