//! One client connection after CONNECT: the run loop that moves packets between the
//! client's stream and rumqttd's router, and the close sequence.

pub(crate) mod alias;
pub(crate) mod congestion;
pub(crate) mod connect;
pub(crate) mod copies;
pub(crate) mod counters;
pub(crate) mod device;
pub(crate) mod egress;
pub(crate) mod flow;
#[cfg(feature = "testing")]
pub(crate) mod hold;
pub(crate) mod ingress;
pub(crate) mod outbound;
pub(crate) mod outbound_alias;
pub(crate) mod park;
pub(crate) mod refusal;
pub(crate) mod router_link;
pub(crate) mod stored_acks;
pub(crate) mod subscribe;
pub(crate) mod subscriptions;
pub(crate) mod will;
pub(crate) mod writing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, SubscribeReasonCode};
use tokio::time::Instant;

use crate::client::ClientKind;
use crate::fleet::LinkEvent;
use crate::link::codec::framing::{PublishMeta, Version};
use crate::link::connection::alias::InboundAliases;
use crate::link::connection::connect::Established;
use crate::link::connection::device::CommandWindow;
use crate::link::connection::flow::OutboundFlow;
use crate::link::connection::ingress::InboundQos2;
use crate::link::connection::outbound::Outbound;
use crate::link::connection::router_link::RouterLink;
use crate::link::connection::subscriptions::Subscriptions;
use crate::link::lazy::{idle, Lazy};
use crate::link::net::transport::{Io, Stream};
use crate::link::security::auth::Identity;
use crate::link::security::sealing::DeviceCrypto;
use crate::link::session::live::count_connection;
use crate::link::session::live::CloseReason;
use crate::link::Core;
use fleetmq_storage::now_ms;

/// A boxed future of one step of the run loop.
pub(crate) type BoxedStep<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Ending>> + Send + 'a>>;

/// How many router notifications are written per socket write at most.
const MAX_EGRESS_BATCH: usize = 512;
/// While a PUBLISH waits for a congested subscriber, the socket is read only while the
/// buffer holds less than this (acks are taken out of it; the rest waits).
const STALLED_READ_LIMIT: usize = 64 * 1024;

idle!(HashMap<u16, Vec<Option<SubscribeReasonCode>>>, |m| m.is_empty());

/// Why the run loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The client sent DISCONNECT (`with_will`: v5 reason 0x04).
    ClientDisconnect {
        with_will: bool,
    },
    /// The stream closed or failed without DISCONNECT.
    Dropped,
    KeepAliveTimeout,
    /// The client broke the protocol; v5 clients are told why.
    Violation(DisconnectReasonCode),
    Closed(CloseReason),
    /// The router closed our link.
    RouterGone,
    /// The client did not take its messages: congested without acknowledging anything,
    /// or a socket that accepted nothing, for `mqtt.slow_consumer_timeout_s`.
    SlowConsumer,
    /// Telemetry the device sent at QoS 1/2 could not be stored: it is not acknowledged,
    /// so the device sends it again on its next connection.
    StoreFailed,
}

