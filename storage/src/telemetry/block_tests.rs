//! Blocks: golden bytes, bad records, and queries and retention over blocks that
//! overlap in time, checked against a plain list of points; rows of the format before
//! blocks after an upgrade.

use super::block::{
    bucket, decode_block, encode_block, BlockPointV1, BlockV1, PointRef, StoredBlock, BLOCK_SPAN_MS,
};
use super::retention::{migrate_step, SWEEP_TXN_BUDGET};
use super::tests::{encode_summary_v1, id, temp_db, vals};
use super::*;
use proptest::prelude::*;
use redb::ReadableTableMetadata as _;

use crate::test_support::hex;

fn refs(points: &[Point]) -> impl ExactSizeIterator<Item = PointRef<'_>> + Clone {
    points.iter().map(|p| PointRef {
        ts_ms: p.ts_ms,
        seq: p.seq,
        values: &p.values,
    })
}

fn pt(ts_ms: u64, seq: u64, pairs: &[(&str, &str)]) -> Point {
    Point {
        ts_ms,
        seq,
        values: vals(pairs),
    }
}

fn encode(max_ts: u64, id: u64, points: &[Point]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_block(max_ts, id, refs(points), &mut buf).expect("encodable block");
    buf
}

fn rows(db: &Database, def: TableDefinition<'static, &[u8], &[u8]>) -> usize {
    let txn = db.begin_read().unwrap();
    match open_read(&txn, def).unwrap() {
        Some(t) => t.len().unwrap() as usize,
        None => 0,
    }
}

/// Every page of `device`'s points in `[from, to]`, `limit` at a time, each cursor
/// passed through its string form; checks that only the last page is short.
fn pages(db: &Database, device: &str, from_ms: u64, to_ms: u64, limit: usize) -> Vec<Point> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = query(
            db,
            &id(device),
            &PointQuery {
                from_ms,
                to_ms,
                keys: None,
                limit,
                cursor,
            },
        )
        .unwrap();
        out.extend(page.points.iter().cloned());
        match page.next {
            Some(c) => {
                assert_eq!(page.points.len(), limit, "only the last page is short");
                cursor = Some(c.to_string().parse().unwrap());
            }
            None => break,
        }
    }
    out
}

/// The model: what a device's history must read as, newest first.
fn newest_first(model: &[Point], from_ms: u64, to_ms: u64) -> Vec<Point> {
    let mut m: Vec<Point> = model
        .iter()
        .filter(|p| (from_ms..=to_ms).contains(&p.ts_ms))
        .cloned()
        .collect();
    m.sort_by_key(|p| std::cmp::Reverse((p.ts_ms, p.seq)));
    m
}

/// Stores `batches` of `(device, ts)` and returns the model of device "d" (each
/// point's value is its arrival number, so every point is told apart).
fn store(db: &Database, batches: &[Vec<(&str, u64)>]) -> Vec<Point> {
    let mut model = Vec::new();
    let mut seq = 0u64;
    for batch in batches {
        let points: Vec<NewPoint> = batch
            .iter()
            .map(|&(dev, ts)| {
                let n = seq.to_string();
                if dev == "d" {
                    model.push(pt(ts, seq, &[("n", &n)]));
                }
                seq += 1;
                NewPoint::new(id(dev), ts, vals(&[("n", &n)]))
            })
            .collect();
        insert_batch(db, &points).unwrap();
    }
    model
}

// ---- records -------------------------------------------------------------------

#[test]
fn golden_block_v1() {
    let points = [
        pt(1_990, 7, &[("cpu", "40")]),
        pt(1_990, 9, &[]),
        pt(1_999, 8, &[("cpu", "41"), ("on", "true")]),
    ];
    let bytes = encode(1_999, 7, &points);
    assert_eq!(
        hex(&bytes),
        "000309000103637075023430090200000102036370750234310\
         26f6e0474727565"
    );
    assert_eq!(decode_block("d", 1_999, 7, &bytes).unwrap(), points);
    assert_eq!(
        block::block_header("d", 1_999, 7, &bytes).unwrap(),
        (3, 1_990)
    );
}

