//! `fleetmq key create NAME --role R | list | delete NAME` (named admin API keys) and
//! `fleetmq audit [--limit N]` (the audit log of state-changing requests).

use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use serde_json::{json, Value};

use super::client::{enc, Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::outln;
use super::output::{self, cell, print_fields, print_table};

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create a named API key; prints its secret once
    Create {
        /// 1 to 64 characters of A-Z a-z 0-9 . _ -
        name: String,
        /// What it may do: viewer reads; operator also changes devices, commands and
        /// configuration; admin everything, including keys, webhooks and service clients
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List the API keys (never their secrets)
    List,
    /// Revoke a key at once (the last admin key cannot be revoked)
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

/// The arguments of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many entries, newest first
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
}

pub async fn run(admin: &Admin, json: bool, action: KeyAction) -> Result<(), CliError> {
    match action {
        KeyAction::Create { name, role } => create(admin, json, &name, role).await,
        KeyAction::List => list(admin, json).await,
        KeyAction::Delete { name } => {
            let path = format!("/api/v1/keys/{}", enc(&name));
            let reply = admin
                .call(Method::DELETE, &path, None, &[], REQUEST_TIMEOUT)
                .await?;
            if json {
                output::print_raw(&reply);
            } else {
                outln!("revoked {name}");
            }
            Ok(())
        }
    }
}

async fn create(admin: &Admin, json: bool, name: &str, role: Role) -> Result<(), CliError> {
    let role = match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    };
    let body = json!({"name": name, "role": role}).to_string().into_bytes();
    let reply = admin
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(body),
            &[],
            REQUEST_TIMEOUT,
        )
        .await?;
    if json {
        output::print_raw(&reply);
    } else {
        let answer = reply.json()?;
        let key = answer.get("key").unwrap_or(&Value::Null);
        print_fields(key, &["name", "role", "created_at"]);
        print_fields(&answer, &["secret"]);
    }
    output::secret_note("the secret is shown only this once; keep it safe");
    Ok(())
}

/// Every key, following the API's pages.
async fn list(admin: &Admin, json: bool) -> Result<(), CliError> {
    let rows = (admin.every_item(json, "/api/v1/keys", |k| {
        let builtin = k.get("builtin").and_then(Value::as_bool) == Some(true);
        vec![
            cell(k.get("name")),
            cell(k.get("role")),
            cell(k.get("created_at")),
            if builtin { "built-in" } else { "named" }.to_owned(),
        ]
    }))
    .await?;
    if !json {
        print_table(&["NAME", "ROLE", "CREATED", "KIND"], &rows);
    }
    Ok(())
}

/// `audit`: the newest entries of the audit log.
pub async fn audit(admin: &Admin, json: bool, args: AuditArgs) -> Result<(), CliError> {
    let path = format!("/api/v1/audit?limit={}", args.limit);
    let reply = admin
        .call(Method::GET, &path, None, &[], REQUEST_TIMEOUT)
        .await?;
    let headers = ["AT", "KEY", "METHOD", "ROUTE", "TARGET", "STATUS"];
    output::print_page(json, &reply, &headers, |e| {
        ["at", "key", "method", "route", "target", "status"]
            .iter()
            .map(|f| cell(e.get(*f)))
            .collect()
    })?;
    Ok(())
}
