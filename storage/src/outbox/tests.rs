//! Golden-byte, corruption and behaviour tests for the outbox tables.

use std::sync::Arc;

use super::records::{encode_delivery, encode_state};
use super::*;
use crate::test_support::hex;

fn temp_db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("outbox.redb")).unwrap();
    write(&db, Durability::Immediate, create_tables).unwrap();
    (dir, db)
}

fn event(n: u32) -> NewDelivery {
    NewDelivery {
        event_id: format!("ev{n}"),
        event_type: "device.online".into(),
        body: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

const A: &str = "http://a/hook";
const B: &str = "http://b/hook";
const LIMITS: OutboxLimits = OutboxLimits {
    max_owed_per_url: 100,
    max_dead: 100,
};

fn urls(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn put_raw(db: &Database, id: u64, bytes: &[u8]) {
    write(db, Durability::Immediate, |txn| {
        txn.open_table(DELIVERIES)?.insert(id, bytes)?;
        Ok(())
    })
    .unwrap();
}

fn sample_delivery() -> DeliveryV1 {
    DeliveryV1 {
        url: "http://h/x".into(),
        event_id: "0000018e00000000000000ff".into(),
        event_type: "device.online".into(),
        body: b"{}".to_vec(),
        created_at_ms: 1_000,
        attempts: 2,
        last_attempt_at_ms: Some(2_000),
        last_error: Some("HTTP 500".into()),
        dead_at_ms: None,
    }
}

#[test]
fn golden_bytes() {
    let d = sample_delivery();
    let bytes = encode_delivery(&d).unwrap();
    assert_eq!(
        hex(&bytes),
        concat!(
            "00",                                                 // V1
            "0a687474703a2f2f682f78",                             // url
            "18303030303031386530303030303030303030303030306666", // event_id
            "0d6465766963652e6f6e6c696e65",                       // event_type
            "027b7d",                                             // body
            "e807",                                               // created_at_ms
            "02",                                                 // attempts
            "01d00f",                                             // last_attempt_at_ms
            "01084854545020353030",                               // last_error
            "00",                                                 // dead_at_ms
        )
    );
    assert_eq!(decode_delivery(1, &bytes).unwrap(), d);

    let s = UrlStateV1 {
        owed: 3,
        failures: 4,
        failing_since_ms: Some(5_000),
        next_attempt_at_ms: 6_000,
    };
    let bytes = encode_state(&s).unwrap();
    assert_eq!(hex(&bytes), "000304018827f02e");
    assert_eq!(decode_state("u", &bytes).unwrap(), s);
}

#[test]
fn undecodable_bytes_are_errors_not_panics() {
    let good = encode_delivery(&sample_delivery()).unwrap();
    let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    cases.push([good.as_slice(), &[0]].concat()); // trailing byte
    cases.push([&[1u8][..], &good[1..]].concat()); // unknown version
    for i in 0..good.len() {
        let mut flipped = good.clone();
        flipped[i] ^= 0xff;
        cases.push(flipped);
    }
    for bytes in &cases {
        // Some flips still decode (e.g. inside a string); none may panic.
        if let Err(e) = decode_delivery(7, bytes) {
            assert!(
                matches!(
                    e,
                    StoreError::Corrupt {
                        table: "outbox_deliveries",
                        ..
                    }
                ),
                "{e}"
            );
        }
    }
    assert!(decode_delivery(7, &good[..good.len() - 1]).is_err());
    assert!(decode_delivery(7, &cases[good.len()]).is_err());
    assert!(decode_state("u", &[0xff, 0xff]).is_err());
}

#[test]
fn each_url_gets_its_events_in_order() {
    let (_dir, db) = temp_db();
    for n in 0..3 {
        let out = enqueue(&db, &event(n), &urls(&[A, B]), 1_000, LIMITS).unwrap();
        assert!(out.iter().all(|o| matches!(o, Enqueued::Queued(_))));
    }
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 6, dead: 0 });
    for n in 0..3 {
        let due = next_due(&db, A).unwrap().unwrap();
        assert_eq!(due.event_id, format!("ev{n}"));
        assert_eq!(due.body, format!("{{\"n\":{n}}}").into_bytes());
        assert_eq!((due.attempts, due.failures, due.not_before_ms), (0, 0, 0));
        delivered(&db, A, due.id).unwrap();
        // Marking twice is harmless.
        delivered(&db, A, due.id).unwrap();
    }
    assert!(next_due(&db, A).unwrap().is_none());
    assert_eq!(next_due(&db, B).unwrap().unwrap().event_id, "ev0");
    assert_eq!(counts(&db).unwrap().owed, 3);
}

#[test]
fn ids_never_repeat_after_deliveries() {
    let (_dir, db) = temp_db();
    let first = enqueue(&db, &event(0), &urls(&[A]), 1, LIMITS).unwrap()[0];
    let Enqueued::Queued(id) = first else {
        panic!("{first:?}")
    };
    delivered(&db, A, id).unwrap();
    let second = enqueue(&db, &event(1), &urls(&[A]), 1, LIMITS).unwrap()[0];
    assert_eq!(second, Enqueued::Queued(id + 1));
}

#[test]
fn a_full_url_drops_new_events_for_it_only() {
    let (_dir, db) = temp_db();
    let limits = OutboxLimits {
        max_owed_per_url: 2,
        ..LIMITS
    };
    enqueue(&db, &event(0), &urls(&[A]), 1, limits).unwrap();
    enqueue(&db, &event(1), &urls(&[A]), 1, limits).unwrap();
    let out = enqueue(&db, &event(2), &urls(&[A, B]), 1, limits).unwrap();
    assert_eq!(out[0], Enqueued::Full);
    assert!(matches!(out[1], Enqueued::Queued(_)));
    // Room again after a delivery.
    let head = next_due(&db, A).unwrap().unwrap();
    delivered(&db, A, head.id).unwrap();
    let out = enqueue(&db, &event(3), &urls(&[A]), 1, limits).unwrap();
    assert!(matches!(out[0], Enqueued::Queued(_)));
}

#[test]
fn attempted_deliveries_are_failed_and_those_behind_them_pending() {
    let (_dir, db) = temp_db();
    for n in 0..2 {
        enqueue(&db, &event(n), &urls(&[A, B]), 1_000, LIMITS).unwrap();
    }
    let head = next_due(&db, A).unwrap().unwrap();
    failed(&db, A, head.id, 2_000, "HTTP 500", 3_000).unwrap();
    failed(&db, A, head.id, 3_000, "HTTP 503", 5_000).unwrap();

    let again = next_due(&db, A).unwrap().unwrap();
    assert_eq!((again.id, again.attempts, again.failures), (head.id, 2, 2));
    assert_eq!(again.not_before_ms, 5_000);

    let (failed_list, next) = list(&db, Some(DeliveryStatus::Failed), None, 10).unwrap();
    assert_eq!(next, None);
    assert_eq!(
        failed_list.len(),
        1,
        "only the attempted one: {failed_list:?}"
    );
    let h = &failed_list[0];
    assert_eq!((h.url.as_str(), h.id), (A, head.id));
    assert_eq!((h.attempts, h.next_attempt_at_ms), (2, Some(5_000)));
    assert_eq!(h.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(h.last_attempt_at_ms, Some(3_000));
    // The one queued behind the failing head was never attempted: pending.
    let (pending, _) = list(&db, Some(DeliveryStatus::Pending), None, 10).unwrap();
    assert_eq!(pending.len(), 3);
    let behind: Vec<_> = pending.iter().filter(|d| d.url == A).collect();
    assert_eq!(behind.len(), 1);
    assert_eq!(
        (behind[0].attempts, behind[0].next_attempt_at_ms),
        (0, None)
    );
    let (only_b, _) = list_for(&db, Some(B), None, None, 10).unwrap();
    assert_eq!(only_b.len(), 2);
    assert!(only_b.iter().all(|d| d.url == B));

    delivered(&db, A, head.id).unwrap();
    let next = next_due(&db, A).unwrap().unwrap();
    assert_eq!((next.failures, next.not_before_ms), (0, 0));
    let (all, _) = list(&db, None, None, 10).unwrap();
    assert!(all.iter().all(|d| d.status == DeliveryStatus::Pending));
}

#[test]
fn retry_cuts_the_backoff_short_and_requeues_a_dead_delivery() {
    let (_dir, db) = temp_db();
    for n in 0..2 {
        enqueue(&db, &event(n), &urls(&[A]), 0, LIMITS).unwrap();
    }
    let head = next_due(&db, A).unwrap().unwrap();
    failed(&db, A, head.id, 10, "HTTP 500", 60_000).unwrap();
    assert_eq!(next_due(&db, A).unwrap().unwrap().not_before_ms, 60_000);
    assert_eq!(retry(&db, head.id).unwrap(), A);
    let due = next_due(&db, A).unwrap().unwrap();
    assert_eq!((due.id, due.not_before_ms, due.failures), (head.id, 0, 1));

    // Give both up, then bring the first back: it is owed again, first in line.
    assert_eq!(give_up_expired(&db, A, 100_000, 1, LIMITS).unwrap(), 2);
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 0, dead: 2 });
    retry(&db, head.id).unwrap();
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 1, dead: 1 });
    let due = next_due(&db, A).unwrap().unwrap();
    assert_eq!((due.id, due.not_before_ms), (head.id, 0));
    // A fresh streak: its next failure does not give it up at once.
    failed(&db, A, head.id, 200_000, "HTTP 500", 200_001).unwrap();
    assert_eq!(give_up_expired(&db, A, 200_000, 1_000, LIMITS).unwrap(), 0);
    assert!(matches!(retry(&db, 999), Err(StoreError::NotFound { .. })));
}

