//! Alarm rules and alarms (SPEC §11).
//!
//! One evaluator task (`worker`) owns every (rule, device) state: committed telemetry
//! points reach it from the telemetry writer through a bounded queue ([`AlarmFeed`];
//! full means the batch is dropped and counted, never that the writer waits), and
//! presence transitions, device-reported alarms and rule changes through a control
//! queue. Each batch's changes are one store transaction (`fleetmq_storage::alarms`), so
//! rules, active alarms and running `for_s` windows survive a restart; then the
//! `alarm.raised` / `alarm.cleared` events go out with the alarm as data.
//!
//! - `model`: the JSON of rules and alarms; `eval`: one point against one rule.

mod eval;
mod index;
pub mod model;
mod states;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use fleetmq_storage::alarms::{AlarmFilter, NewAlarm};
use fleetmq_storage::telemetry::NewPoint;
use fleetmq_storage::{now_ms, DeviceId, Store};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::EventBus;
use super::FleetError;
pub use model::{alarm_json, rule_json, SEVERITIES};

/// Batches of committed points waiting for the evaluator.
const POINT_QUEUE: usize = 256;

pub const RAISED: &str = "alarm.raised";
pub const CLEARED: &str = "alarm.cleared";
pub const ACKNOWLEDGED: &str = "alarm.acknowledged";

/// What reaches the evaluator besides points.
enum Control {
    /// Rules changed in the store: read them again before the next point.
    Reload(oneshot::Sender<()>),
    /// Delete a rule, clearing its alarms.
    Delete(String, oneshot::Sender<Result<(), FleetError>>),
    /// A device reported an alarm raised or cleared.
    Device { raised: bool, alarm: NewAlarm },
    /// A device was deleted: its active alarms are cleared, its windows dropped.
    Forget(String),
    /// A device came online (`true`) or went offline, at wall time `at_ms`.
    Presence {
        device: String,
        online: bool,
        at_ms: u64,
    },
}

struct Inner {
    store: Store,
    events: EventBus,
    control: mpsc::UnboundedSender<Control>,
    feed: AlarmFeed,
}

/// Where the telemetry writer hands committed points. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AlarmFeed {
    tx: mpsc::Sender<Vec<NewPoint>>,
    /// Whether some rule watches telemetry; no copies otherwise.
    wanted: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl AlarmFeed {
    /// Hands committed points to the evaluator, never waiting: the batch itself moves
    /// (no copy on the telemetry writer's thread); a full queue drops it (counted, one
    /// warning per episode).
    pub(crate) fn offer(&self, points: Vec<NewPoint>) {
        if !self.wanted.load(Relaxed) || points.is_empty() {
            return;
        }
        let n = points.len() as u64;
        if self.tx.try_send(points).is_err() {
            let before = self.dropped.fetch_add(n, Relaxed);
            if before == 0 {
                tracing::warn!("alarm evaluator behind: telemetry points not evaluated");
            }
        }
    }
}

/// Handle to the alarm rules and alarms. Cheap to clone.
#[derive(Clone)]
pub struct Alarms {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alarms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarms").finish_non_exhaustive()
    }
}

