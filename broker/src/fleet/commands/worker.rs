//! The worker: the one task that changes commands.
//!
//! It applies queued calls in batches: one redb write transaction per batch, run by
//! [`Core`] on the worker's own thread when it has one (`inline`), otherwise on the
//! blocking pool; [`Core`] also hands commands to the [`CommandSink`] and
//! runs due deadlines. Only after the commit does anyone hear about the result: callers
//! get their answers, `wait_terminal`ers their records, and the [`EventSink`] one event
//! per terminal command. The events go through the announcer task, which records each
//! batch's events (one outbox commit, batches in order) while the worker already
//! applies the next batch, so the outbox's commit is not a second serial stage. A
//! terminal command stays in the `command_unannounced` table until the announcer has
//! emitted its event, so a crash in between re-emits it at the next start (at least
//! once).
//!
//! [`CommandSink`]: crate::fleet::CommandSink

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmq_device_plugins::{CommandResponse, DevicePlugin};
use fleetmq_storage::commands::{self as store, CommandRecord, CommandStatus, NewCommandRecord};
use fleetmq_storage::{now_ms, DeviceId, StoreError};
use redb::Database;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::apply::{status_slot, Core, Effects};
use super::{duration_ms, CommandError, CommandView, CommandsConfig, Counters, Created, Waiters};
use crate::fleet::{CommandSink, EventSink};

/// Most calls applied in one transaction.
const MAX_BATCH: usize = 256;
/// How long to wait before retrying after a failed transaction.
const RETRY_AFTER_MS: u64 = 1_000;
/// Batches' announcements queued for the announcer before the worker waits for it.
const ANNOUNCE_QUEUE: usize = 64;

/// One batch's terminal events, on their way to the event sink.
struct Announcement {
    events: Vec<crate::fleet::SinkEvent>,
    /// Their commands, marked announced by a later transaction once emitted.
    ids: Vec<String>,
    /// Flushes of the batch: answered once its events are recorded.
    flushes: Vec<oneshot::Sender<()>>,
}

/// Commands whose events were emitted and are not yet marked so in the store.
type Emitted = Arc<Mutex<Vec<String>>>;

fn lock(emitted: &Emitted) -> std::sync::MutexGuard<'_, Vec<String>> {
    emitted.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records announcements in order; what is queued meanwhile goes in one commit.