#[test]
fn discard_removes_owed_and_dead_deliveries() {
    let (_dir, db) = temp_db();
    for n in 0..3 {
        enqueue(&db, &event(n), &urls(&[A]), 0, LIMITS).unwrap();
    }
    let head = next_due(&db, A).unwrap().unwrap();
    failed(&db, A, head.id, 10, "HTTP 500", 60_000).unwrap();
    let gone = discard(&db, head.id).unwrap();
    assert_eq!((gone.url.as_str(), gone.was_owed), (A, true));
    // What waited behind it is due now.
    let due = next_due(&db, A).unwrap().unwrap();
    assert_eq!((due.event_id.as_str(), due.not_before_ms), ("ev1", 0));
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 2, dead: 0 });
    assert!(matches!(
        discard(&db, head.id),
        Err(StoreError::NotFound { .. })
    ));

    assert_eq!(abandon(&db, A, 5, "gone", LIMITS).unwrap(), 2);
    let gone = discard(&db, due.id).unwrap();
    assert!(!gone.was_owed);
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 0, dead: 1 });
    let (all, _) = list(&db, None, None, 10).unwrap();
    assert_eq!(all.len(), 1);
}

#[test]
fn give_up_takes_what_the_streak_outlasted() {
    let (_dir, db) = temp_db();
    enqueue(&db, &event(0), &urls(&[A, B]), 0, LIMITS).unwrap();
    enqueue(&db, &event(1), &urls(&[A]), 500, LIMITS).unwrap();
    enqueue(&db, &event(2), &urls(&[A]), 2_000, LIMITS).unwrap();
    // No failure yet: nothing to give up.
    assert_eq!(give_up_expired(&db, A, 10_000, 1_000, LIMITS).unwrap(), 0);
    let head = next_due(&db, A).unwrap().unwrap();
    failed(&db, A, head.id, 100, "refused", 200).unwrap();
    // Streak began at 100: ev0 (created 0) and ev1 (created 500) count from 100 and
    // 500; at 1_400 only ev0 has been failing for 1_000 ms.
    assert_eq!(give_up_expired(&db, A, 1_400, 1_000, LIMITS).unwrap(), 1);
    assert_eq!(give_up_expired(&db, A, 1_400, 1_000, LIMITS).unwrap(), 0);
    assert_eq!(give_up_expired(&db, A, 1_500, 1_000, LIMITS).unwrap(), 1);
    assert_eq!(next_due(&db, A).unwrap().unwrap().event_id, "ev2");
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 2, dead: 2 });

    let (dead, _) = list(&db, Some(DeliveryStatus::Dead), None, 10).unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].last_error.as_deref(), Some("refused"));
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[1]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("gave up"),
        "{:?}",
        dead[1]
    );
    // B is not affected.
    assert_eq!(next_due(&db, B).unwrap().unwrap().event_id, "ev0");
}

