//! [`Core`]: what the worker does inside one write transaction (on the worker's own
//! thread, or on the blocking pool).
//!
//! It owns which devices are ready (connection generation and plugin) and turns calls
//! and due deadlines into transitions of stored commands. What must wait for the commit
//! is collected: the PUBLISHes for the [`CommandSink`] (handed over right after the
//! commit, on the same thread, so a device never acts on a command a crash could make
//! the store forget) and the answers and events in [`Effects`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use fleetmq_device_plugins::DevicePlugin;
use fleetmq_storage::commands::{
    self as store, CommandRecord, CommandStatus, CommandWriter, InvalidTransition, NewCommandRecord,
};
use fleetmq_storage::{DeviceId, StoreError};
use redb::Database;
use serde_json::Value;
use tokio::sync::oneshot;

use super::worker::{Op, Reply};
use super::{encode, CommandError, CommandView, CommandsConfig, Counters, Created};
use crate::fleet::CommandSink;

mod answers;

/// Commands one prune step looks at: it shares a transaction with the batch's other
/// calls, so it is kept small (a pass takes as many steps as it needs).
const PRUNE_STEP: usize = 128;

/// Most due deadlines handled per round, and rounds per batch (the rest wait for the
/// next wake-up, which is immediate).
const DUE_BATCH: usize = 256;
const DUE_ROUNDS: usize = 8;
/// `error` of a command that got no answer.
const TIMEOUT: &str = "timeout";

/// Answers one caller after the commit; given the failure message if it failed.
type Finisher = Box<dyn FnOnce(Option<&str>) + Send>;

/// A command to hand to a device connection once the transaction is durable.
struct Outgoing {
    device: DeviceId,
    generation: u64,
    command_id: String,
    payload: Bytes,
}

/// A device connection that can receive commands.
pub(super) struct Link {
    generation: u64,
    plugin: Arc<dyn DevicePlugin>,
}

/// What a batch leaves to do after its transaction.
#[derive(Default)]
pub(super) struct Effects {
    /// Answers to callers; given the failure message if the commit failed.
    pub(super) replies: Vec<Finisher>,
    pub(super) flushes: Vec<oneshot::Sender<()>>,
    /// Records that became terminal (announced only if the commit succeeded).
    pub(super) terminal: Vec<CommandRecord>,
    pub(super) next_deadline: Option<u64>,
    /// `process_due` stopped before running out of due deadlines.
    pub(super) more_due: bool,
    pub(super) counts: Option<BTreeMap<CommandStatus, u64>>,
    pub(super) failure: Option<String>,
}

impl Effects {
    /// Queues the answer to a call; a failure that aborts the transaction is passed on
    /// (the caller is then answered with it).
    fn answer<T: Send + 'static>(
        &mut self,
        tx: Reply<T>,
        result: Result<Result<T, CommandError>, StoreError>,
    ) -> Result<(), StoreError> {
        match result {
            Ok(r) => {
                self.reply(tx, r);
                Ok(())
            }
            Err(e) => {
                self.reply(tx, Err(CommandError::Storage(e.to_string())));
                Err(e)
            }
        }
    }

    fn reply<T: Send + 'static>(&mut self, tx: Reply<T>, result: Result<T, CommandError>) {
        self.replies.push(Box::new(move |failure: Option<&str>| {
            let result = match failure {
                Some(m) => Err(CommandError::Storage(m.to_owned())),
                None => result,
            };
            let _ = tx.send(result);
        }));
    }
}

/// The part of the worker that runs inside its transactions.
pub(super) struct Core {
    db: Arc<Database>,
    config: CommandsConfig,
    sink: Arc<dyn CommandSink>,
    counters: Arc<Counters>,
    ready: HashMap<DeviceId, Link>,
    /// Per status (as in [`CommandStatus::ALL`]): whether its event is recorded durably,
    /// so a command reaching it is remembered until the event went out.
    owed: [bool; 8],
    /// This transaction's sends, in order; handed to the sink after its commit.
    outgoing: Vec<Outgoing>,
}

impl Core {
    pub(super) fn new(
        db: Arc<Database>,
        config: CommandsConfig,
        sink: Arc<dyn CommandSink>,
        counters: Arc<Counters>,
        owed: [bool; 8],
    ) -> Core {
        Core {
            owed,
            db,
            config,
            sink,
            counters,
            ready: HashMap::new(),
            outgoing: Vec::new(),
        }
    }

