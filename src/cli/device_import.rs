//! `fleetmq device import FILE`: provisions the devices a CSV or JSON file lists through
//! `POST /api/v1/devices/bulk`, at most [`PER_REQUEST`] per request, and writes what they
//! need to connect, which the API shows only once, as CSV: to stdout or to a new file
//! created with mode 0600 (`--out`; never overwritten).
//!
//! - JSON: an array of `{id, plugin?, labels?, encrypted?}`, or `{"devices":[...]}` (the
//!   request body itself). Items are sent as they are; the API checks them.
//! - CSV (RFC 4180, with a header row): columns `id` (required), `plugin`, `labels`,
//!   `encrypted`, in any order. `labels` is `key=value` pairs separated by `;` (the
//!   `--label KEY=VALUE` of `device add`), `encrypted` is `true`/`false` (or `1`/`0`,
//!   `yes`/`no`; empty is false), an empty `plugin` is the server's default.
//!
//! Output: `id,password,key_generation,key_base64` per created device (the key columns
//! empty when its payloads are not encrypted), or with `--json` each answer as it came,
//! one per line. Items the API refused go to stderr with their line (CSV) or item number
//! (JSON); then the exit code is 1.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use http::Method;
use serde_json::{json, Map, Value};

use super::client::Admin;
use super::error::{exit, CliError};
use super::output;

/// Devices per request: the API's limit.
pub const PER_REQUEST: usize = 10_000;
/// How long one request of [`PER_REQUEST`] devices may take (about a second is usual).
const BULK_TIMEOUT: Duration = Duration::from_secs(120);

/// The arguments of `device import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A `.csv` (header `id,plugin,labels,encrypted`; labels as `k=v;k2=v2`) or `.json`
    /// (`[{"id":...},...]` or `{"devices":[...]}`) file
    file: PathBuf,
    /// Write the credentials to this new file (mode 0600) instead of stdout
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// The devices of an input file, each with where it came from (`line 3`, `item 3`).
struct Listed {
    devices: Vec<Value>,
    origins: Vec<String>,
}

/// `device import`: exit 0 when every device was created, 1 when the API refused some.
pub async fn run(admin: &Admin, json: bool, args: ImportArgs) -> Result<u8, CliError> {
    let listed = read_file(&args.file)?;
    let mut sink = Sink::open(args.out.as_deref())?;
    if !json {
        sink.write("id,password,key_generation,key_base64\n")?;
    }
    let total = listed.devices.len();
    let chunks = total.div_ceil(PER_REQUEST);
    let (mut created, mut refused) = (0, 0);
    for (n, chunk) in listed.devices.chunks(PER_REQUEST).enumerate() {
        let body = serde_json::to_vec(&json!({ "devices": chunk }))
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let reply = admin
            .call(
                Method::POST,
                "/api/v1/devices/bulk",
                Some(body),
                &[],
                BULK_TIMEOUT,
            )
            .await
            .inspect_err(|_| {
                eprintln!(
                    "note: request {} of {chunks} failed; {created} devices were created before it",
                    n + 1
                );
            })?;
        let answer = reply.json()?;
        if json {
            sink.write(&format!(
                "{}\n",
                String::from_utf8_lossy(&reply.body).trim_end()
            ))?;
        } else {
            sink.write(&credential_rows(&answer)?)?;
        }
        created += answer["created"].as_array().map_or(0, Vec::len);
        refused += report_errors(&answer, &listed.origins[n * PER_REQUEST..]);
    }
    eprintln!("created {created} of {total} devices");
    if created > 0 {
        output::secret_note(
            "the passwords (and keys) are shown only this once; the broker keeps only hashes",
        );
    }
    Ok(if refused > 0 { exit::API } else { exit::OK })
}

/// The CSV rows of an answer's `created` devices.
fn credential_rows(answer: &Value) -> Result<String, CliError> {
    let created = answer["created"]
        .as_array()
        .ok_or_else(|| CliError::Protocol("a bulk answer without `created`".into()))?;
    let mut rows = String::new();
    for item in created {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let fields = [
            text(&item["credentials"]["username"]),
            text(&item["credentials"]["password"]),
            text(&item["key"]["generation"]),
            text(&item["key"]["base64"]),
        ];
        let fields: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        rows.push_str(&fields.join(","));
        rows.push('\n');
    }
    Ok(rows)
}

