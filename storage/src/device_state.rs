//! The `device_state` table: what the broker last saw of each device (presence details
//! and the device's own reported status), device id → versioned [`DeviceState`].

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{DEVICES, DEVICE_STATE, DEVICE_STATE_TABLE as TABLE};
use crate::store::Store;

/// What the broker last saw of a device. Presence itself (online or not) is live state
/// of the broker; this is what survives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The connection generation that connected last.
    pub generation: u64,
    pub connected_at_ms: Option<u64>,
    pub disconnected_at_ms: Option<u64>,
    /// Last time anything was heard from the device.
    pub last_seen_ms: Option<u64>,
    pub ip: Option<String>,
    /// `"3.1.1"` or `"5"`.
    pub protocol: Option<String>,
    /// `tcp`, `ws` or `tls`.
    pub transport: Option<String>,
    /// The device's last `device/{id}/status` payload, as JSON text.
    pub reported_status: Option<String>,
    pub reported_status_at_ms: Option<u64>,
    /// `configVersion` from the reported status.
    pub reported_config_version: Option<u64>,
}

#[derive(Serialize, Deserialize)]
enum StoredState {
    V1(StateV1),
}

#[derive(Serialize, Deserialize)]
struct StateV1 {
    generation: u64,
    connected_at_ms: Option<u64>,
    disconnected_at_ms: Option<u64>,
    last_seen_ms: Option<u64>,
    ip: Option<String>,
    protocol: Option<String>,
    transport: Option<String>,
    reported_status: Option<String>,
    reported_status_at_ms: Option<u64>,
    reported_config_version: Option<u64>,
}

fn encode(at: Location<'_>, s: &DeviceState) -> Result<Vec<u8>, StoreError> {
    let v1 = StateV1 {
        generation: s.generation,
        connected_at_ms: s.connected_at_ms,
        disconnected_at_ms: s.disconnected_at_ms,
        last_seen_ms: s.last_seen_ms,
        ip: s.ip.clone(),
        protocol: s.protocol.clone(),
        transport: s.transport.clone(),
        reported_status: s.reported_status.clone(),
        reported_status_at_ms: s.reported_status_at_ms,
        reported_config_version: s.reported_config_version,
    };
    codec::encode(at, &StoredState::V1(v1))
}

fn decode(at: Location<'_>, bytes: &[u8]) -> Result<DeviceState, StoreError> {
    let StoredState::V1(v) = codec::decode(at, bytes)?;
    Ok(DeviceState {
        generation: v.generation,
        connected_at_ms: v.connected_at_ms,
        disconnected_at_ms: v.disconnected_at_ms,
        last_seen_ms: v.last_seen_ms,
        ip: v.ip,
        protocol: v.protocol,
        transport: v.transport,
        reported_status: v.reported_status,
        reported_status_at_ms: v.reported_status_at_ms,
        reported_config_version: v.reported_config_version,
    })
}

impl Store {
    /// What the broker last saw of `id` (default when nothing yet).
    pub fn device_state(&self, id: &DeviceId) -> Result<DeviceState, StoreError> {
        let key = id.as_str();
        self.read(|txn| {
            let table = txn.open_table(DEVICE_STATE)?;
            match table.get(key)? {
                Some(v) => decode(Location { table: TABLE, key }, v.value()),
                None => Ok(DeviceState::default()),
            }
        })
    }