    pub(super) fn db(&self) -> &Arc<Database> {
        &self.db
    }
}

/// The index of `s` in [`CommandStatus::ALL`].
pub(super) fn status_slot(s: CommandStatus) -> usize {
    CommandStatus::ALL
        .iter()
        .position(|&x| x == s)
        .unwrap_or_default()
}

/// Applies a transition result: true if it happened. The worker only asks for
/// transitions its checks allow, so a refusal is our bug, logged as such.
fn moved(r: Result<(), InvalidTransition>) -> bool {
    r.map_err(|error| tracing::error!(%error, "refused command transition"))
        .is_ok()
}

/// Splits store errors: a bad record or request fails only the call that met it
/// (`Ok(Err)`); anything else (the database failed) aborts the whole transaction (`Err`).
fn soft<T>(r: Result<T, StoreError>) -> Result<Result<T, CommandError>, StoreError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(
            e @ (StoreError::NotFound { .. }
            | StoreError::Conflict { .. }
            | StoreError::Invalid(_)
            | StoreError::Corrupt { .. }),
        ) => Ok(Err(CommandError::from(e))),
        Err(e) => Err(e),
    }
}

impl Core {
    /// Runs one transaction; returns its effects and, if it failed, the announced ids
    /// it could not clear.
    pub(super) fn apply(
        &mut self,
        ops: Vec<Op>,
        now: u64,
        announced: Vec<String>,
    ) -> (Effects, Vec<String>) {
        let mut fx = Effects::default();
        let mut pending = ops.into_iter();
        let db = self.db.clone();
        let owed = self.owed;
        let result = store::write(&db, |w| {
            w.set_events_owed(|s| owed[status_slot(s)]);
            w.mark_announced(&announced)?;
            for op in pending.by_ref() {
                self.apply_op(w, op, now, &mut fx)?;
            }
            self.process_due(w, now, &mut fx)?;
            fx.next_deadline = w.earliest_deadline()?;
            fx.counts = Some(w.status_counts()?);
            Ok(())
        });
        match result {
            Ok(()) => {
                self.send_outgoing();
                (fx, Vec::new())
            }
            Err(error) => {
                // Nothing of it is stored, so nothing of it may reach a device.
                self.outgoing.clear();
                tracing::error!(%error, "command transaction failed");
                let message = error.to_string();
                pending.for_each(|op| op.reject(&message));
                fx.terminal.clear();
                fx.failure = Some(message);
                (fx, announced)
            }
        }
    }

    fn apply_op(
        &mut self,
        w: &mut CommandWriter<'_>,
        op: Op,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        match op {
            Op::Create {
                new,
                supersede,
                payload,
                reply,
            } => {
                let r = self.create(w, new, supersede, payload, now, fx);
                fx.answer(reply, r)?;
            }
            Op::Cancel { id, reply } => {
                let r = self.cancel(w, &id, now, fx);
                fx.answer(reply, r)?;
            }
            Op::Forget { device, reply } => {
                let r = self.forget(w, &device, now, fx).map(Ok);
                fx.answer(reply, r)?;
            }
            Op::Ready {
                device,
                generation,
                plugin,
            } => self.ready(w, device, generation, plugin, now, fx)?,
            Op::Gone { device, generation } => {
                if self
                    .ready
                    .get(&device)
                    .is_some_and(|l| l.generation == generation)
                {
                    self.ready.remove(&device);
                }
            }
            Op::Acked {
                device,
                generation,
                command_id,
            } => self.acked(w, &device, generation, &command_id, now)?,
            Op::Response {
                device,
                response,
                plugin,
            } => self.response(w, &device, &response, plugin.as_ref(), now, fx)?,
            Op::Flush { reply } => fx.flushes.push(reply),
            Op::Prune {
                cutoff_ms,
                after,
                reply,
            } => {
                let r = w.prune(cutoff_ms, after.as_deref(), PRUNE_STEP).map(Ok);
                fx.answer(reply, r)?;
            }
        }
        Ok(())
    }

