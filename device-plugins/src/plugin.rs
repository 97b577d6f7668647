//! The [`DevicePlugin`] trait and the plugin-neutral types it reads and writes.
//!
//! A plugin is a pure codec: it turns a device's payload bytes into typed values and
//! typed values into payload bytes. It never performs I/O, never panics on input, and
//! reports every malformed payload as a [`PluginError`] that names the problem.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;

/// Telemetry decoded from one device message.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// When the measurement was taken, in unix milliseconds: the device's own `ts` when
    /// it was sane, else the time the broker received the message.
    pub ts_ms: u64,
    /// Every top-level key of the payload except `ts`, with its JSON text as sent
    /// (validated, not re-encoded: the store keeps it as text, so parsing it into a
    /// tree and serialising it again would be work thrown away).
    pub values: BTreeMap<String, Box<RawValue>>,
}

impl PartialEq for Telemetry {
    fn eq(&self, other: &Self) -> bool {
        self.ts_ms == other.ts_ms
            && self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|((ka, va), (kb, vb))| ka == kb && va.get() == vb.get())
    }
}

impl Telemetry {
    /// The value of `key` parsed, if the payload had it.
    pub fn value(&self, key: &str) -> Option<Value> {
        // The text was validated when the payload was decoded; parsing it cannot fail.
        serde_json::from_str(self.values.get(key)?.get()).ok()
    }

    /// Every number in the payload, nested objects flattened to dotted keys
    /// (`{"disk":{"free":3}}` gives `("disk.free", 3.0)`), in key order. Computed on
    /// request: the store keeps `values` and does not need it for every point.
    pub fn numeric(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for key in self.values.keys() {
            if let Some(value) = self.value(key) {
                flatten_number(key.clone(), &value, &mut out);
            }
        }
        out
    }
}

/// Appends `value` as `(path, number)` if it is one, or every number under it if it is
/// an object. serde_json's recursion limit bounds the depth.
fn flatten_number(path: String, value: &Value, out: &mut Vec<(String, f64)>) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push((path, f));
            }
        }
        Value::Object(inner) => {
            for (key, v) in inner {
                flatten_number(format!("{path}.{key}"), v, out);
            }
        }
        _ => {}
    }
}

/// A telemetry message that is stored as sent: what [`DevicePlugin::check_telemetry`]
/// learnt from it without decoding it.
///
/// The payload it describes is a JSON object in UTF-8 whose top-level members other
/// than `ts` are the point's values (of a repeated key the last counts), as
/// [`DevicePlugin::decode_telemetry`] would have returned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawTelemetry {
    /// As [`Telemetry::ts_ms`].
    pub ts_ms: u64,
    /// A hash of the payload's key names: payloads with the same keys in the same
    /// order and spelling have the same shape (the store keeps one latest payload per
    /// shape instead of decoding every point's keys). Different key lists may collide
    /// with a chance of about 2^-64.
    pub shape: u64,
}

/// A command to be encoded for a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Command<'a> {
    /// The broker-assigned id the device echoes in its response.
    pub command_id: &'a str,
    /// The command type (`"type"` on the wire), e.g. `"RELOAD"`.
    pub kind: &'a str,
    /// Command parameters as given by the host application.
    pub params: &'a Value,
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResponse {
    /// The command id the device echoed, if it sent one.
    pub command_id: Option<String>,
    /// Whether the device reports success.
    pub success: bool,
    /// The result the device attached, if any.
    pub result: Option<Value>,
    /// The error message the device attached, if any.
    pub error: Option<String>,
}

/// A command that is waiting for a response, as the matcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCommand<'a> {
    /// The command's id.
    pub command_id: &'a str,
    /// The command's type.
    pub kind: &'a str,
    /// When the command was created, in unix milliseconds; orders the oldest-first
    /// fallback (ties go to the earlier slice position).
    pub created_at_ms: u64,
}

