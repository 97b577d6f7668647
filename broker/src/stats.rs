//! Broker counters. Every drop is counted by cause; counters are relaxed atomics because
//! they are read only for reporting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;

/// Why a message or packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// A PUBLISH the sender's ACL does not allow.
    AclPublish,
    /// A SUBSCRIBE filter the subscriber's ACL does not allow.
    AclSubscribe,
    /// A routed message the receiver may not read (delivery-time check).
    AclDelivery,
    /// A device payload that did not decrypt (or a 0x01 envelope where replay
    /// protection is required).
    DecryptFailed,
    /// An authentic 0x02 device envelope whose nonce was already accepted or is too old.
    Replayed,
    /// A message that could not be encrypted for its receiving device (no key).
    EncryptFailed,
    /// A packet that does not parse or breaks the protocol.
    Malformed,
    /// A packet or payload over the configured limits.
    TooLarge,
    /// A device event (telemetry) that found the fleet queue full.
    QueueFull,
    /// A message whose Message Expiry Interval ran out before delivery.
    Expired,
    /// A configured or client-announced limit: max connections, Receive Maximum,
    /// a client's Maximum Packet Size.
    Limit,
    /// The oldest message of a disconnected session's full queue (`mqtt.max_queued_messages`).
    SessionQueueFull,
    /// A message a connected client could not take: QoS 0 past its
    /// `mqtt.max_pending_messages`, what a clean session still owed when it was
    /// disconnected as a stuck consumer, or what rumqttd's bounded per-filter log skipped
    /// because the subscriber's task fell that far behind.
    SlowConsumer,
}

impl DropCause {
    /// Every cause, in declaration order (`cause as usize` indexes it).
    pub(crate) const ALL: [DropCause; 13] = [
        DropCause::AclPublish,
        DropCause::AclSubscribe,
        DropCause::AclDelivery,
        DropCause::DecryptFailed,
        DropCause::Replayed,
        DropCause::EncryptFailed,
        DropCause::Malformed,
        DropCause::TooLarge,
        DropCause::QueueFull,
        DropCause::Expired,
        DropCause::Limit,
        DropCause::SessionQueueFull,
        DropCause::SlowConsumer,
    ];

    /// The snake_case name `GET /api/v1/stats` reports it under.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DropCause::AclPublish => "acl_publish",
            DropCause::AclSubscribe => "acl_subscribe",
            DropCause::AclDelivery => "acl_delivery",
            DropCause::DecryptFailed => "decrypt_failed",
            DropCause::Replayed => "replayed",
            DropCause::EncryptFailed => "encrypt_failed",
            DropCause::Malformed => "malformed",
            DropCause::TooLarge => "too_large",
            DropCause::QueueFull => "queue_full",
            DropCause::Expired => "expired",
            DropCause::Limit => "limit",
            DropCause::SessionQueueFull => "session_queue_full",
            DropCause::SlowConsumer => "slow_consumer",
        }
    }
}

/// Why a connection attempt ended without a session, counted by cause
/// (`connections.refused_by_cause`, `fleetmq_connect_refused_total{cause}`) and logged.
/// The client never learns it: it gets the MQTT reason code of before (a wrong token,
/// an unknown device and a backed-off identity all read "not authorized").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCause {
    /// A username that is no device and no service client, presented as a device
    /// presents itself (client id = username): an unprovisioned or deleted device.
    UnknownDevice,
    /// A username that is no device and no service client, with another client id.
    UnknownServiceClient,
    /// A device's token did not match (also a token of before a rotation: the store
    /// keeps only the current one).
    WrongToken,
    /// A service client's password did not match.
    WrongPassword,
    /// A device's username (or certificate CN) with another client id.
    ClientIdMismatch,
    /// No credentials, and `security.allow_anonymous` is off.
    AnonymousNotAllowed,
    /// Refused without checking credentials: too many recent failures for this
    /// identity from this address, or from this address (`mqtt.auth_backoff`).
    Backoff,
    /// `mqtt.max_connections` reached.
    ConnectionLimit,
    /// A protocol level other than 3.1.1 (4) and 5.
    UnsupportedProtocol,
    /// A first packet that is not a well-formed CONNECT.
    MalformedConnect,
    /// An empty client id without a clean session (3.1.1).
    InvalidClientId,
    /// A Keep Alive above `mqtt.max_keepalive_s` (3.1.1).
    KeepAliveTooLong,
    /// A will topic that is invalid, denied by the ACL, or a payload that did not decrypt.
    WillRefused,
    /// No CONNECT within `mqtt.connect_timeout_s` (handshakes included).
    ConnectTimeout,
    /// The TLS or WebSocket handshake failed (a bad client certificate, a wrong path).
    HandshakeFailed,
    /// The client closed the socket (or it failed) before its CONNECT.
    ClosedBeforeConnect,
    /// Our fault: the store or the router failed.
    ServerUnavailable,
    /// A password check was not run: its address had too many under way, or too many
    /// waited overall (a flood of service-client passwords; `link/security/slow_checks.rs`).
    AuthBusy,
}

