//! Versioned device configuration (SPEC §6): stored, then published retained at QoS 1 on
//! `device/{id}/config` (sealed per device at delivery when encryption applies).

use bytes::Bytes;
use fleetmq_device_plugins::PluginRegistry;
use fleetmq_storage::{now_ms, ConfigVersion, DeviceId, StoreError};
use serde::Serialize;

use super::services::Services;
use super::FleetError;

/// A device's configuration as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    pub version: u64,
    pub config: serde_json::Value,
    /// `configVersion` from the device's last status, if it reported one.
    pub reported_version: Option<u64>,
    pub updated_at_ms: u64,
}

fn view(v: ConfigVersion, reported_version: Option<u64>) -> Result<ConfigView, FleetError> {
    let config = serde_json::from_str(&v.config).map_err(|e| {
        FleetError::Storage(StoreError::Corrupt {
            table: "device_config",
            key: v.version.to_string(),
            reason: format!("stored config is not JSON: {e}"),
        })
    })?;
    Ok(ConfigView {
        version: v.version,
        config,
        reported_version,
        updated_at_ms: v.created_at_ms,
    })
}

/// A configuration version just stored, and the retained QoS 1 message that delivers it
/// (published by whoever composes fleet with a transport: `BrokerHandle`).
#[derive(Debug)]
pub struct StoredConfig {
    pub view: ConfigView,
    /// `device/{id}/config`.
    pub topic: String,
    /// The device plugin's encoding of the version.
    pub payload: Bytes,
}

impl Services {
    /// Stores `config` as the device's next version and encodes the message to publish.
    pub async fn store_device_config(
        &self,
        id: &DeviceId,
        config: serde_json::Value,
    ) -> Result<StoredConfig, FleetError> {
        if !config.is_object() {
            return Err(FleetError::Invalid("config must be a JSON object".into()));
        }
        let text = config.to_string();
        let lookup = id.clone();
        let (device, stored, state) = self
            .store
            .call(move |s| {
                let device = s.get_device(&lookup)?.ok_or_else(|| StoreError::NotFound {
                    kind: "device",
                    key: lookup.to_string(),
                })?;
                let stored = s.put_device_config(&lookup, &text, now_ms())?;
                let state = s.device_state(&lookup)?;
                Ok::<_, StoreError>((device, stored, state))
            })
            .await?;
        let plugin = PluginRegistry::builtin()
            .get(&device.plugin)
            .ok_or_else(|| {
                FleetError::Invalid(format!(
                    "device plugin {:?} is not available",
                    device.plugin
                ))
            })?;
        let payload = plugin
            .encode_config(stored.version, &config)
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        Ok(StoredConfig {
            view: view(stored, state.reported_config_version)?,
            topic: format!("device/{id}/config"),
            payload: payload.into(),
        })
    }

    /// The device's current configuration; `NotFound` if the device does not exist, `None`
    /// if no configuration was ever set.
    pub async fn device_config(&self, id: &DeviceId) -> Result<Option<ConfigView>, FleetError> {
        let lookup = id.clone();
        let (current, state) = self
            .store
            .call(move |s| {
                s.get_device(&lookup)?.ok_or_else(|| StoreError::NotFound {
                    kind: "device",
                    key: lookup.to_string(),
                })?;
                Ok::<_, StoreError>((s.device_config(&lookup)?, s.device_state(&lookup)?))
            })
            .await?;
        current
            .map(|c| view(c, state.reported_config_version))
            .transpose()
    }
}
