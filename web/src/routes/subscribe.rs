//! `GET /api/v1/subscribe?filter=<MQTT topic filter>`: the MQTT messages the broker
//! routes whose topic matches the filter, live, as server-sent events. For watching a
//! fleet from the dashboard or `fleetmq subscribe`; not a delivery guarantee.
//!
//! Frames: `event: subscribed` first (`{"filter","queue"}`, the tap is open), then one
//! `event: message` per message (`{"topic","qos","retain","at","client_id","size",
//! "payload_base64","payload"}`; `payload` is the text when it is UTF-8, else `null`),
//! `event: dropped` (`{"dropped": n}`) when messages were dropped because this stream
//! read too slowly, and `: keepalive` comments. The broker never waits for a stream.
//!
//! It reads message contents, so it needs the `operator` role (`router.rs`). It is a
//! tap in fleetmq's routing (`fleetmq_broker::Tap`), not a router subscription: at most
//! `MAX_TAPS` streams at once (`429` past that), each closed when its client goes.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use fleetmq_broker::{Tap, TapError, TappedMessage, TAP_QUEUE};
use serde::Serialize;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::ApiResponse;
use crate::routes::events::{frame, keepalive};
use crate::time::rfc3339_ms;
use crate::AppState;

/// Messages sent in one chunk at most, when many are waiting.
const BATCH: usize = 64;

/// `GET /api/v1/subscribe`.
pub(crate) fn stream(state: &AppState, query: Option<&str>) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["filter"])?;
    let Some(filter) = query.one("filter")? else {
        return Err(ApiError::BadRequest(
            "query parameter `filter` is required (an MQTT topic filter, e.g. `devices/#`)".into(),
        ));
    };
    let tap = state.broker.tap(filter).map_err(|e| match e {
        TapError::TooMany { open } => ApiError::TooManyRequests {
            message: e.to_string(),
            depth: open,
        },
        other => ApiError::Unprocessable(format!(
            "{other}: give an MQTT topic filter such as `a/+/c` or `a/#` (not a shared one)"
        )),
    })?;
    tracing::info!(filter, "live subscription opened");
    let mut first = BytesMut::new();
    let hello = serde_json::json!({"filter": filter, "queue": TAP_QUEUE});
    frame(&mut first, None, "subscribed", &hello);
    let feed = Feed {
        tap,
        first: Some(first.freeze()),
        keepalive: keepalive(state.config.sse_keepalive),
        shutdown: state.shutdown.clone(),
    };
    Ok(crate::response::event_stream(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((chunk, feed))
    }))
}

/// One stream; lives in the response body, and its tap with it.
struct Feed {
    tap: Tap,
    first: Option<Bytes>,
    keepalive: Interval,
    shutdown: CancellationToken,
}

impl Feed {
    /// The next bytes to send; `None` ends the stream (server shutting down).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut out = BytesMut::new();
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return None,
            received = self.tap.recv() => {
                let msg = received?;
                self.push_dropped(&mut out);
                push(&mut out, &msg);
                for _ in 1..BATCH {
                    let Some(msg) = self.tap.try_recv() else { break };
                    push(&mut out, &msg);
                }
            }
            _ = self.keepalive.tick() => {
                self.push_dropped(&mut out);
                if out.is_empty() {
                    out.extend_from_slice(b": keepalive\n\n");
                }
            }
        }
        Some(out.freeze())
    }

    fn push_dropped(&self, out: &mut BytesMut) {
        let dropped = self.tap.take_dropped();
        if dropped > 0 {
            frame(
                out,
                None,
                "dropped",
                &serde_json::json!({"dropped": dropped}),
            );
        }
    }
}

/// A message as the stream shows it.
#[derive(Serialize)]
struct MessageView<'a> {
    topic: &'a str,
    qos: u8,
    retain: bool,
    at: String,
    /// The publishing MQTT client; `null` for the broker's own (API, config, commands).
    client_id: Option<&'a str>,
    size: usize,
    payload_base64: String,
    /// The payload as text when it is valid UTF-8.
    payload: Option<&'a str>,
}

fn push(out: &mut BytesMut, msg: &TappedMessage) {
    let view = MessageView {
        topic: &msg.topic,
        qos: msg.qos,
        retain: msg.retain,
        at: rfc3339_ms(msg.at_ms),
        client_id: msg.client_id.as_deref(),
        size: msg.payload.len(),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(&msg.payload),
        payload: std::str::from_utf8(&msg.payload).ok(),
    };
    frame(out, None, "message", &view);
}