pub(crate) struct Connection {
    pub(crate) core: Arc<Core>,
    pub(crate) stream: Stream,
    pub(crate) s: Established,
    pub(crate) read_buf: BytesMut,
    pub(crate) out: BytesMut,
    pub(crate) to_router: Vec<Packet>,
    /// Every PUBLISH owed to the client, and those in flight (`outbound.rs`).
    pub(crate) queue: Outbound,
    /// A QoS 1/2 PUBLISH from the client waiting for a congested subscriber.
    /// Boxed: a `Packet` is ~400 bytes an idle connection need not carry.
    pub(crate) stalled: Option<Box<(Packet, Option<PublishMeta>)>>,
    /// Sees congested connections drain (`congestion.rs`).
    pub(crate) congestion_rx: tokio::sync::watch::Receiver<u64>,
    /// Boxed: most devices send plaintext.
    pub(crate) crypto: Option<Box<DeviceCrypto>>,
    /// Inbound QoS 2 exchanges waiting for PUBREL (`ingress.rs`).
    pub(crate) inbound_qos2: Lazy<InboundQos2>,
    /// SUBACK codes decided locally, merged with the router's by packet id.
    pub(crate) pending_subacks: Lazy<HashMap<u16, Vec<Option<SubscribeReasonCode>>>>,
    pub(crate) last_read: Instant,
    /// Whether this link ever sent the router a `Ready` (wake) event.
    pub(crate) woke: bool,
    /// Commands written by the link itself (not routed), awaiting PUBACK (`device.rs`).
    pub(crate) commands: CommandWindow,
    /// Per-connection MQTT state the router lacks (see `subscriptions`, `alias`, `flow`).
    pub(crate) subs: Subscriptions,
    /// Copies the router still owes of messages sent once for overlapping subscriptions.
    pub(crate) later_copies: Lazy<copies::LaterCopies>,
    pub(crate) aliases: InboundAliases,
    pub(crate) flow: OutboundFlow,
    /// Topic aliases towards an MQTT 5 client that accepts them (`outbound_alias`).
    pub(crate) out_aliases: crate::link::connection::outbound_alias::OutboundAliases,
    pub(crate) sys_rx: tokio::sync::watch::Receiver<crate::link::sys::SysValues>,
    /// Session state: subscriptions kept, the link's own deliveries (`session/resume.rs`).
    pub(crate) sess: crate::link::session::resume::SessionLink,
    /// Persistent sessions' copies of this read batch's messages, written before the
    /// batch is routed (`session::store`).
    pub(crate) copies: Lazy<crate::link::session::store::Copies>,
    /// QoS 1/2 telemetry stored before it is acknowledged (`stored_acks.rs`).
    pub(crate) stored: Lazy<stored_acks::StoredAcks>,
    /// What it has done, for the admin API (`counters.rs`).
    pub(crate) counters: counters::ConnCounters,
    /// What the write buffer waits on (`writing.rs`).
    pub(crate) write: writing::WriteState,
}

impl Connection {
    pub(crate) fn new(
        core: Arc<Core>,
        stream: Stream,
        mut s: Established,
        read_buf: BytesMut,
    ) -> Connection {
        let sess = crate::link::session::resume::SessionLink::new(std::mem::take(&mut s.session));
        let crypto = match &s.identity {
            Identity::Device(d) => {
                s.mailbox.take_routed_messages();
                core.crypto_for(d).map(Box::new)
            }
            _ => None,
        };
        let aliases = InboundAliases::new(match s.version {
            Version::V5 => core.config.topic_alias_max,
            Version::V4 => 0,
        });
        Connection {
            subs: Subscriptions::new(s.session_present),
            later_copies: Lazy::default(),
            flow: OutboundFlow::new(s.connect_props.as_deref()),
            out_aliases: outbound_alias::OutboundAliases::new(
                match s.version {
                    Version::V5 => s.connect_props.as_ref().and_then(|p| p.topic_alias_max),
                    Version::V4 => None,
                }
                .unwrap_or(0),
            ),
            sys_rx: core.sys.subscribe(),
            queue: Outbound::new(core.config.max_pending_messages),
            stalled: None,
            congestion_rx: core.congestion.subscribe(),
            aliases,
            core,
            stream,
            s,
            read_buf,
            out: BytesMut::new(),
            to_router: Vec::new(),
            crypto,
            inbound_qos2: Lazy::default(),
            pending_subacks: Lazy::default(),
            last_read: Instant::now(),
            woke: false,
            commands: CommandWindow::default(),
            sess,
            copies: Default::default(),
            stored: Lazy::default(),
            counters: counters::ConnCounters::default(),
            write: writing::WriteState::default(),
        }
    }

    /// None while a PUBLISH waits: the client's pings may be stuck behind it.
    fn keepalive_deadline(&self) -> Option<Instant> {
        let ka = self.s.keep_alive;
        (ka > 0 && self.stalled.is_none())
            .then(|| self.last_read + Duration::from_millis(u64::from(ka) * 1500))
    }

    /// Sends the CONNACK, runs until the connection ends, then closes it.
    ///
    /// Boxed: an async fn keeps a by-value argument twice in its future (the
    /// argument and its binding), so the connection's 3 KB would be held twice.
    pub(crate) async fn run(self: Box<Self>, connack: Box<Packet>) {
        let mut this = self;
        this.core.wills.cancel(&this.s.router_key);
        // The futures of what runs once, or on an event, are boxed, each in a statement
        // of its own (a temporary in an awaiting statement keeps its room in the caller's
        // future): an idle connection keeps only the step's (see docs/architecture.md).
        let start = this.starting(connack);
        let mut ending = start.await;
        while ending.is_none() {
            ending = if this.parkable() {
                // Idle in the common case: a small future waits (`park.rs`).
                this.settle();
                let woken = park::park(&this).await;
                let handle = this.woken(woken);
                handle.await.err()
            } else {
                let step = this.stepping();
                step.await.err()
            };
        }
        let close = closing(this, ending.unwrap_or(Ending::Dropped));
        close.await;
    }