async fn run_announcer(
    sink: Arc<dyn EventSink>,
    mut rx: mpsc::Receiver<Announcement>,
    emitted: Emitted,
) {
    let mut queued = Vec::new();
    while rx.recv_many(&mut queued, ANNOUNCE_QUEUE).await > 0 {
        let mut events = Vec::new();
        let mut ids = Vec::new();
        let mut flushes = Vec::new();
        for a in queued.drain(..) {
            events.extend(a.events);
            ids.extend(a.ids);
            flushes.extend(a.flushes);
        }
        if !events.is_empty() {
            sink.emit_many(events).await;
        }
        lock(&emitted).extend(ids);
        for flush in flushes {
            let _ = flush.send(());
        }
    }
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// A call for the worker.
pub(super) enum Op {
    Create {
        new: NewCommandRecord,
        supersede: bool,
        /// What the first send writes (encoded when the request was checked).
        payload: bytes::Bytes,
        reply: Reply<Created>,
    },
    Cancel {
        id: String,
        reply: Reply<CommandView>,
    },
    Forget {
        device: DeviceId,
        reply: Reply<()>,
    },
    Ready {
        device: DeviceId,
        generation: u64,
        plugin: Arc<dyn DevicePlugin>,
    },
    Gone {
        device: DeviceId,
        generation: u64,
    },
    Acked {
        device: DeviceId,
        generation: u64,
        command_id: String,
    },
    Response {
        device: DeviceId,
        response: CommandResponse,
        plugin: Arc<dyn DevicePlugin>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    /// One step of pruning history ([`store::CommandWriter::prune`]).
    Prune {
        cutoff_ms: u64,
        after: Option<String>,
        reply: Reply<store::PruneStep>,
    },
}

impl Op {
    /// Answers an op that could not be applied.
    pub(super) fn reject(self, message: &str) {
        let err = || CommandError::Storage(message.to_owned());
        match self {
            Op::Create { reply, .. } => drop(reply.send(Err(err()))),
            Op::Cancel { reply, .. } => drop(reply.send(Err(err()))),
            Op::Forget { reply, .. } => drop(reply.send(Err(err()))),
            Op::Prune { reply, .. } => drop(reply.send(Err(err()))),
            Op::Flush { reply } => drop(reply.send(())),
            Op::Ready { .. } | Op::Gone { .. } | Op::Acked { .. } | Op::Response { .. } => {}
        }
    }
}

/// Unix ms for stored data, advanced by tokio's clock (so tests can pause time) from
/// the wall clock read at start.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            base_ms: now_ms(),
            base: Instant::now(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.base_ms
            .saturating_add(duration_ms(self.base.elapsed()))
    }

    fn instant_at(&self, ms: u64) -> Instant {
        let after = Duration::from_millis(ms.saturating_sub(self.base_ms));
        self.base
            .checked_add(after)
            .unwrap_or_else(|| self.base + Duration::from_secs(100 * 365 * 86_400))
    }
}

pub(super) struct Worker {
    core: Option<Core>,
    events: Arc<dyn EventSink>,
    waiters: Arc<Waiters>,
    counters: Arc<Counters>,
    clock: Clock,
    next_deadline: Option<u64>,
    /// Emitted since the last transaction; cleared from `command_unannounced` by the next.
    announced: Emitted,
    /// The announcer's queue while it runs (see [`run_announcer`]).
    announcer: Option<mpsc::Sender<Announcement>>,
    /// Run transactions on this task's own thread (a dedicated one) rather than on the
    /// blocking pool.
    pub(super) inline: bool,
    /// Per status: whether its event is recorded durably (see [`owed_events`]).
    owed: [bool; 8],
}

/// Per status (as in [`CommandStatus::ALL`]): whether its event is recorded durably by
/// `events`, so that a terminal command stays in `command_unannounced` until its event
/// went out. Without a webhook for it, nothing durable would get a re-emitted event.
fn owed_events(events: &dyn EventSink) -> [bool; 8] {
    CommandStatus::ALL.map(|s| event_kind(s).is_some_and(|kind| events.records_durably(kind)))
}

impl Worker {
    pub(super) fn new(
        db: Arc<Database>,
        config: CommandsConfig,
        sink: Arc<dyn CommandSink>,
        events: Arc<dyn EventSink>,
        waiters: Arc<Waiters>,
        counters: Arc<Counters>,
        clock: Clock,
    ) -> Worker {
        let owed = owed_events(events.as_ref());
        Worker {
            core: Some(Core::new(db, config, sink, counters.clone(), owed)),
            owed,
            events,
            waiters,
            counters,
            clock,
            next_deadline: None,
            announced: Emitted::default(),
            announcer: None,
            inline: false,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Op>, shutdown: CancellationToken) {
        let (announce_tx, announce_rx) = mpsc::channel(ANNOUNCE_QUEUE);
        let announcer = tokio::spawn(run_announcer(
            self.events.clone(),
            announce_rx,
            self.announced.clone(),
        ));
        self.announcer = Some(announce_tx);
        self.load().await;
        let mut buf = Vec::with_capacity(MAX_BATCH);
        loop {
            let wake = self.next_deadline.map(|ms| self.clock.instant_at(ms));
            let alive = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = rx.recv_many(&mut buf, MAX_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.batch(std::mem::take(&mut buf)).await
                }
                () = sleep_until(wake) => {
                    self.batch(Vec::new()).await
                }
            };
            if !alive {
                return;
            }
        }
        // Apply what was already queued, then record which events went out.
        rx.close();
        while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
            if !self.batch(std::mem::take(&mut buf)).await {
                return;
            }
        }
        // Let the announcer record what it has, then mark it (later events are emitted
        // inline).
        self.announcer = None;
        if let Err(error) = announcer.await {
            tracing::error!(%error, "command announcer failed");
        }
        if !lock(&self.announced).is_empty() {
            self.batch(Vec::new()).await;
        }
        tracing::debug!("command engine stopped");
    }

    /// Creates the tables, loads counts and the first deadline, and re-emits events a
    /// crash may have lost.
    async fn load(&mut self) {
        let Some(core) = &self.core else { return };
        let db = core.db().clone();
        let loaded = tokio::task::spawn_blocking(move || {
            store::write(&db, |_| Ok(()))?;
            Ok::<_, StoreError>((
                store::status_counts(&db)?,
                store::earliest_deadline(&db)?,
                store::unannounced(&db)?,
            ))
        })
        .await;
        match loaded {
            Ok(Ok((counts, next, owed))) => {
                self.counters.set_counts(&counts);
                self.next_deadline = next;
                if !owed.is_empty() {
                    tracing::info!(count = owed.len(), "re-emitting command events");
                }
                self.announce(owed, Vec::new(), true).await;
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot load commands; retrying");
                self.next_deadline = Some(self.clock.now_ms() + RETRY_AFTER_MS);
            }
            Err(error) => tracing::error!(%error, "loading commands failed"),
        }
    }

    /// Applies `ops` and due deadlines in one transaction, then reports. False if the
    /// worker cannot go on.
    async fn batch(&mut self, ops: Vec<Op>) -> bool {
        let Some(mut core) = self.core.take() else {
            return false;
        };
        let now = self.clock.now_ms();
        let announced = std::mem::take(&mut *lock(&self.announced));
        let run = move || {
            let (fx, announced) = core.apply(ops, now, announced);
            (core, fx, announced)
        };
        // A panic stops the worker either way; it is reported the same way.
        let joined = if self.inline {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                .map_err(|_| "the batch panicked".to_owned())
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| e.to_string())
        };
        match joined {
            Ok((core, fx, unmarked)) => {
                self.core = Some(core);
                lock(&self.announced).extend(unmarked);
                self.finish(fx, now).await;
                true
            }
            Err(error) => {
                tracing::error!(%error, "command worker failed; commands stop changing");
                false
            }
        }
    }

    async fn finish(&mut self, fx: Effects, now: u64) {
        if let Some(counts) = &fx.counts {
            self.counters.set_counts(counts);
        }
        self.next_deadline = match (&fx.failure, fx.next_deadline) {
            (Some(_), _) => Some(now + RETRY_AFTER_MS),
            // More was due than one batch handles: go again at once.
            (None, next) if fx.more_due => next,
            // A deadline that is still due after its turn is stuck (a bug): do not spin.
            (None, Some(next)) if next <= now => Some(now + RETRY_AFTER_MS),
            (None, next) => next,
        };
        for reply in fx.replies {
            reply(fx.failure.as_deref());
        }
        self.announce(fx.terminal, fx.flushes, false).await;
    }

    /// Tells `wait_terminal`ers at once and the event sink through the announcer that
    /// these records are terminal; `flushes` are answered after the events are recorded.
    /// `stored`: every record is in `command_unannounced` (re-emitted at start), not only
    /// those whose status owes an event now.
    async fn announce(
        &mut self,
        records: Vec<CommandRecord>,
        flushes: Vec<oneshot::Sender<()>>,
        stored: bool,
    ) {
        if records.is_empty() && flushes.is_empty() {
            return;
        }
        let mut events = Vec::with_capacity(records.len());
        let mut ids = Vec::with_capacity(records.len());
        for rec in records {
            let Some(kind) = event_kind(rec.status()) else {
                continue;
            };
            let owed = stored || self.owed[status_slot(rec.status())];
            self.observe_round_trip(&rec);
            match CommandView::from_record(&rec) {
                Ok(view) => {
                    // Serialized once, straight from the record, so the metadata stays
                    // byte-for-byte as the client gave it.
                    let Ok(data) = serde_json::value::to_raw_value(&view) else {
                        tracing::error!("cannot serialize a command record");
                        continue;
                    };
                    self.waiters.wake(Arc::new(view));
                    events.push((kind, Some(rec.device_id), data));
                }
                Err(error) => tracing::error!(%error, "cannot announce an unreadable command"),
            }
            if owed {
                ids.push(rec.command_id);
            }
        }
        let announcement = Announcement {
            events,
            ids,
            flushes,
        };
        let announcement = match &self.announcer {
            Some(tx) => match tx.send(announcement).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => back,
            },
            None => announcement,
        };
        // No announcer (shutting down): record the events here.
        if !announcement.events.is_empty() {
            self.events.emit_many(announcement.events).await;
        }
        lock(&self.announced).extend(announcement.ids);
        for flush in announcement.flushes {
            let _ = flush.send(());
        }
    }
}

impl Worker {
    /// Records send-to-answer time of a command the device answered (a timeout is no
    /// answer).
    fn observe_round_trip(&self, rec: &CommandRecord) {
        let answered = match rec.status() {
            CommandStatus::Completed => true,
            CommandStatus::Failed => rec.error() != Some("timeout"),
            _ => false,
        };
        if let (true, Some(sent), Some(done)) = (answered, rec.sent_at_ms(), rec.completed_at_ms())
        {
            let elapsed = Duration::from_millis(done.saturating_sub(sent));
            self.counters.round_trip.observe(elapsed);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn event_kind(status: CommandStatus) -> Option<&'static str> {
    Some(match status {
        CommandStatus::Completed => "command.completed",
        CommandStatus::Failed => "command.failed",
        CommandStatus::Expired => "command.expired",
        CommandStatus::Cancelled => "command.cancelled",
        CommandStatus::Superseded => "command.superseded",
        CommandStatus::Queued | CommandStatus::Sent | CommandStatus::Delivered => return None,
    })
}
