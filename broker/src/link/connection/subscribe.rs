//! SUBSCRIBE and UNSUBSCRIBE from the client: each filter checked on its own (syntax,
//! shared subscriptions, ACL, `$SYS`), refusals merged into the router's SUBACK, and
//! UNSUBACKs answered from the connection's own subscription table.

use rumqttd::protocol::{
    DisconnectReasonCode as Reason, Filter, Packet, QoS, SubAck, Subscribe, SubscribeProperties,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};

use crate::link::codec::framing::Version;
use crate::link::codec::topic;
use crate::link::connection::subscriptions::{self, SubOptions};
use crate::link::connection::{Connection, Ending};
use crate::stats::DropCause;

/// Who serves an accepted subscription.
pub(crate) enum Target {
    Router,
    Sys,
}

/// A SUBSCRIBE's filters, sorted by who answers them.
#[derive(Default)]
struct Sorted {
    /// Per filter in order: the code decided here, or `None` for the router's.
    slots: Vec<Option<SubscribeReasonCode>>,
    /// Filters for the router.
    routed: Vec<Filter>,
    /// Routed filters the connection had already (MQTT replaces them).
    replaced: Vec<String>,
    /// Whether a `$SYS` filter was added (its snapshot follows the SUBACK).
    sys_added: bool,
}

impl Connection {
    pub(crate) fn subscribe(
        &mut self,
        sub: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Result<Vec<String>, Ending> {
        if props.as_ref().and_then(|p| p.id) == Some(0) {
            // Subscription Identifier 0 is a protocol error [MQTT-3.8.2-?]; rumqttd would
            // drop the link without a word.
            return Err(Ending::Violation(Reason::ProtocolError));
        }
        let id = props.as_ref().and_then(|p| p.id);
        let sorted = self.sort_filters(sub.filters, id)?;
        let sys_added = sorted.sys_added;
        let paths = sorted.routed.iter().map(|f| f.path.clone()).collect();
        if sorted.routed.is_empty() {
            let return_codes = sorted.slots.into_iter().flatten().collect();
            self.write_packet(Packet::SubAck(
                SubAck {
                    pkid: sub.pkid,
                    return_codes,
                },
                None,
            ));
        } else {
            self.route_subscribe(sub.pkid, sorted, props);
        }
        if sys_added {
            let values = crate::link::sys::snapshot(&self.core);
            self.write_sys(&values, true);
        }
        Ok(paths)
    }

    /// Checks each filter on its own and records the accepted ones (with identifier
    /// `id`) in the connection's table.
    fn sort_filters(&mut self, filters: Vec<Filter>, id: Option<usize>) -> Result<Sorted, Ending> {
        let v5 = self.s.version == Version::V5;
        let mut sorted = Sorted::default();
        for filter in filters {
            let options = SubOptions {
                qos: filter.qos as u8,
                no_local: v5 && filter.nolocal,
                id,
            };
            match self.check_filter(&filter.path) {
                Ok(Target::Router) => {
                    if v5 && filter.nolocal && topic::is_shared(&filter.path) {
                        // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                        return Err(Ending::Violation(Reason::ProtocolError));
                    }
                    if self.subs.add(&filter.path, options) {
                        // rumqttd keeps an existing subscription as it was (QoS,
                        // identifier); MQTT replaces it [MQTT-3.8.4-3].
                        sorted.replaced.push(filter.path.clone());
                    }
                    sorted.slots.push(None);
                    sorted.routed.push(filter);
                }
                Ok(Target::Sys) => {
                    // Served by the link at QoS 0 (see `sys`).
                    self.subs.add(&filter.path, options);
                    sorted.sys_added = true;
                    sorted
                        .slots
                        .push(Some(SubscribeReasonCode::Success(QoS::AtMostOnce)));
                }
                Err(code) if v5 => sorted.slots.push(Some(code)),
                Err(_) => sorted.slots.push(Some(SubscribeReasonCode::Failure)),
            }
        }
        Ok(sorted)
    }

    /// Hands the routed filters to the router, whose SUBACK is merged with the codes
    /// decided here (`egress.rs`); replaced ones are dropped there first.
    fn route_subscribe(&mut self, pkid: u16, sorted: Sorted, props: Option<SubscribeProperties>) {
        let Sorted {
            slots,
            routed,
            replaced,
            ..
        } = sorted;
        if slots.iter().any(Option::is_some) {
            self.pending_subacks.insert(pkid, slots);
        }
        if !replaced.is_empty() {
            // Its UNSUBACK is swallowed like every router UNSUBACK.
            self.to_router.push(Packet::Unsubscribe(
                Unsubscribe {
                    pkid,
                    filters: replaced,
                },
                None,
            ));
        }
        let id = props.as_ref().and_then(|p| p.id);
        self.session_subscribing(pkid, &routed, id);
        self.to_router.push(Packet::Subscribe(
            Subscribe {
                pkid,
                filters: routed,
            },
            props,
        ));
    }

    pub(crate) fn check_filter(&mut self, path: &str) -> Result<Target, SubscribeReasonCode> {
        let inner = match topic::split_shared(path) {
            Some((_, inner)) => inner,
            None if topic::is_shared(path) => return Err(SubscribeReasonCode::TopicFilterInvalid),
            None => path,
        };
        if !topic::valid_filter(inner) {
            return Err(SubscribeReasonCode::TopicFilterInvalid);
        }
        if !self.s.principal.may_subscribe(path) {
            self.dropped(DropCause::AclSubscribe);
            tracing::warn!(client_id = %self.s.client_id, filter = path, "subscribe denied by ACL");
            return Err(SubscribeReasonCode::NotAuthorized);
        }
        if subscriptions::is_sys(path) {
            return Ok(Target::Sys);
        }
        if inner.starts_with('$') {
            // rumqttd's router drops a link that subscribes to a `$` filter, and nothing
            // but `$SYS` is published on one.
            return Err(SubscribeReasonCode::ImplementationSpecific);
        }
        Ok(Target::Router)
    }

    /// Answers with exactly one UNSUBACK, 0x11 for a filter with no subscription
    /// [MQTT-3.10.4-4, -5]; forwards the others (the router sends no UNSUBACK for an
    /// unknown filter and one per filter otherwise; those are swallowed).
    pub(crate) fn unsubscribe(&mut self, unsub: Unsubscribe) {
        self.session_unsubscribed(&unsub.filters);
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        let mut routed = Vec::new();
        for f in unsub.filters {
            let existed = self.subs.remove(&f);
            reasons.push(if existed {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
            let inner = topic::split_shared(&f).map_or(f.as_str(), |(_, inner)| inner);
            if existed && topic::valid_filter(inner) && !subscriptions::is_sys(&f) {
                routed.push(f);
            }
        }
        if !routed.is_empty() {
            self.to_router.push(Packet::Unsubscribe(
                Unsubscribe {
                    pkid: unsub.pkid,
                    filters: routed,
                },
                None,
            ));
        }
        self.write_packet(Packet::UnsubAck(
            UnsubAck {
                pkid: unsub.pkid,
                reasons,
            },
            None,
        ));
    }
}