    /// [`Connection::start`]'s future, made outside `run`'s (see [`closing`]).
    fn starting(
        &mut self,
        connack: Box<Packet>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Ending>> + Send + '_>> {
        Box::pin(self.start(*connack))
    }

    /// CONNACK, the fleet services told, the resumed session, then whatever arrived
    /// together with the CONNECT.
    async fn start(&mut self, connack: Packet) -> Option<Ending> {
        self.announce().await;
        self.write_packet(connack);
        let resumed = self.resume_session().await;
        match resumed.and(self.flush().await) {
            Ok(()) => self.ingress().await.err(),
            Err(e) => Some(e),
        }
    }

    /// [`Connection::step`]'s future, boxed: its `select!` is kilobytes that a parked
    /// connection need not hold.
    fn stepping(&mut self) -> BoxedStep<'_> {
        Box::pin(self.step())
    }

    async fn step(&mut self) -> Result<(), Ending> {
        let deadline = self.keepalive_deadline();
        let sleep = tokio::time::sleep_until(
            deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)),
        );
        let queue_stuck = self
            .queue
            .stuck_deadline(self.core.config.slow_consumer_timeout);
        let write_stuck = self.write_stuck_deadline();
        let stuck_at = match (queue_stuck, write_stuck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let stuck = tokio::time::sleep_until(
            stuck_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)),
        );
        let held_until = self.held_until();
        let held = held_until.is_some();
        // One timer for both: a held client looks again, a lagging reader (never held)
        // that got nothing for a while caught up.
        let lagging = self.write.lagging;
        let held_until = tokio::time::sleep_until(match held_until {
            Some(until) => until,
            None if lagging => Instant::now() + congestion::LAG_WINDOW,
            None => self.last_read,
        });
        let may_read = (self.stalled.is_none() || self.read_buf.len() < STALLED_READ_LIMIT)
            && !self.stored.full()
            && !self.out_full()
            && !held;
        let may_write = self.out_waiting();
        tokio::select! {
            biased;
            ctrl = self.s.mailbox.control() => {
                let boxed = Box::pin(self.on_control(ctrl));
                boxed.await
            }
            _ = self.core.shutdown.cancelled() => Err(Ending::Closed(CloseReason::ShuttingDown)),
            // Before router traffic, which a stuck client's QoS 0 subscriptions or the
            // broker's own publishes could keep ready.
            _ = stuck, if stuck_at.is_some() => {
                if write_stuck == stuck_at {
                    tracing::warn!(client_id = %self.s.client_id, "slow consumer: its socket took nothing");
                } else {
                    tracing::warn!(client_id = %self.s.client_id, "slow consumer: no acknowledgement while congested");
                }
                Err(Ending::SlowConsumer)
            }
            changed = self.congestion_rx.changed(), if self.stalled.is_some() || held => match changed {
                Ok(()) if self.stalled.is_some() => {
                    let boxed = Box::pin(self.ingress());
                    boxed.await
                }
                Ok(()) => Ok(()),
                Err(_) => Err(Ending::Closed(CloseReason::ShuttingDown)),
            },
            _ = held_until, if held || lagging => {
                if lagging {
                    self.set_lagging(false);
                }
                Ok(())
            }
            written = self.stored.next(), if self.stored.busy() => {
                let boxed = Box::pin(self.telemetry_written(written));
                boxed.await
            }
            _ = self.s.mailbox.ready.notified() => {
                let boxed = Box::pin(self.on_mailbox());
                boxed.await
            }
            io = self.stream.read_or_writable(&mut self.read_buf, may_read, may_write),
                if may_read || may_write => match io {
                Io::Writable => {
                    let boxed = Box::pin(self.on_writable());
                    boxed.await
                }
                Io::Read(Ok(0) | Err(_)) => Err(Ending::Dropped),
                Io::Read(Ok(n)) => {
                    let boxed = Box::pin(self.on_read(n));
                    boxed.await
                }
            },
            // Drained unless the write buffer is at its bound (`writing.rs`): live
            // messages queue behind a resumed session's queue and retained messages in
            // `outbound.rs`, not in the router's log.
            next = self.s.link.next(), if self.s.link.is_own() && !self.out_full() => match next {
                Ok(Some(first)) => {
                    let boxed = Box::pin(self.egress(first));
                    boxed.await
                }
                Ok(None) => Ok(()),
                Err(_) => Err(Ending::RouterGone),
            },
            _ = sleep, if deadline.is_some() => Err(Ending::KeepAliveTimeout),
            changed = self.sys_rx.changed(), if self.subs.has_sys() => match changed {
                Ok(()) => {
                    let values = self.sys_rx.borrow_and_update().clone();
                    self.write_sys(&values, false);
                    let boxed = Box::pin(self.flush());
                    boxed.await
                }
                Err(_) => Err(Ending::Closed(CloseReason::ShuttingDown)),
            },
        }
    }

    /// Hands the packets collected for the router over, waking it once.
    pub(crate) async fn send_to_router(&mut self) -> Result<(), Ending> {
        let RouterLink::Own(own) = &mut self.s.link else {
            return self.send_shared();
        };
        let tx = &mut own.tx;
        #[cfg(feature = "testing")]
        if hold::withheld(&self.s.client_id, &self.to_router) {
            // In the link's buffer, but the router is not told (`hold`).
            tx.buffer().extend(self.to_router.drain(..));
            return Ok(());
        }
        let Some(last) = self.to_router.pop() else {
            return Ok(());
        };
        tx.buffer().extend(self.to_router.drain(..));
        tx.send(last)
            .await
            .map(|_| ())
            .map_err(|_| Ending::RouterGone)
    }

    /// Tests only: tells the router of what `send_to_router` withheld (if the router has
    /// not taken it already), as `send_to_router` would have.
    #[cfg(feature = "testing")]
    async fn router_released(&mut self) -> Result<(), Ending> {
        let RouterLink::Own(own) = &mut self.s.link else {
            return Ok(());
        };
        let tx = &mut own.tx;
        let last = tx.buffer().pop_back();
        match last {
            Some(last) => tx
                .send(last)
                .await
                .map(|_| ())
                .map_err(|_| Ending::RouterGone),
            None => Ok(()),
        }
    }

    async fn close(mut self, ending: Ending) {
        let core = self.core.clone();
        let client_id = self.s.client_id.clone();
        tracing::debug!(client_id = %client_id, ?ending, "connection closing");
        if ending == Ending::SlowConsumer {
            crate::stats::Stats::add(&core.stats.slow_consumers_disconnected, 1);
            if !self.sess.persistent() {
                // A clean session's messages end with it; these were owed, so counted.
                for _ in 0..self.queue.owed() {
                    core.stats.dropped(crate::stats::DropCause::SlowConsumer);
                }
            }
        }
        self.session_close().await;
        // Only now do paused publishers resume: what they publish next is queued for a
        // parked session after what this connection still owed it.
        core.congestion.leave(self.s.conn_id);
        self.set_lagging(false);
        if ending != Ending::RouterGone {
            self.leave_router().await;
        }
        let fire_will = !matches!(
            ending,
            Ending::ClientDisconnect { with_will: false }
                | Ending::Closed(CloseReason::ShuttingDown)
        );
        let will = self.s.will.take().map(|w| *w).filter(|_| fire_will);
        // A delayed will is scheduled before the session slot is released, so that a
        // reconnect (which cancels it) always comes after.
        let will_now = match will {
            Some(w) if w.delay.is_zero() => Some(w),
            Some(w) => {
                crate::link::connection::will::fire(&core, &self.s.router_key, w).await;
                None
            }
            None => None,
        };
        core.sessions.remove(&self.s.router_key, self.s.conn_id);
        self.s.mailbox.set_closed();
        if matches!(ending, Ending::SlowConsumer | Ending::StoreFailed) {
            // (Acks held for telemetry writes still under way are dropped with it.)
            // Whatever it was not taking goes, or acknowledges what was not stored; a v5
            // DISCONNECT is all it may still get.
            self.out.clear();
        }
        if let (Version::V5, Some(reason)) = (self.s.version, disconnect_reason(ending)) {
            self.write_packet(crate::link::server_disconnect(reason));
        }
        if ending != Ending::Dropped {
            // What the socket had not taken yet, ending with the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_all()).await;
        }
        self.stream.shutdown().await;
        if let Some(will) = will_now {
            crate::link::connection::will::fire(&core, &self.s.router_key, will.clone()).await;
            self.will_published(&will.will).await;
        }
        let kind = match self.s.identity {
            Identity::Device(_) => ClientKind::Device,
            Identity::Service(_) => ClientKind::Service,
            Identity::Anonymous => ClientKind::Anonymous,
        };
        count_connection(&core.stats, kind, -1);
        if let Identity::Device(device) = &self.s.identity {
            let event = LinkEvent::Disconnected {
                id: device.id.clone(),
                generation: self.s.conn_id,
                at_ms: now_ms(),
                taken_over: ending == Ending::Closed(CloseReason::TakenOver),
            };
            core.fleet_event(event).await;
        }
    }
}

