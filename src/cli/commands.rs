//! `fleetmq command ...`: send a command (optionally waiting for its outcome), show,
//! list and cancel commands (SPEC §5).

use std::time::Duration;

use clap::{Args, Subcommand};
use http::Method;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{enc, with_query, Admin, Reply, REQUEST_TIMEOUT};
use super::error::{exit, CliError};
use super::output::{self, cell, print_fields, print_table};

/// The longest `wait_ms` the API takes in one request.
const MAX_SERVER_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub enum CommandAction {
    /// Send a command to a device
    Send(SendArgs),
    /// Show one command
    Show {
        #[arg(value_name = "COMMAND_ID")]
        command_id: String,
    },
    /// List a device's commands, newest first
    List(ListArgs),
    /// Cancel a command that has not reached a terminal state
    Cancel {
        #[arg(value_name = "COMMAND_ID")]
        command_id: String,
    },
}

/// The arguments of `command send`.
#[derive(Debug, Args)]
pub struct SendArgs {
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
}

/// The arguments of `command list`.
#[derive(Debug, Args)]
pub struct ListArgs {
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
        CommandAction::Send(args) => send(admin, json, args).await,
        CommandAction::Show { command_id } => {
            on_command(admin, json, Method::GET, &command_id).await
        }
        CommandAction::List(args) => list(admin, json, args).await,
        CommandAction::Cancel { command_id } => {
            on_command(admin, json, Method::DELETE, &command_id).await
        }
    }
}

/// `command send`.
async fn send(admin: &Admin, json: bool, args: SendArgs) -> Result<u8, CliError> {
    let body = args.body()?;
    let headers: Vec<(&str, String)> = args
        .idempotency_key
        .into_iter()
        .map(|k| ("idempotency-key", k))
        .collect();
    create(
        admin,
        json,
        &args.device,
        body,
        &headers,
        args.wait.map(Duration::from_secs),
    )
    .await
}

impl SendArgs {
    /// The JSON body of the create request.
    fn body(&self) -> Result<Vec<u8>, CliError> {
        let params = self
            .params
            .as_deref()
            .map(|p| json_arg("params", p))
            .transpose()?;
        let metadata = self
            .metadata
            .as_deref()
            .map(|m| json_arg("metadata", m))
            .transpose()?;
        let body = NewCommand {
            kind: &self.kind,
            params: params.as_deref(),
            metadata: metadata.as_deref(),
            timeout_s: self.timeout_s,
            max_retries: self.max_retries,
            ttl_s: self.ttl_s,
            supersede: self.no_supersede.then_some(false),
        };
        serde_json::to_vec(&body).map_err(|e| CliError::Usage(e.to_string()))
    }
}

/// `command show` (GET) and `command cancel` (DELETE): `method` on one command, then
/// the record it answers.
async fn on_command(
    admin: &Admin,
    json: bool,
    method: Method,
    command_id: &str,
) -> Result<u8, CliError> {
    let reply = admin
        .call(
            method,
            &command_path(command_id),
            None,
            &[],
            REQUEST_TIMEOUT,
        )
        .await?;
    show(json, &reply)?;
    Ok(exit::OK)
}

/// `command list`: one page of a device's commands as a table.
async fn list(admin: &Admin, json: bool, args: ListArgs) -> Result<u8, CliError> {
    let reply = admin
        .call(Method::GET, &args.path(), None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(exit::OK);
    }
    let page = reply.json()?;
    let rows: Vec<Vec<String>> = output::items(&page)?.iter().map(list_row).collect();
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

impl ListArgs {
    /// The list request's path with its query.
    fn path(&self) -> String {
        let mut query = Vec::new();
        if let Some(status) = &self.status {
            query.push(format!("status={}", enc(status)));
        }
        if let Some(limit) = self.limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(cursor) = &self.cursor {
            query.push(format!("cursor={}", enc(cursor)));
        }
        with_query(&device_commands_path(&self.device), &query)
    }
}

/// One command as a `command list` row, in the order of the table's headers.
fn list_row(command: &Value) -> Vec<String> {
    vec![
        cell(command.get("command_id")),
        cell(command.get("type")),
        cell(command.get("status")),
        cell(command.get("attempts")),
        cell(command.get("created_at")),
        cell(command.get("completed_at")),
    ]
}

fn device_commands_path(device: &str) -> String {
    format!("/api/v1/devices/{}/commands", enc(device))
}

fn command_path(command_id: &str) -> String {
    format!("/api/v1/commands/{}", enc(command_id))
}

fn status_of(record: &Value) -> &str {
    record.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Creates the command; with `wait`, says at once which command it waits for (on
/// stderr) and then waits on the server (`GET .../commands/{id}?wait_ms`, up to its
/// limit per request) until the command is terminal or the wait is over.
async fn create(
    admin: &Admin,
    json: bool,
    device: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
    wait: Option<Duration>,
) -> Result<u8, CliError> {
    let path = device_commands_path(device);
    let deadline = wait.map(|w| Instant::now() + w);
    let mut reply = admin
        .call(Method::POST, &path, Some(body), headers, REQUEST_TIMEOUT)
        .await?;
    let Some(deadline) = deadline else {
        show(json, &reply)?;
        return Ok(exit::OK);
    };
    let mut record = reply.json()?;
    let id = cell(record.get("command_id"));
    if !TERMINAL.contains(&status_of(&record)) {
        eprintln!(
            "command {id} for {device} is {}; waiting up to {} s for its outcome",
            status_of(&record),
            wait.unwrap_or_default().as_secs()
        );
    }
    let spinner = output::Spinner::start(format!("waiting for {id}"), status_of(&record));
    while !TERMINAL.contains(&status_of(&record)) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let server_wait = left.min(MAX_SERVER_WAIT);
        let path = format!("{}?wait_ms={}", command_path(&id), server_wait.as_millis());
        reply = admin
            .call(Method::GET, &path, None, &[], REQUEST_TIMEOUT + server_wait)
            .await?;
        record = reply.json()?;
        spinner.set(status_of(&record));
    }
    drop(spinner);
    show(json, &reply)?;
    let status = status_of(&record);
    if status == "completed" {
        return Ok(exit::OK);
    }
    if TERMINAL.contains(&status) {
        eprintln!("error: command {id} ended {status}");
    } else {
        eprintln!("error: command {id} is still {status} after the wait");
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
