//! Who is connected and how: the leaf types the link layer, the fleet services and the
//! admin API all speak.

use std::net::SocketAddr;

use serde::Serialize;

/// Which listener a client came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Ws,
    Tls,
    /// WebSocket over TLS.
    Wss,
}

/// Who a connected client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    Device,
    Service,
    Anonymous,
}

/// One connected MQTT client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub client_id: String,
    pub kind: ClientKind,
    pub username: Option<String>,
    /// `"3.1.1"` or `"5"`.
    pub protocol: &'static str,
    pub transport: Transport,
    pub peer: SocketAddr,
    pub connected_at_ms: u64,
}

/// A refused connection attempt as the recent-refusals list keeps it: repeats of the
/// same (address, client id, cause) are one entry with a count. Never holds a secret.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedConnect {
    /// The last time, unix ms.
    pub at_ms: u64,
    /// The first time this entry was counted, unix ms.
    pub first_at_ms: u64,
    /// The address of the last attempt.
    pub peer: SocketAddr,
    /// `None` when no CONNECT was read (timeout, malformed, closed).
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// `"3.1.1"` or `"5"`; `None` when no CONNECT was read.
    pub protocol: Option<&'static str>,
    pub transport: Transport,
    pub cause: crate::stats::RefusalCause,
    /// Attempts this entry stands for.
    pub count: u64,
}

/// One connected client in detail (`GET /api/v1/clients/{client_id}`): what the live
/// connection answered when asked, or only [`ClientInfo`] for a connection that does not
/// keep MQTT state (a Teltonika tracker) or did not answer in time.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDetail {
    #[serde(flatten)]
    pub info: ClientInfo,
    /// Keep Alive in seconds as agreed (0: none).
    pub keepalive_s: Option<u16>,
    /// Clean Session (3.1.1) / Clean Start (5).
    pub clean_start: Option<bool>,
    /// Whether the session outlives this connection.
    pub session_persistent: Option<bool>,
    /// Session Expiry Interval in seconds (0: the session ends with the connection);
    /// `None` when it never expires (a 3.1.1 persistent session), or unknown.
    pub session_expiry_s: Option<u32>,
    /// In filter order.
    pub subscriptions: Vec<SubscriptionInfo>,
    pub counters: Option<ClientCounters>,
}

impl ClientDetail {
    /// What the live table knows of a connection that did not describe itself.
    pub(crate) fn unknown(info: ClientInfo) -> ClientDetail {
        ClientDetail {
            info,
            keepalive_s: None,
            clean_start: None,
            session_persistent: None,
            session_expiry_s: None,
            subscriptions: Vec::new(),
            counters: None,
        }
    }
}

/// One subscription of a connected client, with its MQTT 5 options.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionInfo {
    /// As the client wrote it (`$share/{group}/...` included).
    pub filter: String,
    /// The QoS granted.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
    /// Its Subscription Identifier (MQTT 5).
    pub subscription_id: Option<u32>,
    /// The group of a shared subscription.
    pub share_group: Option<String>,
}

/// What one connection has done since it connected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientCounters {
    /// PUBLISH packets read from the client.
    pub messages_in: u64,
    /// PUBLISH packets written to the client.
    pub messages_out: u64,
    /// Bytes read from the client's socket (after CONNECT).
    pub bytes_in: u64,
    /// Bytes written to the client's socket.
    pub bytes_out: u64,
    /// Messages and packets of this connection dropped, by cause (the causes of
    /// `GET /api/v1/stats`' `messages.dropped_by_cause`; only those that happened).
    pub dropped_by_cause: std::collections::BTreeMap<&'static str, u64>,
    /// QoS 1/2 messages written to the client and not yet completed.
    pub inflight_out: usize,
    /// QoS 2 messages from the client waiting for its PUBREL.
    pub inflight_in: usize,
    /// Messages queued for the client and not written yet.
    pub queued_out: usize,
}
