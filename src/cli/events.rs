//! `fleetmq events`: tails `GET /api/v1/events` (server-sent events), one line per
//! event, and reconnects with `Last-Event-ID` when the stream drops; `--since ID`
//! first replays the events the broker still buffers after that id. `--history
//! --device ID` lists what a device published on its events topic instead
//! (`GET /api/v1/devices/{id}/events`, the same as `device events`).

use std::time::Duration;

use http::header;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::client::{enc, with_query, Admin};
use super::error::CliError;
use super::output::cell;
use super::output::outln;

/// Without a byte (event or keepalive comment) for this long, the stream counts as dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reconnect delays: the first, and the cap of the doubling.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A line longer than this without a newline is not an event stream.
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only these event types; comma-separated or repeated, `*` as a suffix wildcard (`command.*`)
    #[arg(long = "type", value_name = "PATTERNS", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events of this device
    #[arg(long = "device", value_name = "ID")]
    pub device: Option<String>,
    /// Replay the buffered events after this event id (the `id` of a `--json` line) first
    #[arg(long, value_name = "EVENT_ID", conflicts_with = "history")]
    pub since: Option<String>,
    /// List the device's stored events (`device.event`), newest first, instead of following
    #[arg(long, requires = "device")]
    pub history: bool,
    /// With --history: oldest event, RFC 3339 or unix milliseconds
    #[arg(long, value_name = "TIME", requires = "history")]
    pub from: Option<String>,
    /// With --history: newest event, RFC 3339 or unix milliseconds
    #[arg(long, value_name = "TIME", requires = "history")]
    pub to: Option<String>,
    /// With --history: events per page (API default 100, at most 1000)
    #[arg(long, requires = "history")]
    pub limit: Option<u32>,
    /// With --history: continue from the `next_cursor` of the previous page
    #[arg(long, requires = "history")]
    pub cursor: Option<String>,
}

