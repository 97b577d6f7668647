//! One running job: creates its commands at the rollout's pace, follows them to their
//! terminal states, and stops the job when it is done, aborted or cancelled.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use fleetmq_storage::jobs::{JobRecord, JobStatus, JobTarget};
use fleetmq_storage::{now_ms, DeviceId};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use super::model::Spec;
use super::{is_shutdown, Control, JobError, Jobs};
use crate::fleet::commands::{CommandError, CommandStatus, CommandView};

/// How long one wait for a terminal state lasts before it is renewed.
const WAIT_SLICE: Duration = Duration::from_secs(3_600);
/// Most commands created in one step (one store read, one progress write).
const CREATE_BATCH: usize = 256;

/// What became of one create.
enum Outcome {
    /// The command; `replayed`: it existed already (created before a restart), so it
    /// does not count against `per_minute`.
    Created { id: String, replayed: bool },
    /// No command for this target (the device is gone, or cannot take the command).
    Skipped,
    /// Try again later (the device's queue is full, a storage error).
    Retry,
    /// The engine stopped.
    Stop,
}

type Waited = (String, Result<CommandView, CommandError>);

pub(super) struct Runner {
    jobs: Jobs,
    job: JobRecord,
    spec: Spec,
    control: mpsc::Receiver<Control>,
    /// Waits for the open commands' terminal states.
    waits: JoinSet<Waited>,
    /// The job's created commands not known to be terminal.
    open: HashSet<String>,
    /// Terminal commands (skipped targets included), and how many failed or expired.
    done: u64,
    bad: u64,
    /// When each of the last `per_minute` commands was created.
    window: VecDeque<Instant>,
    retry_at: Option<Instant>,
}

impl Runner {
    pub(super) fn new(
        jobs: Jobs,
        job: JobRecord,
        spec: Spec,
        control: mpsc::Receiver<Control>,
    ) -> Runner {
        Runner {
            jobs,
            job,
            spec,
            control,
            waits: JoinSet::new(),
            open: HashSet::new(),
            done: 0,
            bad: 0,
            window: VecDeque::new(),
            retry_at: None,
        }
    }

