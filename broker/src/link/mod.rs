//! The link layer: MQTT connections over rumqttd's router. Everything that touches
//! rumqttd lives under this module. It implements and calls the fleet services' ports
//! (`crate::fleet::ports`) and never the other way round.
//!
//! - `net`: TCP, WebSocket and TLS accept loops and the byte stream over them.
//! - `codec`: guarded MQTT framing, topic rules, and the origin header the router carries.
//! - `security`: authentication, the SPEC §3 ACL, the SPEC §4 payload envelope.
//! - `connection`: one client connection: CONNECT, the run loop, one file per direction
//!   of packets (`ingress`, `egress`), the outbound queue, and the per-connection MQTT
//!   state the router lacks (aliases, flow control, subscriptions, wills, congestion).
//! - `session`: the live-connection table and persistent sessions with their queues.
//! - `retained`: retained messages, delivered by the link layer (never by the router).
//! - `tap`: live copies of routed messages for operators (`GET /api/v1/subscribe`).
//! - `sys`: the `$SYS` topics; `settings`: the `[mqtt]` and `[security]` config sections.
//! - here: [`Core`], the state every connection shares, and the router's links.

pub(crate) mod codec;
pub(crate) mod connection;
pub(crate) mod device_links;
pub(crate) mod lazy;
pub(crate) mod net;
mod retained;
pub(crate) mod security;
pub(crate) mod session;
pub(crate) mod settings;
pub(crate) mod sys;
pub(crate) mod tap;
pub(crate) mod teltonika;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use fleetmq_storage::{
    now_ms, AclRule, DeviceRecord, RetainedMessage, SessionRecord, Store, StoreError,
};
use futures_util::FutureExt;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, Publish, PublishProperties,
};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::fleet::{FleetInbox, LinkEvent};
use crate::link::security::auth::Authenticator;
use crate::link::session::live::Sessions;
use crate::link::settings::BrokerConfig;
use crate::stats::Stats;

pub(crate) use crate::link::net::listener::spawn_listeners;
pub use crate::link::net::listener::Listeners;
pub(crate) use crate::link::security::sealing::DeviceCrypto;

type BuildLink = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// Builds router links. rumqttd's router handle has a type outside code cannot name, so
/// it lives inside this closure.
pub(crate) struct Links {
    build: Arc<BuildLink>,
}

impl Links {
    /// Spawns rumqttd's router thread with memory-bounding settings.
    fn spawn(max_connections: usize, segment_size: usize) -> Links {
        let config = RouterConfig {
            max_connections: max_connections + 16,
            max_outgoing_packet_count: 200,
            // Each filter's log keeps at most 4 segments in memory. Links drain it at
            // once into their own queues, so it only absorbs their scheduling delays.
            max_segment_size: segment_size,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = Router::new(0, config).spawn();
        let build = move |client_id: &str, clean: bool| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .topic_alias_max(0)
                .build()
                .map_err(|e: LinkError| e.to_string())
        };
        Links {
            build: Arc::new(build),
        }
    }

    /// Registers a link with the router (a blocking round trip, run off the async threads).
    pub(crate) async fn build(
        &self,
        client_id: &str,
        clean: bool,
    ) -> Result<(LinkTx, LinkRx, Notification), String> {
        let build = self.build.clone();
        let client_id = client_id.to_owned();
        tokio::task::spawn_blocking(move || build(&client_id, clean))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// State shared by every connection and the handle.
pub(crate) struct Core {
    pub(crate) config: BrokerConfig,
    pub(crate) store: Store,
    pub(crate) stats: Stats,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) auth: Authenticator,
    /// Failed authentications per identity and address (`mqtt.auth_backoff`).
    pub(crate) backoff: crate::link::security::backoff::AuthBackoff,
    /// The recent refused connection attempts.
    pub(crate) refusals: crate::link::security::refusals::RefusalLog,
    /// Per device, the 0x02 envelope replay windows (across its connections).
    pub(crate) replay: crate::link::security::replay::ReplayRegistry,
    pub(crate) links: Links,
    /// The router links device connections share (`device_links`).
    pub(crate) device_links: crate::link::device_links::DeviceLinks,
    pub(crate) system: mpsc::Sender<(Publish, Option<PublishProperties>)>,
    /// Wills waiting for their Will Delay Interval.
    pub(crate) wills: crate::link::connection::will::PendingWills,
    /// The latest `$SYS` values (written by the ticker in `sys`).
    pub(crate) sys: tokio::sync::watch::Sender<crate::link::sys::SysValues>,
    pub(crate) shutdown: CancellationToken,
    /// Slots of `mqtt.max_connections`, taken once a client is authenticated.
    pub(crate) permits: Arc<Semaphore>,
    /// Slots of `mqtt.max_pending_connects`, taken before accepting a socket and given
    /// back when its CONNECT is answered.
    pub(crate) pending: Arc<Semaphore>,
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) anonymous_rules: Arc<[AclRule]>,
    /// Device traffic to the fleet services.
    pub(crate) fleet: FleetInbox,
    pub(crate) tracker: tokio_util::task::TaskTracker,
    /// Retained messages (mirror of the redb table); the router never holds any.
    pub(crate) retained: crate::link::retained::RetainedIndex,
    /// Persistent sessions whose clients are away, and their queues.
    pub(crate) session_store: crate::link::session::store::SessionStore,
    /// Connections whose outbound queue is past its bound, and the filters they pause.
    pub(crate) congestion: crate::link::connection::congestion::Congestion,
    /// Operators' live copies of routed messages; free while none is open.
    pub(crate) taps: Arc<crate::link::tap::Taps>,
}