    fn create(
        &mut self,
        w: &mut CommandWriter<'_>,
        new: NewCommandRecord,
        supersede: bool,
        payload: Bytes,
        now: u64,
        fx: &mut Effects,
    ) -> Result<Result<Created, CommandError>, StoreError> {
        if let Some(key) = &new.idempotency_key {
            if let Some(id) = w.find_idempotent(&new.device_id, key)? {
                let first = match soft(w.get(&id))? {
                    Ok(Some(rec)) => CommandView::from_record(&rec),
                    Ok(None) => Err(CommandError::Storage(format!(
                        "idempotency key names missing command {id:?}"
                    ))),
                    Err(e) => Err(e),
                };
                return Ok(first.map(|record| Created {
                    record,
                    replayed: true,
                }));
            }
        }
        // Only a superseding create needs the records; the cap needs a count.
        let (victims, depth) = if supersede {
            let open = w.open_for_device(&new.device_id)?;
            let depth = open.len();
            let victims: Vec<_> = open.into_iter().filter(|r| r.kind == new.kind).collect();
            (victims, depth)
        } else {
            (Vec::new(), w.open_count(&new.device_id)?)
        };
        if depth - victims.len() >= self.config.max_queued_per_device {
            return Ok(Err(CommandError::QueueFull { depth }));
        }
        for mut old in victims {
            if moved(old.supersede(now)) {
                w.put(&old)?;
                fx.terminal.push(old);
            }
        }
        let mut rec = match soft(w.create(new))? {
            Ok(rec) => rec,
            Err(e) => return Ok(Err(e)),
        };
        self.deliver(w, &mut rec, Some(payload), now, fx)?;
        Ok(CommandView::from_record(&rec).map(|record| Created {
            record,
            replayed: false,
        }))
    }

    fn cancel(
        &mut self,
        w: &mut CommandWriter<'_>,
        id: &str,
        now: u64,
        fx: &mut Effects,
    ) -> Result<Result<CommandView, CommandError>, StoreError> {
        let mut rec = match soft(w.get(id))? {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(Err(CommandError::NotFound)),
            Err(e) => return Ok(Err(e)),
        };
        if rec.status().is_terminal() {
            return Ok(CommandView::from_record(&rec)
                .and_then(|v| Err(CommandError::AlreadyTerminal(Box::new(v)))));
        }
        if moved(rec.cancel(now, None)) {
            w.put(&rec)?;
            fx.terminal.push(rec.clone());
        }
        Ok(CommandView::from_record(&rec))
    }

    fn forget(
        &mut self,
        w: &mut CommandWriter<'_>,
        device: &DeviceId,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        for mut rec in w.open_for_device(device)? {
            if moved(rec.cancel(now, Some("device deleted".to_owned()))) {
                w.put(&rec)?;
                fx.terminal.push(rec);
            }
        }
        // This also drops their `command_unannounced` entries: a crash before the events
        // below go out loses them, which is acceptable for a deleted device.
        let removed = w.remove_device(device)?;
        self.ready.remove(device);
        tracing::debug!(device_id = %device, removed, "forgot a device's commands");
        Ok(())
    }

    fn ready(
        &mut self,
        w: &mut CommandWriter<'_>,
        device: DeviceId,
        generation: u64,
        plugin: Arc<dyn DevicePlugin>,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let current = self.ready.get(&device).map(|l| l.generation);
        if current.is_some_and(|g| g > generation) {
            return Ok(()); // a late event of an older connection
        }
        let new_connection = current != Some(generation);
        self.ready
            .insert(device.clone(), Link { generation, plugin });
        for mut rec in w.open_for_device(&device)? {
            if !new_connection && rec.status() != CommandStatus::Queued {
                continue;
            }
            self.deliver(w, &mut rec, None, now, fx)?;
        }
        Ok(())
    }

