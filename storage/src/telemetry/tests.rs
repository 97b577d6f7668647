//! Golden bytes, decoding of bad records, and the table operations on a real redb file.

use super::retention::SWEEP_TXN_BUDGET;
use super::*;
use proptest::prelude::*;

use crate::test_support::hex;

pub(super) fn id(s: &str) -> DeviceId {
    s.parse().expect("valid test device id")
}

pub(super) fn temp_db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("t.redb")).expect("create db");
    let txn = db.begin_write().expect("begin");
    create_tables(&txn).expect("create tables");
    txn.commit().expect("commit");
    (dir, db)
}

pub(super) fn vals(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn point(device: &str, ts_ms: u64, pairs: &[(&str, &str)]) -> NewPoint {
    NewPoint::new(id(device), ts_ms, vals(pairs))
}

fn all(db: &Database, device: &str) -> Vec<Point> {
    query(
        db,
        &id(device),
        &PointQuery {
            from_ms: 0,
            to_ms: u64::MAX,
            keys: None,
            limit: usize::MAX,
            cursor: None,
        },
    )
    .unwrap()
    .points
}

fn put_raw_point(db: &Database, key: &[u8], bytes: &[u8]) {
    let txn = db.begin_write().unwrap();
    txn.open_table(POINTS).unwrap().insert(key, bytes).unwrap();
    txn.commit().unwrap();
}

fn put_raw_summary(db: &Database, device: &str, bytes: &[u8]) {
    let txn = db.begin_write().unwrap();
    txn.open_table(LATEST)
        .unwrap()
        .insert(device, bytes)
        .unwrap();
    txn.commit().unwrap();
}

// ---- records -------------------------------------------------------------------

#[test]
fn golden_point_v1() {
    let values = vals(&[("cpu", "40"), ("on", "true")]);
    let bytes = encode_point(&values, Vec::new()).unwrap();
    assert_eq!(hex(&bytes), "000203637075023430026f6e0474727565");
    assert_eq!(decode_point("d", 1, 2, &bytes).unwrap(), values);
}

#[test]
fn golden_summary_v1() {
    let summary = SummaryV1 {
        points: 2,
        latest: vec![LatestV1 {
            key: "cpu".into(),
            ts_ms: 300,
            seq: 5,
            value: "40".into(),
        }],
    };
    let bytes = encode_summary_v1(summary).unwrap();
    assert_eq!(hex(&bytes), "00020103637075ac0205023430");
    let back = decode_summary("d", &bytes).unwrap();
    assert_eq!(back.points, 2);
    assert_eq!(back.latest.len(), 1);
    assert_eq!(
        (
            back.latest[0].key.as_str(),
            back.latest[0].ts_ms,
            back.latest[0].seq,
            back.latest[0].value.as_str()
        ),
        ("cpu", 300, 5, "40")
    );
}

#[test]
fn golden_point_key() {
    let key = key_of("dev-1", 0x0102, 7);
    assert_eq!(hex(&key), "6465762d310000000000000001020000000000000007");
    assert_eq!(parse_point_key(&key).unwrap(), ("dev-1", 0x0102, 7));
}

#[test]
fn point_keys_sort_by_device_then_time_then_seq() {
    let mut keys = [
        key_of("ab", 0, 0),
        key_of("a", u64::MAX, u64::MAX),
        key_of("a-", 0, 0),
        key_of("a", 2, 0),
        key_of("a", 1, 9),
        key_of("a", 1, 10),
        key_of("b", 0, 0),
    ];
    keys.sort();
    let parsed: Vec<(&str, u64, u64)> = keys.iter().map(|k| parse_point_key(k).unwrap()).collect();
    assert_eq!(
        parsed,
        [
            ("a", 1, 9),
            ("a", 1, 10),
            ("a", 2, 0),
            ("a", u64::MAX, u64::MAX),
            ("a-", 0, 0),
            ("ab", 0, 0),
            ("b", 0, 0)
        ]
    );
}

#[test]
fn malformed_point_keys_are_corrupt_errors() {
    let mut not_utf8 = key_of("x", 1, 1);
    not_utf8[0] = 0xff;
    let mut no_nul = key_of("x", 1, 1);
    no_nul[1] = b'y';
    for key in [
        &b""[..],
        &[0u8; 17],
        &key_of("x", 1, 1)[1..],
        &not_utf8,
        &no_nul,
    ] {
        assert!(
            matches!(
                parse_point_key(key),
                Err(StoreError::Corrupt {
                    table: "telemetry_points",
                    ..
                })
            ),
            "{key:?}"
        );
    }
}

#[test]
fn bad_records_are_corrupt_errors() {
    let good = encode_point(&vals(&[("a", "1")]), Vec::new()).unwrap();
    let mut trailing = good.clone();
    trailing.push(0);
    let unknown_version = [1u8, 0];
    let unordered = encode_point(&vals(&[("b", "1"), ("a", "2")]), Vec::new()).unwrap();
    let duplicate = encode_point(&vals(&[("a", "1"), ("a", "2")]), Vec::new()).unwrap();
    for bytes in [
        &trailing[..],
        &unknown_version,
        &unordered,
        &duplicate,
        &[],
        &good[..3],
    ] {
        let err = decode_point("dev", 7, 9, bytes).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "telemetry_points", key, .. } if key == "dev@7#9"),
            "{err:?}"
        );
    }
    let unordered = encode_summary_v1(SummaryV1 {
        points: 1,
        latest: ["b", "a"]
            .iter()
            .map(|k| LatestV1 {
                key: (*k).into(),
                ts_ms: 1,
                seq: 1,
                value: "1".into(),
            })
            .collect(),
    })
    .unwrap();
    for bytes in [&[0u8, 1][..], &[1, 0, 0], &[0, 0, 0, 1], &unordered] {
        let err = decode_summary("dev", bytes).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "telemetry_latest", key, .. } if key == "dev"),
            "{err:?}"
        );
    }
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_point("d", 0, 0, &bytes);
        let _ = decode_summary("d", &bytes);
        let _ = parse_point_key(&bytes);
    }

    #[test]
    fn points_round_trip(values in proptest::collection::btree_map(".{0,8}", ".{0,16}", 0..6)) {
        let values: Vec<(String, String)> = values.into_iter().collect();
        let bytes = encode_point(&values, Vec::new()).unwrap();
        prop_assert_eq!(decode_point("d", 0, 0, &bytes).unwrap(), values);
    }

    #[test]
    fn encoding_matches_postcard(values in proptest::collection::vec((".{0,200}", ".{0,300}"), 0..140)) {
        let by_hand = encode_point(&values, vec![7]).unwrap();
        let postcard = postcard::to_extend(&StoredPointRef::V1(PointV1Ref { values: &values }), vec![7]).unwrap();
        prop_assert_eq!(by_hand, postcard);
    }

    #[test]
    fn cursor_parse_never_panics_and_round_trips(s in ".{0,24}", ts in any::<u64>(), seq in any::<u64>()) {
        let _ = s.parse::<Cursor>();
        let c = Cursor { ts_ms: ts, seq };
        prop_assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
    }
}