/// What `Core` is built around: the live-connection table (built first, since the fleet
/// services deliver commands through it) and the fleet services' inbox.
pub(crate) struct CoreParts {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) fleet: FleetInbox,
}

/// What the broker restores from the store at start.
pub(crate) struct Restored {
    pub(crate) retained: Vec<RetainedMessage>,
    pub(crate) sessions: Vec<SessionRecord>,
    /// The highest slot of any stored session queue (arrival numbers start past it).
    pub(crate) max_queued_seq: Option<u64>,
}

impl Core {
    /// Spawns the router and the broker's own system link.
    pub(crate) fn start(
        config: BrokerConfig,
        store: Store,
        shutdown: CancellationToken,
        parts: CoreParts,
        tracker: tokio_util::task::TaskTracker,
        restored: Restored,
    ) -> Result<Arc<Core>, String> {
        let CoreParts { sessions, fleet } = parts;
        let links = Links::spawn(config.max_connections, config.router_segment_size);
        let (link_tx, link_rx, _) = (links.build)("fleetmq:system", true)?;
        let (system, system_rx) = mpsc::channel(4096);
        spawn_system_link(link_tx, link_rx, system_rx)?;
        let device_links = crate::link::device_links::DeviceLinks::build(&links)?;
        let anonymous_rules: Arc<[AclRule]> = config.anonymous_rules.clone().into();
        let session_store = crate::link::session::store::SessionStore::load(
            store.clone(),
            config.max_queued_messages,
            restored.sessions,
            restored.max_queued_seq,
            config.durable_connected_sessions,
        );
        let core = Arc::new(Core {
            retained: crate::link::retained::RetainedIndex::load(restored.retained),
            session_store,
            congestion: crate::link::connection::congestion::Congestion::default(),
            taps: Arc::default(),
            auth: Authenticator::new(
                store.clone(),
                config.allow_anonymous,
                config.connect_timeout,
                &shutdown,
                &tracker,
            ),
            backoff: crate::link::security::backoff::AuthBackoff::new(config.auth_backoff),
            refusals: crate::link::security::refusals::RefusalLog::new(config.refusal_log),
            replay: Default::default(),
            permits: Arc::new(Semaphore::new(config.max_connections)),
            pending: Arc::new(Semaphore::new(config.max_pending_connects)),
            stats: Stats::new(),
            sessions,
            next_conn_id: AtomicU64::new(1),
            anonymous_rules,
            fleet,
            tracker,
            links,
            device_links,
            system,
            wills: crate::link::connection::will::PendingWills::default(),
            sys: crate::link::sys::channel().0,
            shutdown,
            store,
            config,
        });
        crate::link::device_links::spawn_dispatcher(&core)?;
        Ok(core)
    }

    /// The largest packet a client may send: payload limit plus room for topic and properties.
    pub(crate) fn max_packet(&self) -> usize {
        self.config.max_payload + 65_536 + 1024
    }

    /// Encryption state for a device connection, when SPEC §4 applies to it.
    pub(crate) fn crypto_for(&self, device: &DeviceRecord) -> Option<DeviceCrypto> {
        (self.config.payload_encryption || device.encrypted)
            .then(|| DeviceCrypto::new(device, &self.config, &self.replay))
    }

    /// Routes a message as the broker itself (QoS 0 into the router; subscribers get it
    /// at their subscription QoS), waiting for room in the system link's queue. A QoS 1/2
    /// message is first queued for the parked sessions it matches. The router never gets
    /// a RETAIN flag: retained messages are the link layer's (`retained.rs`).
    pub(crate) async fn publish_system_wait(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), String> {
        self.publish_system_props(topic, payload, qos, None, false)
            .await
    }

