//! Tests of the `devices` table: provisioning (one and many), reads, updates, token
//! credentials and their upgrade from PBKDF2.

use super::*;
use crate::model::{AclAction, AclRule, CredentialUpgrade, ServiceClientRecord};
use crate::secret::CredentialHash;
use crate::store::Store;
use crate::test_support::{cheap_hash, id, new_device, temp_store};

#[test]
fn create_get_and_conflict() {
    let (_dir, store) = temp_store();
    let created = store.create_device(new_device("dev-1")).unwrap();
    assert_eq!(created.id, id("dev-1"));
    assert_eq!(created.plugin, "json");
    assert_eq!(created.labels["site"], "lobby");
    assert_eq!(created.created_at_ms, 1_000);
    assert_eq!(created.keys.len(), 1);
    let key = created.current_key().unwrap();
    assert_eq!(
        (key.generation, key.created_at_ms, key.superseded_at_ms),
        (1, 1_000, None)
    );
    assert_eq!(created.key(1), Some(key));
    assert!(created.credential.verify(store.token_key(), b"dev-1"));

    assert_eq!(store.get_device(&id("dev-1")).unwrap(), Some(created));
    assert_eq!(store.get_device(&id("dev-2")).unwrap(), None);

    let err = store.create_device(new_device("dev-1")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { kind: "device", key } if key == "dev-1"),
        "{err:?}"
    );
    assert_eq!(store.count_devices().unwrap(), 1);
}

#[test]
fn devices_get_distinct_keys() {
    let (_dir, store) = temp_store();
    let a = store.create_device(new_device("a")).unwrap();
    let b = store.create_device(new_device("b")).unwrap();
    assert_ne!(a.current_key().unwrap().key, b.current_key().unwrap().key);
}

#[test]
fn device_id_taken_by_service_client_conflicts() {
    let (_dir, store) = temp_store();
    store
        .create_service_client(ServiceClientRecord {
            name: "backend".into(),
            credential: cheap_hash("pw"),
            rules: vec![AclRule {
                action: AclAction::All,
                topic: "#".into(),
                allow: true,
            }],
            created_at_ms: 1,
        })
        .unwrap();
    let err = store.create_device(new_device("backend")).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                kind: "service client",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.count_devices().unwrap(), 0);
}

#[test]
fn list_pages_in_id_order() {
    let (_dir, store) = temp_store();
    for name in ["c", "a", "e", "b", "d"] {
        store.create_device(new_device(name)).unwrap();
    }
    let ids = |v: Vec<DeviceRecord>| v.into_iter().map(|d| d.id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_devices(None, 100).unwrap()),
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(ids(store.list_devices(None, 2).unwrap()), ["a", "b"]);
    assert_eq!(
        ids(store.list_devices(Some(&id("b")), 2).unwrap()),
        ["c", "d"]
    );
    assert_eq!(ids(store.list_devices(Some(&id("d")), 2).unwrap()), ["e"]);
    assert!(store.list_devices(Some(&id("e")), 2).unwrap().is_empty());
    // `after` need not exist.
    assert_eq!(ids(store.list_devices(Some(&id("bb")), 1).unwrap()), ["c"]);
    assert!(store.list_devices(None, 0).unwrap().is_empty());
    assert_eq!(store.count_devices().unwrap(), 5);
}

#[test]
fn update_labels_and_credential() {
    let (_dir, store) = temp_store();
    store.create_device(new_device("d")).unwrap();
    let labels = BTreeMap::from([("floor".to_owned(), "3".to_owned())]);
    let updated = store.set_device_labels(&id("d"), labels.clone()).unwrap();
    assert_eq!(updated.labels, labels);
    assert_eq!(store.get_device(&id("d")).unwrap().unwrap().labels, labels);

    let keyed = DeviceCredential::keyed(store.token_key(), b"new-token");
    let updated = store.set_device_credential(&id("d"), keyed).unwrap();
    let key = store.token_key();
    assert!(updated.credential.verify(key, b"new-token"));
    let stored = store.get_device(&id("d")).unwrap().unwrap();
    assert!(!stored.credential.is_legacy());
    assert!(stored.credential.verify(key, b"new-token"));
    assert!(!stored.credential.verify(key, b"d"));

    for err in [
        store
            .set_device_labels(&id("x"), BTreeMap::new())
            .unwrap_err(),
        store
            .set_device_credential(&id("x"), DeviceCredential::Legacy(cheap_hash("t")))
            .unwrap_err(),
        store.rotate_device_key(&id("x"), 5).unwrap_err(),
        store.delete_device(&id("x")).unwrap_err(),
    ] {
        assert!(
            matches!(&err, StoreError::NotFound { kind: "device", key } if key == "x"),
            "{err:?}"
        );
    }
}

