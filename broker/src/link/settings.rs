//! The config sections the link layer owns (`[mqtt]`, `[mqtt.tls]`, `[security]`): a raw
//! serde form that rejects unknown keys, and `validate()` into typed values. Loading binds
//! nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleetmq_storage::{AclAction, AclRule};
use serde::Deserialize;

use crate::fleet::settings::FleetConfig;
use crate::settings::{at_least_one, at_least_one_because, listen_addr, ConfigError};

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
    /// Commands, telemetry and webhooks (`fleet::settings`), carried to `start`.
    pub fleet: FleetConfig,
}

/// The router keeps at most 4 segments of this size per filter (bare rumqttd's example
/// config keeps 1 GiB per filter).
const ROUTER_SEGMENT_SIZE: usize = 4 * 1024 * 1024;

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

impl RawTlsConfig {
    fn validate(self) -> Result<Option<TlsConfig>, ConfigError> {
        let (cert, key) = match (self.cert, self.key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "mqtt.tls.key",
                    "required when mqtt.tls.cert is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "mqtt.tls.cert",
                    "required when mqtt.tls.key is set",
                ))
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

/// Validates `[mqtt]` and `[security]` together, with the validated device-logic
/// sections, into a [`BrokerConfig`].
pub fn validate(
    mqtt: RawMqttConfig,
    security: RawSecurityConfig,
    fleet: FleetConfig,
) -> Result<BrokerConfig, ConfigError> {
    let max_payload = mqtt.max_payload.unwrap_or(262_144);
    if max_payload == 0 || max_payload > 256 * 1024 * 1024 {
        return Err(ConfigError::new(
            "mqtt.max_payload",
            format!("{max_payload} is outside 1..=268435456"),
        ));
    }
    at_least_one("mqtt.max_connections", mqtt.max_connections)?;
    at_least_one("mqtt.connect_timeout_s", mqtt.connect_timeout_s)?;
    at_least_one_because(
        "mqtt.max_inflight",
        mqtt.max_inflight,
        "must be at least 1 (a Receive Maximum of 0 is a protocol error)",
    )?;
    at_least_one("mqtt.max_queued_messages", mqtt.max_queued_messages)?;
    at_least_one("mqtt.max_pending_messages", mqtt.max_pending_messages)?;
    at_least_one("mqtt.slow_consumer_timeout_s", mqtt.slow_consumer_timeout_s)?;
    let anonymous_rules = security
        .anonymous_rules
        .unwrap_or_else(default_anonymous_rules);
    for rule in &anonymous_rules {
        let filter = rule.topic.as_str();
        if !crate::link::codec::topic::valid_filter(filter) {
            return Err(ConfigError::new(
                "security.anonymous_rules",
                format!("{filter:?} is not a valid topic filter"),
            ));
        }
    }
    Ok(BrokerConfig {
        tcp: listen_addr("mqtt.tcp", mqtt.tcp, "0.0.0.0:1883")?,
        ws: listen_addr("mqtt.ws", mqtt.ws, "0.0.0.0:9001")?,
        tls: mqtt.tls.unwrap_or_default().validate()?,
        max_payload,
        max_connections: mqtt.max_connections.unwrap_or(10_000),
        connect_timeout: Duration::from_secs(mqtt.connect_timeout_s.unwrap_or(10)),
        sys_interval: match mqtt.sys_interval_s.unwrap_or(10) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
        max_inflight: mqtt.max_inflight.unwrap_or(100),
        topic_alias_max: mqtt.topic_alias_max.unwrap_or(16),
        max_keepalive: mqtt.max_keepalive_s.unwrap_or(0),
        max_queued_messages: mqtt.max_queued_messages.unwrap_or(1000),
        durable_connected_sessions: mqtt.durable_connected_sessions.unwrap_or(true),
        max_pending_messages: mqtt.max_pending_messages.unwrap_or(1000),
        slow_consumer_timeout: Duration::from_secs(mqtt.slow_consumer_timeout_s.unwrap_or(30)),
        router_segment_size: ROUTER_SEGMENT_SIZE,
        payload_encryption: security.payload_encryption.unwrap_or(false),
        allow_anonymous: security.allow_anonymous.unwrap_or(false),
        anonymous_rules,
        key_grace: Duration::from_secs(security.key_grace_s.unwrap_or(24 * 3600)),
        fleet,
    })
}
