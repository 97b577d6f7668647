//! Jobs (SPEC §12): one command sent to a set of devices at a controlled pace.
//!
//! Tables (defined in `schema`):
//! - `jobs`: job id → versioned [`JobRecord`] (postcard). The command request, rollout
//!   and abort settings are kept as the JSON text the broker made of them (`spec_json`):
//!   this module does not interpret them.
//! - `job_targets`: `(job id, index)` → device id, the target set resolved at creation,
//!   written once.
//! - `job_commands`: `(job id, index)` → command id of the target at `index`, written as
//!   the job's commands are created (`""` when none could be: the device was deleted).
//!   [`JobRecord::created`] counts them, so a restart resumes at that index.
//!
//! The broker creates each command with a per-(job, device) idempotency key before
//! recording it here, so a crash between the two only makes the re-creation a replay:
//! progress may be written without waiting for the disk ([`Store::record_job_commands`]).

use redb::ReadableTable as _;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, Location};
use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::schema::{JOBS, JOBS_TABLE as TABLE, JOB_COMMANDS, JOB_TARGETS};
use crate::store::Store;

const KIND: &str = "job";

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Completed,
    Aborted,
    Cancelled,
}

impl JobStatus {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Aborted => "aborted",
            JobStatus::Cancelled => "cancelled",
        }
    }

    fn code(self) -> u8 {
        match self {
            JobStatus::Running => 0,
            JobStatus::Completed => 1,
            JobStatus::Aborted => 2,
            JobStatus::Cancelled => 3,
        }
    }

    fn from_code(code: u8) -> Option<JobStatus> {
        Some(match code {
            0 => JobStatus::Running,
            1 => JobStatus::Completed,
            2 => JobStatus::Aborted,
            3 => JobStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    pub status: JobStatus,
    pub created_at_ms: u64,
    /// When it stopped being `running`.
    pub finished_at_ms: Option<u64>,
    /// How many devices the target set resolved to.
    pub target_count: u32,
    /// How many targets, from index 0, have had their command created (or skipped).
    pub created: u32,
    /// True once an aborted or cancelled job's open commands were all cancelled.
    pub settled: bool,
    /// The broker's JSON text of the command request, rollout and abort settings.
    pub spec_json: String,
}

/// A job as stored. A new format is a new variant, never an edit to `V1`.
#[derive(Serialize, Deserialize)]
enum StoredJob {
    V1(JobV1),
}

#[derive(Serialize, Deserialize)]
struct JobV1 {
    name: String,
    status: u8,
    created_at_ms: u64,
    finished_at_ms: Option<u64>,
    target_count: u32,
    created: u32,
    settled: bool,
    spec_json: String,
}

fn at(key: &str) -> Location<'_> {
    Location { table: TABLE, key }
}

pub(crate) fn encode_job(j: &JobRecord) -> Result<Vec<u8>, StoreError> {
    let stored = StoredJob::V1(JobV1 {
        name: j.name.clone(),
        status: j.status.code(),
        created_at_ms: j.created_at_ms,
        finished_at_ms: j.finished_at_ms,
        target_count: j.target_count,
        created: j.created,
        settled: j.settled,
        spec_json: j.spec_json.clone(),
    });
    encode(at(&j.job_id), &stored)
}

pub(crate) fn decode_job(id: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
    match decode(at(id), bytes)? {
        StoredJob::V1(v) => Ok(JobRecord {
            job_id: id.to_owned(),
            name: v.name,
            status: JobStatus::from_code(v.status)
                .ok_or_else(|| at(id).corrupt(format!("unknown job status {}", v.status)))?,
            created_at_ms: v.created_at_ms,
            finished_at_ms: v.finished_at_ms,
            target_count: v.target_count,
            created: v.created,
            settled: v.settled,
            spec_json: v.spec_json,
        }),
    }
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: KIND,
        key: id.to_owned(),
    }
}

/// One target of a job and its command, if created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTarget {
    pub index: u32,
    pub device_id: DeviceId,
    /// `None`: not created yet; `Some("")`: skipped (the device was gone).
    pub command_id: Option<String>,
}