impl Connection {
    /// Removes this link from the router before anyone can take the client id over (never
    /// after the router dropped the link itself: it reuses link ids).
    ///
    /// A `Disconnect` packet travels in the link's shared buffer, so an earlier `DeviceData`
    /// event may carry it to the router ahead of a `Ready` this link sent before; a `Ready`
    /// for a removed link panics rumqttd's router thread (`scheduler.rs` `reschedule`). A
    /// link that ever sent `Ready` therefore leaves by takeover instead: a fresh link with
    /// the same client id is registered (its `Connect` event is ordered after every event
    /// of ours), and that fresh link, which never sent `Ready`, disconnects.
    async fn leave_router(&mut self) {
        let bye = || {
            Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            )
        };
        if !self.s.link.is_own() {
            // A device's last publishes; it has nothing in the router to remove.
            let _ = self.send_to_router().await;
            return;
        }
        if !self.woke {
            // What the client sent last (e.g. a status before DISCONNECT) goes first, in
            // the same router event.
            self.to_router.push(bye());
            let _ = self.send_to_router().await;
            return;
        }
        let _ = self.send_to_router().await;
        match self
            .core
            .links
            .build(&self.s.router_key, self.s.clean)
            .await
        {
            Ok((mut tx, _rx, _ack)) => {
                let _ = tx.send(bye()).await;
            }
            Err(e) => {
                tracing::error!(client_id = %self.s.client_id, error = %e, "could not detach from the router")
            }
        }
    }
}

