//! What an MQTT 5 client allows us to send it: at most Receive Maximum QoS 1/2
//! messages unacknowledged [MQTT-3.3.4-7] and no packet over its Maximum Packet Size
//! [MQTT-3.1.2-24] (those are dropped as if delivered). The outbound queue
//! (`outbound.rs`) applies both; later messages wait there, in order.

use rumqttd::protocol::ConnectProperties;

/// A client's outbound limits.
#[derive(Debug)]
pub(crate) struct OutboundFlow {
    receive_max: usize,
    max_packet: Option<usize>,
}

impl OutboundFlow {
    /// From the client's CONNECT properties (3.1.1 clients: no limits).
    pub(crate) fn new(props: Option<&ConnectProperties>) -> OutboundFlow {
        OutboundFlow {
            receive_max: props
                .and_then(|p| p.receive_maximum)
                .map_or(usize::from(u16::MAX), usize::from),
            max_packet: props
                .and_then(|p| p.max_packet_size)
                .and_then(|m| usize::try_from(m).ok()),
        }
    }

    /// The largest packet the client accepts.
    pub(crate) fn max_packet(&self) -> Option<usize> {
        self.max_packet
    }

    /// QoS 1/2 messages the client accepts unacknowledged.
    pub(crate) fn receive_max(&self) -> usize {
        self.receive_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_connect_properties() {
        let props = ConnectProperties {
            session_expiry_interval: None,
            receive_maximum: Some(1),
            max_packet_size: Some(100),
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        };
        let f = OutboundFlow::new(Some(&props));
        assert_eq!(f.max_packet(), Some(100));
        assert_eq!(f.receive_max(), 1);
        let none = OutboundFlow::new(None);
        assert_eq!((none.max_packet(), none.receive_max()), (None, 65_535));
    }
}
