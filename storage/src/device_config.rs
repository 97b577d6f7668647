//! The `device_config` table: versioned device configuration (SPEC §6),
//! (device id, version) → versioned [`ConfigVersion`]. The newest [`KEPT_CONFIG_VERSIONS`]
//! versions of each device are kept as history.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{DEVICES, DEVICE_CONFIG, DEVICE_CONFIG_TABLE as TABLE};
use crate::store::Store;

/// How many versions per device are kept.
pub const KEPT_CONFIG_VERSIONS: usize = 10;

/// One stored version of a device's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigVersion {
    pub version: u64,
    /// The configuration object as JSON text, exactly as stored.
    pub config: String,
    pub created_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum StoredConfig {
    V1(ConfigV1),
}

#[derive(Serialize, Deserialize)]
struct ConfigV1 {
    config: String,
    created_at_ms: u64,
}

impl Store {
    /// Stores `config` (JSON text) as version n+1 of `id`'s configuration, durably, and
    /// drops versions beyond [`KEPT_CONFIG_VERSIONS`]. `NotFound` for an unknown device.
    pub fn put_device_config(
        &self,
        id: &DeviceId,
        config: &str,
        now_ms: u64,
    ) -> Result<ConfigVersion, StoreError> {
        let key = id.as_str();
        self.write(|txn| {
            if txn.open_table(DEVICES)?.get(key)?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "device",
                    key: key.to_owned(),
                });
            }
            let mut table = txn.open_table(DEVICE_CONFIG)?;
            let versions: Vec<u64> = table
                .range((key, 0)..=(key, u64::MAX))?
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            let version = versions.last().copied().unwrap_or(0) + 1;
            let at = Location { table: TABLE, key };
            let record = StoredConfig::V1(ConfigV1 {
                config: config.to_owned(),
                created_at_ms: now_ms,
            });
            table.insert((key, version), codec::encode(at, &record)?.as_slice())?;
            let excess = (versions.len() + 1).saturating_sub(KEPT_CONFIG_VERSIONS);
            for old in versions.iter().take(excess) {
                table.remove((key, *old))?;
            }
            Ok(ConfigVersion {
                version,
                config: config.to_owned(),
                created_at_ms: now_ms,
            })
        })
    }

    /// The newest configuration versions of `id`, newest first (at most `limit`).
    pub fn device_config_history(
        &self,
        id: &DeviceId,
        limit: usize,
    ) -> Result<Vec<ConfigVersion>, StoreError> {
        let key = id.as_str();
        self.read(|txn| {
            let table = txn.open_table(DEVICE_CONFIG)?;
            let mut out = Vec::new();
            for entry in table.range((key, 0)..=(key, u64::MAX))?.rev().take(limit) {
                let (k, v) = entry?;
                let version = k.value().1;
                let StoredConfig::V1(c) = codec::decode(Location { table: TABLE, key }, v.value())?;
                out.push(ConfigVersion {
                    version,
                    config: c.config,
                    created_at_ms: c.created_at_ms,
                });
            }
            Ok(out)
        })
    }

    /// The current configuration of `id`, if any was ever set.
    pub fn device_config(&self, id: &DeviceId) -> Result<Option<ConfigVersion>, StoreError> {
        Ok(self.device_config_history(id, 1)?.pop())
    }

    /// Forgets every configuration version of a deleted device.
    pub fn delete_device_config(&self, id: &DeviceId) -> Result<(), StoreError> {
        let key = id.as_str();
        self.write(|txn| {
            let mut table = txn.open_table(DEVICE_CONFIG)?;
            let versions: Vec<u64> = table
                .range((key, 0)..=(key, u64::MAX))?
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for v in versions {
                table.remove((key, v))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{new_device, temp_store};

    #[test]
    fn golden_bytes() {
        let at = Location {
            table: TABLE,
            key: "d",
        };
        let bytes = codec::encode(
            at,
            &StoredConfig::V1(ConfigV1 {
                config: "{}".into(),
                created_at_ms: 300,
            }),
        )
        .unwrap();
        assert_eq!(bytes, [0, 2, b'{', b'}', 0xac, 0x02]);
        let StoredConfig::V1(back) = codec::decode(at, &bytes).unwrap();
        assert_eq!((back.config.as_str(), back.created_at_ms), ("{}", 300));
    }

    #[test]
    fn versions_count_up_and_history_is_capped() {
        let (_dir, store) = temp_store();
        let id: DeviceId = "dev-1".parse().unwrap();
        assert!(matches!(
            store.put_device_config(&id, "{}", 1),
            Err(StoreError::NotFound { .. })
        ));
        store.create_device(new_device("dev-1")).unwrap();
        store.create_device(new_device("dev-10")).unwrap();
        assert_eq!(store.device_config(&id).unwrap(), None);
        for n in 1..=15u64 {
            let v = store
                .put_device_config(&id, &format!("{{\"n\":{n}}}"), n)
                .unwrap();
            assert_eq!(v.version, n);
        }
        store
            .put_device_config(&"dev-10".parse().unwrap(), "{\"other\":true}", 1)
            .unwrap();
        let history = store.device_config_history(&id, 100).unwrap();
        assert_eq!(history.len(), KEPT_CONFIG_VERSIONS);
        assert_eq!(history[0].version, 15);
        assert_eq!(history[0].config, "{\"n\":15}");
        assert_eq!(store.device_config(&id).unwrap().unwrap().version, 15);
        store.delete_device_config(&id).unwrap();
        assert_eq!(store.device_config(&id).unwrap(), None);
        assert_eq!(
            store
                .device_config(&"dev-10".parse().unwrap())
                .unwrap()
                .unwrap()
                .version,
            1
        );
    }
}
