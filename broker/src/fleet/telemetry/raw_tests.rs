//! Telemetry stored as sent: what a query and `latest` read back is what serde_json
//! makes of the payload; a plugin that decodes binary telemetry still stores values;
//! what serde_json could not read back is refused at the door.

use fleetmq_device_plugins::{Command, CommandResponse, Telemetry as Decoded};
use fleetmq_storage::now_ms;
use serde_json::json;
use serde_json::value::RawValue;

use super::tests::{id, json, quiet, Harness};
use super::*;

/// The payload's values as serde_json reads them: every member but `ts`, the last of
/// a repeated key.
fn values_of(payload: &str) -> Map<String, Value> {
    let mut obj: Map<String, Value> = serde_json::from_str(payload).unwrap();
    obj.remove("ts");
    obj
}

#[tokio::test]
async fn payloads_are_stored_as_sent_and_read_back_as_values() {
    let h = Harness::start(quiet());
    let now = now_ms();
    let payloads = [
        r#"{"cpu":37.5,"mem":612,"temp":48.25,"uptime":86400,"rssi":-67}"#,
        " {\n \"a\" : [1, {\"b\": null}] ,\t\"s\":\"\\u00e9\\n\\\"q\\\"\" } ",
        r#"{"k":1,"k":{"x":true},"ts":"not a time"}"#,
        r#"{"\u0063pu":1e-7,"big":123456789012345678901234567890}"#,
        r#"{}"#,
    ];
    for (i, p) in payloads.iter().enumerate() {
        h.offer("d", p, now - 10_000 + i as u64).unwrap();
    }
    h.t.flush().await;
    let page =
        h.t.query(&id("d"), TelemetryQuery::default())
            .await
            .unwrap();
    let got: Vec<Map<String, Value>> = page.items.into_iter().map(|p| p.values).collect();
    let want: Vec<Map<String, Value>> = payloads.iter().rev().map(|p| values_of(p)).collect();
    assert_eq!(got, want);
    let l = h.t.latest(&id("d")).await.unwrap();
    assert_eq!(l["cpu"].value, json!(1e-7));
    assert_eq!(l["k"].value, json!({"x": true}));
    assert_eq!(l["s"].value, json!("é\n\"q\""));
    assert!(!l.contains_key("ts"));
    h.stop().await;
}

#[tokio::test]
async fn values_serde_json_cannot_read_back_are_refused() {
    let h = Harness::start(quiet());
    for payload in [r#"{"a":1e400}"#, r#"{"a":"\ud800"}"#, r#"{"a":1,}"#] {
        let err = h.offer("d", payload, now_ms()).unwrap_err();
        assert!(
            matches!(err, Rejected::NotJson { .. }),
            "{payload}: {err:?}"
        );
    }
    h.t.flush().await;
    assert_eq!((h.t.stats().rejected, h.t.stats().stored), (3, 0));
    h.stop().await;
}

/// A plugin for a binary format: each byte `b` at position `i` is the value `b` of
/// key `k{i}`; byte 0 names a key that needs escaping.
struct Bytes;

impl DevicePlugin for Bytes {
    fn name(&self) -> &'static str {
        "bytes"
    }
    fn decode_telemetry(&self, payload: &[u8], at: u64) -> Result<Decoded, PluginError> {
        if payload.is_empty() {
            return Err(PluginError::NotAnObject);
        }
        let values = payload
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let key = if *b == 0 {
                    "q\"uote".to_owned()
                } else {
                    format!("k{i}")
                };
                (key, RawValue::from_string(b.to_string()).unwrap())
            })
            .collect();
        Ok(Decoded { ts_ms: at, values })
    }
    fn encode_command(&self, _: &Command<'_>) -> Result<Vec<u8>, PluginError> {
        Ok(Vec::new())
    }
    fn decode_response(&self, _: &[u8]) -> Result<CommandResponse, PluginError> {
        Err(PluginError::NotAnObject)
    }
}

#[tokio::test]
async fn a_plugin_that_decodes_values_is_stored_as_values() {
    let h = Harness::start(quiet());
    let now = now_ms();
    h.t.offer(&id("d"), &Bytes, &[7, 0, 9], now - 1).unwrap();
    h.t.offer(&id("d"), &Bytes, &[5], now).unwrap();
    assert!(h.t.offer(&id("d"), &Bytes, &[], now).is_err());
    // The json plugin's payloads and the other plugin's in one history.
    h.t.offer(&id("d"), json().as_ref(), br#"{"k0":1}"#, now - 2)
        .unwrap();
    h.t.flush().await;
    let page =
        h.t.query(&id("d"), TelemetryQuery::default())
            .await
            .unwrap();
    let got: Vec<Value> = page
        .items
        .into_iter()
        .map(|p| Value::Object(p.values))
        .collect();
    assert_eq!(
        got,
        [
            json!({"k0": 5}),
            json!({"k0": 7, "q\"uote": 0, "k2": 9}),
            json!({"k0": 1}),
        ]
    );
    let l = h.t.latest(&id("d")).await.unwrap();
    assert_eq!(l["k0"].value, json!(5));
    assert_eq!(l["q\"uote"].value, json!(0));
    h.stop().await;
}
