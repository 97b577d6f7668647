//! `fleetmq subscribe --api FILTER`: follows `GET /api/v1/subscribe` (server-sent
//! events of the MQTT messages the broker routes), printing each message as the MQTT
//! path does. It reconnects when the stream drops; what was routed meanwhile is missed,
//! and said so on stderr, as are messages the server dropped for a slow reader.

use std::time::Duration;

use base64::Engine as _;
use http::header;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use super::client::{enc, Admin};
use super::error::CliError;
use super::events::{SseEvent, SseParser};

/// Without a byte (message or keepalive comment) for this long, the stream counts as dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Message {
    topic: String,
    qos: u8,
    retain: bool,
    payload_base64: String,
}

/// Prints messages until `count` of them came (or forever); errors that a retry cannot
/// fix (refused key or filter, not an event stream) end it.
pub async fn run(
    admin: &Admin,
    filter: &str,
    json: bool,
    count: Option<u64>,
) -> Result<(), CliError> {
    let path = format!("/api/v1/subscribe?filter={}", enc(filter));
    let mut printed = 0u64;
    let mut streamed = false;
    loop {
        let headers = [(header::ACCEPT.as_str(), "text/event-stream".to_owned())];
        match admin.open(&path, &headers).await {
            Ok(response) => {
                streamed = true;
                let why = follow(response.into_body(), json, count, &mut printed).await?;
                if count.is_some_and(|n| printed >= n) {
                    return Ok(());
                }
                eprintln!(
                    "note: the stream from {} ended ({why}); reconnecting, messages routed meanwhile are missed",
                    admin.base()
                );
            }
            Err(err @ CliError::Connect { .. }) if streamed => eprintln!("note: {err}; retrying"),
            Err(err) => return Err(err),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Prints messages until the stream ends (or `count` is reached); returns why it ended.
async fn follow(
    mut body: Incoming,
    json: bool,
    count: Option<u64>,
    printed: &mut u64,
) -> Result<String, CliError> {
    let mut parser = SseParser::default();
    loop {
        if count.is_some_and(|n| *printed >= n) {
            return Ok("enough messages".into());
        }
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => return Ok(format!("nothing for {} s", IDLE_TIMEOUT.as_secs())),
            Ok(None) => return Ok("closed by the server".into()),
            Ok(Some(Err(e))) => return Ok(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(bytes) = frame.into_data() else {
            continue;
        };
        for event in parser.push(&bytes).map_err(CliError::Protocol)? {
            if count.is_some_and(|n| *printed >= n) {
                break;
            }
            *printed += u64::from(handle(&event, json)?);
        }
    }
}

/// Prints one event; whether it was a message.
fn handle(event: &SseEvent, json: bool) -> Result<bool, CliError> {
    match event.event.as_str() {
        "subscribed" => eprintln!("note: subscribed through the admin API: {}", event.data),
        "dropped" => eprintln!(
            "warning: the server dropped messages for this slow reader: {}",
            event.data
        ),
        "message" => {
            let bad = |e: String| CliError::Protocol(format!("a message event: {e}"));
            let m: Message = serde_json::from_str(&event.data).map_err(|e| bad(e.to_string()))?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(&m.payload_base64)
                .map_err(|e| bad(e.to_string()))?;
            super::subscribe::print_message(&m.topic, m.qos, m.retain, &payload, json);
            return Ok(true);
        }
        _ => {}
    }
    Ok(false)
}
