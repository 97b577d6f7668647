//! The index against evaluating every rule: it must give every rule that targets the
//! device and holds for the point, and read values as serde_json's parsed object does.

use std::collections::BTreeMap;

use fleetmq_storage::alarms::{AlarmCondition, AlarmRule, AlarmTarget, CompareOp};
use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::fleet::alarms::model::targets;

const OPS: [CompareOp; 6] = [
    CompareOp::Gt,
    CompareOp::Ge,
    CompareOp::Lt,
    CompareOp::Le,
    CompareOp::Eq,
    CompareOp::Ne,
];

fn threshold(key: &str, op: CompareOp, value: f64) -> AlarmCondition {
    AlarmCondition::Threshold {
        key: key.into(),
        op,
        value,
        for_s: 0,
    }
}

fn rule(id: usize, target: AlarmTarget, condition: AlarmCondition) -> AlarmRule {
    AlarmRule {
        id: format!("r{id}"),
        name: "n".into(),
        severity: "major".into(),
        target,
        condition,
        clear: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// What evaluating every rule against the parsed object gives: the rules, in order,
/// that target `device` and whose condition holds.
fn brute_force(
    rules: &[AlarmRule],
    object: &str,
    device: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<usize> {
    let parsed: serde_json::Map<String, Value> = serde_json::from_str(object).unwrap_or_default();
    let number = |k: &str| match parsed.get(k)? {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    let holds = |r: &AlarmRule| match &r.condition {
        AlarmCondition::Threshold { key, op, value, .. } => {
            number(key).is_some_and(|v| op.holds(v, *value))
        }
        AlarmCondition::Offline { .. } => false,
    };
    (rules.iter().enumerate())
        .filter(|(_, r)| targets(&r.target, device, labels) && holds(r))
        .map(|(i, _)| i)
        .collect()
}

fn indexed(
    index: &RuleIndex,
    object: &str,
    device: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<usize> {
    let mut values = PointValues::default();
    index.read(object.as_bytes(), &mut values);
    let mut out = Vec::new();
    index.holding(&values, device, labels, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

fn label(k: &str, v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(k.to_owned(), v.to_owned())])
}

#[test]
fn a_point_meets_the_rules_on_its_keys_for_its_device() {
    let rules = vec![
        rule(0, AlarmTarget::All, threshold("t", CompareOp::Gt, 80.0)),
        rule(1, AlarmTarget::All, threshold("t", CompareOp::Ge, 80.0)),
        rule(2, AlarmTarget::All, threshold("h", CompareOp::Lt, 10.0)),
        rule(
            3,
            AlarmTarget::Devices(vec!["a".into(), "a".into()]),
            threshold("t", CompareOp::Le, 80.0),
        ),
        rule(
            4,
            AlarmTarget::Label {
                key: "site".into(),
                value: "x".into(),
            },
            threshold("t", CompareOp::Eq, 80.0),
        ),
        rule(5, AlarmTarget::All, AlarmCondition::Offline { for_s: 5 }),
    ];
    let index = RuleIndex::new(rules);
    let none = BTreeMap::new();
    assert_eq!(indexed(&index, r#"{"t":80}"#, "b", &none), [1]);
    assert_eq!(indexed(&index, r#"{"t":80}"#, "a", &none), [1, 3]);
    assert_eq!(
        indexed(&index, r#"{"t":80}"#, "b", &label("site", "x")),
        [1, 4]
    );
    assert_eq!(
        indexed(&index, r#"{"t":80.5,"h":3}"#, "b", &none),
        [0, 1, 2]
    );
    // The last member of a name wins; a string is no number; an escaped name is read.
    assert_eq!(
        indexed(&index, r#"{"t":99,"t":1}"#, "b", &none),
        [] as [usize; 0]
    );
    assert_eq!(
        indexed(&index, r#"{"t":"99"}"#, "b", &none),
        [] as [usize; 0]
    );
    assert_eq!(indexed(&index, r#"{"\u0074":99}"#, "b", &none), [0, 1]);
    assert_eq!(indexed(&index, r#"{"h":true}"#, "b", &none), [2]);
    assert!(index.may_target("anyone"));
    assert_eq!(index.get("r3").map(|(i, _)| i), Some(3));
    assert!(index.watches_telemetry());
}

#[test]
fn only_listed_devices_are_targeted_without_rules_for_all() {
    let listed = AlarmTarget::Devices(vec!["a".into()]);
    let clear = Some(threshold("c", CompareOp::Lt, 1.0));
    let mut r = rule(0, listed, threshold("t", CompareOp::Gt, 1.0));
    r.clear = clear;
    let index = RuleIndex::new(vec![r]);
    assert!(index.may_target("a") && !index.may_target("b"));
    // The clear condition's key is read too (an active alarm needs it), no rule holds.
    let mut values = PointValues::default();
    index.read(br#"{"c":0,"x":5}"#, &mut values);
    assert_eq!(values.number("c"), Some(0.0));
    assert_eq!(values.number("x"), None, "no rule reads x");
    assert!(!index.needs_labels(&values));
    let offline = rule(0, AlarmTarget::All, AlarmCondition::Offline { for_s: 1 });
    assert!(!RuleIndex::new(vec![offline]).watches_telemetry());
}

fn target() -> impl Strategy<Value = AlarmTarget> {
    prop_oneof![
        Just(AlarmTarget::All),
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..3)
            .prop_map(|d| AlarmTarget::Devices(d.into_iter().map(str::to_owned).collect())),
        prop::sample::select(vec!["x", "y"]).prop_map(|v| AlarmTarget::Label {
            key: "site".into(),
            value: v.into(),
        }),
    ]
}

/// Small values, so thresholds and points meet on equality often.
fn small() -> impl Strategy<Value = f64> {
    (-4i32..4, prop::bool::ANY).prop_map(|(n, half)| f64::from(n) + if half { 0.5 } else { 0.0 })
}

fn rules() -> impl Strategy<Value = Vec<AlarmRule>> {
    let one = (
        target(),
        prop::sample::select(vec!["t", "h"]),
        0..6usize,
        small(),
    );
    prop::collection::vec(one, 0..24).prop_map(|rs| {
        (rs.into_iter().enumerate())
            .map(|(i, (target, key, op, v))| rule(i, target, threshold(key, OPS[op], v)))
            .collect()
    })
}

fn member() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["t", "h", "z", "\\u0068"]);
    let value = prop_oneof![
        small().prop_map(|v| v.to_string()),
        Just("true".to_owned()),
        Just("\"2\"".to_owned()),
        Just("null".to_owned()),
        Just("[1]".to_owned()),
        Just("-0".to_owned()),
        Just("1e0".to_owned()),
    ];
    (key, value).prop_map(|(k, v)| format!("\"{k}\":{v}"))
}

proptest! {
    #[test]
    fn the_index_gives_exactly_the_rules_that_hold(
        rules in rules(),
        members in prop::collection::vec(member(), 0..5),
        device in prop::sample::select(vec!["a", "b", "d"]),
        site in prop::sample::select(vec!["x", "y", "z"]),
    ) {
        let object = format!("{{{}}}", members.join(","));
        let labels = label("site", site);
        let index = RuleIndex::new(rules.clone());
        prop_assert_eq!(
            indexed(&index, &object, device, &labels),
            brute_force(&rules, &object, device, &labels),
            "{}", object
        );
    }
}

#[test]
fn short_decimals_parse_as_the_standard_library_parses_them() {
    for text in [
        "0",
        "-0",
        "7",
        "-67",
        "37.5",
        "48.25",
        "0.1",
        "-0.3",
        "86400",
        "123456789012345",
        "1234567890.12345",
        "0.000000000000001",
        "9007199254740993",
        "1e3",
        "1.5E-2",
    ] {
        let std: f64 = text.parse().unwrap();
        let got = number(text.as_bytes()).unwrap();
        assert_eq!(got.to_bits(), std.to_bits(), "{text}");
    }
}

#[test]
fn many_keys_are_found_through_the_map() {
    let rules: Vec<AlarmRule> = (0..20)
        .map(|i| {
            rule(
                i,
                AlarmTarget::All,
                threshold(&format!("k{i}"), CompareOp::Gt, 0.0),
            )
        })
        .collect();
    let index = RuleIndex::new(rules);
    assert_eq!(
        indexed(&index, r#"{"k19":1,"k3":1,"zz":1}"#, "d", &BTreeMap::new()),
        [3, 19]
    );
}
