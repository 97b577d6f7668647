//! `fleetmq serve` configuration: TOML file, then `FLEETMQ_<SECTION>_<KEY>` environment
//! variables, then flags (SPEC §1). The merged table is deserialized into raw sections
//! that reject unknown keys, then each crate validates its own section. Arrays of tables
//! (`[[mqtt.listeners]]`, `[[webhooks]]`) come from the file only.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use toml::{Table, Value};

/// Every key an environment variable may set, as a dotted path.
const ENV_KEYS: &[&str] = &[
    "data_dir",
    "mqtt.tcp",
    "mqtt.ws",
    "mqtt.max_payload",
    "mqtt.max_connections",
    "mqtt.max_pending_connects",
    "mqtt.connect_timeout_s",
    "mqtt.sys_interval_s",
    "mqtt.max_inflight",
    "mqtt.topic_alias_max",
    "mqtt.max_keepalive_s",
    "mqtt.max_queued_messages",
    "mqtt.durable_connected_sessions",
    "mqtt.max_pending_messages",
    "mqtt.max_outbound_bytes",
    "mqtt.slow_consumer_timeout_s",
    "mqtt.tls.listen",
    "mqtt.tls.cert",
    "mqtt.tls.key",
    "mqtt.tls.client_ca",
    "mqtt.auth_backoff.identity_failures",
    "mqtt.auth_backoff.address_failures",
    "mqtt.auth_backoff.window_s",
    "mqtt.auth_backoff.initial_s",
    "mqtt.auth_backoff.max_s",
    "mqtt.auth_backoff.max_tracked",
    "teltonika.listen",
    "teltonika.idle_timeout_s",
    "admin.listen",
    "admin.api_key",
    "admin.tls.cert",
    "admin.tls.key",
    "security.payload_encryption",
    "security.allow_anonymous",
    "security.key_grace_s",
    "security.require_replay_protection",
    "commands.timeout_s",
    "commands.max_retries",
    "commands.ttl_s",
    "commands.max_queued_per_device",
    "commands.history_days",
    "telemetry.retention_days",
    "telemetry.max_points_per_device",
    "telemetry.store",
    "telemetry.webhook",
    "telemetry.webhook_interval_s",
];

/// `FLEETMQ_` variables that belong to the CLI client, not to `serve`.
const CLIENT_ENV: &[&str] = &[
    "FLEETMQ_ADMIN_URL",
    "FLEETMQ_API_KEY",
    "FLEETMQ_ADMIN_CA",
    "FLEETMQ_LOG_FORMAT",
    // `fleetmq subscribe` (an MQTT client) and `fleetmq service-client add`.
    "FLEETMQ_MQTT_ADDR",
    "FLEETMQ_MQTT_USERNAME",
    "FLEETMQ_MQTT_PASSWORD",
    "FLEETMQ_SERVICE_CLIENT_PASSWORD",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    mqtt: fleetmq_broker::RawMqttConfig,
    #[serde(default)]
    admin: fleetmq_web::RawAdminConfig,
    #[serde(default)]
    security: fleetmq_broker::RawSecurityConfig,
    #[serde(default)]
    teltonika: fleetmq_broker::config::RawTeltonikaConfig,
    #[serde(default)]
    commands: fleetmq_broker::config::RawCommandsConfig,
    #[serde(default)]
    telemetry: fleetmq_broker::fleet::telemetry::RawTelemetryConfig,
    #[serde(default)]
    webhooks: Vec<fleetmq_broker::config::RawWebhookConfig>,
}

/// The validated configuration of `fleetmq serve`.
#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub broker: fleetmq_broker::BrokerConfig,
    pub admin: fleetmq_web::AdminConfig,
}

/// Reads the file (if any), applies `env` and `flags` (dotted key → value) over it, and
/// validates the result.
pub fn load(
    file: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
    flags: Vec<(&str, Value)>,
) -> anyhow::Result<Config> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            text.parse::<Table>()
                .with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => Table::new(),
    };
    for (name, value) in env {
        if let Some(key) = env_key(&name)? {
            set(&mut table, key, parse_env_value(&value))?;
        }
    }
    for (key, value) in flags {
        set(&mut table, key, value)?;
    }
    let raw = RawConfig::deserialize(Value::Table(table))
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    validate(raw)
}

/// Maps an environment variable to the key it sets; errors on an unknown `FLEETMQ_` one.
fn env_key(name: &str) -> anyhow::Result<Option<&'static str>> {
    if name == "MQTT_USE_ADVANCED_SECURITY" {
        return Ok(Some("security.payload_encryption"));
    }
    let Some(rest) = name.strip_prefix("FLEETMQ_") else {
        return Ok(None);
    };
    if CLIENT_ENV.contains(&name) {
        return Ok(None);
    }
    let wanted = rest.to_ascii_lowercase();
    match ENV_KEYS.iter().find(|k| k.replace('.', "_") == wanted) {
        Some(key) => Ok(Some(key)),
        None if wanted == "mqtt_listeners" => {
            bail!("environment variable {name}: [[mqtt.listeners]] is set in the config file only")
        }
        None => bail!(
            "unknown environment variable {name}: no config key {}",
            wanted
        ),
    }
}

