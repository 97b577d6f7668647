//! `fleetmq telemetry DEVICE`: a device's stored telemetry, newest first
//! (`GET /api/v1/devices/{id}/telemetry`), or the newest value of every key
//! (`--latest`, `GET .../telemetry/latest`) (SPEC §6).

use http::Method;
use serde_json::Value;

use super::client::{enc, with_params, Admin, REQUEST_TIMEOUT};
use super::error::CliError;
use super::output::{self, cell, print_table};

#[derive(Debug, clap::Args)]
pub struct TelemetryArgs {
    /// The device id
    device: String,
    /// Only the newest value of every key (one row per key)
    #[arg(long, conflicts_with_all = ["from", "to", "limit", "cursor"])]
    latest: bool,
    /// Only these keys, comma-separated
    #[arg(long, value_delimiter = ',', value_name = "KEYS")]
    keys: Vec<String>,
    /// Oldest point, RFC 3339 or unix milliseconds
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Newest point, RFC 3339 or unix milliseconds
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Points per page (API default 100, at most 1000)
    #[arg(long)]
    limit: Option<u32>,
    /// Continue from the `next_cursor` of the previous page
    #[arg(long)]
    cursor: Option<String>,
}

impl TelemetryArgs {
    fn path(&self) -> String {
        let device = format!("/api/v1/devices/{}/telemetry", enc(&self.device));
        if self.latest {
            return format!("{device}/latest");
        }
        let keys = (!self.keys.is_empty()).then(|| self.keys.join(","));
        let params = [
            ("keys", keys),
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ];
        with_params(&device, &params)
    }
}

/// Prints one page of points (`TS` and one column per key), or with `--latest` one
/// `KEY VALUE TS` row per key.
pub async fn run(admin: &Admin, json: bool, args: TelemetryArgs) -> Result<(), CliError> {
    let reply = admin
        .call(Method::GET, &args.path(), None, &[], REQUEST_TIMEOUT)
        .await?;
    if json {
        output::print_raw(&reply);
        return Ok(());
    }
    let answer = reply.json()?;
    if args.latest {
        let values = (answer.get("values").and_then(Value::as_object))
            .ok_or_else(|| CliError::Protocol("a latest answer without `values`".into()))?;
        let keep = |key: &String| args.keys.is_empty() || args.keys.contains(key);
        let rows: Vec<Vec<String>> = (values.iter().filter(|(k, _)| keep(k)))
            .map(|(k, v)| vec![k.clone(), cell(v.get("value")), cell(v.get("ts"))])
            .collect();
        print_table(&["KEY", "VALUE", "TS"], &rows);
        return Ok(());
    }
    let points = output::items(&answer)?;
    let (headers, rows) = point_table(points);
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    print_table(&headers, &rows);
    output::next_page_hint(&answer);
    Ok(())
}

/// `TS` and the union of the points' keys (in first-seen order) as columns; a point
/// without a key shows `-` there.
fn point_table(points: &[Value]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut keys: Vec<String> = Vec::new();
    for point in points {
        for key in point
            .get("values")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if !keys.contains(key.0) {
                keys.push(key.0.clone());
            }
        }
    }
    let rows = (points.iter())
        .map(|p| {
            let values = p.get("values");
            let mut row = vec![cell(p.get("ts"))];
            row.extend(keys.iter().map(|k| cell(values.and_then(|v| v.get(k)))));
            row
        })
        .collect();
    let mut headers = vec!["TS".to_owned()];
    headers.extend(keys);
    (headers, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TelemetryArgs,
    }

    #[test]
    fn paths() {
        let path = |line: &[&str]| Cli::parse_from(line).args.path();
        assert_eq!(
            path(&["t", "s/1", "--keys", "cpu,temp", "--limit", "5"]),
            "/api/v1/devices/s%2F1/telemetry?keys=cpu%2Ctemp&limit=5"
        );
        assert_eq!(
            path(&["t", "s-1", "--latest"]),
            "/api/v1/devices/s-1/telemetry/latest"
        );
        assert!(Cli::try_parse_from(["t", "s", "--latest", "--limit", "1"]).is_err());
    }

    #[test]
    fn points_become_columns() {
        let points = [
            json!({"ts": "b", "values": {"cpu": 2}}),
            json!({"ts": "a", "values": {"cpu": 1, "temp": 20.5}}),
        ];
        let (headers, rows) = point_table(&points);
        assert_eq!(headers, ["TS", "cpu", "temp"]);
        assert_eq!(rows, [["b", "2", "-"], ["a", "1", "20.5"]]);
    }
}