#[test]
fn cursor_rejects_garbage() {
    for s in [
        "",
        ".",
        "1.",
        ".1",
        "1",
        "a.b",
        "1.2.3",
        "-1.2",
        "+1.2",
        "99999999999999999999.1",
        " 1.2",
    ] {
        assert_eq!(s.parse::<Cursor>(), Err(InvalidCursor), "{s:?}");
    }
    assert_eq!("12.34".parse::<Cursor>(), Ok(Cursor { ts_ms: 12, seq: 34 }));
}

// ---- tables ------------------------------------------------------------------

#[test]
fn missing_tables_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("t.redb")).unwrap();
    let d = id("d1");
    assert_eq!(count(&db, &d).unwrap(), 0);
    assert!(all(&db, "d1").is_empty());
    assert!(latest(&db, &d).unwrap().is_empty());
    assert_eq!(sweep(&db, u64::MAX, 1).unwrap(), 0);
    // Writing creates what it needs.
    insert_batch(&db, &[point("d1", 5, &[("a", "1")])]).unwrap();
    assert_eq!(count(&db, &d).unwrap(), 1);
    assert_eq!(delete_device(&db, &d).unwrap(), 1);
}

#[test]
fn batch_is_stored_newest_first_with_counts() {
    let (_dir, db) = temp_db();
    let n = insert_batch(
        &db,
        &[
            point("d1", 20, &[("a", "2")]),
            point("d2", 15, &[("a", "9")]),
            point("d1", 10, &[("a", "1")]),
            point("d1", 30, &[("a", "3"), ("b", "\"x\"")]),
        ],
    )
    .unwrap();
    assert_eq!(n, 4);
    assert_eq!(insert_batch(&db, &[]).unwrap(), 0);
    let ts: Vec<u64> = all(&db, "d1").iter().map(|p| p.ts_ms).collect();
    assert_eq!(ts, [30, 20, 10]);
    assert_eq!(
        all(&db, "d1")[0].values,
        vals(&[("a", "3"), ("b", "\"x\"")])
    );
    assert_eq!(count(&db, &id("d1")).unwrap(), 3);
    assert_eq!(count(&db, &id("d2")).unwrap(), 1);
    assert_eq!(count(&db, &id("d3")).unwrap(), 0);
}