    /// Changes the state of `id` in one durable transaction; returns the new state. A
    /// device that no longer exists is left alone (`NotFound`), so a late event for a
    /// deleted device cannot bring its state back.
    pub fn update_device_state(
        &self,
        id: &DeviceId,
        change: impl FnOnce(&mut DeviceState),
    ) -> Result<DeviceState, StoreError> {
        let key = id.as_str();
        let at = Location { table: TABLE, key };
        self.write(|txn| {
            if txn.open_table(DEVICES)?.get(key)?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "device",
                    key: key.to_owned(),
                });
            }
            let mut table = txn.open_table(DEVICE_STATE)?;
            let mut state = match table.get(key)? {
                Some(v) => decode(at, v.value())?,
                None => DeviceState::default(),
            };
            change(&mut state);
            table.insert(key, encode(at, &state)?.as_slice())?;
            Ok(state)
        })
    }

    /// Applies several state changes in one durable transaction, in order (one commit
    /// for a whole batch of presence updates). A change for a device that does not
    /// exist (deleted meanwhile) is skipped. Returns how many were applied.
    pub fn update_device_states<F>(&self, changes: Vec<(DeviceId, F)>) -> Result<usize, StoreError>
    where
        F: FnOnce(&mut DeviceState),
    {
        self.write(|txn| {
            let devices = txn.open_table(DEVICES)?;
            let mut table = txn.open_table(DEVICE_STATE)?;
            let mut applied = 0;
            for (id, change) in changes {
                let key = id.as_str();
                if devices.get(key)?.is_none() {
                    continue;
                }
                let at = Location { table: TABLE, key };
                let mut state = match table.get(key)? {
                    Some(v) => decode(at, v.value())?,
                    None => DeviceState::default(),
                };
                change(&mut state);
                table.insert(key, encode(at, &state)?.as_slice())?;
                applied += 1;
            }
            Ok(applied)
        })
    }

    /// Forgets the state of a deleted device.
    pub fn delete_device_state(&self, id: &DeviceId) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(DEVICE_STATE)?.remove(id.as_str())?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{hex, temp_store};

    const STATE_V1: &str =
        "0007010a011401020105312e322e33010135010374637001077b2261223a317d011e0103";

    fn sample() -> DeviceState {
        DeviceState {
            generation: 7,
            connected_at_ms: Some(10),
            disconnected_at_ms: Some(20),
            last_seen_ms: Some(2),
            ip: Some("1.2.3".into()),
            protocol: Some("5".into()),
            transport: Some("tcp".into()),
            reported_status: Some("{\"a\":1}".into()),
            reported_status_at_ms: Some(30),
            reported_config_version: Some(3),
        }
    }

    #[test]
    fn golden_bytes() {
        let at = Location {
            table: TABLE,
            key: "d",
        };
        let bytes = encode(at, &sample()).unwrap();
        assert_eq!(hex(&bytes), STATE_V1);
        assert_eq!(decode(at, &bytes).unwrap(), sample());
        assert!(matches!(
            decode(at, &bytes[..bytes.len() - 1]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn updates_persist_and_need_the_device() {
        let (_dir, store) = temp_store();
        let id: DeviceId = "dev-1".parse().unwrap();
        assert!(matches!(
            store.update_device_state(&id, |s| s.generation = 1),
            Err(StoreError::NotFound { .. })
        ));
        store
            .create_device(crate::test_support::new_device("dev-1"))
            .unwrap();
        let s = store
            .update_device_state(&id, |s| s.last_seen_ms = Some(5))
            .unwrap();
        assert_eq!(s.last_seen_ms, Some(5));
        assert_eq!(store.device_state(&id).unwrap().last_seen_ms, Some(5));
        store.delete_device_state(&id).unwrap();
        assert_eq!(store.device_state(&id).unwrap(), DeviceState::default());
    }

    #[test]
    fn batched_updates_apply_in_order_and_skip_missing_devices() {
        let (_dir, store) = temp_store();
        let id: DeviceId = "dev-1".parse().unwrap();
        let gone: DeviceId = "gone".parse().unwrap();
        store
            .create_device(crate::test_support::new_device("dev-1"))
            .unwrap();
        type Change = Box<dyn FnOnce(&mut DeviceState)>;
        let changes: Vec<(DeviceId, Change)> = vec![
            (id.clone(), Box::new(|s| s.generation = 1)),
            (gone.clone(), Box::new(|s| s.generation = 9)),
            (id.clone(), Box::new(|s| s.generation += 1)),
            (id.clone(), Box::new(|s| s.last_seen_ms = Some(7))),
        ];
        assert_eq!(store.update_device_states(changes).unwrap(), 3);
        let s = store.device_state(&id).unwrap();
        assert_eq!((s.generation, s.last_seen_ms), (2, Some(7)));
        assert_eq!(store.device_state(&gone).unwrap(), DeviceState::default());
    }
}
