//! The handle the admin API uses to look at and steer the running broker.

use std::net::SocketAddr;

use bytes::Bytes;
use fleetmq_storage::{DeviceId, DeviceRecord};
use serde::Serialize;

use crate::stats::StatsSnapshot;

/// Which listener a client came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Ws,
    Tls,
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

/// A message the broker publishes on its own behalf (`POST /api/v1/publish`).
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// Why the broker refused to publish a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid qos {0}: must be 0, 1 or 2")]
    InvalidQos(u8),
    #[error("payload of {size} bytes exceeds mqtt.max_payload ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("broker is shutting down")]
    ShuttingDown,
    #[error("storage error: {0}")]
    Storage(String),
}

/// Cheap to clone; every clone steers the same broker.
#[derive(Clone)]
pub struct BrokerHandle {
    _private: (),
}

impl BrokerHandle {
    /// Every connected client, sorted by client id.
    pub fn clients(&self) -> Vec<ClientInfo> {
        unimplemented!("filled in by the link layer")
    }
    /// Whether a client with this id is connected.
    pub fn is_connected(&self, _client_id: &str) -> bool {
        unimplemented!("filled in by the link layer")
    }
    /// Disconnects the client; false if no such client is connected.
    pub fn kick(&self, _client_id: &str) -> bool {
        unimplemented!("filled in by the link layer")
    }
    /// A device was deleted: forget cached credentials and close its connection at once.
    pub fn device_removed(&self, _id: &DeviceId) {
        unimplemented!("filled in by the link layer")
    }
    /// A device's token was rotated: forget cached credentials and close its connection.
    pub fn device_credentials_changed(&self, _id: &DeviceId) {
        unimplemented!("filled in by the link layer")
    }
    /// A device's keys or flags changed: a live connection picks up the new record.
    pub fn device_updated(&self, _record: &DeviceRecord) {
        unimplemented!("filled in by the link layer")
    }
    /// A service client was deleted: forget cached credentials and close its connections.
    pub fn service_client_removed(&self, _name: &str) {
        unimplemented!("filled in by the link layer")
    }
    /// Whether payload encryption is on for every device (`security.payload_encryption`).
    pub fn payload_encryption_default(&self) -> bool {
        unimplemented!("filled in by the link layer")
    }
    /// Publishes as the broker. Retained messages are stored durably before this returns.
    pub async fn publish(&self, _msg: PublishRequest) -> Result<(), PublishError> {
        unimplemented!("filled in by the link layer")
    }
    /// The broker's counters.
    pub fn stats(&self) -> StatsSnapshot {
        unimplemented!("filled in by the link layer")
    }
}
