//! The device-logic config sections this module owns: `[commands]`, `[telemetry]` (in
//! `telemetry`) and `[[webhooks]]`, raw as written and validated.

use std::time::Duration;

use serde::Deserialize;

use super::commands::CommandsConfig;
use super::events::{self, WebhookConfig};
use super::telemetry::{RawTelemetryConfig, TelemetryConfig};
use crate::settings::{at_least_one, retention_days, ConfigError};

/// `[commands]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommandsConfig {
    pub timeout_s: Option<u64>,
    pub max_retries: Option<u32>,
    pub ttl_s: Option<u64>,
    pub max_queued_per_device: Option<usize>,
    pub history_days: Option<u64>,
}

/// One `[[webhooks]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookConfig {
    pub url: String,
    pub secret: String,
    pub events: Option<Vec<String>>,
}

/// The device-logic sections: `[commands]`, `[telemetry]`, `[[webhooks]]`.
#[derive(Debug, Clone, Default)]
pub struct RawFleetConfig {
    pub commands: RawCommandsConfig,
    pub telemetry: RawTelemetryConfig,
    pub webhooks: Vec<RawWebhookConfig>,
}

/// Validated device-logic settings.
#[derive(Debug, Clone, Default)]
pub struct FleetConfig {
    pub commands: CommandsConfig,
    pub telemetry: TelemetryConfig,
    pub webhooks: Vec<WebhookConfig>,
    /// Job runner timing (not config keys).
    pub jobs: super::jobs::JobsConfig,
}

impl RawFleetConfig {
    /// Validates the device-logic sections.
    pub fn validate(self) -> Result<FleetConfig, ConfigError> {
        Ok(FleetConfig {
            commands: self.commands.validate()?,
            telemetry: self.telemetry.validate()?,
            webhooks: validate_webhooks(self.webhooks)?,
            jobs: Default::default(),
        })
    }
}

impl RawCommandsConfig {
    fn validate(self) -> Result<CommandsConfig, ConfigError> {
        at_least_one("commands.timeout_s", self.timeout_s)?;
        at_least_one(
            "commands.max_queued_per_device",
            self.max_queued_per_device.map(|v| v as u64),
        )?;
        if self.max_retries.is_some_and(|r| r > 100) {
            return Err(ConfigError::new("commands.max_retries", "at most 100"));
        }
        let mut commands = CommandsConfig::default();
        commands.timeout = self.timeout_s.map_or(commands.timeout, Duration::from_secs);
        commands.max_retries = self.max_retries.unwrap_or(commands.max_retries);
        commands.ttl = self.ttl_s.map_or(commands.ttl, Duration::from_secs);
        commands.max_queued_per_device = self
            .max_queued_per_device
            .unwrap_or(commands.max_queued_per_device);
        match self.history_days {
            None => {}
            Some(0) => commands.history = None,
            Some(days) => {
                commands.history = Some(retention_days("commands.history_days", days)?);
            }
        }
        Ok(commands)
    }
}

/// Every `[[webhooks]]` entry through the event bus's own check (an http(s) URL with a
/// host, a secret, valid event patterns, no URL twice).
fn validate_webhooks(raw: Vec<RawWebhookConfig>) -> Result<Vec<WebhookConfig>, ConfigError> {
    let hooks: Vec<WebhookConfig> = raw
        .into_iter()
        .map(|h| WebhookConfig {
            url: h.url,
            secret: h.secret,
            events: h.events,
        })
        .collect();
    events::validate_webhooks(&hooks).map_err(|e| ConfigError::new(e.key(), e.reason()))?;
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused `[[webhooks]]` entry names its key once, and the entry by its URL.
    #[test]
    fn webhook_errors_name_their_key_and_entry() {
        let hook = |url: &str, secret: &str, events: Option<Vec<String>>| RawWebhookConfig {
            url: url.into(),
            secret: secret.into(),
            events,
        };
        let cases = [
            (
                hook("ftp://x", "s", None),
                "invalid value for `webhooks.url`: \"ftp://x\" is not an http(s) URL with a host",
            ),
            (
                hook("http://a.example/h", "", None),
                "invalid value for `webhooks.secret`: must not be empty for \"http://a.example/h\"",
            ),
            (
                hook("http://a.example/h", "s", Some(vec!["no pe".into()])),
                "invalid value for `webhooks.events`: \"no pe\" (for \"http://a.example/h\") is \
                 not an event type, a prefix ending in `.*`, or `*`",
            ),
        ];
        for (raw, want) in cases {
            let err = validate_webhooks(vec![raw]).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let twice = vec![hook("http://a.example/h", "s", None); 2];
        assert_eq!(
            validate_webhooks(twice).unwrap_err().to_string(),
            "invalid value for `webhooks.url`: \"http://a.example/h\" is configured twice"
        );
    }
}
