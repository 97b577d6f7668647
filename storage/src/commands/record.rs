//! The command record and its state machine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// Where a command is in its life (SPEC §5). Only [`CommandRecord`]'s transition methods
/// move a command from one status to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Waiting for the device to be ready (connected and subscribed).
    Queued,
    /// Handed to the device's connection at QoS 1; no PUBACK yet.
    Sent,
    /// The connection acknowledged the PUBLISH.
    Delivered,
    /// The device answered `success: true`.
    Completed,
    /// The device answered `success: false`, or never answered.
    Failed,
    /// Still queued when its TTL ran out.
    Expired,
    /// Cancelled through the API (or its device was deleted).
    Cancelled,
    /// Replaced by a newer command of the same type.
    Superseded,
}

impl CommandStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [CommandStatus; 8] = [
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Delivered,
        CommandStatus::Completed,
        CommandStatus::Failed,
        CommandStatus::Expired,
        CommandStatus::Cancelled,
        CommandStatus::Superseded,
    ];

    /// The snake_case name used in JSON, query strings and event types.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Completed => "completed",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
            CommandStatus::Cancelled => "cancelled",
            CommandStatus::Superseded => "superseded",
        }
    }

    /// Whether the command is finished; a terminal status never changes.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            CommandStatus::Queued | CommandStatus::Sent | CommandStatus::Delivered
        )
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`CommandStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command status {0:?}; expected one of queued, sent, delivered, completed, failed, expired, cancelled, superseded")]
pub struct UnknownStatus(pub String);

impl FromStr for CommandStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A transition the state machine does not allow, e.g. cancelling a completed command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command {command_id:?} cannot {action} while {from}")]
pub struct InvalidTransition {
    /// The command.
    pub command_id: String,
    /// Its status.
    pub from: CommandStatus,
    /// What was attempted, e.g. `"cancel"`.
    pub action: &'static str,
}

/// What [`CommandWriter::create`](super::CommandWriter::create) needs; the store adds `seq`, status `queued` and the
/// TTL deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCommandRecord {
    /// Unique id, also the key of the `commands` table.
    pub command_id: String,
    /// The device it is for.
    pub device_id: DeviceId,
    /// The command type (`"type"` on the wire).
    pub kind: String,
    /// `params` as JSON text (an object).
    pub params_json: String,
    /// `metadata` as JSON text exactly as the client sent it.
    pub metadata_json: Option<String>,
    /// The `Idempotency-Key` it was created with.
    pub idempotency_key: Option<String>,
    /// How long to wait for an answer after each send, ms (at least 1).
    pub timeout_ms: u64,
    /// How many times to re-send after a timeout.
    pub max_retries: u32,
    /// How long it may wait for the device while queued, ms.
    pub ttl_ms: u64,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
}

/// A stored command. The descriptive fields are public; the status and everything that
/// changes with it are private and move only through the transition methods, so a record
/// is always one the state machine can reach (the fields are visible to the `commands`
/// module only, for its codec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// Unique id.
    pub command_id: String,
    /// The device it is for.
    pub device_id: DeviceId,
    /// Store-wide creation counter: orders a device's commands oldest first.
    pub seq: u64,
    /// The command type.
    pub kind: String,
    /// `params` as JSON text.
    pub params_json: String,
    /// `metadata` as JSON text, exactly as given.
    pub metadata_json: Option<String>,
    /// The `Idempotency-Key` it was created with.
    pub idempotency_key: Option<String>,
    /// Answer timeout per send, ms.
    pub timeout_ms: u64,
    /// Re-sends allowed after timeouts.
    pub max_retries: u32,
    /// Time to live while queued, ms.
    pub ttl_ms: u64,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    pub(super) status: CommandStatus,
    pub(super) attempts: u32,
    pub(super) sent_at_ms: Option<u64>,
    pub(super) delivered_at_ms: Option<u64>,
    pub(super) completed_at_ms: Option<u64>,
    pub(super) result_json: Option<String>,
    pub(super) error: Option<String>,
    pub(super) late_response_json: Option<String>,
    pub(super) next_deadline_ms: Option<u64>,
}

impl CommandRecord {
    /// A new `queued` record whose first deadline is its expiry.
    pub(crate) fn new(new: NewCommandRecord, seq: u64) -> CommandRecord {
        let expires = new.created_at_ms.saturating_add(new.ttl_ms);
        CommandRecord {
            command_id: new.command_id,
            device_id: new.device_id,
            seq,
            kind: new.kind,
            params_json: new.params_json,
            metadata_json: new.metadata_json,
            idempotency_key: new.idempotency_key,
            timeout_ms: new.timeout_ms,
            max_retries: new.max_retries,
            ttl_ms: new.ttl_ms,
            created_at_ms: new.created_at_ms,
            status: CommandStatus::Queued,
            attempts: 0,
            sent_at_ms: None,
            delivered_at_ms: None,
            completed_at_ms: None,
            result_json: None,
            error: None,
            late_response_json: None,
            next_deadline_ms: Some(expires),
        }
    }

    /// The current status.
    pub fn status(&self) -> CommandStatus {
        self.status
    }
    /// How many times the command was handed to a connection.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// The last time it was handed to a connection, unix ms.
    pub fn sent_at_ms(&self) -> Option<u64> {
        self.sent_at_ms
    }
    /// When a connection first acknowledged it, unix ms.
    pub fn delivered_at_ms(&self) -> Option<u64> {
        self.delivered_at_ms
    }
    /// When it reached its terminal status, unix ms.
    pub fn completed_at_ms(&self) -> Option<u64> {
        self.completed_at_ms
    }
    /// The device's `result`, JSON text.
    pub fn result_json(&self) -> Option<&str> {
        self.result_json.as_deref()
    }
    /// Why it failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
    /// The last answer that arrived after the terminal status, JSON text.
    pub fn late_response_json(&self) -> Option<&str> {
        self.late_response_json.as_deref()
    }
    /// When the timer must look at it next, unix ms; `None` once terminal.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms
    }
    /// `created_at + ttl`: the end of waiting for a connection.
    pub fn expires_at_ms(&self) -> u64 {
        self.created_at_ms.saturating_add(self.ttl_ms)
    }

    fn invalid(&self, action: &'static str) -> InvalidTransition {
        InvalidTransition {
            command_id: self.command_id.clone(),
            from: self.status,
            action,
        }
    }

    /// Handed to a connection: `queued` → `sent`. A re-send of a `sent` or `delivered`
    /// command keeps its status (a re-send never moves backwards). Counts the attempt and
    /// arms the answer timeout at `deadline_ms`.
    pub fn send(&mut self, now_ms: u64, deadline_ms: u64) -> Result<(), InvalidTransition> {
        match self.status {
            CommandStatus::Queued => self.status = CommandStatus::Sent,
            CommandStatus::Sent | CommandStatus::Delivered => {}
            _ => return Err(self.invalid("send")),
        }
        self.attempts = self.attempts.saturating_add(1);
        self.sent_at_ms = Some(now_ms);
        self.next_deadline_ms = Some(deadline_ms);
        Ok(())
    }

    /// A PUBACK: `sent` → `delivered`; `Ok(false)` if it was already delivered.
    pub fn acknowledge(&mut self, now_ms: u64) -> Result<bool, InvalidTransition> {
        match self.status {
            CommandStatus::Sent => {
                self.status = CommandStatus::Delivered;
                self.delivered_at_ms.get_or_insert(now_ms);
                Ok(true)
            }
            CommandStatus::Delivered => Ok(false),
            _ => Err(self.invalid("acknowledge")),
        }
    }

    fn finish(
        &mut self,
        now_ms: u64,
        to: CommandStatus,
        action: &'static str,
    ) -> Result<(), InvalidTransition> {
        if self.status.is_terminal() {
            return Err(self.invalid(action));
        }
        self.status = to;
        self.completed_at_ms = Some(now_ms);
        self.next_deadline_ms = None;
        Ok(())
    }

    /// The device answered `success: true`.
    pub fn complete(
        &mut self,
        now_ms: u64,
        result_json: Option<String>,
    ) -> Result<(), InvalidTransition> {
        self.finish(now_ms, CommandStatus::Completed, "complete")?;
        self.result_json = result_json;
        Ok(())
    }

    /// The device answered `success: false`, or gave no answer (`error` = `"timeout"`).
    pub fn fail(
        &mut self,
        now_ms: u64,
        error: String,
        result_json: Option<String>,
    ) -> Result<(), InvalidTransition> {
        self.finish(now_ms, CommandStatus::Failed, "fail")?;
        self.error = Some(error);
        self.result_json = result_json;
        Ok(())
    }

    /// Its TTL ran out while it was still `queued`.
    pub fn expire(&mut self, now_ms: u64) -> Result<(), InvalidTransition> {
        if self.status != CommandStatus::Queued {
            return Err(self.invalid("expire"));
        }
        self.finish(now_ms, CommandStatus::Expired, "expire")
    }

    /// Cancelled before reaching a terminal status; `reason` is kept as `error`.
    pub fn cancel(&mut self, now_ms: u64, reason: Option<String>) -> Result<(), InvalidTransition> {
        self.finish(now_ms, CommandStatus::Cancelled, "cancel")?;
        self.error = reason;
        Ok(())
    }

    /// A newer command of the same type replaced it.
    pub fn supersede(&mut self, now_ms: u64) -> Result<(), InvalidTransition> {
        self.finish(now_ms, CommandStatus::Superseded, "supersede")
    }

    /// Moves the timer's next look at a non-terminal command to `deadline_ms` without
    /// changing its status (e.g. a timed-out command whose device is offline waits for
    /// the next connection until its TTL).
    pub fn postpone(&mut self, deadline_ms: u64) -> Result<(), InvalidTransition> {
        if self.status.is_terminal() {
            return Err(self.invalid("postpone"));
        }
        self.next_deadline_ms = Some(deadline_ms);
        Ok(())
    }

    /// Keeps an answer that arrived after the terminal status; the status stays.
    pub fn record_late_response(&mut self, response_json: String) -> Result<(), InvalidTransition> {
        if !self.status.is_terminal() {
            return Err(self.invalid("record a late response"));
        }
        self.late_response_json = Some(response_json);
        Ok(())
    }
}
