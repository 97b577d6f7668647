//! The config sections the link layer owns (`[mqtt]` with its listener sections from
//! `net::settings`, and `[security]`): a raw serde form that rejects unknown keys, and
//! `validate()` into typed values. Loading binds nothing.

use std::net::SocketAddr;
use std::time::Duration;

use fleetmq_storage::{AclAction, AclRule};
use serde::Deserialize;

use crate::fleet::settings::FleetConfig;
use crate::settings::{at_least_one, at_least_one_because, listen_addr, ConfigError};

use crate::link::net::settings::{listener_key, same_socket};
pub use crate::link::net::settings::{ListenerSpec, RawListenerConfig, RawTlsConfig, TlsConfig};
pub use crate::link::security::backoff::{AuthBackoffConfig, RawAuthBackoffConfig};
pub use crate::link::security::refusals::RefusalLogConfig;
use crate::link::teltonika::settings::TeltonikaConfig;

/// Default of `mqtt.max_pending_connects`: enough for a fleet reconnecting at once (a
/// device is pending for a round trip and a token check), few enough that sockets that
/// never send CONNECT cannot take the process's descriptors.
const DEFAULT_MAX_PENDING_CONNECTS: usize = 1024;

/// `[mqtt]` as written in TOML / env / flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttConfig {
    pub tcp: Option<String>,
    pub ws: Option<String>,
    pub max_payload: Option<usize>,
    pub max_connections: Option<usize>,
    /// Sockets accepted and not yet through CONNECT and authentication.
    pub max_pending_connects: Option<usize>,
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
    /// Bytes written for a connected client that its socket has not taken yet.
    pub max_outbound_bytes: Option<usize>,
    /// Seconds a congested client may go without acknowledging anything before it is
    /// disconnected.
    pub slow_consumer_timeout_s: Option<u64>,
    pub tls: Option<RawTlsConfig>,
    /// `[[mqtt.listeners]]`: listeners beside `tcp`, `ws` and `[mqtt.tls]`.
    #[serde(default)]
    pub listeners: Vec<RawListenerConfig>,
    /// `[mqtt.auth_backoff]`: slowing down failed authentications.
    pub auth_backoff: Option<RawAuthBackoffConfig>,
}

/// `[security]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityConfig {
    pub payload_encryption: Option<bool>,
    pub allow_anonymous: Option<bool>,
    pub anonymous_rules: Option<Vec<AclRule>>,
    pub key_grace_s: Option<u64>,
    pub require_replay_protection: Option<bool>,
}

/// Everything the broker needs, validated.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `None` disables the listener.
    pub tcp: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub tls: Option<TlsConfig>,
    /// `[[mqtt.listeners]]` in the order written, bound beside the three above.
    pub listeners: Vec<ListenerSpec>,
    pub max_payload: usize,
    pub max_connections: usize,
    /// Sockets accepted and not yet through CONNECT and authentication (handshakes
    /// included); at the limit the listeners stop accepting, and the kernel's backlog
    /// holds the rest.
    pub max_pending_connects: usize,
    /// From accept to CONNECT, TLS and WebSocket handshakes included.
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
    /// Bytes written for a connected client that its socket has not taken yet, past
    /// which nothing more is taken from the router for it or read from it.
    pub max_outbound_bytes: usize,
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
    /// Device envelopes must be version 0x02 (replay-protected); the broker seals 0x02.
    pub require_replay_protection: bool,
    /// `[mqtt.auth_backoff]`: failed authentications backed off per identity and address.
    pub auth_backoff: AuthBackoffConfig,
    /// Bounds of the recent refused attempts. Not a config key: tests shrink it.
    pub refusal_log: RefusalLogConfig,
    /// Commands, telemetry and webhooks (`fleet::settings`), carried to `start`.
    pub fleet: FleetConfig,
    /// `[teltonika]`: the tracker listener (SPEC §10).
    pub teltonika: TeltonikaConfig,
}

/// Default of `mqtt.max_outbound_bytes`. A reader that keeps up needs little of it
/// (devices wait while it lags, `connection/congestion.rs`); a reader behind a slow
/// link gets this much slack (~80,000 small messages) before the router's log, and a
/// broker with many of them no more than this each. The room is freed once written.
const DEFAULT_MAX_OUTBOUND_BYTES: usize = 8 * 1024 * 1024;

