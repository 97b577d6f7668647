//! Backpressure from slow consumers to publishers.
//!
//! A connection whose outbound queue (`outbound.rs`) has more than
//! `mqtt.max_pending_messages` messages waiting is *congested*: it registers the filters
//! of its QoS 1/2 subscriptions here. A publisher's ingress checks every QoS 1/2 PUBLISH
//! against the registry before it routes it (so before the publisher gets its
//! PUBACK/PUBREC) and, when the topic would reach a congested connection other than
//! itself, stops there until the registry changes: its socket is not read any further
//! (acks excepted), so TCP pushes back on the publisher. A congested connection leaves
//! the registry when its queue is back at half the bound, or when it ends (a stuck one is
//! cut after `mqtt.slow_consumer_timeout_s` without progress).
//!
//! Nothing is paid while nobody is congested: the check is one relaxed atomic load.
//!
//! A reader can also fall behind the router without its socket being slow: under a
//! burst the broker's CPU is shared between the devices that publish and the reader
//! that takes it all, and rumqttd's router hands a reader at most 200 messages per
//! wake-up while it appends whatever the devices send; its per-filter log is cut when
//! the reader is four segments behind. A connection the router paused with more to give
//! (`Notification::Unschedule`) while its write buffer has room (`writing.rs`) therefore
//! counts as *lagging* until a batch ends without that, or nothing came for
//! [`LAG_WINDOW`] (the router says nothing when a reader caught up). While any
//! connection lags, other clients' sockets are not read (for at most [`MAX_LAG_PAUSE`]
//! at a time), so the CPU goes to moving the backlog from
//! the router into the reader's buffer. That takes the router's pace, not the reader's
//! socket's: a reader behind a slow socket holds publishers back only until its buffer is
//! full, and then no more (the router's log takes what follows, and is cut for it).
//!
//! rumqttd also takes a link's whole buffer in one event and appends it before it hands
//! anything out. A device is therefore not read either while its shared publisher link
//! holds a backlog the router has not taken (`device_links.rs`), so a router thread that
//! falls behind (a busy machine) never gets one append larger than a filter's log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::Packet;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::link::codec::framing::{self, PublishMeta};
use crate::link::codec::topic;
use crate::link::connection::router_link::RouterLink;
use crate::link::connection::{Connection, Ending};
use crate::link::security::auth::Identity;

/// How long a client's socket is left unread at most while a reader lags.
pub(crate) const MAX_LAG_PAUSE: Duration = Duration::from_millis(100);

/// A lagging reader that took nothing from the router for this long caught up (the
/// router says nothing when it did).
pub(crate) const LAG_WINDOW: Duration = Duration::from_millis(20);

/// How often a client held back by its router link's backlog looks again.
const BACKLOG_RECHECK: Duration = Duration::from_millis(1);

/// Packets a client's own router link may hold that the router has not taken yet, past
/// which the client is not read (as `device_links::PUBLISHER_BACKLOG` for devices).
const OWN_BACKLOG: usize = 500;

/// The congested connections and their QoS 1/2 filters.
pub(crate) struct Congestion {
    /// How many connections are registered; 0 makes [`Congestion::blocks`] free.
    count: AtomicUsize,
    /// How many connections lag behind the router.
    lagging: AtomicUsize,
    /// Connection id → filters (shared subscriptions by their inner filter).
    filters: Mutex<HashMap<u64, Vec<String>>>,
    /// Bumped whenever a connection leaves, so paused publishers check again.
    changed: watch::Sender<u64>,
}

impl Default for Congestion {
    fn default() -> Congestion {
        Congestion {
            count: AtomicUsize::new(0),
            lagging: AtomicUsize::new(0),
            filters: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Congestion {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<String>>> {
        self.filters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connection `conn_id` is congested for messages on `filters`.
    pub(crate) fn enter(&self, conn_id: u64, filters: Vec<String>) {
        let filters = filters
            .into_iter()
            .map(|f| match topic::split_shared(&f) {
                Some((_, inner)) => inner.to_owned(),
                None => f,
            })
            .collect();
        let mut map = self.map();
        map.insert(conn_id, filters);
        self.count.store(map.len(), Ordering::Release);
    }

    /// Connection `conn_id` drained (or ended); publishers it paused check again.
    pub(crate) fn leave(&self, conn_id: u64) {
        {
            let mut map = self.map();
            if map.remove(&conn_id).is_none() {
                return;
            }
            self.count.store(map.len(), Ordering::Release);
        }
        self.bump();
    }

    /// A connection starts or stops lagging behind the router; clients held back look
    /// again once none lags.
    fn lag(&self, lagging: bool) {
        if lagging {
            self.lagging.fetch_add(1, Ordering::AcqRel);
        } else if self.lagging.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.bump();
        }
    }

    /// Tells paused and held clients to look again.
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether some connection lags behind the router.
    pub(crate) fn lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire) > 0
    }

    /// A receiver that sees every [`Congestion::leave`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether a QoS 1/2 message from connection `publisher` on `topic_name` must wait:
    /// it matches a filter of a congested connection other than the publisher (a
    /// connection is never paused by its own congestion).
    pub(crate) fn blocks(&self, publisher: u64, topic_name: &str) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.map().iter().any(|(&conn, filters)| {
            conn != publisher && filters.iter().any(|f| topic::matches(f, topic_name))
        })
    }
}

