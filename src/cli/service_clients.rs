//! `fleetmq service-client add|update|list|show|delete`: MQTT users for host
//! applications and their ACL rules (`/api/v1/service-clients`, admin role). `update`
//! replaces the rules (applied at once to its connected clients) and/or the password
//! (which closes its connections).

use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use super::client::{enc, Admin, Reply, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::{self, cell, outln, print_fields, print_table};

const PATH: &str = "/api/v1/service-clients";

#[derive(Debug, Subcommand)]
pub enum ServiceClientAction {
    /// Create a service client (an MQTT username and password with ACL rules)
    Add {
        /// Its MQTT username (also the client id it must use)
        name: String,
        /// Its MQTT password, at least 8 characters (the broker keeps only a hash)
        #[arg(long, env = "FLEETMQ_SERVICE_CLIENT_PASSWORD", hide_env_values = true)]
        password: String,
        /// A rule `allow|deny:publish|subscribe|all:FILTER`, repeated in order (first
        /// match wins; no match is denied). `%c`/`%u` in the filter are the client id/username
        #[arg(long = "rule", value_name = "RULE", value_parser = parse_rule)]
        rules: Vec<Value>,
    },
    /// Replace a service client's rules (its connected clients get them at once) and/or
    /// its password (its connections are closed)
    Update {
        name: String,
        /// The new rules, as for `add`, repeated in order; they replace every rule
        #[arg(long = "rule", value_name = "RULE", value_parser = parse_rule)]
        rules: Vec<Value>,
        /// Remove every rule (it may then neither publish nor subscribe)
        #[arg(long, conflicts_with = "rules")]
        no_rules: bool,
        /// A new password of your choice, at least 8 characters
        #[arg(long, conflicts_with = "rotate_password")]
        password: Option<String>,
        /// Have the broker generate a new password, printed once
        #[arg(long)]
        rotate_password: bool,
    },
    /// List service clients with their rules
    List,
    /// Show one service client and its rules in order
    Show { name: String },
    /// Delete a service client; its open connections are closed
    #[command(visible_alias = "rm")]
    Delete { name: String },
}

/// `allow:publish:site/#` → `{"action":"publish","topic":"site/#","allow":true}`.
fn parse_rule(text: &str) -> Result<Value, String> {
    let mut parts = text.splitn(3, ':');
    let (Some(effect), Some(action), Some(topic)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("expected allow|deny:publish|subscribe|all:FILTER".into());
    };
    let allow = match effect {
        "allow" => true,
        "deny" => false,
        other => return Err(format!("{other:?}: expected allow or deny")),
    };
    if !matches!(action, "publish" | "subscribe" | "all") {
        return Err(format!("{action:?}: expected publish, subscribe or all"));
    }
    Ok(json!({"action": action, "topic": topic, "allow": allow}))
}

pub async fn run(admin: &Admin, json: bool, action: ServiceClientAction) -> Result<(), CliError> {
    match action {
        ServiceClientAction::Add {
            name,
            password,
            rules,
        } => {
            if rules.is_empty() {
                eprintln!(
                    "note: {name} has no rules: it may neither publish nor subscribe (add --rule)"
                );
            }
            let body = json!({"name": name, "password": password, "rules": rules});
            let body = Some(body.to_string().into_bytes());
            let reply = (admin.call(Method::POST, PATH, body, &[], REQUEST_TIMEOUT)).await?;
            show(json, &reply.json()?, &reply, "created")
        }
        ServiceClientAction::Update {
            name,
            rules,
            no_rules,
            password,
            rotate_password,
        } => {
            let rules = (no_rules || !rules.is_empty()).then_some(rules);
            update(admin, json, &name, rules, password, rotate_password).await
        }
        ServiceClientAction::List => {
            let rows = admin.every_item(json, PATH, row).await?;
            if !json {
                print_table(&["NAME", "RULES", "CREATED"], &rows);
            }
            Ok(())
        }
        ServiceClientAction::Show { name } => {
            // No GET route for one: it is found in the listing.
            let found = (admin.all_items(PATH).await?.into_iter())
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name.as_str()));
            match found {
                Some(client) if json => {
                    outln!("{client}");
                    Ok(())
                }
                Some(client) => show_client(&client),
                None => Err(CliError::Api {
                    status: 404,
                    code: "not_found".into(),
                    message: format!("service client {name:?} not found"),
                }),
            }
        }
        ServiceClientAction::Delete { name } => {
            let path = format!("{PATH}/{}", enc(&name));
            (admin.call(Method::DELETE, &path, None, &[], REQUEST_TIMEOUT)).await?;
            if !json {
                outln!("deleted service client {name}; its connections were closed");
            }
            Ok(())
        }
    }
}