impl RefusalCause {
    /// Every cause, in the order stats and metrics list them.
    pub const ALL: [RefusalCause; 18] = [
        RefusalCause::UnknownDevice,
        RefusalCause::UnknownServiceClient,
        RefusalCause::WrongToken,
        RefusalCause::WrongPassword,
        RefusalCause::ClientIdMismatch,
        RefusalCause::AnonymousNotAllowed,
        RefusalCause::Backoff,
        RefusalCause::ConnectionLimit,
        RefusalCause::UnsupportedProtocol,
        RefusalCause::MalformedConnect,
        RefusalCause::InvalidClientId,
        RefusalCause::KeepAliveTooLong,
        RefusalCause::WillRefused,
        RefusalCause::ConnectTimeout,
        RefusalCause::HandshakeFailed,
        RefusalCause::ClosedBeforeConnect,
        RefusalCause::ServerUnavailable,
        RefusalCause::AuthBusy,
    ];

    /// The stable snake_case name of stats, metrics, logs and the API.
    pub fn name(self) -> &'static str {
        match self {
            RefusalCause::UnknownDevice => "unknown_device",
            RefusalCause::UnknownServiceClient => "unknown_service_client",
            RefusalCause::WrongToken => "wrong_token",
            RefusalCause::WrongPassword => "wrong_password",
            RefusalCause::ClientIdMismatch => "client_id_mismatch",
            RefusalCause::AnonymousNotAllowed => "anonymous_not_allowed",
            RefusalCause::Backoff => "backoff",
            RefusalCause::ConnectionLimit => "connection_limit",
            RefusalCause::UnsupportedProtocol => "unsupported_protocol",
            RefusalCause::MalformedConnect => "malformed_connect",
            RefusalCause::InvalidClientId => "invalid_client_id",
            RefusalCause::KeepAliveTooLong => "keep_alive_too_long",
            RefusalCause::WillRefused => "will_refused",
            RefusalCause::ConnectTimeout => "connect_timeout",
            RefusalCause::HandshakeFailed => "handshake_failed",
            RefusalCause::ClosedBeforeConnect => "closed_before_connect",
            RefusalCause::AuthBusy => "auth_busy",
            RefusalCause::ServerUnavailable => "server_unavailable",
        }
    }

    /// Whether the client presented credentials that did not check out: what the
    /// backoff counts.
    pub fn is_bad_credentials(self) -> bool {
        matches!(
            self,
            RefusalCause::UnknownDevice
                | RefusalCause::UnknownServiceClient
                | RefusalCause::WrongToken
                | RefusalCause::WrongPassword
                | RefusalCause::ClientIdMismatch
        )
    }

    fn index(self) -> usize {
        RefusalCause::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or_default()
    }
}

impl std::fmt::Display for RefusalCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// MQTT control packet names by their fixed-header type (1..=15); 0 is reserved.
const PACKET_TYPES: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

#[derive(Default)]
pub(crate) struct Stats {
    started: Option<Instant>,
    pub(crate) devices: AtomicU64,
    pub(crate) service_clients: AtomicU64,
    pub(crate) anonymous: AtomicU64,
    pub(crate) accepted_total: AtomicU64,
    pub(crate) refused_total: AtomicU64,
    /// Refused connection attempts by [`RefusalCause`], in [`RefusalCause::ALL`] order.
    refused_by_cause: [AtomicU64; RefusalCause::ALL.len()],
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    /// Times the router paused a link because the client did not keep up.
    pub(crate) router_pauses: AtomicU64,
    /// Times a publisher's ingress waited for a congested subscriber.
    pub(crate) publisher_pauses: AtomicU64,
    /// Clients disconnected for not taking their messages (`mqtt.slow_consumer_timeout_s`).
    pub(crate) slow_consumers_disconnected: AtomicU64,
    acl_publish: AtomicU64,
    acl_subscribe: AtomicU64,
    acl_delivery: AtomicU64,
    decrypt_failed: AtomicU64,
    replayed: AtomicU64,
    encrypt_failed: AtomicU64,
    malformed: AtomicU64,
    too_large: AtomicU64,
    queue_full: AtomicU64,
    /// Well-formed packets read from clients, by fixed-header type.
    packets_in: [AtomicU64; 16],
    /// Packets written to clients, by fixed-header type.
    packets_out: [AtomicU64; 16],
    expired: AtomicU64,
    limit: AtomicU64,
    session_queue_full: AtomicU64,
    slow_consumer: AtomicU64,
    /// Teltonika trackers (`link::teltonika`).
    pub(crate) trackers: TrackerCounters,
}

