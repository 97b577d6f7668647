//! The rules indexed for the point path. A committed point meets only the rules whose
//! condition reads one of its keys, targets its device (all, a device list, a label)
//! and holds for its value: thresholds are sorted per (key, target), so a point whose
//! values hold no rule, the usual case, costs one scan of its object and a binary
//! search per key it carries that some rule reads — not one comparison per rule.
//!
//! The index only narrows: [`super::eval::step`] still decides every (rule, device) it
//! is given, and rules a device has a state for (a running window, an active alarm) are
//! always given, so the semantics are those of evaluating every rule.

use std::collections::{BTreeMap, HashMap, HashSet};

use fleetmq_storage::alarms::{AlarmCondition, AlarmRule, AlarmTarget, CompareOp};

use super::eval::Values;

/// The rules whose condition reads one key, for one target, by threshold.
#[derive(Default)]
struct Thresholds {
    /// `>` / `>=`: `(threshold, inclusive, rule)`, thresholds ascending.
    above: Vec<(f64, bool, usize)>,
    /// `<` / `<=`: the same, thresholds ascending.
    below: Vec<(f64, bool, usize)>,
    /// `==` / `!=`: tried one by one.
    other: Vec<(CompareOp, f64, usize)>,
}

impl Thresholds {
    fn add(&mut self, op: CompareOp, threshold: f64, rule: usize) {
        match op {
            CompareOp::Gt => self.above.push((threshold, false, rule)),
            CompareOp::Ge => self.above.push((threshold, true, rule)),
            CompareOp::Lt => self.below.push((threshold, false, rule)),
            CompareOp::Le => self.below.push((threshold, true, rule)),
            CompareOp::Eq | CompareOp::Ne => self.other.push((op, threshold, rule)),
        }
    }

    fn sort(&mut self) {
        self.above.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.below.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Pushes every rule whose condition holds for `v`.
    fn holding(&self, v: f64, out: &mut Vec<usize>) {
        // `t < v` holds `>`; `t == v` holds `>=`.
        let end = self.above.partition_point(|e| e.0 < v);
        out.extend(self.above[..end].iter().map(|e| e.2));
        let equal = self.above[end..].iter().take_while(|e| e.0 == v);
        out.extend(equal.filter(|e| e.1).map(|e| e.2));
        // `t > v` holds `<`; `t == v` holds `<=`.
        let rest = &self.below[self.below.partition_point(|e| e.0 < v)..];
        let equal = rest.partition_point(|e| e.0 == v);
        out.extend(rest[..equal].iter().filter(|e| e.1).map(|e| e.2));
        out.extend(rest[equal..].iter().map(|e| e.2));
        let other = self.other.iter().filter(|e| e.0.holds(v, e.1));
        out.extend(other.map(|e| e.2));
    }
}

/// What reads one telemetry key.
#[derive(Default)]
pub(super) struct KeyRules {
    /// Rules whose condition reads the key, by target.
    all: Thresholds,
    devices: HashMap<String, Thresholds>,
    labels: Vec<(String, String, Thresholds)>,
    /// Some label-targeted rule reads the key (condition or clear): a point carrying it
    /// needs its device's labels.
    label_read: bool,
}

/// The rules, indexed. Rebuilt whenever the rules change.
#[derive(Default)]
pub(super) struct RuleIndex {
    /// Every rule, in the store's order (the order their changes are written in).
    rules: Vec<AlarmRule>,
    by_id: HashMap<String, usize>,
    /// Every key a telemetry condition or clear condition reads, and its rules.
    keys: Vec<(String, KeyRules)>,
    /// Where each key is in `keys`; looked up only when there are many: comparing a
    /// handful of short names (the usual case) costs less than hashing a member's name.
    key_at: HashMap<String, usize>,
    /// Some telemetry rule targets every device / some label.
    any_all: bool,
    any_label: bool,
    /// Devices some telemetry rule lists.
    listed: HashSet<String>,
}

/// The values of one point that rules read: `(key, its rules, number)`; a key whose
/// value is not a number is there with `None` (a later member of the same name wins,
/// as in a parsed object).
#[derive(Default)]
pub(super) struct PointValues<'i> {
    found: Vec<(&'i str, &'i KeyRules, Option<f64>)>,
}

impl Values for PointValues<'_> {
    fn number(&self, key: &str) -> Option<f64> {
        self.found.iter().find(|f| f.0 == key)?.2
    }
}

impl PointValues<'_> {
    /// Whether some value read is a number (else no rule can step).
    pub(super) fn any_number(&self) -> bool {
        self.found.iter().any(|f| f.2.is_some())
    }
}

/// Up to this many keys, a member's name is compared with each before any hashing.
const FEW_KEYS: usize = 8;

/// A JSON value's number as serde_json's `Value::as_f64` gives it (a boolean is 0 or
/// 1, as for the evaluator it always was); `None` for anything else.
fn number(text: &[u8]) -> Option<f64> {
    match text.first()? {
        // Every JSON number is also Rust float syntax; serde_json (with
        // `float_roundtrip`, which the workspace enables) rounds the same way.
        b'-' | b'0'..=b'9' => {
            exact_decimal(text).or_else(|| std::str::from_utf8(text).ok()?.parse().ok())
        }
        b't' => Some(1.0),
        b'f' => Some(0.0),
        _ => None,
    }
}

/// `-?digits(.digits)?` with at most 15 digits: the integer of its digits and a power
/// of ten are exact `f64`s, so one division is the correctly rounded value, what
/// `f64::from_str` gives (it takes the same fast path, after more checks).
fn exact_decimal(text: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    let (mut m, mut n, mut fraction) = (0u64, 0usize, None);
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(c - b'0');
                n += 1;
            }
            b'.' if fraction.is_none() => fraction = Some(digits.len() - i - 1),
            _ => return None,
        }
        if n > 15 {
            return None;
        }
    }
    let v = m as f64 / POW10[fraction.unwrap_or(0)];
    Some(if negative { -v } else { v })
}

