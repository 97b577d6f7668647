//! `fleetmq clients [show ID | kick ID]`: the MQTT clients connected right now, one
//! with its subscriptions and counters.

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::client::{enc, Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::outln;
use super::output::{self, cell, print_fields, print_table};

#[derive(Debug, Subcommand)]
pub enum ClientsAction {
    /// Show one client with its subscriptions and counters
    Show {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
    },
    /// Disconnect a client (a device may reconnect with its credentials)
    Kick {
        #[arg(value_name = "CLIENT_ID")]
        client_id: String,
    },
}

pub async fn run(admin: &Admin, json: bool, action: Option<ClientsAction>) -> Result<(), CliError> {
    match action {
        None => list(admin, json).await,
        Some(ClientsAction::Show { client_id }) => show(admin, json, &client_id).await,
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

/// One client: what it is, its counters, then its subscriptions.
async fn show(admin: &Admin, json: bool, client_id: &str) -> Result<(), CliError> {
    let path = format!("/api/v1/clients/{}", enc(client_id));
    let reply = admin
        .call(Method::GET, &path, None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let client = reply.json()?;
    print_fields(
        &client,
        &[
            "client_id",
            "kind",
            "username",
            "protocol",
            "transport",
            "peer",
            "keepalive_s",
            "clean_start",
            "session_persistent",
            "session_expiry_s",
        ],
    );
    if let Some(counters) = client.get("counters").filter(|c| !c.is_null()) {
        print_counters(counters);
    }
    let subs = client.get("subscriptions").and_then(Value::as_array);
    let rows: Vec<Vec<String>> = subs.into_iter().flatten().map(subscription_row).collect();
    if rows.is_empty() {
        outln!("subscriptions:    none");
    } else {
        print_table(
            &[
                "FILTER",
                "QOS",
                "NO LOCAL",
                "RETAIN AS PUB",
                "RETAIN HANDLING",
                "SUB ID",
                "SHARE GROUP",
            ],
            &rows,
        );
    }
    Ok(())
}

/// Counters as `name: value` lines, drops by cause on one.
fn print_counters(counters: &Value) {
    print_fields(
        counters,
        &[
            "messages_in",
            "messages_out",
            "bytes_in",
            "bytes_out",
            "inflight_out",
            "inflight_in",
            "queued_out",
        ],
    );
    let drops = counters.get("dropped_by_cause").and_then(Value::as_object);
    let text: Vec<String> = (drops.into_iter().flatten())
        .map(|(cause, n)| format!("{cause}={n}"))
        .collect();
    let text = if text.is_empty() {
        "none".to_owned()
    } else {
        text.join(", ")
    };
    print_fields(&serde_json::json!({ "dropped": text }), &["dropped"]);
}

fn subscription_row(sub: &Value) -> Vec<String> {
    [
        "filter",
        "qos",
        "no_local",
        "retain_as_published",
        "retain_handling",
        "subscription_id",
        "share_group",
    ]
    .iter()
    .map(|f| cell(sub.get(*f)))
    .collect()
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