/// The router keeps at most 4 segments of this size per filter (bare rumqttd's example
/// config keeps 1 GiB per filter), and never gives them back. Readers take from it at the
/// router's pace (`connection/writing.rs`, `connection/congestion.rs`), so it only has to
/// cover how long a lag takes to hold devices back: 4 × 2 MiB lost nothing in 8 of 8 QoS 0
/// bursts of 200,000 messages, 4 × 1 MiB lost up to 16 % in 2 of 6, and 4 × 4 MiB kept
/// 35 MiB more after the load benchmark (docs/perf-log/session-14.md).
const ROUTER_SEGMENT_SIZE: usize = 2 * 1024 * 1024;

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
    #[cfg(any(test, feature = "testing"))]
    pub fn for_tests() -> BrokerConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        BrokerConfig {
            tcp: Some(any),
            ws: Some(any),
            tls: None,
            listeners: Vec::new(),
            max_payload: 262_144,
            max_connections: 10_000,
            max_pending_connects: DEFAULT_MAX_PENDING_CONNECTS,
            connect_timeout: Duration::from_secs(10),
            sys_interval: Some(Duration::from_secs(10)),
            max_inflight: 100,
            topic_alias_max: 16,
            max_keepalive: 0,
            max_queued_messages: 1000,
            durable_connected_sessions: true,
            max_pending_messages: 1000,
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
            slow_consumer_timeout: Duration::from_secs(30),
            router_segment_size: ROUTER_SEGMENT_SIZE,
            payload_encryption: false,
            allow_anonymous: false,
            anonymous_rules: default_anonymous_rules(),
            key_grace: Duration::from_secs(24 * 3600),
            require_replay_protection: false,
            auth_backoff: AuthBackoffConfig::default(),
            refusal_log: RefusalLogConfig::default(),
            fleet: FleetConfig::default(),
            teltonika: TeltonikaConfig::default(),
        }
    }
}

/// Refuses two listeners on one address, naming the later one's key.
fn distinct_addresses(config: &BrokerConfig) -> Result<(), ConfigError> {
    let first = [
        ("mqtt.tcp", config.tcp),
        ("mqtt.ws", config.ws),
        ("mqtt.tls.listen", config.tls.as_ref().map(|t| t.listen)),
    ];
    // Each listener's key: one of the three above, or an index into `[[mqtt.listeners]]`.
    let all = (first.into_iter())
        .filter_map(|(key, addr)| Some((Ok(key), addr?)))
        .chain((config.listeners.iter().enumerate()).map(|(i, l)| (Err(i), l.listen())));
    let mut seen: Vec<(String, SocketAddr)> = Vec::new();
    for (key, addr) in all {
        if let Some((other, _)) = seen.iter().find(|(_, a)| same_socket(*a, addr)) {
            let key = key.map_or_else(|i| listener_key(i, "listen"), str::to_owned);
            return Err(ConfigError::new(
                key,
                format!("{addr} is the address of {other} already"),
            ));
        }
        let name = key.map_or_else(|i| listener_key(i, "listen"), str::to_owned);
        seen.push((name, addr));
    }
    Ok(())
}

/// Refuses the `[mqtt]` limits that cannot work; the largest payload.
fn check_limits(mqtt: &RawMqttConfig) -> Result<usize, ConfigError> {
    let max_payload = mqtt.max_payload.unwrap_or(262_144);
    if max_payload == 0 || max_payload > 256 * 1024 * 1024 {
        return Err(ConfigError::new(
            "mqtt.max_payload",
            format!("{max_payload} is outside 1..=268435456"),
        ));
    }
    at_least_one("mqtt.max_connections", mqtt.max_connections)?;
    at_least_one("mqtt.max_pending_connects", mqtt.max_pending_connects)?;
    at_least_one("mqtt.connect_timeout_s", mqtt.connect_timeout_s)?;
    at_least_one_because(
        "mqtt.max_inflight",
        mqtt.max_inflight,
        "must be at least 1 (a Receive Maximum of 0 is a protocol error)",
    )?;
    at_least_one("mqtt.max_queued_messages", mqtt.max_queued_messages)?;
    at_least_one("mqtt.max_pending_messages", mqtt.max_pending_messages)?;
    at_least_one("mqtt.max_outbound_bytes", mqtt.max_outbound_bytes)?;
    at_least_one("mqtt.slow_consumer_timeout_s", mqtt.slow_consumer_timeout_s)?;
    Ok(max_payload)
}

/// `security.anonymous_rules` (SPEC §3's defaults when absent), each a valid filter.
fn anonymous_rules(rules: Option<Vec<AclRule>>) -> Result<Vec<AclRule>, ConfigError> {
    let rules = rules.unwrap_or_else(default_anonymous_rules);
    for rule in &rules {
        let filter = rule.topic.as_str();
        if !crate::link::codec::topic::valid_filter(filter) {
            return Err(ConfigError::new(
                "security.anonymous_rules",
                format!("{filter:?} is not a valid topic filter"),
            ));
        }
    }
    Ok(rules)
}