/// A device's self-reported status (its retained `status` message).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    /// Reported state, e.g. `"online"`.
    pub state: Option<String>,
    /// Reported firmware or application version.
    pub version: Option<String>,
    /// Reported IP address, as the device wrote it.
    pub ip: Option<String>,
    /// The config version the device says it applied.
    pub config_version: Option<u64>,
    /// The whole payload, kept as `reported_status`.
    pub raw: Value,
}

/// An event a device raised on its `events` topic.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    /// The event type, e.g. `"door_open"`.
    pub kind: String,
    /// The whole payload.
    pub raw: Value,
}

/// Why a plugin refused a payload or a value to encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The payload is not valid UTF-8 JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The payload is JSON, but not an object.
    #[error("payload is JSON but not an object")]
    NotAnObject,
    /// A required field is absent (or `null`).
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The offending field.
        field: &'static str,
        /// What it must be, e.g. `"a string"`.
        expected: &'static str,
    },
    /// A field has the right type but an unacceptable value.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The plugin does not implement this operation.
    #[error("plugin `{plugin}` does not support {operation}")]
    Unsupported {
        /// The plugin's name.
        plugin: &'static str,
        /// The operation asked for, e.g. `"config"`.
        operation: &'static str,
    },
    /// A plugin with this name is already registered.
    #[error("a plugin named `{0}` is already registered")]
    DuplicatePlugin(&'static str),
}

/// How one kind of device's payloads are read and written (SPEC §9).
///
/// Object safe, so the broker keeps plugins as `Arc<dyn DevicePlugin>` and picks one
/// per device. Every method is pure and returns an error instead of panicking.
pub trait DevicePlugin: Send + Sync {
    /// The name a device record refers to, e.g. `"json"`.
    fn name(&self) -> &'static str;

    /// Decodes one telemetry message received at `received_at_ms` (unix milliseconds).
    fn decode_telemetry(
        &self,
        payload: &[u8],
        received_at_ms: u64,
    ) -> Result<Telemetry, PluginError>;

    /// Checks one telemetry message received at `received_at_ms` that is to be stored
    /// as sent, without decoding its values (see [`RawTelemetry`] for what the payload
    /// must then be). `None`: this plugin's telemetry is not stored as sent, and the
    /// caller decodes it with [`decode_telemetry`](Self::decode_telemetry) (the
    /// default, for plugins that turn binary payloads into points). When it returns
    /// `Some`, it refuses exactly what `decode_telemetry` refuses.
    fn check_telemetry(
        &self,
        payload: &[u8],
        received_at_ms: u64,
    ) -> Option<Result<RawTelemetry, PluginError>> {
        let _ = (payload, received_at_ms);
        None
    }

