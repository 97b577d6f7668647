//! Group commit for session queues: every change of a session's stored queue (a
//! publisher's copies, a subscriber's acknowledgements, the packet ids of QoS 2 sends, a
//! parking connection's owed messages) goes through one writer, which applies whatever
//! queued up while it was committing in one redb transaction. Concurrent publishers and
//! subscribers therefore share one fdatasync instead of waiting for one each.
//!
//! A request is durable or not: QoS 1 acknowledgements may be lost in a crash (the
//! message is delivered again, which at-least-once allows), so they do not wait for the
//! disk on their own; a transaction holding any durable request is committed durably,
//! which persists the earlier non-durable ones too. The writer runs on tokio's blocking
//! pool (spawned when there is work, gone when there is none), so a runtime with paused
//! time sees it as work in progress.

use std::sync::{Arc, Mutex};

use fleetmq_storage::{QueueOp, Store};
use tokio::sync::oneshot;

struct Request {
    ops: Vec<QueueOp>,
    durable: bool,
    /// How many entries trimming dropped (told to one request of a transaction).
    done: oneshot::Sender<Result<u64, String>>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Request>,
    running: bool,
}

/// The session queues' writer.
pub(crate) struct QueueWriter {
    store: Store,
    max_queued: usize,
    state: Arc<Mutex<State>>,
}

/// Requests taken into one transaction at most.
const MAX_GROUP: usize = 1024;

impl QueueWriter {
    pub(crate) fn new(store: Store, max_queued: usize) -> QueueWriter {
        QueueWriter {
            store,
            max_queued,
            state: Arc::default(),
        }
    }

    /// Applies `ops` (in order, after every request that returned before this one was
    /// made); returns once committed, with how many queue entries the bound dropped.
    pub(crate) async fn write(&self, ops: Vec<QueueOp>, durable: bool) -> Result<u64, String> {
        if ops.is_empty() {
            return Ok(0);
        }
        self.submit(ops, durable)
            .await
            .unwrap_or_else(|_| Err("session writer stopped".to_owned()))
    }

    /// Queues `ops` for the writer; the receiver tells when they are committed (it may
    /// be dropped: they are applied anyway, in order with later requests).
    pub(crate) fn submit(
        &self,
        ops: Vec<QueueOp>,
        durable: bool,
    ) -> oneshot::Receiver<Result<u64, String>> {
        let (done, rx) = oneshot::channel();
        if ops.is_empty() {
            let _ = done.send(Ok(0));
            return rx;
        }
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.waiting.push(Request { ops, durable, done });
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let store = self.store.clone();
            let state = self.state.clone();
            let max = self.max_queued;
            tokio::task::spawn_blocking(move || drain(&store, &state, max));
        }
        rx
    }
}

/// Commits what is waiting, group by group, until nothing is.
fn drain(store: &Store, state: &Mutex<State>, max: usize) {
    loop {
        let mut group: Vec<Request> = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            if s.waiting.is_empty() {
                s.running = false;
                return;
            }
            let n = s.waiting.len().min(MAX_GROUP);
            s.waiting.drain(..n).collect()
        };
        let durable = group.iter().any(|r| r.durable);
        let ops: Vec<QueueOp> = group
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.ops))
            .collect();
        let result = store
            .apply_queue_ops(&ops, max, durable)
            .map_err(|e| e.to_string());
        let mut dropped = result;
        for r in group {
            // Counted once per transaction, by a request still waiting.
            if r.done.send(dropped.clone()).is_ok() {
                if let Ok(n) = &mut dropped {
                    *n = 0;
                }
            }
        }
    }
}