/// Environment values are TOML scalars when they parse as one (`true`, `42`), else strings.
fn parse_env_value(value: &str) -> Value {
    match format!("v = {value}").parse::<Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(v @ (Value::Boolean(_) | Value::Integer(_))) => v,
            _ => Value::String(value.to_owned()),
        },
        Err(_) => Value::String(value.to_owned()),
    }
}

fn set(table: &mut Table, key: &str, value: Value) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(t) => t,
            _ => bail!("config key `{part}` must be a table to set `{key}`"),
        };
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

fn validate(raw: RawConfig) -> anyhow::Result<Config> {
    let fleet = fleetmq_broker::config::RawFleetConfig {
        commands: raw.commands,
        telemetry: raw.telemetry,
        webhooks: raw.webhooks,
    };
    let broker = fleetmq_broker::config::validate(raw.mqtt, raw.security, raw.teltonika, fleet)?;
    let admin = raw.admin.validate()?;
    Ok(Config {
        data_dir: raw.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
        broker,
        admin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fleetmq.toml");
        std::fs::write(&path, toml)?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load(Some(&path), env, vec![])
    }

    #[test]
    fn defaults_are_spec_defaults() {
        let c = load(None, std::iter::empty(), vec![]).unwrap();
        assert_eq!(c.broker.tcp.unwrap().to_string(), "0.0.0.0:1883");
        assert_eq!(c.broker.ws.unwrap().to_string(), "0.0.0.0:9001");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(!c.broker.payload_encryption && !c.broker.allow_anonymous);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load_str("[mqtt]\ntcpp = \"0.0.0.0:1\"\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("tcpp"), "{e:#}");
        let e = load_str("bogus = 1\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let e = load_str("", &[("FLEETMQ_MQTT_TCPP", "x")]).unwrap_err();
        assert!(format!("{e:#}").contains("FLEETMQ_MQTT_TCPP"), "{e:#}");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let c = load_str(
            "[mqtt]\ntcp = \"127.0.0.1:1000\"\n",
            &[
                ("FLEETMQ_MQTT_TCP", "127.0.0.1:2000"),
                ("MQTT_USE_ADVANCED_SECURITY", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.broker.tcp.unwrap().port(), 2000);
        assert!(c.broker.payload_encryption);
        let env = vec![("FLEETMQ_MQTT_TCP".to_string(), "127.0.0.1:2000".to_string())];
        let c = load(
            None,
            env.into_iter(),
            vec![("mqtt.tcp", Value::String("127.0.0.1:3000".into()))],
        )
        .unwrap();
        assert_eq!(c.broker.tcp.unwrap().port(), 3000);
    }

    #[test]
    fn empty_address_disables_a_listener_and_bad_values_name_their_key() {
        let c = load_str("[mqtt]\nws = \"\"\n", &[]).unwrap();
        assert!(c.broker.ws.is_none());
        let e = load_str("[mqtt]\ntcp = \"not an address\"\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("mqtt.tcp"), "{e:#}");
        let e = load_str("[mqtt]\nmax_payload = 0\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("mqtt.max_payload"), "{e:#}");
    }

    #[test]
    fn telemetry_storage_is_on_by_default_and_can_be_turned_off() {
        let c = load_str("", &[]).unwrap();
        assert!(c.broker.fleet.telemetry.store);
        let c = load_str("[telemetry]\nstore = false\n", &[]).unwrap();
        assert!(!c.broker.fleet.telemetry.store);
        let c = load_str("", &[("FLEETMQ_TELEMETRY_STORE", "false")]).unwrap();
        assert!(!c.broker.fleet.telemetry.store);
        let e = load_str("[telemetry]\nstore = \"no\"\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("store"), "{e:#}");
    }

    #[test]
    fn command_history_is_kept_30_days_by_default_and_0_keeps_it_all() {
        let day = std::time::Duration::from_secs(86_400);
        let c = load_str("", &[]).unwrap();
        assert_eq!(c.broker.fleet.commands.history, Some(30 * day));
        let c = load_str("[commands]\nhistory_days = 7\n", &[]).unwrap();
        assert_eq!(c.broker.fleet.commands.history, Some(7 * day));
        let c = load_str("", &[("FLEETMQ_COMMANDS_HISTORY_DAYS", "0")]).unwrap();
        assert_eq!(c.broker.fleet.commands.history, None);
        let e = load_str("[commands]\nhistory_days = 36501\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("commands.history_days"), "{e:#}");
    }

    #[test]
    fn conformance_keys_have_defaults_and_checks() {
        let c = load_str("", &[]).unwrap();
        assert_eq!(c.broker.max_inflight, 100);
        assert_eq!(c.broker.topic_alias_max, 16);
        assert_eq!(
            c.broker.sys_interval,
            Some(std::time::Duration::from_secs(10))
        );
        let c = load_str("[mqtt]\nsys_interval_s = 0\ntopic_alias_max = 0\n", &[]).unwrap();
        assert_eq!(c.broker.sys_interval, None);
        assert_eq!(c.broker.topic_alias_max, 0);
        let e = load_str("[mqtt]\nmax_inflight = 0\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("mqtt.max_inflight"), "{e:#}");
    }

    #[test]
    fn max_keepalive_is_off_by_default_and_set_by_file_or_env() {
        assert_eq!(load_str("", &[]).unwrap().broker.max_keepalive, 0);
        let c = load_str("[mqtt]\nmax_keepalive_s = 300\n", &[]).unwrap();
        assert_eq!(c.broker.max_keepalive, 300);
        let c = load_str("", &[("FLEETMQ_MQTT_MAX_KEEPALIVE_S", "60")]).unwrap();
        assert_eq!(c.broker.max_keepalive, 60);
        let e = load_str("[mqtt]\nmax_keepalive_s = 70000\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("max_keepalive_s"), "{e:#}");
    }

    #[test]
    fn auth_backoff_is_on_by_default_and_set_by_file_or_env() {
        let d = load_str("", &[]).unwrap().broker.auth_backoff;
        assert_eq!((d.identity_failures, d.address_failures), (5, 50));
        let toml = "[mqtt.auth_backoff]\nidentity_failures = 3\nmax_s = 60\n";
        let env = [("FLEETMQ_MQTT_AUTH_BACKOFF_WINDOW_S", "120")];
        let c = load_str(toml, &env).unwrap().broker.auth_backoff;
        assert_eq!(c.identity_failures, 3);
        assert_eq!(c.max, std::time::Duration::from_secs(60));
        assert_eq!(c.window, std::time::Duration::from_secs(120));
        let e = load_str("[mqtt.auth_backoff]\ninitial_s = 10\nmax_s = 5\n", &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("mqtt.auth_backoff.max_s"),
            "{e:#}"
        );
        let e = load_str("[mqtt.auth_backoff]\nwindow = 5\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("window"), "{e:#}");
    }

    #[test]
    fn extra_listeners_come_from_the_file_beside_the_first_ones() {
        let c = load_str(
            r#"
[mqtt.tls]
cert = "server.pem"
key = "server.key"

[[mqtt.listeners]]
kind = "tls"
listen = "0.0.0.0:8884"
cert = "server.pem"
key = "server.key"
client_ca = "devices-ca.pem"

[[mqtt.listeners]]
kind = "wss"
listen = "0.0.0.0:8084"
cert = "server.pem"
key = "server.key"
"#,
            &[("FLEETMQ_MQTT_TLS_LISTEN", "0.0.0.0:18883")],
        )
        .unwrap();
        assert_eq!(c.broker.tcp.unwrap().port(), 1883);
        assert_eq!(c.broker.tls.as_ref().unwrap().listen.port(), 18883);
        let listeners: Vec<_> = (c.broker.listeners.iter())
            .map(|l| (l.kind(), l.listen().port()))
            .collect();
        assert_eq!(listeners, [("tls", 8884), ("wss", 8084)]);
        match &c.broker.listeners[0] {
            fleetmq_broker::ListenerSpec::Tls(tls) => {
                assert_eq!(tls.client_ca, Some(PathBuf::from("devices-ca.pem")))
            }
            other => panic!("expected a tls listener, got {other:?}"),
        }

        // Errors name the entry (counted from 0) and the key.
        let e = load_str(
            "[[mqtt.listeners]]\nkind = \"ws\"\nlisten = \"0.0.0.0:9002\"\n\
             [[mqtt.listeners]]\nkind = \"wss\"\nlisten = \"0.0.0.0:8084\"\n",
            &[],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("mqtt.listeners[1].cert"), "{e:#}");
        let e = load_str(
            "[[mqtt.listeners]]\nkind = \"tcp\"\nlisten = \"0.0.0.0:1884\"\nport = 1\n",
            &[],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("port"), "{e:#}");
        let e = load_str(
            "[[mqtt.listeners]]\nkind = \"ws\"\nlisten = \"0.0.0.0:9001\"\n",
            &[],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("mqtt.ws"), "{e:#}");
        let e = load_str("", &[("FLEETMQ_MQTT_LISTENERS", "x")]).unwrap_err();
        assert!(format!("{e:#}").contains("config file only"), "{e:#}");
    }
}
