//! The JSON payloads of the device contract (SPEC §3-§6) the simulator speaks.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `status`, retained; also the last will (without `configVersion`).
#[derive(Serialize)]
pub(crate) struct Status<'a> {
    pub(crate) state: &'a str,
    pub(crate) version: &'a str,
    pub(crate) ip: &'a str,
    #[serde(rename = "configVersion", skip_serializing_if = "Option::is_none")]
    pub(crate) config_version: Option<u64>,
}

/// `telemetry`, every `--telemetry-ms`.
#[derive(Serialize)]
pub(crate) struct Telemetry {
    pub(crate) cpu: f64,
    pub(crate) memory: u64,
    pub(crate) uptime: u64,
    pub(crate) ts: u64,
}

/// `command`, from the broker; only what the simulator reads of it.
#[derive(Deserialize)]
pub(crate) struct Command {
    #[serde(rename = "commandId")]
    pub(crate) command_id: String,
    #[serde(rename = "type", default)]
    pub(crate) kind: String,
}

/// `response`: the answer to a command.
#[derive(Serialize)]
pub(crate) struct Response<'a> {
    #[serde(rename = "commandId")]
    pub(crate) command_id: &'a str,
    pub(crate) success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<ResultBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct ResultBody<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
}

/// `config`, from the broker.
#[derive(Deserialize)]
pub(crate) struct ConfigUpdate {
    pub(crate) version: u64,
    /// Applying it means logging it: the simulator has nothing to configure.
    #[serde(default)]
    pub(crate) config: Value,
}

/// The JSON of `value`; empty (and logged) should it fail to serialize.
pub(crate) fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not serialize a payload");
        Vec::new()
    })
}
