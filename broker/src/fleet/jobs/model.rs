//! The jobs' public types: the create request, the job as the API shows it, errors and
//! the configuration.

use std::collections::BTreeSet;
use std::time::Duration;

use fleetmq_storage::jobs::{JobRecord, JobStatus};
use fleetmq_storage::{DeviceId, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fleet::commands::{CommandError, CommandStatus, NewCommand, MAX_TYPE_LEN};

/// Longest job `name`, in bytes.
pub const MAX_JOB_NAME_LEN: usize = 256;

/// Settings of the job runners (not config keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// The "minute" of `rollout.per_minute`: 60 s, shorter in tests.
    pub minute: Duration,
    /// How long a runner waits before retrying a create the engine refused for now
    /// (the device's queue was full, a storage error).
    pub retry: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            minute: Duration::from_secs(60),
            retry: Duration::from_secs(1),
        }
    }
}

/// The body of `POST /api/v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub name: String,
    pub target: Target,
    /// A SPEC §5 command request (`type` required).
    pub command: Value,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub abort: Option<AbortRule>,
}

/// Which devices a job is for: exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// `key:value`.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub all: Option<bool>,
}

/// The target, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetSet {
    Devices(Vec<DeviceId>),
    Label(String, String),
    All,
}

impl Target {
    pub(crate) fn check(&self) -> Result<TargetSet, JobError> {
        let invalid = |m: &str| Err(JobError::Invalid(format!("target: {m}")));
        match (&self.devices, &self.label, self.all) {
            (Some(list), None, None | Some(false)) => {
                let mut seen = BTreeSet::new();
                let mut ids = Vec::with_capacity(list.len());
                for text in list {
                    let id = text
                        .parse::<DeviceId>()
                        .map_err(|e| JobError::Invalid(format!("target: device {text:?}: {e}")))?;
                    if seen.insert(id.clone()) {
                        ids.push(id);
                    }
                }
                Ok(TargetSet::Devices(ids))
            }
            (None, Some(label), None | Some(false)) => match label.split_once(':') {
                Some((k, v)) if !k.is_empty() => Ok(TargetSet::Label(k.into(), v.into())),
                _ => invalid("label must be key:value"),
            },
            (None, None, Some(true)) => Ok(TargetSet::All),
            _ => invalid("give exactly one of devices, label, all:true"),
        }
    }
}

/// How fast a job goes; both limits optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// At most this many commands created per minute.
    #[serde(default)]
    pub per_minute: Option<u32>,
    /// At most this many of the job's commands not terminal at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// When a job stops itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRule {
    /// Abort when `failed` + `expired` reach this percentage of the terminal commands.
    pub failed_pct: f64,
    /// ... once at least this many commands are terminal.
    #[serde(default)]
    pub min_done: u32,
}

impl AbortRule {
    /// Whether `bad` failed/expired out of `done` terminal commands trips the rule.
    pub(crate) fn trips(&self, bad: u64, done: u64) -> bool {
        done >= u64::from(self.min_done.max(1))
            && (bad as f64) * 100.0 >= self.failed_pct * done as f64
    }
}

/// What a job stores besides its record's fields: the command every device gets (its
/// `metadata` already carrying `job_id`) and the rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    pub command: Value,
    pub rollout: Rollout,
    pub abort: Option<AbortRule>,
}

impl Spec {
    /// The command request for one device.
    pub(crate) fn command(&self) -> Result<NewCommand, JobError> {
        serde_json::from_value(self.command.clone())
            .map_err(|e| JobError::Invalid(format!("command: {e}")))
    }

    pub(crate) fn from_record(rec: &JobRecord) -> Result<Spec, JobError> {
        serde_json::from_str(&rec.spec_json)
            .map_err(|e| JobError::Storage(format!("job {}: unreadable spec: {e}", rec.job_id)))
    }
}

