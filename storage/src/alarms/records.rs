//! The alarm records: what the rest of the program works with, and their versioned
//! on-disk encodings (postcard), kept apart so a JSON change never changes the file.

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, Location};
use crate::error::StoreError;
use crate::schema::{ALARMS_TABLE, ALARM_STATE_TABLE};

/// A comparison of a telemetry value with a rule's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl CompareOp {
    /// Whether `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            CompareOp::Gt => value > threshold,
            CompareOp::Ge => value >= threshold,
            CompareOp::Lt => value < threshold,
            CompareOp::Le => value <= threshold,
            CompareOp::Eq => value == threshold,
            CompareOp::Ne => value != threshold,
        }
    }
}

/// Which devices a rule watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlarmTarget {
    All,
    Devices(Vec<String>),
    /// Devices whose label `key` is `value`.
    Label {
        key: String,
        value: String,
    },
}

/// When a rule's alarm is raised (or, as a clear condition, cleared).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlarmCondition {
    /// The numeric telemetry value `key` compares with `value` for `for_s` seconds of
    /// telemetry time.
    Threshold {
        key: String,
        op: CompareOp,
        value: f64,
        for_s: u64,
    },
    /// The device has been offline `for_s` seconds of wall time.
    Offline { for_s: u64 },
}

/// An alarm rule (SPEC §11).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRule {
    pub id: String,
    pub name: String,
    /// `critical`, `major`, `minor` or `warning`, checked by the caller.
    pub severity: String,
    pub target: AlarmTarget,
    pub condition: AlarmCondition,
    /// `None`: the condition no longer holding clears the alarm.
    pub clear: Option<AlarmCondition>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Who raised an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmSource {
    Rule,
    Device,
}

/// An alarm to raise; [`AlarmRecord`] once stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlarm {
    /// `None` for an alarm the device reported.
    pub rule_id: Option<String>,
    pub name: String,
    pub severity: String,
    pub device_id: String,
    pub raised_at_ms: u64,
    /// JSON text: the value that raised it (or the device's payload).
    pub value: Option<String>,
    pub source: AlarmSource,
}

impl NewAlarm {
    pub(crate) fn into_record(self, seq: u64) -> AlarmRecord {
        AlarmRecord {
            seq,
            rule_id: self.rule_id,
            name: self.name,
            severity: self.severity,
            device_id: self.device_id,
            active: true,
            raised_at_ms: self.raised_at_ms,
            cleared_at_ms: None,
            acknowledged_at_ms: None,
            value: self.value,
            source: self.source,
        }
    }
}

/// A stored alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRecord {
    /// Its id, ascending with time.
    pub seq: u64,
    pub rule_id: Option<String>,
    pub name: String,
    pub severity: String,
    pub device_id: String,
    pub active: bool,
    pub raised_at_ms: u64,
    pub cleared_at_ms: Option<u64>,
    pub acknowledged_at_ms: Option<u64>,
    pub value: Option<String>,
    pub source: AlarmSource,
}

/// What [`Store::list_alarms`](crate::Store::list_alarms) returns; `None`: any.
#[derive(Debug, Clone, Default)]
pub struct AlarmFilter {
    pub active: Option<bool>,
    pub device: Option<String>,
    pub severity: Option<String>,
    pub acknowledged: Option<bool>,
}

impl AlarmFilter {
    pub(crate) fn matches(&self, a: &AlarmRecord) -> bool {
        self.active.is_none_or(|x| x == a.active)
            && self.device.as_ref().is_none_or(|d| *d == a.device_id)
            && self.severity.as_ref().is_none_or(|s| *s == a.severity)
            && self
                .acknowledged
                .is_none_or(|x| x == a.acknowledged_at_ms.is_some())
    }
}

/// The evaluator's state of one (rule, device): its active alarm and the start of a
/// running `for_s` window (raising while none is active, clearing while one is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    pub alarm: Option<u64>,
    pub since_ms: Option<u64>,
}

// ---- on disk: a new format is a new variant, never an edit to `V1` -----------------

