//! A device's QoS 1/2 telemetry is acknowledged only once stored (SPEC §6), without
//! stopping the connection while the store commits: each read batch's telemetry goes to
//! the store as one durable write (`FleetInbox::telemetry_stored`), the connection reads
//! and routes on, and every PUBACK and PUBREC for the client written while a write is
//! under way is held, in order, until the writes started before it are committed.
//!
//! Holding every acknowledgement, not only the telemetry's, keeps them in the order of
//! the PUBLISHes [MQTT-4.6.0-2]; an ack is held for the newest write under way when it
//! is written (never released early, at worst a batch late). At most
//! [`MAX_WRITES`] writes are under way; then the socket is not read until one ends.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttd::protocol::Packet;

use crate::fleet::telemetry::NotStored;

/// Telemetry writes one connection may have under way.
const MAX_WRITES: usize = 4;

/// What a write came back with: the reasons of the payloads the plugin refused.
pub(crate) type Written = Result<Vec<String>, NotStored>;

#[derive(Default)]
pub(crate) struct StoredAcks {
    /// In a mutex only to be `Sync` (a connection is borrowed across awaits); always
    /// reached through `&mut self`, so never locked. `None` while no write is under way
    /// (an idle connection keeps no queue).
    writes: std::sync::Mutex<Option<FuturesOrdered<BoxFuture<'static, Written>>>>,
    started: u64,
    done: u64,
    /// Acks for the client and the number of the write each waits for.
    held: VecDeque<(u64, Packet)>,
    /// This read batch's QoS 1/2 telemetry `(payload, received_at_ms)`, not yet handed over.
    pub(crate) batch: Vec<(Bytes, u64)>,
}

// The write numbers start again at 0 once every write is done and nothing is held.
crate::link::lazy::idle!(StoredAcks, |s| s.started == s.done
    && s.held.is_empty()
    && s.batch.is_empty());

impl StoredAcks {
    /// Whether acks for the client must wait: a write is under way, or this read batch
    /// has telemetry for the next one.
    pub(crate) fn holding(&self) -> bool {
        self.started > self.done || !self.batch.is_empty()
    }

    /// Holds `ack` until the writes started so far, and the one this batch's telemetry
    /// goes into, are committed.
    pub(crate) fn hold(&mut self, ack: Packet) {
        let last = self.started + u64::from(!self.batch.is_empty());
        self.held.push_back((last, ack));
    }

    /// A write is under way.
    pub(crate) fn busy(&self) -> bool {
        self.started > self.done
    }

    /// As many writes as allowed are under way: stop reading the client.
    pub(crate) fn full(&self) -> bool {
        self.started - self.done >= MAX_WRITES as u64
    }

    pub(crate) fn start(&mut self, write: BoxFuture<'static, Written>) {
        self.writes_mut().push_back(write);
        self.started += 1;
    }

    fn writes_mut(&mut self) -> &mut FuturesOrdered<BoxFuture<'static, Written>> {
        let writes = self.writes.get_mut().unwrap_or_else(|e| e.into_inner());
        writes.get_or_insert_with(FuturesOrdered::new)
    }

    /// The oldest write's outcome, once committed (call only while [`busy`](Self::busy)).
    pub(crate) async fn next(&mut self) -> Written {
        let written = self.writes_mut().next().await;
        self.done += 1;
        if !self.busy() {
            *self.writes.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        }
        written.unwrap_or(Err(NotStored::ShuttingDown))
    }

    /// The held acks whose writes are all committed, in order.
    pub(crate) fn released(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some((n, _)) = self.held.front() {
            if *n > self.done {
                break;
            }
            if let Some((_, ack)) = self.held.pop_front() {
                out.push(ack);
            }
        }
        if self.held.is_empty() {
            self.held = VecDeque::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{PubAck, PubAckReason};

    fn ack(pkid: u16) -> Packet {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        )
    }

    fn pkids(acks: &[Packet]) -> Vec<u16> {
        (acks.iter())
            .map(|p| match p {
                Packet::PubAck(a, _) => a.pkid,
                _ => 0,
            })
            .collect()
    }

    #[tokio::test]
    async fn acks_wait_for_the_writes_started_before_them_in_order() {
        let mut s = StoredAcks::default();
        assert!(!s.holding());
        let (tx1, rx1) = tokio::sync::oneshot::channel::<()>();
        let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
        s.start(Box::pin(async move {
            let _ = rx1.await;
            Ok(Vec::new())
        }));
        s.hold(ack(1));
        s.start(Box::pin(async move {
            let _ = rx2.await;
            Ok(vec!["refused".to_owned()])
        }));
        s.hold(ack(2));
        assert!(s.full() == (MAX_WRITES <= 2));
        tx1.send(()).unwrap();
        assert_eq!(s.next().await, Ok(Vec::new()));
        assert_eq!(pkids(&s.released()), [1]);
        assert!(s.holding());
        tx2.send(()).unwrap();
        assert_eq!(s.next().await, Ok(vec!["refused".to_owned()]));
        assert_eq!(pkids(&s.released()), [2]);
        assert!(!s.holding() && !s.busy());
    }
}
