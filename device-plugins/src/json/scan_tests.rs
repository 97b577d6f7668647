//! The scanner against serde_json: it must accept exactly the payloads that
//! `serde_json::from_slice::<Value>` reads as an object, and find the same `ts`.

use proptest::prelude::*;
use serde_json::Value;

use super::{object_members, scan_object};

/// serde_json's verdict: the payload is an object.
fn serde_object(payload: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(obj)) => Some(obj),
        _ => None,
    }
}

/// Both agree on `payload`; when it is an object, the scanner's `ts` text is the
/// value serde_json kept for `ts`.
fn agree(payload: &[u8]) {
    let scanned = scan_object(payload);
    let serde = serde_object(payload);
    assert_eq!(
        scanned.is_some(),
        serde.is_some(),
        "scanner and serde_json disagree on {:?}",
        String::from_utf8_lossy(payload)
    );
    if let (Some(s), Some(obj)) = (scanned, serde) {
        let ts = s.ts.map(|t| serde_json::from_slice::<Value>(t).unwrap());
        assert_eq!(ts.as_ref(), obj.get("ts"), "ts of {payload:?}");
        // Its members, decoded, the last of a repeated key winning: serde_json's map.
        let mut members = serde_json::Map::new();
        let all = object_members(payload, |key, escaped, value| {
            let mut quoted = vec![b'"'];
            quoted.extend_from_slice(key);
            quoted.push(b'"');
            let key: String = serde_json::from_slice(&quoted).unwrap();
            assert_eq!(escaped, key.as_bytes() != &quoted[1..quoted.len() - 1]);
            members.insert(key, serde_json::from_slice(value).unwrap());
        });
        assert!(all.is_some());
        assert_eq!(members, obj, "members of {payload:?}");
    }
}

#[test]
fn accepts_objects_and_refuses_everything_else() {
    for ok in [
        "{}",
        " \t\r\n{ } \n",
        r#"{"cpu":37.5,"mem":612,"temp":48.25,"uptime":86400,"rssi":-67}"#,
        r#"{"a":[1,[2,{"b":null}],true,false],"c":{"d":"e"}}"#,
        r#"{"s":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00 é 😀"}"#,
        r#"{"n":[0,-0,1.5e10,1E-5,-12.25e+3,0.000,123456789012345678901234567890]}"#,
        r#"{"big":1.7976931348623157e308,"tiny":1e-400,"zero":0e999999999999999999}"#,
        r#"{"a":1,"a":2}"#,
    ] {
        assert!(scan_object(ok.as_bytes()).is_some(), "{ok}");
        agree(ok.as_bytes());
    }
    for bad in [
        "",
        "[]",
        "1",
        "\"s\"",
        "null",
        "{",
        "}",
        "{}{}",
        "{} x",
        r#"{"a"}"#,
        r#"{"a":}"#,
        r#"{"a":1,}"#,
        r#"{,"a":1}"#,
        r#"{"a":1 "b":2}"#,
        r#"{a:1}"#,
        r#"{'a':1}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":1e}"#,
        r#"{"a":+1}"#,
        r#"{"a":-}"#,
        r#"{"a":NaN}"#,
        r#"{"a":Infinity}"#,
        r#"{"a":1e309}"#,
        r#"{"a":-1e309}"#,
        r#"{"a":tru}"#,
        r#"{"a":nul}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12"}"#,
        r#"{"a":"\uDE00"}"#,
        r#"{"a":"\uD83D"}"#,
        r#"{"a":"\uD83Dx"}"#,
        r#"{"a":"\uD83D\n"}"#,
        r#"{"a":"\uD83D\uD83D"}"#,
        r#"{"\uDE00":1}"#,
        "{\"a\":\"tab\there\"}",
        "{\"a\":1}\u{0}",
        "\u{feff}{}",
        "{\"a\":1}/*c*/",
    ] {
        assert!(scan_object(bad.as_bytes()).is_none(), "{bad}");
        agree(bad.as_bytes());
    }
    // Not UTF-8, inside and outside strings, and overlong or surrogate encodings.
    for bad in [
        &b"{\"a\":\"\xff\"}"[..],
        b"{\"a\xc3\":1}",
        b"{\"a\":\"\xc0\xaf\"}",
        b"{\"a\":\"\xed\xa0\x80\"}",
        b"{\"a\":\"\xf4\x90\x80\x80\"}",
        b"{\xe9}",
    ] {
        assert!(scan_object(bad).is_none(), "{bad:?}");
        agree(bad);
    }
}

