//! `[teltonika]` (SPEC §10): the tracker listener, who may connect to it, how long a
//! tracker may stay silent, and the expected answer of each command type.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;

use crate::settings::{at_least_one, listen_addr, ConfigError};

/// `[teltonika]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeltonikaConfig {
    /// `""` (the default) turns the listener off.
    pub listen: Option<String>,
    /// CIDRs trackers may connect from; absent: any address.
    pub allow_from: Option<Vec<String>>,
    /// Seconds a tracker may send nothing before it is disconnected.
    pub idle_timeout_s: Option<u64>,
    /// Command type → pattern its answer matches (`getinfo = "^INI:"`).
    pub responses: Option<BTreeMap<String, String>>,
}

/// `[teltonika]`, validated.
#[derive(Debug, Clone)]
pub struct TeltonikaConfig {
    /// `None`: no tracker listener.
    pub listen: Option<SocketAddr>,
    /// Empty: any address.
    pub allow_from: Vec<IpNet>,
    pub idle_timeout: Duration,
    pub responses: Vec<(String, Regex)>,
}

impl Default for TeltonikaConfig {
    fn default() -> TeltonikaConfig {
        TeltonikaConfig {
            listen: None,
            allow_from: Vec::new(),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S),
            responses: Vec::new(),
        }
    }
}

/// A tracker reports at least every few minutes while parked (its "min period"); ten
/// minutes of silence means the connection is dead.
const DEFAULT_IDLE_TIMEOUT_S: u64 = 600;

impl TeltonikaConfig {
    /// Whether a tracker at `ip` may connect (IPv4-mapped IPv6 peers count as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_from.is_empty() || self.allow_from.iter().any(|net| net.contains(&ip))
    }
}

impl RawTeltonikaConfig {
    pub fn validate(self) -> Result<TeltonikaConfig, ConfigError> {
        at_least_one("teltonika.idle_timeout_s", self.idle_timeout_s)?;
        let listen = listen_addr("teltonika.listen", self.listen, "")?;
        let allow_from = (self.allow_from.unwrap_or_default().iter())
            .map(|cidr| parse_net(cidr))
            .collect::<Result<Vec<_>, _>>()?;
        let responses = (self.responses.unwrap_or_default().into_iter())
            .map(|(kind, pattern)| match Regex::new(&pattern) {
                Ok(re) => Ok((kind, re)),
                Err(e) => Err(ConfigError::new(
                    format!("teltonika.responses.{kind}"),
                    format!("{pattern:?} is not a regular expression: {e}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TeltonikaConfig {
            listen,
            allow_from,
            idle_timeout: Duration::from_secs(
                self.idle_timeout_s.unwrap_or(DEFAULT_IDLE_TIMEOUT_S),
            ),
            responses,
        })
    }
}

/// A CIDR (`10.0.0.0/8`), or one address standing for itself.
fn parse_net(text: &str) -> Result<IpNet, ConfigError> {
    let parsed = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
    parsed.map_err(|_| {
        ConfigError::new(
            "teltonika.allow_from",
            format!("{text:?} is not a CIDR like 10.0.0.0/8 or an address"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(value: serde_json::Value) -> Result<TeltonikaConfig, ConfigError> {
        serde_json::from_value::<RawTeltonikaConfig>(value)
            .expect("raw [teltonika]")
            .validate()
    }

    #[test]
    fn off_by_default_and_checked_when_set() {
        let c = raw(serde_json::json!({})).unwrap();
        assert_eq!(c.listen, None);
        assert!(c.allows("203.0.113.9".parse().unwrap()));
        let c = raw(serde_json::json!({
            "listen": "127.0.0.1:5027",
            "allow_from": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"],
            "responses": {"getinfo": "^INI:"}
        }))
        .unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:5027".parse().unwrap()));
        assert!(c.allows("10.1.2.3".parse().unwrap()));
        assert!(c.allows("::ffff:10.1.2.3".parse().unwrap()), "mapped IPv4");
        assert!(c.allows("192.0.2.7".parse().unwrap()));
        assert!(!c.allows("192.0.2.8".parse().unwrap()));
        assert!(c.allows("2001:db8::1".parse().unwrap()));
        assert_eq!(c.responses[0].0, "getinfo");
        for (bad, key) in [
            (
                serde_json::json!({"allow_from": ["10.0.0.0/33"]}),
                "teltonika.allow_from",
            ),
            (
                serde_json::json!({"responses": {"x": "("}}),
                "teltonika.responses.x",
            ),
            (serde_json::json!({"listen": "nowhere"}), "teltonika.listen"),
            (
                serde_json::json!({"idle_timeout_s": 0}),
                "teltonika.idle_timeout_s",
            ),
        ] {
            assert_eq!(raw(bad).unwrap_err().key, key);
        }
    }
}
