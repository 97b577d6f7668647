//! `fleetmq command ...`: send a command (optionally waiting for its outcome), show,
//! list and cancel commands (SPEC §5).

use std::time::Duration;

use clap::Subcommand;
use http::Method;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{enc, Admin, Reply, REQUEST_TIMEOUT};
use super::error::{exit, CliError};
use super::output::{self, cell, print_fields, print_table};

/// The longest `wait_ms` the API takes in one request.
const MAX_SERVER_WAIT: Duration = Duration::from_secs(60);
/// How often a longer `--wait` polls the command after the server-side wait.
const POLL_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Subcommand)]
pub enum CommandAction {
    /// Send a command to a device
    Send {
        /// The device id
        device: String,
        /// The command type, e.g. RELOAD
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Parameters, a JSON object
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
        /// Data for the host application, returned exactly as given (JSON)
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// Wait up to SECS (default 30) for a terminal state; exit 4 unless it completed
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "30")]
        wait: Option<u64>,
        /// Answer timeout per send, seconds [server default: commands.timeout_s]
        #[arg(long, value_name = "SECS")]
        timeout_s: Option<u64>,
        /// Re-sends after a timeout [server default: commands.max_retries]
        #[arg(long, value_name = "N")]
        max_retries: Option<u32>,
        /// How long it may wait for an offline device, seconds [server default: commands.ttl_s]
        #[arg(long, value_name = "SECS")]
        ttl_s: Option<u64>,
        /// Keep older pending commands of the same type instead of superseding them
        #[arg(long)]
        no_supersede: bool,
        /// Repeating a send with the same key returns the first command instead of a new one
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Show one command
    Show {
        #[arg(value_name = "COMMAND_ID")]
        command_id: String,
    },
    /// List a device's commands, newest first
    List {
        device: String,
        /// Only commands in this state (queued, sent, delivered, completed, failed, ...)
        #[arg(long)]
        status: Option<String>,
        /// Commands per page (API default 100, at most 1000)
        #[arg(long)]
        limit: Option<u32>,
        /// Continue from the `next_cursor` of the previous page
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a command that has not reached a terminal state
    Cancel {
        #[arg(value_name = "COMMAND_ID")]
        command_id: String,
    },
}

#[derive(Serialize)]
struct NewCommand<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supersede: Option<bool>,
}

/// The fields `command show` prints, in order.
const COMMAND_FIELDS: &[&str] = &[
    "command_id",
    "device_id",
    "type",
    "status",
    "attempts",
    "params",
    "metadata",
    "created_at",
    "sent_at",
    "delivered_at",
    "completed_at",
    "result",
    "error",
    "late_response",
];

const TERMINAL: &[&str] = &["completed", "failed", "expired", "cancelled", "superseded"];

fn json_arg(flag: &str, text: &str) -> Result<Box<RawValue>, CliError> {
    // Parsed as JSON to refuse typos here; sent byte for byte (metadata comes back exactly).
    RawValue::from_string(text.trim().to_owned())
        .map_err(|e| CliError::Usage(format!("--{flag}: not JSON: {e}")))
}

