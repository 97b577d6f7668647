//! `fleetmq webhook list|add|update|remove|deliveries|retry|discard`: webhook endpoints
//! and their deliveries (SPEC §7, §8 `/api/v1/webhooks`).

use clap::Subcommand;
use http::Method;
use serde_json::{json, Map, Value};

use super::client::{enc, Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::outln;
use super::output::{self, cell, print_table};

#[derive(Debug, Subcommand)]
pub enum WebhookAction {
    /// List webhook endpoints: the config file's (read-only) and the API's
    List,
    /// Create a webhook endpoint; it receives the next matching event
    Add {
        /// http:// or https:// URL to POST events to
        #[arg(id = "endpoint_url", value_name = "URL")]
        url: String,
        /// HMAC-SHA256 key for X-Fleetmq-Signature (never shown again)
        #[arg(long)]
        secret: String,
        /// Event types or prefixes, comma-separated (device.online,command.*); default all
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Create it disabled
        #[arg(long)]
        disabled: bool,
    },
    /// Change a webhook endpoint created through the API
    Update {
        id: String,
        /// Send to this URL instead; what the old URL is owed is given up
        /// (`--url` is the admin API's address)
        #[arg(long = "set-url", id = "endpoint_url", value_name = "URL")]
        url: Option<String>,
        /// A new signing secret
        #[arg(long)]
        secret: Option<String>,
        /// Event types or prefixes, comma-separated; `*` for every type
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Send it events again
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Stop sending it events (what it is owed is kept)
        #[arg(long)]
        disable: bool,
    },
    /// Delete a webhook endpoint; what it is still owed is given up
    Remove { id: String },
    /// List deliveries still owed (pending, failed) or given up (dead)
    Deliveries {
        /// Only this endpoint's deliveries
        #[arg(long)]
        webhook: Option<String>,
        /// pending (never attempted), failed (attempted, will retry) or dead
        #[arg(long)]
        status: Option<String>,
        /// At most this many (one page)
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The page after this cursor (from the previous page)
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Attempt a delivery now (a dead one goes back into its queue)
    Retry { id: String },
    /// Discard a delivery for good
    Discard { id: String },
}

pub async fn run(admin: &Admin, json: bool, action: WebhookAction) -> Result<(), CliError> {
    match action {
        WebhookAction::List => list(admin, json).await,
        WebhookAction::Add {
            url,
            secret,
            events,
            disabled,
        } => {
            let body =
                json!({"url": url, "secret": secret, "events": events, "enabled": !disabled});
            let reply = send(admin, Method::POST, "/api/v1/webhooks", Some(body)).await?;
            show_endpoint(json, &reply, "created")
        }
        WebhookAction::Update {
            id,
            url,
            secret,
            events,
            enable,
            disable,
        } => {
            let body = patch_body(url, secret, events, enable, disable)?;
            let path = format!("/api/v1/webhooks/{}", enc(&id));
            let reply = send(admin, Method::PATCH, &path, Some(body)).await?;
            show_endpoint(json, &reply, "updated")
        }
        WebhookAction::Remove { id } => remove(admin, json, &id).await,
        WebhookAction::Deliveries {
            webhook,
            status,
            limit,
            cursor,
        } => {
            let mut query = vec![format!("limit={limit}")];
            let named = [("webhook", webhook), ("status", status), ("cursor", cursor)];
            for (name, value) in named {
                if let Some(v) = value {
                    query.push(format!("{name}={}", enc(&v)));
                }
            }
            deliveries(admin, json, &query.join("&")).await
        }
        WebhookAction::Retry { id } => retry(admin, json, &id).await,
        WebhookAction::Discard { id } => {
            let path = format!("/api/v1/webhooks/deliveries/{}", enc(&id));
            send(admin, Method::DELETE, &path, None).await?;
            if !json {
                outln!("discarded delivery {id}");
            }
            Ok(())
        }
    }
}

async fn remove(admin: &Admin, json: bool, id: &str) -> Result<(), CliError> {
    let path = format!("/api/v1/webhooks/{}", enc(id));
    send(admin, Method::DELETE, &path, None).await?;
    if !json {
        outln!("removed webhook {id}; what it was owed is given up (listed as dead)");
    }
    Ok(())
}

async fn retry(admin: &Admin, json: bool, id: &str) -> Result<(), CliError> {
    let path = format!("/api/v1/webhooks/deliveries/{}/retry", enc(id));
    let reply = send(admin, Method::POST, &path, None).await?;
    if json {
        output::print_raw(&reply);
    } else {
        outln!("delivery {id} is due now");
    }
    Ok(())
}

async fn send(
    admin: &Admin,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<super::client::Reply, CliError> {
    let body = body.map(|b| b.to_string().into_bytes());
    admin.call(method, path, body, &[], REQUEST_TIMEOUT).await
}

/// The PATCH body; at least one change is required.
fn patch_body(
    url: Option<String>,
    secret: Option<String>,
    events: Option<Vec<String>>,
    enable: bool,
    disable: bool,
) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(url) = url {
        body.insert("url".into(), url.into());
    }
    if let Some(secret) = secret {
        body.insert("secret".into(), secret.into());
    }
    if let Some(events) = events {
        let all = events.len() == 1 && events[0] == "*";
        body.insert(
            "events".into(),
            if all { Value::Null } else { events.into() },
        );
    }
    if enable || disable {
        body.insert("enabled".into(), enable.into());
    }
    if body.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give --set-url, --secret, --events, --enable or --disable".into(),
        ));
    }
    Ok(Value::Object(body))
}

fn show_endpoint(json: bool, reply: &super::client::Reply, what: &str) -> Result<(), CliError> {
    if json {
        output::print_raw(reply);
        return Ok(());
    }
    let view = reply.json()?;
    outln!("{what} webhook {}", cell(view.get("id")));
    output::print_fields(&view, &["url", "events", "enabled"]);
    Ok(())
}

async fn list(admin: &Admin, json: bool) -> Result<(), CliError> {
    let reply = send(admin, Method::GET, "/api/v1/webhooks?limit=1000", None).await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let page = reply.json()?;
    let rows: Vec<Vec<String>> = (output::items(&page)?.iter())
        .map(|e| {
            vec![
                cell(e.get("id")),
                cell(e.get("source")),
                cell(e.get("enabled")),
                events(e.get("events")),
                cell(e.get("url")),
            ]
        })
        .collect();
    print_table(&["ID", "SOURCE", "ENABLED", "EVENTS", "URL"], &rows);
    Ok(())
}

fn events(value: Option<&Value>) -> String {
    match value.and_then(Value::as_array) {
        Some(list) => (list.iter())
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        None => "*".to_owned(),
    }
}

async fn deliveries(admin: &Admin, json: bool, query: &str) -> Result<(), CliError> {
    let path = format!("/api/v1/webhooks/deliveries?{query}");
    let reply = send(admin, Method::GET, &path, None).await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let page = reply.json()?;
    let rows: Vec<Vec<String>> = (output::items(&page)?.iter())
        .map(|d| {
            vec![
                cell(d.get("id")),
                cell(d.get("webhook_id")),
                cell(d.get("status")),
                cell(d.get("attempts")),
                cell(d.get("event_type")),
                cell(d.get("next_attempt_at")),
                cell(d.get("last_error")),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "WEBHOOK",
            "STATUS",
            "ATTEMPTS",
            "EVENT",
            "NEXT TRY",
            "LAST ERROR",
        ],
        &rows,
    );
    output::next_page_hint(&page);
    Ok(())
}
