//! The handle the admin API uses to look at and steer the running broker.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fleetmq_storage::{DeviceId, DeviceRecord};
use serde::Serialize;

use crate::link::{topic, Core};
use crate::sessions::{CloseReason, Control};
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

/// Why a retained message could not be listed or deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetainedError {
    #[error("invalid topic: {0:?}")]
    InvalidTopic(String),
    #[error("storage error: {0}")]
    Storage(String),
}

/// Cheap to clone; every clone steers the same broker.
#[derive(Clone)]
pub struct BrokerHandle {
    pub(crate) core: Arc<Core>,
}

impl BrokerHandle {
    /// Every connected client, sorted by client id.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.core.sessions.clients()
    }

    /// Whether a client with this id is connected.
    pub fn is_connected(&self, client_id: &str) -> bool {
        self.core.sessions.is_connected(client_id, None)
    }

    /// Whether the device is connected (as a device, not a client reusing its id).
    pub fn is_device_online(&self, id: &DeviceId) -> bool {
        self.core
            .sessions
            .is_connected(id.as_str(), Some(ClientKind::Device))
    }

    /// Disconnects every connection with this client id; false if there was none.
    pub fn kick(&self, client_id: &str) -> bool {
        self.core.sessions.send_where(
            |l| l.info.client_id == client_id,
            || Control::Close(CloseReason::Kicked),
        ) > 0
    }

    /// A device was deleted: forget cached credentials, close its connection at once,
    /// and forget its commands, telemetry, state and config (in the background).
    pub fn device_removed(&self, id: &DeviceId) {
        self.revoke_device(id);
        if let Some(services) = self.core.services.get().cloned() {
            // Before the delete is answered: a create after it must not find the device.
            services.commands.forget_cached_device(id);
            let id = id.clone();
            self.core
                .tracker
                .spawn(async move { services.forget_device(&id).await });
        }
    }

    /// A device's token was rotated: forget cached credentials and close its connection.
    pub fn device_credentials_changed(&self, id: &DeviceId) {
        self.revoke_device(id);
    }

    fn revoke_device(&self, id: &DeviceId) {
        self.core.auth.forget_device(id);
        self.core.sessions.send_where(
            |l| l.info.kind == ClientKind::Device && l.info.client_id == id.as_str(),
            || Control::Close(CloseReason::CredentialsRevoked),
        );
    }

    /// A device's keys or flags changed: a live connection picks up the new record.
    pub fn device_updated(&self, record: &DeviceRecord) {
        self.core.sessions.send_where(
            |l| l.info.kind == ClientKind::Device && l.info.client_id == record.id.as_str(),
            || Control::Reload(Box::new(record.clone())),
        );
    }

    /// A service client was deleted: forget cached credentials and close its connections.
    pub fn service_client_removed(&self, name: &str) {
        self.core.auth.forget_service(name);
        self.core.sessions.send_where(
            |l| l.service.as_deref() == Some(name),
            || Control::Close(CloseReason::CredentialsRevoked),
        );
    }

    /// Whether payload encryption is on for every device (`security.payload_encryption`).
    pub fn payload_encryption_default(&self) -> bool {
        self.core.config.payload_encryption
    }

    /// Publishes as the broker. Retained messages are stored durably before this returns.
    pub async fn publish(&self, msg: PublishRequest) -> Result<(), PublishError> {
        if !topic::valid_topic_name(&msg.topic) || msg.topic.starts_with('$') {
            return Err(PublishError::InvalidTopic(msg.topic));
        }
        if msg.qos > 2 {
            return Err(PublishError::InvalidQos(msg.qos));
        }
        let max = self.core.config.max_payload;
        if msg.payload.len() > max {
            return Err(PublishError::TooLarge {
                size: msg.payload.len(),
                max,
            });
        }
        if msg.retain {
            self.persist_retained(&msg).await?;
        }
        self.core
            .publish_system_wait(&msg.topic, &msg.payload, msg.qos)
            .await
            .map_err(|_| PublishError::ShuttingDown)
    }

    async fn persist_retained(&self, msg: &PublishRequest) -> Result<(), PublishError> {
        self.core
            .persist_retained(&msg.topic, &msg.payload, msg.qos, None)
            .await
            .map_err(|e| PublishError::Storage(e.to_string()))
    }

    /// Retained messages whose topic matches `filter`, ordered by topic.
    pub fn retained(
        &self,
        filter: &str,
    ) -> Result<Vec<fleetmq_storage::RetainedMessage>, RetainedError> {
        if !topic::valid_filter(filter) {
            return Err(RetainedError::InvalidTopic(filter.to_owned()));
        }
        Ok(self
            .core
            .retained
            .matching(filter)
            .into_iter()
            .map(|m| (*m).clone())
            .collect())
    }

    /// Deletes the retained message of exactly `topic`; false if there was none.
    pub async fn delete_retained(&self, topic: &str) -> Result<bool, RetainedError> {
        if !topic::valid_topic_name(topic) {
            return Err(RetainedError::InvalidTopic(topic.to_owned()));
        }
        self.core
            .delete_retained(topic)
            .await
            .map_err(|e| RetainedError::Storage(e.to_string()))
    }

    /// The broker's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.core.stats.snapshot()
    }
}

impl BrokerHandle {
    /// The device services (commands, telemetry, events, presence).
    pub fn services(&self) -> &crate::fleet::services::Services {
        // `start` sets them before the handle is given to anyone.
        self.core
            .services
            .get()
            .expect("fleet services are set at start")
    }

    /// The command engine (SPEC §5).
    pub fn commands(&self) -> &crate::fleet::commands::CommandEngine {
        &self.services().commands
    }

    /// The telemetry store (SPEC §6).
    pub fn telemetry(&self) -> &crate::fleet::telemetry::Telemetry {
        &self.services().telemetry
    }

    /// The event bus (SPEC §7): webhooks and the live stream.
    pub fn events(&self) -> &crate::fleet::events::EventBus {
        &self.services().events
    }

    /// A command sink that does not keep the broker alive (no reference cycle through
    /// the command engine).
    pub(crate) fn weak_sink(&self) -> WeakSink {
        WeakSink(Arc::downgrade(&self.core))
    }
}

/// Delivers commands to live device connections; see [`BrokerHandle::weak_sink`].
pub(crate) struct WeakSink(std::sync::Weak<Core>);

impl crate::fleet::CommandSink for WeakSink {
    fn deliver(&self, id: &DeviceId, generation: u64, command_id: &str, payload: Bytes) -> bool {
        let Some(core) = self.0.upgrade() else {
            return false;
        };
        core.sessions
            .deliver(id.as_str(), generation, command_id, payload)
    }
}
