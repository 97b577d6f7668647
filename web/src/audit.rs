//! The audit log's writer: requests hand their entry to a bounded channel
//! ([`Audit::record`], never waiting), one task writes what arrived in batches
//! ([`run_writer`]). A full channel or a failed write drops entries and counts them
//! (`fleetmq_audit_dropped_total` in `/metrics`) instead of slowing requests down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use fleetmq_storage::{now_ms, AuditEntry, AuditRetention, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Entries waiting for the writer at most.
pub(crate) const AUDIT_QUEUE: usize = 4096;
/// Entries written per transaction at most.
const BATCH: usize = 256;

pub(crate) struct Audit {
    tx: mpsc::Sender<AuditEntry>,
    /// Taken by the writer task when the server starts.
    rx: Mutex<Option<mpsc::Receiver<AuditEntry>>>,
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl Audit {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        Audit {
            tx,
            rx: Mutex::new(Some(rx)),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `entry` for writing; counts it as dropped if the queue is full.
    pub(crate) fn record(&self, entry: AuditEntry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The receiving end, once.
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<AuditEntry>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Writes queued entries until `stop` is cancelled, then writes what is still queued
/// and returns.
pub(crate) async fn run_writer(
    store: Store,
    audit: &Audit,
    mut rx: mpsc::Receiver<AuditEntry>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = stop.cancelled() => {
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    write(&store, audit, &mut batch).await;
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        write(&store, audit, &mut batch).await;
    }
}

async fn write(store: &Store, audit: &Audit, batch: &mut Vec<AuditEntry>) {
    let entries = std::mem::take(batch);
    let n = entries.len() as u64;
    let result = store
        .call(move |s| s.append_audit(&entries, AuditRetention::default(), now_ms()))
        .await;
    match result {
        Ok(()) => audit.written.fetch_add(n, Ordering::Relaxed),
        Err(err) => {
            tracing::warn!(error = %err, entries = n, "cannot write audit log entries");
            audit.dropped.fetch_add(n, Ordering::Relaxed)
        }
    };
}
