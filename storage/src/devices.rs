//! The `devices` table: device id → versioned [`DeviceRecord`].

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{ReadableTable, ReadableTableMetadata as _};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::model::{DeviceKey, DeviceRecord, NewDevice};
use crate::schema::{DEVICES, DEVICES_TABLE as TABLE};
use crate::secret::{generate_key, CredentialHash};
use crate::service_clients;
use crate::store::Store;

/// How many key generations a device keeps: the current one and the one it
/// superseded, which stays valid for the grace period.
pub const KEPT_KEY_GENERATIONS: usize = 2;

const KIND: &str = "device";

fn at(key: &str) -> Location<'_> {
    Location { table: TABLE, key }
}

fn not_found(id: &DeviceId) -> StoreError {
    StoreError::NotFound {
        kind: KIND,
        key: id.to_string(),
    }
}

impl Store {
    /// Provisions a device with key generation 1.
    ///
    /// [`StoreError::Conflict`] if the id is taken by a device or by a service
    /// client's name (both are MQTT usernames).
    pub fn create_device(&self, new: NewDevice) -> Result<DeviceRecord, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(DEVICES)?;
            if table.get(new.id.as_str())?.is_some() {
                return Err(StoreError::Conflict {
                    kind: KIND,
                    key: new.id.to_string(),
                });
            }
            service_clients::ensure_name_free(txn, new.id.as_str())?;
            let record = DeviceRecord {
                keys: vec![DeviceKey {
                    generation: 1,
                    key: generate_key(),
                    created_at_ms: new.created_at_ms,
                    superseded_at_ms: None,
                }],
                id: new.id,
                plugin: new.plugin,
                labels: new.labels,
                encrypted: new.encrypted,
                credential: new.credential,
                created_at_ms: new.created_at_ms,
            };
            let key = record.id.as_str();
            table.insert(key, codec::encode_device(at(key), &record)?.as_slice())?;
            Ok(record)
        })
    }

    /// The device with this id, if provisioned.
    pub fn get_device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(DEVICES)?;
            let key = id.as_str();
            match table.get(key)? {
                Some(v) => Ok(Some(codec::decode_device(at(key), v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Up to `limit` devices ordered by id, starting strictly after `after`
    /// (keyset pagination: pass the last id of the previous page).
    pub fn list_devices(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(DEVICES)?;
            let start = match after {
                Some(id) => Bound::Excluded(id.as_str()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::with_capacity(limit.min(1024));
            for entry in table.range::<&str>((start, Bound::Unbounded))?.take(limit) {
                let (k, v) = entry?;
                out.push(codec::decode_device(at(k.value()), v.value())?);
            }
            Ok(out)
        })
    }

    /// How many devices are provisioned.
    pub fn count_devices(&self) -> Result<u64, StoreError> {
        self.read(|txn| Ok(txn.open_table(DEVICES)?.len()?))
    }

    /// Replaces a device's labels. [`StoreError::NotFound`] if absent.
    pub fn set_device_labels(
        &self,
        id: &DeviceId,
        labels: BTreeMap<String, String>,
    ) -> Result<DeviceRecord, StoreError> {
        self.update_device(id, |d| {
            d.labels = labels;
            Ok(())
        })
    }

    /// Replaces a device's credential hash (token rotation); the old token
    /// stops working at commit. [`StoreError::NotFound`] if absent.
    pub fn set_device_credential(
        &self,
        id: &DeviceId,
        credential: CredentialHash,
    ) -> Result<DeviceRecord, StoreError> {
        self.update_device(id, |d| {
            d.credential = credential;
            Ok(())
        })
    }

    /// Adds key generation n+1 and marks generation n superseded at `now_ms`.
    /// Only the [`KEPT_KEY_GENERATIONS`] newest generations are kept.
    ///
    /// [`StoreError::Invalid`] once generation 255 exists (the envelope's
    /// generation byte would wrap); [`StoreError::NotFound`] if absent.
    pub fn rotate_device_key(
        &self,
        id: &DeviceId,
        now_ms: u64,
    ) -> Result<DeviceRecord, StoreError> {
        self.update_device(id, |d| {
            let current = d.keys.last().map_or(0, |k| k.generation);
            let next = current.checked_add(1).ok_or_else(|| {
                StoreError::Invalid(format!(
                    "device {id} is at key generation {current}, the last one; \
                     delete and re-provision it to start over"
                ))
            })?;
            if let Some(last) = d.keys.last_mut() {
                last.superseded_at_ms.get_or_insert(now_ms);
            }
            d.keys.push(DeviceKey {
                generation: next,
                key: generate_key(),
                created_at_ms: now_ms,
                superseded_at_ms: None,
            });
            let excess = d.keys.len().saturating_sub(KEPT_KEY_GENERATIONS);
            d.keys.drain(..excess);
            Ok(())
        })
    }

    /// Removes a device and returns what was removed. [`StoreError::NotFound`]
    /// if absent. A record that does not decode is left in place and reported
    /// as [`StoreError::Corrupt`].
    pub fn delete_device(&self, id: &DeviceId) -> Result<DeviceRecord, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(DEVICES)?;
            let key = id.as_str();
            let removed = table.remove(key)?.ok_or_else(|| not_found(id))?;
            codec::decode_device(at(key), removed.value())
        })
    }

    /// Read-modify-write of one device in a single write transaction.
    fn update_device(
        &self,
        id: &DeviceId,
        change: impl FnOnce(&mut DeviceRecord) -> Result<(), StoreError>,
    ) -> Result<DeviceRecord, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(DEVICES)?;
            let key = id.as_str();
            let mut record = {
                let bytes = table.get(key)?.ok_or_else(|| not_found(id))?;
                codec::decode_device(at(key), bytes.value())?
            };
            change(&mut record)?;
            table.insert(key, codec::encode_device(at(key), &record)?.as_slice())?;
            Ok(record)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AclAction, AclRule, ServiceClientRecord};
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
        assert!(created.credential.verify(b"dev-1"));

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
        let ids =
            |v: Vec<DeviceRecord>| v.into_iter().map(|d| d.id.to_string()).collect::<Vec<_>>();
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

        let updated = store
            .set_device_credential(&id("d"), cheap_hash("new-token"))
            .unwrap();
        assert!(updated.credential.verify(b"new-token"));
        let stored = store.get_device(&id("d")).unwrap().unwrap();
        assert!(stored.credential.verify(b"new-token"));
        assert!(!stored.credential.verify(b"d"));

        for err in [
            store
                .set_device_labels(&id("x"), BTreeMap::new())
                .unwrap_err(),
            store
                .set_device_credential(&id("x"), cheap_hash("t"))
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
}