#[test]
fn equal_timestamps_never_overwrite_and_keep_arrival_order() {
    let (_dir, db) = temp_db();
    insert_batch(
        &db,
        &[point("d", 5, &[("n", "1")]), point("d", 5, &[("n", "2")])],
    )
    .unwrap();
    insert_batch(&db, &[point("d", 5, &[("n", "3")])]).unwrap();
    let got: Vec<String> = all(&db, "d")
        .into_iter()
        .map(|p| p.values[0].1.clone())
        .collect();
    assert_eq!(got, ["3", "2", "1"]);
    assert_eq!(count(&db, &id("d")).unwrap(), 3);
    assert_eq!(latest(&db, &id("d")).unwrap()["n"].value, "3");
}

#[test]
fn new_point_orders_values_and_drops_repeated_keys() {
    let p = NewPoint::new(
        id("d"),
        1,
        vals(&[
            ("b", "1"),
            ("a", "2"),
            ("b", "3"),
            ("ts", "4"),
            ("q\"", "[5]"),
        ]),
    );
    assert_eq!(p.device(), b"d");
    // An object as a device would send it; `ts` is never a value.
    assert_eq!(p.object_bytes(), br#"{"a":2,"b":1,"q\"":[5]}"#);
    assert_eq!(
        block::object_values(p.object_bytes()).unwrap(),
        vals(&[("a", "2"), ("b", "1"), ("q\"", "[5]")])
    );
}

#[test]
fn empty_points_are_stored() {
    let (_dir, db) = temp_db();
    insert_batch(&db, &[point("d", 5, &[])]).unwrap();
    assert_eq!(all(&db, "d").len(), 1);
    assert!(latest(&db, &id("d")).unwrap().is_empty());
}

#[test]
fn latest_keeps_the_newest_timestamp_per_key() {
    let (_dir, db) = temp_db();
    insert_batch(
        &db,
        &[
            point("d", 100, &[("a", "1"), ("b", "1")]),
            point("d", 200, &[("a", "2")]),
            point("other", 999, &[("a", "\"x\"")]),
        ],
    )
    .unwrap();
    // A late-arriving older point does not replace a newer value.
    insert_batch(&db, &[point("d", 150, &[("a", "\"late\""), ("c", "3")])]).unwrap();
    let l = latest(&db, &id("d")).unwrap();
    let got: Vec<(&str, &str, u64)> = l
        .iter()
        .map(|(k, v)| (k.as_str(), v.value.as_str(), v.ts_ms))
        .collect();
    assert_eq!(got, [("a", "2", 200), ("b", "1", 100), ("c", "3", 150)]);
    assert!(latest(&db, &id("nobody")).unwrap().is_empty());
}

#[test]
fn query_pages_through_thousands_of_points() {
    let (_dir, db) = temp_db();
    let points: Vec<NewPoint> = (0..3_000u64)
        .map(|i| {
            let n = i.to_string();
            if i % 3 == 0 {
                point("dev", 1_000 + i, &[("three", "true"), ("n", &n)])
            } else {
                point("dev", 1_000 + i, &[("n", &n)])
            }
        })
        .collect();
    insert_batch(&db, &points).unwrap();
    insert_batch(
        &db,
        &[
            point("dev0", 1_500, &[("n", "0")]),
            point("devz", 1_500, &[("n", "0")]),
        ],
    )
    .unwrap();
    let d = id("dev");

    // Every point, newest first, in pages of 256.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = query(
            &db,
            &d,
            &PointQuery {
                from_ms: 0,
                to_ms: u64::MAX,
                keys: None,
                limit: 256,
                cursor,
            },
        )
        .unwrap();
        assert!(page.points.len() <= 256);
        seen.extend(page.points.iter().map(|p| p.ts_ms));
        match page.next {
            Some(c) => cursor = Some(c.to_string().parse().unwrap()),
            None => break,
        }
    }
    let expected: Vec<u64> = (1_000..4_000).rev().collect();
    assert_eq!(seen, expected);

    // from/to are inclusive; keys filter drops points without those keys.
    let keys = vec!["three".to_owned()];
    let page = query(
        &db,
        &d,
        &PointQuery {
            from_ms: 1_003,
            to_ms: 1_012,
            keys: Some(&keys),
            limit: 3,
            cursor: None,
        },
    )
    .unwrap();
    let ts: Vec<u64> = page.points.iter().map(|p| p.ts_ms).collect();
    assert_eq!(ts, [1_012, 1_009, 1_006]);
    assert!(page
        .points
        .iter()
        .all(|p| p.values == vals(&[("three", "true")])));
    let rest = query(
        &db,
        &d,
        &PointQuery {
            from_ms: 1_003,
            to_ms: 1_012,
            keys: Some(&keys),
            limit: 3,
            cursor: page.next,
        },
    )
    .unwrap();
    assert_eq!(
        rest.points.iter().map(|p| p.ts_ms).collect::<Vec<_>>(),
        [1_003]
    );
    assert_eq!(rest.next, None);

    // An exactly-full last page has no cursor; an inverted range is empty.
    let q = |from_ms, to_ms, limit| {
        query(
            &db,
            &d,
            &PointQuery {
                from_ms,
                to_ms,
                keys: None,
                limit,
                cursor: None,
            },
        )
        .unwrap()
    };
    assert_eq!(q(3_998, 3_999, 2).next, None);
    assert_eq!(q(3_998, 3_999, 2).points.len(), 2);
    assert_eq!(q(5, 4, 10), Page::default());
    assert_eq!(q(4_000, u64::MAX, 10), Page::default());
    // limit 0 is read as 1.
    assert_eq!(q(0, u64::MAX, 0).points.len(), 1);
}

