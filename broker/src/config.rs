//! The broker's config sections (`[mqtt]`, `[mqtt.tls]`, `[security]`): a raw serde form
//! that rejects unknown keys, and `validate()` into typed values. Loading binds nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleetmq_storage::{AclAction, AclRule};
use serde::Deserialize;

/// `[mqtt]` as written in TOML / env / flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttConfig {
    pub tcp: Option<String>,
    pub ws: Option<String>,
    pub max_payload: Option<usize>,
    pub max_connections: Option<usize>,
    pub connect_timeout_s: Option<u64>,
    /// Seconds between `$SYS` updates; 0 disables them.
    pub sys_interval_s: Option<u64>,
    /// Receive Maximum: QoS 1/2 messages a client may have unacknowledged towards us.
    pub max_inflight: Option<u16>,
    /// Topic Alias Maximum announced to MQTT 5 clients (0: no inbound aliases).
    pub topic_alias_max: Option<u16>,
    /// Longest Keep Alive a client may use, in seconds (0: no cap).
    pub max_keepalive_s: Option<u16>,
    /// QoS 1/2 messages kept per disconnected persistent session (oldest dropped).
    pub max_queued_messages: Option<usize>,
    /// Whether a connected persistent session's messages are stored before their
    /// publishers' acks (survive kill -9), or only when it parks.
    pub durable_connected_sessions: Option<bool>,
    /// Messages waiting per connected client before its publishers are paused.
    pub max_pending_messages: Option<usize>,
    /// Seconds a congested client may go without acknowledging anything before it is
    /// disconnected.
    pub slow_consumer_timeout_s: Option<u64>,
    pub tls: Option<RawTlsConfig>,
}

/// `[mqtt.tls]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    pub listen: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// `[security]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityConfig {
    pub payload_encryption: Option<bool>,
    pub allow_anonymous: Option<bool>,
    pub anonymous_rules: Option<Vec<AclRule>>,
    pub key_grace_s: Option<u64>,
}

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
    pub telemetry: crate::fleet::telemetry::RawTelemetryConfig,
    pub webhooks: Vec<RawWebhookConfig>,
}

/// A validated webhook target.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
    /// Event types (`device.online`) or prefixes (`command.*`); `None` = every event.
    pub events: Option<Vec<String>>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Validated device-logic settings.
#[derive(Debug, Clone, Default)]
pub struct FleetConfig {
    pub commands: crate::fleet::commands::CommandsConfig,
    pub telemetry: crate::fleet::telemetry::TelemetryConfig,
    pub webhooks: Vec<WebhookSettings>,
}

/// A retention in days (`telemetry.retention_days`, `commands.history_days`): 1 to
/// 36,500 (100 years).
pub(crate) fn retention_days(key: &'static str, days: u64) -> Result<Duration, ConfigError> {
    if !(1..=36_500).contains(&days) {
        return Err(ConfigError {
            key,
            reason: format!("{days} is outside 1..=36500"),
        });
    }
    Ok(Duration::from_secs(days * 86_400))
}

