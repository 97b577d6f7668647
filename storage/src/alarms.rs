//! Alarm rules, alarms and the evaluator's per (rule, device) state (SPEC §11).
//!
//! - `alarm_rules`: rule id → `StoredRule`.
//! - `alarms`: alarm sequence number (ascending with time) → `StoredAlarm`; listed
//!   newest first by iterating backwards.
//! - `alarm_state`: `(source key, device)` → `StoredState`: the active alarm of a rule
//!   (source key: the rule id) or of a device-reported alarm (`device:{name}`) and the
//!   start of a running `for_s` window. Absent: nothing active, no window running.
//!
//! Every change the evaluator makes to alarms and states is one transaction
//! ([`Store::apply_alarm_changes`]), so a crash leaves an alarm and its state together.

use crate::codec::Location;
use crate::error::StoreError;
use crate::schema::{ALARMS, ALARMS_META, ALARM_RULES, ALARM_RULES_TABLE, ALARM_STATE};
use crate::store::Store;
use redb::ReadableTable as _;

mod records;
#[cfg(test)]
mod tests;

use records::{decode_alarm, decode_rule, decode_state, encode_alarm, encode_rule, encode_state};
pub use records::{
    AlarmCondition, AlarmFilter, AlarmRecord, AlarmRule, AlarmSource, AlarmState, AlarmTarget,
    CompareOp, NewAlarm,
};

const RULE: &str = "alarm rule";
const ALARM: &str = "alarm";
const NEXT_SEQ: &str = "next_seq";

/// `(source key, device)`: a rule id or `device:{name}`, and the device id.
pub type StateKey = (String, String);

/// One change the evaluator makes, applied in order by [`Store::apply_alarm_changes`].
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmChange {
    /// Starts (`Some`) or stops the running window of `(key, device)`, keeping its
    /// active alarm; a state with neither is removed.
    Window {
        key: String,
        device: String,
        since_ms: Option<u64>,
    },
    /// Stores a new active alarm and makes it the active one of `(key, device)`.
    Raise { key: String, alarm: NewAlarm },
    /// Clears the active alarm of `(key, device)`, if any, and removes the state.
    Clear {
        key: String,
        device: String,
        at_ms: u64,
    },
}

/// What [`Store::apply_alarm_changes`] did to alarms, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmOutcome {
    Raised(AlarmRecord),
    Cleared(AlarmRecord),
}

fn rule_at(key: &str) -> Location<'_> {
    Location {
        table: ALARM_RULES_TABLE,
        key,
    }
}

fn not_found(kind: &'static str, key: impl Into<String>) -> StoreError {
    StoreError::NotFound {
        kind,
        key: key.into(),
    }
}

