//! The broker's config, composed from the sections each module owns: `[mqtt]` and
//! `[security]` (`link::settings`), `[teltonika]` (`link::teltonika::settings`),
//! `[commands]`, `[telemetry]` and `[[webhooks]]` (`fleet::settings`). Each section is a raw serde form that rejects unknown keys and
//! validates into typed values; loading binds nothing.

pub use crate::fleet::settings::{
    FleetConfig, RawCommandsConfig, RawFleetConfig, RawWebhookConfig,
};
pub use crate::fleet::WebhookConfig;
pub use crate::link::settings::{
    default_anonymous_rules, AuthBackoffConfig, BrokerConfig, ListenerSpec, RawAuthBackoffConfig,
    RawListenerConfig, RawMqttConfig, RawSecurityConfig, RawTlsConfig, RefusalLogConfig, TlsConfig,
};
pub use crate::link::teltonika::settings::{RawTeltonikaConfig, TeltonikaConfig};
pub use crate::settings::ConfigError;

/// Validates every section the broker owns into a [`BrokerConfig`].
pub fn validate(
    mqtt: RawMqttConfig,
    security: RawSecurityConfig,
    teltonika: RawTeltonikaConfig,
    fleet: RawFleetConfig,
) -> Result<BrokerConfig, ConfigError> {
    let fleet = fleet.validate()?;
    let teltonika = teltonika.validate()?;
    crate::link::settings::validate(mqtt, security, fleet, teltonika)
}
