//! `GET /api/v1/events?type=&device_id=&last_event_id=`: fleet events as server-sent
//! events (SPEC §8), the same events webhooks receive, live.
//!
//! Each event is one frame: `id: <event id>`, `event: <type>`, `data: <the webhook body
//! on one line>`. A `: keepalive` comment goes out every `AdminConfig::sse_keepalive`.
//! `Last-Event-ID` (header, or the `last_event_id` parameter for clients that cannot
//! set headers) replays the buffered events after that id before going live; an
//! `event: gap` frame (data `{"last_event_id","oldest_available"}`) says events were
//! lost, either because the id is older than the replay buffer or because this client
//! read too slowly and the broadcast moved on without it. The broker never waits for a
//! stream: a slow reader only loses events. Streams end when the server shuts down.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fleetmq_broker::fleet::events::{EventFilter, FleetEvent, Gap};
use fleetmq_storage::DeviceId;
use http::HeaderMap;
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::query::Query;
use crate::response::ApiResponse;
use crate::AppState;

/// Replayed events are sent in chunks of about this many bytes.
const REPLAY_CHUNK: usize = 32 * 1024;
/// The longest event id accepted in `Last-Event-ID`.
const MAX_EVENT_ID_LEN: usize = 64;

/// `GET /api/v1/events`.
pub(crate) fn stream(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<ApiResponse, ApiError> {
    let query = Query::parse(query, &["type", "device_id", "last_event_id"])?;
    let filter = match query.one("type")? {
        None => EventFilter::any(),
        Some(types) => EventFilter::parse(types.split(',').map(str::trim))
            .map_err(|e| ApiError::BadRequest(format!("invalid `type`: {e}")))?,
    };
    let device = match query.one("device_id")? {
        None => None,
        Some(text) => Some(
            text.parse::<DeviceId>()
                .map_err(|e| ApiError::BadRequest(format!("invalid `device_id`: {e}")))?,
        ),
    };
    let last_event_id = last_event_id(headers, query.one("last_event_id")?)?;
    let resume = state.broker.events().resume(last_event_id.as_deref());
    let feed = Feed {
        filter,
        device,
        gap: resume.gap,
        replay: resume.replay.into(),
        live: resume.live,
        keepalive: keepalive(state.config.sse_keepalive),
        shutdown: state.shutdown.clone(),
        last_sent: last_event_id,
        lagged: None,
    };
    Ok(crate::response::event_stream(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((chunk, feed))
    }))
}

/// The id to resume after: the `Last-Event-ID` header wins over the parameter.
fn last_event_id(headers: &HeaderMap, param: Option<&str>) -> Result<Option<String>, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("invalid `Last-Event-ID`".to_owned()))?,
        ),
        None => None,
    };
    let Some(id) = header.or(param).map(str::trim) else {
        return Ok(None);
    };
    // Browsers send an empty Last-Event-ID when the stream never had an id.
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > MAX_EVENT_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "invalid last event id {id:?}: event ids are hex digits"
        )));
    }
    Ok(Some(id.to_ascii_lowercase()))
}

pub(crate) fn keepalive(period: Duration) -> Interval {
    let period = period.max(Duration::from_millis(1));
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// `data` of a gap frame after a slow read.
#[derive(Serialize)]
struct Lag<'a> {
    last_event_id: Option<&'a str>,
    oldest_available: &'a str,
    /// Events the broadcast dropped for this stream (before filtering).
    missed: u64,
}

/// One client's stream; lives in the response body.
struct Feed {
    filter: EventFilter,
    device: Option<DeviceId>,
    gap: Option<Gap>,
    replay: VecDeque<FleetEvent>,
    live: broadcast::Receiver<FleetEvent>,
    keepalive: Interval,
    shutdown: CancellationToken,
    /// The id of the last event this client was sent (or resumed after).
    last_sent: Option<String>,
    /// Events the broadcast dropped since the last one received.
    lagged: Option<u64>,
}

impl Feed {
    /// The next bytes to send; `None` ends the stream (server shutting down).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        if let Some(gap) = self.gap.take() {
            frame(&mut out, None, "gap", &gap);
        }
        while let Some(event) = self.replay.pop_front() {
            self.push(&mut out, &event);
            if out.len() >= REPLAY_CHUNK {
                break;
            }
        }
        while out.is_empty() {
            // Every branch is cancel-safe; nothing is held across loop turns but `self`.
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                received = self.live.recv() => match received {
                    Ok(event) => {
                        if let Some(missed) = self.lagged.take() {
                            let lag = Lag {
                                last_event_id: self.last_sent.as_deref(),
                                oldest_available: &event.id,
                                missed,
                            };
                            frame(&mut out, None, "gap", &lag);
                        }
                        self.push(&mut out, &event);
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "event stream client too slow; events skipped");
                        *self.lagged.get_or_insert(0) += missed;
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.keepalive.tick() => out.put_slice(b": keepalive\n\n"),
            }
        }
        Some(out.freeze())
    }

    /// Appends `event`'s frame if it passes the filters.
    fn push(&mut self, out: &mut BytesMut, event: &FleetEvent) {
        let device_ok =
            (self.device.as_ref()).is_none_or(|d| event.device_id.as_deref() == Some(d.as_str()));
        if device_ok && self.filter.matches(&event.kind) {
            frame(out, Some(&event.id), &event.kind, event);
            self.last_sent = Some(event.id.clone());
        }
    }
}

/// Appends one SSE frame whose data is `data` as JSON on one line.
pub(crate) fn frame<T: Serialize + ?Sized>(
    out: &mut BytesMut,
    id: Option<&str>,
    kind: &str,
    data: &T,
) {
    let json = match serde_json::to_vec(data) {
        Ok(json) => json,
        Err(error) => {
            tracing::error!(%error, "cannot encode an event for the event stream");
            return;
        }
    };
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\ndata: ");
    // Raw `data` from a device may be pretty-printed; a line break outside a JSON
    // string is whitespace (inside one it is always escaped), so a space keeps the
    // document and the frame intact.
    out.extend(
        json.into_iter()
            .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn frames_are_one_line_of_json() {
        let data: Box<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string("{\n  \"a\": \"x\\ny\"\n}".into()).unwrap();
        let event = FleetEvent {
            id: "0000018f0000000000000001".into(),
            kind: "telemetry".into(),
            at: "2024-01-01T00:00:00.000Z".into(),
            device_id: Some("d1".into()),
            data,
        };
        let mut out = BytesMut::new();
        frame(&mut out, Some(&event.id), &event.kind, &event);
        let text = std::str::from_utf8(&out).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "id: 0000018f0000000000000001");
        assert_eq!(lines[1], "event: telemetry");
        let json: serde_json::Value =
            serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(json["data"]["a"], "x\ny");
        assert_eq!(&lines[3..], ["", ""]);
    }

    #[test]
    fn last_event_id_header_wins_and_is_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h, None).unwrap(), None);
        assert_eq!(
            last_event_id(&h, Some("ABC")).unwrap().as_deref(),
            Some("abc")
        );
        h.insert("last-event-id", HeaderValue::from_static("0a1"));
        assert_eq!(
            last_event_id(&h, Some("abc")).unwrap().as_deref(),
            Some("0a1")
        );
        h.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(last_event_id(&h, None).unwrap(), None);
        h.insert("last-event-id", HeaderValue::from_static("xyz"));
        assert!(last_event_id(&h, None).is_err());
    }
}
