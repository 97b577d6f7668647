//! `fleetmq clients [kick ID]`: the MQTT clients connected right now.

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::client::{enc, Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::outln;
use super::output::{self, cell, print_table};

#[derive(Debug, Subcommand)]
pub enum ClientsAction {
    /// Disconnect a client (a device may reconnect with its credentials)
    Kick {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
    },
}

pub async fn run(admin: &Admin, json: bool, action: Option<ClientsAction>) -> Result<(), CliError> {
    match action {
        None => list(admin, json).await,
        Some(ClientsAction::Kick { client_id }) => {
            let path = format!("/api/v1/clients/{}", enc(&client_id));
            let reply = admin
                .call(Method::DELETE, &path, None, &[], REQUEST_TIMEOUT)
                .await?;
            if json {
                output::print_raw(&reply);
            } else {
                outln!("disconnected {client_id}");
            }
            Ok(())
        }
    }
}

/// Every connected client, following the API's pages.
async fn list(admin: &Admin, json: bool) -> Result<(), CliError> {
    let rows = admin.every_item(json, "/api/v1/clients", row).await?;
    if !json {
        print_table(
            &[
                "CLIENT ID",
                "KIND",
                "USERNAME",
                "PROTOCOL",
                "TRANSPORT",
                "PEER",
                "CONNECTED",
            ],
            &rows,
        );
    }
    Ok(())
}

fn row(client: &Value) -> Vec<String> {
    let connected = client
        .get("connected_at_ms")
        .and_then(Value::as_i64)
        .and_then(fleetmq_device_plugins::rfc3339::format_utc_ms)
        .unwrap_or_else(|| "-".to_owned());
    vec![
        cell(client.get("client_id")),
        cell(client.get("kind")),
        cell(client.get("username")),
        cell(client.get("protocol")),
        cell(client.get("transport")),
        cell(client.get("peer")),
        connected,
    ]
}
