use super::*;
use crate::test_support::{id, new_device, temp_store};

fn ev(device: &str, at_ms: u64, kind: &str) -> NewEvent {
    NewEvent {
        device: id(device),
        at_ms,
        kind: kind.to_owned(),
        data: format!(r#"{{"type":"{kind}","at":{at_ms}}}"#),
    }
}

fn all(db: &Database, device: &str) -> Vec<(u64, String)> {
    let q = EventQuery {
        from_ms: 0,
        to_ms: u64::MAX,
        kind: None,
        limit: 1_000,
        cursor: None,
    };
    let page = query(db, &id(device), &q).unwrap();
    page.events.into_iter().map(|e| (e.at_ms, e.kind)).collect()
}

#[test]
fn stored_events_read_back_newest_first_and_page() {
    let (_dir, store) = temp_store();
    store.create_device(new_device("d1")).unwrap();
    store.create_device(new_device("d2")).unwrap();
    let db = store.database();
    let batch = [
        ev("d1", 10, "a"),
        ev("d1", 20, "b"),
        ev("d1", 20, "a"),
        ev("d2", 15, "a"),
        ev("d1", 30, "b"),
        ev("ghost", 5, "a"),
    ];
    // An event of a device that does not exist is skipped.
    let ghost: DeviceId = "ghost".parse().unwrap();
    assert_eq!(insert_batch(&db, &batch).unwrap(), 5);
    assert_eq!(count(&db, &ghost).unwrap(), 0);
    assert_eq!(count(&db, &id("d1")).unwrap(), 4);
    assert_eq!(
        all(&db, "d1"),
        [
            (30, "b".into()),
            (20, "a".into()),
            (20, "b".into()),
            (10, "a".into())
        ]
    );
    let first = query(
        &db,
        &id("d1"),
        &EventQuery {
            from_ms: 0,
            to_ms: u64::MAX,
            kind: Some("a"),
            limit: 1,
            cursor: None,
        },
    )
    .unwrap();
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].at_ms, 20);
    assert_eq!(first.events[0].data, r#"{"type":"a","at":20}"#);
    let cursor: Cursor = first.next.unwrap().to_string().parse().unwrap();
    let second = query(
        &db,
        &id("d1"),
        &EventQuery {
            from_ms: 0,
            to_ms: u64::MAX,
            kind: Some("a"),
            limit: 1,
            cursor: Some(cursor),
        },
    )
    .unwrap();
    assert_eq!(second.events[0].at_ms, 10);
    // The next page may be empty, never wrong.
    if let Some(c) = second.next {
        let q = EventQuery {
            from_ms: 0,
            to_ms: u64::MAX,
            kind: Some("a"),
            limit: 1,
            cursor: Some(c),
        };
        assert!(query(&db, &id("d1"), &q).unwrap().events.is_empty());
    }
    let window = EventQuery {
        from_ms: 15,
        to_ms: 25,
        kind: None,
        limit: 10,
        cursor: None,
    };
    let page = query(&db, &id("d1"), &window).unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.next, None);
}

#[test]
fn cursors_are_checked() {
    assert!("1.2".parse::<Cursor>().is_ok());
    for bad in ["", "1", "a.b", "1.", ".1", "-1.2", "1.2.3"] {
        assert_eq!(bad.parse::<Cursor>(), Err(InvalidCursor), "{bad:?}");
    }
}

#[test]
fn retention_removes_old_events_and_caps_each_device() {
    let (_dir, store) = temp_store();
    store.create_device(new_device("d1")).unwrap();
    store.create_device(new_device("d2")).unwrap();
    let db = store.database();
    let batch: Vec<NewEvent> = (1..=10)
        .map(|at| ev("d1", at * 100, "x"))
        .chain((1..=3).map(|at| ev("d2", at * 100, "y")))
        .collect();
    insert_batch(&db, &batch).unwrap();
    // Older than 300 ms: d1 loses 100 and 200, d2 loses 100 and 200.
    assert_eq!(sweep_until(&db, 300, 1_000, &|| false).unwrap(), 4);
    assert_eq!(count(&db, &id("d1")).unwrap(), 8);
    assert_eq!(all(&db, "d2"), [(300, "y".into())]);
    // At most 5 per device: d1 keeps its 5 newest.
    assert_eq!(sweep_until(&db, 300, 5, &|| false).unwrap(), 3);
    let kept: Vec<u64> = all(&db, "d1").into_iter().map(|(at, _)| at).collect();
    assert_eq!(kept, [1000, 900, 800, 700, 600]);
    assert_eq!(count(&db, &id("d1")).unwrap(), 5);
    // Nothing left to do.
    assert_eq!(sweep_until(&db, 300, 5, &|| false).unwrap(), 0);
    // Deleting a device takes its events, and only its.
    assert_eq!(delete_device(&db, &id("d1")).unwrap(), 5);
    assert!(all(&db, "d1").is_empty());
    assert_eq!(count(&db, &id("d2")).unwrap(), 1);
    // The age index holds nothing of d1 any more: a sweep of everything removes d2's.
    assert_eq!(sweep_until(&db, u64::MAX, 5, &|| false).unwrap(), 1);
}

#[test]
fn events_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = crate::Store::open(dir.path()).unwrap();
        store.create_device(new_device("d1")).unwrap();
        insert_batch(&store.database(), &[ev("d1", 1, "boot")]).unwrap();
    }
    let store = crate::Store::open(dir.path()).unwrap();
    let db = store.database();
    insert_batch(&db, &[ev("d1", 2, "door")]).unwrap();
    assert_eq!(all(&db, "d1"), [(2, "door".into()), (1, "boot".into())]);
}

/// The stored format is fixed: a change here needs a new `StoredEvent` variant.
#[test]
fn stored_event_bytes_are_stable() {
    let record = StoredEvent::V1(EventV1 {
        kind: "door".into(),
        data: r#"{"a":1}"#.into(),
    });
    let bytes = codec::encode(location("d1"), &record).unwrap();
    assert_eq!(
        crate::test_support::hex(&bytes),
        "0004646f6f72077b2261223a317d"
    );
    let StoredEvent::V1(back) = codec::decode(location("d1"), &bytes).unwrap();
    assert_eq!(
        (back.kind.as_str(), back.data.as_str()),
        ("door", r#"{"a":1}"#)
    );
    assert!(codec::decode::<StoredEvent>(location("d1"), &[1]).is_err());
}