/// Prints each refused item to stderr; returns how many there were.
fn report_errors(answer: &Value, origins: &[String]) -> usize {
    let Some(errors) = answer["errors"].as_array() else {
        return 0;
    };
    for e in errors {
        let origin = e["index"]
            .as_u64()
            .and_then(|i| origins.get(usize::try_from(i).ok()?))
            .map_or("?", String::as_str);
        let id = e["id"].as_str().unwrap_or("-");
        let code = e["error"]["code"].as_str().unwrap_or("?");
        let message = e["error"]["message"].as_str().unwrap_or("");
        eprintln!("error: {origin} ({id}): {message} ({code})");
    }
    errors.len()
}

/// Where the credentials go.
enum Sink {
    Stdout,
    File(File, PathBuf),
}

impl Sink {
    fn open(out: Option<&Path>) -> Result<Sink, CliError> {
        let Some(path) = out else {
            return Ok(Sink::Stdout);
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                CliError::Usage(format!(
                    "--out {}: {e} (a new file is required: its passwords are shown only once)",
                    path.display()
                ))
            })?;
        Ok(Sink::File(file, path.to_owned()))
    }

    fn write(&mut self, text: &str) -> Result<(), CliError> {
        match self {
            Sink::Stdout => {
                output::emit(text);
                Ok(())
            }
            Sink::File(file, path) => file
                .write_all(text.as_bytes())
                .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display()))),
        }
    }
}

fn read_file(path: &Path) -> Result<Listed, CliError> {
    let fail = |reason: String| CliError::Usage(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_json = match extension.as_deref() {
        Some("json") => true,
        Some("csv") => false,
        _ => text.trim_start().starts_with(['[', '{']),
    };
    let listed = if is_json {
        parse_json(text)
    } else {
        parse_csv(text)
    }
    .map_err(fail)?;
    if listed.devices.is_empty() {
        return Err(fail("lists no devices".into()));
    }
    Ok(listed)
}

fn parse_json(text: &str) -> Result<Listed, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let devices = match value {
        Value::Array(items) => items,
        Value::Object(mut map) if map.len() == 1 && map.contains_key("devices") => {
            match map.remove("devices") {
                Some(Value::Array(items)) => items,
                _ => return Err("`devices` is not an array".into()),
            }
        }
        _ => return Err(r#"expected an array of devices or {"devices":[...]}"#.into()),
    };
    let origins = (1..=devices.len()).map(|i| format!("item {i}")).collect();
    Ok(Listed { devices, origins })
}

/// The columns a CSV file may have.
const COLUMNS: [&str; 4] = ["id", "plugin", "labels", "encrypted"];

fn parse_csv(text: &str) -> Result<Listed, String> {
    let mut records = records(text)?.into_iter();
    let Some((_, header)) = records.next() else {
        return Ok(Listed {
            devices: Vec::new(),
            origins: Vec::new(),
        });
    };
    let header: Vec<String> = header
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for (i, name) in header.iter().enumerate() {
        if !COLUMNS.contains(&name.as_str()) {
            return Err(format!(
                "line 1: unknown column {name:?}; the columns are {}",
                COLUMNS.join(",")
            ));
        }
        if header[..i].contains(name) {
            return Err(format!("line 1: column {name:?} appears twice"));
        }
    }
    if !header.iter().any(|h| h == "id") {
        return Err("line 1: the header has no `id` column".into());
    }
    let (mut devices, mut origins) = (Vec::new(), Vec::new());
    for (line, fields) in records {
        if fields.len() != header.len() {
            return Err(format!(
                "line {line}: {} fields, the header has {}",
                fields.len(),
                header.len()
            ));
        }
        let device = csv_device(&header, &fields).map_err(|e| format!("line {line}: {e}"))?;
        devices.push(device);
        origins.push(format!("line {line}"));
    }
    Ok(Listed { devices, origins })
}

/// One CSV row as the API's device object.
fn csv_device(header: &[String], fields: &[String]) -> Result<Value, String> {
    let mut device = Map::new();
    for (name, field) in header.iter().zip(fields) {
        let field = field.trim();
        match name.as_str() {
            "id" if field.is_empty() => return Err("empty id".into()),
            "id" | "plugin" if !field.is_empty() => {
                device.insert(name.clone(), Value::String(field.to_owned()));
            }
            "labels" if !field.is_empty() => {
                device.insert(name.clone(), csv_labels(field)?);
            }
            "encrypted" => match field.to_ascii_lowercase().as_str() {
                "" | "false" | "0" | "no" => {}
                "true" | "1" | "yes" => {
                    device.insert(name.clone(), Value::Bool(true));
                }
                other => return Err(format!("encrypted {other:?}: expected true or false")),
            },
            _ => {}
        }
    }
    Ok(Value::Object(device))
}

/// `k=v;k2=v2` as a JSON object; the same `KEY=VALUE` rule as `device add --label`.
fn csv_labels(field: &str) -> Result<Value, String> {
    let mut labels = Map::new();
    for pair in field.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = super::devices::parse_label(pair)?;
        if labels.insert(key.clone(), Value::String(value)).is_some() {
            return Err(format!("label {key:?} appears twice"));
        }
    }
    Ok(Value::Object(labels))
}

