//! Where an idle connection waits. The run loop's [`Connection::step`] selects over
//! everything a connection can wait for, and its future is kilobytes; most of a fleet's
//! connections are idle devices that can only be woken by the broker (mailbox, control),
//! their socket, or their keep-alive. They wait in [`park`], whose future holds just
//! those, and what wakes them runs in a boxed future that ends with the event
//! (docs/architecture.md, "What a device costs"). The handlers of those events are
//! here too; [`Connection::step`] runs them for a busy connection.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::link::connection::{BoxedStep, Connection, Ending};
use crate::link::session::live::{CloseReason, Control};

/// What ended a [`park`].
pub(crate) enum Woken {
    Shutdown,
    Mailbox,
    /// The socket is readable (or failed).
    Readable(io::Result<()>),
    KeepAliveTimeout,
}

impl Connection {
    /// Whether the connection can wait in [`park`]: a plain TCP socket (TLS and
    /// WebSocket streams may hold decoded bytes their socket's readiness does not show),
    /// nothing the socket has not taken yet, not held back (`congestion.rs`), no PUBLISH
    /// waiting for congested subscribers, no telemetry write under way, no router link of
    /// its own, no `$SYS` subscription and nothing stuck in its queue.
    pub(crate) fn parkable(&self) -> bool {
        self.stream.tcp().is_some()
            && self.out.is_empty()
            && self.held_until().is_none()
            && self.stalled.is_none()
            && !self.stored.busy()
            && !self.s.link.is_own()
            && !self.subs.has_sys()
            && self
                .queue
                .stuck_deadline(self.core.config.slow_consumer_timeout)
                .is_none()
    }

    /// Frees the state an idle connection holds nothing in (`link/lazy.rs`).
    pub(crate) fn settle(&mut self) {
        self.inbound_qos2.settle();
        self.pending_subacks.settle();
        self.commands.settle();
        self.later_copies.settle();
        self.copies.settle();
        self.stored.settle();
        self.sess.pending_subs.settle();
        self.sess.saved_qos2.settle();
        self.sess.owed.settle();
        self.aliases.settle();
        self.out_aliases.settle();
        self.subs.settle();
        self.queue.settle();
        crate::link::lazy::release(&mut self.to_router);
        crate::link::lazy::release(&mut self.sess.delivered);
    }

    /// What the broker told the connection.
    pub(crate) async fn on_control(&mut self, ctrl: Control) -> Result<(), Ending> {
        match ctrl {
            Control::Close(reason) => Err(Ending::Closed(reason)),
            Control::Reload(record) => {
                self.crypto = self.core.crypto_for(&record).map(Box::new);
                Ok(())
            }
            Control::Rules(new) => {
                if let crate::link::security::acl::Principal::Service { rules, .. } =
                    &mut self.s.principal
                {
                    *rules = new;
                }
                Ok(())
            }
            Control::Snapshot(request) => {
                let (info, reply) = *request;
                let _ = reply.send(self.snapshot(info));
                Ok(())
            }
            #[cfg(feature = "testing")]
            Control::RouterRelease => self.router_released().await,
        }
    }

    /// Commands and routed messages waiting in the mailbox.
    pub(crate) async fn on_mailbox(&mut self) -> Result<(), Ending> {
        for (command_id, payload) in self.s.mailbox.take() {
            self.deliver_command(command_id, &payload);
        }
        self.dispatched().await
    }

    /// `n` bytes were appended to the read buffer.
    pub(crate) async fn on_read(&mut self, n: usize) -> Result<(), Ending> {
        self.last_read = Instant::now();
        crate::stats::Stats::add(&self.core.stats.bytes_received, n as u64);
        self.counters.read(n);
        let result = self.ingress().await;
        if self.read_buf.is_empty() {
            // Nothing half-read: an idle connection holds no read buffer.
            self.read_buf = BytesMut::new();
        }
        result
    }

    /// Handles what ended a [`park`], in a boxed future that ends with it.
    pub(crate) fn woken(&mut self, woken: Woken) -> BoxedStep<'_> {
        Box::pin(async move {
            match woken {
                Woken::Shutdown => Err(Ending::Closed(CloseReason::ShuttingDown)),
                Woken::Mailbox => {
                    // Control messages first (they wake `ready` too, and one wake-up
                    // may stand for several).
                    while let Some(ctrl) = self.s.mailbox.try_take_control() {
                        self.on_control(ctrl).await?;
                    }
                    self.on_mailbox().await
                }
                Woken::Readable(Err(_)) => Err(Ending::Dropped),
                // Left unread while held back (`congestion.rs`): the run loop waits.
                Woken::Readable(Ok(())) if self.held_until().is_some() => Ok(()),
                Woken::Readable(Ok(())) => match self.stream.try_read_tcp(&mut self.read_buf) {
                    Ok(0) => Err(Ending::Dropped),
                    Ok(n) => self.on_read(n).await,
                    // A readiness that found nothing: back to waiting.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    Err(_) => Err(Ending::Dropped),
                },
                Woken::KeepAliveTimeout => Err(Ending::KeepAliveTimeout),
            }
        })
    }
}

/// Waits, in the order [`Connection::step`] gives them, for the broker's shutdown, the
/// mailbox (control messages included), the socket, or the keep-alive deadline. Only for a
/// [`Connection::parkable`] connection.
pub(crate) async fn park(conn: &Connection) -> Woken {
    let Some(tcp) = conn.stream.tcp() else {
        return Woken::Readable(Ok(()));
    };
    let deadline = conn.keepalive_deadline();
    let sleep = tokio::time::sleep_until(
        deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)),
    );
    // Control messages also wake `ready`, so one waiter serves both.
    tokio::select! {
        biased;
        _ = conn.core.shutdown.cancelled() => Woken::Shutdown,
        _ = conn.s.mailbox.ready.notified() => Woken::Mailbox,
        readable = tcp.readable() => Woken::Readable(readable),
        _ = sleep, if deadline.is_some() => Woken::KeepAliveTimeout,
    }
}