#[test]
fn dead_deliveries_are_capped_oldest_first() {
    let (_dir, db) = temp_db();
    let limits = OutboxLimits {
        max_dead: 2,
        ..LIMITS
    };
    for n in 0..4 {
        enqueue(&db, &event(n), &urls(&[A]), 0, limits).unwrap();
    }
    let head = next_due(&db, A).unwrap().unwrap();
    failed(&db, A, head.id, 0, "x", 1).unwrap();
    assert_eq!(give_up_expired(&db, A, 10, 10, limits).unwrap(), 4);
    let (dead, _) = list(&db, Some(DeliveryStatus::Dead), None, 10).unwrap();
    let ids: Vec<_> = dead.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, ["ev2", "ev3"]);
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 0, dead: 2 });
}

#[test]
fn abandon_gives_up_everything_and_forgets_the_url() {
    let (_dir, db) = temp_db();
    for n in 0..3 {
        enqueue(&db, &event(n), &urls(&[A, B]), 0, LIMITS).unwrap();
    }
    assert_eq!(known_urls(&db).unwrap(), urls(&[A, B]));
    assert_eq!(abandon(&db, A, 5, "gone", LIMITS).unwrap(), 3);
    assert_eq!(abandon(&db, A, 5, "gone", LIMITS).unwrap(), 0);
    assert_eq!(known_urls(&db).unwrap(), urls(&[B]));
    let (dead, _) = list(&db, Some(DeliveryStatus::Dead), None, 10).unwrap();
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|d| d.last_error.as_deref() == Some("gone")));
    assert_eq!(counts(&db).unwrap(), OutboxCounts { owed: 3, dead: 3 });
}

