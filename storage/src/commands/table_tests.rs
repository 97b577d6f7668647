//! Tests of the command tables: indexes kept in step, listing, pruning, removal,
//! corrupt records.

use redb::ReadableTableMetadata as _;

use super::tests::{dev, new_cmd};
use super::*;

fn temp_db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("t.redb")).unwrap();
    (dir, db)
}

fn counts(db: &Database) -> Vec<(CommandStatus, u64)> {
    status_counts(db)
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn reads_before_tables_exist_are_empty() {
    let (_dir, db) = temp_db();
    assert_eq!(get(&db, "x").unwrap(), None);
    assert_eq!(earliest_deadline(&db).unwrap(), None);
    assert_eq!(status_counts(&db).unwrap().len(), 8);
    assert!(unannounced(&db).unwrap().is_empty());
    let page = list_for_device(&db, &dev("d"), None, 10, None).unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
}

/// Every deadline index entry, as committed.
fn deadline_entries(db: &Database) -> Vec<(u64, String)> {
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(COMMAND_DEADLINES).unwrap();
    let entries = table.iter().unwrap().map(|e| {
        let (k, _) = e.unwrap();
        let (d, id) = k.value();
        (d, id.to_owned())
    });
    entries.collect()
}

#[test]
fn the_deadline_index_follows_every_change_of_a_transaction() {
    let (_dir, db) = temp_db();
    // Created and sent in one transaction: one entry, the answer timeout's, and reads
    // inside the transaction already see it.
    let a = write(&db, |w| {
        let mut a = w.create(new_cmd("a", "d1", "X"))?;
        a.send(200, 1_200).unwrap();
        w.put(&a)?;
        assert_eq!(w.earliest_deadline()?, Some(1_200));
        assert_eq!(w.due(1_200, 10)?, vec![a.clone()]);
        Ok(a)
    })
    .unwrap();
    assert_eq!(deadline_entries(&db), [(1_200, "a".to_owned())]);
    // Re-armed twice, then completed, in one transaction: no entry left.
    write(&db, |w| {
        let mut a = a.clone();
        a.send(300, 1_300).unwrap();
        w.put(&a)?;
        a.send(400, 1_400).unwrap();
        w.put(&a)?;
        assert_eq!(w.earliest_deadline()?, Some(1_400));
        a.complete(500, None).unwrap();
        w.put(&a)
    })
    .unwrap();
    assert!(deadline_entries(&db).is_empty());
    // A device removed in the transaction that moved its command's deadline: the entry
    // the index held goes too.
    let b = write(&db, |w| w.create(new_cmd("b", "d2", "X"))).unwrap();
    assert_eq!(deadline_entries(&db), [(10_100, "b".to_owned())]);
    write(&db, |w| {
        let mut b = b.clone();
        b.send(200, 1_200).unwrap();
        w.put(&b)?;
        w.remove_device(&dev("d2")).map(drop)
    })
    .unwrap();
    assert!(deadline_entries(&db).is_empty());
}

#[test]
fn terminal_statuses_that_owe_no_event_are_not_remembered() {
    let (_dir, db) = temp_db();
    let a = write(&db, |w| w.create(new_cmd("a", "d1", "X"))).unwrap();
    let b = write(&db, |w| w.create(new_cmd("b", "d1", "Y"))).unwrap();
    write(&db, |w| {
        w.set_events_owed(|s| s == CommandStatus::Failed);
        let (mut a, mut b) = (a.clone(), b.clone());
        a.complete(300, None).unwrap();
        w.put(&a)?;
        b.fail(300, "x".into(), None).unwrap();
        w.put(&b)
    })
    .unwrap();
    let owed: Vec<_> = unannounced(&db).unwrap();
    let owed: Vec<_> = owed.into_iter().map(|r| r.command_id).collect();
    assert_eq!(owed, ["b"]);
    assert_eq!(
        counts(&db),
        [(CommandStatus::Completed, 1), (CommandStatus::Failed, 1)]
    );
}

#[test]
fn create_put_and_indexes_stay_in_step() {
    let (_dir, db) = temp_db();
    let a = write(&db, |w| w.create(new_cmd("a", "d1", "X"))).unwrap();
    let b = write(&db, |w| w.create(new_cmd("b", "d1", "Y"))).unwrap();
    write(&db, |w| w.create(new_cmd("c", "d2", "X"))).unwrap();
    assert_eq!((a.seq, b.seq), (0, 1));
    assert_eq!(get(&db, "a").unwrap(), Some(a.clone()));
    assert_eq!(counts(&db), [(CommandStatus::Queued, 3)]);
    assert_eq!(earliest_deadline(&db).unwrap(), Some(10_100));

    // Send `a`: its deadline moves from expiry to the answer timeout.
    let mut a2 = a.clone();
    a2.send(200, 1_200).unwrap();
    write(&db, |w| w.put(&a2)).unwrap();
    assert_eq!(earliest_deadline(&db).unwrap(), Some(1_200));
    let due = write(&db, |w| w.due(1_200, 10)).unwrap();
    assert_eq!(due, vec![a2.clone()]);
    assert!(write(&db, |w| w.due(1_199, 10)).unwrap().is_empty());

    // Complete `a`: it leaves the open set and the deadlines, and is owed an event.
    a2.complete(300, None).unwrap();
    write(&db, |w| w.put(&a2)).unwrap();
    assert_eq!(earliest_deadline(&db).unwrap(), Some(10_100));
    assert_eq!(
        counts(&db),
        [(CommandStatus::Queued, 2), (CommandStatus::Completed, 1)]
    );
    let open = write(&db, |w| w.open_for_device(&dev("d1"))).unwrap();
    assert_eq!(open, vec![b.clone()]);
    assert_eq!(write(&db, |w| w.open_count(&dev("d1"))).unwrap(), 1);
    assert_eq!(unannounced(&db).unwrap(), vec![a2.clone()]);
    write(&db, |w| w.mark_announced(&["a".to_owned()])).unwrap();
    assert!(unannounced(&db).unwrap().is_empty());

    // A record cannot move to another device, and unknown ids are not found.
    let mut moved = b.clone();
    moved.device_id = dev("d2");
    assert!(matches!(
        write(&db, |w| w.put(&moved)),
        Err(StoreError::Invalid(_))
    ));
    let mut ghost = b.clone();
    ghost.command_id = "ghost".into();
    assert!(matches!(
        write(&db, |w| w.put(&ghost)),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        write(&db, |w| w.create(new_cmd("a", "d1", "X"))),
        Err(StoreError::Conflict { .. })
    ));
}

/// Several changes to one record in one transaction (the engine's create-and-send, or
/// ack-and-answer): what is stored is the last version, read back in the transaction
/// as changed, with every index and counter as if each change had been its own write.
#[test]
fn many_changes_in_one_transaction_store_the_last_version() {
    let (_dir, db) = temp_db();
    let (sent, done) = write(&db, |w| {
        let mut a = w.create(new_cmd("a", "d1", "X"))?;
        a.send(200, 1_200).unwrap();
        w.put(&a)?;
        let sent = w.get("a")?.unwrap();
        assert_eq!(w.open_for_device(&dev("d1"))?, vec![sent.clone()]);
        assert_eq!(w.due(1_200, 10)?, vec![sent.clone()]);
        assert_eq!(w.status_counts()?[&CommandStatus::Sent], 1);
        let mut b = w.create(new_cmd("b", "d1", "Y"))?;
        assert_eq!(b.seq, 1);
        b.send(200, 1_200).unwrap();
        w.put(&b)?;
        b.acknowledge(250).unwrap();
        w.put(&b)?;
        b.complete(260, Some("1".into())).unwrap();
        w.put(&b)?;
        Ok((sent, b))
    })
    .unwrap();
    assert_eq!(get(&db, "a").unwrap(), Some(sent.clone()));
    assert_eq!(get(&db, "b").unwrap(), Some(done.clone()));
    assert_eq!(
        counts(&db),
        [(CommandStatus::Sent, 1), (CommandStatus::Completed, 1)]
    );
    assert_eq!(earliest_deadline(&db).unwrap(), Some(1_200));
    assert_eq!(unannounced(&db).unwrap(), vec![done]);
    let open = write(&db, |w| w.open_for_device(&dev("d1"))).unwrap();
    assert_eq!(open, vec![sent]);
    // The next `seq` was kept, and a removal in the creating transaction leaves nothing.
    write(&db, |w| {
        let c = w.create(new_cmd("c", "d2", "X"))?;
        assert_eq!(c.seq, 2);
        assert_eq!(w.remove_device(&dev("d2"))?, 1);
        Ok(())
    })
    .unwrap();
    assert_eq!(get(&db, "c").unwrap(), None);
    assert_eq!(
        counts(&db),
        [(CommandStatus::Sent, 1), (CommandStatus::Completed, 1)]
    );
    // A failed transaction stores none of its changes.
    let failed: Result<(), StoreError> = write(&db, |w| {
        let mut a = w.get("a")?.unwrap();
        a.cancel(300, None).unwrap();
        w.put(&a)?;
        Err(StoreError::Invalid("stop".into()))
    });
    assert!(failed.is_err());
    assert_eq!(
        get(&db, "a").unwrap().unwrap().status(),
        CommandStatus::Sent
    );
}

#[test]
fn idempotency_keys_are_per_device() {
    let (_dir, db) = temp_db();
    let mut n = new_cmd("a", "d1", "X");
    n.idempotency_key = Some("k".into());
    write(&db, |w| w.create(n.clone())).unwrap();
    let found = write(&db, |w| {
        Ok((
            w.find_idempotent(&dev("d1"), "k")?,
            w.find_idempotent(&dev("d2"), "k")?,
        ))
    })
    .unwrap();
    assert_eq!(found, (Some("a".to_owned()), None));
    n.command_id = "b".into();
    assert!(matches!(
        write(&db, |w| w.create(n.clone())),
        Err(StoreError::Conflict { .. })
    ));
    n.device_id = dev("d2");
    write(&db, |w| w.create(n)).unwrap();
}

#[test]
fn list_pages_newest_first_with_filters() {
    let (_dir, db) = temp_db();
    write(&db, |w| {
        for i in 0..7 {
            let mut r = w.create(new_cmd(&format!("c{i}"), "d1", "X"))?;
            if i % 2 == 0 {
                r.cancel(5, None).unwrap();
                w.put(&r)?;
            }
        }
        w.create(new_cmd("other", "d10", "X"))?;
        Ok(())
    })
    .unwrap();
    let ids = |p: &CommandPage| {
        p.items
            .iter()
            .map(|r| r.command_id.clone())
            .collect::<Vec<_>>()
    };
    let d1 = dev("d1");
    let p1 = list_for_device(&db, &d1, None, 3, None).unwrap();
    assert_eq!(ids(&p1), ["c6", "c5", "c4"]);
    let p2 = list_for_device(&db, &d1, None, 3, p1.next.as_deref()).unwrap();
    assert_eq!(ids(&p2), ["c3", "c2", "c1"]);
    let p3 = list_for_device(&db, &d1, None, 3, p2.next.as_deref()).unwrap();
    assert_eq!((ids(&p3), p3.next), (vec!["c0".to_owned()], None));

    let queued = list_for_device(&db, &d1, Some(CommandStatus::Queued), 10, None).unwrap();
    assert_eq!(
        (ids(&queued), queued.next),
        (vec!["c5".into(), "c3".into(), "c1".into()], None)
    );
    let cancelled = list_for_device(&db, &d1, Some(CommandStatus::Cancelled), 2, None).unwrap();
    assert_eq!(ids(&cancelled), ["c6", "c4"]);
    let rest = list_for_device(
        &db,
        &d1,
        Some(CommandStatus::Cancelled),
        2,
        cancelled.next.as_deref(),
    )
    .unwrap();
    assert_eq!(
        (ids(&rest), rest.next),
        (vec!["c2".into(), "c0".into()], None)
    );
    assert!(
        list_for_device(&db, &d1, Some(CommandStatus::Sent), 2, None)
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        ids(&list_for_device(&db, &dev("d10"), None, 9, None).unwrap()),
        ["other"]
    );

    // The open statuses page through the open index, with the same kind of cursor.
    let q1 = list_for_device(&db, &d1, Some(CommandStatus::Queued), 2, None).unwrap();
    assert_eq!(
        (ids(&q1), q1.next.as_deref()),
        (vec!["c5".into(), "c3".into()], Some("c1"))
    );
    let q2 = list_for_device(&db, &d1, Some(CommandStatus::Queued), 2, Some("c1")).unwrap();
    assert_eq!((ids(&q2), q2.next), (vec!["c1".into()], None));

    // A cursor must be a command of the device listed.
    for status in [None, Some(CommandStatus::Queued)] {
        for cursor in ["other", "nope", ""] {
            assert!(
                matches!(
                    list_for_device(&db, &d1, status, 2, Some(cursor)),
                    Err(StoreError::Invalid(_))
                ),
                "{status:?} {cursor:?}"
            );
        }
    }
}

/// An undecodable record in the middle of a device's history is skipped, and the
/// history goes on past it: the chain does not live in the records.
#[test]
fn listing_walks_past_an_undecodable_record() {
    let (_dir, db) = temp_db();
    write(&db, |w| {
        for id in ["a", "b", "c"] {
            w.create(new_cmd(id, "d1", "X"))?;
        }
        Ok(())
    })
    .unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(COMMANDS)
        .unwrap()
        .insert("b", [9u8, 9].as_slice())
        .unwrap();
    txn.commit().unwrap();
    let page = list_for_device(&db, &dev("d1"), None, 1, None).unwrap();
    assert_eq!(page.next.as_deref(), Some("b"));
    // The cursor may name the undecodable record: its chain entry leads on.
    let page = list_for_device(&db, &dev("d1"), None, 5, Some("b")).unwrap();
    let ids: Vec<_> = page.items.iter().map(|r| r.command_id.as_str()).collect();
    assert_eq!((ids, page.next), (vec!["a"], None));
    assert_eq!(write(&db, |w| w.remove_device(&dev("d1"))).unwrap(), 3);
    assert!(get(&db, "a").unwrap().is_none());
}

#[test]
fn remove_device_deletes_everything_it_owns() {
    let (_dir, db) = temp_db();
    write(&db, |w| {
        for (id, d) in [("a", "d1"), ("b", "d1"), ("c", "d1-x")] {
            let mut n = new_cmd(id, d, "X");
            n.idempotency_key = Some(format!("k{id}"));
            w.create(n)?;
        }
        let mut a = w.get("a")?.unwrap();
        a.cancel(1, None).unwrap();
        w.put(&a)
    })
    .unwrap();
    assert_eq!(write(&db, |w| w.remove_device(&dev("d1"))).unwrap(), 2);
    assert_eq!(get(&db, "a").unwrap(), None);
    assert_eq!(get(&db, "b").unwrap(), None);
    assert!(get(&db, "c").unwrap().is_some());
    assert!(unannounced(&db).unwrap().is_empty());
    assert_eq!(counts(&db), [(CommandStatus::Queued, 1)]);
    assert!(write(&db, |w| w.due(u64::MAX, 10))
        .unwrap()
        .iter()
        .all(|r| r.command_id == "c"));
    let keys = write(&db, |w| {
        Ok((
            w.find_idempotent(&dev("d1"), "ka")?,
            w.find_idempotent(&dev("d1-x"), "kc")?,
        ))
    })
    .unwrap();
    assert_eq!(keys, (None, Some("c".into())));
    assert!(list_for_device(&db, &dev("d1"), None, 10, None)
        .unwrap()
        .items
        .is_empty());
    // Only `d1-x`'s history is left in the chain.
    let txn = db.begin_read().unwrap();
    let heads = txn.open_table(COMMAND_HEADS).unwrap();
    let chain = txn.open_table(COMMAND_CHAIN).unwrap();
    assert_eq!(heads.len().unwrap(), 1);
    assert_eq!(chain.len().unwrap(), 1);
    assert_eq!(heads.get("d1-x").unwrap().unwrap().value(), "c");
}

#[test]
fn corrupt_records_are_reported_skipped_and_overwritable() {
    let (_dir, db) = temp_db();
    let b = write(&db, |w| {
        w.create(new_cmd("a", "d1", "X"))?;
        w.create(new_cmd("b", "d1", "X"))
    })
    .unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(COMMANDS)
        .unwrap()
        .insert("a", [9u8, 9].as_slice())
        .unwrap();
    txn.commit().unwrap();
    assert!(matches!(
        get(&db, "a"),
        Err(StoreError::Corrupt {
            table: "commands",
            ..
        })
    ));
    let page = list_for_device(&db, &dev("d1"), None, 10, None).unwrap();
    assert_eq!(page.items, vec![b.clone()]);
    assert_eq!(
        write(&db, |w| w.open_for_device(&dev("d1"))).unwrap(),
        vec![b.clone()]
    );
    // The corrupt record's deadline entry is dropped rather than served.
    assert_eq!(write(&db, |w| w.due(u64::MAX, 10)).unwrap(), vec![b]);
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        create_tables(&txn).unwrap();
        txn.commit().unwrap();
        write(&db, |w| w.create(new_cmd("a", "d1", "X"))).unwrap();
    }
    let db = Database::create(&path).unwrap();
    assert_eq!(
        get(&db, "a").unwrap().unwrap().status(),
        CommandStatus::Queued
    );
    assert_eq!(earliest_deadline(&db).unwrap(), Some(10_100));
}

