//! What the router forgets about a message, carried through it as a fixed header in
//! front of the payload: the QoS it was published with (rumqttd delivers at the
//! subscription QoS, `routing.rs` ~1564), the connection that published it (No Local),
//! when it arrived (Message Expiry Interval), and for QoS 1/2 its arrival number at the
//! session check (`session::store`), which is the message's slot in every persistent
//! session's stored queue, and a number unique to the message, by which a connection
//! whose subscriptions overlap knows the router's copies of one message. Ingress writes the header while it
//! builds the routed PUBLISH (which copies the payload anyway), egress splits it off
//! without copying; a client can never set or see it.
//!
//! It used to travel as a v5 user property: an allocated property list and a formatted
//! string per message, cloned again by the router for every filter and every delivery
//! and parsed at egress. The header costs none of that.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use rumqttd::protocol::{Publish, PublishProperties};

use crate::link::codec::framing::{self, PublishMeta};

/// First byte of the header: a message routed without one is a bug, and shows as such.
const MAGIC: u8 = 0xF1;
/// Magic, QoS, flags (bit 0: an arrival number follows), publishing connection (u64),
/// arrival in unix ms (u64), arrival number (u64, 0 without one), message number (u64);
/// big-endian.
pub(crate) const HEADER_LEN: usize = 1 + 1 + 1 + 8 + 8 + 8 + 8;
const HAS_ARRIVAL: u8 = 1;

/// The next routed message's number; one counter for the process, so numbers never
/// repeat while a copy of a message can still be on its way.
static NEXT_MESSAGE: AtomicU64 = AtomicU64::new(1);

/// A message's origin as ingress saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// QoS of the PUBLISH that brought the message in.
    pub(crate) qos: u8,
    /// The publishing connection (0: the broker itself).
    pub(crate) conn_id: u64,
    /// Arrival, unix milliseconds.
    pub(crate) at_ms: u64,
    /// Its number at the parked-session check (`SessionStore::enqueue_matching`);
    /// QoS 1/2 messages only.
    pub(crate) arrival: Option<u64>,
    /// Unique per routed message (written by [`Routing::new`]; 0 before): every copy the
    /// router makes of it, one per matching filter, carries the same number.
    pub(crate) message: u64,
}

impl Origin {
    /// A message arriving now from connection `conn_id` (0: the broker) at `qos`.
    pub(crate) fn now(qos: u8, conn_id: u64) -> Origin {
        Origin {
            qos,
            conn_id,
            at_ms: fleetmq_storage::now_ms(),
            arrival: None,
            message: 0,
        }
    }

    /// The header that goes in front of the routed payload.
    pub(crate) fn header(self) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[0] = MAGIC;
        h[1] = self.qos;
        h[2] = if self.arrival.is_some() {
            HAS_ARRIVAL
        } else {
            0
        };
        h[3..11].copy_from_slice(&self.conn_id.to_be_bytes());
        h[11..19].copy_from_slice(&self.at_ms.to_be_bytes());
        h[19..27].copy_from_slice(&self.arrival.unwrap_or(0).to_be_bytes());
        h[27..35].copy_from_slice(&self.message.to_be_bytes());
        h
    }

    /// `payload` behind `self`'s header, in one buffer.
    #[cfg(test)]
    pub(crate) fn prefix(self, payload: &[u8]) -> Bytes {
        let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
        b.extend_from_slice(&self.header());
        b.extend_from_slice(payload);
        b.into()
    }

    /// Splits the header off a routed payload, leaving the client's payload. `None`
    /// (payload untouched) when it carries none.
    pub(crate) fn take(payload: &mut Bytes) -> Option<Origin> {
        if payload.len() < HEADER_LEN || payload[0] != MAGIC {
            tracing::error!("routed message without its origin header");
            return None;
        }
        let mut h = payload.split_to(HEADER_LEN);
        h.advance(1);
        let qos = h.get_u8();
        let flags = h.get_u8();
        let conn_id = h.get_u64();
        let at_ms = h.get_u64();
        let arrival = h.get_u64();
        let message = h.get_u64();
        Some(Origin {
            qos,
            conn_id,
            at_ms,
            arrival: (flags & HAS_ARRIVAL != 0).then_some(arrival),
            message,
        })
    }
}

/// A PUBLISH and its properties as they go to the router.
pub(crate) type Routed = (Publish, Option<PublishProperties>);

