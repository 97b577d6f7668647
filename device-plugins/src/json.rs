//! The `json` plugin: SPEC §3-§6's JSON payloads, as written.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::plugin::{
    Command, CommandResponse, DeviceEvent, DevicePlugin, DeviceStatus, PluginError, RawTelemetry,
    Telemetry,
};
use crate::rfc3339;

/// How far in the past a device `ts` may lie and still be believed (365 days).
const MAX_TS_AGE_MS: u64 = 365 * 86_400_000;
/// How far in the future a device `ts` may lie (clock skew) and still be believed.
const MAX_TS_SKEW_MS: u64 = 5 * 60_000;

/// The plugin for devices that speak SPEC §3's JSON payloads (the default plugin).
///
/// A response without `commandId` answers the oldest pending command (the trait's
/// default matcher with every type allowed).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonPlugin;

impl JsonPlugin {
    /// The name device records use for this plugin.
    pub const NAME: &'static str = "json";
}

/// `{"type":..,"commandId":..,"params":..}`, in this field order.
#[derive(Serialize)]
struct CommandWire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "commandId")]
    command_id: &'a str,
    params: &'a Value,
}

/// `{"version":n,"config":{...}}`, in this field order.
#[derive(Serialize)]
struct ConfigWire<'a> {
    version: u64,
    config: &'a Value,
}

impl DevicePlugin for JsonPlugin {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn decode_telemetry(
        &self,
        payload: &[u8],
        received_at_ms: u64,
    ) -> Result<Telemetry, PluginError> {
        if scan::scan_object(payload).is_none() {
            // Refused by the scanner: serde_json names the problem. What it refuses and
            // the `RawValue`s below would take (a lone surrogate, a number beyond
            // `f64`) could be stored but never read back as a value.
            parse_object(payload)?;
        }
        let mut values = parse_raw_object(payload)?;
        let ts_ms = values
            .remove("ts")
            .and_then(|ts| serde_json::from_str::<Value>(ts.get()).ok())
            .and_then(|ts| device_ts_ms(&ts))
            .filter(|&ts| is_sane_ts(ts, received_at_ms))
            .unwrap_or(received_at_ms);
        Ok(Telemetry { ts_ms, values })
    }

    /// One pass of [`scan::scan_object`] over the payload, allocating nothing; a
    /// payload it refuses goes to [`decode_telemetry`](Self::decode_telemetry) for the
    /// error (or, should the scanner ever be stricter than serde_json, the result).
    fn check_telemetry(
        &self,
        payload: &[u8],
        received_at_ms: u64,
    ) -> Option<Result<RawTelemetry, PluginError>> {
        let Some(scanned) = scan::scan_object(payload) else {
            return Some(
                self.decode_telemetry(payload, received_at_ms)
                    .map(|t| RawTelemetry {
                        ts_ms: t.ts_ms,
                        shape: fallback_shape(t.values.keys()),
                    }),
            );
        };
        let ts_ms = scanned
            .ts
            .and_then(ts_of_text)
            .filter(|&ts| is_sane_ts(ts, received_at_ms))
            .unwrap_or(received_at_ms);
        Some(Ok(RawTelemetry {
            ts_ms,
            shape: scanned.shape,
        }))
    }

    fn encode_command(&self, cmd: &Command<'_>) -> Result<Vec<u8>, PluginError> {
        non_empty("commandId", cmd.command_id)?;
        non_empty("type", cmd.kind)?;
        let empty = Value::Object(Map::new());
        let params = match cmd.params {
            Value::Null => &empty,
            Value::Object(_) => cmd.params,
            _ => {
                return Err(PluginError::WrongType {
                    field: "params",
                    expected: "an object",
                })
            }
        };
        to_bytes(&CommandWire {
            kind: cmd.kind,
            command_id: cmd.command_id,
            params,
        })
    }

    fn decode_response(&self, payload: &[u8]) -> Result<CommandResponse, PluginError> {
        let mut obj = parse_object(payload)?;
        let command_id = opt_string(&obj, "commandId")?;
        if command_id.as_deref() == Some("") {
            return Err(PluginError::InvalidField {
                field: "commandId",
                reason: "empty",
            });
        }
        let success = match obj.remove("success") {
            None | Some(Value::Null) => return Err(PluginError::MissingField("success")),
            Some(Value::Bool(b)) => b,
            Some(_) => {
                return Err(PluginError::WrongType {
                    field: "success",
                    expected: "a boolean",
                })
            }
        };
        let error = opt_string(&obj, "error")?;
        let result = obj.remove("result").filter(|v| !v.is_null());
        Ok(CommandResponse {
            command_id,
            success,
            result,
            error,
        })
    }