fn at_least_one<T: PartialEq + From<u8>>(
    key: &'static str,
    value: Option<T>,
) -> Result<(), ConfigError> {
    if value == Some(T::from(0)) {
        return Err(ConfigError {
            key,
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

impl RawFleetConfig {
    /// Validates the device-logic sections.
    pub fn validate(self) -> Result<FleetConfig, ConfigError> {
        let c = self.commands;
        at_least_one("commands.timeout_s", c.timeout_s)?;
        at_least_one(
            "commands.max_queued_per_device",
            c.max_queued_per_device.map(|v| v as u64),
        )?;
        if c.max_retries.is_some_and(|r| r > 100) {
            return Err(ConfigError {
                key: "commands.max_retries",
                reason: "at most 100".into(),
            });
        }
        let mut fleet = FleetConfig::default();
        let commands = &mut fleet.commands;
        commands.timeout = c.timeout_s.map_or(commands.timeout, Duration::from_secs);
        commands.max_retries = c.max_retries.unwrap_or(commands.max_retries);
        commands.ttl = c.ttl_s.map_or(commands.ttl, Duration::from_secs);
        commands.max_queued_per_device = c
            .max_queued_per_device
            .unwrap_or(commands.max_queued_per_device);
        match c.history_days {
            None => {}
            Some(0) => commands.history = None,
            Some(days) => {
                commands.history = Some(retention_days("commands.history_days", days)?);
            }
        }
        fleet.telemetry = self.telemetry.validate()?;
        for hook in self.webhooks {
            if !hook.url.starts_with("http://") && !hook.url.starts_with("https://") {
                return Err(ConfigError {
                    key: "webhooks.url",
                    reason: format!("{:?} is not an http(s) URL", hook.url),
                });
            }
            if hook.secret.is_empty() {
                return Err(ConfigError {
                    key: "webhooks.secret",
                    reason: "must not be empty".into(),
                });
            }
            fleet.webhooks.push(WebhookSettings {
                url: hook.url,
                secret: hook.secret,
                events: hook.events,
            });
        }
        Ok(fleet)
    }
}

/// Validated TLS listener settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Everything the broker needs, validated.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `None` disables the listener.
    pub tcp: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    pub max_payload: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// How often `$SYS` topics are refreshed; `None` disables them.
    pub sys_interval: Option<Duration>,
    /// Receive Maximum announced to and enforced on clients (DISCONNECT 0x93).
    pub max_inflight: u16,
    /// Topic Alias Maximum announced to MQTT 5 clients.
    pub topic_alias_max: u16,
    /// Longest Keep Alive a client may use, in seconds; 0 = no cap. An MQTT 5 client
    /// asking for more, or for none (0), gets this as Server Keep Alive and is held to
    /// it; a 3.1.1 client doing so is refused (CONNACK 2), as Mosquitto's `max_keepalive`.
    pub max_keepalive: u16,
    /// QoS 1/2 messages kept per disconnected persistent session; past it the oldest is
    /// dropped and counted (`drops.session_queue_full`).
    pub max_queued_messages: usize,
    /// A connected persistent session's QoS 1/2 messages are written to its stored queue
    /// before their publishers get PUBACK/PUBREC, so they survive kill -9 (default).
    /// False: written only when the session parks (faster; kill -9 loses what its
    /// client had not acknowledged).
    pub durable_connected_sessions: bool,
    /// Messages waiting in a connected client's outbound queue past which it is
    /// congested: publishers whose QoS 1/2 messages would reach it are paused until it is
    /// back at half of this. QoS 0 messages past it are dropped (`drops.slow_consumer`).
    pub max_pending_messages: usize,
    /// A congested client that acknowledges nothing for this long is disconnected (v5:
    /// 0x97); so is one whose socket accepts nothing for this long.
    pub slow_consumer_timeout: Duration,
    /// Bytes per segment of the router's per-filter log (4 segments). Not a config key:
    /// tests shrink it to show that nothing depends on the log's size.
    pub router_segment_size: usize,
    pub payload_encryption: bool,
    pub allow_anonymous: bool,
    pub anonymous_rules: Vec<AclRule>,
    /// How long a superseded device key generation is still accepted.
    pub key_grace: Duration,
    /// Commands, telemetry and webhooks.
    pub fleet: FleetConfig,
}

/// The router keeps at most 4 segments of this size per filter (bare rumqttd's example
/// config keeps 1 GiB per filter).
const ROUTER_SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// A config value that cannot be used, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

/// SPEC §3: anonymous clients get everything outside the device tree and `$SYS`.
pub fn default_anonymous_rules() -> Vec<AclRule> {
    let rule = |topic: &str, allow| AclRule {
        action: AclAction::All,
        topic: topic.to_owned(),
        allow,
    };
    vec![
        rule("device/#", false),
        rule("$SYS/#", false),
        rule("#", true),
    ]
}

impl BrokerConfig {
    /// Defaults of SPEC §1 with every listener on `127.0.0.1:0`, for tests.
    pub fn for_tests() -> BrokerConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        BrokerConfig {
            tcp: Some(any),
            ws: Some(any),
            tls: None,
            max_payload: 262_144,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            sys_interval: Some(Duration::from_secs(10)),
            max_inflight: 100,
            topic_alias_max: 16,
            max_keepalive: 0,
            max_queued_messages: 1000,
            durable_connected_sessions: true,
            max_pending_messages: 1000,
            slow_consumer_timeout: Duration::from_secs(30),
            router_segment_size: ROUTER_SEGMENT_SIZE,
            payload_encryption: false,
            allow_anonymous: false,
            anonymous_rules: default_anonymous_rules(),
            key_grace: Duration::from_secs(24 * 3600),
            fleet: FleetConfig::default(),
        }
    }
}

fn listen_addr(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| ConfigError {
        key,
        reason: format!("{value:?} is not an address like 0.0.0.0:1883 ({e})"),
    })
}

impl RawTlsConfig {
    fn validate(self) -> Result<Option<TlsConfig>, ConfigError> {
        let (cert, key) = match (self.cert, self.key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(ConfigError {
                    key: "mqtt.tls.key",
                    reason: "required when mqtt.tls.cert is set".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    key: "mqtt.tls.cert",
                    reason: "required when mqtt.tls.key is set".into(),
                })
            }
        };
        let Some(listen) = listen_addr("mqtt.tls.listen", self.listen, "0.0.0.0:8883")? else {
            return Ok(None);
        };
        Ok(Some(TlsConfig {
            listen,
            cert,
            key,
            client_ca: self.client_ca,
        }))
    }
}

