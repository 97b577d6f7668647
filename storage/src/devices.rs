//! The `devices` table: device id → versioned [`DeviceRecord`].

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{ReadableTable, ReadableTableMetadata as _, WriteTransaction};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::model::{CredentialUpgrade, DeviceKey, DeviceRecord, NewDevice};
use crate::schema::{DEVICES, DEVICES_TABLE as TABLE};
use crate::secret::{generate_key, DeviceCredential};
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

/// Inserts a new device with key generation 1 in `txn`; [`StoreError::Conflict`] if its
/// id is taken by a device or a service client.
fn insert_new(txn: &WriteTransaction, new: NewDevice) -> Result<DeviceRecord, StoreError> {
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
}

impl Store {
    /// Provisions a device with key generation 1.
    ///
    /// [`StoreError::Conflict`] if the id is taken by a device or by a service
    /// client's name (both are MQTT usernames).
    pub fn create_device(&self, new: NewDevice) -> Result<DeviceRecord, StoreError> {
        self.write(|txn| insert_new(txn, new))
    }

    /// Provisions many devices in one durable transaction, in order, as if each were
    /// given to [`Store::create_device`]: one whose id is taken (by a device, by an
    /// earlier one of `devices`, or by a service client) gets its
    /// [`StoreError::Conflict`] in its slot and the others are created. Any other
    /// failure creates none of them.
    pub fn create_devices(
        &self,
        devices: Vec<NewDevice>,
    ) -> Result<Vec<Result<DeviceRecord, StoreError>>, StoreError> {
        self.write(|txn| {
            let mut out = Vec::with_capacity(devices.len());
            for new in devices {
                match insert_new(txn, new) {
                    Err(conflict @ StoreError::Conflict { .. }) => out.push(Err(conflict)),
                    other => out.push(Ok(other?)),
                }
            }
            Ok(out)
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

    /// Replaces a device's credential (token rotation); the old token stops working at
    /// commit. [`StoreError::NotFound`] if absent.
    pub fn set_device_credential(
        &self,
        id: &DeviceId,
        credential: DeviceCredential,
    ) -> Result<DeviceRecord, StoreError> {
        self.update_device(id, |d| {
            d.credential = credential;
            Ok(())
        })
    }

    /// Replaces legacy PBKDF2 credentials by keyed hashes, in one transaction: each
    /// device whose record still holds the `checked` hash (its token was just verified
    /// against it) gets `keyed`; a device deleted or rotated since is left alone. Returns
    /// how many were replaced.
    ///
    /// Not durable: a crash may lose the upgrade, and the legacy hash, which still
    /// verifies the same token, is simply upgraded again at the next connect. So a fleet
    /// of legacy devices reconnecting at once costs no disk flush for it.
    pub fn upgrade_device_credentials(
        &self,
        upgrades: &[CredentialUpgrade],
    ) -> Result<usize, StoreError> {
        self.write_with(false, |txn| {
            let mut table = txn.open_table(DEVICES)?;
            let mut replaced = 0;
            for up in upgrades {
                let key = up.id.as_str();
                let mut record = match table.get(key)? {
                    Some(bytes) => codec::decode_device(at(key), bytes.value())?,
                    None => continue,
                };
                if !matches!(&record.credential, DeviceCredential::Legacy(c) if *c == up.checked) {
                    continue;
                }
                record.credential = DeviceCredential::Keyed(up.keyed.clone());
                table.insert(key, codec::encode_device(at(key), &record)?.as_slice())?;
                replaced += 1;
            }
            Ok(replaced)
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
mod tests;