/// What Teltonika tracker connections counted.
#[derive(Default)]
pub(crate) struct TrackerCounters {
    pub(crate) logins_refused: AtomicU64,
    pub(crate) packets: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) bad_packets: AtomicU64,
    pub(crate) acks_withheld: AtomicU64,
    pub(crate) commands_sent: AtomicU64,
    pub(crate) responses: AtomicU64,
}

impl TrackerCounters {
    fn snapshot(&self) -> TrackerStats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        TrackerStats {
            logins_refused: get(&self.logins_refused),
            packets: get(&self.packets),
            records: get(&self.records),
            bad_packets: get(&self.bad_packets),
            acks_withheld: get(&self.acks_withheld),
            commands_sent: get(&self.commands_sent),
            responses: get(&self.responses),
        }
    }
}

/// Teltonika trackers (SPEC §10) since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackerStats {
    /// Logins answered 0x00 (unknown IMEI, not a teltonika device, address not
    /// allowed, server full) or malformed.
    pub logins_refused: u64,
    /// AVL data packets acknowledged.
    pub packets: u64,
    /// Records stored and acknowledged.
    pub records: u64,
    /// Packets with a wrong CRC, count or length (not acknowledged).
    pub bad_packets: u64,
    /// Packets not acknowledged because storing them failed (the tracker sends again).
    pub acks_withheld: u64,
    /// Codec 12 commands written.
    pub commands_sent: u64,
    /// Codec 12 responses received.
    pub responses: u64,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        Stats {
            started: Some(Instant::now()),
            ..Stats::default()
        }
    }

    pub(crate) fn dropped(&self, cause: DropCause) {
        self.dropped_many(cause, 1);
    }

    pub(crate) fn dropped_many(&self, cause: DropCause, n: u64) {
        let counter = match cause {
            DropCause::AclPublish => &self.acl_publish,
            DropCause::AclSubscribe => &self.acl_subscribe,
            DropCause::AclDelivery => &self.acl_delivery,
            DropCause::DecryptFailed => &self.decrypt_failed,
            DropCause::Replayed => &self.replayed,
            DropCause::EncryptFailed => &self.encrypt_failed,
            DropCause::Malformed => &self.malformed,
            DropCause::TooLarge => &self.too_large,
            DropCause::QueueFull => &self.queue_full,
            DropCause::Expired => &self.expired,
            DropCause::Limit => &self.limit,
            DropCause::SessionQueueFull => &self.session_queue_full,
            DropCause::SlowConsumer => &self.slow_consumer,
        };
        counter.fetch_add(n, Relaxed);
    }

    /// A connection attempt refused (counted in `refused_total` too).
    pub(crate) fn refused(&self, cause: RefusalCause) {
        self.refused_total.fetch_add(1, Relaxed);
        self.refused_by_cause[cause.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// A packet of fixed-header type `packet_type` (the first byte's high nibble) read.
    pub(crate) fn packet_in(&self, packet_type: u8) {
        self.packets_in[usize::from(packet_type & 0x0f)].fetch_add(1, Relaxed);
    }

    /// A packet of fixed-header type `packet_type` written.
    pub(crate) fn packet_out(&self, packet_type: u8) {
        self.packets_out[usize::from(packet_type & 0x0f)].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let (devices, services, anonymous) = (
            get(&self.devices),
            get(&self.service_clients),
            get(&self.anonymous),
        );
        StatsSnapshot {
            uptime_s: self.started.map_or(0, |s| s.elapsed().as_secs()),
            connections: ConnectionStats {
                current: devices + services + anonymous,
                devices,
                service_clients: services,
                anonymous,
                accepted_total: get(&self.accepted_total),
                refused_total: get(&self.refused_total),
                refused_by_cause: (RefusalCause::ALL.iter())
                    .zip(&self.refused_by_cause)
                    .map(|(cause, n)| (cause.name(), get(n)))
                    .collect(),
                backoff: BackoffStats::default(),
            },
            messages: MessageStats {
                received: get(&self.received),
                sent: get(&self.sent),
                bytes_received: get(&self.bytes_received),
                bytes_sent: get(&self.bytes_sent),
                backpressure_pauses: get(&self.router_pauses),
                publisher_pauses: get(&self.publisher_pauses),
                slow_consumers_disconnected: get(&self.slow_consumers_disconnected),
            },
            drops: DropStats {
                acl_publish: get(&self.acl_publish),
                acl_subscribe: get(&self.acl_subscribe),
                acl_delivery: get(&self.acl_delivery),
                decrypt_failed: get(&self.decrypt_failed),
                replayed: get(&self.replayed),
                encrypt_failed: get(&self.encrypt_failed),
                malformed: get(&self.malformed),
                too_large: get(&self.too_large),
                queue_full: get(&self.queue_full),
                expired: get(&self.expired),
                limit: get(&self.limit),
                session_queue_full: get(&self.session_queue_full),
                slow_consumer: get(&self.slow_consumer),
            },
            packets: PacketStats {
                received: by_type(&self.packets_in),
                sent: by_type(&self.packets_out),
            },
            teltonika: self.trackers.snapshot(),
        }
    }
}

/// Counts by packet name, leaving out types never seen.
fn by_type(counters: &[AtomicU64; 16]) -> BTreeMap<&'static str, u64> {
    PACKET_TYPES
        .iter()
        .zip(counters)
        .map(|(&name, n)| (name, n.load(Relaxed)))
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// A point-in-time copy of the broker's counters, as `GET /api/v1/stats` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsSnapshot {
    pub uptime_s: u64,
    pub connections: ConnectionStats,
    pub messages: MessageStats,
    pub drops: DropStats,
    pub packets: PacketStats,
    pub teltonika: TrackerStats,
}