/// Runs a `command` subcommand; `Ok(code)` is the exit code (4 for a `--wait` that did
/// not end `completed`).
pub async fn run(admin: &Admin, json: bool, action: CommandAction) -> Result<u8, CliError> {
    match action {
        CommandAction::Send {
            device,
            kind,
            params,
            metadata,
            wait,
            timeout_s,
            max_retries,
            ttl_s,
            no_supersede,
            idempotency_key,
        } => {
            let params = params.map(|p| json_arg("params", &p)).transpose()?;
            let metadata = metadata.map(|m| json_arg("metadata", &m)).transpose()?;
            let body = NewCommand {
                kind: &kind,
                params: params.as_deref(),
                metadata: metadata.as_deref(),
                timeout_s,
                max_retries,
                ttl_s,
                supersede: no_supersede.then_some(false),
            };
            let body = serde_json::to_vec(&body).map_err(|e| CliError::Usage(e.to_string()))?;
            let headers: Vec<(&str, String)> = idempotency_key
                .into_iter()
                .map(|k| ("idempotency-key", k))
                .collect();
            send(
                admin,
                json,
                &device,
                body,
                &headers,
                wait.map(Duration::from_secs),
            )
            .await
        }
        CommandAction::Show { command_id } => {
            let reply = admin
                .call(
                    Method::GET,
                    &command_path(&command_id),
                    None,
                    &[],
                    REQUEST_TIMEOUT,
                )
                .await?;
            show(json, &reply)?;
            Ok(exit::OK)
        }
        CommandAction::List {
            device,
            status,
            limit,
            cursor,
        } => {
            let mut query = Vec::new();
            if let Some(status) = &status {
                query.push(format!("status={}", enc(status)));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            if let Some(cursor) = &cursor {
                query.push(format!("cursor={}", enc(cursor)));
            }
            let mut path = format!("/api/v1/devices/{}/commands", enc(&device));
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            let reply = admin
                .call(Method::GET, &path, None, &[], REQUEST_TIMEOUT)
                .await?;
            if json {
                output::print_raw(&reply);
                return Ok(exit::OK);
            }
            let page = reply.json()?;
            let rows: Vec<Vec<String>> = output::items(&page)?
                .iter()
                .map(|c| {
                    vec![
                        cell(c.get("command_id")),
                        cell(c.get("type")),
                        cell(c.get("status")),
                        cell(c.get("attempts")),
                        cell(c.get("created_at")),
                        cell(c.get("completed_at")),
                    ]
                })
                .collect();
            print_table(
                &[
                    "COMMAND ID",
                    "TYPE",
                    "STATUS",
                    "ATTEMPTS",
                    "CREATED",
                    "ENDED",
                ],
                &rows,
            );
            output::next_page_hint(&page);
            Ok(exit::OK)
        }
        CommandAction::Cancel { command_id } => {
            let reply = admin
                .call(
                    Method::DELETE,
                    &command_path(&command_id),
                    None,
                    &[],
                    REQUEST_TIMEOUT,
                )
                .await?;
            show(json, &reply)?;
            Ok(exit::OK)
        }
    }
}

fn command_path(command_id: &str) -> String {
    format!("/api/v1/commands/{}", enc(command_id))
}

fn status_of(record: &Value) -> &str {
    record.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Creates the command; with `wait`, lets the server wait (up to its limit) and then
/// polls until the command is terminal or the wait is over.
async fn send(
    admin: &Admin,
    json: bool,
    device: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
    wait: Option<Duration>,
) -> Result<u8, CliError> {
    let mut path = format!("/api/v1/devices/{}/commands", enc(device));
    let deadline = wait.map(|w| Instant::now() + w);
    let server_wait = wait.map(|w| w.min(MAX_SERVER_WAIT));
    if let Some(w) = server_wait {
        path = format!("{path}?wait_ms={}", w.as_millis());
    }
    let mut reply = admin
        .call(
            Method::POST,
            &path,
            Some(body),
            headers,
            REQUEST_TIMEOUT + server_wait.unwrap_or_default(),
        )
        .await?;
    let Some(deadline) = deadline else {
        show(json, &reply)?;
        return Ok(exit::OK);
    };
    let mut record = reply.json()?;
    while !TERMINAL.contains(&status_of(&record)) && Instant::now() < deadline {
        tokio::time::sleep(POLL_EVERY.min(deadline - Instant::now())).await;
        let id = cell(record.get("command_id"));
        reply = admin
            .call(Method::GET, &command_path(&id), None, &[], REQUEST_TIMEOUT)
            .await?;
        record = reply.json()?;
    }
    show(json, &reply)?;
    let status = status_of(&record);
    if status == "completed" {
        return Ok(exit::OK);
    }
    if TERMINAL.contains(&status) {
        eprintln!(
            "error: command {} ended {status}",
            cell(record.get("command_id"))
        );
    } else {
        eprintln!(
            "error: command {} is still {status} after the wait",
            cell(record.get("command_id"))
        );
    }
    Ok(exit::NOT_COMPLETED)
}

fn show(json: bool, reply: &Reply) -> Result<(), CliError> {
    if json {
        output::print_raw(reply);
    } else {
        print_fields(&reply.json()?, COMMAND_FIELDS);
    }
    Ok(())
}
