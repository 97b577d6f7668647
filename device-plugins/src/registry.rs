//! [`PluginRegistry`]: the plugins a broker knows, by name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::json::JsonPlugin;
use crate::plugin::{DevicePlugin, PluginError};
use crate::teltonika::TeltonikaPlugin;

/// The plugins available to devices, looked up by the name in a device record.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<&'static str, Arc<dyn DevicePlugin>>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding every plugin built into fleetmq (`json`, and `teltonika`
    /// without response patterns).
    pub fn builtin() -> Self {
        let mut plugins: BTreeMap<&'static str, Arc<dyn DevicePlugin>> = BTreeMap::new();
        plugins.insert(JsonPlugin::NAME, Arc::new(JsonPlugin));
        plugins.insert(TeltonikaPlugin::NAME, Arc::new(TeltonikaPlugin::default()));
        Self { plugins }
    }

    /// Adds `plugin`, or replaces the one registered under its name (a built-in plugin
    /// configured at start).
    pub fn set(&mut self, plugin: Arc<dyn DevicePlugin>) {
        self.plugins.insert(plugin.name(), plugin);
    }

    /// Adds `plugin` under its [`name`](DevicePlugin::name); a name is registered once.
    pub fn register(&mut self, plugin: Arc<dyn DevicePlugin>) -> Result<(), PluginError> {
        let name = plugin.name();
        if self.plugins.contains_key(name) {
            return Err(PluginError::DuplicatePlugin(name));
        }
        self.plugins.insert(name, plugin);
        Ok(())
    }

    /// The plugin called `name`, if registered.
    pub fn get(&self, name: &str) -> Option<Arc<dyn DevicePlugin>> {
        self.plugins.get(name).cloned()
    }

    /// Whether a plugin called `name` is registered (to validate a provisioning request).
    pub fn contains(&self, name: &str) -> bool {
        self.plugins.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.keys().copied().collect()
    }
}

impl fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("plugins", &self.names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_json_and_teltonika() {
        let mut reg = PluginRegistry::builtin();
        assert_eq!(reg.names(), vec!["json", "teltonika"]);
        assert_eq!(reg.get("json").map(|p| p.name()), Some("json"));
        assert!(reg.contains("json"));
        assert!(reg.get("JSON").is_none());
        assert!(reg.get("").is_none());
        assert_eq!(
            format!("{reg:?}"),
            r#"PluginRegistry { plugins: ["json", "teltonika"] }"#
        );
        let configured = Arc::new(TeltonikaPlugin::new(Vec::new()));
        reg.set(configured.clone());
        let got = reg.get("teltonika").expect("set");
        assert!(std::ptr::addr_eq(
            Arc::as_ptr(&got),
            Arc::as_ptr(&configured)
        ));
    }

    #[test]
    fn register_refuses_duplicates() {
        let mut reg = PluginRegistry::new();
        assert!(reg.names().is_empty());
        assert_eq!(reg.register(Arc::new(JsonPlugin)), Ok(()));
        assert_eq!(
            reg.register(Arc::new(JsonPlugin)),
            Err(PluginError::DuplicatePlugin("json"))
        );
        assert_eq!(reg.names(), vec!["json"]);
    }

    #[test]
    fn registry_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PluginRegistry>();
        assert_send_sync::<Arc<dyn DevicePlugin>>();
    }
}