impl EventsArgs {
    /// `--history` as `device events`' arguments; its `--type` is one exact type (the
    /// device's own `type` field), not a pattern.
    fn history(self) -> Result<super::devices::EventsArgs, CliError> {
        let kind = match self.types.as_slice() {
            [] => None,
            [one] if !one.contains('*') => Some(one.clone()),
            _ => {
                return Err(CliError::Usage(
                    "--history --type takes one exact event type (no list, no `*`)".into(),
                ))
            }
        };
        Ok(super::devices::EventsArgs {
            id: self.device.unwrap_or_default(),
            kind,
            from: self.from,
            to: self.to,
            limit: self.limit,
            cursor: self.cursor,
        })
    }
}

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; `message` when the frame named none.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// A sans-IO `text/event-stream` reader (the WHATWG rules that matter here): bytes in,
/// complete events out; remembers the last event id for `Last-Event-ID`.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    /// `id:` of the event being read; it becomes `last_id` when the event is complete.
    pending_id: Option<String>,
    /// The id of the last complete event, kept across events and reconnects.
    pub last_id: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(event) = self.line_done(&String::from_utf8_lossy(&line)) {
                    events.push(event);
                }
            } else {
                if self.line.len() >= MAX_LINE {
                    return Err(format!("a line longer than {MAX_LINE} bytes"));
                }
                self.line.push(b);
            }
        }
        Ok(events)
    }

    /// Forgets a partly received event (the stream it came from is gone).
    pub fn reset(&mut self) {
        self.line.clear();
        self.event = None;
        self.data.clear();
        self.pending_id = None;
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if let Some(id) = self.pending_id.take() {
                self.last_id = Some(id);
            }
            let event = self.event.take();
            if self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(SseEvent {
                event: event.unwrap_or_else(|| "message".to_owned()),
                data,
            });
        }
        if line.starts_with(':') {
            return None; // a comment, e.g. `: keepalive`
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            "id" if !value.contains('\0') => self.pending_id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

fn events_path(args: &EventsArgs) -> String {
    let mut query = Vec::new();
    if !args.types.is_empty() {
        query.push(format!("type={}", enc(&args.types.join(","))));
    }
    if let Some(device) = &args.device {
        query.push(format!("device_id={}", enc(device)));
    }
    with_query("/api/v1/events", &query)
}

/// Follows the stream until the process is stopped. Returns only on an error that a
/// retry cannot fix: the first connection fails, the key is refused, or the server
/// answers something that is not an event stream.
pub async fn run(admin: &Admin, json: bool, args: EventsArgs) -> Result<(), CliError> {
    if args.history {
        return super::devices::events(admin, json, args.history()?).await;
    }
    let path = events_path(&args);
    let mut parser = SseParser {
        last_id: args.since.clone(),
        ..SseParser::default()
    };
    let mut streamed = false;
    let mut delay = RETRY_FIRST;
    loop {
        let mut headers = vec![(header::ACCEPT.as_str(), "text/event-stream".to_owned())];
        if let Some(id) = &parser.last_id {
            headers.push(("last-event-id", id.clone()));
        }
        match admin.open(&path, &headers).await {
            Ok(response) => {
                let is_sse = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                if !is_sse {
                    return Err(CliError::Protocol(format!(
                        "{path} did not answer with text/event-stream"
                    )));
                }
                streamed = true;
                delay = RETRY_FIRST;
                eprintln!("note: following {}{path}", admin.base());
                let why = follow(response.into_body(), &mut parser, json).await;
                parser.reset();
                eprintln!(
                    "note: event stream from {} ended ({why}); reconnecting",
                    admin.base()
                );
            }
            // Once a stream has worked, a server restart is worth waiting for.
            Err(err @ CliError::Connect { .. }) if streamed => {
                eprintln!("note: {err}; retrying in {} ms", delay.as_millis());
            }
            Err(err) => return Err(err),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// Prints events until the stream ends; returns why it ended.
async fn follow(mut body: Incoming, parser: &mut SseParser, json: bool) -> String {
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => return format!("nothing for {} s", IDLE_TIMEOUT.as_secs()),
            Ok(None) => return "closed by the server".to_owned(),
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(bytes) = frame.into_data() else {
            continue; // trailers
        };
        match parser.push(&bytes) {
            Ok(events) => events.iter().for_each(|e| print_event(e, json)),
            Err(e) => return e,
        }
    }
}

fn print_event(event: &SseEvent, json: bool) {
    if event.event == "gap" {
        eprintln!("warning: some events were missed (gap): {}", event.data);
        return;
    }
    if json {
        outln!("{}", event.data);
        return;
    }
    match serde_json::from_str::<Value>(&event.data) {
        Ok(v) => outln!(
            "{} {} {} {}",
            cell(v.get("at")),
            v.get("type")
                .and_then(Value::as_str)
                .unwrap_or(&event.event),
            cell(v.get("device_id")),
            cell(v.get("data"))
        ),
        Err(_) => outln!("{} {}", event.event, event.data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_comments_and_ids() {
        let mut p = SseParser::default();
        let stream = b": keepalive\n\nid: 7\nevent: device.online\ndata: {\"a\":1}\n\nid: 8\r\nevent: x\r\ndata: 1\r\ndata: 2\r\n\r\n";
        // Split anywhere: the result is the same.
        for cut in [1, 5, 17, stream.len() - 3] {
            let mut p2 = SseParser::default();
            let mut events = p2.push(&stream[..cut]).unwrap();
            events.extend(p2.push(&stream[cut..]).unwrap());
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert_eq!(p2.last_id.as_deref(), Some("8"));
        }
        let events = p.push(stream).unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "device.online".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "x".into(),
                    data: "1\n2".into()
                },
            ]
        );
    }

    #[test]
    fn an_event_cut_off_by_a_drop_is_asked_for_again() {
        let mut p = SseParser::default();
        let events = p
            .push(b"id: 3\nevent: a\ndata: 1\n\nid: 4\ndata: par")
            .unwrap();
        assert_eq!(events.len(), 1);
        p.reset();
        // Event 4 never completed: resume after 3.
        assert_eq!(p.last_id.as_deref(), Some("3"));
        assert!(p.push(b"tial\n\n").unwrap().is_empty());
        assert_eq!(p.last_id.as_deref(), Some("3"));
    }

    #[test]
    fn query_carries_patterns_and_device() {
        let args = EventsArgs {
            types: vec!["command.*".into(), "device.online".into()],
            device: Some("s-1".into()),
            since: None,
            history: false,
            from: None,
            to: None,
            limit: None,
            cursor: None,
        };
        assert_eq!(
            events_path(&args),
            "/api/v1/events?type=command.%2A%2Cdevice.online&device_id=s-1"
        );
    }
}