impl Alarms {
    /// Starts the evaluator on `tracker` with the stored rules and states, and the
    /// task that deletes alarms cleared longer than `retention` ago (every
    /// `sweep_every`; the telemetry retention, as for device events).
    pub(crate) fn start(
        (store, events, presence): (Store, EventBus, Arc<super::presence::Presence>),
        (retention, sweep_every): (Duration, Duration),
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Alarms {
        let (tx, points) = mpsc::channel(POINT_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let feed = AlarmFeed {
            tx,
            wanted: Arc::default(),
            dropped: Arc::default(),
        };
        let worker =
            worker::Worker::new(store.clone(), events.clone(), feed.wanted.clone(), presence);
        tracker.spawn(worker.run(points, control_rx, shutdown.clone()));
        let every = sweep_every.max(Duration::from_millis(1));
        tracker.spawn(prune(store.clone(), retention, every, shutdown));
        Alarms {
            inner: Arc::new(Inner {
                store,
                events,
                control,
                feed,
            }),
        }
    }

    pub(crate) fn feed(&self) -> AlarmFeed {
        self.inner.feed.clone()
    }

    /// Telemetry points dropped because the evaluator was behind.
    pub fn dropped_points(&self) -> u64 {
        self.inner.feed.dropped.load(Relaxed)
    }

    async fn store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, fleetmq_storage::StoreError> + Send + 'static,
    ) -> Result<R, FleetError> {
        Ok(self.inner.store.call(f).await?)
    }

    /// Waits until the evaluator has read the rules again.
    async fn reload(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::Reload(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// `POST /api/v1/alarm-rules`: the rule as shown.
    pub async fn create_rule(&self, body: &Value) -> Result<Value, FleetError> {
        let token = fleetmq_storage::generate_token();
        let now = now_ms();
        let rule = model::parse_rule(body, format!("rule-{}", &token[..16]), now, now)?;
        let stored = rule.clone();
        self.store(move |s| s.create_alarm_rule(&stored)).await?;
        self.reload().await;
        Ok(rule_json(&rule))
    }

    /// `PUT /api/v1/alarm-rules/{id}`: replaces a rule; it applies from the next point.
    pub async fn update_rule(&self, id: &str, body: &Value) -> Result<Value, FleetError> {
        let lookup = id.to_owned();
        let old = self
            .store(move |s| s.get_alarm_rule(&lookup))
            .await?
            .ok_or_else(|| FleetError::NotFound {
                kind: "alarm rule",
                key: id.to_owned(),
            })?;
        let rule = model::parse_rule(body, id.to_owned(), old.created_at_ms, now_ms())?;
        let stored = rule.clone();
        self.store(move |s| s.update_alarm_rule(&stored)).await?;
        self.reload().await;
        Ok(rule_json(&rule))
    }

    /// `DELETE /api/v1/alarm-rules/{id}`: its active alarms are cleared.
    pub async fn delete_rule(&self, id: &str) -> Result<(), FleetError> {
        let (tx, rx) = oneshot::channel();
        let gone = || FleetError::Invalid("the alarm evaluator has stopped".into());
        self.inner
            .control
            .send(Control::Delete(id.to_owned(), tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// `GET /api/v1/alarm-rules`.
    pub async fn rules(&self) -> Result<Vec<Value>, FleetError> {
        let rules = self.store(|s| s.list_alarm_rules()).await?;
        Ok(rules.iter().map(rule_json).collect())
    }

    /// `GET /api/v1/alarms`: newest first, with the cursor of the next page.
    pub async fn list(
        &self,
        filter: AlarmFilter,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>), FleetError> {
        let (page, next) = self
            .store(move |s| s.list_alarms(&filter, cursor, limit))
            .await?;
        let items = page.iter().map(alarm_json).collect();
        Ok((items, next.map(|n| n.to_string())))
    }

    /// `POST /api/v1/alarms/{id}/ack`: idempotent; `alarm.acknowledged` only the first
    /// time.
    pub async fn ack(&self, alarm_id: &str) -> Result<Value, FleetError> {
        let not_found = || FleetError::NotFound {
            kind: "alarm",
            key: alarm_id.to_owned(),
        };
        let seq: u64 = alarm_id.parse().map_err(|_| not_found())?;
        let (record, fresh) = self.store(move |s| s.ack_alarm(seq, now_ms())).await?;
        let view = alarm_json(&record);
        if fresh {
            let device = record.device_id.parse::<DeviceId>().ok();
            let _ = (self.inner.events)
                .emit(ACKNOWLEDGED, device.as_ref(), view.clone())
                .await;
        }
        Ok(view)
    }

    /// A device reported an alarm (`device/{id}/events`): raised or cleared.
    pub(crate) fn device_alarm(&self, device: &DeviceId, raised: bool, raw: &Value, at_ms: u64) {
        let name = ["name", "code", "alarm"]
            .iter()
            .find_map(|k| match raw.get(*k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(v @ Value::Number(_)) => Some(v.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "alarm".to_owned());
        let severity = raw
            .get("severity")
            .and_then(Value::as_str)
            .filter(|s| SEVERITIES.contains(s))
            .unwrap_or("major");
        let alarm = NewAlarm {
            rule_id: None,
            name,
            severity: severity.to_owned(),
            device_id: device.as_str().to_owned(),
            raised_at_ms: at_ms,
            value: Some(raw.to_string()),
            source: fleetmq_storage::alarms::AlarmSource::Device,
        };
        let _ = self.inner.control.send(Control::Device { raised, alarm });
    }

    /// A device was deleted: clear its active alarms and drop its windows.
    pub(crate) fn forget_device(&self, device: &DeviceId) {
        let _ = (self.inner.control).send(Control::Forget(device.as_str().to_owned()));
    }

    /// A device's presence changed (for offline rules).
    pub(crate) fn presence(&self, device: &DeviceId, online: bool, at_ms: u64) {
        let _ = self.inner.control.send(Control::Presence {
            device: device.as_str().to_owned(),
            online,
            at_ms,
        });
    }
}

/// Cleared alarms older than the retention per transaction of the pruner.
const PRUNE_BUDGET: usize = 10_000;

/// Deletes cleared alarms once they are `retention` old, every `every`; active ones
/// stay, however old.
async fn prune(store: Store, retention: Duration, every: Duration, shutdown: CancellationToken) {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = now_ms().saturating_sub(retention_ms);
        loop {
            match store
                .call(move |s| s.prune_cleared_alarms(cutoff, PRUNE_BUDGET))
                .await
            {
                Ok(n) if n == PRUNE_BUDGET && !shutdown.is_cancelled() => continue,
                Ok(n) => tracing::debug!(pruned = n, "cleared alarms past retention deleted"),
                Err(error) => tracing::error!(%error, "cannot prune cleared alarms"),
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        let feed = AlarmFeed {
            tx,
            wanted: Arc::new(AtomicBool::new(false)),
            dropped: Arc::default(),
        };
        let device: DeviceId = "d".parse().unwrap();
        let points = vec![NewPoint::new(device, 1, vec![("t".into(), "1".into())]); 3];
        feed.offer(points.clone());
        assert!(
            rx.try_recv().is_err(),
            "no rule watches telemetry: nothing sent"
        );
        feed.wanted.store(true, Relaxed);
        feed.offer(points.clone());
        feed.offer(points);
        assert_eq!(feed.dropped.load(Relaxed), 3);
        assert_eq!(rx.try_recv().unwrap().len(), 3);
    }
}
