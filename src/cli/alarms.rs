//! `fleetmq alarm list [filters] | ack ID | rules` (SPEC §11).

use clap::{Subcommand, ValueEnum};
use http::Method;
use serde_json::Value;

use super::client::{enc, with_query, Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::outln;
use super::output::{self, cell, print_fields, print_table};

#[derive(Debug, Subcommand)]
pub enum AlarmAction {
    /// List alarms, newest first
    List {
        /// Only active or only cleared alarms
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Only this device's alarms
        #[arg(long)]
        device: Option<String>,
        /// Only this severity
        #[arg(long, value_enum)]
        severity: Option<Severity>,
        /// Only acknowledged (true) or unacknowledged (false) alarms
        #[arg(long)]
        acknowledged: Option<bool>,
        /// How many, at most
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Continue after a previous page
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Acknowledge an alarm (idempotent)
    Ack { alarm_id: String },
    /// List the alarm rules
    Rules,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    Active,
    Cleared,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Severity {
    Critical,
    Major,
    Minor,
    Warning,
}

const ALARM_FIELDS: [&str; 8] = [
    "alarm_id",
    "severity",
    "name",
    "device_id",
    "status",
    "acknowledged",
    "raised_at",
    "source",
];

pub async fn run(admin: &Admin, json: bool, action: AlarmAction) -> Result<(), CliError> {
    match action {
        AlarmAction::List {
            status,
            device,
            severity,
            acknowledged,
            limit,
            cursor,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(s) = status {
                query.push(format!("status={}", name(s)));
            }
            if let Some(d) = device {
                query.push(format!("device={}", enc(&d)));
            }
            if let Some(s) = severity {
                query.push(format!("severity={}", name(s)));
            }
            if let Some(a) = acknowledged {
                query.push(format!("acknowledged={a}"));
            }
            if let Some(c) = cursor {
                query.push(format!("cursor={}", enc(&c)));
            }
            list(admin, json, &with_query("/api/v1/alarms", &query)).await
        }
        AlarmAction::Ack { alarm_id } => {
            let path = format!("/api/v1/alarms/{}/ack", enc(&alarm_id));
            let reply = admin
                .call(
                    Method::POST,
                    &path,
                    Some(b"{}".to_vec()),
                    &[],
                    REQUEST_TIMEOUT,
                )
                .await?;
            if json {
                output::print_raw(&reply);
            } else {
                print_fields(
                    &reply.json()?,
                    &[&ALARM_FIELDS[..], &["acknowledged_at"]].concat(),
                );
            }
            Ok(())
        }
        AlarmAction::Rules => rules(admin, json).await,
    }
}

/// A value enum as the API spells it.
fn name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

async fn list(admin: &Admin, json: bool, path: &str) -> Result<(), CliError> {
    let reply = admin
        .call(Method::GET, path, None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let page = reply.json()?;
    let rows: Vec<Vec<String>> = (output::items(&page)?.iter())
        .map(|a| ALARM_FIELDS.iter().map(|f| cell(a.get(*f))).collect())
        .collect();
    let headers = [
        "ID", "SEVERITY", "NAME", "DEVICE", "STATUS", "ACKED", "RAISED", "SOURCE",
    ];
    print_table(&headers, &rows);
    output::next_page_hint(&page);
    Ok(())
}

/// A condition in one line: `temp > 80 for 30 s`, `offline 60 s`.
fn condition(c: Option<&Value>) -> String {
    let Some(c) = c.filter(|c| c.is_object()) else {
        return "-".to_owned();
    };
    if let Some(n) = c.get("offline_for_s") {
        return format!("offline {n} s");
    }
    let text = format!(
        "{} {} {}",
        cell(c.get("key")),
        cell(c.get("op")),
        cell(c.get("value"))
    );
    match c.get("for_s").and_then(Value::as_u64) {
        Some(s) if s > 0 => format!("{text} for {s} s"),
        _ => text,
    }
}

async fn rules(admin: &Admin, json: bool) -> Result<(), CliError> {
    let reply = admin
        .call(
            Method::GET,
            "/api/v1/alarm-rules",
            None,
            &[],
            REQUEST_TIMEOUT,
        )
        .await?;
    let headers = ["ID", "NAME", "SEVERITY", "TARGET", "CONDITION", "CLEAR"];
    let shown = output::print_page(json, &reply, &headers, |r| {
        vec![
            cell(r.get("rule_id")),
            cell(r.get("name")),
            cell(r.get("severity")),
            r.get("target").map(Value::to_string).unwrap_or_default(),
            condition(r.get("condition")),
            condition(r.get("clear")),
        ]
    })?;
    if !json && shown == 0 {
        outln!("(no alarm rules)");
    }
    Ok(())
}
