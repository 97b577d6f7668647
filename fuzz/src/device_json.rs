//! The json plugin's decoders, on the payloads a device publishes: telemetry (both
//! the stored-as-sent check the broker runs first and the full decode), command
//! responses, status and events.
//!
//! Input: the payload, as is (the seed corpus is plain device JSON).
//!
//! Invariants: `check_telemetry` refuses exactly what `decode_telemetry` refuses and
//! finds the same timestamp; what it accepts, the store reads back (`object_values`)
//! as the very values `decode_telemetry` found, each of which parses; a decoded
//! response, status or event encodes to JSON that decodes back to the same value.

use fleetmq_device_plugins::{DevicePlugin, JsonPlugin, PendingCommand};
use fleetmq_storage::fuzz::object_values;
use serde_json::{json, Map, Value};

/// When the broker received every payload: 2024-03-01T12:00:00Z.
const NOW: u64 = 1_709_294_400_000;
/// How far a device `ts` may be from `NOW` and still be believed (the plugin's window).
const WINDOW: std::ops::RangeInclusive<u64> = NOW - 365 * 86_400_000..=NOW + 5 * 60_000;

/// Runs one input; panics when an invariant fails.
pub fn check(payload: &[u8]) {
    telemetry(payload);
    response(payload);
    status(payload);
    event(payload);
}

fn telemetry(payload: &[u8]) {
    let plugin = JsonPlugin;
    let checked = plugin
        .check_telemetry(payload, NOW)
        .expect("the json plugin stores telemetry as sent");
    let decoded = plugin.decode_telemetry(payload, NOW);
    let t = match (checked, decoded) {
        (Ok(raw), Ok(t)) => {
            assert_eq!(raw.ts_ms, t.ts_ms, "check and decode read different ts");
            t
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "check and decode refuse differently");
            return;
        }
        (a, b) => panic!("check_telemetry gave {a:?}, decode_telemetry {b:?}"),
    };
    assert!(
        t.ts_ms == NOW || WINDOW.contains(&t.ts_ms),
        "ts {}",
        t.ts_ms
    );
    assert!(!t.values.contains_key("ts"), "ts kept as a value");
    for key in t.values.keys() {
        assert!(
            t.value(key).is_some(),
            "the value of {key:?} does not parse"
        );
    }
    let _ = t.numeric();
    // The store keeps the payload as sent and reads it back with `object_values`.
    let stored = object_values(payload).expect("the store cannot read an accepted payload");
    let plugin_values: Vec<(&str, &str)> = t
        .values
        .iter()
        .map(|(k, v)| (k.as_str(), v.get()))
        .collect();
    let store_values: Vec<(&str, &str)> = stored
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(store_values, plugin_values, "the store reads other values");
}

fn response(payload: &[u8]) {
    let Ok(resp) = JsonPlugin.decode_response(payload) else {
        return;
    };
    assert_ne!(
        resp.command_id.as_deref(),
        Some(""),
        "empty commandId accepted"
    );
    assert_ne!(resp.result, Some(Value::Null), "null result kept");
    let mut obj = Map::new();
    obj.insert("success".into(), json!(resp.success));
    if let Some(id) = &resp.command_id {
        obj.insert("commandId".into(), json!(id));
    }
    if let Some(result) = &resp.result {
        obj.insert("result".into(), result.clone());
    }
    if let Some(error) = &resp.error {
        obj.insert("error".into(), json!(error));
    }
    let again = JsonPlugin.decode_response(&serde_json::to_vec(&obj).unwrap());
    assert_eq!(again.as_ref(), Ok(&resp), "response does not round-trip");
    // A response with an id answers the pending command with that id, and only it.
    let pending = [
        PendingCommand {
            command_id: "c-1",
            kind: "RELOAD",
            created_at_ms: 2,
        },
        PendingCommand {
            command_id: "c-2",
            kind: "PING",
            created_at_ms: 1,
        },
    ];
    let matched = JsonPlugin.match_response(&resp, &pending);
    let want = match resp.command_id.as_deref() {
        Some(id) => pending.iter().position(|p| p.command_id == id),
        None => Some(1),
    };
    assert_eq!(matched, want);
}

fn status(payload: &[u8]) {
    let Ok(status) = JsonPlugin.decode_status(payload) else {
        return;
    };
    let Value::Object(raw) = &status.raw else {
        panic!("status kept a non-object: {:?}", status.raw);
    };
    assert_eq!(
        status.state.as_deref(),
        raw.get("state").and_then(Value::as_str)
    );
    assert_eq!(
        status.config_version,
        raw.get("configVersion").and_then(Value::as_u64)
    );
    let again = JsonPlugin.decode_status(&serde_json::to_vec(&status.raw).unwrap());
    assert_eq!(again.as_ref(), Ok(&status), "status does not round-trip");
}

fn event(payload: &[u8]) {
    let Ok(event) = JsonPlugin.decode_event(payload) else {
        return;
    };
    assert!(!event.kind.is_empty(), "event without a type accepted");
    assert_eq!(
        event.raw.get("type").and_then(Value::as_str),
        Some(event.kind.as_str())
    );
    let again = JsonPlugin.decode_event(&serde_json::to_vec(&event.raw).unwrap());
    assert_eq!(again.as_ref(), Ok(&event), "event does not round-trip");
}