/// Checks a create request's fields that need no device; returns the spec to store.
pub(crate) fn check(req: &NewJob, job_id: &str) -> Result<Spec, JobError> {
    let invalid = |m: String| Err(JobError::Invalid(m));
    if req.name.is_empty() || req.name.len() > MAX_JOB_NAME_LEN {
        return invalid(format!("name must be 1 to {MAX_JOB_NAME_LEN} bytes"));
    }
    let Value::Object(mut command) = req.command.clone() else {
        return invalid("command must be a JSON object".into());
    };
    let metadata = match command.remove("metadata") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return invalid("command.metadata must be a JSON object".into()),
    };
    let mut metadata = metadata;
    metadata.insert("job_id".into(), Value::String(job_id.to_owned()));
    command.insert("metadata".into(), Value::Object(metadata));
    let spec = Spec {
        command: Value::Object(command),
        rollout: req.rollout.unwrap_or_default(),
        abort: req.abort,
    };
    let parsed = spec.command()?;
    if parsed.kind.is_empty() || parsed.kind.len() > MAX_TYPE_LEN {
        return invalid(format!("command.type must be 1 to {MAX_TYPE_LEN} bytes"));
    }
    if spec.rollout.per_minute == Some(0) || spec.rollout.max_in_flight == Some(0) {
        return invalid("rollout: per_minute and max_in_flight must be at least 1".into());
    }
    if let Some(a) = spec.abort {
        if !(0.0..=100.0).contains(&a.failed_pct) {
            return invalid("abort.failed_pct must be 0 to 100".into());
        }
    }
    Ok(spec)
}

/// A job's commands by status; `pending`: not created yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    pub pending: u64,
    pub queued: u64,
    pub sent: u64,
    pub delivered: u64,
    pub completed: u64,
    pub failed: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub superseded: u64,
}

impl JobCounts {
    pub(crate) fn add(&mut self, status: CommandStatus) {
        let n = match status {
            CommandStatus::Queued => &mut self.queued,
            CommandStatus::Sent => &mut self.sent,
            CommandStatus::Delivered => &mut self.delivered,
            CommandStatus::Completed => &mut self.completed,
            CommandStatus::Failed => &mut self.failed,
            CommandStatus::Expired => &mut self.expired,
            CommandStatus::Cancelled => &mut self.cancelled,
            CommandStatus::Superseded => &mut self.superseded,
        };
        *n += 1;
    }
}

/// A job as the API and the `job.*` events show it (SPEC §12).
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub name: String,
    pub status: &'static str,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub target_count: u32,
    pub counts: JobCounts,
    /// The command each device gets (`metadata` with `job_id`).
    pub command: Value,
    pub rollout: Rollout,
    pub abort: Option<AbortRule>,
}

impl JobView {
    pub(crate) fn new(rec: &JobRecord, spec: Spec, counts: JobCounts) -> JobView {
        let ts = |ms: u64| crate::fleet::rfc3339_ms(ms);
        JobView {
            job_id: rec.job_id.clone(),
            name: rec.name.clone(),
            status: rec.status.as_str(),
            created_at: ts(rec.created_at_ms),
            finished_at: rec.finished_at_ms.map(ts),
            target_count: rec.target_count,
            counts,
            command: spec.command,
            rollout: spec.rollout,
            abort: spec.abort,
        }
    }

    /// Whether the job is still running.
    pub fn is_running(&self) -> bool {
        self.status == JobStatus::Running.as_str()
    }
}

/// Why a job call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// No job with this id (404).
    #[error("job not found")]
    NotFound,
    /// The job is no longer running (409).
    #[error("job {0} is already {1}")]
    NotRunning(String, &'static str),
    /// The request is not acceptable (422).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// Our storage failed (500).
    #[error("job storage failed: {0}")]
    Storage(String),
    /// The broker is stopping, or the job's runner is not up yet (503).
    #[error("the job runner is unavailable")]
    Unavailable,
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "job storage failed");
        JobError::Storage(e.to_string())
    }
}

impl From<CommandError> for JobError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(m) => JobError::Invalid(format!("command: {m}")),
            CommandError::ShuttingDown => JobError::Unavailable,
            other => JobError::Storage(other.to_string()),
        }
    }
}
