//! The handle the admin API uses to look at and steer the running broker.

use std::sync::Arc;

use fleetmq_storage::{DeviceId, DeviceRecord, ServiceClientRecord};

use crate::client::{ClientDetail, ClientInfo, ClientKind};
use crate::fleet::device_config::ConfigView;
use crate::fleet::services::Services;
use crate::fleet::FleetError;
use crate::link::codec::topic;
use crate::link::security::refusals::RefusalPage;
use crate::link::session::live::{CloseReason, Control};
use crate::link::Core;
use crate::publish::{PublishError, PublishRequest, RetainedError};
use crate::stats::{BackoffStats, StatsSnapshot};

/// Cheap to clone; every clone steers the same broker.
#[derive(Clone)]
pub struct BrokerHandle {
    pub(crate) core: Arc<Core>,
    pub(crate) services: Arc<Services>,
}

impl BrokerHandle {
    /// Every connected client, sorted by client id.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.core.sessions.clients()
    }

    /// A connected client with its subscriptions and counters, asked of its connection
    /// (which answers between two packets); `None` when no client has this id. A
    /// connection that keeps no MQTT state, or does not answer within a second, is
    /// described by what the live table knows.
    pub async fn client(&self, client_id: &str) -> Option<ClientDetail> {
        let (info, mailbox) = self.core.sessions.find(client_id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let asked = mailbox
            .try_control(Control::Snapshot(Box::new((info.clone(), tx))))
            .is_ok();
        let answer = match asked {
            true => tokio::time::timeout(std::time::Duration::from_secs(1), rx).await,
            false => return Some(ClientDetail::unknown(info)),
        };
        match answer {
            Ok(Ok(detail)) => Some(detail),
            _ => Some(ClientDetail::unknown(info)),
        }
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

    /// A device was deleted: close its connection at once, and forget its commands,
    /// telemetry, state and config (in the background).
    pub fn device_removed(&self, id: &DeviceId) {
        self.revoke_device(id);
        self.core.replay.forget(id);
        // Before the delete is answered: a create after it must not find the device.
        self.services.commands.forget_cached_device(id);
        let (services, id) = (self.services.clone(), id.clone());
        self.core
            .tracker
            .spawn(async move { services.forget_device(&id).await });
    }

    /// A device's token was rotated: close its connection (a reconnect is checked against
    /// the new hash; nothing about device tokens is cached).
    pub fn device_credentials_changed(&self, id: &DeviceId) {
        self.revoke_device(id);
    }

    fn revoke_device(&self, id: &DeviceId) {
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

    /// A service client's rules or password changed. New rules apply to its live
    /// connections from their next packet on (subscriptions they hold are checked at
    /// each delivery); a new password closes them, as deleting it would, so only
    /// holders of the new one reconnect.
    pub fn service_client_updated(&self, record: &ServiceClientRecord, password_changed: bool) {
        self.core.auth.forget_service(&record.name);
        let name = record.name.as_str();
        if password_changed {
            self.core.sessions.send_where(
                |l| l.service.as_deref() == Some(name),
                || Control::Close(CloseReason::CredentialsRevoked),
            );
            return;
        }
        let rules: std::sync::Arc<[fleetmq_storage::AclRule]> = record.rules.clone().into();
        self.core.sessions.send_where(
            |l| l.service.as_deref() == Some(name),
            || Control::Rules(rules.clone()),
        );
    }

    /// Whether a device may be provisioned with this plugin: one this broker has.
    pub fn has_plugin(&self, name: &str) -> bool {
        self.services.commands.has_plugin(name)
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
            .publish_system_props(&msg.topic, &msg.payload, msg.qos, None, msg.retain)
            .await
            .map_err(|_| PublishError::ShuttingDown)
    }

    async fn persist_retained(&self, msg: &PublishRequest) -> Result<(), PublishError> {
        self.core
            .persist_retained(&msg.topic, &msg.payload, msg.qos, None)
            .await
            .map_err(PublishError::Storage)
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
            .map_err(RetainedError::Storage)
    }

    /// Opens a live tap on the messages the broker routes whose topic matches `filter`
    /// (see `link/tap.rs`): at most [`crate::MAX_TAPS`] at once, closed when dropped.
    pub fn tap(&self, filter: &str) -> Result<crate::Tap, crate::TapError> {
        self.core.taps.open(filter)
    }

    /// The broker's counters.
    pub fn stats(&self) -> StatsSnapshot {
        let mut snapshot = self.core.stats.snapshot();
        let (identities, addresses) = self.core.backoff.blocking(std::time::Instant::now());
        snapshot.connections.backoff = BackoffStats {
            identities,
            addresses,
        };
        snapshot
    }

    /// The recent refused connection attempts, newest first: up to `limit`, older than
    /// the cursor `before`, and with `identity` only those whose client id or username
    /// it is.
    pub fn refused_connections(
        &self,
        identity: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> RefusalPage {
        self.core.refusals.page(identity, before, limit)
    }
}

impl BrokerHandle {
    /// The device services (commands, telemetry, events, presence).
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The command engine (SPEC §5).
    pub fn commands(&self) -> &crate::fleet::commands::CommandEngine {
        &self.services.commands
    }

    /// The jobs (SPEC §12).
    pub fn jobs(&self) -> &crate::fleet::jobs::Jobs {
        &self.services.jobs
    }

    /// The telemetry store (SPEC §6).
    pub fn telemetry(&self) -> &crate::fleet::telemetry::Telemetry {
        &self.services.telemetry
    }

    /// The devices' own events (`device/{id}/events`, SPEC §7), stored.
    pub fn device_events(&self) -> &crate::fleet::device_events::DeviceEvents {
        &self.services.device_events
    }

    /// Alarm rules and alarms (SPEC §11).
    pub fn alarms(&self) -> &crate::fleet::alarms::Alarms {
        &self.services.alarms
    }

    /// The event bus (SPEC §7): webhooks and the live stream.
    pub fn events(&self) -> &crate::fleet::events::EventBus {
        &self.services.events
    }

    /// Stores `config` as the device's next version and publishes it retained at QoS 1
    /// on `device/{id}/config` (SPEC §6).
    pub async fn set_device_config(
        &self,
        id: &DeviceId,
        config: serde_json::Value,
    ) -> Result<ConfigView, FleetError> {
        let stored = self.services.store_device_config(id, config).await?;
        let msg = PublishRequest {
            topic: stored.topic,
            payload: stored.payload,
            qos: 1,
            retain: true,
        };
        self.publish(msg).await.map_err(FleetError::Publish)?;
        tracing::info!(device_id = %id, version = stored.view.version, "device config published");
        Ok(stored.view)
    }

    /// The device's current configuration; `NotFound` if the device does not exist, `None`
    /// if no configuration was ever set.
    pub async fn device_config(&self, id: &DeviceId) -> Result<Option<ConfigView>, FleetError> {
        self.services.device_config(id).await
    }
}
