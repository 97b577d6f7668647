//! `fleetmq stats`: the broker's counters (`GET /api/v1/stats`) as a `NAME VALUE`
//! table, nested objects flattened to dotted names (`commands.completed`), so that a
//! counter the API gains shows up without a CLI change.

use http::Method;
use serde_json::Value;

use super::client::{Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::{self, cell, print_table};

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Only the counters whose name starts with this, e.g. `connections` or
    /// `commands.by_status` (the table only: --json prints them all)
    #[arg(value_name = "PREFIX")]
    prefix: Option<String>,
}

pub async fn run(admin: &Admin, json: bool, args: StatsArgs) -> Result<(), CliError> {
    let reply = admin
        .call(Method::GET, "/api/v1/stats", None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let stats = reply.json()?;
    if !stats.is_object() {
        return Err(CliError::Protocol("stats are not a JSON object".into()));
    }
    let mut rows = Vec::new();
    flatten("", &stats, &mut rows);
    if let Some(prefix) = &args.prefix {
        rows.retain(|row| row[0].starts_with(prefix.as_str()));
        if rows.is_empty() {
            return Err(CliError::Usage(format!(
                "no counter's name starts with {prefix:?}"
            )));
        }
    }
    print_table(&["NAME", "VALUE"], &rows);
    Ok(())
}

/// `value`'s leaves as `[dotted.name, value]` rows, by name.
fn flatten(prefix: &str, value: &Value, rows: &mut Vec<Vec<String>>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, inner, rows);
            }
        }
        leaf => rows.push(vec![prefix.to_owned(), cell(Some(leaf))]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_counters_get_dotted_names() {
        let mut rows = Vec::new();
        let stats =
            json!({"connections": 3, "commands": {"completed": 2, "by": {"x": 1}}, "e": {}});
        flatten("", &stats, &mut rows);
        assert_eq!(
            rows,
            [
                ["commands.by.x", "1"],
                ["commands.completed", "2"],
                ["connections", "3"],
                ["e", "{}"],
            ]
        );
    }
}
