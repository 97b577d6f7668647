//! The evaluator task: owns every (rule, device) state, evaluates committed points,
//! presence and device-reported alarms, writes each step's changes in one transaction
//! and then emits their events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use fleetmq_storage::alarms::{
    AlarmChange, AlarmCondition, AlarmOutcome, AlarmRule, AlarmSource, AlarmState, NewAlarm,
};
use fleetmq_storage::telemetry::NewPoint;
use fleetmq_storage::{now_ms, DeviceId, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::eval::{step, Step};
use super::index::{PointValues, RuleIndex};
use super::model::{alarm_json, targets};
use super::states::{Key, States};
use super::{Control, CLEARED, RAISED};
use crate::fleet::events::EventBus;
use crate::fleet::SinkEvent;

/// Devices' labels, read once per step.
type Labels = HashMap<String, BTreeMap<String, String>>;

pub(super) struct Worker {
    store: Store,
    /// Who is connected: a new offline rule starts windows for the others.
    presence: Arc<crate::fleet::presence::Presence>,
    events: EventBus,
    wanted: Arc<AtomicBool>,
    rules: Arc<RuleIndex>,
    states: States,
    /// `(deadline, rule, device)` of running offline windows.
    deadlines: BTreeSet<(u64, String, String)>,
}

fn offline_for(rule: &AlarmRule) -> Option<u64> {
    match rule.condition {
        AlarmCondition::Offline { for_s } => Some(for_s.saturating_mul(1000)),
        AlarmCondition::Threshold { .. } => None,
    }
}

impl Worker {
    pub(super) fn new(
        store: Store,
        events: EventBus,
        wanted: Arc<AtomicBool>,
        presence: Arc<crate::fleet::presence::Presence>,
    ) -> Worker {
        Worker {
            store,
            presence,
            events,
            wanted,
            rules: Arc::default(),
            states: States::default(),
            deadlines: BTreeSet::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut points: mpsc::Receiver<Vec<NewPoint>>,
        mut control: mpsc::UnboundedReceiver<Control>,
        shutdown: CancellationToken,
    ) {
        self.load_rules().await;
        self.load_states().await;
        self.seed_offline_windows().await;
        loop {
            let next = self.deadlines.first().map(|d| d.0);
            let timer = async move {
                match next {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(c) = control.recv() => self.on_control(c).await,
                Some(batch) = points.recv() => self.on_points(batch).await,
                () = timer => self.on_timer().await,
            }
        }
    }

    async fn load_rules(&mut self) {
        match self.store.call(|s| s.list_alarm_rules()).await {
            Ok(rules) => {
                let index = RuleIndex::new(rules);
                self.wanted.store(index.watches_telemetry(), Relaxed);
                self.rules = Arc::new(index);
            }
            Err(error) => tracing::error!(%error, "cannot read the alarm rules"),
        }
        self.rebuild_deadlines();
    }

    async fn load_states(&mut self) {
        match self.store.call(|s| s.load_alarm_states()).await {
            Ok(states) => self.states = states.into_iter().collect(),
            Err(error) => tracing::error!(%error, "cannot read the alarm states"),
        }
        self.rebuild_deadlines();
    }

    /// Offline windows nobody started, at start and when the rules change: a rule made
    /// while a device is offline, and a device that was online when the broker stopped
    /// without seeing it go (kill -9, a power cut), which never sends a disconnect. Each
    /// offline rule's device that is not connected and has no state starts a window:
    /// from its disconnect if it was offline before, else from now (it was online until
    /// the stop, whose time is unknown), so a restart never raises alarms for devices
    /// that come straight back. A device that connects later stops its window with its
    /// presence event, which this worker handles after this.
    async fn seed_offline_windows(&mut self) {
        let rules: Vec<(AlarmRule, u64)> = (self.rules.rules().iter())
            .filter_map(|r| offline_for(r).map(|after| (r.clone(), after)))
            .collect();
        if rules.is_empty() {
            return;
        }
        let now = now_ms();
        let offline = match self.store.call(move |s| offline_since(s, now)).await {
            Ok(devices) => devices,
            Err(error) => {
                tracing::error!(%error, "cannot read the devices for offline windows");
                return;
            }
        };
        let mut changes = Vec::new();
        for (rule, after) in &rules {
            for (device, labels, since) in &offline {
                let key = (rule.id.clone(), device.clone());
                if !targets(&rule.target, device, labels)
                    || self.states.contains_key(&key)
                    || self.presence.is_online(device)
                {
                    continue;
                }
                let state = AlarmState {
                    alarm: None,
                    since_ms: Some(*since),
                };
                self.states.insert(key.clone(), state);
                self.deadlines
                    .insert((since.saturating_add(*after), key.0.clone(), key.1.clone()));
                changes.push(AlarmChange::Window {
                    key: key.0,
                    device: key.1,
                    since_ms: Some(*since),
                });
            }
        }
        tracing::info!(
            windows = changes.len(),
            devices = offline.len(),
            "offline windows started for devices not connected"
        );
        self.commit(changes).await;
    }

    fn rebuild_deadlines(&mut self) {
        self.deadlines.clear();
        for rule in self.rules.rules() {
            let Some(after) = offline_for(rule) else {
                continue;
            };
            for (key, device, state) in self.states.iter() {
                if let (true, None, Some(since)) = (key == rule.id, state.alarm, state.since_ms) {
                    let at = since.saturating_add(after);
                    let (key, device) = (key.to_owned(), device.to_owned());
                    self.deadlines.insert((at, key, device));
                }
            }
        }
    }

    /// Whether `rule` watches `device`; labels are read once per step (`labels`).
    async fn targets(&self, rule: &AlarmRule, device: &str, labels: &mut Labels) -> bool {
        if !matches!(
            rule.target,
            fleetmq_storage::alarms::AlarmTarget::Label { .. }
        ) {
            return targets(&rule.target, device, &BTreeMap::new());
        }
        targets(&rule.target, device, self.labels(device, labels).await)
    }

    /// `device`'s labels, read from the store once per step.
    async fn labels<'l>(
        &self,
        device: &str,
        labels: &'l mut Labels,
    ) -> &'l BTreeMap<String, String> {
        if !labels.contains_key(device) {
            let found = match device.parse::<DeviceId>() {
                Ok(id) => (self.store.call(move |s| s.get_device(&id)).await)
                    .ok()
                    .flatten()
                    .map(|d| d.labels)
                    .unwrap_or_default(),
                Err(_) => BTreeMap::new(),
            };
            labels.insert(device.to_owned(), found);
        }
        &labels[device]
    }

    /// A committed batch: each point meets only the rules the index gives it (see
    /// `index`), then one transaction for the batch's changes.
    async fn on_points(&mut self, batch: Vec<NewPoint>) {
        let index = self.rules.clone();
        let mut labels = Labels::new();
        let mut values = PointValues::default();
        let mut rules = Vec::new();
        let mut changes = Vec::new();
        let no_labels = BTreeMap::new();
        for p in &batch {
            let device = p.device_id();
            if !index.may_target(device) && self.states.device(device).is_none() {
                continue;
            }
            index.read(p.object_json(), &mut values);
            if !values.any_number() {
                continue;
            }
            let device_labels = match index.needs_labels(&values) {
                true => self.labels(device, &mut labels).await,
                false => &no_labels,
            };
            self.step_point(&index, p, &values, device_labels, &mut rules, &mut changes);
        }
        self.commit(changes).await;
    }

    /// One point of a batch against the rules that hold for it and the rules its
    /// device has a state for, in the rules' order.
    fn step_point(
        &mut self,
        index: &RuleIndex,
        p: &NewPoint,
        values: &PointValues<'_>,
        labels: &BTreeMap<String, String>,
        rules: &mut Vec<usize>,
        changes: &mut Vec<AlarmChange>,
    ) {
        let device = p.device_id();
        rules.clear();
        index.holding(values, device, labels, rules);
        if let Some(states) = self.states.device(device) {
            let stateful = states.keys().filter_map(|id| index.get(id));
            let targeted = stateful.filter(|(_, r)| targets(&r.target, device, labels));
            rules.extend(targeted.map(|(i, _)| i));
        }
        rules.sort_unstable();
        rules.dedup();
        for &i in rules.iter() {
            let rule = &index.rules()[i];
            let state = (self.states.device(device))
                .and_then(|states| states.get(&rule.id).copied())
                .unwrap_or_default();
            if let Some(s) = step(rule, state, values, p.ts_ms()) {
                let key = (rule.id.clone(), device.to_owned());
                self.apply(rule, key, state, s, p.ts_ms(), changes);
            }
        }
    }

    /// Records what `s` does to `key`, in memory and in `changes`.
    fn apply(
        &mut self,
        rule: &AlarmRule,
        key: Key,
        mut state: AlarmState,
        s: Step,
        ts_ms: u64,
        changes: &mut Vec<AlarmChange>,
    ) {
        let (rule_id, device) = key.clone();
        match s {
            Step::Window(since) => {
                state.since_ms = since;
                let stored = (state != AlarmState::default()).then_some(state);
                match stored {
                    Some(s) => self.states.insert(key, s),
                    None => self.states.remove(&key),
                };
                changes.push(AlarmChange::Window {
                    key: rule_id,
                    device,
                    since_ms: since,
                });
            }
            Step::Raise(value) => {
                self.states.insert(key, raised_state());
                let value = serde_json::Number::from_f64(value).map(|n| n.to_string());
                let alarm = new_alarm(rule, device, ts_ms, value);
                changes.push(AlarmChange::Raise {
                    key: rule_id,
                    alarm,
                });
            }
            Step::Clear => {
                self.states.remove(&key);
                changes.push(AlarmChange::Clear {
                    key: rule_id,
                    device,
                    at_ms: ts_ms,
                });
            }
        }
    }

    /// Writes `changes` in one transaction, then emits their events. On failure the
    /// states are read back from the store, which still holds the truth.
    async fn commit(&mut self, changes: Vec<AlarmChange>) {
        if changes.is_empty() {
            return;
        }
        match self
            .store
            .call(move |s| s.apply_alarm_changes(&changes))
            .await
        {
            Ok(outcomes) => self.announce(outcomes).await,
            Err(error) => {
                tracing::error!(%error, "cannot store alarm changes");
                self.load_states().await;
            }
        }
    }

    async fn announce(&self, outcomes: Vec<AlarmOutcome>) {
        let events: Vec<SinkEvent> = outcomes
            .into_iter()
            .filter_map(|o| {
                let (kind, a) = match o {
                    AlarmOutcome::Raised(a) => (RAISED, a),
                    AlarmOutcome::Cleared(a) => (CLEARED, a),
                };
                let data = serde_json::value::to_raw_value(&alarm_json(&a)).ok()?;
                Some((kind, a.device_id.parse().ok(), data))
            })
            .collect();
        if !events.is_empty() {
            self.events.emit_many(events).await;
        }
    }

    async fn on_control(&mut self, c: Control) {
        match c {
            Control::Reload(done) => {
                self.load_rules().await;
                // A new or changed offline rule watches devices already offline too.
                self.seed_offline_windows().await;
                let _ = done.send(());
            }
            Control::Delete(id, done) => {
                let at = now_ms();
                let lookup = id.clone();
                let result = self
                    .store
                    .call(move |s| s.delete_alarm_rule(&lookup, at))
                    .await;
                let answer = match result {
                    Ok((_, cleared)) => {
                        self.states.remove_rule(&id);
                        self.load_rules().await;
                        self.announce(cleared.into_iter().map(AlarmOutcome::Cleared).collect())
                            .await;
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = done.send(answer);
            }
            Control::Device { raised, alarm } => self.device_alarm(raised, alarm).await,
            Control::Forget(device) => self.forget(&device).await,
            Control::Presence {
                device,
                online,
                at_ms,
            } => self.presence(device, online, at_ms).await,
        }
    }

    /// A device-reported alarm: at most one active per (device, alarm name).
    async fn device_alarm(&mut self, raised: bool, alarm: NewAlarm) {
        let key = (format!("device:{}", alarm.name), alarm.device_id.clone());
        let active = self.states.contains_key(&key);
        let change = match (raised, active) {
            (true, false) => {
                self.states.insert(key.clone(), raised_state());
                AlarmChange::Raise { key: key.0, alarm }
            }
            (false, true) => {
                self.states.remove(&key);
                AlarmChange::Clear {
                    key: key.0,
                    device: key.1,
                    at_ms: alarm.raised_at_ms,
                }
            }
            _ => return,
        };
        self.commit(vec![change]).await;
    }

    /// A deleted device: its alarms are cleared and its windows dropped.
    async fn forget(&mut self, device: &str) {
        let now = now_ms();
        let mut changes = Vec::new();
        for (key, state) in self.states.take_device(device) {
            let device = device.to_owned();
            changes.push(match state.alarm {
                Some(_) => AlarmChange::Clear {
                    key,
                    device,
                    at_ms: now,
                },
                None => AlarmChange::Window {
                    key,
                    device,
                    since_ms: None,
                },
            });
        }
        self.deadlines.retain(|(_, _, d)| d != device);
        self.commit(changes).await;
    }

    /// Offline rules: a window starts when the device goes offline; coming back stops
    /// it or clears the alarm.
    async fn presence(&mut self, device: String, online: bool, at_ms: u64) {
        let rules = self.rules.clone();
        let mut labels = Labels::new();
        let mut changes = Vec::new();
        for rule in rules.rules() {
            let Some(after) = offline_for(rule) else {
                continue;
            };
            if !self.targets(rule, &device, &mut labels).await {
                continue;
            }
            let key = (rule.id.clone(), device.clone());
            if online {
                let Some(old) = self.states.remove(&key) else {
                    continue;
                };
                if let Some(since) = old.since_ms {
                    let at = since.saturating_add(after);
                    self.deadlines.remove(&(at, key.0.clone(), key.1.clone()));
                }
                changes.push(match old.alarm {
                    Some(_) => AlarmChange::Clear {
                        key: key.0,
                        device: key.1,
                        at_ms,
                    },
                    None => AlarmChange::Window {
                        key: key.0,
                        device: key.1,
                        since_ms: None,
                    },
                });
            } else if !self.states.contains_key(&key) {
                let state = AlarmState {
                    alarm: None,
                    since_ms: Some(at_ms),
                };
                self.states.insert(key.clone(), state);
                let at = at_ms.saturating_add(after);
                self.deadlines.insert((at, key.0.clone(), key.1.clone()));
                changes.push(AlarmChange::Window {
                    key: key.0,
                    device: key.1,
                    since_ms: Some(at_ms),
                });
            }
        }
        self.commit(changes).await;
    }

    /// Raises the offline alarms whose window has run out.
    async fn on_timer(&mut self) {
        let now = now_ms();
        let mut changes = Vec::new();
        while let Some(first) = self.deadlines.first() {
            if first.0 > now {
                break;
            }
            let Some((_, rule_id, device)) = self.deadlines.pop_first() else {
                break;
            };
            let key = (rule_id, device);
            let waiting = self.states.get(&key).is_some_and(|s| s.alarm.is_none());
            let rule = self.rules.get(&key.0).map(|(_, r)| r.clone());
            if let (true, Some(rule)) = (waiting, rule) {
                self.states.insert(key.clone(), raised_state());
                let alarm = new_alarm(&rule, key.1, now, None);
                changes.push(AlarmChange::Raise { key: key.0, alarm });
            }
        }
        self.commit(changes).await;
    }
}

/// The in-memory state of an active alarm (its id only matters in the store).
fn raised_state() -> AlarmState {
    AlarmState {
        alarm: Some(0),
        since_ms: None,
    }
}

fn new_alarm(rule: &AlarmRule, device: String, at_ms: u64, value: Option<String>) -> NewAlarm {
    NewAlarm {
        rule_id: Some(rule.id.clone()),
        name: rule.name.clone(),
        severity: rule.severity.clone(),
        device_id: device,
        raised_at_ms: at_ms,
        value,
        source: AlarmSource::Rule,
    }
}

/// A device's id, labels, and since when it is offline.
type OfflineDevice = (String, BTreeMap<String, String>, u64);

/// Every device that ever connected, with its labels and since when it counts as
/// offline at a start at `now`: its last disconnect if that came after its last
/// connect, else `now`.
fn offline_since(
    store: &Store,
    now: u64,
) -> Result<Vec<OfflineDevice>, fleetmq_storage::StoreError> {
    let mut out = Vec::new();
    let mut after: Option<DeviceId> = None;
    loop {
        let page = store.list_devices(after.as_ref(), 1024)?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = Some(last.id.clone());
        for device in page {
            let state = store.device_state(&device.id)?;
            let since = match (state.disconnected_at_ms, state.connected_at_ms) {
                (Some(off), Some(on)) if off >= on => off,
                (Some(off), None) => off,
                (_, Some(_)) => now,
                // Never connected: not a device that went offline (none raised before).
                (None, None) => continue,
            };
            out.push((device.id.as_str().to_owned(), device.labels, since));
        }
    }
}