#[test]
fn list_pages_with_cursors() {
    let (_dir, db) = temp_db();
    for n in 0..5 {
        enqueue(&db, &event(n), &urls(&[A]), 0, LIMITS).unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = list(&db, None, cursor, 2).unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|d| d.event_id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["ev0", "ev1", "ev2", "ev3", "ev4"]);
    assert!(list(&db, None, Some(u64::MAX), 2).unwrap().0.is_empty());
    // An exactly full last page has no next cursor.
    let (page, next) = list(&db, None, Some(3), 2).unwrap();
    assert_eq!((page.len(), next), (2, None));
}

#[test]
fn a_corrupt_head_is_discarded_instead_of_blocking_its_url() {
    let (_dir, db) = temp_db();
    let ids: Vec<u64> = (0..2)
        .map(
            |n| match enqueue(&db, &event(n), &urls(&[A]), 0, LIMITS).unwrap()[0] {
                Enqueued::Queued(id) => id,
                Enqueued::Full => panic!("full"),
            },
        )
        .collect();
    put_raw(&db, ids[0], &[0x07, 0xff, 0xff]);
    // Listed without it rather than failed.
    let (listed, _) = list(&db, None, None, 10).unwrap();
    assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[1]]);
    let due = next_due(&db, A).unwrap().unwrap();
    assert_eq!((due.id, due.event_id.as_str()), (ids[1], "ev1"));
    assert_eq!(counts(&db).unwrap().owed, 1);
    assert_eq!(list(&db, None, None, 10).unwrap().0.len(), 1);

    // A queue entry whose record is missing is discarded as well.
    write(&db, Durability::Immediate, |txn| {
        txn.open_table(DELIVERIES)?.remove(ids[1])?;
        Ok(())
    })
    .unwrap();
    assert!(next_due(&db, A).unwrap().is_none());
    assert_eq!(counts(&db).unwrap().owed, 0);
}

