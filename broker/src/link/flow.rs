//! What an MQTT 5 client allows us to send it: at most Receive Maximum QoS 1/2
//! messages unacknowledged [MQTT-3.3.4-7] (later ones wait here, in order) and no packet
//! over its Maximum Packet Size [MQTT-3.1.2-24] (those are dropped as if delivered).
//!
//! The wait queue is bounded by the router: it never has more than 100 messages in
//! flight per link, and a held message is still in flight for it.

use std::collections::{HashSet, VecDeque};

use rumqttd::protocol::{ConnectProperties, Packet};

/// Per-connection outbound flow control.
#[derive(Debug)]
pub(crate) struct OutboundFlow {
    receive_max: usize,
    max_packet: Option<usize>,
    /// Packet ids of QoS 1/2 messages written and not yet completed by the client.
    inflight: HashSet<u16>,
    /// QoS 1/2 messages waiting for a free slot, oldest first.
    held: VecDeque<Packet>,
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
            inflight: HashSet::new(),
            held: VecDeque::new(),
        }
    }

    /// The largest packet the client accepts.
    pub(crate) fn max_packet(&self) -> Option<usize> {
        self.max_packet
    }

    /// Whether a QoS 1/2 message may be written now (nothing older waits either).
    pub(crate) fn may_send(&self) -> bool {
        self.held.is_empty() && self.inflight.len() < self.receive_max
    }

    pub(crate) fn hold(&mut self, publish: Packet) {
        self.held.push_back(publish);
    }

    pub(crate) fn sent(&mut self, pkid: u16) {
        self.inflight.insert(pkid);
    }

    /// The client completed `pkid` (PUBACK, PUBCOMP, or PUBREC with an error).
    pub(crate) fn completed(&mut self, pkid: u16) {
        self.inflight.remove(&pkid);
    }

    /// The next held message, if a slot is free.
    pub(crate) fn release(&mut self) -> Option<Packet> {
        if self.inflight.len() < self.receive_max {
            self.held.pop_front()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::PingResp;

    #[test]
    fn holds_beyond_receive_maximum_and_releases_in_order() {
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
        let mut f = OutboundFlow::new(Some(&props));
        assert_eq!(f.max_packet(), Some(100));
        assert!(f.may_send());
        f.sent(1);
        assert!(!f.may_send());
        f.hold(Packet::PingResp(PingResp));
        assert!(f.release().is_none());
        f.completed(1);
        assert!(!f.may_send(), "a held message goes first");
        assert!(f.release().is_some());
        assert!(f.may_send());
    }
}