impl RuleIndex {
    pub(super) fn new(rules: Vec<AlarmRule>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            index.by_id.insert(rule.id.clone(), i);
            index.add(i, rule);
        }
        for (_, k) in &mut index.keys {
            k.all.sort();
            k.devices.values_mut().for_each(Thresholds::sort);
            k.labels.iter_mut().for_each(|l| l.2.sort());
        }
        index.rules = rules;
        index
    }

    fn add(&mut self, i: usize, rule: &AlarmRule) {
        let AlarmCondition::Threshold { key, op, value, .. } = &rule.condition else {
            return;
        };
        let label = matches!(rule.target, AlarmTarget::Label { .. });
        let keys = std::iter::once(key).chain(match &rule.clear {
            Some(AlarmCondition::Threshold { key, .. }) => Some(key),
            _ => None,
        });
        for k in keys {
            self.key_rules(k).label_read |= label;
        }
        match &rule.target {
            AlarmTarget::All => self.any_all = true,
            AlarmTarget::Devices(list) => self.listed.extend(list.iter().cloned()),
            AlarmTarget::Label { .. } => self.any_label = true,
        }
        let rules = self.key_rules(key);
        match &rule.target {
            AlarmTarget::All => {
                rules.all.add(*op, *value, i);
            }
            AlarmTarget::Devices(list) => {
                // A device listed twice is one target.
                let unique: std::collections::BTreeSet<&String> = list.iter().collect();
                for d in unique {
                    rules
                        .devices
                        .entry(d.clone())
                        .or_default()
                        .add(*op, *value, i);
                }
            }
            AlarmTarget::Label { key: lk, value: lv } => {
                let found = rules.labels.iter().position(|l| &l.0 == lk && &l.1 == lv);
                let at = found.unwrap_or_else(|| {
                    rules
                        .labels
                        .push((lk.clone(), lv.clone(), Thresholds::default()));
                    rules.labels.len() - 1
                });
                rules.labels[at].2.add(*op, *value, i);
            }
        }
    }

    fn key_rules(&mut self, key: &str) -> &mut KeyRules {
        let at = match self.key_at.get(key) {
            Some(&at) => at,
            None => {
                self.keys.push((key.to_owned(), KeyRules::default()));
                self.key_at.insert(key.to_owned(), self.keys.len() - 1);
                self.keys.len() - 1
            }
        };
        &mut self.keys[at].1
    }

    /// Every rule, in the store's order.
    pub(super) fn rules(&self) -> &[AlarmRule] {
        &self.rules
    }

    /// The rule `id` and its position in [`RuleIndex::rules`].
    pub(super) fn get(&self, id: &str) -> Option<(usize, &AlarmRule)> {
        let &i = self.by_id.get(id)?;
        Some((i, &self.rules[i]))
    }

    /// Whether some rule reads telemetry at all.
    pub(super) fn watches_telemetry(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether some telemetry rule may target `device` (its labels unknown).
    pub(super) fn may_target(&self, device: &str) -> bool {
        self.any_all || self.any_label || self.listed.contains(device)
    }

    /// Fills `values` with the members of `object` (a stored point's JSON) that rules
    /// read. An object that does not scan gives none, as it did parsed.
    pub(super) fn read<'i>(&'i self, object: &[u8], values: &mut PointValues<'i>) {
        values.found.clear();
        let found = &mut values.found;
        let all = fleetmq_device_plugins::object_members(object, |key, escaped, value| {
            let entry = match escaped {
                false => std::str::from_utf8(key).ok().and_then(|k| self.lookup(k)),
                true => self.lookup_escaped(key),
            };
            let Some((key, rules)) = entry else {
                return;
            };
            let v = number(value);
            match found.iter_mut().find(|f| f.0 == key) {
                Some(f) => f.2 = v,
                None => found.push((key, rules, v)),
            }
        });
        if all.is_none() {
            found.clear();
        }
    }

    fn lookup(&self, key: &str) -> Option<(&str, &KeyRules)> {
        let (k, rules) = match self.keys.len() <= FEW_KEYS {
            true => self.keys.iter().find(|(k, _)| k == key)?,
            false => &self.keys[*self.key_at.get(key)?],
        };
        Some((k.as_str(), rules))
    }

    #[cold]
    fn lookup_escaped(&self, key: &[u8]) -> Option<(&str, &KeyRules)> {
        let mut quoted = Vec::with_capacity(key.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(key);
        quoted.push(b'"');
        let key: String = serde_json::from_slice(&quoted).ok()?;
        self.lookup(&key)
    }

    /// Whether the rules `values` meet need the device's labels.
    pub(super) fn needs_labels(&self, values: &PointValues<'_>) -> bool {
        values.found.iter().any(|f| f.1.label_read && f.2.is_some())
    }

    /// Pushes (unordered, maybe repeated) the rules targeting `device` (with `labels`)
    /// whose condition holds for `values`.
    pub(super) fn holding(
        &self,
        values: &PointValues<'_>,
        device: &str,
        labels: &BTreeMap<String, String>,
        out: &mut Vec<usize>,
    ) {
        for &(_, rules, v) in &values.found {
            let Some(v) = v else { continue };
            rules.all.holding(v, out);
            if let Some(t) = rules.devices.get(device) {
                t.holding(v, out);
            }
            for (lk, lv, t) in &rules.labels {
                if labels.get(lk) == Some(lv) {
                    t.holding(v, out);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