    /// Encodes a command for the device's `command` topic.
    fn encode_command(&self, cmd: &Command<'_>) -> Result<Vec<u8>, PluginError>;

    /// Decodes a message from the device's `response` topic.
    fn decode_response(&self, payload: &[u8]) -> Result<CommandResponse, PluginError>;

    /// Whether `resp`, which carries no command id, may answer a pending command of type
    /// `kind`. Plugins for devices that cannot echo ids narrow this by response pattern;
    /// the default accepts every type.
    fn may_answer(&self, resp: &CommandResponse, kind: &str) -> bool {
        let _ = (resp, kind);
        true
    }

    /// Picks the pending command `resp` answers, as an index into `pending`.
    ///
    /// A response with a command id matches that id only (`None` when no pending
    /// command has it: the caller counts and drops it). A response without one falls
    /// back to the oldest pending command that [`may_answer`](Self::may_answer) allows.
    fn match_response(
        &self,
        resp: &CommandResponse,
        pending: &[PendingCommand<'_>],
    ) -> Option<usize> {
        match resp.command_id.as_deref() {
            Some(id) => pending.iter().position(|p| p.command_id == id),
            None => pending
                .iter()
                .enumerate()
                .filter(|(_, p)| self.may_answer(resp, p.kind))
                .min_by_key(|(i, p)| (p.created_at_ms, *i))
                .map(|(i, _)| i),
        }
    }

    /// Decodes a message from the device's `status` topic.
    fn decode_status(&self, payload: &[u8]) -> Result<DeviceStatus, PluginError> {
        let _ = payload;
        Err(PluginError::Unsupported {
            plugin: self.name(),
            operation: "status",
        })
    }

    /// Encodes config `version` for the device's retained `config` topic.
    fn encode_config(&self, version: u64, config: &Value) -> Result<Vec<u8>, PluginError> {
        let _ = (version, config);
        Err(PluginError::Unsupported {
            plugin: self.name(),
            operation: "config",
        })
    }

    /// Decodes a message from the device's `events` topic.
    fn decode_event(&self, payload: &[u8]) -> Result<DeviceEvent, PluginError> {
        let _ = payload;
        Err(PluginError::Unsupported {
            plugin: self.name(),
            operation: "events",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin that only implements the required methods, to exercise the defaults.
    struct Minimal;

    impl DevicePlugin for Minimal {
        fn name(&self) -> &'static str {
            "minimal"
        }
        fn decode_telemetry(&self, _: &[u8], _: u64) -> Result<Telemetry, PluginError> {
            Err(PluginError::NotAnObject)
        }
        fn encode_command(&self, _: &Command<'_>) -> Result<Vec<u8>, PluginError> {
            Ok(Vec::new())
        }
        fn decode_response(&self, _: &[u8]) -> Result<CommandResponse, PluginError> {
            Err(PluginError::NotAnObject)
        }
        fn may_answer(&self, _: &CommandResponse, kind: &str) -> bool {
            kind == "PING"
        }
    }

    fn resp(id: Option<&str>) -> CommandResponse {
        CommandResponse {
            command_id: id.map(str::to_owned),
            success: true,
            result: None,
            error: None,
        }
    }

    fn pending() -> [PendingCommand<'static>; 3] {
        [
            PendingCommand {
                command_id: "c1",
                kind: "RELOAD",
                created_at_ms: 10,
            },
            PendingCommand {
                command_id: "c2",
                kind: "PING",
                created_at_ms: 30,
            },
            PendingCommand {
                command_id: "c3",
                kind: "PING",
                created_at_ms: 20,
            },
        ]
    }

    #[test]
    fn trait_is_object_safe_and_defaults_are_unsupported() {
        let p: Box<dyn DevicePlugin> = Box::new(Minimal);
        let unsupported = |op| PluginError::Unsupported {
            plugin: "minimal",
            operation: op,
        };
        assert_eq!(p.decode_status(b"{}"), Err(unsupported("status")));
        assert_eq!(p.encode_config(1, &Value::Null), Err(unsupported("config")));
        assert_eq!(p.decode_event(b"{}"), Err(unsupported("events")));
    }

    #[test]
    fn match_by_id_ignores_pattern_and_age() {
        let p = Minimal;
        assert_eq!(p.match_response(&resp(Some("c1")), &pending()), Some(0));
        assert_eq!(p.match_response(&resp(Some("nope")), &pending()), None);
    }

    #[test]
    fn fallback_is_oldest_allowed_type() {
        let p = Minimal;
        assert_eq!(p.match_response(&resp(None), &pending()), Some(2));
        assert_eq!(p.match_response(&resp(None), &pending()[..1]), None);
        assert_eq!(p.match_response(&resp(None), &[]), None);
    }

    #[test]
    fn fallback_ties_go_to_earlier_position() {
        let same = [
            PendingCommand {
                command_id: "a",
                kind: "PING",
                created_at_ms: 5,
            },
            PendingCommand {
                command_id: "b",
                kind: "PING",
                created_at_ms: 5,
            },
        ];
        assert_eq!(Minimal.match_response(&resp(None), &same), Some(0));
    }
}