#[test]
fn a_corrupt_url_state_is_rebuilt() {
    let (_dir, db) = temp_db();
    for n in 0..2 {
        enqueue(&db, &event(n), &urls(&[A]), 0, LIMITS).unwrap();
    }
    write(&db, Durability::Immediate, |txn| {
        txn.open_table(URLS)?.insert(A, &[0xff_u8, 0x01][..])?;
        Ok(())
    })
    .unwrap();
    // Listed as pending rather than failed.
    let (listed, _) = list(&db, None, None, 10).unwrap();
    assert!(listed.iter().all(|d| d.status == DeliveryStatus::Pending));
    let due = next_due(&db, A).unwrap().unwrap();
    assert_eq!((due.event_id.as_str(), due.not_before_ms), ("ev0", 0));
    // The next write rebuilds it with the right count.
    failed(&db, A, due.id, 1, "x", 2).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(URLS).unwrap();
    let state = decode_state(A, table.get(A).unwrap().unwrap().value()).unwrap();
    assert_eq!((state.owed, state.failures), (2, 1));
}

#[tokio::test]
async fn the_async_handle_runs_off_the_async_threads() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::create(dir.path().join("o.redb")).unwrap());
    let outbox = Outbox::open(db, LIMITS).unwrap();
    let ev = event(1);
    let out = outbox
        .call(move |db, limits| enqueue(db, &ev, &urls(&[A]), 1, limits))
        .await
        .unwrap();
    let Enqueued::Queued(id) = out[0] else {
        panic!()
    };
    let due = outbox.next_due(A.into()).await.unwrap().unwrap();
    assert_eq!(due.id, id);
    outbox.failed(A.into(), id, 1, "e".into(), 2).await.unwrap();
    assert_eq!(outbox.give_up_expired(A.into(), 5, 1).await.unwrap(), 1);
    assert_eq!(
        outbox.counts().await.unwrap(),
        OutboxCounts { owed: 0, dead: 1 }
    );
    assert_eq!(outbox.abandon(A.into(), 5, "r".into()).await.unwrap(), 0);
    assert_eq!(outbox.known_urls().await.unwrap(), Vec::<String>::new());
    assert_eq!(outbox.list(None, None, None, 5).await.unwrap().0.len(), 1);
    assert_eq!(
        "failed".parse::<DeliveryStatus>().unwrap(),
        DeliveryStatus::Failed
    );
    assert!("nope".parse::<DeliveryStatus>().is_err());
}

#[test]
fn a_misplaced_queue_entry_is_dropped_without_touching_the_record() {
    let (_dir, db) = temp_db();
    let Enqueued::Queued(id) = enqueue(&db, &event(0), &urls(&[B]), 0, LIMITS).unwrap()[0] else {
        panic!("full")
    };
    write(&db, Durability::Immediate, |txn| {
        txn.open_table(QUEUE)?.insert((A, id), ())?;
        Ok(())
    })
    .unwrap();
    assert!(next_due(&db, A).unwrap().is_none());
    assert_eq!(next_due(&db, B).unwrap().unwrap().id, id);
}

#[test]
fn discarding_behind_the_head_keeps_the_backoff() {
    let (_dir, db) = temp_db();
    for n in 0..2 {
        enqueue(&db, &event(n), &urls(&[A]), 0, LIMITS).unwrap();
    }
    let head = next_due(&db, A).unwrap().unwrap();
    failed(&db, A, head.id, 10, "HTTP 500", 60_000).unwrap();
    discard(&db, head.id + 1).unwrap();
    let due = next_due(&db, A).unwrap().unwrap();
    assert_eq!((due.id, due.not_before_ms), (head.id, 60_000));
}