/// Validates `[mqtt]` and `[security]` together into a [`BrokerConfig`].
pub fn validate(
    mqtt: RawMqttConfig,
    security: RawSecurityConfig,
    fleet: RawFleetConfig,
) -> Result<BrokerConfig, ConfigError> {
    let max_payload = mqtt.max_payload.unwrap_or(262_144);
    if max_payload == 0 || max_payload > 256 * 1024 * 1024 {
        return Err(ConfigError {
            key: "mqtt.max_payload",
            reason: format!("{max_payload} is outside 1..=268435456"),
        });
    }
    let max_connections = mqtt.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        return Err(ConfigError {
            key: "mqtt.max_connections",
            reason: "must be at least 1".into(),
        });
    }
    let connect_timeout_s = mqtt.connect_timeout_s.unwrap_or(10);
    if connect_timeout_s == 0 {
        return Err(ConfigError {
            key: "mqtt.connect_timeout_s",
            reason: "must be at least 1".into(),
        });
    }
    let max_inflight = mqtt.max_inflight.unwrap_or(100);
    if max_inflight == 0 {
        return Err(ConfigError {
            key: "mqtt.max_inflight",
            reason: "must be at least 1 (a Receive Maximum of 0 is a protocol error)".into(),
        });
    }
    let max_queued_messages = mqtt.max_queued_messages.unwrap_or(1000);
    if max_queued_messages == 0 {
        return Err(ConfigError {
            key: "mqtt.max_queued_messages",
            reason: "must be at least 1".into(),
        });
    }
    let max_pending_messages = mqtt.max_pending_messages.unwrap_or(1000);
    if max_pending_messages == 0 {
        return Err(ConfigError {
            key: "mqtt.max_pending_messages",
            reason: "must be at least 1".into(),
        });
    }
    let slow_consumer_timeout_s = mqtt.slow_consumer_timeout_s.unwrap_or(30);
    if slow_consumer_timeout_s == 0 {
        return Err(ConfigError {
            key: "mqtt.slow_consumer_timeout_s",
            reason: "must be at least 1".into(),
        });
    }
    let anonymous_rules = security
        .anonymous_rules
        .unwrap_or_else(default_anonymous_rules);
    for rule in &anonymous_rules {
        let filter = rule.topic.as_str();
        if !crate::link::valid_rule_filter(filter) {
            return Err(ConfigError {
                key: "security.anonymous_rules",
                reason: format!("{filter:?} is not a valid topic filter"),
            });
        }
    }
    Ok(BrokerConfig {
        tcp: listen_addr("mqtt.tcp", mqtt.tcp, "0.0.0.0:1883")?,
        ws: listen_addr("mqtt.ws", mqtt.ws, "0.0.0.0:9001")?,
        tls: mqtt.tls.unwrap_or_default().validate()?,
        max_payload,
        max_connections,
        connect_timeout: Duration::from_secs(connect_timeout_s),
        sys_interval: match mqtt.sys_interval_s.unwrap_or(10) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
        max_inflight,
        topic_alias_max: mqtt.topic_alias_max.unwrap_or(16),
        max_keepalive: mqtt.max_keepalive_s.unwrap_or(0),
        max_queued_messages,
        durable_connected_sessions: mqtt.durable_connected_sessions.unwrap_or(true),
        max_pending_messages,
        slow_consumer_timeout: Duration::from_secs(slow_consumer_timeout_s),
        router_segment_size: ROUTER_SEGMENT_SIZE,
        payload_encryption: security.payload_encryption.unwrap_or(false),
        allow_anonymous: security.allow_anonymous.unwrap_or(false),
        anonymous_rules,
        key_grace: Duration::from_secs(security.key_grace_s.unwrap_or(24 * 3600)),
        fleet: fleet.validate()?,
    })
}
