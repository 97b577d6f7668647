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
