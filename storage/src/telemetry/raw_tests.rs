//! Objects stored as sent: V2 blocks (golden bytes, bad records), V1 and V2 blocks in
//! one device's history, the latest values kept per shape against a model, and the
//! summaries of the format before.

use std::collections::BTreeMap;

use super::block::{
    block_header, decode_block, decode_block_points, encode_block, encode_block_v2, Body, PointRef,
    RawRef,
};
use super::tests::{encode_summary_v1, id, temp_db, vals};
use super::*;
use proptest::prelude::*;

use crate::test_support::hex;

fn obj(device: &str, ts_ms: u64, shape: u64, object: &str) -> NewPoint {
    NewPoint::object(&id(device), ts_ms, shape, object.as_bytes())
}

fn everything(db: &Database, device: &str, keys: Option<&[String]>) -> Vec<Point> {
    query(
        db,
        &id(device),
        &PointQuery {
            from_ms: 0,
            to_ms: u64::MAX,
            keys,
            limit: usize::MAX,
            cursor: None,
        },
    )
    .unwrap()
    .points
}

fn put_block(db: &Database, device: &str, max_ts: u64, block_id: u64, bytes: &[u8]) {
    let txn = db.begin_write().unwrap();
    txn.open_table(BLOCKS)
        .unwrap()
        .insert(key_of(device, max_ts, block_id).as_slice(), bytes)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn golden_block_v2() {
    let objects = [(1_990, 7, r#"{"cpu":40}"#), (1_999, 8, "{}")];
    let refs = objects.iter().map(|&(ts_ms, seq, o)| RawRef {
        ts_ms,
        seq,
        object: o.as_bytes(),
    });
    let mut bytes = Vec::new();
    encode_block_v2(1_999, 7, refs, &mut bytes).unwrap();
    assert_eq!(hex(&bytes), "010209000a7b22637075223a34307d0001027b7d");
    assert_eq!(block_header("d", 1_999, 7, &bytes).unwrap(), (2, 1_990));
    let points = decode_block_points("d", 1_999, 7, &bytes).unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0].body, Body::Object(5..15));
    assert_eq!(
        decode_block("d", 1_999, 7, &bytes).unwrap(),
        vec![
            Point {
                ts_ms: 1_990,
                seq: 7,
                values: vals(&[("cpu", "40")]),
            },
            Point {
                ts_ms: 1_999,
                seq: 8,
                values: vec![],
            },
        ]
    );
}

#[test]
fn bad_v2_blocks_are_corrupt_errors() {
    let good = {
        let mut b = Vec::new();
        let refs = [(9, 3, "{}"), (10, 4, r#"{"a":1}"#)].map(|(ts_ms, seq, o)| RawRef {
            ts_ms,
            seq,
            object: o.as_bytes(),
        });
        encode_block_v2(10, 3, refs.into_iter(), &mut b).unwrap();
        b
    };
    let mut trailing = good.clone();
    trailing.push(0);
    let cases: [&[u8]; 7] = [
        &trailing,
        &good[..good.len() - 1],
        &[1],
        &[1, 0],
        // Before the bucket, out of order, seq overflowing.
        &[1, 1, 11, 0, 0],
        &[1, 2, 0, 1, 0, 0, 1, 0],
        &[
            1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
        ],
    ];
    for bytes in cases {
        let err = decode_block_points("dev", 10, 3, bytes).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "telemetry_blocks", key, .. } if key == "dev@10#3"),
            "{bytes:?}: {err:?}"
        );
    }
    // Out-of-order points are refused rather than written.
    let refs = [(10, 4, "{}"), (10, 3, "{}")].map(|(ts_ms, seq, o)| RawRef {
        ts_ms,
        seq,
        object: o.as_bytes(),
    });
    assert!(encode_block_v2(10, 3, refs.into_iter(), &mut Vec::new()).is_err());
}