/// MQTT packets by type (`connect`, `publish`, `pingreq`, ...); types never seen are
/// absent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PacketStats {
    pub received: BTreeMap<&'static str, u64>,
    pub sent: BTreeMap<&'static str, u64>,
}

/// Connected clients by kind, and connection attempts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionStats {
    pub current: u64,
    pub devices: u64,
    pub service_clients: u64,
    pub anonymous: u64,
    pub accepted_total: u64,
    pub refused_total: u64,
    /// Refused MQTT connection attempts by [`RefusalCause`] name, every cause listed;
    /// they add up to `refused_total` less the refused tracker logins
    /// (`teltonika.logins_refused`).
    pub refused_by_cause: BTreeMap<&'static str, u64>,
    /// What `mqtt.auth_backoff` refuses unchecked right now.
    pub backoff: BackoffStats,
}

/// Identities and addresses backed off right now (`mqtt.auth_backoff`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackoffStats {
    /// (identity, address) pairs.
    pub identities: usize,
    /// Addresses (IPv6: /64 networks).
    pub addresses: usize,
}

/// PUBLISH packets in and out of the broker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageStats {
    pub received: u64,
    pub sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Times a slow client made the router pause its link (backpressure, not loss).
    pub backpressure_pauses: u64,
    /// Times a publisher was paused because a subscriber of its topic was congested.
    pub publisher_pauses: u64,
    /// Clients disconnected because they did not take their messages.
    pub slow_consumers_disconnected: u64,
}

/// Drops by cause.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DropStats {
    pub acl_publish: u64,
    pub acl_subscribe: u64,
    pub acl_delivery: u64,
    pub decrypt_failed: u64,
    /// Device envelopes (0x02) refused as replays.
    pub replayed: u64,
    pub encrypt_failed: u64,
    pub malformed: u64,
    pub too_large: u64,
    pub queue_full: u64,
    pub expired: u64,
    /// Refusals and drops at a limit (max connections, Receive Maximum, packet sizes).
    pub limit: u64,
    pub session_queue_full: u64,
    /// QoS 0 messages past a connected client's pending limit, and messages a clean
    /// session still owed when it was cut off as a stuck consumer.
    pub slow_consumer: u64,
}
