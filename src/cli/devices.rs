//! `fleetmq device ...`: provision (one, or many from a file: `device_import`), list, show,
//! delete, rotate credentials and keys, and list what a device published on its events
//! topic.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use http::Method;
use serde::Serialize;
use serde_json::Value;

use super::client::{enc, with_params, with_query, Admin, REQUEST_TIMEOUT};
use super::device_import::{self, ImportArgs};
use super::error::{exit, CliError};
use super::output::outln;
use super::output::{self, cell, print_fields, print_table};

#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Provision a device; prints its MQTT password (and key) once
    Add(AddArgs),
    /// Provision the devices a CSV or JSON file lists (10,000 per request); writes their
    /// passwords (and keys) once, as CSV `id,password,key_generation,key_base64`
    Import(ImportArgs),
    /// List devices with their presence
    List(ListArgs),
    /// Show one device
    Show { id: String },
    /// Delete a device; it is disconnected and its credentials stop working at once
    Rm { id: String },
    /// Issue a new MQTT password; the old one stops working and a live connection is closed
    RotateCredentials { id: String },
    /// Create a new encryption key generation; the previous one stays valid for the grace period
    RotateKey { id: String },
    /// List the events a device published on `device/{id}/events`, newest first
    Events(EventsArgs),
}

/// The arguments of `device events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    pub(super) id: String,
    /// Only events of this type
    #[arg(long = "type", value_name = "TYPE")]
    pub(super) kind: Option<String>,
    /// Oldest event, RFC 3339 or unix milliseconds
    #[arg(long, value_name = "TIME")]
    pub(super) from: Option<String>,
    /// Newest event, RFC 3339 or unix milliseconds
    #[arg(long, value_name = "TIME")]
    pub(super) to: Option<String>,
    /// Events per page (API default 100, at most 1000)
    #[arg(long)]
    pub(super) limit: Option<u32>,
    /// Continue from the `next_cursor` of the previous page
    #[arg(long)]
    pub(super) cursor: Option<String>,
}

/// The arguments of `device add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Device id: [A-Za-z0-9][A-Za-z0-9_.:-]{0,127}
    id: String,
    /// A label, `key=value`; repeat for more
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Encrypt this device's payloads (SPEC §4) even when encryption is off globally
    #[arg(long)]
    encrypted: bool,
    /// How its payloads are read and written [server default: json]
    #[arg(long, value_name = "NAME")]
    plugin: Option<String>,
}

/// The arguments of `device list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only devices that are (true) or are not (false) connected
    #[arg(long, value_name = "true|false")]
    online: Option<bool>,
    /// Only devices with this label, `key:value`; repeat to require several
    #[arg(long = "label", value_name = "KEY:VALUE")]
    labels: Vec<String>,
    /// Devices per page (API default 100, at most 1000)
    #[arg(long)]
    limit: Option<u32>,
    /// Continue after this device id (the `next_cursor` of the previous page)
    #[arg(long)]
    cursor: Option<String>,
}

/// `KEY=VALUE` with a non-empty key (`--label`, and the `labels` column of `device import`).
pub(super) fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

#[derive(Serialize)]
struct NewDevice<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    encrypted: bool,
}

/// The fields `device show` prints, in order.
const DEVICE_FIELDS: &[&str] = &[
    "id",
    "plugin",
    "online",
    "encrypted",
    "key_generation",
    "labels",
    "created_at",
    "connected_at",
    "last_seen",
    "ip",
    "protocol",
    "transport",
    "reported_status",
];

/// Runs a `device` subcommand; returns the exit code.
pub async fn run(admin: &Admin, json: bool, action: DeviceAction) -> Result<u8, CliError> {
    let done = match action {
        DeviceAction::Import(args) => return device_import::run(admin, json, args).await,
        DeviceAction::Add(args) => add(admin, json, args).await,
        DeviceAction::List(args) => list(admin, json, args).await,
        DeviceAction::Show { id } => show(admin, json, &id).await,
        DeviceAction::Rm { id } => rm(admin, json, &id).await,
        DeviceAction::RotateCredentials { id } => {
            let path = format!("{}/rotate-credentials", device_path(&id));
            rotate(admin, json, &path).await
        }
        DeviceAction::RotateKey { id } => {
            let path = format!("{}/rotate-key", device_path(&id));
            rotate(admin, json, &path).await
        }
        DeviceAction::Events(args) => events(admin, json, args).await,
    };
    done.map(|()| exit::OK)
}

/// `device add`: provisions the device and prints it with its new secrets.
async fn add(admin: &Admin, json: bool, args: AddArgs) -> Result<(), CliError> {
    let body = args.body()?;
    let reply = admin
        .call(
            Method::POST,
            "/api/v1/devices",
            Some(body),
            &[],
            REQUEST_TIMEOUT,
        )
        .await?;
    let answer = reply.json()?;
    if json {
        output::print_raw(&reply);
    } else {
        print_device(answer.get("device").unwrap_or(&Value::Null));
        print_secrets(&answer);
    }
    secret_notes(&answer);
    Ok(())
}

