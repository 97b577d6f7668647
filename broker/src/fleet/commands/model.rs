//! The command engine's public types: its configuration, what a create asks for and
//! returns, the API's view of a command, its errors and counters.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetmq_storage::commands::{CommandRecord, CommandStatus};
use fleetmq_storage::{DeviceId, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Longest command `type`, in bytes.
pub const MAX_TYPE_LEN: usize = 256;
/// Longest `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Largest `timeout_s` a command may ask for (one day).
pub const MAX_TIMEOUT_S: u64 = 86_400;
/// Largest `ttl_s` a command may ask for (365 days).
pub const MAX_TTL_S: u64 = 365 * 86_400;
/// Largest `max_retries` a command may ask for.
pub const MAX_RETRIES: u32 = 100;
/// Largest page [`CommandEngine::list`] returns (SPEC §8).
pub const MAX_LIST_LIMIT: usize = 1_000;

/// The `[commands]` config section, validated: defaults for commands that do not set
/// their own values, and the per-device cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandsConfig {
    /// How long to wait for an answer after each send (`timeout_s`, default 30 s).
    pub timeout: Duration,
    /// Re-sends after a timeout before `failed` (`max_retries`, default 3).
    pub max_retries: u32,
    /// How long a command may wait for its device while queued (`ttl_s`, default 1 day).
    pub ttl: Duration,
    /// Non-terminal commands a device may have before creates answer `QueueFull`
    /// (default 1000).
    pub max_queued_per_device: usize,
    /// How long a finished command is kept (`history_days`, default 30 days; `None`
    /// keeps every command). Pruned from the old end of each device's history.
    pub history: Option<Duration>,
    /// How often history is pruned (also once at start); not a config key.
    pub prune_every: Duration,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            timeout: Duration::from_secs(30),
            max_retries: 3,
            ttl: Duration::from_secs(86_400),
            max_queued_per_device: 1_000,
            history: Some(Duration::from_secs(30 * 86_400)),
            prune_every: Duration::from_secs(3_600),
        }
    }
}

/// The body of `POST /api/v1/devices/{id}/commands`. Only `type` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCommand {
    /// The command type, e.g. `"RELOAD"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Parameters: a JSON object; absent or `null` means `{}`.
    #[serde(default)]
    pub params: Value,
    /// Opaque data for the host application, returned byte-for-byte.
    #[serde(default)]
    pub metadata: Option<Box<RawValue>>,
    /// Answer timeout per send, seconds (1..=[`MAX_TIMEOUT_S`]).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Re-sends after a timeout (0..=[`MAX_RETRIES`]).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// How long it may stay queued, seconds (0..=[`MAX_TTL_S`]; 0 = only if the device
    /// is ready now).
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// Whether it supersedes older non-terminal commands of the same type (default true).
    #[serde(default)]
    pub supersede: Option<bool>,
}

/// What [`CommandEngine::create`] returns.
#[derive(Debug, Clone)]
pub struct Created {
    /// The command as stored (`queued`, or `sent` when the device was ready).
    pub record: CommandView,
    /// True when an earlier create with the same `Idempotency-Key` made it.
    pub replayed: bool,
}

/// The command record of SPEC §5, as the API and events show it.
#[derive(Debug, Clone, Serialize)]
pub struct CommandView {
    pub command_id: String,
    pub device_id: DeviceId,
    #[serde(rename = "type")]
    pub kind: String,
    pub params: Box<RawValue>,
    /// Exactly the bytes the client sent.
    pub metadata: Option<Box<RawValue>>,
    pub status: CommandStatus,
    /// How many times it was handed to a connection.
    pub attempts: u32,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
    pub sent_at: Option<String>,
    pub delivered_at: Option<String>,
    /// When it reached its terminal status (any terminal status).
    pub completed_at: Option<String>,
    pub result: Option<Box<RawValue>>,
    pub error: Option<String>,
    /// The last answer that arrived after the terminal status.
    pub late_response: Option<Box<RawValue>>,
}

impl CommandView {
    /// Builds the view of a stored record; fails if a stored JSON text or timestamp is
    /// unusable (a corrupt record).
    pub fn from_record(rec: &CommandRecord) -> Result<CommandView, CommandError> {
        let bad =
            |what: String| CommandError::Storage(format!("command {:?}: {what}", rec.command_id));
        let raw = |field: &str, text: &str| {
            RawValue::from_string(text.to_owned()).map_err(|e| bad(format!("{field}: {e}")))
        };
        let opt_raw = |field: &str, text: Option<&str>| text.map(|t| raw(field, t)).transpose();
        let ts = |ms: u64| {
            i64::try_from(ms)
                .ok()
                .and_then(fleetmq_device_plugins::rfc3339::format_utc_ms)
                .ok_or_else(|| bad(format!("timestamp {ms} out of range")))
        };
        Ok(CommandView {
            command_id: rec.command_id.clone(),
            device_id: rec.device_id.clone(),
            kind: rec.kind.clone(),
            params: raw("params", &rec.params_json)?,
            metadata: opt_raw("metadata", rec.metadata_json.as_deref())?,
            status: rec.status(),
            attempts: rec.attempts(),
            created_at: ts(rec.created_at_ms)?,
            sent_at: rec.sent_at_ms().map(ts).transpose()?,
            delivered_at: rec.delivered_at_ms().map(ts).transpose()?,
            completed_at: rec.completed_at_ms().map(ts).transpose()?,
            result: opt_raw("result", rec.result_json())?,
            error: rec.error().map(str::to_owned),
            late_response: opt_raw("late_response", rec.late_response_json())?,
        })
    }
}

/// Why a command call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No command with this id (404).
    #[error("command not found")]
    NotFound,
    /// The command already reached a terminal status (409); carries its record.
    #[error("command {} is already {}", .0.command_id, .0.status)]
    AlreadyTerminal(Box<CommandView>),
    /// The device has too many non-terminal commands (429).
    #[error("device has {depth} pending commands, the limit")]
    QueueFull { depth: usize },
    /// The request is not acceptable (422); the message names the field.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// Our storage failed (500); logged where it happened.
    #[error("command storage failed: {0}")]
    Storage(String),
    /// The engine has stopped (503).
    #[error("the command engine is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "command storage failed");
        CommandError::Storage(e.to_string())
    }
}

/// Counters for `GET /api/v1/stats` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandStats {
    /// Stored commands per status (every status present).
    pub by_status: BTreeMap<&'static str, u64>,
    /// Answers that matched no command of their device (since start).
    pub unknown_responses: u64,
    /// Answers to commands that were already terminal (since start).
    pub late_responses: u64,
    /// Answers the device's plugin could not decode (since start).
    pub malformed_responses: u64,
    /// Finished commands deleted as older than `commands.history_days` (since start).
    pub pruned: u64,
}