/// The close sequence's future, made outside `run`'s: moving the connection out of its
/// box there would take its size in `run`'s future.
fn closing(
    connection: Box<Connection>,
    ending: Ending,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin((*connection).close(ending))
}

fn disconnect_reason(ending: Ending) -> Option<DisconnectReasonCode> {
    Some(match ending {
        Ending::ClientDisconnect { .. } | Ending::Dropped => return None,
        Ending::KeepAliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
        Ending::Violation(code) => code,
        Ending::Closed(CloseReason::TakenOver) => DisconnectReasonCode::SessionTakenOver,
        Ending::Closed(CloseReason::Kicked) => DisconnectReasonCode::AdministrativeAction,
        Ending::Closed(CloseReason::CredentialsRevoked) => DisconnectReasonCode::NotAuthorized,
        Ending::Closed(CloseReason::ShuttingDown) => DisconnectReasonCode::ServerShuttingDown,
        Ending::RouterGone | Ending::StoreFailed => DisconnectReasonCode::UnspecifiedError,
        Ending::SlowConsumer => DisconnectReasonCode::QuotaExceeded,
    })
}

impl Connection {
    /// Drains what the router has for this client: the first notification and whatever
    /// else is already queued, written as far as the socket takes it; then wakes the
    /// router if it paused us (`writing.rs`).
    async fn egress(&mut self, first: rumqttd::Notification) -> Result<(), Ending> {
        let mut flow = self.notification(first);
        let mut drained = false;
        for _ in 0..MAX_EGRESS_BATCH {
            match self.s.link.try_next() {
                Some(Ok(Some(n))) => flow = flow.merge(self.notification(n)),
                Some(Ok(None)) | None => {
                    drained = true;
                    break;
                }
                Some(Err(_)) => {
                    flow.disconnected = true;
                    break;
                }
            }
        }
        self.session_sync().await;
        // Acks first: the router may go on at once while the client's copies are written.
        if !flow.disconnected {
            self.send_to_router().await?;
        }
        self.flush().await?;
        if flow.disconnected {
            return Err(Ending::RouterGone);
        }
        self.update_congestion();
        if flow.unscheduled || drained {
            self.set_lagging(flow.unscheduled);
        }
        if flow.unscheduled {
            // Woken at once unless the write buffer is at its bound (`writing.rs`):
            // that is the backpressure.
            self.router_paused().await?;
        }
        Ok(())
    }
}
