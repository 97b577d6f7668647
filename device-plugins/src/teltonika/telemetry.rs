//! A record as SPEC §10's telemetry point: `lat`, `lon` (signed degrees, raw ÷ 10^7),
//! `alt` (m), `angle` (°), `satellites`, `speed` (km/h), `priority`, `event_io` (0 when
//! none) and `io_<id>` per IO element (its unsigned value, or lowercase hex for a
//! variable-length one), at the record's own timestamp.
//!
//! Three forms of the same values: [`telemetry_values`] (ordered pairs),
//! [`record_telemetry`] (the plugin-neutral [`Telemetry`] the store takes) and
//! [`telemetry_json`] (the payload published on `device/{imei}/telemetry`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use super::avl::{AvlRecord, IoValue};
use crate::plugin::Telemetry;

/// The record's values in SPEC §10's order: the GPS keys, `priority`, `event_io`, then
/// `io_<id>` in wire order. Of an IO id repeated within the record, the last value
/// counts, at the place of the first.
pub fn telemetry_values(record: &AvlRecord) -> Vec<(String, Value)> {
    let gps = &record.gps;
    let mut values: Vec<(String, Value)> = vec![
        ("lat".into(), gps.latitude_deg().into()),
        ("lon".into(), gps.longitude_deg().into()),
        ("alt".into(), gps.altitude.into()),
        ("angle".into(), gps.angle.into()),
        ("satellites".into(), gps.satellites.into()),
        ("speed".into(), gps.speed.into()),
        ("priority".into(), record.priority.into()),
        ("event_io".into(), record.event_io.into()),
    ];
    let fixed = values.len();
    for element in &record.io {
        let key = format!("io_{}", element.id);
        let value = match &element.value {
            IoValue::U8(v) => Value::from(*v),
            IoValue::U16(v) => Value::from(*v),
            IoValue::U32(v) => Value::from(*v),
            IoValue::U64(v) => Value::from(*v),
            IoValue::Bytes(bytes) => Value::String(lower_hex(bytes)),
        };
        match values[fixed..].iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => values.push((key, value)),
        }
    }
    values
}

/// The record as a telemetry point at its own timestamp, for the store.
pub fn record_telemetry(record: &AvlRecord) -> Telemetry {
    let values: BTreeMap<_, _> = telemetry_values(record)
        .into_iter()
        .filter_map(|(key, value)| {
            // Serialising a `Value` cannot fail: its keys are strings and its numbers
            // finite.
            serde_json::value::to_raw_value(&value)
                .ok()
                .map(|raw| (key, raw))
        })
        .collect();
    Telemetry {
        ts_ms: record.timestamp_ms,
        values,
    }
}

/// The record as the JSON object published for MQTT subscribers:
/// `{"ts":<unix ms>,"lat":…,…,"io_<id>":…}`, keys in [`telemetry_values`]' order.
pub fn telemetry_json(record: &AvlRecord) -> Vec<u8> {
    let point = Point {
        ts: record.timestamp_ms,
        values: telemetry_values(record),
    };
    // As above, nothing in a `Point` can fail to serialise.
    serde_json::to_vec(&point).unwrap_or_default()
}

/// `ts` first, then the values in order (a `serde_json::Map` would sort the keys).
struct Point {
    ts: u64,
    values: Vec<(String, Value)>,
}

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.values.len() + 1))?;
        map.serialize_entry("ts", &self.ts)?;
        for (key, value) in &self.values {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn lower_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        // Writing to a `String` cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
