//! `fleetmq config set|get DEVICE`: a device's versioned configuration (SPEC §6).

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::client::{enc, Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::outln;
use super::output::{self, cell};

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Store a new config version and publish it to the device (retained, QoS 1)
    Set {
        device: String,
        /// A JSON object, or @FILE to read it from a file (@- reads standard input)
        #[arg(value_name = "JSON|@FILE")]
        document: String,
    },
    /// Show the device's current config version and the version it reported
    Get { device: String },
}

pub async fn run(admin: &Admin, json: bool, action: ConfigAction) -> Result<(), CliError> {
    let (method, device, body) = match action {
        ConfigAction::Set { device, document } => {
            let text = read_config_arg(&document).await?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("config {document:?}: not JSON: {e}")))?;
            if !value.is_object() {
                return Err(CliError::Usage(format!(
                    "config {document:?}: must be a JSON object"
                )));
            }
            (Method::PUT, device, Some(text.into_bytes()))
        }
        ConfigAction::Get { device } => (Method::GET, device, None),
    };
    let path = format!("/api/v1/devices/{}/config", enc(&device));
    let set = body.is_some();
    let reply = admin
        .call(method, &path, body, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let view = reply.json()?;
    if set {
        outln!(
            "stored config version {} for {device}; published retained on device/{device}/config",
            cell(view.get("version"))
        );
        return Ok(());
    }
    output::print_fields(&view, &["version", "reported_version"]);
    let config = view.get("config").unwrap_or(&Value::Null);
    let pretty = serde_json::to_string_pretty(config).unwrap_or_else(|_| config.to_string());
    outln!("config:\n{pretty}");
    Ok(())
}

/// The argument itself, or the contents of `@file` (`@-`: standard input).
pub(super) async fn read_config_arg(arg: &str) -> Result<String, CliError> {
    let Some(path) = arg.strip_prefix('@') else {
        return Ok(arg.to_owned());
    };
    let read = if path == "-" {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut text)
            .await
            .map(|_| text)
    } else {
        tokio::fs::read_to_string(path).await
    };
    read.map_err(|e| CliError::Usage(format!("cannot read {path}: {e}")))
}