/// A PUBLISH for the router, built (the one copy of topic and payload) but not yet
/// frozen: its header's arrival number is written by the parked-session check, under
/// its lock, which also keeps a reference-counted copy for connected persistent
/// sessions (`session::ledger`).
pub(crate) struct Routing {
    buf: BytesMut,
    header_at: usize,
    properties: Option<PublishProperties>,
}

impl Routing {
    pub(crate) fn new(
        meta: PublishMeta,
        topic: &str,
        origin: Origin,
        payload: &[u8],
        properties: Option<PublishProperties>,
    ) -> Routing {
        let header = Origin {
            arrival: None,
            message: NEXT_MESSAGE.fetch_add(1, Ordering::Relaxed),
            ..origin
        }
        .header();
        Routing {
            buf: framing::encode_prefixed(meta, topic.as_bytes(), &header, payload),
            header_at: 5 + topic.len(),
            properties,
        }
    }

    /// Writes the arrival number (QoS 1/2) and freezes the PUBLISH.
    pub(crate) fn finish(mut self, arrival: Option<u64>) -> Routed {
        if let Some(arrival) = arrival {
            let h = &mut self.buf[self.header_at..self.header_at + HEADER_LEN];
            h[2] |= HAS_ARRIVAL;
            h[19..27].copy_from_slice(&arrival.to_be_bytes());
        }
        (Publish::deserialize(self.buf.freeze()), self.properties)
    }
}

/// The Message Expiry Interval left at `now_ms` of a message that expires at
/// `expires_at_ms`, or `None` when it ran out [MQTT-3.3.2-5, -6].
pub(crate) fn remaining_expiry(expires_at_ms: u64, now_ms: u64) -> Option<u32> {
    if expires_at_ms <= now_ms {
        return None;
    }
    // Rounded up: a message with 300 ms left still says 1 s, never 0.
    Some(u32::try_from((expires_at_ms - now_ms).div_ceil(1000)).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_take_round_trip_and_leave_the_payload_alone() {
        let o = Origin {
            qos: 2,
            conn_id: u64::MAX - 7,
            at_ms: 1_700_000_000_123,
            arrival: Some(99),
            message: 1 << 40,
        };
        let mut routed = o.prefix(b"{\"cpu\":40}");
        assert_eq!(routed.len(), HEADER_LEN + 10);
        assert_eq!(Origin::take(&mut routed), Some(o));
        assert_eq!(&routed[..], b"{\"cpu\":40}");
        let mut empty = o.prefix(b"");
        assert_eq!(Origin::take(&mut empty), Some(o));
        assert!(empty.is_empty());
        let qos0 = Origin { arrival: None, ..o };
        assert_eq!(Origin::take(&mut qos0.prefix(b"x")), Some(qos0));
    }

    #[test]
    fn routing_numbers_the_header_of_the_built_publish() {
        let o = Origin {
            qos: 1,
            conn_id: 7,
            at_ms: 1_700_000_000_000,
            arrival: None,
            message: 0,
        };
        let meta = PublishMeta {
            qos: 1,
            pkid: 9,
            dup: false,
            retain: false,
        };
        let (mut p, props) = Routing::new(meta, "a/b", o, b"x", None).finish(Some(41));
        assert!(props.is_none());
        assert_eq!(&p.topic[..], b"a/b");
        assert_eq!(framing::meta_of(&p), meta);
        let got = Origin::take(&mut p.payload).expect("header");
        assert_eq!(got.arrival, Some(41));
        assert_ne!(got.message, 0, "numbered when built");
        assert_eq!(&p.payload[..], b"x");
        let (mut p, _) = Routing::new(meta, "a/b", o, b"", None).finish(None);
        let next = Origin::take(&mut p.payload).expect("header");
        assert!(next.message > got.message, "every message its own number");
        assert_eq!(Origin { message: 0, ..next }, o);
    }

    #[test]
    fn a_payload_without_header_is_left_untouched() {
        let mut short = Bytes::from_static(b"abc");
        assert_eq!(Origin::take(&mut short), None);
        assert_eq!(&short[..], b"abc");
        let mut plain = Bytes::from(vec![b'x'; HEADER_LEN + 4]);
        assert_eq!(Origin::take(&mut plain), None);
        assert_eq!(plain.len(), HEADER_LEN + 4);
    }

    #[test]
    fn expiry_counts_down_and_runs_out() {
        assert_eq!(remaining_expiry(10_000, 0), Some(10));
        assert_eq!(remaining_expiry(10_000, 2500), Some(8));
        assert_eq!(remaining_expiry(10_000, 9999), Some(1));
        assert_eq!(remaining_expiry(10_000, 10_000), None);
        assert_eq!(remaining_expiry(0, 0), None);
    }
}
