//! The evaluator's (rule, device) states, indexed by device first. A point's device is
//! looked up once; a device with no state at all (the usual case: no running window, no
//! active alarm) then costs no per-rule lookup and no allocation, however many rules
//! watch it.

use std::collections::HashMap;

use fleetmq_storage::alarms::AlarmState;

/// `(rule id, device id)`.
pub(super) type Key = (String, String);

#[derive(Default)]
pub(super) struct States {
    /// device → rule → state; never holds an empty inner map.
    by_device: HashMap<String, HashMap<String, AlarmState>>,
}

impl States {
    /// The states of `device`'s rules, if it has any.
    pub(super) fn device(&self, device: &str) -> Option<&HashMap<String, AlarmState>> {
        self.by_device.get(device)
    }

    pub(super) fn get(&self, (rule, device): &Key) -> Option<&AlarmState> {
        self.by_device.get(device.as_str())?.get(rule.as_str())
    }

    pub(super) fn contains_key(&self, key: &Key) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn insert(&mut self, (rule, device): Key, state: AlarmState) -> Option<AlarmState> {
        self.by_device
            .entry(device)
            .or_default()
            .insert(rule, state)
    }

    pub(super) fn remove(&mut self, (rule, device): &Key) -> Option<AlarmState> {
        let states = self.by_device.get_mut(device.as_str())?;
        let old = states.remove(rule.as_str());
        if states.is_empty() {
            self.by_device.remove(device.as_str());
        }
        old
    }

    /// Drops every state of `rule`.
    pub(super) fn remove_rule(&mut self, rule: &str) {
        self.by_device.retain(|_, states| {
            states.remove(rule);
            !states.is_empty()
        });
    }

    /// Removes every state of `device`; returns them by rule id.
    pub(super) fn take_device(&mut self, device: &str) -> Vec<(String, AlarmState)> {
        let states = self.by_device.remove(device).unwrap_or_default();
        states.into_iter().collect()
    }

    /// `(rule, device, state)` of every state.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &str, &AlarmState)> {
        (self.by_device.iter())
            .flat_map(|(d, states)| states.iter().map(move |(r, s)| (r.as_str(), d.as_str(), s)))
    }
}

impl FromIterator<(Key, AlarmState)> for States {
    fn from_iter<I: IntoIterator<Item = (Key, AlarmState)>>(iter: I) -> States {
        let mut states = States::default();
        for (key, state) in iter {
            states.insert(key, state);
        }
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rule: &str, device: &str) -> Key {
        (rule.to_owned(), device.to_owned())
    }

    #[test]
    fn a_device_without_states_is_not_indexed() {
        let window = AlarmState {
            alarm: None,
            since_ms: Some(5),
        };
        let mut s: States = [(key("r1", "d1"), window), (key("r2", "d1"), window)]
            .into_iter()
            .collect();
        assert_eq!(s.device("d1").map(HashMap::len), Some(2));
        assert_eq!(s.remove(&key("r1", "d1")), Some(window));
        assert!(s.contains_key(&key("r2", "d1")));
        s.remove_rule("r2");
        assert!(s.device("d1").is_none());
        s.insert(key("r3", "d2"), window);
        assert_eq!(s.take_device("d2"), vec![("r3".to_owned(), window)]);
        assert_eq!(s.iter().count(), 0);
    }
}
