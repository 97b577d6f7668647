//! The connection's way to the router: a link of its own (service and anonymous
//! clients), or, for a device, the shared links of `link::device_links` with its
//! SUBSCRIBEs answered here and its routed messages taken from its mailbox.

use futures_util::FutureExt;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, PublishProperties, QoS, SubAck, SubscribeReasonCode};
use rumqttd::Notification;

use crate::link::connection::egress::Source;
use crate::link::connection::{Connection, Ending};

/// Who carries a connection's packets to and from the router.
pub(crate) enum RouterLink {
    /// A router link of the connection's own (boxed: a fleet's connections are devices).
    Own(Box<OwnLink>),
    /// A device: publishes through a shared publisher link, routed messages through the
    /// dispatcher and the connection's mailbox, subscriptions kept by the connection.
    Device,
}

/// Both ends of a connection's own router link.
pub(crate) struct OwnLink {
    pub(crate) tx: LinkTx,
    pub(crate) rx: LinkRx,
}

impl RouterLink {
    /// The router's next notification; never for a device.
    pub(crate) async fn next(&mut self) -> Result<Option<Notification>, LinkError> {
        match self {
            RouterLink::Own(own) => own.rx.next().await,
            RouterLink::Device => std::future::pending().await,
        }
    }

    /// A notification the router already sent, if any.
    pub(crate) fn try_next(&mut self) -> Option<Result<Option<Notification>, LinkError>> {
        match self {
            RouterLink::Own(own) => own.rx.next().now_or_never(),
            RouterLink::Device => None,
        }
    }

    pub(crate) fn is_own(&self) -> bool {
        matches!(self, RouterLink::Own(_))
    }
}

impl Connection {
    /// A device's packets for the router: publishes go to its shared publisher link;
    /// a SUBSCRIBE is answered as the router would (every filter granted at the QoS
    /// asked for, after the connection recorded it), which also completes the persistent
    /// session's bookkeeping; acknowledgements and UNSUBSCRIBEs concern no router link.
    pub(crate) fn send_shared(&mut self) -> Result<(), Ending> {
        let mut publishes = Vec::new();
        let mut subacks = Vec::new();
        for packet in self.to_router.drain(..) {
            match packet {
                Packet::Publish(..) => publishes.push(packet),
                Packet::Subscribe(sub, _) => {
                    let return_codes = sub
                        .filters
                        .iter()
                        .map(|f| match f.qos {
                            QoS::AtMostOnce => SubscribeReasonCode::QoS0,
                            QoS::AtLeastOnce => SubscribeReasonCode::QoS1,
                            QoS::ExactlyOnce => SubscribeReasonCode::QoS2,
                        })
                        .collect();
                    subacks.push(SubAck {
                        pkid: sub.pkid,
                        return_codes,
                    });
                }
                _ => {}
            }
        }
        // A `Packet` is a few hundred bytes: an idle device keeps no room for them.
        self.to_router = Vec::new();
        let sent = self
            .core
            .device_links
            .publish(&self.s.router_key, &mut publishes);
        for suback in subacks {
            self.router_ack(Packet::SubAck(suback, None));
        }
        sent.map_err(|_| Ending::RouterGone)
    }

    /// After the mailbox's commands: the dispatched messages queued, written.
    pub(crate) async fn dispatched(&mut self) -> Result<(), Ending> {
        self.take_dispatched();
        self.session_sync().await;
        self.flush().await?;
        self.update_congestion();
        Ok(())
    }

    /// The messages the dispatcher queued for this device, each as the router would
    /// have delivered it to the matching subscriptions (none: not for the client).
    pub(crate) fn take_dispatched(&mut self) {
        for (publish, props) in self.s.mailbox.take_routed() {
            let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                continue;
            };
            for (qos, ids) in self.subs.copies_for(topic) {
                let mut props = props.clone();
                if !ids.is_empty() {
                    props
                        .get_or_insert_with(PublishProperties::default)
                        .subscription_identifiers = ids;
                }
                self.deliver(publish.clone(), props, qos, Source::Dispatch);
            }
        }
    }
}