impl AddArgs {
    /// The JSON body of the provisioning request.
    fn body(&self) -> Result<Vec<u8>, CliError> {
        let body = NewDevice {
            id: &self.id,
            plugin: self.plugin.as_deref(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            encrypted: self.encrypted,
        };
        serde_json::to_vec(&body).map_err(|e| CliError::Usage(e.to_string()))
    }
}

/// `device list`: one page of devices as a table.
async fn list(admin: &Admin, json: bool, args: ListArgs) -> Result<(), CliError> {
    let reply = admin
        .call(Method::GET, &args.path(), None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let page = reply.json()?;
    let rows: Vec<Vec<String>> = output::items(&page)?.iter().map(list_row).collect();
    print_table(
        &[
            "ID",
            "PRESENCE",
            "PLUGIN",
            "ENCRYPTED",
            "LABELS",
            "LAST SEEN",
        ],
        &rows,
    );
    output::next_page_hint(&page);
    Ok(())
}

impl ListArgs {
    /// The list request's path with its query.
    fn path(&self) -> String {
        let mut query = Vec::new();
        if let Some(online) = self.online {
            query.push(format!("online={online}"));
        }
        for label in &self.labels {
            query.push(format!("label={}", enc(label)));
        }
        if let Some(limit) = self.limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(cursor) = &self.cursor {
            query.push(format!("cursor={}", enc(cursor)));
        }
        with_query("/api/v1/devices", &query)
    }
}

/// One device as a `device list` row, in the order of the table's headers.
fn list_row(device: &Value) -> Vec<String> {
    vec![
        cell(device.get("id")),
        if device.get("online") == Some(&Value::Bool(true)) {
            "online".to_owned()
        } else {
            "offline".to_owned()
        },
        cell(device.get("plugin")),
        cell(device.get("encrypted")),
        output::labels(device.get("labels")),
        cell(device.get("last_seen")),
    ]
}

/// `device show`.
async fn show(admin: &Admin, json: bool, id: &str) -> Result<(), CliError> {
    let reply = admin
        .call(Method::GET, &device_path(id), None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
    } else {
        print_device(&reply.json()?);
    }
    Ok(())
}

/// `device rm`.
async fn rm(admin: &Admin, json: bool, id: &str) -> Result<(), CliError> {
    let reply = admin
        .call(Method::DELETE, &device_path(id), None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
    } else {
        outln!("deleted device {id}");
    }
    Ok(())
}

fn device_path(id: &str) -> String {
    format!("/api/v1/devices/{}", enc(id))
}

async fn rotate(admin: &Admin, json: bool, path: &str) -> Result<(), CliError> {
    let reply = admin
        .call(Method::POST, path, None, &[], REQUEST_TIMEOUT)
        .await?;
    let answer = reply.json()?;
    if json {
        output::print_raw(&reply);
    } else {
        print_secrets(&answer);
    }
    secret_notes(&answer);
    Ok(())
}

fn print_device(device: &Value) {
    // Labels read better as k=v than as a JSON object.
    let mut shown = device.clone();
    if let Some(obj) = shown.as_object_mut() {
        obj.insert(
            "labels".into(),
            Value::String(output::labels(device.get("labels"))),
        );
    }
    print_fields(&shown, DEVICE_FIELDS);
}

/// Credentials and key of a provisioning or rotation answer, as `key: value` lines.
fn print_secrets(answer: &Value) {
    let null = Value::Null;
    if let Some(creds) = answer.get("credentials") {
        print_fields(
            &serde_json::json!({
                "username": creds.get("username").unwrap_or(&null),
                "password": creds.get("password").unwrap_or(&null),
            }),
            &["username", "password"],
        );
    }
    if let Some(key) = answer.get("key") {
        print_fields(
            &serde_json::json!({
                "key_generation": key.get("generation").unwrap_or(&null),
                "key_base64": key.get("base64").unwrap_or(&null),
            }),
            &["key_generation", "key_base64"],
        );
    }
}

fn secret_notes(answer: &Value) {
    if answer.get("credentials").is_some() {
        output::secret_note(
            "the password is shown only this once (the broker keeps only its hash); give it to the device now",
        );
    }
    if answer.get("key").is_some() {
        output::secret_note(
            "the encryption key is shown only this once; the device needs it to seal and open its payloads",
        );
    }
}

/// `device events`: one page of a device's events as a table: when, type, and the
/// payload as one line of JSON.
pub(super) async fn events(admin: &Admin, json: bool, args: EventsArgs) -> Result<(), CliError> {
    let reply = admin
        .call(Method::GET, &args.path(), None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let page = reply.json()?;
    let rows: Vec<Vec<String>> = output::items(&page)?
        .iter()
        .map(|e| vec![cell(e.get("at")), cell(e.get("type")), cell(e.get("data"))])
        .collect();
    print_table(&["AT", "TYPE", "DATA"], &rows);
    output::next_page_hint(&page);
    Ok(())
}

impl EventsArgs {
    /// The list request's path with its query.
    fn path(&self) -> String {
        let params = [
            ("type", self.kind.clone()),
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ];
        with_params(&format!("{}/events", device_path(&self.id)), &params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label("site=lab=1").unwrap(),
            ("site".into(), "lab=1".into())
        );
        assert!(parse_label("site").is_err());
        assert!(parse_label("=x").is_err());
    }
}