/// Pruning deletes finished commands older than the cutoff from the old end of each
/// device's history only; everything else stays, and the rest of the history reads
/// as before.
#[test]
fn prune_cuts_only_the_old_finished_end_of_each_history() {
    let (_dir, db) = temp_db();
    let at = |id: &str, device: &str, t: u64| {
        let mut n = new_cmd(id, device, "X");
        n.created_at_ms = t;
        n.idempotency_key = Some(format!("k-{id}"));
        n
    };
    write(&db, |w| {
        // d1: a finished, b still queued, c finished; d2: x finished, y finished late,
        // z new; d3: u finished but its event not yet emitted.
        for (id, d, t) in [
            ("a", "d1", 10),
            ("b", "d1", 11),
            ("c", "d1", 12),
            ("u", "d3", 13),
            ("x", "d2", 14),
            ("y", "d2", 15),
            ("z", "d2", 500),
        ] {
            w.create(at(id, d, t))?;
        }
        for (id, t) in [("a", 20), ("c", 21), ("x", 22), ("y", 300), ("z", 501)] {
            let mut r = w.get(id)?.unwrap();
            r.cancel(t, None).unwrap();
            w.put(&r)?;
        }
        let mut u = w.get("u")?.unwrap();
        u.cancel(23, None).unwrap();
        w.put(&u)
    })
    .unwrap();
    let all = |d: &str| {
        let page = list_for_device(&db, &dev(d), None, 10, None).unwrap();
        page.items
            .into_iter()
            .map(|r| r.command_id)
            .collect::<Vec<_>>()
    };
    // Events of d1 and d2 were emitted; u's is still owed.
    write(&db, |w| {
        w.mark_announced(&["a", "c", "x", "y", "z"].map(String::from))
    })
    .unwrap();

    // One command at a time: the cursor walks the table in id order.
    let mut removed = 0;
    let mut after: Option<String> = None;
    loop {
        let step = write(&db, |w| w.prune(100, after.as_deref(), 1)).unwrap();
        removed += step.removed;
        match step.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(removed, 2);
    assert_eq!(get(&db, "a").unwrap(), None);
    assert_eq!(get(&db, "x").unwrap(), None);
    assert_eq!(
        all("d1"),
        ["c", "b"],
        "b is not finished, so c, behind it, stays"
    );
    assert_eq!(all("d2"), ["z", "y"], "y finished after the cutoff");
    assert_eq!(all("d3"), ["u"], "u's event is owed");
    let page = list_for_device(&db, &dev("d2"), None, 1, None).unwrap();
    assert_eq!(page.next, Some("y".to_owned()));
    let page = list_for_device(&db, &dev("d2"), None, 1, Some("y")).unwrap();
    assert_eq!(page.next, None, "the pruned x is no cursor");
    assert_eq!(
        counts(&db),
        [(CommandStatus::Queued, 1), (CommandStatus::Cancelled, 4)]
    );
    let keys = write(&db, |w| {
        Ok((
            w.find_idempotent(&dev("d2"), "k-x")?,
            w.find_idempotent(&dev("d2"), "k-y")?,
        ))
    })
    .unwrap();
    assert_eq!(keys, (None, Some("y".into())));

    // Once b is finished, one step with room for everything takes b and c; the
    // emptied device loses its head; the step ends at the first young command.
    write(&db, |w| {
        let mut b = w.get("b")?.unwrap();
        b.cancel(30, None).unwrap();
        w.put(&b)?;
        w.mark_announced(&["b".to_owned()])
    })
    .unwrap();
    let step = write(&db, |w| w.prune(100, None, 100)).unwrap();
    assert_eq!(
        step,
        PruneStep {
            removed: 2,
            next: None
        }
    );
    assert!(all("d1").is_empty());
    let txn = db.begin_read().unwrap();
    assert!(txn
        .open_table(COMMAND_HEADS)
        .unwrap()
        .get("d1")
        .unwrap()
        .is_none());
    drop(txn);
    // A device whose old end was pruned is still deleted whole.
    assert_eq!(write(&db, |w| w.remove_device(&dev("d2"))).unwrap(), 2);
    assert!(all("d2").is_empty());
}
