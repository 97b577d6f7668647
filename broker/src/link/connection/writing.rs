//! The client's write buffer (`Connection::out`).
//!
//! A plain TCP socket is written without waiting: what it does not take stays in the
//! buffer and goes when the socket is writable again (`Connection::step`). So the
//! connection goes on taking routed messages at the router's pace while its client reads
//! at its own pace, and a burst waits here, freed once written, rather than in the
//! router's per-filter log, which is cut under a subscriber that falls behind and never
//! gives back what a burst grew. Past `mqtt.max_outbound_bytes` the connection takes
//! nothing more from the router (it does not wake it) and reads nothing more from its
//! client until the socket drained below that; a socket that takes nothing for
//! `mqtt.slow_consumer_timeout_s` ends the connection.
//!
//! TLS and WebSocket streams are written whole, waiting, as before.

use std::io;

use bytes::{Buf, BytesMut};
use rumqttd::protocol::Packet;
use tokio::time::Instant;

use crate::link::codec::framing::{self, Version};
use crate::link::connection::router_link::RouterLink;
use crate::link::connection::{Connection, Ending};

/// A write buffer at least this large is dropped once empty.
const KEPT_CAPACITY: usize = 1 << 20;

/// What the write side waits on.
#[derive(Debug, Default)]
pub(crate) struct WriteState {
    /// Since when the socket took nothing of a non-empty buffer.
    stalled_at: Option<Instant>,
    /// The router paused this link while the buffer was over its bound: it is woken
    /// once the socket drained below it.
    router_paused: bool,
    /// Counted as lagging behind the router (`congestion.rs`).
    pub(crate) lagging: bool,
}

impl Connection {
    /// Whether the buffer is at its bound: nothing more is taken from the router or read
    /// from the client.
    pub(crate) fn out_full(&self) -> bool {
        self.out.len() >= self.core.config.max_outbound_bytes
    }

    /// Whether bytes wait for the socket to become writable (plain TCP only: other
    /// streams are written whole).
    pub(crate) fn out_waiting(&self) -> bool {
        !self.out.is_empty() && self.stream.tcp().is_some()
    }

    /// When a socket that has taken nothing since is given up on.
    pub(crate) fn write_stuck_deadline(&self) -> Option<Instant> {
        let timeout = self.core.config.slow_consumer_timeout;
        self.write.stalled_at.map(|at| at + timeout)
    }

    /// Writes what is buffered for the client: as much as a plain TCP socket takes now
    /// (the rest when it is writable again), or all of it on other streams.
    pub(crate) async fn flush(&mut self) -> Result<(), Ending> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.stream.tcp().is_none() {
            return self.flush_all().await;
        }
        let mut written = 0;
        let result = loop {
            match self.stream.try_write_tcp(&self.out[written..]) {
                Ok(0) => break Err(Ending::Dropped),
                Ok(n) => {
                    written += n;
                    if written == self.out.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err(Ending::Dropped),
            }
        };
        self.out.advance(written);
        self.written(written);
        if self.out.is_empty() {
            self.write.stalled_at = None;
        } else if written > 0 || self.write.stalled_at.is_none() {
            self.write.stalled_at = Some(Instant::now());
        }
        result
    }

    /// Writes everything buffered, waiting for the socket (up to
    /// `mqtt.slow_consumer_timeout_s`).
    pub(crate) async fn flush_all(&mut self) -> Result<(), Ending> {
        if self.out.is_empty() {
            return Ok(());
        }
        let n = self.out.len();
        // A socket that takes nothing for this long belongs to a stuck consumer (the
        // write is not cancel-safe, but the connection ends anyway).
        let timeout = self.core.config.slow_consumer_timeout;
        let result = match tokio::time::timeout(timeout, self.stream.write_all(&self.out)).await {
            Ok(result) => result.map_err(|_| Ending::Dropped),
            Err(_) => {
                tracing::warn!(client_id = %self.s.client_id, "slow consumer: socket write timed out");
                Err(Ending::SlowConsumer)
            }
        };
        self.out.clear();
        self.write.stalled_at = None;
        self.written(n);
        result
    }

    /// Counts `n` bytes written; an emptied buffer goes if the connection is idle (a
    /// busy one keeps its own, up to [`KEPT_CAPACITY`]).
    fn written(&mut self, n: usize) {
        if self.out.is_empty()
            && (self.queue.nothing_waiting() || self.out.capacity() > KEPT_CAPACITY)
        {
            self.out = BytesMut::new();
        }
        crate::stats::Stats::add(&self.core.stats.bytes_sent, n as u64);
        self.counters.written(n);
    }

    /// The socket takes bytes again: writes, then wakes a router that waited for room.
    pub(crate) async fn on_writable(&mut self) -> Result<(), Ending> {
        self.flush().await?;
        self.resume_router().await
    }

    /// The router paused this link (`Notification::Unschedule`): it is woken now, or
    /// once the buffer is below its bound.
    pub(crate) async fn router_paused(&mut self) -> Result<(), Ending> {
        self.write.router_paused = true;
        self.resume_router().await
    }

    async fn resume_router(&mut self) -> Result<(), Ending> {
        if !self.write.router_paused || self.out_full() {
            return Ok(());
        }
        self.write.router_paused = false;
        if let RouterLink::Own(own) = &self.s.link {
            self.woke = true;
            crate::stats::Stats::add(&self.core.stats.router_pauses, 1);
            own.rx.wake().await.map_err(|_| Ending::RouterGone)?;
        }
        Ok(())
    }

    /// Encodes a packet for the client, dropping v5-only properties for 3.1.1 clients.
    pub(crate) fn write_packet(&mut self, packet: Packet) {
        if self.stored.holding() && matches!(packet, Packet::PubAck(..) | Packet::PubRec(..)) {
            // After the telemetry written before it (`stored_acks.rs`).
            self.stored.hold(packet);
            return;
        }
        self.encode_packet(packet);
    }

    /// Encodes a packet for the client now.
    pub(crate) fn encode_packet(&mut self, packet: Packet) {
        let packet = match self.s.version {
            Version::V4 => crate::link::strip_properties(packet),
            Version::V5 => packet,
        };
        let start = self.out.len();
        match framing::encode(self.s.version, packet, &mut self.out) {
            Ok(_) => {
                if let Some(&byte1) = self.out.get(start) {
                    self.core.stats.packet_out(byte1 >> 4);
                    self.counters.packet_out(byte1 >> 4);
                }
            }
            Err(e) => {
                tracing::error!(client_id = %self.s.client_id, error = %e, "could not encode a packet for the client");
            }
        }
    }
}
