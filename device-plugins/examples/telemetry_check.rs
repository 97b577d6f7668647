//! What checking a telemetry payload costs: the json plugin's `check_telemetry` (its
//! one-pass scanner, `src/json/scan.rs`) against serde_json's borrowing deserializer
//! doing the same job, on realistic device payloads.
//!
//! ```sh
//! cargo run --release -p fleetmq-device-plugins --example telemetry_check [-- ROUNDS]
//! ```
//!
//! Columns, ns per payload (the best of ROUNDS batches, 200 by default, variants
//! interleaved so that a busy machine slows them alike):
//! - `plugin`: `JsonPlugin::check_telemetry`.
//! - `serde`: the same answer from serde_json ([`serde_check`]): what `Value` accepts,
//!   the same `ts` and the same shape.
//! - `ignored`: serde_json with `IgnoredAny` values and `ts` unread. Not the same
//!   answer (it takes lone surrogates and numbers beyond `f64`): how fast serde_json
//!   skips a payload.
//! - `value`: `serde_json::from_slice::<Value>`, decoding everything.

use std::fmt;
use std::hint::black_box;
use std::time::Instant;

use fleetmq_device_plugins::{rfc3339, DevicePlugin, JsonPlugin, RawTelemetry};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// When the payloads arrive: one second after their `ts`.
const RECEIVED_AT_MS: u64 = 1_795_370_532_123;

const PAYLOADS: &[(&str, &str)] = &[
    ("docs/devices.md", r#"{"cpu":40,"memory":512,"uptime":3600}"#),
    (
        "fleet bench",
        r#"{"cpu":37.5,"mem":612,"temp":48.25,"uptime":86400,"rssi":-67}"#,
    ),
    (
        "RFC 3339 ts",
        r#"{"ts":"2026-11-22T18:02:11.123Z","cpu":12.3,"uptime":3600}"#,
    ),
    (
        "unix-ms ts",
        r#"{"ts":1795370531123,"cpu":37.5,"mem":612,"temp":48.25,"uptime":86400,"rssi":-67}"#,
    ),
    (
        "sensor, nested",
        r#"{"ts":"2026-11-22T18:02:11Z","battery":{"v":3.71,"pct":82,"charging":false},"gps":{"lat":52.520008,"lon":13.404954,"alt":34.2,"fix":true},"temps":[21.5,21.7,22.0,21.9],"fw":"1.4.2-rc1","state":"ok","errors":[],"door":"closed"}"#,
    ),
    (
        "sensor, pretty",
        "{\n  \"ts\": \"2026-11-22T18:02:11Z\",\n  \"battery\": {\n    \"v\": 3.71,\n    \"pct\": 82\n  },\n  \"temps\": [\n    21.5,\n    21.7\n  ],\n  \"fw\": \"1.4.2-rc1\",\n  \"state\": \"ok\"\n}",
    ),
    (
        "escaped key",
        r#"{"ts":1795370531123,"temp\u00e9rature":21.5,"cpu":37.5}"#,
    ),
];

type Variant<'a> = (&'a str, &'a dyn Fn(&[u8]) -> u64);

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .map(|r| r.parse().expect("ROUNDS is a number"))
        .unwrap_or(200);
    let plugin = JsonPlugin;
    let variants: [Variant<'_>; 4] = [
        ("plugin", &|p| {
            let t = plugin.check_telemetry(p, RECEIVED_AT_MS).unwrap().unwrap();
            t.ts_ms ^ t.shape
        }),
        ("serde", &|p| {
            let t = serde_check(p, RECEIVED_AT_MS).unwrap();
            t.ts_ms ^ t.shape
        }),
        ("ignored", &|p| ignored_any(p).unwrap()),
        ("value", &|p| match serde_json::from_slice(p).unwrap() {
            Value::Object(obj) => obj.len() as u64,
            _ => unreachable!("an object"),
        }),
    ];
    println!(
        "{:<16} {:>5} {:>8} {:>8} {:>8} {:>8}  serde/plugin",
        "payload", "bytes", "plugin", "serde", "ignored", "value"
    );
    let mut ratios = Vec::new();
    for (name, payload) in PAYLOADS {
        let payload = payload.as_bytes();
        let checked = plugin.check_telemetry(payload, RECEIVED_AT_MS).unwrap();
        assert_eq!(checked.ok(), serde_check(payload, RECEIVED_AT_MS), "{name}");
        let mut best = [f64::MAX; 4];
        for _ in 0..rounds {
            for (slot, (_, f)) in best.iter_mut().zip(&variants) {
                *slot = slot.min(ns_per_call(payload, f));
            }
        }
        let ratio = best[1] / best[0];
        ratios.push(ratio);
        println!(
            "{name:<16} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>8.0}  {ratio:.2}x",
            payload.len(),
            best[0],
            best[1],
            best[2],
            best[3]
        );
    }
    let geomean = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    println!("serde/plugin, geometric mean: {geomean:.2}x");
}