    pub(super) async fn run(mut self) {
        if let Err(error) = self.load().await {
            return tracing::error!(job_id = %self.job.job_id, %error, "cannot resume job");
        }
        if self.job.status != JobStatus::Running {
            return self.settle().await;
        }
        let shutdown = self.jobs.inner.shutdown.clone();
        loop {
            if self.tripped() {
                let _ = self.stop(JobStatus::Aborted).await;
                return;
            }
            if self.job.created >= self.job.target_count && self.open.is_empty() {
                let _ = self.stop(JobStatus::Completed).await;
                return;
            }
            let Some(wake) = self.create_some().await else {
                return;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                control = self.control.recv() => match control {
                    Some(Control::Cancel(reply)) => {
                        let _ = reply.send(self.stop(JobStatus::Cancelled).await);
                        return;
                    }
                    None => return,
                },
                Some(joined) = self.waits.join_next(), if !self.waits.is_empty() => {
                    self.on_wait(joined);
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
    }

    /// Reads the state of the commands created so far and waits for the open ones.
    async fn load(&mut self) -> Result<(), JobError> {
        let limit = usize::try_from(self.job.created).unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(());
        }
        for (target, view) in self.jobs.targets(&self.job.job_id, 0, limit).await? {
            match (target.command_id, view) {
                (Some(id), Some(view)) if !view.status.is_terminal() => self.watch(id),
                (_, Some(view)) => self.count_terminal(view.status),
                // Skipped, or pruned from history: terminal either way.
                _ => self.done += 1,
            }
        }
        Ok(())
    }

    fn count_terminal(&mut self, status: CommandStatus) {
        self.done += 1;
        if matches!(status, CommandStatus::Failed | CommandStatus::Expired) {
            self.bad += 1;
        }
    }

    fn tripped(&self) -> bool {
        self.spec
            .abort
            .is_some_and(|a| a.trips(self.bad, self.done))
    }

    /// Follows `id` until it is terminal.
    fn watch(&mut self, id: String) {
        self.watch_after(id, Duration::ZERO);
    }

    fn watch_after(&mut self, id: String, delay: Duration) {
        self.open.insert(id.clone());
        let engine = self.jobs.inner.engine.clone();
        self.waits.spawn(async move {
            tokio::time::sleep(delay).await;
            let got = engine.wait_terminal(&id, WAIT_SLICE).await;
            (id, got)
        });
    }

    fn on_wait(&mut self, joined: Result<Waited, JoinError>) {
        let (id, got) = match joined {
            Ok(w) => w,
            Err(error) => {
                return tracing::error!(job_id = %self.job.job_id, %error, "a command wait failed")
            }
        };
        match got {
            Ok(view) if view.status.is_terminal() => {
                self.open.remove(&id);
                self.count_terminal(view.status);
            }
            Ok(_) => self.watch(id),
            Err(CommandError::NotFound) => {
                // Its device was deleted with its history.
                self.open.remove(&id);
                self.done += 1;
            }
            Err(e) if is_shutdown(&e) => {}
            Err(_) => {
                let delay = self.jobs.inner.config.retry;
                self.watch_after(id, delay);
            }
        }
    }

    /// Creates as many commands as the rollout allows now. Returns when to look again
    /// (`Some(None)`: when a command ends), or `None` when the engine stopped.
    async fn create_some(&mut self) -> Option<Option<Instant>> {
        let now = Instant::now();
        if let Some(at) = self.retry_at {
            if at > now {
                return Some(Some(at));
            }
            self.retry_at = None;
        }
        let n = match self.room(now) {
            Ok(0) => return Some(None),
            Ok(n) => n,
            Err(wake) => return Some(Some(wake)),
        };
        let (id, from) = (self.job.job_id.clone(), self.job.created);
        let targets = match self
            .jobs
            .inner
            .store
            .call(move |s| s.job_targets(&id, from, n))
            .await
        {
            Ok(t) => t,
            Err(error) => {
                tracing::error!(job_id = %self.job.job_id, %error, "cannot read job targets");
                return Some(self.retry_later(now));
            }
        };
        let outcomes = self.create_all(targets).await?;
        let mut ids = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Outcome::Created { id, replayed } => ids.push((id, replayed)),
                Outcome::Skipped => ids.push((String::new(), false)),
                Outcome::Retry => {
                    self.retry_at = Some(now + self.jobs.inner.config.retry);
                    break;
                }
                Outcome::Stop => return None,
            }
        }
        self.record(ids, now).await;
        Some(Some(self.retry_at.unwrap_or(now)))
    }

    /// Creates the commands of `targets` concurrently; their outcomes in target order.
    async fn create_all(&self, targets: Vec<JobTarget>) -> Option<Vec<Outcome>> {
        let targets_len = targets.len();
        let mut creates = JoinSet::new();
        for (i, t) in targets.into_iter().enumerate() {
            let (jobs, spec, job_id) = (
                self.jobs.clone(),
                self.spec.clone(),
                self.job.job_id.clone(),
            );
            creates.spawn(async move { (i, create_one(&jobs, &spec, &job_id, t.device_id).await) });
        }
        let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(targets_len);
        while let Some(joined) = creates.join_next().await {
            match joined {
                Ok(o) => outcomes.push(o),
                Err(_) => return None,
            }
        }
        outcomes.sort_by_key(|(i, _)| *i);
        Some(outcomes.into_iter().map(|(_, o)| o).collect())
    }

    /// How many commands may be created now; `Err(when)` if `per_minute` allows none
    /// before `when`.
    fn room(&mut self, now: Instant) -> Result<usize, Instant> {
        let remaining = self.job.target_count.saturating_sub(self.job.created);
        let mut n = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(CREATE_BATCH);
        let rollout = self.spec.rollout;
        if let Some(max) = rollout.max_in_flight {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            n = n.min(max.saturating_sub(self.open.len()));
        }
        if let Some(per_minute) = rollout.per_minute {
            let minute = self.jobs.inner.config.minute;
            while self.window.front().is_some_and(|t| *t + minute <= now) {
                self.window.pop_front();
            }
            let per_minute = usize::try_from(per_minute).unwrap_or(usize::MAX);
            let room = per_minute.saturating_sub(self.window.len());
            if room == 0 && n > 0 {
                return Err(self.window.front().map_or(now, |t| *t + minute));
            }
            n = n.min(room);
        }
        Ok(n)
    }