impl Store {
    /// Stores a new job and its target set. [`StoreError::Conflict`] if the id is taken,
    /// [`StoreError::Invalid`] if `target_count` is not the number of targets.
    pub fn create_job(&self, job: &JobRecord, targets: &[DeviceId]) -> Result<(), StoreError> {
        if usize::try_from(job.target_count).ok() != Some(targets.len()) {
            return Err(StoreError::Invalid(format!(
                "job {}: target_count {} but {} targets",
                job.job_id,
                job.target_count,
                targets.len()
            )));
        }
        self.write(|txn| {
            let mut jobs = txn.open_table(JOBS)?;
            if jobs.get(job.job_id.as_str())?.is_some() {
                return Err(StoreError::Conflict {
                    kind: KIND,
                    key: job.job_id.clone(),
                });
            }
            jobs.insert(job.job_id.as_str(), encode_job(job)?.as_slice())?;
            let mut table = txn.open_table(JOB_TARGETS)?;
            for (i, device) in (0u32..).zip(targets) {
                table.insert((job.job_id.as_str(), i), device.as_str())?;
            }
            Ok(())
        })
    }

    /// The job with this id, if any.
    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.read(|txn| match txn.open_table(JOBS)?.get(id)? {
            Some(v) => Ok(Some(decode_job(id, v.value())?)),
            None => Ok(None),
        })
    }

    /// Every job, newest first.
    pub fn list_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(JOBS)?.iter()? {
                let (k, v) = entry?;
                out.push(decode_job(k.value(), v.value())?);
            }
            Ok(out)
        })?;
        out.sort_by(|a, b| (b.created_at_ms, &b.job_id).cmp(&(a.created_at_ms, &a.job_id)));
        Ok(out)
    }

    /// Replaces the stored job's status, `finished_at_ms` and `settled` (durably).
    /// [`StoreError::NotFound`] if absent. Its `created` is kept as stored.
    pub fn update_job_status(&self, job: &JobRecord) -> Result<JobRecord, StoreError> {
        self.write(|txn| {
            let mut jobs = txn.open_table(JOBS)?;
            let mut stored = match jobs.get(job.job_id.as_str())? {
                Some(v) => decode_job(&job.job_id, v.value())?,
                None => return Err(not_found(&job.job_id)),
            };
            stored.status = job.status;
            stored.finished_at_ms = job.finished_at_ms;
            stored.settled = job.settled;
            jobs.insert(job.job_id.as_str(), encode_job(&stored)?.as_slice())?;
            Ok(stored)
        })
    }

    /// Up to `limit` targets of the job from `from` on, with their command ids.
    pub fn job_targets(
        &self,
        id: &str,
        from: u32,
        limit: usize,
    ) -> Result<Vec<JobTarget>, StoreError> {
        self.read(|txn| {
            let targets = txn.open_table(JOB_TARGETS)?;
            let commands = txn.open_table(JOB_COMMANDS)?;
            let mut out = Vec::new();
            for entry in targets.range((id, from)..=(id, u32::MAX))?.take(limit) {
                let (k, v) = entry?;
                let index = k.value().1;
                let device_id = v
                    .value()
                    .parse::<DeviceId>()
                    .map_err(|e| at(id).corrupt(format!("target {index}: {e}")))?;
                let command_id = commands.get((id, index))?.map(|c| c.value().to_owned());
                out.push(JobTarget {
                    index,
                    device_id,
                    command_id,
                });
            }
            Ok(out)
        })
    }

    /// Records the commands of the targets from the job's `created` on, in order, and
    /// advances `created`; returns the stored job. Entries below `created` (already
    /// recorded) are ignored, a gap is [`StoreError::Invalid`]. Not durable by itself
    /// (see the module docs); the next durable commit persists it.
    pub fn record_job_commands(
        &self,
        id: &str,
        from: u32,
        command_ids: &[String],
    ) -> Result<JobRecord, StoreError> {
        self.write_with(false, |txn| {
            let mut jobs = txn.open_table(JOBS)?;
            let mut job = match jobs.get(id)? {
                Some(v) => decode_job(id, v.value())?,
                None => return Err(not_found(id)),
            };
            if from > job.created {
                return Err(StoreError::Invalid(format!(
                    "job {id}: commands from {from} recorded before {}",
                    job.created
                )));
            }
            let mut table = txn.open_table(JOB_COMMANDS)?;
            for (i, command_id) in (from..).zip(command_ids) {
                if i < job.created {
                    continue;
                }
                if i >= job.target_count {
                    return Err(StoreError::Invalid(format!("job {id}: no target {i}")));
                }
                table.insert((id, i), command_id.as_str())?;
                job.created = i + 1;
            }
            jobs.insert(id, encode_job(&job)?.as_slice())?;
            Ok(job)
        })
    }
}

#[cfg(test)]
mod tests;
