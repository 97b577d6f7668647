//! Outbound acknowledgements, put back in the order rumqttd's router demands.
//!
//! The router disconnects a link whose PUBACK/PUBREC or PUBCOMP arrive out of order
//! (`router/iobufs.rs` `register_ack`/`register_pubcomp`), while MQTT lets clients ack in
//! any order. Every QoS 1/2 message written to a client gets a slot in send order; an ack
//! fills its slot, and acks leave for the router only from the front of the queue. A
//! message dropped at delivery (read ACL, no key) gets an ack synthesised here.

use std::collections::{HashSet, VecDeque};

use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
};

struct Slot {
    pkid: u16,
    ack: Option<Packet>,
    /// Routed at QoS 2, written at QoS 1: the client's PUBACK stands for the PUBREC.
    downgraded: bool,
}

/// Queues client acks until they can go to the router in order.
#[derive(Default)]
pub(crate) struct OutboundAcks {
    inflight: VecDeque<Slot>,
    pubrels: VecDeque<Slot>,
    /// QoS 2 messages this link dropped at delivery: their PUBREL is answered here.
    swallow_pubrel: HashSet<u16>,
}

/// Bounds the queues: the router never has more than 100 messages in flight per link.
const MAX_TRACKED: usize = 1024;

impl OutboundAcks {
    /// A QoS 1/2 message with `pkid` was written to the client.
    pub(crate) fn sent(&mut self, pkid: u16) {
        if self.inflight.len() < MAX_TRACKED {
            self.inflight.push_back(Slot {
                pkid,
                ack: None,
                downgraded: false,
            });
        }
    }

    /// A QoS 2 message from the router was written at QoS 1 (its publisher used QoS 1):
    /// the client's PUBACK becomes the router's PUBREC, and the router's PUBREL is
    /// answered here.
    pub(crate) fn sent_downgraded(&mut self, pkid: u16) {
        if self.inflight.len() < MAX_TRACKED {
            self.swallow_pubrel.insert(pkid);
            self.inflight.push_back(Slot {
                pkid,
                ack: None,
                downgraded: true,
            });
        }
    }

    /// A QoS 1/2 message was dropped at delivery: ack it on the client's behalf.
    pub(crate) fn dropped(&mut self, pkid: u16, qos: u8, to_router: &mut Vec<Packet>) {
        let ack = if qos == 2 {
            self.swallow_pubrel.insert(pkid);
            Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )
        } else {
            Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )
        };
        self.inflight.push_back(Slot {
            pkid,
            ack: Some(ack),
            downgraded: false,
        });
        Self::drain(&mut self.inflight, to_router);
    }

    /// The client sent PUBACK or PUBREC; returns false if nothing was waiting for it.
    pub(crate) fn client_ack(
        &mut self,
        pkid: u16,
        ack: Packet,
        to_router: &mut Vec<Packet>,
    ) -> bool {
        let Some(slot) = self
            .inflight
            .iter_mut()
            .find(|s| s.pkid == pkid && s.ack.is_none())
        else {
            return false;
        };
        slot.ack = Some(match ack {
            Packet::PubAck(..) if slot.downgraded => Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ),
            ack => ack,
        });
        Self::drain(&mut self.inflight, to_router);
        true
    }

    /// The router sent PUBREL for `pkid`; returns whether it goes to the client.
    pub(crate) fn router_pubrel(&mut self, pkid: u16, to_router: &mut Vec<Packet>) -> bool {
        if self.swallow_pubrel.remove(&pkid) {
            let comp = Packet::PubComp(
                PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                },
                None,
            );
            self.pubrels.push_back(Slot {
                pkid,
                ack: Some(comp),
                downgraded: false,
            });
            Self::drain(&mut self.pubrels, to_router);
            return false;
        }
        if self.pubrels.len() < MAX_TRACKED {
            self.pubrels.push_back(Slot {
                pkid,
                ack: None,
                downgraded: false,
            });
        }
        true
    }

    /// The client sent PUBCOMP; returns false if nothing was waiting for it.
    pub(crate) fn client_pubcomp(
        &mut self,
        pkid: u16,
        comp: Packet,
        to_router: &mut Vec<Packet>,
    ) -> bool {
        let Some(slot) = self
            .pubrels
            .iter_mut()
            .find(|s| s.pkid == pkid && s.ack.is_none())
        else {
            return false;
        };
        slot.ack = Some(comp);
        Self::drain(&mut self.pubrels, to_router);
        true
    }

    fn drain(queue: &mut VecDeque<Slot>, to_router: &mut Vec<Packet>) {
        while queue.front().is_some_and(|s| s.ack.is_some()) {
            if let Some(ack) = queue.pop_front().and_then(|s| s.ack) {
                to_router.push(ack);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puback(pkid: u16) -> Packet {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        )
    }

    fn pkids(packets: &[Packet]) -> Vec<u16> {
        packets
            .iter()
            .map(|p| match p {
                Packet::PubAck(a, _) => a.pkid,
                Packet::PubRec(a, _) => a.pkid,
                Packet::PubComp(a, _) => a.pkid,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn acks_in_any_order_reach_the_router_in_send_order() {
        let mut acks = OutboundAcks::default();
        let mut out = Vec::new();
        for pkid in 1..=3 {
            acks.sent(pkid);
        }
        assert!(acks.client_ack(3, puback(3), &mut out));
        assert!(acks.client_ack(2, puback(2), &mut out));
        assert!(out.is_empty());
        assert!(acks.client_ack(1, puback(1), &mut out));
        assert_eq!(pkids(&out), [1, 2, 3]);
    }

    #[test]
    fn unsolicited_and_duplicate_acks_are_refused() {
        let mut acks = OutboundAcks::default();
        let mut out = Vec::new();
        assert!(!acks.client_ack(7, puback(7), &mut out));
        acks.sent(1);
        acks.sent(2);
        assert!(acks.client_ack(2, puback(2), &mut out));
        assert!(!acks.client_ack(2, puback(2), &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn dropped_qos2_gets_pubrec_and_pubcomp_synthesised() {
        let mut acks = OutboundAcks::default();
        let mut out = Vec::new();
        acks.dropped(5, 2, &mut out);
        assert!(matches!(out[0], Packet::PubRec(ref r, _) if r.pkid == 5));
        assert!(!acks.router_pubrel(5, &mut out));
        assert!(matches!(out[1], Packet::PubComp(ref c, _) if c.pkid == 5));
    }

    #[test]
    fn qos2_downgraded_to_qos1_turns_the_puback_into_pubrec_and_answers_pubrel() {
        let mut acks = OutboundAcks::default();
        let mut out = Vec::new();
        acks.sent(3);
        acks.sent_downgraded(4);
        assert!(acks.client_ack(4, puback(4), &mut out));
        assert!(out.is_empty(), "still behind 3");
        assert!(acks.client_ack(3, puback(3), &mut out));
        assert!(matches!(out[0], Packet::PubAck(ref a, _) if a.pkid == 3));
        assert!(matches!(out[1], Packet::PubRec(ref r, _) if r.pkid == 4));
        assert!(
            !acks.router_pubrel(4, &mut out),
            "the client never sees this PUBREL"
        );
        assert!(matches!(out[2], Packet::PubComp(ref c, _) if c.pkid == 4));
    }
}
