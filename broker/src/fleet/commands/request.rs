//! What a create request becomes: its checks against SPEC §5's limits and the config's
//! defaults, its id, and its payload in the device plugin's encoding.

use bytes::Bytes;
use fleetmq_device_plugins::{Command, DevicePlugin};
use fleetmq_storage::commands::NewCommandRecord;
use fleetmq_storage::generate_token;
use serde_json::Value;

use super::model::{
    CommandError, CommandsConfig, NewCommand, MAX_IDEMPOTENCY_KEY_LEN, MAX_RETRIES, MAX_TIMEOUT_S,
    MAX_TTL_S, MAX_TYPE_LEN,
};
use super::{duration_ms, KnownDevice};

/// Checks a request; returns the record to create, whether it supersedes, and its
/// payload for the device.
pub(super) fn validate(
    cfg: &CommandsConfig,
    created_at_ms: u64,
    device: &KnownDevice,
    req: NewCommand,
    idempotency_key: Option<String>,
) -> Result<(NewCommandRecord, bool, Bytes), CommandError> {
    let invalid = |m: String| Err(CommandError::Invalid(m));
    if req.kind.is_empty() || req.kind.len() > MAX_TYPE_LEN {
        return invalid(format!("type must be 1 to {MAX_TYPE_LEN} bytes"));
    }
    let (timeout_ms, ttl_ms, max_retries) = limits(cfg, &req)?;
    let params = match req.params {
        Value::Null => Value::Object(serde_json::Map::new()),
        p @ Value::Object(_) => p,
        _ => return invalid("params must be a JSON object".into()),
    };
    if let Some(key) = &idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return invalid(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"
            ));
        }
    }
    let command_id = new_command_id(created_at_ms);
    // Encoded now so a command the device's plugin cannot express is refused here
    // rather than failing at delivery; the first send uses this payload.
    let payload = encode(device.plugin.as_ref(), &command_id, &req.kind, &params)
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    let new = NewCommandRecord {
        command_id,
        device_id: device.id.clone(),
        kind: req.kind,
        params_json: params.to_string(),
        metadata_json: req.metadata.map(|m| m.get().to_owned()),
        idempotency_key,
        timeout_ms,
        max_retries,
        ttl_ms,
        created_at_ms,
    };
    Ok((new, req.supersede.unwrap_or(true), Bytes::from(payload)))
}

/// The command's answer timeout and TTL in ms and its retry budget: its own values,
/// checked, or the config's.
fn limits(cfg: &CommandsConfig, req: &NewCommand) -> Result<(u64, u64, u32), CommandError> {
    let invalid = |m: String| Err(CommandError::Invalid(m));
    let timeout_ms = match req.timeout_s {
        Some(s) if !(1..=MAX_TIMEOUT_S).contains(&s) => {
            return invalid(format!("timeout_s must be 1 to {MAX_TIMEOUT_S}"))
        }
        Some(s) => s * 1_000,
        None => duration_ms(cfg.timeout).max(1),
    };
    let ttl_ms = match req.ttl_s {
        Some(s) if s > MAX_TTL_S => return invalid(format!("ttl_s must be 0 to {MAX_TTL_S}")),
        Some(s) => s * 1_000,
        None => duration_ms(cfg.ttl),
    };
    let max_retries = match req.max_retries {
        Some(n) if n > MAX_RETRIES => {
            return invalid(format!("max_retries must be 0 to {MAX_RETRIES}"))
        }
        Some(n) => n,
        None => cfg.max_retries,
    };
    Ok((timeout_ms, ttl_ms, max_retries))
}

/// A new command id: 12 hex digits of creation ms (so ids sort roughly by age) and 80
/// random bits.
fn new_command_id(now_ms: u64) -> String {
    let random = generate_token();
    format!("{:012x}{}", now_ms & 0xffff_ffff_ffff, &random[..20])
}

/// The payload of `command_id` for the device's plugin.
pub(super) fn encode(
    plugin: &dyn DevicePlugin,
    command_id: &str,
    kind: &str,
    params: &Value,
) -> Result<Vec<u8>, fleetmq_device_plugins::PluginError> {
    plugin.encode_command(&Command {
        command_id,
        kind,
        params,
    })
}