#[test]
fn a_huge_integer_is_refused_where_serde_json_refuses_it() {
    for digits in [19, 20, 300, 301, 308, 309, 310, 400] {
        agree(format!("{{\"a\":{}}}", "9".repeat(digits)).as_bytes());
        agree(format!("{{\"a\":-{}}}", "9".repeat(digits)).as_bytes());
        agree(format!("{{\"a\":1{}}}", "0".repeat(digits)).as_bytes());
    }
}

#[test]
fn nesting_limit_is_serde_jsons() {
    for depth in [126, 127, 128, 129, 130] {
        for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
            let inner = depth - 1;
            let payload = format!("{{\"a\":{}1{}}}", open.repeat(inner), close.repeat(inner));
            agree(payload.as_bytes());
        }
    }
    assert!(
        scan_object(format!("{{\"a\":{}1{}}}", "[".repeat(126), "]".repeat(126)).as_bytes())
            .is_some()
    );
    assert!(
        scan_object(format!("{{\"a\":{}1{}}}", "[".repeat(127), "]".repeat(127)).as_bytes())
            .is_none()
    );
    // Deep enough to overflow a careless recursion; refused without a crash.
    let deep = format!("{{\"a\":{}", "[".repeat(100_000));
    assert!(scan_object(deep.as_bytes()).is_none());
}

#[test]
fn ts_is_the_last_top_level_ts_escaped_or_not() {
    fn ts(p: &str) -> Option<&[u8]> {
        scan_object(p.as_bytes()).unwrap().ts
    }
    assert_eq!(ts(r#"{"a":1}"#), None);
    assert_eq!(ts(r#"{"ts":1,"a":{"ts":2}}"#), Some(&b"1"[..]));
    assert_eq!(ts(r#"{"ts":1,"a":2,"ts":"x"}"#), Some(&b"\"x\""[..]));
    assert_eq!(ts(r#"{"\u0074s":[1, 2] }"#), Some(&b"[1, 2]"[..]));
    assert_eq!(ts(r#"{"tsx":1,"t":2}"#), None);
    for p in [
        r#"{"ts":1,"a":{"ts":2}}"#,
        r#"{"\u0074s":[1, 2] }"#,
        r#"{"a":1,"ts":2,"ts":3}"#,
    ] {
        agree(p.as_bytes());
    }
}

#[test]
fn shape_is_the_key_list() {
    let shape = |p: &str| scan_object(p.as_bytes()).unwrap().shape;
    assert_eq!(
        shape(r#"{"a":1,"b":[2]}"#),
        shape(r#"{ "a" : "x" , "b" : {"c":3} }"#)
    );
    assert_ne!(shape(r#"{"a":1,"b":2}"#), shape(r#"{"b":1,"a":2}"#));
    assert_ne!(shape(r#"{"ab":1}"#), shape(r#"{"a":1,"b":2}"#));
    assert_ne!(shape(r#"{"a":1}"#), shape(r#"{}"#));
    assert_ne!(shape(r#"{"a":1}"#), shape(r#"{"a":1,"ts":2}"#));
}

/// JSON-like text: the grammar's characters and a few that break it.
fn jsonish() -> impl Strategy<Value = String> {
    r#"\{([ \t\n]|"[a-z\\"/uD8E0-9]{0,6}"|[:,\[\]{}]|-?[0-9]{1,3}(\.[0-9]{0,2})?([eE][+-]?[0-9]{0,3})?|true|false|null|tr|\\u[0-9a-fA-F]{4}|é|\x00|\x1f){0,24}\}?"#
}

/// Valid JSON values, serialised compactly or pretty.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn agrees_with_serde_json_on_jsonish_text(s in jsonish()) {
        agree(s.as_bytes());
    }

    #[test]
    fn agrees_with_serde_json_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        let mut payload = b"{\"a\":".to_vec();
        payload.extend_from_slice(&bytes);
        agree(&payload);
        agree(&bytes);
    }

    #[test]
    fn accepts_every_serialised_object(
        members in prop::collection::vec(("\\PC{0,6}", json_value()), 0..6),
        pretty in any::<bool>(),
        ts in prop::option::of(json_value()),
    ) {
        let mut obj = serde_json::Map::new();
        for (k, v) in members {
            obj.insert(k, v);
        }
        if let Some(ts) = ts {
            obj.insert("ts".into(), ts);
        }
        let value = Value::Object(obj);
        let text = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        prop_assert!(scan_object(&text).is_some());
        agree(&text);
    }

    #[test]
    fn agrees_after_one_byte_is_changed(
        value in json_value(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut text = serde_json::to_vec(&serde_json::json!({"v": value, "ts": 5})).unwrap();
        let i = at.index(text.len());
        text[i] = byte;
        agree(&text);
        text.remove(i);
        agree(&text);
    }
}
