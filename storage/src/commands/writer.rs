//! [`CommandWriter`]: the command tables inside one write transaction.
//!
//! Records changed in a transaction are kept decoded until [`CommandWriter::finish`]
//! encodes and stores each one once, and the status counters move once per
//! transaction: a command that is created and sent, or acknowledged and answered, in
//! the same batch costs one record write instead of two or three, and reading it back
//! costs no decode. Indexes (history chain, open set, unannounced, idempotency) change at
//! once, so every read in the transaction sees them as they are. The deadline index is
//! brought in step when something reads it ([`CommandWriter::due`],
//! [`CommandWriter::earliest_deadline`]) and before the commit, so a command created and
//! sent in one transaction moves its entry once, not three times.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadableTable, Table, WriteTransaction};

use super::format::{decode_command, encode_command};
use super::{
    device_range, load, previous, status_key, CommandRecord, CommandStatus, NewCommandRecord,
    NEXT_SEQ,
};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{
    COMMANDS, COMMANDS_OPEN, COMMAND_CHAIN, COMMAND_COUNTERS, COMMAND_DEADLINES, COMMAND_HEADS,
    COMMAND_IDEMPOTENCY, COMMAND_UNANNOUNCED,
};

/// What one [`CommandWriter::prune`] step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneStep {
    /// Commands deleted.
    pub removed: usize,
    /// Pass as `after` to go on; `None` when the pass is done.
    pub next: Option<String>,
}

/// The command tables inside one write transaction; see [`write()`](super::write).
pub struct CommandWriter<'txn> {
    commands: Table<'txn, &'static str, &'static [u8]>,
    heads: Table<'txn, &'static str, &'static str>,
    chain: Table<'txn, &'static str, &'static str>,
    open: Table<'txn, (&'static str, u64), &'static str>,
    deadlines: Table<'txn, (u64, &'static str), ()>,
    idempotency: Table<'txn, (&'static str, &'static str), &'static str>,
    counters: Table<'txn, &'static str, u64>,
    unannounced: Table<'txn, &'static str, ()>,
    /// Records created or changed in this transaction, by id: their latest version,
    /// stored by [`CommandWriter::finish`].
    dirty: HashMap<String, CommandRecord>,
    /// Change of each status's count (index as in [`CommandStatus::ALL`]) not stored yet.
    deltas: [i64; 8],
    /// The next `seq`, once read; stored by `finish`.
    next_seq: Option<u64>,
    /// For dirty records whose deadline may have changed: the deadline the index holds
    /// for them (`None`: no entry). Synced by [`CommandWriter::sync_deadlines`].
    indexed_deadlines: HashMap<String, Option<u64>>,
    /// Per status (index as in [`CommandStatus::ALL`]): whether a command reaching it is
    /// owed an event, i.e. recorded in `command_unannounced`.
    owed: [bool; 8],
}

fn slot(s: CommandStatus) -> usize {
    CommandStatus::ALL
        .iter()
        .position(|&x| x == s)
        .unwrap_or_default()
}

