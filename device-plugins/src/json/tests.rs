//! Tests for the `json` plugin: exact wire bytes, named errors, and no-panic proptests.

use super::*;
use crate::plugin::PendingCommand;
use proptest::prelude::*;
use serde_json::json;

const NOW: u64 = 1_709_296_496_000; // 2024-03-01T12:34:56Z

fn telemetry(payload: &str) -> Result<Telemetry, PluginError> {
    JsonPlugin.decode_telemetry(payload.as_bytes(), NOW)
}

#[test]
fn telemetry_values_and_flattened_numbers() {
    let payload = r#"{"cpu":40,"memory":512.5,"disk":{"free":3,"mount":"/","x":{"y":-1}},"#;
    let t = telemetry(&format!(r#"{payload}"ok":true,"tags":[1,2]}}"#)).expect("valid");
    assert_eq!(t.ts_ms, NOW);
    assert_eq!(t.values.len(), 5);
    assert_eq!(
        t.value("disk"),
        Some(json!({"free":3,"mount":"/","x":{"y":-1}}))
    );
    // Kept as sent, not re-encoded.
    assert_eq!(t.values["tags"].get(), "[1,2]");
    assert_eq!(
        t.numeric(),
        vec![
            ("cpu".to_owned(), 40.0),
            ("disk.free".to_owned(), 3.0),
            ("disk.x.y".to_owned(), -1.0),
            ("memory".to_owned(), 512.5),
        ]
    );
}

#[test]
fn telemetry_keys_sorted_once_each_last_value_wins() {
    let t = telemetry(r#"{"b":1,"a":{"x":1},"b":2,"c":"s","a":3}"#).expect("valid");
    let keys: Vec<&str> = t.values.keys().map(String::as_str).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(t.value("a"), Some(json!(3)));
    assert_eq!(t.value("b"), Some(json!(2)));
    // The same as a serde_json object would keep.
    let obj: Value = serde_json::from_str(r#"{"b":1,"a":{"x":1},"b":2,"c":"s","a":3}"#).unwrap();
    assert_eq!(obj["a"], json!(3));
}

#[test]
fn telemetry_ts_is_used_when_sane_and_never_a_value() {
    let cases: &[(&str, u64)] = &[
        (r#"{"ts":"2024-03-01T12:00:00Z","a":1}"#, NOW - 2_096_000),
        (
            r#"{"ts":"2024-03-01T14:00:00+02:00","a":1}"#,
            NOW - 2_096_000,
        ),
        (r#"{"ts":1709294400000,"a":1}"#, NOW - 2_096_000),
        (r#"{"ts":1709294400000.9,"a":1}"#, NOW - 2_096_000),
        (r#"{"ts":1709296796000,"a":1}"#, NOW + 300_000),
        (r#"{"ts":1677760496000,"a":1}"#, NOW - MAX_TS_AGE_MS),
    ];
    for (payload, want) in cases {
        let t = telemetry(payload).expect("valid");
        assert_eq!(t.ts_ms, *want, "{payload}");
        assert!(!t.values.contains_key("ts"));
        assert_eq!(t.numeric(), vec![("a".to_owned(), 1.0)]);
    }
}

#[test]
fn telemetry_insane_or_malformed_ts_falls_back_to_received() {
    let cases = [
        r#"{"ts":1709296796001}"#,
        r#"{"ts":1677760495999}"#,
        r#"{"ts":1709296496}"#,
        r#"{"ts":-5}"#,
        r#"{"ts":1e300}"#,
        r#"{"ts":"yesterday"}"#,
        r#"{"ts":"2024-03-01 12:00:00Z"}"#,
        r#"{"ts":"1969-12-31T23:59:59Z"}"#,
        r#"{"ts":true}"#,
        r#"{"ts":null}"#,
        r#"{"ts":{"ms":1}}"#,
    ];
    for payload in cases {
        let t = telemetry(payload).expect("valid");
        assert_eq!(t.ts_ms, NOW, "{payload}");
        assert!(t.values.is_empty() && t.numeric().is_empty());
    }
}

#[test]
fn telemetry_near_epoch_does_not_underflow() {
    let t = JsonPlugin
        .decode_telemetry(br#"{"ts":0}"#, 1000)
        .expect("valid");
    assert_eq!(t.ts_ms, 0);
    let t = JsonPlugin
        .decode_telemetry(br#"{"ts":18446744073709551615}"#, u64::MAX)
        .expect("valid");
    assert_eq!(t.ts_ms, u64::MAX);
}

#[test]
fn telemetry_rejects_non_objects() {
    assert!(matches!(
        telemetry("not json"),
        Err(PluginError::NotJson(_))
    ));
    assert!(matches!(
        JsonPlugin.decode_telemetry(b"{\"a\":\xff}", NOW),
        Err(PluginError::NotJson(_))
    ));
    assert_eq!(telemetry("[1,2]"), Err(PluginError::NotAnObject));
    assert_eq!(telemetry("42"), Err(PluginError::NotAnObject));
    assert_eq!(telemetry("{}").map(|t| t.values.len()), Ok(0));
}

#[test]
fn encode_command_exact_bytes() {
    let params = json!({"delay":5});
    let cmd = Command {
        command_id: "c-1",
        kind: "RELOAD",
        params: &params,
    };
    let bytes = JsonPlugin.encode_command(&cmd).expect("valid");
    assert_eq!(
        bytes,
        br#"{"type":"RELOAD","commandId":"c-1","params":{"delay":5}}"#
    );
    let null = Value::Null;
    let cmd = Command {
        command_id: "c-2",
        kind: "PING",
        params: &null,
    };
    let bytes = JsonPlugin.encode_command(&cmd).expect("valid");
    assert_eq!(bytes, br#"{"type":"PING","commandId":"c-2","params":{}}"#);
}

#[test]
fn encode_command_checks_input() {
    let obj = json!({});
    let arr = json!([1]);
    let cases = [
        (
            Command {
                command_id: "",
                kind: "X",
                params: &obj,
            },
            PluginError::InvalidField {
                field: "commandId",
                reason: "empty",
            },
        ),
        (
            Command {
                command_id: "c",
                kind: "",
                params: &obj,
            },
            PluginError::InvalidField {
                field: "type",
                reason: "empty",
            },
        ),
        (
            Command {
                command_id: "c",
                kind: "X",
                params: &arr,
            },
            PluginError::WrongType {
                field: "params",
                expected: "an object",
            },
        ),
    ];
    for (cmd, want) in cases {
        assert_eq!(JsonPlugin.encode_command(&cmd), Err(want));
    }
}

#[test]
fn decode_response_success_and_failure() {
    let ok = JsonPlugin.decode_response(br#"{"commandId":"c1","success":true,"result":{"n":1}}"#);
    assert_eq!(
        ok,
        Ok(CommandResponse {
            command_id: Some("c1".into()),
            success: true,
            result: Some(json!({"n":1})),
            error: None
        })
    );
    let failed = JsonPlugin
        .decode_response(br#"{"commandId":"c1","success":false,"error":"boom","result":null}"#);
    assert_eq!(
        failed,
        Ok(CommandResponse {
            command_id: Some("c1".into()),
            success: false,
            result: None,
            error: Some("boom".into())
        })
    );
    let anonymous = JsonPlugin
        .decode_response(br#"{"success":true}"#)
        .expect("valid");
    assert_eq!(anonymous.command_id, None);
}

#[test]
fn decode_response_names_the_problem() {
    let cases: &[(&str, PluginError)] = &[
        (
            r#"{"commandId":"c1"}"#,
            PluginError::MissingField("success"),
        ),
        (
            r#"{"commandId":"c1","success":null}"#,
            PluginError::MissingField("success"),
        ),
        (
            r#"{"commandId":"c1","success":"yes"}"#,
            PluginError::WrongType {
                field: "success",
                expected: "a boolean",
            },
        ),
        (
            r#"{"commandId":7,"success":true}"#,
            PluginError::WrongType {
                field: "commandId",
                expected: "a string",
            },
        ),
        (
            r#"{"commandId":"","success":true}"#,
            PluginError::InvalidField {
                field: "commandId",
                reason: "empty",
            },
        ),
        (
            r#"{"success":false,"error":{"code":1}}"#,
            PluginError::WrongType {
                field: "error",
                expected: "a string",
            },
        ),
        ("[]", PluginError::NotAnObject),
    ];
    for (payload, want) in cases {
        assert_eq!(
            JsonPlugin.decode_response(payload.as_bytes()).as_ref(),
            Err(want),
            "{payload}"
        );
    }
}

#[test]
fn match_response_by_id_then_oldest() {
    let pending = [
        PendingCommand {
            command_id: "new",
            kind: "A",
            created_at_ms: 20,
        },
        PendingCommand {
            command_id: "old",
            kind: "B",
            created_at_ms: 10,
        },
    ];
    let by_id = JsonPlugin
        .decode_response(br#"{"commandId":"new","success":true}"#)
        .expect("valid");
    assert_eq!(JsonPlugin.match_response(&by_id, &pending), Some(0));
    let unknown = JsonPlugin
        .decode_response(br#"{"commandId":"gone","success":true}"#)
        .expect("valid");
    assert_eq!(JsonPlugin.match_response(&unknown, &pending), None);
    let no_id = JsonPlugin
        .decode_response(br#"{"success":true}"#)
        .expect("valid");
    assert_eq!(JsonPlugin.match_response(&no_id, &pending), Some(1));
    assert_eq!(JsonPlugin.match_response(&no_id, &[]), None);
}

#[test]
fn decode_status_fields_and_raw() {
    let payload =
        br#"{"state":"online","version":"1.0.0","ip":"10.0.0.2","configVersion":3,"extra":[1]}"#;
    let s = JsonPlugin.decode_status(payload).expect("valid");
    assert_eq!(s.state.as_deref(), Some("online"));
    assert_eq!(s.version.as_deref(), Some("1.0.0"));
    assert_eq!(s.ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(s.config_version, Some(3));
    assert_eq!(
        s.raw,
        serde_json::from_slice::<Value>(payload).expect("json")
    );
    let sparse = JsonPlugin
        .decode_status(br#"{"state":null}"#)
        .expect("valid");
    assert_eq!((sparse.state, sparse.config_version), (None, None));
}

#[test]
fn decode_status_checks_types() {
    let cases: &[(&str, PluginError)] = &[
        (
            r#"{"state":1}"#,
            PluginError::WrongType {
                field: "state",
                expected: "a string",
            },
        ),
        (
            r#"{"version":1.2}"#,
            PluginError::WrongType {
                field: "version",
                expected: "a string",
            },
        ),
        (
            r#"{"ip":[]}"#,
            PluginError::WrongType {
                field: "ip",
                expected: "a string",
            },
        ),
        (
            r#"{"configVersion":-1}"#,
            PluginError::WrongType {
                field: "configVersion",
                expected: "a non-negative integer",
            },
        ),
        (
            r#"{"configVersion":"3"}"#,
            PluginError::WrongType {
                field: "configVersion",
                expected: "a non-negative integer",
            },
        ),
        ("\"online\"", PluginError::NotAnObject),
    ];
    for (payload, want) in cases {
        assert_eq!(
            JsonPlugin.decode_status(payload.as_bytes()).as_ref(),
            Err(want),
            "{payload}"
        );
    }
}

#[test]
fn encode_config_exact_bytes() {
    let bytes = JsonPlugin
        .encode_config(3, &json!({"brightness":80}))
        .expect("valid");
    assert_eq!(bytes, br#"{"version":3,"config":{"brightness":80}}"#);
    assert_eq!(
        JsonPlugin.encode_config(3, &json!([1])),
        Err(PluginError::WrongType {
            field: "config",
            expected: "an object"
        })
    );
}

#[test]
fn decode_event_needs_a_type() {
    let e = JsonPlugin
        .decode_event(br#"{"type":"door_open","door":2}"#)
        .expect("valid");
    assert_eq!(e.kind, "door_open");
    assert_eq!(e.raw, json!({"type":"door_open","door":2}));
    let cases: &[(&str, PluginError)] = &[
        (r#"{"door":2}"#, PluginError::MissingField("type")),
        (r#"{"type":null}"#, PluginError::MissingField("type")),
        (
            r#"{"type":""}"#,
            PluginError::InvalidField {
                field: "type",
                reason: "empty",
            },
        ),
        (
            r#"{"type":5}"#,
            PluginError::WrongType {
                field: "type",
                expected: "a string",
            },
        ),
    ];
    for (payload, want) in cases {
        assert_eq!(
            JsonPlugin.decode_event(payload.as_bytes()).as_ref(),
            Err(want),
            "{payload}"
        );
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    assert!(matches!(telemetry(&deep), Err(PluginError::NotJson(_))));
}

fn decode_all(bytes: &[u8]) {
    let p = JsonPlugin;
    let _ = p.decode_telemetry(bytes, NOW);
    let _ = p.decode_response(bytes);
    let _ = p.decode_status(bytes);
    let _ = p.decode_event(bytes);
}

proptest! {
    #[test]
    fn decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_jsonish_text(s in r#"[{}\[\]":,0-9a-zA-Z.\-+eE ]{0,64}"#) {
        decode_all(s.as_bytes());
    }

    #[test]
    fn decoders_never_panic_on_objects(
        key in "(ts|commandId|success|error|result|type|state|configVersion|[a-z]{1,3})",
        value in prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            "\"[ -~]{0,30}\"",
        ],
    ) {
        decode_all(format!("{{\"{key}\":{value},\"success\":true}}").as_bytes());
    }

    #[test]
    fn telemetry_ts_is_within_window_or_received(ts in any::<i64>(), now in any::<u64>()) {
        let payload = format!("{{\"ts\":{ts}}}");
        let t = JsonPlugin.decode_telemetry(payload.as_bytes(), now).expect("valid object");
        prop_assert!(t.ts_ms == now || is_sane_ts(t.ts_ms, now));
    }

    #[test]
    fn command_round_trips_through_json(
        id in "[ -~]{1,20}",
        kind in "[A-Z_]{1,10}",
        n in any::<i64>(),
    ) {
        let params = json!({"n": n});
        let cmd = Command { command_id: &id, kind: &kind, params: &params };
        let bytes = JsonPlugin.encode_command(&cmd).expect("valid");
        let back: Value = serde_json::from_slice(&bytes).expect("json");
        prop_assert_eq!(back, json!({"type": kind, "commandId": id, "params": params}));
    }
}

/// `check_telemetry` refuses what `decode_telemetry` refuses, with the same error, and
/// finds the same timestamp.
fn check_matches_decode(payload: &[u8], now: u64) {
    let checked = JsonPlugin
        .check_telemetry(payload, now)
        .expect("the json plugin stores telemetry as sent");
    match (checked, JsonPlugin.decode_telemetry(payload, now)) {
        (Ok(raw), Ok(t)) => assert_eq!(raw.ts_ms, t.ts_ms, "{payload:?}"),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("{payload:?}: check {a:?}, decode {b:?}"),
    }
}

#[test]
fn check_telemetry_reads_ts_as_decode_does() {
    for payload in [
        r#"{"ts":"2024-03-01T12:00:00Z","a":1}"#,
        r#"{"ts":"2024-03-01T14:00:00+02:00"}"#,
        r#"{"ts":"2024-03-01T12:00:00\u005a"}"#,
        r#"{"ts":1709294400000,"a":1}"#,
        r#"{"ts":1709294400000.9}"#,
        r#"{"ts":17092944e5}"#,
        r#"{"ts":99999999999999999999}"#,
        r#"{"ts":-1709294400000}"#,
        r#"{"ts":1,"ts":1709294400000}"#,
        r#"{"\u0074s":1709294400000}"#,
        r#"{"ts":null}"#,
        r#"{"ts":"yesterday"}"#,
        r#"{"a":1e400}"#,
        r#"{"a":"\ud800"}"#,
        "[1]",
        "{",
    ] {
        check_matches_decode(payload.as_bytes(), NOW);
    }
    // Values serde_json cannot read back are refused at the door, not stored.
    assert!(matches!(
        telemetry(r#"{"a":1e400}"#),
        Err(PluginError::NotJson(_))
    ));
    assert!(matches!(
        telemetry(r#"{"a":"\ud800"}"#),
        Err(PluginError::NotJson(_))
    ));
}

proptest! {
    #[test]
    fn check_telemetry_agrees_with_decode(
        s in r#"\{("ts":)?("[0-9TZ:.+-]{0,28}"|-?[0-9]{1,16}(\.[0-9])?|null|\{\})?(,"a":[0-9])?\}?"#,
        now in prop_oneof![Just(NOW), any::<u64>()],
    ) {
        check_matches_decode(s.as_bytes(), now);
    }
}

/// A JSON value: nested arrays and objects of scalars.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        // Any finite float: with `float_roundtrip` serde_json reads back what it wrote.
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// What a device sends, written by serde_json, decodes to exactly what was written.
    #[test]
    fn device_payloads_round_trip(
        command_id in prop::option::of("\\PC{1,12}"),
        success in any::<bool>(),
        result in any_json(),
        error in prop::option::of("\\PC{0,12}"),
        state in prop::option::of("\\PC{0,8}"),
        config_version in prop::option::of(any::<u64>()),
        kind in "\\PC{1,8}",
        values in prop::collection::btree_map(
            "[a-z]{1,6}".prop_filter("`ts` is the point's time, not a value", |k| k != "ts"),
            any_json(),
            0..4,
        ),
        ts in NOW - 86_400_000..NOW,
    ) {
        let mut resp = json!({"success": success, "result": result, "error": error});
        if let Some(id) = &command_id {
            resp["commandId"] = json!(id);
        }
        let decoded = JsonPlugin.decode_response(&serde_json::to_vec(&resp).unwrap());
        let want = CommandResponse {
            command_id,
            success,
            result: Some(result.clone()).filter(|r| !r.is_null()),
            error,
        };
        prop_assert_eq!(decoded, Ok(want));

        let status = json!({"state": state, "configVersion": config_version, "extra": result});
        let decoded = JsonPlugin.decode_status(&serde_json::to_vec(&status).unwrap());
        let want = DeviceStatus {
            state,
            version: None,
            ip: None,
            config_version,
            raw: status,
        };
        prop_assert_eq!(decoded, Ok(want));

        let event = json!({"type": kind, "detail": result});
        let decoded = JsonPlugin.decode_event(&serde_json::to_vec(&event).unwrap());
        prop_assert_eq!(decoded, Ok(DeviceEvent { kind, raw: event }));

        let mut object: Map<String, Value> = values.clone().into_iter().collect();
        object.insert("ts".into(), json!(ts));
        let t = JsonPlugin
            .decode_telemetry(&serde_json::to_vec(&object).unwrap(), NOW)
            .unwrap();
        prop_assert_eq!(t.ts_ms, ts);
        let back: BTreeMap<String, Value> = t.values.keys().map(|k| (k.clone(), t.value(k).unwrap())).collect();
        prop_assert_eq!(back, values);
    }
}

/// Found by the `device_json` fuzz target (these are its crashing bytes): without
/// serde_json's `float_roundtrip` a long number was not read as the nearest `f64`, so a
/// status written back as JSON (as the store keeps `reported_status`) read as another
/// number.
#[test]
fn status_numbers_are_read_exactly_and_survive_being_written_back() {
    let payload =
        br#"{"t/s":17092943300090492390000,"cpu":3.72977777777777774390005,"mok":true,"note":null}"#;
    let status = JsonPlugin.decode_status(payload).expect("valid status");
    // The nearest f64s, as the standard library's correctly rounded parser finds them.
    let nearest = |text: &str| text.parse::<f64>().ok();
    assert_eq!(
        status.raw["t/s"].as_f64(),
        nearest("17092943300090492390000")
    );
    assert_eq!(
        status.raw["cpu"].as_f64(),
        nearest("3.72977777777777774390005")
    );
    let written = serde_json::to_vec(&status.raw).unwrap();
    assert_eq!(JsonPlugin.decode_status(&written), Ok(status));
}
