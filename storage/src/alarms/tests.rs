//! Golden bytes, round trips and the table operations.

use super::records::{decode_alarm, decode_state, encode_alarm, encode_rule, encode_state};
use super::*;
use crate::test_support::{hex, temp_store};

fn rule(id: &str) -> AlarmRule {
    AlarmRule {
        id: id.into(),
        name: "hot".into(),
        severity: "major".into(),
        target: AlarmTarget::Label {
            key: "site".into(),
            value: "lab".into(),
        },
        condition: AlarmCondition::Threshold {
            key: "t".into(),
            op: CompareOp::Gt,
            value: 1.5,
            for_s: 30,
        },
        clear: Some(AlarmCondition::Offline { for_s: 2 }),
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
    }
}

fn new_alarm(device: &str) -> NewAlarm {
    NewAlarm {
        rule_id: Some("r1".into()),
        name: "hot".into(),
        severity: "major".into(),
        device_id: device.into(),
        raised_at_ms: 5,
        value: Some("9".into()),
        source: AlarmSource::Rule,
    }
}

// Golden bytes: if these fail, the file format changed. Add a `V2` instead of
// editing `V1`.
const RULE_V1: &str = concat!(
    "00",               // V1
    "03686f74",         // name "hot"
    "056d616a6f72",     // severity "major"
    "02",               // Label
    "0473697465",       // key "site"
    "036c6162",         // value "lab"
    "00",               // Threshold
    "0174",             // key "t"
    "00",               // Gt
    "000000000000f83f", // 1.5
    "1e",               // for_s 30
    "0101",             // Some(Offline)
    "02",               // for_s 2
    "e807",             // created
    "e807",             // updated
);

const ALARM_V1: &str = concat!(
    "00",           // V1
    "01027231",     // rule_id Some("r1")
    "03686f74",     // name
    "056d616a6f72", // severity
    "0164",         // device "d"
    "01",           // active
    "05",           // raised_at_ms
    "00",           // cleared_at_ms None
    "00",           // acknowledged_at_ms None
    "010139",       // value Some("9")
    "00",           // Rule
);

#[test]
fn golden_bytes() {
    assert_eq!(hex(&encode_rule(&rule("r1")).unwrap()), RULE_V1);
    let record = new_alarm("d").into_record(1);
    let bytes = encode_alarm(&record).unwrap();
    assert_eq!(hex(&bytes), ALARM_V1);
    assert_eq!(decode_alarm(1, &bytes).unwrap(), record);
    let state = AlarmState {
        alarm: Some(3),
        since_ms: None,
    };
    let bytes = encode_state("r", "d", &state).unwrap();
    assert_eq!(hex(&bytes), "00010300");
    assert_eq!(decode_state("r", "d", &bytes).unwrap(), state);
    let err = decode_alarm(1, &[9]).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn rules_create_update_list_delete() {
    let (_dir, store) = temp_store();
    store.create_alarm_rule(&rule("r1")).unwrap();
    let err = store.create_alarm_rule(&rule("r1")).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    let mut changed = rule("r1");
    changed.name = "warm".into();
    store.update_alarm_rule(&changed).unwrap();
    assert_eq!(store.get_alarm_rule("r1").unwrap(), Some(changed));
    let err = store.update_alarm_rule(&rule("r2")).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(store.list_alarm_rules().unwrap().len(), 1);
    let err = store.delete_alarm_rule("r2", 0).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
}

#[test]
fn raise_clear_ack_list_and_delete_a_rule() {
    let (_dir, store) = temp_store();
    store.create_alarm_rule(&rule("r1")).unwrap();
    let out = store
        .apply_alarm_changes(&[
            AlarmChange::Window {
                key: "r1".into(),
                device: "a".into(),
                since_ms: Some(7),
            },
            AlarmChange::Raise {
                key: "r1".into(),
                alarm: new_alarm("b"),
            },
            AlarmChange::Raise {
                key: "r1".into(),
                alarm: new_alarm("c"),
            },
            AlarmChange::Clear {
                key: "r1".into(),
                device: "c".into(),
                at_ms: 9,
            },
        ])
        .unwrap();
    assert_eq!(out.len(), 3);
    assert!(
        matches!(&out[2], AlarmOutcome::Cleared(a) if a.seq == 2 && a.cleared_at_ms == Some(9))
    );
    let states = store.load_alarm_states().unwrap();
    assert_eq!(states.len(), 2, "{states:?}");
    // A window on an active alarm keeps the alarm.
    store
        .apply_alarm_changes(&[AlarmChange::Window {
            key: "r1".into(),
            device: "b".into(),
            since_ms: Some(8),
        }])
        .unwrap();
    let b = store.load_alarm_states().unwrap();
    let b = b.iter().find(|((_, d), _)| d == "b").unwrap().1;
    assert_eq!((b.alarm, b.since_ms), (Some(1), Some(8)));

    assert!(store.ack_alarm(1, 10).unwrap().1);
    let (again, fresh) = store.ack_alarm(1, 11).unwrap();
    assert!(!fresh);
    assert_eq!(again.acknowledged_at_ms, Some(10));
    assert!(matches!(
        store.ack_alarm(99, 1).unwrap_err(),
        StoreError::NotFound { .. }
    ));

    let all = AlarmFilter::default();
    let (page, next) = store.list_alarms(&all, None, 1).unwrap();
    assert_eq!((page[0].seq, next), (2, Some(2)));
    let (page, next) = store.list_alarms(&all, next, 1).unwrap();
    assert_eq!((page[0].seq, next), (1, None));
    let active = AlarmFilter {
        active: Some(true),
        ..Default::default()
    };
    let (page, _) = store.list_alarms(&active, None, 10).unwrap();
    assert_eq!(page.len(), 1);

    let (_, cleared) = store.delete_alarm_rule("r1", 20).unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].device_id, "b");
    assert!(store.load_alarm_states().unwrap().is_empty());
}

#[test]
fn pruning_removes_only_alarms_cleared_before_the_cutoff() {
    let (_dir, store) = temp_store();
    let raise = |device: &str| AlarmChange::Raise {
        key: "r1".into(),
        alarm: new_alarm(device),
    };
    let clear = |device: &str, at_ms| AlarmChange::Clear {
        key: "r1".into(),
        device: device.into(),
        at_ms,
    };
    // 1 cleared at 10, 2 cleared at 30, 3 still active, 4 cleared at 10.
    let changes = [raise("a"), clear("a", 10), raise("b"), clear("b", 30)];
    store.apply_alarm_changes(&changes).unwrap();
    store.apply_alarm_changes(&[raise("c")]).unwrap();
    store
        .apply_alarm_changes(&[raise("d"), clear("d", 10)])
        .unwrap();
    assert_eq!(store.prune_cleared_alarms(20, 1).unwrap(), 1, "budget");
    assert_eq!(store.prune_cleared_alarms(20, 10).unwrap(), 1);
    assert_eq!(store.prune_cleared_alarms(20, 10).unwrap(), 0);
    let (left, _) = store
        .list_alarms(&AlarmFilter::default(), None, 10)
        .unwrap();
    let seqs: Vec<u64> = left.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, [3, 2]);
    assert_eq!(
        store.load_alarm_states().unwrap().len(),
        1,
        "c's state stays"
    );
}
