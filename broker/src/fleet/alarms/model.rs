//! The JSON of SPEC §11: rule bodies parsed into the store's records, and rules and
//! alarms shown.

use fleetmq_storage::alarms::{
    AlarmCondition, AlarmRecord, AlarmRule, AlarmSource, AlarmTarget, CompareOp,
};
use serde_json::{json, Value};

use crate::fleet::FleetError;
use crate::time::rfc3339_ms;

/// The severities, most severe first.
pub const SEVERITIES: [&str; 4] = ["critical", "major", "minor", "warning"];

fn invalid(msg: impl Into<String>) -> FleetError {
    FleetError::Invalid(msg.into())
}

/// A rule body (`POST`/`PUT /api/v1/alarm-rules`) as a rule with `id` and times.
pub(crate) fn parse_rule(
    body: &Value,
    id: String,
    created_at_ms: u64,
    now_ms: u64,
) -> Result<AlarmRule, FleetError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("a rule is a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["name", "severity", "target", "condition", "clear"].contains(&k.as_str()))
    {
        return Err(invalid(format!("unknown field {k:?}")));
    }
    let name = match obj.get("name").and_then(Value::as_str) {
        Some(n) if !n.trim().is_empty() && n.len() <= 200 => n.to_owned(),
        _ => return Err(invalid("`name` must be a non-empty string")),
    };
    let severity = match obj.get("severity").and_then(Value::as_str) {
        Some(s) if SEVERITIES.contains(&s) => s.to_owned(),
        _ => {
            return Err(invalid(
                "`severity` must be critical, major, minor or warning",
            ))
        }
    };
    let target = parse_target(obj.get("target"))?;
    let condition = parse_condition(obj.get("condition"), "condition")?
        .ok_or_else(|| invalid("`condition` is required"))?;
    let clear = parse_condition(obj.get("clear"), "clear")?;
    if matches!(condition, AlarmCondition::Offline { .. }) && clear.is_some() {
        return Err(invalid(
            "an offline alarm clears when the device comes back",
        ));
    }
    if matches!(clear, Some(AlarmCondition::Offline { .. })) {
        return Err(invalid("`clear` must be a telemetry condition"));
    }
    Ok(AlarmRule {
        id,
        name,
        severity,
        target,
        condition,
        clear,
        created_at_ms,
        updated_at_ms: now_ms,
    })
}

fn parse_target(v: Option<&Value>) -> Result<AlarmTarget, FleetError> {
    let wrong =
        || invalid("`target` must be {\"devices\":[...]}, {\"label\":\"k:v\"} or {\"all\":true}");
    let obj = v.and_then(Value::as_object).ok_or_else(wrong)?;
    if obj.len() != 1 {
        return Err(wrong());
    }
    if let Some(list) = obj.get("devices").and_then(Value::as_array) {
        let devices: Option<Vec<String>> =
            list.iter().map(|d| d.as_str().map(str::to_owned)).collect();
        return devices.map(AlarmTarget::Devices).ok_or_else(wrong);
    }
    if let Some(label) = obj.get("label").and_then(Value::as_str) {
        let (key, value) = label.split_once(':').ok_or_else(wrong)?;
        return Ok(AlarmTarget::Label {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    match obj.get("all") {
        Some(Value::Bool(true)) => Ok(AlarmTarget::All),
        _ => Err(wrong()),
    }
}

fn parse_op(op: &str) -> Option<CompareOp> {
    Some(match op {
        ">" => CompareOp::Gt,
        ">=" => CompareOp::Ge,
        "<" => CompareOp::Lt,
        "<=" => CompareOp::Le,
        "==" => CompareOp::Eq,
        "!=" => CompareOp::Ne,
        _ => return None,
    })
}

fn op_str(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Eq => "==",
        CompareOp::Ne => "!=",
    }
}

fn parse_condition(v: Option<&Value>, what: &str) -> Result<Option<AlarmCondition>, FleetError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(invalid(format!("`{what}` must be an object"))),
    };
    let seconds = |k: &str| match obj.get(k) {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(format!("`{what}.{k}` must be a whole number of seconds"))),
    };
    if obj.contains_key("offline_for_s") {
        if obj.len() != 1 {
            return Err(invalid(format!(
                "`{what}` with offline_for_s takes nothing else"
            )));
        }
        return Ok(Some(AlarmCondition::Offline {
            for_s: seconds("offline_for_s")?,
        }));
    }
    let key = match obj.get("key").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != "ts" => k.to_owned(),
        _ => return Err(invalid(format!("`{what}.key` must name a telemetry key"))),
    };
    let op = obj
        .get("op")
        .and_then(Value::as_str)
        .and_then(parse_op)
        .ok_or_else(|| invalid(format!("`{what}.op` must be one of > >= < <= == !=")))?;
    let value = obj
        .get("value")
        .and_then(Value::as_f64)
        .ok_or_else(|| invalid(format!("`{what}.value` must be a number")))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["key", "op", "value", "for_s"].contains(&k.as_str()))
    {
        return Err(invalid(format!("unknown field `{what}.{k}`")));
    }
    Ok(Some(AlarmCondition::Threshold {
        key,
        op,
        value,
        for_s: seconds("for_s")?,
    }))
}

fn condition_json(c: &AlarmCondition) -> Value {
    match c {
        AlarmCondition::Threshold {
            key,
            op,
            value,
            for_s,
        } => json!({"key": key, "op": op_str(*op), "value": number_json(*value), "for_s": for_s}),
        AlarmCondition::Offline { for_s } => json!({"offline_for_s": for_s}),
    }
}

/// `80` rather than `80.0` for a whole threshold, as it was most likely written.
fn number_json(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// A rule as the API shows it.
pub fn rule_json(r: &AlarmRule) -> Value {
    let target = match &r.target {
        AlarmTarget::All => json!({"all": true}),
        AlarmTarget::Devices(d) => json!({"devices": d}),
        AlarmTarget::Label { key, value } => json!({"label": format!("{key}:{value}")}),
    };
    json!({
        "rule_id": r.id,
        "name": r.name,
        "severity": r.severity,
        "target": target,
        "condition": condition_json(&r.condition),
        "clear": r.clear.as_ref().map(condition_json),
        "created_at": rfc3339_ms(r.created_at_ms),
        "updated_at": rfc3339_ms(r.updated_at_ms),
    })
}

/// An alarm as the API and its events show it (SPEC §11).
pub fn alarm_json(a: &AlarmRecord) -> Value {
    let value = a
        .value
        .as_deref()
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .unwrap_or(Value::Null);
    json!({
        "alarm_id": a.seq.to_string(),
        "rule_id": a.rule_id,
        "name": a.name,
        "severity": a.severity,
        "device_id": a.device_id,
        "status": if a.active { "active" } else { "cleared" },
        "acknowledged": a.acknowledged_at_ms.is_some(),
        "raised_at": rfc3339_ms(a.raised_at_ms),
        "cleared_at": a.cleared_at_ms.map(rfc3339_ms),
        "acknowledged_at": a.acknowledged_at_ms.map(rfc3339_ms),
        "value": value,
        "source": match a.source {
            AlarmSource::Rule => "rule",
            AlarmSource::Device => "device",
        },
    })
}

/// Whether `labels` satisfy `target` for `device`.
pub(crate) fn targets(
    target: &AlarmTarget,
    device: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    match target {
        AlarmTarget::All => true,
        AlarmTarget::Devices(list) => list.iter().any(|d| d == device),
        AlarmTarget::Label { key, value } => labels.get(key) == Some(value),
    }
}
