//! What the router forgets about a message, carried through it as one internal user
//! property: the QoS it was published with (rumqttd delivers at the subscription QoS,
//! `routing.rs` ~1564), the connection that published it (No Local) and when it arrived
//! (Message Expiry Interval). Ingress attaches it, egress removes it; a client can never
//! set or see it (3.1.1 receivers get no properties at all).

use rumqttd::protocol::PublishProperties;

/// The user property name. Clients' own properties with this name are dropped at ingress.
const KEY: &str = "$fleetmq";

/// A message's origin as ingress saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// QoS of the PUBLISH that brought the message in.
    pub(crate) qos: u8,
    /// The publishing connection (0: the broker itself).
    pub(crate) conn_id: u64,
    /// Arrival, unix milliseconds.
    pub(crate) at_ms: u64,
}

impl Origin {
    /// Removes any client-supplied copy of the property and attaches `self`.
    pub(crate) fn attach(self, props: Option<PublishProperties>) -> Option<PublishProperties> {
        let mut props = props.unwrap_or_default();
        props.user_properties.retain(|(k, _)| k != KEY);
        props.user_properties.push((
            KEY.to_owned(),
            format!("{}:{}:{}", self.qos, self.conn_id, self.at_ms),
        ));
        Some(props)
    }

    /// Takes the origin out of `props` (the last property of that name, which is ours).
    /// Properties that carried nothing else become `None`.
    pub(crate) fn take(props: &mut Option<PublishProperties>) -> Option<Origin> {
        let p = props.as_mut()?;
        let at = p.user_properties.iter().rposition(|(k, _)| k == KEY)?;
        let (_, value) = p.user_properties.remove(at);
        if *p == PublishProperties::default() {
            *props = None;
        }
        let mut parts = value.split(':');
        let qos = parts.next()?.parse().ok()?;
        let conn_id = parts.next()?.parse().ok()?;
        let at_ms = parts.next()?.parse().ok()?;
        Some(Origin {
            qos,
            conn_id,
            at_ms,
        })
    }
}

/// The Message Expiry Interval left at `now_ms` of a message that expires at
/// `expires_at_ms`, or `None` when it ran out [MQTT-3.3.2-5, -6].
pub(crate) fn remaining_expiry(expires_at_ms: u64, now_ms: u64) -> Option<u32> {
    if expires_at_ms <= now_ms {
        return None;
    }
    // Rounded up: a message with 300 ms left still says 1 s, never 0.
    Some(u32::try_from((expires_at_ms - now_ms).div_ceil(1000)).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_and_take_round_trip_and_leave_client_properties_alone() {
        let client = PublishProperties {
            user_properties: vec![("a".into(), "1".into()), (KEY.into(), "2:999:1".into())],
            ..PublishProperties::default()
        };
        let o = Origin {
            qos: 1,
            conn_id: 7,
            at_ms: 1234,
        };
        let mut props = o.attach(Some(client));
        assert_eq!(Origin::take(&mut props), Some(o));
        assert_eq!(
            props.expect("client property stays").user_properties,
            vec![("a".to_owned(), "1".to_owned())]
        );
        let mut bare = o.attach(None);
        assert_eq!(Origin::take(&mut bare), Some(o));
        assert!(bare.is_none());
        assert_eq!(Origin::take(&mut None), None);
    }

    #[test]
    fn expiry_counts_down_and_runs_out() {
        assert_eq!(remaining_expiry(10_000, 0), Some(10));
        assert_eq!(remaining_expiry(10_000, 2500), Some(8));
        assert_eq!(remaining_expiry(10_000, 9999), Some(1));
        assert_eq!(remaining_expiry(10_000, 10_000), None);
        assert_eq!(remaining_expiry(0, 0), None);
    }
}