#[test]
fn object_values_drop_ts_keep_the_last_of_a_key_and_refuse_non_objects() {
    assert_eq!(
        block::object_values(br#"{"b":[1, 2],"ts":5,"a":{"x":"\u00e9"},"b":3}"#).unwrap(),
        vals(&[("a", r#"{"x":"\u00e9"}"#), ("b", "3")])
    );
    assert_eq!(
        block::object_values(br#"{"\u0061":1}"#).unwrap(),
        vals(&[("a", "1")])
    );
    for bad in [&b"[]"[..], b"1", b"{", b"{\"a\":}", b"\xff"] {
        assert!(block::object_values(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn v1_and_v2_blocks_read_and_sweep_as_one_history() {
    let (_dir, db) = temp_db();
    // Session 5's blocks: seq 0..3 at 1_100..1_300 and 2_500.
    let v1 = |ts_ms, seq, v: &str| (ts_ms, seq, vals(&[("n", v), ("old", "true")]));
    let old = [v1(1_100, 0, "1"), v1(1_300, 1, "2")];
    let mut bytes = Vec::new();
    let refs = old.iter().map(|(ts_ms, seq, values)| PointRef {
        ts_ms: *ts_ms,
        seq: *seq,
        values,
    });
    encode_block(1_300, 0, refs, &mut bytes).unwrap();
    put_block(&db, "d", 1_300, 0, &bytes);
    let old2 = [v1(2_500, 2, "3")];
    let refs = old2.iter().map(|(ts_ms, seq, values)| PointRef {
        ts_ms: *ts_ms,
        seq: *seq,
        values,
    });
    bytes.clear();
    encode_block(2_500, 2, refs, &mut bytes).unwrap();
    put_block(&db, "d", 2_500, 2, &bytes);
    {
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(NEXT_SEQ, 3).unwrap();
        txn.commit().unwrap();
    }
    // New points in the same seconds and between.
    insert_batch(
        &db,
        &[
            obj("d", 1_200, 1, r#"{"n":4,"ts":1200}"#),
            obj("d", 2_000, 1, r#"{"n":5}"#),
            obj("d", 2_600, 2, r#"{"m":"x","n":6}"#),
        ],
    )
    .unwrap();
    let got: Vec<(u64, Vec<(String, String)>)> = everything(&db, "d", None)
        .into_iter()
        .map(|p| (p.ts_ms, p.values))
        .collect();
    assert_eq!(
        got,
        [
            (2_600, vals(&[("m", "\"x\""), ("n", "6")])),
            (2_500, vals(&[("n", "3"), ("old", "true")])),
            (2_000, vals(&[("n", "5")])),
            (1_300, vals(&[("n", "2"), ("old", "true")])),
            (1_200, vals(&[("n", "4")])),
            (1_100, vals(&[("n", "1"), ("old", "true")])),
        ]
    );
    let only_m = everything(&db, "d", Some(&["m".to_owned(), "old".to_owned()]));
    assert_eq!(
        only_m.iter().map(|p| p.ts_ms).collect::<Vec<_>>(),
        [2_600, 2_500, 1_300, 1_100]
    );
    // Retention cuts inside the second of 1_100..1_300 (a V1 and a V2 block).
    // The summary was never written for the V1 points: counts are the batch's.
    assert_eq!(count(&db, &id("d")).unwrap(), 3);
    let removed = sweep(&db, 1_250, 100).unwrap();
    assert_eq!(removed, 2);
    let left: Vec<u64> = everything(&db, "d", None).iter().map(|p| p.ts_ms).collect();
    assert_eq!(left, [2_600, 2_500, 2_000, 1_300]);
    let l = latest(&db, &id("d")).unwrap();
    assert_eq!(l["n"].value, "6");
    assert_eq!(l["m"].value, "\"x\"");
}

#[test]
fn a_corrupt_object_costs_its_point_only() {
    let (_dir, db) = temp_db();
    insert_batch(
        &db,
        &[
            obj("d", 1_000, 1, r#"{"a":1}"#),
            obj("d", 1_001, 1, r#"{"a":"#),
            obj("d", 1_002, 1, r#"{"a":3}"#),
        ],
    )
    .unwrap();
    let got: Vec<u64> = everything(&db, "d", None).iter().map(|p| p.ts_ms).collect();
    assert_eq!(got, [1_002, 1_000]);
    assert_eq!(latest(&db, &id("d")).unwrap()["a"].value, "3");
}

#[test]
fn a_session_5_summary_goes_on_with_objects() {
    let (_dir, db) = temp_db();
    let v1 = SummaryV1 {
        points: 7,
        latest: vec![
            LatestV1 {
                key: "a".into(),
                ts_ms: 500,
                seq: 1,
                value: "\"old\"".into(),
            },
            LatestV1 {
                key: "z".into(),
                ts_ms: 900,
                seq: 2,
                value: "26".into(),
            },
        ],
    };
    {
        let txn = db.begin_write().unwrap();
        txn.open_table(LATEST)
            .unwrap()
            .insert("d", encode_summary_v1(v1).unwrap().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    insert_batch(&db, &[obj("d", 800, 1, r#"{"a":1,"z":2}"#)]).unwrap();
    assert_eq!(count(&db, &id("d")).unwrap(), 8);
    let l = latest(&db, &id("d")).unwrap();
    assert_eq!((l["a"].value.as_str(), l["a"].ts_ms), ("1", 800));
    assert_eq!((l["z"].value.as_str(), l["z"].ts_ms), ("26", 900));
}

/// The newest `(ts, seq)` value of each key over `points` (seq = position).
fn model_latest(points: &[(u64, Vec<(String, String)>)]) -> BTreeMap<String, (u64, u64, String)> {
    let mut m: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
    for (seq, (ts, values)) in points.iter().enumerate() {
        for (k, v) in values {
            let newer = m
                .get(k)
                .is_none_or(|(t, s, _)| (*ts, seq as u64) > (*t, *s));
            if newer {
                m.insert(k.clone(), (*ts, seq as u64, v.clone()));
            }
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Points with a few key lists (more than the summary keeps as objects) in
    /// random batches and timestamps: `latest` is the newest value of every key.
    #[test]
    fn latest_per_shape_matches_the_newest_value_of_each_key(
        points in prop::collection::vec(
            (0..3_000u64, prop::sample::subsequence(vec!["a", "b", "c", "d", "e", "f"], 0..4)),
            1..80,
        ),
        cuts in prop::collection::vec(1..20usize, 1..8),
    ) {
        let (_dir, db) = temp_db();
        let mut stored: Vec<(u64, Vec<(String, String)>)> = Vec::new();
        let mut rest = &points[..];
        let mut i = 0;
        while !rest.is_empty() {
            let take = cuts[i % cuts.len()].min(rest.len());
            let batch: Vec<NewPoint> = rest[..take]
                .iter()
                .map(|(ts, keys)| {
                    let n = stored.len();
                    let values: Vec<(String, String)> =
                        keys.iter().map(|k| ((*k).to_owned(), n.to_string())).collect();
                    stored.push((*ts, values.clone()));
                    NewPoint::new(id("d"), *ts, values)
                })
                .collect();
            insert_batch(&db, &batch).unwrap();
            rest = &rest[take..];
            i += 1;
        }
        let want: BTreeMap<String, (u64, String)> = model_latest(&stored)
            .into_iter()
            .map(|(k, (ts, _, v))| (k, (ts, v)))
            .collect();
        let got: BTreeMap<String, (u64, String)> = latest(&db, &id("d"))
            .unwrap()
            .into_iter()
            .map(|(k, l)| (k, (l.ts_ms, l.value)))
            .collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(count(&db, &id("d")).unwrap(), points.len() as u64);
    }
}