impl Store {
    /// Stores a new rule. [`StoreError::Conflict`] if its id is taken.
    pub fn create_alarm_rule(&self, rule: &AlarmRule) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(ALARM_RULES)?;
            if table.get(rule.id.as_str())?.is_some() {
                return Err(StoreError::Conflict {
                    kind: RULE,
                    key: rule.id.clone(),
                });
            }
            table.insert(rule.id.as_str(), encode_rule(rule)?.as_slice())?;
            Ok(())
        })
    }

    /// Replaces an existing rule. [`StoreError::NotFound`] if absent.
    pub fn update_alarm_rule(&self, rule: &AlarmRule) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(ALARM_RULES)?;
            if table.get(rule.id.as_str())?.is_none() {
                return Err(not_found(RULE, &rule.id));
            }
            table.insert(rule.id.as_str(), encode_rule(rule)?.as_slice())?;
            Ok(())
        })
    }

    /// The rule with this id, if any.
    pub fn get_alarm_rule(&self, id: &str) -> Result<Option<AlarmRule>, StoreError> {
        self.read(|txn| match txn.open_table(ALARM_RULES)?.get(id)? {
            Some(v) => Ok(Some(decode_rule(rule_at(id), v.value())?)),
            None => Ok(None),
        })
    }

    /// Every rule, by id.
    pub fn list_alarm_rules(&self) -> Result<Vec<AlarmRule>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(ALARM_RULES)?.iter()? {
                let (k, v) = entry?;
                out.push(decode_rule(rule_at(k.value()), v.value())?);
            }
            Ok(out)
        })
    }

    /// Removes a rule with its states, clearing its active alarms at `at_ms`, in one
    /// transaction; returns the rule and the alarms cleared. [`StoreError::NotFound`]
    /// if absent.
    pub fn delete_alarm_rule(
        &self,
        id: &str,
        at_ms: u64,
    ) -> Result<(AlarmRule, Vec<AlarmRecord>), StoreError> {
        self.write(|txn| {
            let rule = match txn.open_table(ALARM_RULES)?.remove(id)? {
                Some(v) => decode_rule(rule_at(id), v.value())?,
                None => return Err(not_found(RULE, id)),
            };
            let mut states = txn.open_table(ALARM_STATE)?;
            let mut alarms = txn.open_table(ALARMS)?;
            let mut devices = Vec::new();
            for entry in states.range((id, "")..)? {
                let (k, v) = entry?;
                let (key, device) = k.value();
                if key != id {
                    break;
                }
                devices.push((device.to_owned(), decode_state(key, device, v.value())?));
            }
            let mut cleared = Vec::new();
            for (device, state) in devices {
                states.remove((id, device.as_str()))?;
                if let Some(seq) = state.alarm {
                    if let Some(alarm) = clear_alarm(&mut alarms, seq, at_ms)? {
                        cleared.push(alarm);
                    }
                }
            }
            Ok((rule, cleared))
        })
    }

    /// Every stored state: `((source key, device), state)`.
    pub fn load_alarm_states(&self) -> Result<Vec<(StateKey, AlarmState)>, StoreError> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(ALARM_STATE)?.iter()? {
                let (k, v) = entry?;
                let (key, device) = k.value();
                let state = decode_state(key, device, v.value())?;
                out.push(((key.to_owned(), device.to_owned()), state));
            }
            Ok(out)
        })
    }

    /// Applies `changes` in order in one durable transaction; returns what happened to
    /// alarms, for their events.
    pub fn apply_alarm_changes(
        &self,
        changes: &[AlarmChange],
    ) -> Result<Vec<AlarmOutcome>, StoreError> {
        self.write(|txn| {
            let mut states = txn.open_table(ALARM_STATE)?;
            let mut alarms = txn.open_table(ALARMS)?;
            let mut meta = txn.open_table(ALARMS_META)?;
            let mut out = Vec::new();
            for change in changes {
                match change {
                    AlarmChange::Window {
                        key,
                        device,
                        since_ms,
                    } => {
                        let at = (key.as_str(), device.as_str());
                        let mut state = match states.get(at)? {
                            Some(v) => decode_state(key, device, v.value())?,
                            None => AlarmState::default(),
                        };
                        state.since_ms = *since_ms;
                        if state == AlarmState::default() {
                            states.remove(at)?;
                        } else {
                            states.insert(at, encode_state(key, device, &state)?.as_slice())?;
                        }
                    }
                    AlarmChange::Raise { key, alarm } => {
                        let seq = meta.get(NEXT_SEQ)?.map_or(1, |v| v.value());
                        meta.insert(NEXT_SEQ, seq + 1)?;
                        let record = alarm.clone().into_record(seq);
                        alarms.insert(seq, encode_alarm(&record)?.as_slice())?;
                        let state = AlarmState {
                            alarm: Some(seq),
                            since_ms: None,
                        };
                        let bytes = encode_state(key, &record.device_id, &state)?;
                        let at = (key.as_str(), record.device_id.as_str());
                        states.insert(at, bytes.as_slice())?;
                        out.push(AlarmOutcome::Raised(record));
                    }
                    AlarmChange::Clear { key, device, at_ms } => {
                        let old = match states.remove((key.as_str(), device.as_str()))? {
                            Some(v) => decode_state(key, device, v.value())?,
                            None => continue,
                        };
                        if let Some(seq) = old.alarm {
                            if let Some(record) = clear_alarm(&mut alarms, seq, *at_ms)? {
                                out.push(AlarmOutcome::Cleared(record));
                            }
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    /// Acknowledges an alarm at `at_ms`; returns it and whether this call acknowledged
    /// it (`false`: it already was). [`StoreError::NotFound`] if absent.
    pub fn ack_alarm(&self, seq: u64, at_ms: u64) -> Result<(AlarmRecord, bool), StoreError> {
        self.write(|txn| {
            let mut alarms = txn.open_table(ALARMS)?;
            let mut record = match alarms.get(seq)? {
                Some(v) => decode_alarm(seq, v.value())?,
                None => return Err(not_found(ALARM, seq.to_string())),
            };
            if record.acknowledged_at_ms.is_some() {
                return Ok((record, false));
            }
            record.acknowledged_at_ms = Some(at_ms);
            alarms.insert(seq, encode_alarm(&record)?.as_slice())?;
            Ok((record, true))
        })
    }

    /// The alarm with this sequence number, if any.
    pub fn get_alarm(&self, seq: u64) -> Result<Option<AlarmRecord>, StoreError> {
        self.read(|txn| match txn.open_table(ALARMS)?.get(seq)? {
            Some(v) => Ok(Some(decode_alarm(seq, v.value())?)),
            None => Ok(None),
        })
    }

    /// Up to `limit` alarms matching `filter`, newest first, older than `before` when
    /// given; with the sequence number to continue before when there may be more.
    pub fn list_alarms(
        &self,
        filter: &AlarmFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<AlarmRecord>, Option<u64>), StoreError> {
        self.read(|txn| {
            let table = txn.open_table(ALARMS)?;
            let mut out = Vec::new();
            for entry in table.range(..before.unwrap_or(u64::MAX))?.rev() {
                let (k, v) = entry?;
                let record = decode_alarm(k.value(), v.value())?;
                if !filter.matches(&record) {
                    continue;
                }
                if out.len() == limit {
                    let next = out.last().map(|r: &AlarmRecord| r.seq);
                    return Ok((out, next));
                }
                out.push(record);
            }
            Ok((out, None))
        })
    }
}

impl Store {
    /// Deletes up to `budget` cleared alarms cleared before `cleared_before_ms`, oldest
    /// first, in one transaction; returns how many. Active alarms are never touched (an
    /// alarm state points only at an active one), so history ages out while what is
    /// wrong now stays.
    pub fn prune_cleared_alarms(
        &self,
        cleared_before_ms: u64,
        budget: usize,
    ) -> Result<usize, StoreError> {
        self.write(|txn| {
            let mut alarms = txn.open_table(ALARMS)?;
            let mut old = Vec::new();
            for entry in alarms.iter()? {
                let (k, v) = entry?;
                let record = decode_alarm(k.value(), v.value())?;
                if !record.active && record.cleared_at_ms.is_some_and(|c| c < cleared_before_ms) {
                    old.push(record.seq);
                    if old.len() == budget {
                        break;
                    }
                }
            }
            for seq in &old {
                alarms.remove(seq)?;
            }
            Ok(old.len())
        })
    }
}

/// Marks alarm `seq` cleared at `at_ms` if it is active; returns it if it was.
fn clear_alarm(
    alarms: &mut redb::Table<'_, u64, &'static [u8]>,
    seq: u64,
    at_ms: u64,
) -> Result<Option<AlarmRecord>, StoreError> {
    let mut record = match alarms.get(seq)? {
        Some(v) => decode_alarm(seq, v.value())?,
        None => return Ok(None),
    };
    if !record.active {
        return Ok(None);
    }
    record.active = false;
    record.cleared_at_ms = Some(at_ms);
    alarms.insert(seq, encode_alarm(&record)?.as_slice())?;
    Ok(Some(record))
}