/// `service-client update`: what is given changes; a generated password is printed once.
async fn update(
    admin: &Admin,
    json: bool,
    name: &str,
    rules: Option<Vec<Value>>,
    password: Option<String>,
    rotate_password: bool,
) -> Result<(), CliError> {
    let mut body = serde_json::Map::new();
    if let Some(rules) = rules {
        body.insert("rules".into(), Value::Array(rules));
    }
    if let Some(password) = password {
        body.insert("password".into(), Value::String(password));
    }
    if rotate_password {
        body.insert("rotate_password".into(), Value::Bool(true));
    }
    if body.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give --rule, --no-rules, --password or --rotate-password".into(),
        ));
    }
    let path = format!("{PATH}/{}", enc(name));
    let body = Some(Value::Object(body).to_string().into_bytes());
    let reply = (admin.call(Method::PATCH, &path, body, &[], REQUEST_TIMEOUT)).await?;
    let client = reply.json()?;
    show(json, &client, &reply, "updated")?;
    if let (false, Some(new)) = (json, client.get("password").and_then(Value::as_str)) {
        outln!("password:         {new}");
        outln!("(shown once: the broker keeps only its hash; its connections were closed)");
    }
    Ok(())
}

fn row(client: &Value) -> Vec<String> {
    vec![
        cell(client.get("name")),
        rules_text(client.get("rules")),
        cell(client.get("created_at")),
    ]
}

/// Rules as `allow:publish:a/#,deny:all:#`, the form `--rule` takes.
fn rules_text(rules: Option<&Value>) -> String {
    let rules = rules.and_then(Value::as_array).map(Vec::as_slice);
    let text: Vec<String> = (rules.unwrap_or_default().iter())
        .map(|r| {
            let effect = if r.get("allow") == Some(&Value::Bool(true)) {
                "allow"
            } else {
                "deny"
            };
            format!(
                "{effect}:{}:{}",
                cell(r.get("action")),
                cell(r.get("topic"))
            )
        })
        .collect();
    if text.is_empty() {
        "- (denied everything)".to_owned()
    } else {
        text.join(",")
    }
}

fn show(json: bool, client: &Value, reply: &Reply, what: &str) -> Result<(), CliError> {
    if json {
        output::print_raw(reply);
        return Ok(());
    }
    outln!("{what} service client {}", cell(client.get("name")));
    show_client(client)
}

fn show_client(client: &Value) -> Result<(), CliError> {
    print_fields(client, &["name", "created_at"]);
    let rules = client.get("rules").and_then(Value::as_array);
    let rows: Vec<Vec<String>> = (rules.map(Vec::as_slice).unwrap_or_default().iter())
        .enumerate()
        .map(|(i, r)| {
            let allow = r.get("allow") == Some(&Value::Bool(true));
            vec![
                (i + 1).to_string(),
                if allow { "allow" } else { "deny" }.to_owned(),
                cell(r.get("action")),
                cell(r.get("topic")),
            ]
        })
        .collect();
    if rows.is_empty() {
        outln!("rules:            none: it may neither publish nor subscribe");
    } else {
        print_table(&["#", "EFFECT", "ACTION", "TOPIC"], &rows);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        let rule = parse_rule("allow:subscribe:device/+/telemetry").unwrap();
        assert_eq!(
            rule,
            json!({"action": "subscribe", "topic": "device/+/telemetry", "allow": true})
        );
        assert_eq!(parse_rule("deny:all:a:b").unwrap()["topic"], "a:b");
        for bad in ["allow:publish", "maybe:all:#", "allow:read:#"] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
        let rules = json!([rule, parse_rule("deny:all:#").unwrap()]);
        assert_eq!(
            rules_text(Some(&rules)),
            "allow:subscribe:device/+/telemetry,deny:all:#"
        );
    }
}
