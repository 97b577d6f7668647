//! Jobs (SPEC §12): one command sent to a set of devices at a controlled pace, stopped
//! when too many fail.
//!
//! [`Jobs`] is the handle the admin API uses. A job is stored with its target set
//! resolved (`fleetmq_storage::jobs`), then one runner task per running job
//! (`runner`) creates its commands through the command engine, each with the
//! idempotency key `job:{job_id}` for its device, and records which targets got
//! theirs. The key is what makes a restart exact: the runner resumes at the first
//! target not recorded, and a command created just before a crash, but not recorded,
//! is found again by its key instead of being created twice.
//!
//! The runner learns terminal states from the engine's waiters
//! ([`CommandEngine::wait_terminal`]), which is what its in-flight limit and abort rule
//! count; the counts the API shows are read from the command records.
//!
//! Decisions SPEC §12 leaves open:
//! - A target the runner cannot create a command for (the device was deleted, or its
//!   plugin cannot express the command) is skipped and counted as `cancelled`.
//! - The abort rule needs at least one terminal command (`min_done` 0 acts as 1).
//! - `per_minute` is a sliding window over the runner's own creations; after a restart
//!   the window starts empty, and re-finding a command created before the restart (a
//!   replay of its key) creates nothing, so it does not count.
//! - `job.*` events carry the job as `GET /api/v1/jobs/{id}` shows it; an event a crash
//!   interrupted is emitted after the restart (at least once).

mod model;
mod runner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleetmq_storage::jobs::{JobRecord, JobStatus, JobTarget};
use fleetmq_storage::{generate_token, now_ms, DeviceId, Store};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fleet::commands::{CommandEngine, CommandError, CommandStatus, CommandView};
use crate::fleet::events::EventBus;

pub use model::{
    AbortRule, JobCounts, JobError, JobView, JobsConfig, NewJob, Rollout, Target, MAX_JOB_NAME_LEN,
};
use model::{Spec, TargetSet};

/// Largest page of [`Jobs::commands`].
pub const MAX_JOB_COMMANDS_PAGE: usize = 1_000;
/// Devices read per store call while resolving a target set.
const DEVICE_PAGE: usize = 1_000;

/// What the API asks of a running job's runner.
enum Control {
    Cancel(oneshot::Sender<Result<(), JobError>>),
}