#[test]
fn buckets_are_whole_seconds() {
    assert_eq!(BLOCK_SPAN_MS, 1_000);
    assert_eq!(bucket(0), (0, 999));
    assert_eq!(bucket(1_999), (1_000, 1_999));
    assert_eq!(bucket(2_000), (2_000, 2_999));
    let (start, last) = bucket(u64::MAX);
    assert_eq!((start, last), (u64::MAX - u64::MAX % 1_000, u64::MAX));
}

#[test]
fn blocks_that_would_not_decode_are_not_written() {
    let mut buf = Vec::new();
    let cases: [(u64, u64, Vec<Point>); 5] = [
        (10, 0, vec![]),
        (10, 0, vec![pt(11, 0, &[])]),
        (1_000, 0, vec![pt(999, 0, &[])]),
        (10, 5, vec![pt(10, 4, &[])]),
        (10, 0, vec![pt(10, 2, &[]), pt(10, 1, &[])]),
    ];
    for (max_ts, block_id, points) in cases {
        assert!(encode_block(max_ts, block_id, refs(&points), &mut buf).is_err());
    }
}

#[test]
fn bad_blocks_are_corrupt_errors() {
    let good = encode(10, 3, &[pt(9, 3, &[("a", "1")]), pt(10, 4, &[("a", "2")])]);
    let mut trailing = good.clone();
    trailing.push(0);
    let raw = |points: Vec<BlockPointV1>| {
        postcard::to_allocvec(&StoredBlock::V1(BlockV1 { points })).unwrap()
    };
    let p = |ts_back, seq_off, values: &[(&str, &str)]| BlockPointV1 {
        ts_back,
        seq_off,
        values: vals(values),
    };
    let cases = [
        trailing,
        vec![1, 0],
        vec![],
        good[..5].to_vec(),
        raw(vec![]),
        // Before the bucket of max_ts, or before time began.
        raw(vec![p(11, 0, &[])]),
        raw(vec![p(11, 0, &[]), p(0, 1, &[])]),
        // Out of order, repeated, unordered keys, seq overflowing.
        raw(vec![p(0, 0, &[]), p(1, 1, &[])]),
        raw(vec![p(0, 1, &[]), p(0, 1, &[])]),
        raw(vec![p(0, 1, &[("b", "1"), ("a", "1")])]),
        raw(vec![p(0, u64::MAX, &[])]),
    ];
    for bytes in &cases {
        let err = decode_block("dev", 10, 3, bytes).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "telemetry_blocks", key, .. } if key == "dev@10#3"),
            "{bytes:?}: {err:?}"
        );
    }
    for bytes in [
        &[][..],
        &[2, 1, 0],
        &[0, 0, 0],
        &[0, 1, 11],
        &[0, 1],
        &[1, 0, 0],
    ] {
        assert!(
            block::block_header("dev", 10, 3, bytes).is_err(),
            "{bytes:?}"
        );
    }
}

proptest! {
    #[test]
    fn decoding_arbitrary_blocks_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        max_ts in any::<u64>(),
        block_id in any::<u64>(),
    ) {
        let _ = decode_block("d", max_ts, block_id, &bytes);
        let _ = block::block_header("d", max_ts, block_id, &bytes);
    }

    #[test]
    fn block_encoding_matches_postcard(
        points in proptest::collection::vec(
            (0..999u64, proptest::collection::btree_map(".{0,8}", ".{0,40}", 0..5)),
            1..40,
        ),
        base in 0..u64::MAX / 2,
    ) {
        let mut points: Vec<Point> = points
            .into_iter()
            .enumerate()
            .map(|(i, (ts, values))| Point {
                ts_ms: 5_000 + ts,
                seq: base + i as u64,
                values: values.into_iter().collect(),
            })
            .collect();
        points.sort_by_key(|p| (p.ts_ms, p.seq));
        let max_ts = points.last().unwrap().ts_ms;
        let bytes = encode(max_ts, base, &points);
        let serde = StoredBlock::V1(BlockV1 {
            points: points
                .iter()
                .map(|p| BlockPointV1 {
                    ts_back: max_ts - p.ts_ms,
                    seq_off: p.seq - base,
                    values: p.values.clone(),
                })
                .collect(),
        });
        prop_assert_eq!(&bytes, &postcard::to_allocvec(&serde).unwrap());
        prop_assert_eq!(decode_block("d", max_ts, base, &bytes).unwrap(), points);
    }
}

// ---- queries -----------------------------------------------------------------