#[test]
fn rotation_keeps_two_generations() {
    let (_dir, store) = temp_store();
    let d = store.create_device(new_device("d")).unwrap();
    let k1 = d.current_key().unwrap().clone();

    let d = store.rotate_device_key(&id("d"), 2_000).unwrap();
    assert_eq!(d.keys.len(), 2);
    assert_eq!(d.key(1).unwrap().superseded_at_ms, Some(2_000));
    assert_eq!(d.key(1).unwrap().key, k1.key);
    let k2 = d.current_key().unwrap();
    assert_eq!(
        (k2.generation, k2.created_at_ms, k2.superseded_at_ms),
        (2, 2_000, None)
    );
    assert_ne!(k2.key, k1.key);

    let d = store.rotate_device_key(&id("d"), 3_000).unwrap();
    let gens: Vec<u8> = d.keys.iter().map(|k| k.generation).collect();
    assert_eq!(gens, [2, 3]);
    assert!(d.key(1).is_none());
    assert_eq!(d.key(2).unwrap().superseded_at_ms, Some(3_000));
    assert_eq!(d.current_key().unwrap().superseded_at_ms, None);
    assert_eq!(store.get_device(&id("d")).unwrap(), Some(d));
}

#[test]
fn rotation_stops_at_generation_255() {
    let (_dir, store) = temp_store();
    store.create_device(new_device("d")).unwrap();
    for now in 2..=255u64 {
        store.rotate_device_key(&id("d"), now).unwrap();
    }
    let before = store.get_device(&id("d")).unwrap().unwrap();
    assert_eq!(before.current_key().unwrap().generation, 255);
    let err = store.rotate_device_key(&id("d"), 999).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("255"), "{err}");
    // The failed rotation changed nothing.
    assert_eq!(store.get_device(&id("d")).unwrap().unwrap(), before);
}

#[test]
fn delete_returns_the_record() {
    let (_dir, store) = temp_store();
    let created = store.create_device(new_device("d")).unwrap();
    assert_eq!(store.delete_device(&id("d")).unwrap(), created);
    assert_eq!(store.get_device(&id("d")).unwrap(), None);
    assert_eq!(store.count_devices().unwrap(), 0);
    assert!(matches!(
        store.delete_device(&id("d")),
        Err(StoreError::NotFound { .. })
    ));
    // The id can be provisioned again, with fresh keys.
    let again = store.create_device(new_device("d")).unwrap();
    assert_ne!(again.keys[0].key, created.keys[0].key);
}