struct Inner {
    store: Store,
    engine: CommandEngine,
    events: EventBus,
    config: JobsConfig,
    runners: Mutex<HashMap<String, mpsc::Sender<Control>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Handle to the jobs; clones share them.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// Starts the handle and, in a task, a runner for every stored job that is running
    /// (or stopped without having finished stopping).
    pub(crate) fn start(
        store: Store,
        engine: CommandEngine,
        events: EventBus,
        config: JobsConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Jobs {
        let jobs = Jobs {
            inner: Arc::new(Inner {
                store,
                engine,
                events,
                config,
                runners: Mutex::default(),
                shutdown,
                tracker: tracker.clone(),
            }),
        };
        let resume = jobs.clone();
        tracker.spawn(async move {
            match resume.inner.store.call(|s| s.list_jobs()).await {
                Ok(list) => {
                    for job in list.into_iter().filter(|j| !j.settled) {
                        resume.spawn_runner(job);
                    }
                }
                Err(error) => tracing::error!(%error, "cannot resume the jobs"),
            }
        });
        jobs
    }

    fn runners(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Control>>> {
        self.inner.runners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_runner(&self, job: JobRecord) {
        let spec = match Spec::from_record(&job) {
            Ok(spec) => spec,
            Err(error) => return tracing::error!(job_id = %job.job_id, %error, "cannot run job"),
        };
        let (tx, rx) = mpsc::channel(8);
        self.runners().insert(job.job_id.clone(), tx);
        let jobs = self.clone();
        self.inner.tracker.spawn(async move {
            let id = job.job_id.clone();
            runner::Runner::new(jobs.clone(), job, spec, rx).run().await;
            jobs.runners().remove(&id);
        });
    }

    /// Resolves the target set, stores the job durably and starts it.
    pub async fn create(&self, req: NewJob) -> Result<JobView, JobError> {
        let now = now_ms();
        let job_id = format!("{:012x}{}", now & 0xffff_ffff_ffff, &generate_token()[..12]);
        let spec = model::check(&req, &job_id)?;
        let targets = self.resolve(req.target.check()?).await?;
        let Some(first) = targets.first() else {
            return Err(JobError::Invalid("target: matches no device".into()));
        };
        // Checks the command against a real device (its plugin must express it).
        let device = self.known(first).await?;
        match device {
            Some(device) => self.inner.engine.check(&device, spec.command()?)?,
            None => return Err(JobError::Invalid(format!("target: device {first} is gone"))),
        }
        let target_count = u32::try_from(targets.len())
            .map_err(|_| JobError::Invalid("target: too many devices".into()))?;
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| JobError::Storage(format!("encoding the job: {e}")))?;
        let job = JobRecord {
            job_id,
            name: req.name,
            status: JobStatus::Running,
            created_at_ms: now,
            finished_at_ms: None,
            target_count,
            created: 0,
            settled: false,
            spec_json,
        };
        let stored = job.clone();
        self.inner
            .store
            .call(move |s| s.create_job(&stored, &targets))
            .await?;
        tracing::info!(job_id = %job.job_id, target_count, "job created");
        let view = JobView::new(&job, spec, self.counts(&job).await?);
        self.spawn_runner(job);
        Ok(view)
    }

    /// The devices of a target set, in id order (or as listed).
    async fn resolve(&self, set: TargetSet) -> Result<Vec<DeviceId>, JobError> {
        if let TargetSet::Devices(ids) = set {
            let check = ids.clone();
            let missing = self
                .inner
                .store
                .call(
                    move |s| -> Result<Vec<DeviceId>, fleetmq_storage::StoreError> {
                        let mut missing = Vec::new();
                        for id in check {
                            if s.get_device(&id)?.is_none() {
                                missing.push(id);
                            }
                        }
                        Ok(missing)
                    },
                )
                .await?;
            if let Some(id) = missing.first() {
                return Err(JobError::Invalid(format!("target: device {id} not found")));
            }
            return Ok(ids);
        }
        let mut out = Vec::new();
        let mut after: Option<DeviceId> = None;
        loop {
            let from = after.clone();
            let page = self
                .inner
                .store
                .call(move |s| s.list_devices(from.as_ref(), DEVICE_PAGE))
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let full = page.len() == DEVICE_PAGE;
            out.extend(page.into_iter().filter_map(|d| {
                let keep = match &set {
                    TargetSet::Label(k, v) => d.labels.get(k) == Some(v),
                    _ => true,
                };
                keep.then_some(d.id)
            }));
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// The device as the command engine knows it; `None` if it is not stored.
    async fn known(
        &self,
        id: &DeviceId,
    ) -> Result<Option<crate::fleet::commands::KnownDevice>, JobError> {
        let engine = &self.inner.engine;
        let miss = match engine.cached_device(id) {
            Ok(known) => return Ok(Some(known)),
            Err(miss) => miss,
        };
        let lookup = id.clone();
        let Some(device) = self
            .inner
            .store
            .call(move |s| s.get_device(&lookup))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(engine.remember_device(&device, miss)?))
    }

    /// Every job, newest first.
    pub async fn list(&self) -> Result<Vec<JobView>, JobError> {
        let jobs = self.inner.store.call(|s| s.list_jobs()).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            out.push(self.view(&job).await?);
        }
        Ok(out)
    }

    /// The job `job_id`.
    pub async fn get(&self, job_id: &str) -> Result<JobView, JobError> {
        self.view(&self.record(job_id).await?).await
    }

    async fn record(&self, job_id: &str) -> Result<JobRecord, JobError> {
        let id = job_id.to_owned();
        let job = self.inner.store.call(move |s| s.get_job(&id)).await?;
        job.ok_or(JobError::NotFound)
    }

    async fn view(&self, job: &JobRecord) -> Result<JobView, JobError> {
        let spec = Spec::from_record(job)?;
        Ok(JobView::new(job, spec, self.counts(job).await?))
    }

    /// The job's targets from `from` on, with their commands' records (`None` where
    /// not created, skipped, or pruned from history).
    async fn targets(
        &self,
        job_id: &str,
        from: u32,
        limit: usize,
    ) -> Result<Vec<(JobTarget, Option<CommandView>)>, JobError> {
        let id = job_id.to_owned();
        let targets = self
            .inner
            .store
            .call(move |s| s.job_targets(&id, from, limit))
            .await?;
        let ids = targets
            .iter()
            .map(|t| t.command_id.clone().unwrap_or_default())
            .collect();
        let views = self.inner.engine.get_many(ids).await?;
        Ok(targets.into_iter().zip(views).collect())
    }

    async fn counts(&self, job: &JobRecord) -> Result<JobCounts, JobError> {
        let mut counts = JobCounts {
            pending: u64::from(job.target_count - job.created.min(job.target_count)),
            ..JobCounts::default()
        };
        if job.created == 0 {
            return Ok(counts);
        }
        let limit = usize::try_from(job.created).unwrap_or(usize::MAX);
        for (target, view) in self.targets(&job.job_id, 0, limit).await? {
            match (target.command_id.as_deref(), view) {
                (_, Some(view)) => counts.add(view.status),
                (Some(""), None) => counts.add(CommandStatus::Cancelled),
                // Created, then pruned from history: nothing to count.
                _ => {}
            }
        }
        Ok(counts)
    }

    /// The job's commands in target order, only those in `status` if given, from the
    /// target index `cursor` on; returns the page and the next cursor.
    pub async fn commands(
        &self,
        job_id: &str,
        status: Option<CommandStatus>,
        limit: usize,
        cursor: Option<u32>,
    ) -> Result<(Vec<CommandView>, Option<u32>), JobError> {
        let job = self.record(job_id).await?;
        let limit = limit.clamp(1, MAX_JOB_COMMANDS_PAGE);
        let mut from = cursor.unwrap_or(0);
        let mut items = Vec::new();
        while from < job.created && items.len() < limit {
            let batch = self.targets(job_id, from, limit).await?;
            let Some(last) = batch.last() else { break };
            let next = last.0.index + 1;
            for (target, view) in batch {
                if items.len() == limit {
                    return Ok((items, Some(target.index)));
                }
                from = target.index + 1;
                if let Some(view) = view.filter(|v| status.is_none_or(|s| v.status == s)) {
                    items.push(view);
                }
            }
            from = from.max(next);
        }
        Ok((items, None))
    }

    /// Cancels a running job: no more commands, its open ones cancelled.
    pub async fn cancel(&self, job_id: &str) -> Result<JobView, JobError> {
        let job = self.record(job_id).await?;
        if job.status != JobStatus::Running {
            return Err(JobError::NotRunning(job.job_id, job.status.as_str()));
        }
        let runner = self.runners().get(job_id).cloned();
        let Some(runner) = runner else {
            return Err(JobError::Unavailable);
        };
        let (tx, rx) = oneshot::channel();
        // A runner that just finished is gone: the job is then no longer running.
        if runner.send(Control::Cancel(tx)).await.is_ok() {
            if let Ok(done) = rx.await {
                done?;
            }
        }
        let job = self.record(job_id).await?;
        match job.status {
            JobStatus::Cancelled => self.view(&job).await,
            JobStatus::Running => Err(JobError::Unavailable),
            other => Err(JobError::NotRunning(job.job_id, other.as_str())),
        }
    }
}

/// Whether an engine error ends the runner (the engine stopped).
fn is_shutdown(e: &CommandError) -> bool {
    matches!(e, CommandError::ShuttingDown)
}