    fn retry_later(&mut self, now: Instant) -> Option<Instant> {
        let at = now + self.jobs.inner.config.retry;
        self.retry_at = Some(at);
        Some(at)
    }

    /// Records the commands of the next targets as the job's progress, then follows them.
    async fn record(&mut self, ids: Vec<(String, bool)>, now: Instant) {
        if ids.is_empty() {
            return;
        }
        let list: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
        let (job_id, from) = (self.job.job_id.clone(), self.job.created);
        let stored = self
            .jobs
            .inner
            .store
            .call(move |s| s.record_job_commands(&job_id, from, &list))
            .await;
        match stored {
            Ok(rec) => self.job.created = rec.created,
            Err(error) => {
                // The commands exist; their keys find them again on the retry.
                tracing::error!(job_id = %self.job.job_id, %error, "cannot record job progress");
                self.retry_later(now);
                return;
            }
        }
        for (id, replayed) in ids {
            if !replayed {
                self.window.push_back(now);
            }
            if id.is_empty() {
                self.done += 1;
            } else {
                self.watch(id);
            }
        }
    }

    /// Ends the job with `status`, durably, then settles it.
    async fn stop(&mut self, status: JobStatus) -> Result<(), JobError> {
        self.job.status = status;
        self.job.finished_at_ms = Some(now_ms());
        self.job.settled = false;
        let job = self.job.clone();
        self.job = self
            .jobs
            .inner
            .store
            .call(move |s| s.update_job_status(&job))
            .await?;
        tracing::info!(job_id = %self.job.job_id, status = status.as_str(), "job ended");
        self.settle().await;
        Ok(())
    }

    /// For a job that ended: cancels its open commands, emits its event and marks it
    /// settled (a crash before that repeats this at the next start).
    async fn settle(&mut self) {
        self.waits.abort_all();
        let engine = self.jobs.inner.engine.clone();
        for id in std::mem::take(&mut self.open) {
            match engine.cancel(&id).await {
                Ok(_) | Err(CommandError::AlreadyTerminal(_) | CommandError::NotFound) => {}
                Err(error) => {
                    tracing::warn!(job_id = %self.job.job_id, %error, "cannot cancel a job's command");
                    if is_shutdown(&error) {
                        return;
                    }
                }
            }
        }
        match self.jobs.view(&self.job).await {
            Ok(view) => {
                let kind = format!("job.{}", view.status);
                let data = serde_json::to_value(&view).unwrap_or_default();
                self.jobs.inner.events.emit(&kind, None, data).await;
            }
            Err(error) => tracing::error!(job_id = %self.job.job_id, %error, "no job event"),
        }
        self.job.settled = true;
        let job = self.job.clone();
        if let Err(error) = self
            .jobs
            .inner
            .store
            .call(move |s| s.update_job_status(&job))
            .await
        {
            tracing::error!(job_id = %self.job.job_id, %error, "cannot mark job settled");
        }
    }
}

/// Creates the job's command for one device, with the job's idempotency key.
async fn create_one(jobs: &Jobs, spec: &Spec, job_id: &str, device: DeviceId) -> Outcome {
    let known = match jobs.known(&device).await {
        Ok(Some(known)) => known,
        Ok(None) => return Outcome::Skipped,
        Err(_) => return Outcome::Retry,
    };
    let Ok(req) = spec.command() else {
        return Outcome::Skipped;
    };
    let key = format!("job:{job_id}");
    match jobs.inner.engine.create_for(&known, req, Some(key)).await {
        Ok(created) => Outcome::Created {
            id: created.record.command_id,
            replayed: created.replayed,
        },
        Err(CommandError::Invalid(why)) => {
            tracing::warn!(%job_id, device_id = %device, %why, "job command refused; skipping");
            Outcome::Skipped
        }
        Err(CommandError::ShuttingDown) => Outcome::Stop,
        Err(_) => Outcome::Retry,
    }
}