/// Validates `[mqtt]` and `[security]` together, with the validated device-logic
/// sections, into a [`BrokerConfig`].
pub fn validate(
    mqtt: RawMqttConfig,
    security: RawSecurityConfig,
    fleet: FleetConfig,
    teltonika: TeltonikaConfig,
) -> Result<BrokerConfig, ConfigError> {
    let max_payload = check_limits(&mqtt)?;
    let anonymous_rules = anonymous_rules(security.anonymous_rules)?;
    let listeners = (mqtt.listeners.into_iter().enumerate())
        .map(|(i, raw)| raw.validate(i))
        .collect::<Result<Vec<_>, _>>()?;
    let config = BrokerConfig {
        tcp: listen_addr("mqtt.tcp", mqtt.tcp, "0.0.0.0:1883")?,
        ws: listen_addr("mqtt.ws", mqtt.ws, "0.0.0.0:9001")?,
        tls: mqtt.tls.unwrap_or_default().validate()?,
        listeners,
        max_payload,
        max_connections: mqtt.max_connections.unwrap_or(10_000),
        max_pending_connects: mqtt
            .max_pending_connects
            .unwrap_or(DEFAULT_MAX_PENDING_CONNECTS),
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
        max_outbound_bytes: mqtt
            .max_outbound_bytes
            .unwrap_or(DEFAULT_MAX_OUTBOUND_BYTES),
        slow_consumer_timeout: Duration::from_secs(mqtt.slow_consumer_timeout_s.unwrap_or(30)),
        router_segment_size: ROUTER_SEGMENT_SIZE,
        payload_encryption: security.payload_encryption.unwrap_or(false),
        allow_anonymous: security.allow_anonymous.unwrap_or(false),
        anonymous_rules,
        key_grace: Duration::from_secs(security.key_grace_s.unwrap_or(24 * 3600)),
        require_replay_protection: security.require_replay_protection.unwrap_or(false),
        auth_backoff: mqtt.auth_backoff.unwrap_or_default().validate()?,
        refusal_log: RefusalLogConfig::default(),
        fleet,
        teltonika,
    };
    distinct_addresses(&config)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use serde_json::json;

    /// Validates `[mqtt]` given as JSON (the same serde form TOML fills).
    fn mqtt(value: serde_json::Value) -> Result<BrokerConfig, ConfigError> {
        let raw: RawMqttConfig = serde_json::from_value(value).expect("raw [mqtt]");
        validate(
            raw,
            RawSecurityConfig::default(),
            FleetConfig::default(),
            TeltonikaConfig::default(),
        )
    }

    fn refused(value: serde_json::Value) -> ConfigError {
        match mqtt(value.clone()) {
            Ok(c) => panic!("{value} should be refused, got {:?}", c.listeners),
            Err(e) => e,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn no_listeners_array_keeps_the_three_listeners_of_before() {
        let c = mqtt(json!({})).unwrap();
        assert_eq!(c.tcp, Some(addr("0.0.0.0:1883")));
        assert_eq!(c.ws, Some(addr("0.0.0.0:9001")));
        assert_eq!(c.tls, None);
        assert!(c.listeners.is_empty());
    }

    #[test]
    fn listeners_of_every_kind_are_validated_in_order() {
        let c = mqtt(json!({
            "tls": {"cert": "server.pem", "key": "server.key"},
            "listeners": [
                {"kind": "tls", "listen": "0.0.0.0:8884", "cert": "s.pem", "key": "s.key",
                 "client_ca": "ca.pem"},
                {"kind": "wss", "listen": "0.0.0.0:8084", "cert": "w.pem", "key": "w.key"},
                {"kind": "tcp", "listen": "127.0.0.1:11883"},
                {"kind": "ws", "listen": "[::1]:9002"},
            ],
        }))
        .unwrap();
        assert_eq!(c.tls.as_ref().map(|t| t.listen), Some(addr("0.0.0.0:8883")));
        let tls = |listen: &str, cert: &str, key: &str, ca: Option<&str>| TlsConfig {
            listen: addr(listen),
            cert: cert.into(),
            key: key.into(),
            client_ca: ca.map(PathBuf::from),
        };
        assert_eq!(
            c.listeners,
            vec![
                ListenerSpec::Tls(tls("0.0.0.0:8884", "s.pem", "s.key", Some("ca.pem"))),
                ListenerSpec::Wss(tls("0.0.0.0:8084", "w.pem", "w.key", None)),
                ListenerSpec::Tcp(addr("127.0.0.1:11883")),
                ListenerSpec::Ws(addr("[::1]:9002")),
            ]
        );
        let kinds: Vec<_> = c.listeners.iter().map(ListenerSpec::kind).collect();
        assert_eq!(kinds, ["tls", "wss", "tcp", "ws"]);
    }

    #[test]
    fn a_bad_entry_is_named_by_its_index_and_field() {
        let ok = json!({"kind": "tcp", "listen": "127.0.0.1:11883"});
        let cases = [
            (json!({"listen": "0.0.0.0:1"}), "kind", "required"),
            (
                json!({"kind": "mqtts", "listen": "0.0.0.0:1"}),
                "kind",
                "\"mqtts\"",
            ),
            (json!({"kind": "tcp"}), "listen", "required"),
            (json!({"kind": "ws", "listen": ""}), "listen", "required"),
            (
                json!({"kind": "tcp", "listen": "localhost"}),
                "listen",
                "\"localhost\"",
            ),
            (
                json!({"kind": "wss", "listen": "0.0.0.0:8084", "key": "k.pem"}),
                "cert",
                "required for a wss listener",
            ),
            (
                json!({"kind": "tls", "listen": "0.0.0.0:8884", "cert": "c.pem"}),
                "key",
                "required for a tls listener",
            ),
            (
                json!({"kind": "tcp", "listen": "0.0.0.0:1884", "cert": "c.pem"}),
                "cert",
                "not a tcp listener",
            ),
            (
                json!({"kind": "ws", "listen": "0.0.0.0:9002", "key": "k.pem"}),
                "key",
                "not a ws listener",
            ),
            (
                json!({"kind": "tcp", "listen": "0.0.0.0:1884", "client_ca": "ca"}),
                "client_ca",
                "not a tcp listener",
            ),
        ];
        for (bad, field, reason) in cases {
            let e = refused(json!({"listeners": [ok.clone(), bad]}));
            assert_eq!(e.key, format!("mqtt.listeners[1].{field}"), "{e}");
            assert!(e.reason.contains(reason), "{e} should say {reason}");
        }
    }

    #[test]
    fn unknown_keys_in_an_entry_are_refused() {
        let raw = serde_json::from_value::<RawMqttConfig>(json!({
            "listeners": [{"kind": "tls", "listen": "0.0.0.0:8884", "certificate": "c.pem"}],
        }));
        let e = raw.expect_err("unknown key").to_string();
        assert!(e.contains("certificate"), "{e}");
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let wss = |listen: &str| json!({"kind": "wss", "listen": listen, "cert": "c", "key": "k"});
        // An extra listener on a first listener's address, defaults included.
        let e = refused(json!({"listeners": [{"kind": "tcp", "listen": "0.0.0.0:1883"}]}));
        assert_eq!(e.key, "mqtt.listeners[0].listen");
        assert!(e.reason.contains("mqtt.tcp"), "{e}");
        let e = refused(json!({
            "tls": {"cert": "c", "key": "k"},
            "listeners": [wss("0.0.0.0:8084"), wss("127.0.0.1:8883")],
        }));
        assert_eq!(e.key, "mqtt.listeners[1].listen");
        assert!(e.reason.contains("mqtt.tls.listen"), "{e}");
        // Two extra listeners; a wildcard address takes the port on every interface.
        let e = refused(json!({"listeners": [wss("127.0.0.1:8084"), wss("[::]:8084")]}));
        assert_eq!(e.key, "mqtt.listeners[1].listen");
        assert!(e.reason.contains("mqtt.listeners[0].listen"), "{e}");
        // The first three among themselves.
        let e = refused(json!({"tcp": "0.0.0.0:1883", "ws": "0.0.0.0:1883"}));
        assert_eq!(e.key, "mqtt.ws");

        // Different ports, different specific addresses, a disabled listener, port 0,
        // and an IPv6 address beside 0.0.0.0 are all fine.
        let c = mqtt(json!({
            "ws": "",
            "listeners": [
                {"kind": "ws", "listen": "0.0.0.0:9001"},
                wss("127.0.0.1:8084"),
                wss("127.0.0.2:8084"),
                {"kind": "tcp", "listen": "127.0.0.1:0"},
                {"kind": "tcp", "listen": "127.0.0.1:0"},
                {"kind": "tcp", "listen": "[::1]:1883"},
            ],
        }))
        .unwrap();
        assert_eq!(c.listeners.len(), 6);
    }
}
