//! A message's MQTT 5 properties as a session queue keeps them (`session::store`), and as
//! a stored message goes out again.

use fleetmq_storage::MessageProperties;
use rumqttd::protocol::PublishProperties;

use crate::link::session::resume;

/// A message's properties as a queue keeps them: without the Topic Alias (per
/// connection) and fleetmq's internal retain mark, with the
/// Message Expiry Interval, counted from `now_ms`, as the expiry time.
pub(crate) fn stored_properties(
    props: Option<&PublishProperties>,
    now_ms: u64,
) -> (MessageProperties, Option<u64>) {
    let Some(p) = props else {
        return (MessageProperties::default(), None);
    };
    let stored = MessageProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|c| c.to_vec()),
        user_properties: p
            .user_properties
            .iter()
            .filter(|(k, _)| k != resume::RETAIN_MARK)
            .cloned()
            .collect(),
        subscription_ids: p
            .subscription_identifiers
            .iter()
            .filter_map(|&id| u32::try_from(id).ok())
            .collect(),
    };
    let expires_at = p
        .message_expiry_interval
        .map(|s| now_ms.saturating_add(u64::from(s) * 1000));
    (stored, expires_at)
}

/// The PUBLISH properties a stored message goes out with to an MQTT 5 client, with
/// `expiry_s` left of its Message Expiry Interval; `None` when it has none.
pub(crate) fn publish_properties(
    p: &MessageProperties,
    expiry_s: Option<u32>,
) -> Option<PublishProperties> {
    let props = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: expiry_s,
        topic_alias: None,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone().map(Into::into),
        user_properties: p.user_properties.clone(),
        subscription_identifiers: p.subscription_ids.iter().map(|&id| id as usize).collect(),
        content_type: p.content_type.clone(),
    };
    (props != PublishProperties::default()).then_some(props)
}
