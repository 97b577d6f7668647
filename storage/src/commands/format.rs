//! The versioned on-disk encoding of [`CommandRecord`] (postcard).
//!
//! `V1` mirrors the record field for field but is private, so nothing outside this
//! module changes the bytes on disk by accident; the golden-byte tests pin them. A new
//! format is a new variant, never an edit to an existing one. Decoding never panics:
//! undecodable bytes, trailing bytes, unknown versions and broken invariants all come
//! back as [`StoreError::Corrupt`].

use serde::{Deserialize, Serialize};

use super::record::{CommandRecord, CommandStatus};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::COMMANDS_TABLE;

#[derive(Serialize, Deserialize)]
enum StoredCommand {
    V1(CommandV1),
}

#[derive(Serialize, Deserialize)]
struct CommandV1 {
    command_id: String,
    device_id: String,
    seq: u64,
    kind: String,
    params_json: String,
    metadata_json: Option<String>,
    idempotency_key: Option<String>,
    timeout_ms: u64,
    max_retries: u32,
    ttl_ms: u64,
    created_at_ms: u64,
    status: StatusV1,
    attempts: u32,
    sent_at_ms: Option<u64>,
    delivered_at_ms: Option<u64>,
    completed_at_ms: Option<u64>,
    result_json: Option<String>,
    error: Option<String>,
    late_response_json: Option<String>,
    next_deadline_ms: Option<u64>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
enum StatusV1 {
    Queued,
    Sent,
    Delivered,
    Completed,
    Failed,
    Expired,
    Cancelled,
    Superseded,
}

impl From<CommandStatus> for StatusV1 {
    fn from(s: CommandStatus) -> Self {
        match s {
            CommandStatus::Queued => StatusV1::Queued,
            CommandStatus::Sent => StatusV1::Sent,
            CommandStatus::Delivered => StatusV1::Delivered,
            CommandStatus::Completed => StatusV1::Completed,
            CommandStatus::Failed => StatusV1::Failed,
            CommandStatus::Expired => StatusV1::Expired,
            CommandStatus::Cancelled => StatusV1::Cancelled,
            CommandStatus::Superseded => StatusV1::Superseded,
        }
    }
}

impl From<StatusV1> for CommandStatus {
    fn from(s: StatusV1) -> Self {
        match s {
            StatusV1::Queued => CommandStatus::Queued,
            StatusV1::Sent => CommandStatus::Sent,
            StatusV1::Delivered => CommandStatus::Delivered,
            StatusV1::Completed => CommandStatus::Completed,
            StatusV1::Failed => CommandStatus::Failed,
            StatusV1::Expired => CommandStatus::Expired,
            StatusV1::Cancelled => CommandStatus::Cancelled,
            StatusV1::Superseded => CommandStatus::Superseded,
        }
    }
}

fn corrupt(table: &'static str, key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Encodes a command record (format `V1`).
pub(crate) fn encode_command(rec: &CommandRecord) -> Result<Vec<u8>, StoreError> {
    let v1 = CommandV1 {
        command_id: rec.command_id.clone(),
        device_id: rec.device_id.as_str().to_owned(),
        seq: rec.seq,
        kind: rec.kind.clone(),
        params_json: rec.params_json.clone(),
        metadata_json: rec.metadata_json.clone(),
        idempotency_key: rec.idempotency_key.clone(),
        timeout_ms: rec.timeout_ms,
        max_retries: rec.max_retries,
        ttl_ms: rec.ttl_ms,
        created_at_ms: rec.created_at_ms,
        status: rec.status.into(),
        attempts: rec.attempts,
        sent_at_ms: rec.sent_at_ms,
        delivered_at_ms: rec.delivered_at_ms,
        completed_at_ms: rec.completed_at_ms,
        result_json: rec.result_json.clone(),
        error: rec.error.clone(),
        late_response_json: rec.late_response_json.clone(),
        next_deadline_ms: rec.next_deadline_ms,
    };
    postcard::to_allocvec(&StoredCommand::V1(v1))
        .map_err(|e| StoreError::encode(format!("command {:?}", rec.command_id), e))
}

/// Decodes the command stored under `key`, checking the invariants the state machine
/// guarantees. Never panics: anything else is [`StoreError::Corrupt`].
pub(crate) fn decode_command(key: &str, bytes: &[u8]) -> Result<CommandRecord, StoreError> {
    let bad = |reason: String| corrupt(COMMANDS_TABLE, key, reason);
    let (stored, rest) =
        postcard::take_from_bytes::<StoredCommand>(bytes).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    let StoredCommand::V1(v1) = stored;
    if v1.command_id != key {
        return Err(bad(format!("record is for command {:?}", v1.command_id)));
    }
    let device_id: DeviceId = v1.device_id.parse().map_err(|e| bad(format!("{e}")))?;
    let status = CommandStatus::from(v1.status);
    check_invariants(&v1, status).map_err(|r| bad(r.to_owned()))?;
    Ok(CommandRecord {
        command_id: v1.command_id,
        device_id,
        seq: v1.seq,
        kind: v1.kind,
        params_json: v1.params_json,
        metadata_json: v1.metadata_json,
        idempotency_key: v1.idempotency_key,
        timeout_ms: v1.timeout_ms,
        max_retries: v1.max_retries,
        ttl_ms: v1.ttl_ms,
        created_at_ms: v1.created_at_ms,
        status,
        attempts: v1.attempts,
        sent_at_ms: v1.sent_at_ms,
        delivered_at_ms: v1.delivered_at_ms,
        completed_at_ms: v1.completed_at_ms,
        result_json: v1.result_json,
        error: v1.error,
        late_response_json: v1.late_response_json,
        next_deadline_ms: v1.next_deadline_ms,
    })
}

fn check_invariants(v1: &CommandV1, status: CommandStatus) -> Result<(), &'static str> {
    let terminal = status.is_terminal();
    if v1.timeout_ms == 0 {
        return Err("timeout_ms is 0");
    }
    if terminal != v1.completed_at_ms.is_some() {
        return Err("completed_at must be set exactly when the status is terminal");
    }
    if terminal == v1.next_deadline_ms.is_some() {
        return Err("a deadline must be set exactly when the status is not terminal");
    }
    if status == CommandStatus::Queued && v1.attempts != 0 {
        return Err("a queued command has attempts");
    }
    if matches!(status, CommandStatus::Sent | CommandStatus::Delivered)
        && (v1.attempts == 0 || v1.sent_at_ms.is_none())
    {
        return Err("a sent command has no attempt");
    }
    if status == CommandStatus::Delivered && v1.delivered_at_ms.is_none() {
        return Err("a delivered command has no delivered_at");
    }
    if !terminal && v1.late_response_json.is_some() {
        return Err("a late response on a command that is not terminal");
    }
    Ok(())
}