/// One batch: ns per call.
fn ns_per_call(payload: &[u8], f: &dyn Fn(&[u8]) -> u64) -> f64 {
    const CALLS: u32 = 5_000;
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..CALLS {
        sum = sum.wrapping_add(f(black_box(payload)));
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

// ---- serde_json doing the scanner's job ------------------------------------------

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// `check_telemetry`'s answer from serde_json: one pass with keys borrowed (so the
/// shape hashes them as written) and values visited and dropped, `ts` read in place;
/// a second, cold pass for the shape when a key was written with escapes.
fn serde_check(payload: &[u8], received_at_ms: u64) -> Option<RawTelemetry> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let (ts, shape) = de.deserialize_map(Object).ok()?;
    de.end().ok()?;
    let shape = match shape {
        Some(shape) => shape,
        None => written_shape(payload)?,
    };
    let ts_ms = ts
        .filter(|&ts| {
            ts >= received_at_ms.saturating_sub(365 * 86_400_000)
                && ts <= received_at_ms.saturating_add(5 * 60_000)
        })
        .unwrap_or(received_at_ms);
    Some(RawTelemetry { ts_ms, shape })
}

fn fnv(shape: u64, name: &[u8]) -> u64 {
    (name.iter().chain(b"\"")).fold(shape, |h, &c| (h ^ u64::from(c)).wrapping_mul(FNV_PRIME))
}

/// The outer object: its last `ts` as unix ms, and its shape (`None` when a key was
/// escaped: serde_json hands over such a key decoded, not as written).
struct Object;

impl<'de> Visitor<'de> for Object {
    type Value = (Option<u64>, Option<u64>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut ts, mut shape) = (None, Some(FNV_OFFSET));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let is_ts = match key {
                Key::AsWritten(name) => {
                    shape = shape.map(|h| fnv(h, name.as_bytes()));
                    name == "ts"
                }
                Key::Escaped { is_ts } => {
                    shape = None;
                    is_ts
                }
            };
            if is_ts {
                ts = map.next_value_seed(Ts)?;
            } else {
                map.next_value::<Checked>()?;
            }
        }
        Ok((ts, shape))
    }
}

/// A top-level key: borrowed from the payload, or decoded from escapes.
enum Key<'a> {
    AsWritten(&'a str),
    Escaped { is_ts: bool },
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Key<'de>, E> {
        Ok(Key::AsWritten(name))
    }
    fn visit_str<E>(self, name: &str) -> Result<Key<'de>, E> {
        Ok(Key::Escaped {
            is_ts: name == "ts",
        })
    }
}

/// The shape of a payload already checked, from its keys as written.
#[cold]
fn written_shape(payload: &[u8]) -> Option<u64> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut shape = FNV_OFFSET;
            while let Some(key) = map.next_key::<&'de RawValue>()? {
                let quoted = key.get().as_bytes();
                shape = fnv(shape, &quoted[1..quoted.len() - 1]);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(shape)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    de.deserialize_map(Keys).ok()
}

/// Any value, checked as `Value` checks it (strings decoded, numbers within `f64`),
/// and dropped.
struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(self)
    }
}

/// A `ts` value as unix ms, read as the plugin reads a `Value` (an RFC 3339 string, a
/// non-negative number); any other value is checked and read as none.
struct Ts;

impl<'de> DeserializeSeed<'de> for Ts {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Ts {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(n).ok())
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        // As `device_ts_ms`: float ms are taken, `as` saturates.
        Ok((f.is_finite() && f >= 0.0).then_some(f as u64))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(rfc3339::parse(s).ok().and_then(|ms| u64::try_from(ms).ok()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Checked.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Checked.visit_map(map).map(|_| None)
    }
}

/// Skipping with `IgnoredAny`: keys borrowed (escaped ones left out of the shape),
/// values unchecked, `ts` not read.
fn ignored_any(payload: &[u8]) -> Option<u64> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut shape = FNV_OFFSET;
            while let Some(key) = map.next_key::<Key<'de>>()? {
                if let Key::AsWritten(name) = key {
                    shape = fnv(shape, name.as_bytes());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(shape)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let shape = de.deserialize_map(Keys).ok()?;
    de.end().ok()?;
    Some(shape)
}