#[test]
fn a_batch_is_one_block_per_device_and_second() {
    let (_dir, db) = temp_db();
    let model = store(
        &db,
        &[vec![
            ("d", 1_500),
            ("e", 1_500),
            ("d", 999),
            ("d", 1_000),
            ("d", 1_999),
            ("d", 2_000),
            ("e", 1_501),
        ]],
    );
    // d: buckets 0, 1 and 2; e: bucket 1.
    assert_eq!(rows(&db, BLOCKS), 4);
    assert_eq!(rows(&db, POINTS), 0);
    assert_eq!(
        pages(&db, "d", 0, u64::MAX, 2),
        newest_first(&model, 0, u64::MAX)
    );
    assert_eq!(
        pages(&db, "d", 1_000, 1_999, 1),
        newest_first(&model, 1_000, 1_999)
    );
    assert_eq!(pages(&db, "e", 0, u64::MAX, 10).len(), 2);
    assert_eq!(count(&db, &id("d")).unwrap(), 5);
}

#[test]
fn timestamps_going_backwards_across_blocks_read_in_order() {
    let (_dir, db) = temp_db();
    // Each batch overlaps the ones before it inside the same seconds, and equal
    // timestamps recur in later batches.
    let model = store(
        &db,
        &[
            vec![("d", 1_100), ("d", 1_900), ("d", 2_050)],
            vec![("d", 1_050), ("d", 1_900), ("d", 1_950), ("x", 1_500)],
            vec![("d", 2_010), ("d", 1_000), ("d", 1_900)],
            vec![("d", 500), ("d", 2_050)],
        ],
    );
    for limit in [1, 2, 3, 5, 100] {
        assert_eq!(
            pages(&db, "d", 0, u64::MAX, limit),
            newest_first(&model, 0, u64::MAX),
            "limit {limit}"
        );
    }
    assert_eq!(
        pages(&db, "d", 1_050, 1_950, 2),
        newest_first(&model, 1_050, 1_950)
    );
    // Equal timestamps keep arrival order: the three at 1900, newest arrival first.
    let at_1900: Vec<String> = pages(&db, "d", 1_900, 1_900, 1)
        .iter()
        .map(|p| p.values[0].1.clone())
        .collect();
    assert_eq!(at_1900, ["9", "4", "1"]);
}

#[test]
fn a_cursor_of_the_format_before_blocks_still_pages() {
    let (_dir, db) = temp_db();
    let model = store(&db, &[vec![("d", 10), ("d", 20), ("d", 30)]]);
    let page = query(
        &db,
        &id("d"),
        &PointQuery {
            from_ms: 0,
            to_ms: u64::MAX,
            keys: None,
            limit: 10,
            cursor: Some("20.1".parse().unwrap()),
        },
    )
    .unwrap();
    assert_eq!(page.points, newest_first(&model, 0, 19));
}

