//! Scenario 2 with alarm rules (`--alarm-rules N`, SPEC §11): unpaced telemetry ingest
//! without rules and with N rules over the payload's keys, alternating, so a slow spell
//! of the VM hits both. The rules target every device and never fire (their thresholds
//! are out of range): this is the cost of evaluating each point against N rules.

use anyhow::{bail, Context as _};

use crate::broker::{Broker, Device};
use crate::http::Http;
use crate::telemetry::{self, TelemetryRun};

/// The payload's numeric keys (`telemetry::PAYLOAD`).
const KEYS: [&str; 5] = ["cpu", "mem", "temp", "uptime", "rssi"];

const SEVERITIES: [&str; 4] = ["critical", "major", "minor", "warning"];

/// What one alternating comparison measured.
pub struct AlarmRuns {
    pub rules: usize,
    /// Unpaced runs without rules and with them, in order.
    pub without: Vec<TelemetryRun>,
    pub with: Vec<TelemetryRun>,
    /// Points the alarm evaluator dropped (it was behind) over the runs with rules.
    pub dropped: u64,
}

/// The comparison's plan.
pub struct Plan<'a> {
    pub devices: &'a [Device],
    pub tasks: usize,
    pub window: std::time::Duration,
    pub rules: usize,
    pub rounds: usize,
}

/// `rounds` × (a run without rules, then one with `rules` rules, removed afterwards).
pub async fn run(broker: &Broker, plan: &Plan<'_>) -> anyhow::Result<AlarmRuns> {
    let mut out = AlarmRuns {
        rules: plan.rules,
        without: Vec::new(),
        with: Vec::new(),
        dropped: 0,
    };
    let unpaced = [None];
    for round in 1..=plan.rounds {
        eprintln!("fleet:   round {round} of {}: no alarm rules", plan.rounds);
        let mut runs = telemetry::run(broker, plan.devices, plan.tasks, plan.window, &unpaced);
        out.without.extend(runs.await?);
        eprintln!("fleet:   round {round}: {} alarm rules", plan.rules);
        let ids = create_rules(broker, plan.rules).await?;
        let before = dropped_points(broker).await?;
        runs = telemetry::run(broker, plan.devices, plan.tasks, plan.window, &unpaced);
        out.with.extend(runs.await?);
        broker.settle().await;
        out.dropped += dropped_points(broker).await?.saturating_sub(before);
        delete_rules(broker, &ids).await?;
    }
    Ok(out)
}

/// `n` rules, one key of the payload each, targeting every device, never raising.
async fn create_rules(broker: &Broker, n: usize) -> anyhow::Result<Vec<String>> {
    let mut http = Http::new(broker.admin);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let key = KEYS[i % KEYS.len()];
        let (op, value, clear_op) = if key == "rssi" {
            ("<", -1_000.0 - i as f64, ">")
        } else {
            (">", 1.0e9 + i as f64, "<")
        };
        let severity = SEVERITIES[i % SEVERITIES.len()];
        let rule = serde_json::json!({
            "name": format!("bench-{i}"),
            "severity": severity,
            "target": {"all": true},
            "condition": {"key": key, "op": op, "value": value, "for_s": 30},
            "clear": {"key": key, "op": clear_op, "value": value, "for_s": 10},
        });
        let r = http.post("/api/v1/alarm-rules", &rule).await?;
        if r.status != 201 {
            bail!(
                "POST /api/v1/alarm-rules answered {}: {}",
                r.status,
                r.text()
            );
        }
        let id = r.json()?["rule_id"].as_str().context("rule_id")?.to_owned();
        ids.push(id);
    }
    Ok(ids)
}

async fn delete_rules(broker: &Broker, ids: &[String]) -> anyhow::Result<()> {
    let mut http = Http::new(broker.admin);
    for id in ids {
        let r = http
            .request("DELETE", &format!("/api/v1/alarm-rules/{id}"), None)
            .await?;
        if r.status != 204 {
            bail!("DELETE alarm rule {id} answered {}: {}", r.status, r.text());
        }
    }
    Ok(())
}

async fn dropped_points(broker: &Broker) -> anyhow::Result<u64> {
    let stats = broker.stats().await?;
    stats["alarms"]["dropped_points"]
        .as_u64()
        .context("no alarms.dropped_points in /api/v1/stats")
}

impl AlarmRuns {
    /// Median persisted points/s of the runs without rules and with them.
    pub fn medians(&self) -> (f64, f64) {
        (median(&self.without), median(&self.with))
    }
}

fn median(runs: &[TelemetryRun]) -> f64 {
    median_of(runs.iter().map(TelemetryRun::persisted_rate).collect())
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Broker CPU per point read while publishing, µs: less swayed than the rate by how
/// much of the machine others leave the broker (they still share its caches).
fn cpu_per_point(runs: &[TelemetryRun]) -> f64 {
    let per_point = |r: &TelemetryRun| {
        r.cpu.broker_total.as_secs_f64() * 1e6 / r.received_in_window.max(1) as f64
    };
    median_of(runs.iter().map(per_point).collect())
}

impl AlarmRuns {
    /// The report's rows: each run, then the medians against the target.
    pub fn rows(&self, out: &mut String) {
        use crate::report::{dagger, int, verdict};
        use std::fmt::Write as _;
        let pairs = self.without.iter().zip(&self.with);
        for (round, (a, b)) in (1..).zip(pairs) {
            let _ = writeln!(
                out,
                "| 2a. telemetry ingest, unpaced, round {round} | {} devices; none vs {} alarm rules | {}{} vs {}{} points/s persisted | – | – | – |",
                int(a.devices as f64),
                self.rules,
                int(a.persisted_rate()),
                dagger(a.cpu.disturbed()),
                int(b.persisted_rate()),
                dagger(b.cpu.disturbed()),
            );
        }
        let (none, with) = self.medians();
        let ratio = with / none.max(1e-9);
        let _ = writeln!(
            out,
            "| 2a. telemetry ingest with {} alarm rules ÷ none | medians of {} unpaced runs each | **{:.3}** ({:+.1} %); {} points not evaluated (evaluator behind) | – | ≤ 10 % lower points/s (≥ 0.90) | {} |",
            self.rules,
            self.with.len(),
            ratio,
            (ratio - 1.0) * 100.0,
            int(self.dropped as f64),
            verdict(ratio >= 0.90 && self.dropped == 0),
        );
        let (none, with) = (cpu_per_point(&self.without), cpu_per_point(&self.with));
        let _ = writeln!(
            out,
            "| 2a. broker CPU per point read while publishing, {} alarm rules vs none | medians of {} unpaced runs each | {:.2} vs {:.2} µs ({:+.1} %) | – | – | – |",
            self.rules,
            self.with.len(),
            with,
            none,
            (with / none.max(1e-9) - 1.0) * 100.0,
        );
    }
}
