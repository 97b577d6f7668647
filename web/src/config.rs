//! The `[admin]` config section: the raw serde form merged from TOML, env and flags,
//! and the validated form the server runs with.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where the admin API listens when `admin.listen` is not set: loopback only, so a
/// fresh install does not expose the API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The largest request body the admin API reads.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The largest body `POST /api/v1/devices/bulk` reads: 10,000 devices at up to about
/// 1.6 KB each (id, plugin, a dozen labels).
pub const DEFAULT_MAX_BULK_BODY_BYTES: usize = 16 * 1024 * 1024;
/// A configured API key shorter than this is refused: it guards every device secret.
pub const MIN_API_KEY_LEN: usize = 16;
/// How often an idle `GET /api/v1/events` stream sends a `: keepalive` comment.
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// `[admin]` as written in TOML / env / flags. Unknown keys are an error.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminConfig {
    /// `admin.listen`, a socket address such as `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// `admin.api_key`; generated on first start when absent.
    pub api_key: Option<String>,
    /// `[admin.tls]`: serve the API over HTTPS.
    pub tls: Option<AdminTls>,
}

/// `[admin.tls]`: PEM certificate chain and private key of the admin listener. The files
/// are read when the server starts ([`crate::AppState::load_tls`]), not when the config
/// is validated: the CLI reads the same config for the address and may not be allowed
/// to read the key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// `admin.tls.cert`.
    pub cert: PathBuf,
    /// `admin.tls.key`.
    pub key: PathBuf,
}

/// The validated admin API settings.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The configured API key, if any (see [`crate::ensure_admin_key`]).
    pub api_key: Option<String>,
    /// Request bodies larger than this are answered with `413`.
    pub max_body_bytes: usize,
    /// The same for `POST /api/v1/devices/bulk`.
    pub max_bulk_body_bytes: usize,
    /// How often an event stream sends a keepalive comment (not a config key: tests
    /// shorten it).
    pub sse_keepalive: Duration,
    /// `[admin.tls]`, if the API is served over HTTPS.
    pub tls: Option<AdminTls>,
}

/// A value in `[admin]` is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("admin.listen: {value:?} is not a socket address (like \"127.0.0.1:8080\"): {source}")]
    InvalidListen {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("admin.api_key: must be at least {MIN_API_KEY_LEN} characters without surrounding whitespace")]
    WeakApiKey,
}

impl RawAdminConfig {
    /// Checks every value and fills in defaults.
    pub fn validate(self) -> Result<AdminConfig, ConfigError> {
        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text
            .parse()
            .map_err(|source| ConfigError::InvalidListen {
                value: listen_text.to_owned(),
                source,
            })?;
        if let Some(key) = &self.api_key {
            if key.chars().count() < MIN_API_KEY_LEN || key.trim() != key {
                return Err(ConfigError::WeakApiKey);
            }
        }
        Ok(AdminConfig {
            listen,
            api_key: self.api_key,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_bulk_body_bytes: DEFAULT_MAX_BULK_BODY_BYTES,
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
            tls: self.tls,
        })
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        RawAdminConfig::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

// The key never reaches a log through `{:?}`.
fn redacted(key: &Option<String>) -> &'static str {
    match key {
        Some(_) => "Some(<redacted>)",
        None => "None",
    }
}

impl fmt::Debug for RawAdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawAdminConfig")
            .field("listen", &self.listen)
            .field("api_key", &format_args!("{}", redacted(&self.api_key)))
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("api_key", &format_args!("{}", redacted(&self.api_key)))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_bulk_body_bytes", &self.max_bulk_body_bytes)
            .field("sse_keepalive", &self.sse_keepalive)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config = RawAdminConfig::default().validate().unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.api_key, None);
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.max_bulk_body_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn bad_listen_names_the_key() {
        let raw = RawAdminConfig {
            listen: Some("localhost".into()),
            api_key: None,
            tls: None,
        };
        let err = raw.validate().unwrap_err();
        assert!(err.to_string().contains("admin.listen"), "{err}");
    }

    #[test]
    fn weak_key_is_refused() {
        let raw = RawAdminConfig {
            listen: None,
            api_key: Some("short".into()),
            tls: None,
        };
        assert!(matches!(raw.validate(), Err(ConfigError::WeakApiKey)));
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let err = serde_json::from_str::<RawAdminConfig>(r#"{"listn":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn debug_hides_the_key() {
        let raw = RawAdminConfig {
            listen: None,
            api_key: Some("a-very-secret-admin-key".into()),
            tls: None,
        };
        assert!(!format!("{raw:?}").contains("secret"));
        assert!(!format!("{:?}", raw.validate().unwrap()).contains("secret"));
    }
}