#[test]
fn query_scan_budget_ends_a_page_early_with_a_cursor() {
    let (_dir, db) = temp_db();
    let n = QUERY_SCAN_BUDGET as u64 + 10;
    let points: Vec<NewPoint> = (0..n).map(|i| point("d", i + 1, &[("a", "1")])).collect();
    insert_batch(&db, &[point("d", 0, &[("rare", "1")])]).unwrap();
    insert_batch(&db, &points).unwrap();
    let keys = vec!["rare".to_owned()];
    let mut q = PointQuery {
        from_ms: 0,
        to_ms: u64::MAX,
        keys: Some(&keys),
        limit: 10,
        cursor: None,
    };
    let first = query(&db, &id("d"), &q).unwrap();
    assert!(first.points.is_empty());
    q.cursor = Some(first.next.expect("budget cursor"));
    let second = query(&db, &id("d"), &q).unwrap();
    assert_eq!(second.points.len(), 1);
    assert_eq!(second.points[0].ts_ms, 0);
    assert_eq!(second.next, None);
}

#[test]
fn query_skips_corrupt_points() {
    let (_dir, db) = temp_db();
    insert_batch(
        &db,
        &[point("d", 1, &[("a", "1")]), point("d", 3, &[("a", "3")])],
    )
    .unwrap();
    put_raw_point(&db, &key_of("d", 2, u64::MAX), &[9, 9, 9]);
    let ts: Vec<u64> = all(&db, "d").iter().map(|p| p.ts_ms).collect();
    assert_eq!(ts, [3, 1]);
}

