//! What checking a telemetry payload costs: the json plugin's `check_telemetry`
//! (`src/json/check.rs`, serde_json's borrowing deserializer) on realistic device
//! payloads, against serde_json skipping them with `IgnoredAny` and decoding them.
//!
//! ```sh
//! cargo run --release -p fleetmq-device-plugins --example telemetry_check [-- ROUNDS]
//! ```
//!
//! Columns, ns per payload (the best of ROUNDS batches, 200 by default, variants
//! interleaved so that a busy machine slows them alike):
//! - `plugin`: `JsonPlugin::check_telemetry`.
//! - `ignored`: serde_json with `IgnoredAny` values and `ts` unread. Not the same
//!   answer (it takes lone surrogates and numbers beyond `f64`): how fast serde_json
//!   skips a payload.
//! - `value`: `serde_json::from_slice::<Value>`, decoding everything.
//!
//! At `7bdf8a3` this example also timed the hand-written scanner `check_telemetry` had
//! before; see that commit and `src/json/check.rs` for the numbers.

use std::fmt;
use std::hint::black_box;
use std::time::Instant;

use fleetmq_device_plugins::{DevicePlugin, JsonPlugin};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
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
    let variants: [Variant<'_>; 3] = [
        ("plugin", &|p| {
            let t = plugin.check_telemetry(p, RECEIVED_AT_MS).unwrap().unwrap();
            t.ts_ms ^ t.shape
        }),
        ("ignored", &|p| ignored_any(p).unwrap()),
        ("value", &|p| match serde_json::from_slice(p).unwrap() {
            Value::Object(obj) => obj.len() as u64,
            _ => unreachable!("an object"),
        }),
    ];
    println!(
        "{:<16} {:>5} {:>8} {:>8} {:>8}",
        "payload", "bytes", "plugin", "ignored", "value"
    );
    for (name, payload) in PAYLOADS {
        let payload = payload.as_bytes();
        let mut best = [f64::MAX; 3];
        for _ in 0..rounds {
            for (slot, (_, f)) in best.iter_mut().zip(&variants) {
                *slot = slot.min(ns_per_call(payload, f));
            }
        }
        println!(
            "{name:<16} {:>5} {:>8.0} {:>8.0} {:>8.0}",
            payload.len(),
            best[0],
            best[1],
            best[2]
        );
    }
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

/// Skipping with `IgnoredAny`: keys borrowed raw and hashed, values unchecked, `ts`
/// not read.
fn ignored_any(payload: &[u8]) -> Option<u64> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut shape = 0xcbf2_9ce4_8422_2325;
            while let Some(key) = map.next_key::<&'de RawValue>()? {
                shape = (key.get().bytes()).fold(shape, |h, c| {
                    (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
                });
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
