//! Last wills: published by the link layer (rumqttd publishes a will only on an event a
//! local link cannot send), with their MQTT 5 properties, after the Will Delay Interval
//! (capped by the Session Expiry Interval [MQTT-3.1.3-9]); a new connection of the same
//! client id inside the delay cancels it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::protocol::{ConnectReturnCode, LastWill, LastWillProperties, PublishProperties};
use tokio_util::sync::CancellationToken;

use crate::link::codec::framing::Version;
use crate::link::codec::topic;
use crate::link::connection::refusal::ConnectFailure;
use crate::link::security::acl::Principal;
use crate::link::security::auth::Identity;
use crate::link::Core;
use crate::stats::{DropCause, RefusalCause};

/// A will accepted at CONNECT (ACL-checked, decrypted).
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub(crate) will: LastWill,
    pub(crate) props: Option<LastWillProperties>,
    /// min(Will Delay Interval, Session Expiry Interval); zero for 3.1.1.
    pub(crate) delay: Duration,
}

impl Will {
    pub(crate) fn new(
        will: LastWill,
        props: Option<LastWillProperties>,
        session_expiry_s: u32,
    ) -> Will {
        let delay_s = props
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0)
            .min(session_expiry_s);
        Will {
            will,
            props,
            delay: Duration::from_secs(u64::from(delay_s)),
        }
    }

    /// The PUBLISH properties the will carries to its subscribers [MQTT-3.1.3-10]
    /// (`Core::publish_system_props` adds its QoS as the origin).
    fn publish_properties(&self) -> Option<PublishProperties> {
        self.props.clone().map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            subscription_identifiers: Vec::new(),
            content_type: p.content_type,
        })
    }
}

/// Wills waiting for their delay, by router client id.
#[derive(Default)]
pub(crate) struct PendingWills {
    map: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next: AtomicU64,
}

impl PendingWills {
    /// A connection for `key` was accepted: a will still waiting for it is dropped.
    pub(crate) fn cancel(&self, key: &str) {
        let removed = self.lock().remove(key);
        if let Some((_, token)) = removed {
            token.cancel();
            tracing::debug!(router_key = key, "delayed will cancelled by a reconnect");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Publishes `will` now, or schedules it when it has a delay. Returns whether it was
/// published now.
pub(crate) async fn fire(core: &Arc<Core>, key: &str, will: Will) -> bool {
    if will.delay.is_zero() {
        publish(core, &will).await;
        return true;
    }
    let token = core.shutdown.child_token();
    let id = core.wills.next.fetch_add(1, Relaxed);
    if let Some((_, old)) = core
        .wills
        .lock()
        .insert(key.to_owned(), (id, token.clone()))
    {
        old.cancel();
    }
    let core = core.clone();
    let key = key.to_owned();
    let tracker = core.tracker.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(will.delay) => {}
        }
        {
            let mut map = core.wills.lock();
            if map.get(&key).is_some_and(|(current, _)| *current == id) {
                map.remove(&key);
            } else {
                return;
            }
        }
        publish(&core, &will).await;
    });
    false
}

/// Routes a will; a retained will is stored like any retained message.
async fn publish(core: &Core, will: &Will) {
    let w = &will.will;
    let topic = String::from_utf8_lossy(&w.topic).into_owned();
    if w.retain {
        if let Err(e) = core
            .persist_retained(
                &topic,
                &w.message,
                w.qos as u8,
                will.publish_properties().as_ref(),
            )
            .await
        {
            tracing::error!(topic, error = %e, "could not store a retained will");
        }
    }
    if let Err(e) = core
        .publish_system_props(
            &topic,
            &w.message,
            w.qos as u8,
            will.publish_properties(),
            w.retain,
        )
        .await
    {
        tracing::error!(topic, error = e, "could not publish a will");
    }
}

/// Will topics pass the same ACL as a PUBLISH; an encrypted device's will is decrypted now.
pub(crate) fn check(
    core: &Core,
    principal: &Principal,
    identity: &Identity,
    will: Option<LastWill>,
    version: Version,
) -> Result<Option<LastWill>, ConnectFailure> {
    let Some(mut will) = will else {
        return Ok(None);
    };
    let topic = std::str::from_utf8(&will.topic)
        .unwrap_or_default()
        .to_owned();
    if !topic::valid_topic_name(&topic) {
        let code = match version {
            Version::V4 => ConnectReturnCode::NotAuthorized,
            Version::V5 => ConnectReturnCode::TopicNameInvalid,
        };
        return Err(ConnectFailure::refuse(
            version,
            code,
            RefusalCause::WillRefused,
            format!("invalid will topic {topic:?}"),
        ));
    }
    if !principal.may_publish(&topic) {
        core.stats.dropped(DropCause::AclPublish);
        return Err(ConnectFailure::refuse(
            version,
            ConnectReturnCode::NotAuthorized,
            RefusalCause::WillRefused,
            format!("will topic {topic:?} denied by ACL"),
        ));
    }
    if let Identity::Device(device) = identity {
        if let Some(crypto) = core.crypto_for(device) {
            match crypto.open_will(&topic, &will.message) {
                Ok(plain) => will.message = plain.into(),
                Err(e) => {
                    core.stats.dropped(DropCause::DecryptFailed);
                    return Err(ConnectFailure::refuse(
                        version,
                        ConnectReturnCode::NotAuthorized,
                        RefusalCause::WillRefused,
                        format!("will payload: {e}"),
                    ));
                }
            }
        }
    }
    Ok(Some(will))
}
