//! One telemetry point against one rule's state: what changes. Pure, so the hysteresis
//! and the `for_s` windows are tested without a broker.

use fleetmq_storage::alarms::{AlarmCondition, AlarmRule, AlarmState};

/// A point's values as the rules read them.
pub(super) trait Values {
    /// The numeric value of `key`, if the point has one (a boolean is 0 or 1).
    fn number(&self, key: &str) -> Option<f64>;
}

/// What a point does to a (rule, device).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Step {
    /// The running window starts (`Some(since)`) or stops (`None`).
    Window(Option<u64>),
    /// The condition held for its `for_s`: raise, with the value that did it.
    Raise(f64),
    /// The clear condition held for its `for_s`.
    Clear,
}

/// Whether `c` holds for `values`, and its window; `None` when the point says
/// nothing about it (key missing or not a number, or an offline condition).
fn holds(c: &AlarmCondition, values: &impl Values) -> Option<(bool, u64, f64)> {
    match c {
        AlarmCondition::Threshold {
            key,
            op,
            value,
            for_s,
        } => {
            let v = values.number(key)?;
            Some((op.holds(v, *value), *for_s, v))
        }
        AlarmCondition::Offline { .. } => None,
    }
}

/// What a point measured at `ts_ms` (telemetry time) does to `rule`'s `state`.
pub(super) fn step(
    rule: &AlarmRule,
    state: AlarmState,
    values: &impl Values,
    ts_ms: u64,
) -> Option<Step> {
    let active = state.alarm.is_some();
    let (held, for_s, value) = if active {
        match &rule.clear {
            Some(clear) => holds(clear, values)?,
            None => {
                let (held, _, v) = holds(&rule.condition, values)?;
                (!held, 0, v)
            }
        }
    } else {
        holds(&rule.condition, values)?
    };
    if !held {
        return state.since_ms.is_some().then_some(Step::Window(None));
    }
    let since = state.since_ms.unwrap_or(ts_ms);
    if ts_ms.saturating_sub(since) >= for_s.saturating_mul(1000) {
        Some(if active {
            Step::Clear
        } else {
            Step::Raise(value)
        })
    } else if state.since_ms.is_none() {
        Some(Step::Window(Some(ts_ms)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmq_storage::alarms::{AlarmTarget, CompareOp};
    use serde_json::{Map, Value};

    /// A parsed object, as the evaluator read points before the index.
    impl Values for Map<String, Value> {
        fn number(&self, key: &str) -> Option<f64> {
            match self.get(key)? {
                Value::Number(n) => n.as_f64(),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                _ => None,
            }
        }
    }

    fn rule(clear: Option<AlarmCondition>) -> AlarmRule {
        AlarmRule {
            id: "r".into(),
            name: "hot".into(),
            severity: "major".into(),
            target: AlarmTarget::All,
            condition: AlarmCondition::Threshold {
                key: "t".into(),
                op: CompareOp::Gt,
                value: 80.0,
                for_s: 30,
            },
            clear,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn t(v: f64) -> Map<String, Value> {
        serde_json::json!({ "t": v }).as_object().unwrap().clone()
    }

    fn run(rule: &AlarmRule, points: &[(u64, f64)]) -> Vec<Option<Step>> {
        let mut state = AlarmState::default();
        let mut out = Vec::new();
        for &(ts, v) in points {
            let s = step(rule, state, &t(v), ts * 1000);
            match s {
                Some(Step::Window(since)) => state.since_ms = since,
                Some(Step::Raise(_)) => {
                    state = AlarmState {
                        alarm: Some(1),
                        since_ms: None,
                    }
                }
                Some(Step::Clear) => state = AlarmState::default(),
                None => {}
            }
            out.push(s);
        }
        out
    }

    #[test]
    fn raises_after_for_s_and_clears_when_the_condition_stops() {
        let r = rule(None);
        let steps = run(
            &r,
            &[(0, 81.0), (29, 90.0), (30, 85.0), (31, 85.0), (40, 70.0)],
        );
        assert_eq!(
            steps,
            [
                Some(Step::Window(Some(0))),
                None,
                Some(Step::Raise(85.0)),
                None,
                Some(Step::Clear)
            ]
        );
        // A dip restarts the window.
        let steps = run(&r, &[(0, 81.0), (10, 70.0), (31, 81.0), (40, 81.0)]);
        assert_eq!(steps[1], Some(Step::Window(None)));
        assert_eq!(steps[3], None);
    }

    #[test]
    fn the_clear_condition_gives_hysteresis() {
        let clear = AlarmCondition::Threshold {
            key: "t".into(),
            op: CompareOp::Lt,
            value: 75.0,
            for_s: 10,
        };
        let r = rule(Some(clear));
        let steps = run(
            &r,
            &[
                (0, 90.0),
                (30, 90.0),
                (31, 78.0),
                (32, 74.0),
                (41, 70.0),
                (42, 70.0),
            ],
        );
        assert_eq!(steps[1], Some(Step::Raise(90.0)));
        assert_eq!(steps[2], None, "78 is not below 75");
        assert_eq!(steps[3], Some(Step::Window(Some(32_000))));
        assert_eq!(steps[4], None, "9 s of 10");
        assert_eq!(steps[5], Some(Step::Clear));
        // Another key says nothing.
        let other = serde_json::json!({"x": 1}).as_object().unwrap().clone();
        assert_eq!(step(&r, AlarmState::default(), &other, 0), None);
    }
}
