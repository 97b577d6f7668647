//! The command API's cache of devices: a create needs the device's plugin, and a store
//! read per request was a measurable part of it.

use std::collections::HashMap;
use std::sync::Arc;

use fleetmq_device_plugins::DevicePlugin;
use fleetmq_storage::{DeviceId, DeviceRecord};

use super::{CommandEngine, CommandError};

/// Most devices [`CommandEngine::cached_device`] remembers (then it starts over).
const DEVICE_CACHE_MAX: usize = 100_000;

/// The devices the command API looked up, so a create costs no store read. A device's
/// plugin never changes; only its deletion makes an entry wrong, and
/// [`CommandEngine::forget_cached_device`] runs before a delete is answered. `epoch`
/// counts those: a lookup that raced with one is not remembered.
#[derive(Default)]
pub(super) struct DeviceCache {
    plugins: HashMap<DeviceId, Arc<dyn DevicePlugin>>,
    epoch: u64,
}

/// A device commands may be created for: its id and plugin (see
/// [`CommandEngine::cached_device`]).
#[derive(Clone)]
pub struct KnownDevice {
    pub id: DeviceId,
    pub(super) plugin: Arc<dyn DevicePlugin>,
}

impl KnownDevice {
    /// The device's plugin.
    pub(crate) fn plugin(&self) -> &Arc<dyn DevicePlugin> {
        &self.plugin
    }
}

impl std::fmt::Debug for KnownDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownDevice")
            .field("id", &self.id)
            .field("plugin", &self.plugin.name())
            .finish()
    }
}

/// What [`CommandEngine::remember_device`] needs to know whether the device was
/// forgotten since the cache missed.
#[derive(Debug, Clone, Copy)]
pub struct CacheMiss(u64);

impl CommandEngine {
    fn devices(&self) -> std::sync::MutexGuard<'_, DeviceCache> {
        self.shared
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The device `id` if a lookup remembered it; otherwise what
    /// [`CommandEngine::remember_device`] needs after reading it from the store.
    pub fn cached_device(&self, id: &DeviceId) -> Result<KnownDevice, CacheMiss> {
        self.cached_plugin(id).map(|plugin| KnownDevice {
            id: id.clone(),
            plugin,
        })
    }

    /// The plugin of device `id` if a lookup remembered it: the same cache serves the
    /// link layer's per-message work (`Services::plugin_of`), without copying the id.
    pub(crate) fn cached_plugin(&self, id: &DeviceId) -> Result<Arc<dyn DevicePlugin>, CacheMiss> {
        let cache = self.devices();
        match cache.plugins.get(id) {
            Some(plugin) => Ok(plugin.clone()),
            None => Err(CacheMiss(cache.epoch)),
        }
    }

    /// `device`, read from the store after `miss`, as a [`KnownDevice`]; remembered
    /// unless a device was forgotten since the miss (it may have been this one).
    pub fn remember_device(
        &self,
        device: &DeviceRecord,
        miss: CacheMiss,
    ) -> Result<KnownDevice, CommandError> {
        let known = self.known(device)?;
        let mut cache = self.devices();
        if cache.epoch == miss.0 {
            if cache.plugins.len() >= DEVICE_CACHE_MAX {
                cache.plugins.clear();
            }
            cache.plugins.insert(known.id.clone(), known.plugin.clone());
        }
        Ok(known)
    }

    /// The device was deleted: [`CommandEngine::cached_device`] no longer knows it.
    /// Must run before the deletion is answered.
    pub fn forget_cached_device(&self, id: &DeviceId) {
        let mut cache = self.devices();
        cache.plugins.remove(id);
        cache.epoch += 1;
    }

    pub(super) fn known(&self, device: &DeviceRecord) -> Result<KnownDevice, CommandError> {
        Ok(KnownDevice {
            id: device.id.clone(),
            plugin: self.plugin(device)?,
        })
    }
}
