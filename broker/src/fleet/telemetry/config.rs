//! The `[telemetry]` config section, raw as written and validated.

use std::time::Duration;

use serde::Deserialize;

use crate::settings::ConfigError;

const MS_PER_DAY: u64 = 86_400_000;

/// `[telemetry]` as written in TOML / env / flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetryConfig {
    pub retention_days: Option<u64>,
    pub max_points_per_device: Option<u64>,
    pub store: Option<bool>,
    pub webhook: Option<bool>,
    pub webhook_interval_s: Option<u64>,
}

/// How telemetry is queued, batched and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Points older than this are removed (by their timestamp).
    pub retention: Duration,
    /// Each device keeps at most this many points; the oldest go first.
    pub max_points_per_device: u64,
    /// `telemetry.store`: whether telemetry is stored. When false it is still checked
    /// by the device's plugin (a refused payload is counted and raised as
    /// `device.bad_payload`) and routed to subscribers, but no point is kept.
    pub store: bool,
    /// Capacity of the ingest queue, in points.
    pub queue: usize,
    /// Most points committed in one write transaction.
    pub batch_max: usize,
    /// How long the writer waits for a batch to fill once it has a point.
    pub batch_delay: Duration,
    /// How often the sweeper enforces retention (also once at start).
    pub sweep_every: Duration,
    /// `telemetry.webhook`: the `telemetry` event goes to every webhook, not only to
    /// those whose `events` name it (SPEC §7).
    pub webhook: bool,
    /// `telemetry.webhook_interval_s`: at most one `telemetry` event per device this
    /// often.
    pub webhook_interval: Duration,
}

impl Default for TelemetryConfig {
    /// SPEC §1's defaults: 7 days, 100 000 points per device.
    fn default() -> Self {
        TelemetryConfig {
            retention: Duration::from_millis(7 * MS_PER_DAY),
            max_points_per_device: 100_000,
            store: true,
            queue: 65_536,
            batch_max: 16_384,
            batch_delay: Duration::from_millis(20),
            sweep_every: Duration::from_secs(60),
            webhook: false,
            webhook_interval: Duration::from_secs(5),
        }
    }
}

impl RawTelemetryConfig {
    /// Validates into a [`TelemetryConfig`] with the default queue and batching.
    pub fn validate(self) -> Result<TelemetryConfig, ConfigError> {
        let defaults = TelemetryConfig::default();
        let retention = crate::settings::retention_days(
            "telemetry.retention_days",
            self.retention_days.unwrap_or(7),
        )?;
        let max_points_per_device = self
            .max_points_per_device
            .unwrap_or(defaults.max_points_per_device);
        if max_points_per_device == 0 {
            return Err(ConfigError::new(
                "telemetry.max_points_per_device",
                "must be at least 1",
            ));
        }
        crate::settings::at_least_one("telemetry.webhook_interval_s", self.webhook_interval_s)?;
        Ok(TelemetryConfig {
            retention,
            max_points_per_device,
            store: self.store.unwrap_or(defaults.store),
            webhook: self.webhook.unwrap_or(defaults.webhook),
            webhook_interval: self
                .webhook_interval_s
                .map_or(defaults.webhook_interval, Duration::from_secs),
            ..defaults
        })
    }
}
