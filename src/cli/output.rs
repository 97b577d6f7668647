//! How answers are shown: the API's JSON as it came (`--json`), or tables and
//! `key: value` lines for people.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;

use super::client::Reply;
use super::error::CliError;

/// Writes `text` to stdout. A closed stdout (`fleetmq events | head`) ends the process
/// quietly with exit 0, as other command-line tools do, instead of a panic.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// `println!` through [`emit`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// A JSON value as one cell or value: strings bare, `null` as `-`, the rest compact JSON.
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Prints the body exactly as the API sent it, newline-terminated.
pub fn print_raw(reply: &Reply) {
    let text = String::from_utf8_lossy(&reply.body);
    let text = text.trim_end();
    if !text.is_empty() {
        outln!("{text}");
    }
}

/// Width of the `key:` column, so that consecutive blocks line up.
const KEY_COLUMN: usize = 17;

/// `key: value` lines for the given fields of `object`, skipping absent and `null` ones.
pub fn print_fields(object: &Value, fields: &[&str]) {
    let width = fields
        .iter()
        .map(|f| f.len() + 1)
        .max()
        .unwrap_or(0)
        .max(KEY_COLUMN);
    let mut out = String::new();
    for field in fields {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(value) => {
                let _ = writeln!(out, "{:<width$} {}", format!("{field}:"), cell(Some(value)));
            }
        }
    }
    emit(&out);
}

/// A table with a header row; columns are as wide as their widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = render_row(&widths, headers.iter().copied());
    for row in rows {
        out.push_str(&render_row(&widths, row.iter().map(String::as_str)));
    }
    emit(&out);
}

fn render_row<'a>(widths: &[usize], cells: impl Iterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for (i, (c, w)) in cells.zip(widths).enumerate() {
        if i > 0 {
            text.push_str("  ");
        }
        let _ = write!(text, "{c:<width$}", width = *w);
    }
    let mut line = text.trim_end().to_owned();
    line.push('\n');
    line
}

/// The `items` of a list answer.
pub fn items(page: &Value) -> Result<&Vec<Value>, CliError> {
    page.get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| CliError::Protocol("a list answer without `items`".into()))
}

/// One page of a listing: as it came (`json`), or as a table of `row`s under `headers`;
/// how many rows it had.
pub fn print_page(
    json: bool,
    reply: &Reply,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<usize, CliError> {
    if json {
        print_raw(reply);
        return Ok(0);
    }
    let page = reply.json()?;
    let rows: Vec<Vec<String>> = items(&page)?.iter().map(row).collect();
    print_table(headers, &rows);
    Ok(rows.len())
}

/// Tells on stderr how to get the next page, if there is one.
pub fn next_page_hint(page: &Value) {
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("(more: repeat with --cursor {cursor})");
    }
}

/// Says on stderr that a secret just printed will not be shown again.
pub fn secret_note(note: &str) {
    eprintln!("note: {note}");
}

/// Labels as `k=v,k=v`.
pub fn labels(value: Option<&Value>) -> String {
    match value.and_then(Value::as_object) {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(Some(v))))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_owned(),
    }
}

/// A progress line on stderr, redrawn in place while something is waited for; only
/// when stderr is a terminal (a pipe or a log file gets no `\r` noise).
pub struct Spinner {
    task: Option<tokio::task::JoinHandle<()>>,
    status: tokio::sync::watch::Sender<String>,
}

impl Spinner {
    /// Frames of the spinner, and how often it turns.
    const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
    const TICK: std::time::Duration = std::time::Duration::from_millis(150);

    /// Starts redrawing `what: <status> (<seconds> s)` if stderr is a terminal.
    pub fn start(what: String, status: &str) -> Spinner {
        use std::io::IsTerminal as _;
        let (tx, rx) = tokio::sync::watch::channel(status.to_owned());
        let task = std::io::stderr().is_terminal().then(|| {
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut tick = tokio::time::interval(Self::TICK);
                for frame in Self::FRAMES.iter().cycle() {
                    tick.tick().await;
                    let secs = started.elapsed().as_secs();
                    let line = format!("\r\x1b[2K{frame} {what}: {} ({secs} s)", *rx.borrow());
                    let _ = std::io::stderr().write_all(line.as_bytes());
                }
            })
        });
        Spinner { task, status: tx }
    }

    /// The status shown from now on.
    pub fn set(&self, status: &str) {
        self.status.send_replace(status.to_owned());
    }
}

/// Dropped (done, or an error on the way): stops and erases the line.
impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = std::io::stderr().write_all(b"\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells() {
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Some(&json!(null))), "-");
        assert_eq!(cell(Some(&json!("x"))), "x");
        assert_eq!(cell(Some(&json!({"a": 1}))), r#"{"a":1}"#);
        assert_eq!(
            labels(Some(&json!({"site": "lab", "x": "y"}))),
            "site=lab,x=y"
        );
        assert_eq!(labels(Some(&json!({}))), "-");
    }
}
