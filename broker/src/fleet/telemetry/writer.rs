//! The writer task, which commits queued points in batches, and the sweeper task,
//! which enforces retention.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_storage::now_ms;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{blocking, store, Msg, Shared, TelemetryError};

/// How often [`Writer::fill`] looks at the queue while a batch fills.
const FILL_POLL: Duration = Duration::from_millis(5);

/// The one task that commits queued points. `buf` lives in the struct so a batch being
/// filled survives the cancel-safe `select!`s.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) rx: mpsc::Receiver<Msg>,
    pub(super) buf: Vec<Msg>,
    pub(super) batch_max: usize,
    pub(super) batch_delay: Duration,
}

impl Writer {
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        // Flush waiters learn the writer is gone even if this task unwinds.
        let _done = self.shared.writer_done.clone().drop_guard();
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = self.rx.recv_many(&mut self.buf, self.batch_max) => n,
            };
            if received == 0 {
                break;
            }
            self.fill(&shutdown).await;
            self.commit().await;
        }
        // Shutdown: refuse new points, commit everything already queued.
        self.rx.close();
        loop {
            self.commit().await;
            if self.rx.recv_many(&mut self.buf, self.batch_max).await == 0 {
                break;
            }
        }
        tracing::debug!("telemetry writer stopped");
    }

    /// Waits up to `batch_delay` for the batch to fill, ending early for a full batch,
    /// a flush request, or shutdown.
    ///
    /// It looks at the queue every [`FILL_POLL`] (and on a flush request) instead of
    /// waiting on the channel: a task waiting on the channel is woken by every send,
    /// and waking this thread from a connection task (a futex wake per point, nearly)
    /// was the largest part of what offering a point cost.
    async fn fill(&mut self, shutdown: &CancellationToken) {
        let deadline = Instant::now() + self.batch_delay;
        let mut checked = 0;
        loop {
            self.drain();
            if self.buf[checked..]
                .iter()
                .any(|m| matches!(m, Msg::Flush(_) | Msg::Durable(..)))
            {
                return;
            }
            checked = self.buf.len();
            let now = Instant::now();
            if self.buf.len() >= self.batch_max || now >= deadline {
                return;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = self.shared.flush_wanted.notified() => {}
                () = tokio::time::sleep_until(deadline.min(now + FILL_POLL)) => {}
            }
        }
    }

    /// Moves what is queued into `buf`, up to `batch_max`, without waiting.
    fn drain(&mut self) {
        while self.buf.len() < self.batch_max {
            match self.rx.try_recv() {
                Ok(msg) => self.buf.push(msg),
                Err(_) => return,
            }
        }
    }

    /// Commits the points in `buf` in one transaction, then tells the senders waiting
    /// for it whether it held, and acknowledges its flushes.
    async fn commit(&mut self) {
        let mut points = Vec::with_capacity(self.buf.len());
        let mut acks = Vec::new();
        let mut durable = Vec::new();
        for msg in self.buf.drain(..) {
            match msg {
                Msg::Point(p) => points.push(p),
                Msg::Flush(ack) => acks.push(ack),
                Msg::Durable(p, ack) => {
                    points.extend(p);
                    durable.push(ack);
                }
            }
        }
        let mut committed = true;
        if !points.is_empty() {
            let n = points.len() as u64;
            let c = &self.shared.counters;
            let insert = move |db: &_| store::insert_batch(db, &points).map(|n| (n, points));
            match blocking(&self.shared.db, insert).await {
                Ok((stored, points)) => {
                    c.stored.fetch_add(stored, Relaxed);
                    c.batches.fetch_add(1, Relaxed);
                    if let Some(digest) = &self.shared.digest {
                        digest.add(&points);
                    }
                    if let Some(alarms) = self.shared.alarms.get() {
                        alarms.offer(points);
                    }
                }
                Err(error) => {
                    committed = false;
                    c.dropped_write_failed.fetch_add(n, Relaxed);
                    tracing::error!(%error, points = n, "telemetry batch lost");
                }
            }
            self.shared.saturated.store(false, Relaxed);
        }
        // A waiter may have given up; nothing to do then.
        for ack in durable {
            let _ = ack.send(committed);
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

// ---- sweeper ---------------------------------------------------------------------

pub(super) async fn run_sweeper(shared: Arc<Shared>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(error) = sweep(&shared).await {
            tracing::error!(%error, "telemetry sweep failed");
        }
    }
}

/// One retention pass; counted, and announced to `sweeps` whether or not it succeeded.
pub(super) async fn sweep(shared: &Shared) -> Result<u64, TelemetryError> {
    let retention_ms = u64::try_from(shared.retention.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms().saturating_sub(retention_ms);
    let max = shared.max_points_per_device;
    let stop = shared.shutdown.clone();
    let result = blocking(&shared.db, move |db| {
        store::sweep_until(db, cutoff, max, &|| stop.is_cancelled())
    })
    .await;
    if let Ok(removed) = &result {
        shared.counters.swept.fetch_add(*removed, Relaxed);
    }
    shared.sweeps.send_modify(|n| *n += 1);
    result
}