    fn decode_status(&self, payload: &[u8]) -> Result<DeviceStatus, PluginError> {
        let obj = parse_object(payload)?;
        let state = opt_string(&obj, "state")?;
        let version = opt_string(&obj, "version")?;
        let ip = opt_string(&obj, "ip")?;
        let config_version = match obj.get("configVersion") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or(PluginError::WrongType {
                field: "configVersion",
                expected: "a non-negative integer",
            })?),
        };
        Ok(DeviceStatus {
            state,
            version,
            ip,
            config_version,
            raw: Value::Object(obj),
        })
    }

    fn encode_config(&self, version: u64, config: &Value) -> Result<Vec<u8>, PluginError> {
        if !config.is_object() {
            return Err(PluginError::WrongType {
                field: "config",
                expected: "an object",
            });
        }
        to_bytes(&ConfigWire { version, config })
    }

    fn decode_event(&self, payload: &[u8]) -> Result<DeviceEvent, PluginError> {
        let obj = parse_object(payload)?;
        let kind = opt_string(&obj, "type")?.ok_or(PluginError::MissingField("type"))?;
        non_empty("type", &kind)?;
        Ok(DeviceEvent {
            kind,
            raw: Value::Object(obj),
        })
    }
}

/// Parses `payload` as a JSON object.
fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, PluginError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(PluginError::NotAnObject),
        Err(e) => Err(PluginError::NotJson(e.to_string())),
    }
}

/// Parses `payload` as a JSON object whose values are kept as their validated text.
/// Of a repeated key the last value is kept, as in [`parse_object`].
fn parse_raw_object(payload: &[u8]) -> Result<BTreeMap<String, Box<RawValue>>, PluginError> {
    match serde_json::from_slice(payload) {
        Ok(obj) => Ok(obj),
        // Valid JSON that is not an object, or not JSON at all: the slow path names which.
        Err(e) => Err(parse_object(payload)
            .err()
            .unwrap_or(PluginError::NotJson(e.to_string()))),
    }
}

/// Reads `field`: absent or `null` is `None`, a string is `Some`, anything else an error.
fn opt_string(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(PluginError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), PluginError> {
    if value.is_empty() {
        Err(PluginError::InvalidField {
            field,
            reason: "empty",
        })
    } else {
        Ok(())
    }
}

fn to_bytes(value: &impl Serialize) -> Result<Vec<u8>, PluginError> {
    // Serializing borrowed strings and `Value`s cannot fail; the mapping keeps it total.
    serde_json::to_vec(value).map_err(|_| PluginError::InvalidField {
        field: "payload",
        reason: "unserializable",
    })
}

/// A device `ts` given as its JSON text, as unix ms ([`device_ts_ms`]): strings
/// without escapes and integers are read in place, anything else through serde_json.
fn ts_of_text(text: &[u8]) -> Option<u64> {
    match text {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => std::str::from_utf8(inner)
            .ok()
            .and_then(|s| rfc3339::parse(s).ok())
            .and_then(|ms| u64::try_from(ms).ok()),
        [b'0'..=b'9', ..] if text.len() <= 19 && text.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(text).ok()?.parse().ok()
        }
        _ => serde_json::from_slice::<Value>(text)
            .ok()
            .and_then(|ts| device_ts_ms(&ts)),
    }
}

/// A shape for a payload the scanner refused but serde_json took (none is known):
/// any hash of the key names serves, as long as equal names give equal shapes.
#[cold]
fn fallback_shape<'a>(keys: impl Iterator<Item = &'a String>) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for key in keys {
        for &b in key.as_bytes().iter().chain(b"\0") {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A device `ts` as unix ms: an RFC 3339 string or a non-negative unix-ms number.
fn device_ts_ms(ts: &Value) -> Option<u64> {
    match ts {
        Value::String(s) => rfc3339::parse(s).ok().and_then(|ms| u64::try_from(ms).ok()),
        Value::Number(n) => n.as_u64().or_else(|| {
            // Float ms are accepted; `as` saturates, and the sanity window rejects extremes.
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// Whether a device timestamp lies within [received − 1 year, received + 5 min].
fn is_sane_ts(ts: u64, received_at_ms: u64) -> bool {
    ts >= received_at_ms.saturating_sub(MAX_TS_AGE_MS)
        && ts <= received_at_ms.saturating_add(MAX_TS_SKEW_MS)
}

mod scan;
pub use scan::object_members;

#[cfg(test)]
mod tests;