    /// [`Core::publish_system_wait`] with PUBLISH properties. The message carries its
    /// QoS as its origin, so subscribers get min(QoS, subscription QoS). `retained`
    /// says whether it was published retained (already stored; taps show it).
    pub(crate) async fn publish_system_props(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        props: Option<PublishProperties>,
        retained: bool,
    ) -> Result<(), String> {
        self.taps.offer(crate::link::tap::Offer {
            topic,
            payload,
            qos,
            retain: retained,
            client_id: None,
        });
        let incoming = crate::link::session::store::Incoming {
            topic,
            payload,
            qos,
            conn_id: 0,
            // Routed without the retain mark, so live subscribers see RETAIN=0 too.
            retain: false,
        };
        let origin = crate::link::codec::origin::Origin::now(qos, 0);
        // QoS 0 to the router, like `Publish::new`: the system link acknowledges nothing.
        let meta = crate::link::codec::framing::PublishMeta {
            qos: 0,
            pkid: 0,
            dup: false,
            retain: false,
        };
        let routing = crate::link::codec::origin::Routing::new(meta, topic, origin, payload, props);
        let routed = self
            .session_store
            .enqueue_matching(incoming, routing, &self.stats)
            .await;
        self.system
            .send(routed)
            .await
            .map_err(|_| "router stopped".to_owned())
    }

    /// Hands a device event to the fleet services, waiting for room (backpressure on this
    /// one connection only).
    pub(crate) async fn fleet_event(&self, event: LinkEvent) {
        if !self.fleet.event(event).await {
            tracing::debug!("fleet services stopped; device event dropped");
        }
    }

    /// Hands a device event over if there is room; otherwise drops and counts it.
    pub(crate) fn fleet_event_or_drop(&self, event: LinkEvent) {
        if !self.fleet.event_or_drop(event) {
            self.stats.dropped(crate::stats::DropCause::QueueFull);
        }
    }

    /// Writes a retained message through to the store (an empty payload deletes it),
    /// with its publisher's MQTT 5 properties (the expiry interval as an expiry time),
    /// before it is routed, so it survives a restart; then updates the in-memory index
    /// SUBSCRIBE reads from.
    pub(crate) async fn persist_retained(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        props: Option<&PublishProperties>,
    ) -> Result<(), StoreError> {
        let owned = topic.to_owned();
        if payload.is_empty() {
            self.store
                .call(move |s| s.delete_retained(&owned).map(|_| ()))
                .await?;
            self.retained.remove(topic);
            return Ok(());
        }
        let now = now_ms();
        let (mut properties, expires_at_ms) =
            crate::link::session::store::stored_properties(props, now);
        // Subscription identifiers are the receiver's, never the publisher's.
        properties.subscription_ids.clear();
        let msg = RetainedMessage {
            topic: owned,
            payload: payload.to_vec(),
            qos,
            stored_at_ms: now,
            expires_at_ms,
            properties,
        };
        let stored = msg.clone();
        self.store.call(move |s| s.put_retained(&stored)).await?;
        self.retained.set(msg);
        Ok(())
    }

    /// Removes a retained message (admin API); whether there was one.
    pub(crate) async fn delete_retained(&self, topic: &str) -> Result<bool, StoreError> {
        let owned = topic.to_owned();
        let existed = self.store.call(move |s| s.delete_retained(&owned)).await?;
        self.retained.remove(topic);
        Ok(existed)
    }
}

/// The system link's two ends run on their own threads: rumqttd's link calls block.
fn spawn_system_link(
    mut link_tx: LinkTx,
    link_rx: LinkRx,
    mut rx: mpsc::Receiver<(Publish, Option<PublishProperties>)>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("fleetmq-system-tx".into())
        .spawn(move || {
            while let Some((publish, props)) = rx.blocking_recv() {
                // `LinkTx::send` never awaits: it pushes and does a blocking channel send.
                match link_tx.send(Packet::Publish(publish, props)).now_or_never() {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "router gone; system link stops");
                        return;
                    }
                    None => tracing::error!("system link send did not complete"),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    spawn_link_reader("fleetmq-system-rx".into(), link_rx, |_| true)
}

/// Reads a broker-owned router link on a thread of its own until the router goes or
/// `forward` returns false: wakes the link whenever the router pauses it, hands each
/// routed message to `forward`, and ignores the rest (acknowledgements it never needs).
pub(crate) fn spawn_link_reader(
    name: String,
    mut rx: LinkRx,
    mut forward: impl FnMut(rumqttd::Forward) -> bool + Send + 'static,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || loop {
            match rx.recv() {
                Ok(Some(Notification::Forward(f))) => {
                    if !forward(f) {
                        return;
                    }
                }
                Ok(Some(Notification::Unschedule)) => {
                    if rx.ready().is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Drops every property so that a packet can be written with the 3.1.1 codec (which
/// panics on properties): a v5 publisher can never take 3.1.1 subscribers down.
pub(crate) fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        other => other,
    }
}

/// A v5 DISCONNECT from the server, with a reason string. Always with properties:
/// rumqttd's v5 writer miscounts the remaining length of a DISCONNECT without them.
pub(crate) fn server_disconnect(reason: DisconnectReasonCode) -> Packet {
    let props = DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(format!("{reason:?}")),
        user_properties: Vec::new(),
        server_reference: None,
    };
    Packet::Disconnect(
        Disconnect {
            reason_code: reason,
        },
        Some(props),
    )
}
