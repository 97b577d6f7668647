//! The audit log against a real store: golden bytes, paging, retention.

use super::*;
use crate::test_support::{hex, temp_store, unhex};

fn entry(at_ms: u64, status: u16) -> AuditEntry {
    AuditEntry {
        at_ms,
        key: "ops".into(),
        method: "DELETE".into(),
        route: "/api/v1/devices/{id}".into(),
        target: Some("d1".into()),
        status,
    }
}

// Golden bytes: if this fails, the file format changed. Add a version instead.
const AUDIT_V1: &str = concat!(
    "00",                                         // V1
    "e807",                                       // at_ms 1000
    "036f7073",                                   // key "ops"
    "0644454c455445",                             // method "DELETE"
    "142f6170692f76312f646576696365732f7b69647d", // route
    "01026431",                                   // target Some("d1")
    "cc01",                                       // status 204
);

#[test]
fn golden_bytes() {
    let e = entry(1_000, 204);
    assert_eq!(hex(&encode(&e).unwrap()), AUDIT_V1);
    assert_eq!(decode(7, &unhex(AUDIT_V1)).unwrap(), e);
    let mut trailing = unhex(AUDIT_V1);
    trailing.push(0);
    let mut v2 = unhex(AUDIT_V1);
    v2[0] = 1;
    for bad in [trailing, v2, unhex(&AUDIT_V1[..10])] {
        let err = decode(7, &bad).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "audit", key, .. } if key == "7"),
            "{err:?}"
        );
    }
}

#[test]
fn newest_first_in_pages() {
    let (_dir, store) = temp_store();
    let keep = AuditRetention::default();
    let now = 10_000_000;
    store
        .append_audit(&[entry(1, 200), entry(2, 201)], keep, now)
        .unwrap();
    store.append_audit(&[entry(3, 403)], keep, now).unwrap();
    let page = store.list_audit(None, 2).unwrap();
    let at: Vec<u64> = page.entries.iter().map(|(_, e)| e.at_ms).collect();
    assert_eq!(at, [3, 2]);
    let page = store.list_audit(page.next, 2).unwrap();
    let at: Vec<u64> = page.entries.iter().map(|(_, e)| e.at_ms).collect();
    assert_eq!((at, page.next), (vec![1], None));
    let all = store.list_audit(None, 3).unwrap();
    assert_eq!((all.entries.len(), all.next), (3, None));
}

#[test]
fn retention_by_count_and_age_in_batches() {
    let (_dir, store) = temp_store();
    let keep = AuditRetention {
        max_entries: 3,
        max_age_ms: 1_000,
        prune_batch: 2,
    };
    let batch: Vec<_> = (0..6).map(|i| entry(5_000 + i, 200)).collect();
    store.append_audit(&batch, keep, 5_000).unwrap();
    // Six over a limit of three, two pruned per append.
    assert_eq!(store.list_audit(None, 100).unwrap().entries.len(), 4);
    store.append_audit(&[], keep, 5_000).unwrap();
    let left = store.list_audit(None, 100).unwrap().entries;
    let at: Vec<u64> = left.iter().map(|(_, e)| e.at_ms).collect();
    assert_eq!(at, [5_005, 5_004, 5_003]);
    // Later, the old ones age out even under the count limit.
    store
        .append_audit(&[entry(6_500, 204)], keep, 6_500)
        .unwrap();
    store.append_audit(&[], keep, 6_500).unwrap();
    let left = store.list_audit(None, 100).unwrap().entries;
    let at: Vec<u64> = left.iter().map(|(_, e)| e.at_ms).collect();
    assert_eq!(at, [6_500]);
    // Sequence numbers keep growing after pruning.
    assert!(left[0].0 >= 6);
}