    /// Records the send of `rec` to its device's ready connection; the PUBLISH goes out
    /// after the commit ([`Core::send_outgoing`]). False if the device has no ready
    /// connection (the record is unchanged) or the command cannot be encoded (it fails). `encoded` is its payload when the caller has it (a create,
    /// encoded by the device's plugin while checking the request); otherwise the
    /// connection's plugin encodes it.
    fn deliver(
        &mut self,
        w: &mut CommandWriter<'_>,
        rec: &mut CommandRecord,
        encoded: Option<Bytes>,
        now: u64,
        fx: &mut Effects,
    ) -> Result<bool, StoreError> {
        let Some(link) = self.ready.get(&rec.device_id) else {
            return Ok(false);
        };
        let payload = match encoded {
            Some(p) => Ok(p),
            None => serde_json::from_str::<Value>(&rec.params_json)
                .map_err(|e| e.to_string())
                .and_then(|params| {
                    encode(link.plugin.as_ref(), &rec.command_id, &rec.kind, &params)
                        .map(Bytes::from)
                        .map_err(|e| e.to_string())
                }),
        };
        let payload = match payload {
            Ok(p) => p,
            Err(reason) => {
                tracing::error!(command_id = %rec.command_id, %reason, "cannot encode command");
                if moved(rec.fail(now, format!("cannot encode: {reason}"), None)) {
                    w.put(rec)?;
                    fx.terminal.push(rec.clone());
                }
                return Ok(false);
            }
        };
        let generation = link.generation;
        if !moved(rec.send(now, now.saturating_add(rec.timeout_ms))) {
            return Ok(false);
        }
        w.put(rec)?;
        self.outgoing.push(Outgoing {
            device: rec.device_id.clone(),
            generation,
            command_id: rec.command_id.clone(),
            payload,
        });
        Ok(true)
    }

    /// Hands the committed transaction's commands to their connections, in order. A
    /// connection that is gone is no longer ready (unless a newer one took its place);
    /// its commands stay `sent` and go out again on the device's next connection (or at
    /// their answer timeout), as for a send the network lost.
    fn send_outgoing(&mut self) {
        for out in self.outgoing.drain(..) {
            let current = |ready: &HashMap<DeviceId, Link>| {
                ready
                    .get(&out.device)
                    .is_some_and(|l| l.generation == out.generation)
            };
            if !current(&self.ready) {
                continue; // it left later in the batch
            }
            let sent = self
                .sink
                .deliver(&out.device, out.generation, &out.command_id, out.payload);
            if !sent {
                tracing::debug!(device_id = %out.device, generation = out.generation, "connection gone before a command");
                self.ready.remove(&out.device);
            }
        }
    }

    fn acked(
        &mut self,
        w: &mut CommandWriter<'_>,
        device: &DeviceId,
        generation: u64,
        id: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut rec = match soft(w.get(id))? {
            Ok(Some(rec)) if rec.device_id == *device => rec,
            _ => {
                tracing::debug!(device_id = %device, generation, command_id = id, "ack for no command of this device");
                return Ok(());
            }
        };
        match rec.acknowledge(now) {
            Ok(true) => w.put(&rec)?,
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, "ignoring ack"),
        }
        Ok(())
    }

    fn process_due(
        &mut self,
        w: &mut CommandWriter<'_>,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        for _ in 0..DUE_ROUNDS {
            let due = w.due(now, DUE_BATCH)?;
            let full = due.len() == DUE_BATCH;
            for rec in due {
                self.on_deadline(w, rec, now, fx)?;
            }
            if !full {
                return Ok(());
            }
        }
        fx.more_due = true;
        Ok(())
    }

    /// A command's deadline passed: a queued one expires; a sent one is re-sent while
    /// retries remain and the device is ready, waits for the next connection until its
    /// TTL while the device is away, and fails with `"timeout"` otherwise.
    fn on_deadline(
        &mut self,
        w: &mut CommandWriter<'_>,
        mut rec: CommandRecord,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let expires = rec.expires_at_ms();
        match rec.status() {
            CommandStatus::Queued => {
                let r = if now >= expires {
                    rec.expire(now)
                } else {
                    rec.postpone(expires)
                };
                if moved(r) {
                    w.put(&rec)?;
                    if rec.status().is_terminal() {
                        fx.terminal.push(rec);
                    }
                }
            }
            CommandStatus::Sent | CommandStatus::Delivered => {
                let retries_left = rec.attempts() <= rec.max_retries;
                if retries_left && self.deliver(w, &mut rec, None, now, fx)? {
                    tracing::debug!(command_id = %rec.command_id, attempts = rec.attempts(), "command re-sent");
                } else if rec.status().is_terminal() {
                    // `deliver` failed it.
                } else if !retries_left || now >= expires {
                    if moved(rec.fail(now, TIMEOUT.to_owned(), None)) {
                        w.put(&rec)?;
                        fx.terminal.push(rec);
                    }
                } else if moved(rec.postpone(expires)) {
                    w.put(&rec)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