#[test]
fn corrupt_record_is_reported_not_panicked() {
    let (_dir, store) = temp_store();
    store.create_device(new_device("good")).unwrap();
    store
        .write(|txn| {
            let mut t = txn.open_table(DEVICES)?;
            t.insert("bad", [0x00u8, 0xff, 0xff].as_slice())?;
            t.insert("future", [0x07u8].as_slice())?;
            Ok(())
        })
        .unwrap();
    for key in ["bad", "future"] {
        let err = store.get_device(&id(key)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "devices", key: k, .. } if k == key),
            "{err:?}"
        );
    }
    assert!(matches!(
        store.list_devices(None, 10),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.rotate_device_key(&id("bad"), 1),
        Err(StoreError::Corrupt { .. })
    ));
    // A corrupt record is not silently deleted.
    assert!(matches!(
        store.delete_device(&id("bad")),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(store.count_devices().unwrap(), 3);
    assert!(store.get_device(&id("good")).unwrap().is_some());
}

#[test]
fn record_under_wrong_key_is_corrupt() {
    let (_dir, store) = temp_store();
    let rec = store.create_device(new_device("a")).unwrap();
    store
        .write(|txn| {
            let bytes = codec::encode_device(at("a"), &rec)?;
            txn.open_table(DEVICES)?.insert("b", bytes.as_slice())?;
            Ok(())
        })
        .unwrap();
    assert!(matches!(
        store.get_device(&id("b")),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let created = {
        let store = Store::open(dir.path()).unwrap();
        store.create_device(new_device("d")).unwrap();
        store.rotate_device_key(&id("d"), 5_000).unwrap()
    };
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.get_device(&id("d")).unwrap(), Some(created));
    assert_eq!(store.count_devices().unwrap(), 1);
}

/// What the encoder wrote for a device before keyed hashes (captured from it): device
/// `legacy-1`, no labels but `site=a`, key generation 1, and a PBKDF2 (100,000
/// iterations) hash of `LEGACY_TOKEN`.
const LEGACY_RECORD: &str = concat!(
    "00086c65676163792d31046a736f6e010473697465016100",
    "a08d06ce1c98025a056197226c685205cd74a7458428939620e3ea98c68e130f0c462bdc14",
    "20573053003682b4bb67b576a41001013333333333333333333333333333333333333333333333",
    "333333333333333333e80700e807",
);
const LEGACY_TOKEN: &[u8] = b"legacy-token-0123456789abcdef";

/// A store holding `LEGACY_RECORD` as an older build left it.
fn store_with_legacy_record() -> (tempfile::TempDir, Store) {
    let (dir, store) = temp_store();
    store
        .write(|txn| {
            let bytes = crate::test_support::unhex(LEGACY_RECORD);
            txn.open_table(DEVICES)?
                .insert("legacy-1", bytes.as_slice())?;
            Ok(())
        })
        .unwrap();
    (dir, store)
}

#[test]
fn a_record_of_the_old_format_reads_with_its_pbkdf2_credential() {
    let (_dir, store) = store_with_legacy_record();
    let d = store.get_device(&id("legacy-1")).unwrap().unwrap();
    let DeviceCredential::Legacy(hash) = &d.credential else {
        panic!("{:?}", d.credential)
    };
    assert_eq!(hash.iterations, crate::secret::DEFAULT_ITERATIONS);
    assert!(d.credential.verify(store.token_key(), LEGACY_TOKEN));
    assert!(!d.credential.verify(store.token_key(), b"legacy-token"));
    assert_eq!(d.labels["site"], "a");
    assert_eq!(d.current_key().unwrap().key, [0x33; 32]);
    assert_eq!(store.list_devices(None, 10).unwrap(), vec![d]);
}

/// The upgrade of `legacy-1` after `LEGACY_TOKEN` was verified against `checked`.
fn upgrade(store: &Store, id_: &str, checked: &CredentialHash) -> CredentialUpgrade {
    CredentialUpgrade {
        id: id(id_),
        checked: checked.clone(),
        keyed: store.token_key().hash(LEGACY_TOKEN),
    }
}

#[test]
fn a_legacy_credential_is_upgraded_to_a_keyed_hash_once() {
    let (dir, store) = store_with_legacy_record();
    let before = store.get_device(&id("legacy-1")).unwrap().unwrap();
    let DeviceCredential::Legacy(checked) = before.credential.clone() else {
        unreachable!()
    };
    // A device that is gone is skipped; the others are upgraded.
    let batch = [
        upgrade(&store, "nobody", &checked),
        upgrade(&store, "legacy-1", &checked),
    ];
    assert_eq!(store.upgrade_device_credentials(&batch).unwrap(), 1);
    let upgraded = store.get_device(&id("legacy-1")).unwrap().unwrap();
    assert!(!upgraded.credential.is_legacy());
    assert!(upgraded.credential.verify(store.token_key(), LEGACY_TOKEN));
    assert!(!upgraded.credential.verify(store.token_key(), b"other"));
    // Everything but the credential is as it was.
    assert_eq!(
        DeviceRecord {
            credential: before.credential.clone(),
            ..upgraded.clone()
        },
        before
    );
    // A second upgrade against the old hash finds it gone and writes nothing.
    assert_eq!(store.upgrade_device_credentials(&batch).unwrap(), 0);
    assert_eq!(store.upgrade_device_credentials(&[]).unwrap(), 0);
    // The upgrade was not durable by itself; the next durable commit (any write) or a
    // clean close keeps it, and the key it needs is in the same file.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let stored = store.get_device(&id("legacy-1")).unwrap().unwrap();
    assert_eq!(stored, upgraded);
    assert!(stored.credential.verify(store.token_key(), LEGACY_TOKEN));
}

#[test]
fn a_rotation_between_check_and_upgrade_wins() {
    let (_dir, store) = store_with_legacy_record();
    let d = store.get_device(&id("legacy-1")).unwrap().unwrap();
    let DeviceCredential::Legacy(checked) = d.credential else {
        unreachable!()
    };
    let rotated = DeviceCredential::keyed(store.token_key(), b"rotated");
    store
        .set_device_credential(&id("legacy-1"), rotated.clone())
        .unwrap();
    let batch = [upgrade(&store, "legacy-1", &checked)];
    assert_eq!(store.upgrade_device_credentials(&batch).unwrap(), 0);
    let stored = store.get_device(&id("legacy-1")).unwrap().unwrap();
    assert_eq!(stored.credential, rotated);
    assert!(!stored.credential.verify(store.token_key(), LEGACY_TOKEN));
}

#[test]
fn many_devices_in_one_transaction_with_conflicts_in_their_slots() {
    let (_dir, store) = temp_store();
    store.create_device(new_device("taken")).unwrap();
    store
        .create_service_client(ServiceClientRecord {
            name: "svc".into(),
            credential: cheap_hash("pw"),
            rules: Vec::new(),
            created_at_ms: 1,
        })
        .unwrap();
    let names = ["a", "taken", "b", "a", "svc", "c"];
    let got = store
        .create_devices(names.iter().map(|n| new_device(n)).collect())
        .unwrap();
    let outcome: Vec<Result<&str, &str>> = got
        .iter()
        .map(|r| match r {
            Ok(d) => Ok(d.id.as_str()),
            Err(StoreError::Conflict { kind, .. }) => Err(*kind),
            Err(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(
        outcome,
        [
            Ok("a"),
            Err("device"),
            Ok("b"),
            Err("device"),
            Err("service client"),
            Ok("c")
        ]
    );
    assert_eq!(store.count_devices().unwrap(), 4);
    let a = got[0].as_ref().unwrap();
    assert_eq!(store.get_device(&id("a")).unwrap().as_ref(), Some(a));
    assert!(store.create_devices(Vec::new()).unwrap().is_empty());
}