#[test]
fn delete_device_removes_only_that_device() {
    let (_dir, db) = temp_db();
    insert_batch(
        &db,
        &[
            point("a", 1, &[("k", "1")]),
            point("a", 2, &[("k", "2")]),
            point("ab", 1, &[("k", "3")]),
            point("a-", 1, &[("k", "4")]),
        ],
    )
    .unwrap();
    assert_eq!(delete_device(&db, &id("a")).unwrap(), 2);
    assert_eq!(delete_device(&db, &id("a")).unwrap(), 0);
    assert!(all(&db, "a").is_empty());
    assert!(latest(&db, &id("a")).unwrap().is_empty());
    assert_eq!(count(&db, &id("a")).unwrap(), 0);
    assert_eq!(all(&db, "ab").len(), 1);
    assert_eq!(all(&db, "a-").len(), 1);
    assert_eq!(latest(&db, &id("ab")).unwrap().len(), 1);
    assert_eq!(latest(&db, &id("a-")).unwrap().len(), 1);
}

#[test]
fn sweep_by_age_and_by_count() {
    let (_dir, db) = temp_db();
    let mut points: Vec<NewPoint> = (0..10u64)
        .map(|i| point("old", i * 10, &[("v", "1")]))
        .collect();
    points.extend((0..50u64).map(|i| point("many", 1_000 + i, &[("v", &i.to_string())])));
    points.push(point("fresh", 500, &[("v", "1")]));
    insert_batch(&db, &points).unwrap();

    // Cutoff 45: "old" keeps ts 50..=90; "many" keeps its newest 20.
    assert_eq!(sweep(&db, 45, 20).unwrap(), 5 + 30);
    let ts: Vec<u64> = all(&db, "old").iter().map(|p| p.ts_ms).collect();
    assert_eq!(ts, [90, 80, 70, 60, 50]);
    assert_eq!(count(&db, &id("old")).unwrap(), 5);
    let ts: Vec<u64> = all(&db, "many").iter().map(|p| p.ts_ms).collect();
    assert_eq!(ts, (1_030..1_050).rev().collect::<Vec<_>>());
    assert_eq!(count(&db, &id("many")).unwrap(), 20);
    assert_eq!(count(&db, &id("fresh")).unwrap(), 1);
    // Nothing left to do.
    assert_eq!(sweep(&db, 45, 20).unwrap(), 0);

    // Everything of "old" ages out, its latest values too; its count row goes.
    assert_eq!(sweep(&db, 100, 20).unwrap(), 5);
    assert_eq!(count(&db, &id("old")).unwrap(), 0);
    assert!(latest(&db, &id("old")).unwrap().is_empty());
    assert_eq!(latest(&db, &id("fresh")).unwrap().len(), 1);
    let txn = db.begin_read().unwrap();
    assert!(txn
        .open_table(LATEST)
        .unwrap()
        .get("old")
        .unwrap()
        .is_none());
}

#[test]
fn sweep_splits_large_removals_into_bounded_transactions() {
    let (_dir, db) = temp_db();
    let n = SWEEP_TXN_BUDGET * 2 + 123;
    let points: Vec<NewPoint> = (0..n).map(|i| point("big", i, &[("v", "1")])).collect();
    insert_batch(&db, &points).unwrap();
    insert_batch(&db, &[point("small", 1, &[("v", "1")])]).unwrap();
    assert_eq!(sweep(&db, 0, 10).unwrap(), n - 10);
    assert_eq!(count(&db, &id("big")).unwrap(), 10);
    assert_eq!(all(&db, "big").len(), 10);
    assert_eq!(all(&db, "big")[9].ts_ms, n - 10);
    assert_eq!(count(&db, &id("small")).unwrap(), 1);
}

#[test]
fn sweep_until_stops_between_transactions() {
    let (_dir, db) = temp_db();
    let n = SWEEP_TXN_BUDGET * 2;
    let points: Vec<NewPoint> = (0..n).map(|i| point("big", i, &[("v", "1")])).collect();
    insert_batch(&db, &points).unwrap();
    assert_eq!(sweep_until(&db, u64::MAX, 1, &|| true).unwrap(), 0);
    assert_eq!(count(&db, &id("big")).unwrap(), n);
    // Allow exactly one transaction.
    let calls = std::cell::Cell::new(0);
    let one = || {
        calls.set(calls.get() + 1);
        calls.get() > 1
    };
    assert_eq!(sweep_until(&db, 0, 1, &one).unwrap(), SWEEP_TXN_BUDGET);
    assert_eq!(count(&db, &id("big")).unwrap(), n - SWEEP_TXN_BUDGET);
    assert_eq!(sweep(&db, 0, 1).unwrap(), SWEEP_TXN_BUDGET - 1);
    assert_eq!(count(&db, &id("big")).unwrap(), 1);
}