/// A CSV field, quoted when it has to be (ids, passwords and base64 keys never do).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The records of RFC 4180 CSV text, each with the line it starts on (from 1): fields
/// split at `,`, records at LF or CRLF, a field in `"` may hold those and `""` for a
/// quote. Blank lines are skipped.
fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut out = Vec::new();
    let (mut fields, mut field) = (Vec::new(), String::new());
    let (mut line, mut start, mut quoted) = (1, 1, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => quoted = true,
            '\n' if quoted => {
                line += 1;
                field.push(c);
            }
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            '\r' if !quoted && chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                push_record(&mut out, start, std::mem::take(&mut fields));
                line += 1;
                start = line;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {start}: a quoted field is not closed"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        push_record(&mut out, start, fields);
    }
    Ok(out)
}

fn push_record(out: &mut Vec<(usize, Vec<String>)>, line: usize, fields: Vec<String>) {
    let blank = fields.len() == 1 && fields[0].trim().is_empty();
    if !blank {
        out.push((line, fields));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_follow_rfc_4180() {
        let text = "id,labels\r\na,\"x=1;y=\"\"2\"\"\"\n\n\"b\nc\",z=3\nd,";
        let got = records(text).unwrap();
        assert_eq!(
            got,
            vec![
                (1, vec!["id".to_owned(), "labels".to_owned()]),
                (2, vec!["a".to_owned(), "x=1;y=\"2\"".to_owned()]),
                (4, vec!["b\nc".to_owned(), "z=3".to_owned()]),
                (6, vec!["d".to_owned(), String::new()]),
            ]
        );
        assert!(records("id\n\"open").unwrap_err().contains("line 2"));
    }

    #[test]
    fn csv_rows_become_device_objects() {
        let text = "ID, labels ,encrypted,plugin\ns-1,site=lab;floor=2,true,\ns-2,,,json\n";
        let listed = parse_csv(text).unwrap();
        assert_eq!(
            listed.devices,
            vec![
                json!({"id": "s-1", "labels": {"site": "lab", "floor": "2"}, "encrypted": true}),
                json!({"id": "s-2", "plugin": "json"}),
            ]
        );
        assert_eq!(listed.origins, ["line 2", "line 3"]);
    }

    #[test]
    fn bad_csv_names_the_line() {
        for (text, want) in [
            ("id,colour\na,red\n", "unknown column \"colour\""),
            ("plugin\njson\n", "no `id` column"),
            ("id,id\na,a\n", "twice"),
            ("id,labels\na,b=1\nc\n", "line 3: 1 fields"),
            (
                "id,labels\na,novalue\n",
                "line 2: \"novalue\": expected KEY=VALUE",
            ),
            ("id,encrypted\na,maybe\n", "line 2: encrypted \"maybe\""),
            ("id\n\n \n,\n", "line 4"),
        ] {
            let err = parse_csv(text).err().unwrap_or_default();
            assert!(err.contains(want), "{text:?}: {err:?}");
        }
    }

    #[test]
    fn json_is_the_array_or_the_request_body() {
        let items = json!([{"id": "a"}, {"id": "b", "x": 1}]);
        let listed = parse_json(&items.to_string()).unwrap();
        assert_eq!(Value::Array(listed.devices), items);
        assert_eq!(listed.origins, ["item 1", "item 2"]);
        let body = json!({ "devices": items }).to_string();
        assert_eq!(parse_json(&body).unwrap().devices.len(), 2);
        for bad in [r#"{"devices":1}"#, r#"{"devices":[],"x":1}"#, "7", "{"] {
            assert!(parse_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_csv_rows() {
        let answer = json!({"created": [
            {"device": {"id": "a"}, "credentials": {"username": "a", "password": "p1"}},
            {"device": {"id": "b"}, "credentials": {"username": "b", "password": "p2"},
             "key": {"generation": 1, "base64": "AAA="}},
        ], "errors": []});
        assert_eq!(credential_rows(&answer).unwrap(), "a,p1,,\nb,p2,1,AAA=\n");
        assert_eq!(csv_field("x,\"y\""), "\"x,\"\"y\"\"\"");
    }
}