impl Connection {
    /// After a batch from the router: whether this connection now lags behind it (the
    /// router paused it with more to give, and its write buffer has room for more).
    pub(crate) fn set_lagging(&mut self, unscheduled: bool) {
        let lagging = unscheduled && !self.out_full();
        if lagging != self.write.lagging {
            self.write.lagging = lagging;
            self.core.congestion.lag(lagging);
        }
    }

    /// Until when this client's socket is left unread, if it is: a device's while its
    /// publisher link holds a backlog the router has not taken (`device_links.rs`;
    /// looked at again every millisecond), and any publisher's while some other reader
    /// lags behind the router, for at most [`MAX_LAG_PAUSE`] after it was last read.
    pub(crate) fn held_until(&self) -> Option<Instant> {
        let backlogged = match &self.s.link {
            RouterLink::Own(own) => own.tx.buffer().len() >= OWN_BACKLOG,
            _ if matches!(self.s.identity, Identity::Device(_)) => {
                self.core.device_links.backlogged(&self.s.router_key)
            }
            _ => false,
        };
        if backlogged {
            return Some(Instant::now() + BACKLOG_RECHECK);
        }
        if self.write.lagging {
            // A lagging reader itself is never held: it reads its acknowledgements.
            return None;
        }
        if !self.core.congestion.lagging() {
            return None;
        }
        let until = self.last_read + MAX_LAG_PAUSE;
        (Instant::now() < until).then_some(until)
    }

    /// Whether a PUBLISH must wait: QoS 1/2 on a topic a congested connection other than
    /// this one subscribed to. Checked before the publish is routed, so its PUBACK/PUBREC
    /// waits too.
    pub(crate) fn must_wait(&mut self, packet: &Packet, meta: Option<PublishMeta>) -> bool {
        let (Packet::Publish(publish, props), Some(meta)) = (packet, meta) else {
            return false;
        };
        if meta.qos == 0 {
            return false;
        }
        // Seen before checking, so a connection leaving in between wakes us.
        self.congestion_rx.borrow_and_update();
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        let Ok(raw) = std::str::from_utf8(&publish.topic) else {
            return false;
        };
        match self.aliases.peek(raw, alias) {
            Some(topic) => self.core.congestion.blocks(self.s.conn_id, topic),
            None => false,
        }
    }

    /// Handles the waiting PUBLISH if its subscribers are no longer congested.
    pub(crate) async fn retry_stalled(&mut self) -> Result<(), Ending> {
        let Some((packet, meta)) = self.stalled.take().map(|b| *b) else {
            return Ok(());
        };
        if self.must_wait(&packet, meta) {
            self.stalled = Some(Box::new((packet, meta)));
            return Ok(());
        }
        // The client could not be read while it waited: its keepalive starts over.
        self.last_read = Instant::now();
        self.packet(packet, meta).await
    }

    /// While a PUBLISH waits: handles the acks (PUBACK, PUBREC, PUBCOMP) and PINGREQs
    /// among the buffered frames, so a paused publisher's own subscriptions keep
    /// draining; everything else stays in order behind the waiting PUBLISH.
    pub(crate) async fn acks_while_stalled(&mut self) -> Result<(), Ending> {
        let max = self.core.max_packet();
        let mut rest = std::mem::take(&mut self.read_buf);
        let mut keep = BytesMut::with_capacity(rest.len());
        let mut acks = Vec::new();
        loop {
            match framing::peek(&rest, max) {
                Ok(Some(frame)) if matches!(frame.packet_type(), 4 | 5 | 7 | 12) => {
                    let bytes = rest.split_to(frame.len);
                    acks.push((frame, bytes));
                }
                Ok(Some(frame)) => keep.extend_from_slice(&rest.split_to(frame.len)),
                // Incomplete or bad: left for the normal path once the PUBLISH is through.
                Ok(None) | Err(_) => break,
            }
        }
        keep.extend_from_slice(&rest);
        self.read_buf = keep;
        for (frame, bytes) in acks {
            let packet_type = frame.packet_type();
            match framing::decode(self.s.version, frame, bytes, max) {
                Ok(packet) => {
                    self.packet_in(packet_type);
                    self.packet(packet, None).await?;
                }
                Err(e) => return Err(self.frame_error(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_only_matching_topics_of_other_connections_until_they_leave() {
        let c = Congestion::default();
        assert!(!c.blocks(1, "a/b"));
        c.enter(2, vec!["a/#".into(), "$share/g/x/+".into()]);
        let mut rx = c.subscribe();
        rx.borrow_and_update();
        assert!(c.blocks(1, "a/b"));
        assert!(
            c.blocks(1, "x/y"),
            "shared subscriptions by their inner filter"
        );
        assert!(!c.blocks(1, "b/c"));
        assert!(!c.blocks(2, "a/b"), "never paused by its own congestion");
        c.leave(2);
        assert!(rx.has_changed().unwrap_or(false));
        assert!(!c.blocks(1, "a/b"));
    }
}
