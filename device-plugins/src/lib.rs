//! How a device's payloads are read and written (SPEC §9).
//!
//! Modules:
//! - `plugin`: the object-safe [`DevicePlugin`] trait and the plugin-neutral types it
//!   speaks ([`Telemetry`], [`RawTelemetry`], [`Command`], [`CommandResponse`], [`PendingCommand`],
//!   [`DeviceStatus`], [`DeviceEvent`]) plus the crate's error, [`PluginError`].
//! - `json`: [`JsonPlugin`], SPEC §3-§6's JSON payloads as written (the default plugin).
//! - [`rfc3339`]: a strict RFC 3339 parser and UTC formatter for telemetry timestamps.
//! - `registry`: [`PluginRegistry`], the plugins a broker knows, by name.
//! - [`teltonika`]: Teltonika trackers' binary TCP protocol (IMEI login, Codec 8/8E/16
//!   AVL data, Codec 12 commands) and its records as SPEC §10 telemetry points.
//!
//! Everything here is sans-IO: pure functions over bytes that return `Result` and never
//! panic on what a device sent.

mod json;
mod plugin;
mod registry;
pub mod rfc3339;
pub mod teltonika;

pub use json::{object_members, JsonPlugin};
pub use plugin::{
    Command, CommandResponse, DeviceEvent, DevicePlugin, DeviceStatus, PendingCommand, PluginError,
    RawTelemetry, Telemetry,
};
pub use registry::PluginRegistry;
