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