#[test]
fn latest_keeps_the_most_recently_updated_keys() {
    let (_dir, db) = temp_db();
    let extra = 5u64;
    let points: Vec<NewPoint> = (0..MAX_LATEST_KEYS_PER_DEVICE as u64 + extra)
        .map(|i| point("d", 1_000 + i, &[(&format!("k{i:05}"), "1")]))
        .collect();
    insert_batch(&db, &points[..10]).unwrap();
    insert_batch(&db, &points[10..]).unwrap();
    let l = latest(&db, &id("d")).unwrap();
    assert_eq!(l.len(), MAX_LATEST_KEYS_PER_DEVICE);
    // The least recently updated keys went.
    assert!(!l.contains_key("k00000") && !l.contains_key("k00004"));
    assert!(l.contains_key("k00005"));
    assert_eq!(
        count(&db, &id("d")).unwrap(),
        MAX_LATEST_KEYS_PER_DEVICE as u64 + extra
    );
}

#[test]
fn corrupt_summaries_are_errors_then_rebuilt() {
    let (_dir, db) = temp_db();
    insert_batch(
        &db,
        &[point("d", 1, &[("a", "1")]), point("d", 2, &[("a", "2")])],
    )
    .unwrap();
    put_raw_summary(&db, "d", &[7, 7]);
    assert!(matches!(
        count(&db, &id("d")),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        latest(&db, &id("d")),
        Err(StoreError::Corrupt { .. })
    ));
    // A write rebuilds the count from the points.
    insert_batch(&db, &[point("d", 3, &[("b", "3")])]).unwrap();
    assert_eq!(count(&db, &id("d")).unwrap(), 3);
    assert_eq!(
        latest(&db, &id("d")).unwrap().keys().collect::<Vec<_>>(),
        ["b"]
    );
    // So does a sweep.
    put_raw_summary(&db, "d", &[7, 7]);
    assert_eq!(sweep(&db, 2, 100).unwrap(), 1);
    assert_eq!(count(&db, &id("d")).unwrap(), 2);
    assert!(latest(&db, &id("d")).unwrap().is_empty());
}

#[test]
fn points_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    {
        let db = Database::create(&path).unwrap();
        insert_batch(
            &db,
            &[point("d", 1, &[("a", "1")]), point("d", 2, &[("a", "2")])],
        )
        .unwrap();
    }
    let db = Database::create(&path).unwrap();
    assert_eq!(count(&db, &id("d")).unwrap(), 2);
    assert_eq!(all(&db, "d").len(), 2);
    // The sequence continues instead of restarting at 0 and overwriting.
    insert_batch(&db, &[point("d", 1, &[("a", "\"again\"")])]).unwrap();
    assert_eq!(all(&db, "d").len(), 3);
}

/// The summary as session 5 wrote it (`StoredSummary::V1`).
pub(super) fn encode_summary_v1(s: SummaryV1) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_allocvec(&StoredSummary::V1(s)).unwrap())
}

proptest! {
    /// `sort_rows` numbers devices and counts rows into place; it must give the order
    /// of a stable sort by (device, ts), which is (device, ts, seq).
    #[test]
    fn sort_rows_matches_a_stable_sort_by_device_and_ts(
        rows in proptest::collection::vec((0..6usize, 0..20u64), 0..200),
    ) {
        const DEVICES: [&[u8]; 6] = [b"b", b"a", b"a-1", b"ab", b"z", b"fleet-10"];
        let object: &[u8] = b"{}";
        let given: Vec<Row<'_>> = rows
            .iter()
            .zip(100u64..)
            .map(|(&(d, ts_ms), seq)| Row {
                device: DEVICES[d],
                point: RawRef { ts_ms, seq, object },
                shape: 0,
            })
            .collect();
        let mut want = given.clone();
        want.sort_by(|a, b| (a.device, a.point.ts_ms).cmp(&(b.device, b.point.ts_ms)));
        let got = sort_rows(given.into_iter());
        let key = |r: &Row<'_>| (r.device.to_vec(), r.point.ts_ms, r.point.seq);
        prop_assert_eq!(
            got.iter().map(key).collect::<Vec<_>>(),
            want.iter().map(key).collect::<Vec<_>>()
        );
    }
}
