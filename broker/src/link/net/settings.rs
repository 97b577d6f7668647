//! The listener sections of the config (`[mqtt.tls]`, `[[mqtt.listeners]]`), owned by
//! the accept loops that bind them: raw serde forms that reject unknown keys, and their
//! validation into typed listeners. `link::settings` composes them into `[mqtt]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{listen_addr, ConfigError};

/// `[mqtt.tls]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    pub listen: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// One `[[mqtt.listeners]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerConfig {
    /// `tcp`, `ws`, `tls` or `wss`.
    pub kind: Option<String>,
    pub listen: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// Validated TLS listener settings (`[mqtt.tls]`, or a `tls`/`wss` listener): its own
/// certificate, and with `client_ca` its own rule that clients present one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A validated `[[mqtt.listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerSpec {
    /// MQTT over TCP.
    Tcp(SocketAddr),
    /// MQTT over WebSocket (paths `/mqtt` and `/`, subprotocol `mqtt`).
    Ws(SocketAddr),
    /// MQTT over TLS.
    Tls(TlsConfig),
    /// MQTT over WebSocket over TLS: the TLS handshake, then the same upgrade as `Ws`.
    Wss(TlsConfig),
}

impl ListenerSpec {
    /// The address it listens on.
    pub fn listen(&self) -> SocketAddr {
        match self {
            ListenerSpec::Tcp(addr) | ListenerSpec::Ws(addr) => *addr,
            ListenerSpec::Tls(tls) | ListenerSpec::Wss(tls) => tls.listen,
        }
    }

    /// `tcp`, `ws`, `tls` or `wss`, as in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            ListenerSpec::Tcp(_) => "tcp",
            ListenerSpec::Ws(_) => "ws",
            ListenerSpec::Tls(_) => "tls",
            ListenerSpec::Wss(_) => "wss",
        }
    }
}

impl RawTlsConfig {
    pub(crate) fn validate(self) -> Result<Option<TlsConfig>, ConfigError> {
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

impl RawListenerConfig {
    /// Validates entry `index` (counted from 0) of `[[mqtt.listeners]]`.
    pub(crate) fn validate(self, index: usize) -> Result<ListenerSpec, ConfigError> {
        let key = |field: &str| listener_key(index, field);
        let Some(kind) = self.kind else {
            return Err(ConfigError::new(
                key("kind"),
                "required: one of tcp, ws, tls, wss",
            ));
        };
        let listen = match self.listen.as_deref() {
            None | Some("") => {
                return Err(ConfigError::new(
                    key("listen"),
                    "required: an address like 0.0.0.0:8884",
                ))
            }
            Some(value) => value.parse::<SocketAddr>().map_err(|e| {
                ConfigError::new(
                    key("listen"),
                    format!("{value:?} is not an address like 0.0.0.0:8884 ({e})"),
                )
            })?,
        };
        match kind.as_str() {
            "tcp" | "ws" => {
                let files = [
                    ("cert", self.cert.is_some()),
                    ("key", self.key.is_some()),
                    ("client_ca", self.client_ca.is_some()),
                ];
                if let Some((field, _)) = files.iter().find(|(_, set)| *set) {
                    return Err(ConfigError::new(
                        key(field),
                        format!("only a tls or wss listener takes one, not a {kind} listener"),
                    ));
                }
                Ok(if kind == "tcp" {
                    ListenerSpec::Tcp(listen)
                } else {
                    ListenerSpec::Ws(listen)
                })
            }
            "tls" | "wss" => {
                let required = |field: &str, value: Option<PathBuf>| {
                    value.ok_or_else(|| {
                        ConfigError::new(key(field), format!("required for a {kind} listener"))
                    })
                };
                let tls = TlsConfig {
                    listen,
                    cert: required("cert", self.cert)?,
                    key: required("key", self.key)?,
                    client_ca: self.client_ca,
                };
                Ok(if kind == "tls" {
                    ListenerSpec::Tls(tls)
                } else {
                    ListenerSpec::Wss(tls)
                })
            }
            other => Err(ConfigError::new(
                key("kind"),
                format!("{other:?} is not one of tcp, ws, tls, wss"),
            )),
        }
    }
}

/// `mqtt.listeners[index].field`, the key a [`ConfigError`] of that entry names.
pub(crate) fn listener_key(index: usize, field: &str) -> String {
    format!("mqtt.listeners[{index}].{field}")
}

/// Whether two listeners would take the same socket: the same address, or the same port
/// on a wildcard address (`0.0.0.0` covers IPv4, `[::]` both families). Port 0 (the
/// kernel picks) never collides.
pub(crate) fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: SocketAddr, other: SocketAddr| {
        wild.ip().is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}
