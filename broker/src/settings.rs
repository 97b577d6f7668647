//! What every config section's validation shares: the error that names the key, and the
//! checks more than one section makes. A leaf: each section lives with the module that
//! uses it (`link::settings`, `fleet::settings`), and `config` composes them.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

/// A config value that cannot be used, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for `{key}`: {reason}")]
pub struct ConfigError {
    /// The key as written, e.g. `mqtt.max_payload` or `mqtt.listeners[1].cert`.
    pub key: Cow<'static, str>,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A retention in days (`telemetry.retention_days`, `commands.history_days`): 1 to
/// 36,500 (100 years).
pub(crate) fn retention_days(key: &'static str, days: u64) -> Result<Duration, ConfigError> {
    if !(1..=36_500).contains(&days) {
        return Err(ConfigError::new(
            key,
            format!("{days} is outside 1..=36500"),
        ));
    }
    Ok(Duration::from_secs(days * 86_400))
}

/// Refuses an explicit 0 for a key whose smallest useful value is 1.
pub(crate) fn at_least_one<T: PartialEq + From<u8>>(
    key: &'static str,
    value: Option<T>,
) -> Result<(), ConfigError> {
    at_least_one_because(key, value, "must be at least 1")
}

/// [`at_least_one`] with the reason a 0 is refused.
pub(crate) fn at_least_one_because<T: PartialEq + From<u8>>(
    key: &'static str,
    value: Option<T>,
    reason: &str,
) -> Result<(), ConfigError> {
    if value == Some(T::from(0)) {
        return Err(ConfigError::new(key, reason));
    }
    Ok(())
}

/// A listener address; the empty string disables the listener (`None`).
pub(crate) fn listen_addr(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|e| {
        ConfigError::new(
            key,
            format!("{value:?} is not an address like 0.0.0.0:1883 ({e})"),
        )
    })
}