#[test]
fn query_skips_a_corrupt_block() {
    let (_dir, db) = temp_db();
    let model = store(&db, &[vec![("d", 100)], vec![("d", 2_100)]]);
    let txn = db.begin_write().unwrap();
    txn.open_table(BLOCKS)
        .unwrap()
        .insert(key_of("d", 1_500, 99).as_slice(), &[9u8, 9, 9][..])
        .unwrap();
    txn.commit().unwrap();
    assert_eq!(
        pages(&db, "d", 0, u64::MAX, 1),
        newest_first(&model, 0, u64::MAX)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random batches with timestamps jumping back and forth over a few seconds: every
    /// page size reads the model's order, before and after retention cuts blocks.
    #[test]
    fn blocks_read_and_sweep_like_a_list_of_points(
        batches in proptest::collection::vec(proptest::collection::vec(0..4_000u64, 1..30), 1..8),
        limit in 1..12usize,
        cutoff in 0..4_500u64,
        cap in 0..80u64,
    ) {
        let (_dir, db) = temp_db();
        let batches: Vec<Vec<(&str, u64)>> = batches
            .iter()
            .map(|b| b.iter().map(|&ts| ("d", ts)).collect())
            .collect();
        let mut model = store(&db, &batches);
        prop_assert_eq!(pages(&db, "d", 0, u64::MAX, limit), newest_first(&model, 0, u64::MAX));
        prop_assert_eq!(pages(&db, "d", 1_200, 2_600, limit), newest_first(&model, 1_200, 2_600));

        let before = model.len() as u64;
        model.retain(|p| p.ts_ms >= cutoff);
        let mut keep = newest_first(&model, 0, u64::MAX);
        keep.truncate(usize::try_from(cap).unwrap());
        let removed = sweep(&db, cutoff, cap).unwrap();
        prop_assert_eq!(removed, before - keep.len() as u64);
        prop_assert_eq!(count(&db, &id("d")).unwrap(), keep.len() as u64);
        prop_assert_eq!(pages(&db, "d", 0, u64::MAX, limit), keep);
        prop_assert_eq!(sweep(&db, cutoff, cap).unwrap(), 0);
    }
}

// ---- retention -----------------------------------------------------------------

#[test]
fn retention_cuts_the_partial_block_and_keeps_its_key() {
    let (_dir, db) = temp_db();
    let model = store(
        &db,
        &[
            vec![("d", 100), ("d", 400), ("d", 900)],
            vec![("d", 300), ("d", 950)],
            vec![("d", 1_200)],
        ],
    );
    // Age: 300 goes from the second block, 100 from the first.
    assert_eq!(sweep(&db, 350, 100).unwrap(), 2);
    assert_eq!(rows(&db, BLOCKS), 3);
    assert_eq!(
        pages(&db, "d", 0, u64::MAX, 2),
        newest_first(&model, 350, u64::MAX)
    );
    // Cap 2: keeps 1200 and 950; the first block (400, 900) goes whole, the second
    // keeps 950.
    assert_eq!(sweep(&db, 350, 2).unwrap(), 2);
    assert_eq!(rows(&db, BLOCKS), 2);
    let ts: Vec<u64> = pages(&db, "d", 0, u64::MAX, 1)
        .iter()
        .map(|p| p.ts_ms)
        .collect();
    assert_eq!(ts, [1_200, 950]);
    assert_eq!(count(&db, &id("d")).unwrap(), 2);
}

#[test]
fn sweep_removes_corrupt_blocks_in_its_way_and_recounts() {
    let (_dir, db) = temp_db();
    store(&db, &[vec![("d", 100), ("d", 5_000)]]);
    let txn = db.begin_write().unwrap();
    txn.open_table(BLOCKS)
        .unwrap()
        .insert(key_of("d", 200, 99).as_slice(), &[7u8][..])
        .unwrap();
    txn.commit().unwrap();
    assert_eq!(sweep(&db, 1_000, 100).unwrap(), 1);
    assert_eq!(rows(&db, BLOCKS), 1);
    assert_eq!(count(&db, &id("d")).unwrap(), 1);
}

// ---- the format before blocks ------------------------------------------------

/// Writes points the way the store did before blocks: one row per point, the summary
/// and the sequence counter.
fn put_old_points(db: &Database, device: &str, points: &[(u64, u64, &str)]) {
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(POINTS).unwrap();
        for &(ts, seq, v) in points {
            let bytes = encode_point(&vals(&[("n", v)]), Vec::new()).unwrap();
            table
                .insert(key_of(device, ts, seq).as_slice(), bytes.as_slice())
                .unwrap();
        }
        let newest = points.iter().max_by_key(|p| (p.0, p.1)).unwrap();
        let summary = SummaryV1 {
            points: points.len() as u64,
            latest: vec![LatestV1 {
                key: "n".into(),
                ts_ms: newest.0,
                seq: newest.1,
                value: newest.2.into(),
            }],
        };
        txn.open_table(LATEST)
            .unwrap()
            .insert(device, encode_summary_v1(summary).unwrap().as_slice())
            .unwrap();
        let next = points.iter().map(|p| p.1 + 1).max().unwrap();
        let mut meta = txn.open_table(META).unwrap();
        let at = meta.get(NEXT_SEQ).unwrap().map_or(0, |v| v.value());
        meta.insert(NEXT_SEQ, at.max(next)).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn rows_before_blocks_are_read_moved_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let old: Vec<(u64, u64, String)> = (0..2_500u64)
        .map(|i| (1_000 + i * 3, i, format!("old{i}")))
        .collect();
    let old_refs: Vec<(u64, u64, &str)> =
        old.iter().map(|(t, s, v)| (*t, *s, v.as_str())).collect();
    {
        let db = Database::create(&path).unwrap();
        put_old_points(&db, "d", &old_refs);
        put_old_points(&db, "e", &[(5, 2_500, "e")]);
    }
    // Opened after the upgrade: nothing moves at open.
    let db = Database::create(&path).unwrap();
    assert_eq!(rows(&db, POINTS), 2_501);
    let mut model: Vec<Point> = old
        .iter()
        .map(|(t, s, v)| pt(*t, *s, &[("n", v)]))
        .collect();
    // New points land between and on top of the old ones, in blocks.
    let new = [
        (1_001, "\"a\""),
        (4_000, "\"b\""),
        (9_000, "\"c\""),
        (4_000, "\"d\""),
    ];
    let batch: Vec<NewPoint> = new
        .iter()
        .map(|(ts, v)| NewPoint::new(id("d"), *ts, vals(&[("n", v)])))
        .collect();
    insert_batch(&db, &batch).unwrap();
    model.extend(
        new.iter()
            .zip(2_501..)
            .map(|((ts, v), seq)| pt(*ts, seq, &[("n", v)])),
    );
    let everything = newest_first(&model, 0, u64::MAX);
    assert_eq!(count(&db, &id("d")).unwrap(), 2_504);
    assert_eq!(pages(&db, "d", 0, u64::MAX, 97), everything);
    assert_eq!(latest(&db, &id("d")).unwrap()["n"].value, "\"c\"");

    // Moved in bounded steps; a page reads the same before, between and after.
    assert_eq!(migrate_step(&db, 1_000).unwrap(), 1_000);
    assert_eq!(rows(&db, POINTS), 1_501);
    assert_eq!(pages(&db, "d", 0, u64::MAX, 97), everything);
    drop(db);
    let db = Database::create(&path).unwrap();
    assert_eq!(pages(&db, "d", 0, u64::MAX, 1_000), everything);
    assert_eq!(pages(&db, "e", 0, u64::MAX, 10).len(), 1);

    // The sweep moves the rest first, then applies retention to blocks only.
    // "d": 335 points before 2000, then 1,169 beyond the cap; "e": its one point.
    assert_eq!(sweep(&db, 2_000, 1_000).unwrap(), 335 + 1_169 + 1);
    assert_eq!(rows(&db, POINTS), 0);
    let kept = {
        let mut m = newest_first(&model, 2_000, u64::MAX);
        m.truncate(1_000);
        m
    };
    assert_eq!(pages(&db, "d", 0, u64::MAX, 33), kept);
    assert_eq!(count(&db, &id("d")).unwrap(), 1_000);
    assert_eq!(count(&db, &id("e")).unwrap(), 0);
    assert_eq!(migrate_step(&db, 1_000).unwrap(), 0);
    assert_eq!(sweep(&db, 2_000, 1_000).unwrap(), 0);

    // And the store goes on after a restart.
    drop(db);
    let db = Database::create(&path).unwrap();
    assert_eq!(pages(&db, "d", 0, u64::MAX, 1_000), kept);
    insert_batch(
        &db,
        &[NewPoint::new(id("d"), 9_000, vals(&[("n", "\"z\"")]))],
    )
    .unwrap();
    let top = pages(&db, "d", 9_000, 9_000, 1);
    assert_eq!(top.len(), 2);
    assert_eq!(top[0].values, vals(&[("n", "\"z\"")]));
    assert!(top[0].seq > top[1].seq);
}

#[test]
fn a_corrupt_old_row_is_dropped_when_moved() {
    let (_dir, db) = temp_db();
    put_old_points(&db, "d", &[(1, 0, "a"), (2, 1, "b"), (3, 2, "c")]);
    let txn = db.begin_write().unwrap();
    txn.open_table(POINTS)
        .unwrap()
        .insert(key_of("d", 2, 1).as_slice(), &[9u8, 9][..])
        .unwrap();
    txn.commit().unwrap();
    assert_eq!(migrate_step(&db, SWEEP_TXN_BUDGET).unwrap(), 3);
    let ts: Vec<u64> = pages(&db, "d", 0, u64::MAX, 5)
        .iter()
        .map(|p| p.ts_ms)
        .collect();
    assert_eq!(ts, [3, 1]);
    assert_eq!(count(&db, &id("d")).unwrap(), 2);
    // Deleting the device counts what its blocks held.
    assert_eq!(delete_device(&db, &id("d")).unwrap(), 2);
    assert_eq!(rows(&db, BLOCKS), 0);
}