#[derive(Serialize, Deserialize)]
enum StoredRule {
    V1(RuleV1),
}

#[derive(Serialize, Deserialize)]
struct RuleV1 {
    name: String,
    severity: String,
    target: AlarmTarget,
    condition: AlarmCondition,
    clear: Option<AlarmCondition>,
    created_at_ms: u64,
    updated_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum StoredAlarm {
    V1(AlarmV1),
}

#[derive(Serialize, Deserialize)]
struct AlarmV1 {
    rule_id: Option<String>,
    name: String,
    severity: String,
    device_id: String,
    active: bool,
    raised_at_ms: u64,
    cleared_at_ms: Option<u64>,
    acknowledged_at_ms: Option<u64>,
    value: Option<String>,
    source: AlarmSource,
}

#[derive(Serialize, Deserialize)]
enum StoredState {
    V1 {
        alarm: Option<u64>,
        since_ms: Option<u64>,
    },
}

pub(crate) fn encode_rule(r: &AlarmRule) -> Result<Vec<u8>, StoreError> {
    let stored = StoredRule::V1(RuleV1 {
        name: r.name.clone(),
        severity: r.severity.clone(),
        target: r.target.clone(),
        condition: r.condition.clone(),
        clear: r.clear.clone(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    });
    encode(super::rule_at(&r.id), &stored)
}

pub(crate) fn decode_rule(at: Location<'_>, bytes: &[u8]) -> Result<AlarmRule, StoreError> {
    match decode(at, bytes)? {
        StoredRule::V1(v) => Ok(AlarmRule {
            id: at.key.to_owned(),
            name: v.name,
            severity: v.severity,
            target: v.target,
            condition: v.condition,
            clear: v.clear,
            created_at_ms: v.created_at_ms,
            updated_at_ms: v.updated_at_ms,
        }),
    }
}

pub(crate) fn encode_alarm(a: &AlarmRecord) -> Result<Vec<u8>, StoreError> {
    let stored = StoredAlarm::V1(AlarmV1 {
        rule_id: a.rule_id.clone(),
        name: a.name.clone(),
        severity: a.severity.clone(),
        device_id: a.device_id.clone(),
        active: a.active,
        raised_at_ms: a.raised_at_ms,
        cleared_at_ms: a.cleared_at_ms,
        acknowledged_at_ms: a.acknowledged_at_ms,
        value: a.value.clone(),
        source: a.source,
    });
    let key = a.seq.to_string();
    encode(alarm_at(&key), &stored)
}

pub(crate) fn decode_alarm(seq: u64, bytes: &[u8]) -> Result<AlarmRecord, StoreError> {
    let key = seq.to_string();
    match decode(alarm_at(&key), bytes)? {
        StoredAlarm::V1(v) => Ok(AlarmRecord {
            seq,
            rule_id: v.rule_id,
            name: v.name,
            severity: v.severity,
            device_id: v.device_id,
            active: v.active,
            raised_at_ms: v.raised_at_ms,
            cleared_at_ms: v.cleared_at_ms,
            acknowledged_at_ms: v.acknowledged_at_ms,
            value: v.value,
            source: v.source,
        }),
    }
}

pub(crate) fn encode_state(key: &str, device: &str, s: &AlarmState) -> Result<Vec<u8>, StoreError> {
    let stored = StoredState::V1 {
        alarm: s.alarm,
        since_ms: s.since_ms,
    };
    let at = format!("{key}/{device}");
    encode(state_at(&at), &stored)
}

pub(crate) fn decode_state(
    key: &str,
    device: &str,
    bytes: &[u8],
) -> Result<AlarmState, StoreError> {
    let at = format!("{key}/{device}");
    match decode(state_at(&at), bytes)? {
        StoredState::V1 { alarm, since_ms } => Ok(AlarmState { alarm, since_ms }),
    }
}

fn alarm_at(key: &str) -> Location<'_> {
    Location {
        table: ALARMS_TABLE,
        key,
    }
}

fn state_at(key: &str) -> Location<'_> {
    Location {
        table: ALARM_STATE_TABLE,
        key,
    }
}