impl<'txn> CommandWriter<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(CommandWriter {
            commands: txn.open_table(COMMANDS)?,
            heads: txn.open_table(COMMAND_HEADS)?,
            chain: txn.open_table(COMMAND_CHAIN)?,
            open: txn.open_table(COMMANDS_OPEN)?,
            deadlines: txn.open_table(COMMAND_DEADLINES)?,
            idempotency: txn.open_table(COMMAND_IDEMPOTENCY)?,
            counters: txn.open_table(COMMAND_COUNTERS)?,
            unannounced: txn.open_table(COMMAND_UNANNOUNCED)?,
            dirty: HashMap::new(),
            deltas: [0; 8],
            next_seq: None,
            indexed_deadlines: HashMap::new(),
            owed: [true; 8],
        })
    }

    /// Which terminal statuses owe an event (default: all). A status nobody records
    /// durably (no webhook takes its event) need not be remembered until its event is
    /// emitted: a crash loses nothing a restart could re-send to anyone.
    pub fn set_events_owed(&mut self, owed: impl Fn(CommandStatus) -> bool) {
        for (i, s) in CommandStatus::ALL.into_iter().enumerate() {
            self.owed[i] = owed(s);
        }
    }

    /// Brings the deadline index in step with the records changed so far.
    fn sync_deadlines(&mut self) -> Result<(), StoreError> {
        for (id, indexed) in self.indexed_deadlines.drain() {
            let current = self.dirty.get(&id).and_then(|r| r.next_deadline_ms);
            if indexed == current {
                continue;
            }
            if let Some(d) = indexed {
                self.deadlines.remove((d, id.as_str()))?;
            }
            if let Some(d) = current {
                self.deadlines.insert((d, id.as_str()), ())?;
            }
        }
        Ok(())
    }

    /// Stores every changed record and counter; the last step before the commit.
    pub(super) fn finish(&mut self) -> Result<(), StoreError> {
        self.sync_deadlines()?;
        for (id, rec) in self.dirty.drain() {
            self.commands
                .insert(id.as_str(), encode_command(&rec)?.as_slice())?;
        }
        if let Some(seq) = self.next_seq {
            self.counters.insert(NEXT_SEQ, seq)?;
        }
        for (i, delta) in std::mem::take(&mut self.deltas).into_iter().enumerate() {
            if delta != 0 {
                let key = status_key(CommandStatus::ALL[i]);
                let n = self.counters.get(key)?.map_or(0, |v| v.value());
                self.counters.insert(key, n.saturating_add_signed(delta))?;
            }
        }
        Ok(())
    }

    /// The command `id`, as this transaction sees it.
    pub fn get(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        match self.dirty.get(id) {
            Some(rec) => Ok(Some(rec.clone())),
            None => load(&self.commands, id),
        }
    }

    /// The id of the command created for `(device, key)`, if any.
    pub fn find_idempotent(
        &self,
        device: &DeviceId,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .idempotency
            .get((device.as_str(), key))?
            .map(|v| v.value().to_owned()))
    }

    /// Stores a new `queued` command with its indexes and returns it.
    /// [`StoreError::Conflict`] if the id or the idempotency key is taken.
    pub fn create(&mut self, new: NewCommandRecord) -> Result<CommandRecord, StoreError> {
        let taken = self.dirty.contains_key(new.command_id.as_str())
            || self.commands.get(new.command_id.as_str())?.is_some();
        if taken {
            return Err(StoreError::Conflict {
                kind: "command",
                key: new.command_id,
            });
        }
        if let Some(key) = &new.idempotency_key {
            if self.find_idempotent(&new.device_id, key)?.is_some() {
                return Err(StoreError::Conflict {
                    kind: "idempotency key",
                    key: key.clone(),
                });
            }
        }
        let seq = match self.next_seq {
            Some(seq) => seq,
            None => self.counters.get(NEXT_SEQ)?.map_or(0, |v| v.value()),
        };
        self.next_seq = Some(seq.saturating_add(1));
        let rec = CommandRecord::new(new, seq);
        let (id, dev) = (rec.command_id.as_str(), rec.device_id.as_str());
        let prev = self.heads.insert(dev, id)?;
        let prev = prev.as_ref().map_or("", |p| p.value());
        self.chain.insert(id, prev)?;
        self.open.insert((dev, seq), id)?;
        self.indexed_deadlines.insert(rec.command_id.clone(), None);
        if let Some(key) = &rec.idempotency_key {
            self.idempotency.insert((dev, key.as_str()), id)?;
        }
        self.deltas[slot(rec.status)] += 1;
        self.dirty.insert(rec.command_id.clone(), rec.clone());
        Ok(rec)
    }

    /// Stores a changed version of an existing record and brings every index in step:
    /// status counters, the open set, the deadline index, and the unannounced set when
    /// the record became terminal. [`StoreError::NotFound`] if it was never created.
    pub fn put(&mut self, rec: &CommandRecord) -> Result<(), StoreError> {
        let id = rec.command_id.as_str();
        let old = match self.dirty.remove(id) {
            Some(old) => Ok(old),
            None => match self.commands.get(id)? {
                None => {
                    return Err(StoreError::NotFound {
                        kind: "command",
                        key: id.to_owned(),
                    })
                }
                Some(v) => decode_command(id, v.value()),
            },
        };
        let indexed = match old {
            Ok(old) => self.reindex(&old, rec),
            Err(error) => {
                // The old index entries are unknown; write the new ones. A stale deadline
                // entry is dropped by `due`.
                tracing::error!(%error, "overwriting corrupt command");
                self.reindex_fresh(rec)
            }
        };
        // Kept even when the index update failed: that error aborts the transaction.
        self.dirty.insert(id.to_owned(), rec.clone());
        indexed
    }

    fn reindex(&mut self, old: &CommandRecord, rec: &CommandRecord) -> Result<(), StoreError> {
        let (id, dev) = (rec.command_id.as_str(), rec.device_id.as_str());
        if old.device_id != rec.device_id || old.seq != rec.seq {
            return Err(StoreError::Invalid(format!(
                "command {id:?} cannot change device or seq"
            )));
        }
        if old.status != rec.status {
            self.deltas[slot(old.status)] -= 1;
            self.deltas[slot(rec.status)] += 1;
            if rec.status.is_terminal() {
                self.open.remove((dev, rec.seq))?;
                if self.owed[slot(rec.status)] {
                    self.unannounced.insert(id, ())?;
                }
            }
        }
        if old.next_deadline_ms != rec.next_deadline_ms {
            // `old` is the stored version or an earlier one of this transaction; the
            // first of those is what the index holds.
            self.indexed_deadlines
                .entry(id.to_owned())
                .or_insert(old.next_deadline_ms);
        }
        Ok(())
    }

    fn reindex_fresh(&mut self, rec: &CommandRecord) -> Result<(), StoreError> {
        let (id, dev) = (rec.command_id.as_str(), rec.device_id.as_str());
        if rec.status.is_terminal() {
            self.open.remove((dev, rec.seq))?;
            if self.owed[slot(rec.status)] {
                self.unannounced.insert(id, ())?;
            }
        } else {
            self.open.insert((dev, rec.seq), id)?;
        }
        // Its old entry is unknown: a new one is written at the next sync (a stale entry
        // is dropped by `due`).
        self.indexed_deadlines.entry(id.to_owned()).or_insert(None);
        Ok(())
    }

    /// The device's non-terminal commands, oldest first. Undecodable ones are skipped
    /// and logged.
    pub fn open_for_device(&self, device: &DeviceId) -> Result<Vec<CommandRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.open.range(device_range(device.as_str(), None))? {
            let (_, id) = entry?;
            match self.get(id.value()) {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => tracing::error!(
                    command_id = id.value(),
                    "open index names a missing command"
                ),
                Err(error) => tracing::error!(%error, "skipping corrupt command"),
            }
        }
        Ok(out)
    }

    /// How many non-terminal commands the device has.
    pub fn open_count(&self, device: &DeviceId) -> Result<usize, StoreError> {
        let mut n = 0;
        for entry in self.open.range(device_range(device.as_str(), None))? {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` non-terminal commands whose deadline is at or before `now_ms`,
    /// earliest first. Index entries that no longer match their record (missing,
    /// undecodable, terminal or re-armed) are removed on the way.
    pub fn due(&mut self, now_ms: u64, limit: usize) -> Result<Vec<CommandRecord>, StoreError> {
        self.sync_deadlines()?;
        let mut entries = Vec::new();
        for entry in self.deadlines.range((0, "")..)? {
            let (key, _) = entry?;
            let (deadline, id) = key.value();
            if deadline > now_ms || entries.len() >= limit {
                break;
            }
            entries.push((deadline, id.to_owned()));
        }
        let mut out = Vec::with_capacity(entries.len());
        for (deadline, id) in entries {
            match self.get(&id) {
                Ok(Some(rec)) if rec.next_deadline_ms == Some(deadline) => out.push(rec),
                other => {
                    if let Err(error) = other {
                        tracing::error!(%error, "dropping the deadline of a corrupt command");
                    }
                    self.deadlines.remove((deadline, id.as_str()))?;
                }
            }
        }
        Ok(out)
    }

    /// The earliest stored deadline, as this transaction sees it.
    pub fn earliest_deadline(&mut self) -> Result<Option<u64>, StoreError> {
        self.sync_deadlines()?;
        Ok(self.deadlines.first()?.map(|(k, _)| k.value().0))
    }

    /// How many commands are in each status, as this transaction sees it.
    pub fn status_counts(&self) -> Result<BTreeMap<CommandStatus, u64>, StoreError> {
        let mut counts = BTreeMap::new();
        for (i, s) in CommandStatus::ALL.into_iter().enumerate() {
            let n = self.counters.get(status_key(s))?.map_or(0, |v| v.value());
            counts.insert(s, n.saturating_add_signed(self.deltas[i]));
        }
        Ok(counts)
    }

    /// One step of pruning history: looks at up to `budget` commands in creation order
    /// (after the command `after`, when given) and deletes each that finished before
    /// `cutoff_ms` and is the oldest its device has left, so a device's history only
    /// ever loses its oldest end and its chain stays whole. A command not yet finished,
    /// finished since `cutoff_ms`, or whose event is still owed is kept, and so is
    /// everything newer of its device. The step ends at the first command created at or
    /// after `cutoff_ms` (none newer can qualify).
    pub fn prune(
        &mut self,
        cutoff_ms: u64,
        after: Option<&str>,
        budget: usize,
    ) -> Result<PruneStep, StoreError> {
        let mut ids = Vec::new();
        {
            let lower = match after {
                Some(id) => std::ops::Bound::Excluded(id),
                None => std::ops::Bound::Unbounded,
            };
            for entry in self
                .commands
                .range::<&str>((lower, std::ops::Bound::Unbounded))?
                .take(budget.max(1))
            {
                ids.push(entry?.0.value().to_owned());
            }
        }
        let mut step = PruneStep {
            removed: 0,
            next: None,
        };
        for id in &ids {
            let rec = match self.get(id) {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(error) => {
                    tracing::error!(%error, "not pruning a corrupt command");
                    continue;
                }
            };
            if rec.created_at_ms >= cutoff_ms {
                step.next = None;
                return Ok(step);
            }
            step.next = Some(id.clone());
            let finished = rec.completed_at_ms().is_some_and(|at| at < cutoff_ms);
            let owed = self.unannounced.get(id.as_str())?.is_some();
            // Only a device's oldest stored command goes, so its history stays one chain.
            if !finished || owed || previous(&self.chain, id)?.is_some() {
                continue;
            }
            self.delete_tail(&rec)?;
            step.removed += 1;
        }
        if ids.len() < budget.max(1) {
            step.next = None;
        }
        Ok(step)
    }

    /// Deletes a terminal command that is its device's oldest, with its index entries.
    fn delete_tail(&mut self, rec: &CommandRecord) -> Result<(), StoreError> {
        let (id, dev) = (rec.command_id.as_str(), rec.device_id.as_str());
        self.commands.remove(id)?;
        self.dirty.remove(id);
        self.indexed_deadlines.remove(id);
        // The newer command's chain entry now names a pruned one: the end of the chain.
        self.chain.remove(id)?;
        let head = self.heads.get(dev)?.map(|v| v.value() == id);
        if head == Some(true) {
            self.heads.remove(dev)?;
        }
        if let Some(key) = &rec.idempotency_key {
            let ours = self
                .idempotency
                .get((dev, key.as_str()))?
                .map(|v| v.value() == id);
            if ours == Some(true) {
                self.idempotency.remove((dev, key.as_str()))?;
            }
        }
        self.deltas[slot(rec.status)] -= 1;
        Ok(())
    }

    /// Forgets that these commands' terminal events are owed (they were emitted).
    pub fn mark_announced(&mut self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            self.unannounced.remove(id.as_str())?;
        }
        Ok(())
    }

    /// Deletes every command of `device` and every index entry that names one;
    /// returns how many records were deleted.
    pub fn remove_device(&mut self, device: &DeviceId) -> Result<usize, StoreError> {
        let dev = device.as_str();
        let mut ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = self.heads.remove(dev)?.map(|v| v.value().to_owned());
        while let Some(id) = cursor {
            if !seen.insert(id.clone()) {
                tracing::error!(command_id = %id, "command chain loops; stopping there");
                break;
            }
            cursor = previous(&self.chain, &id)?;
            self.chain.remove(id.as_str())?;
            ids.push(id);
        }
        let mut removed = 0;
        for id in &ids {
            let stored = self
                .commands
                .remove(id.as_str())?
                .map(|v| decode_command(id, v.value()));
            let old = match self.dirty.remove(id.as_str()) {
                Some(rec) => Some(Ok(rec)),
                None => stored,
            };
            let indexed = self.indexed_deadlines.remove(id.as_str());
            match old {
                Some(Ok(rec)) => {
                    removed += 1;
                    self.deltas[slot(rec.status)] -= 1;
                    if let Some(d) = indexed.unwrap_or(rec.next_deadline_ms) {
                        self.deadlines.remove((d, id.as_str()))?;
                    }
                }
                Some(Err(error)) => {
                    removed += 1;
                    tracing::error!(%error, "deleting corrupt command");
                }
                None => {}
            }
            self.unannounced.remove(id.as_str())?;
        }
        self.open.retain_in(device_range(dev, None), |_, _| false)?;
        // Device ids never contain NUL, so `dev + "\0"` sorts after every `(dev, _)`.
        let past = format!("{dev}\0");
        self.idempotency
            .retain_in((dev, "")..(past.as_str(), ""), |_, _| false)?;
        Ok(removed)
    }
}
