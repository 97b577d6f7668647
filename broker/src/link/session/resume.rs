//! A connection's part of session state: the subscriptions it keeps for a persistent
//! session, what it puts on the outbound queue (`outbound.rs`: a resumed session's stored
//! queue, retained messages for new subscriptions), and parking the session with what
//! the client was still owed when it leaves. See `session::store` for the design.

use std::collections::{BTreeMap, HashMap, HashSet};

use fleetmq_storage::{SessionRecord, SessionSubscription};
use rumqttd::protocol::{
    Filter, Packet, PubRel, PubRelReason, PublishProperties, RetainForwardRule, Subscribe,
    SubscribeProperties, SubscribeReasonCode,
};

use crate::link::codec::framing::Version;
use crate::link::connection::outbound::OutMsg;
use crate::link::connection::{Connection, Ending};
use crate::link::lazy::{idle, Lazy};
use crate::link::session::ledger::SharedLedger;
use crate::link::session::owed::OwedState;
use crate::link::session::store;
/// The packet id of the SUBSCRIBE that restores a resumed session's router
/// subscriptions; clients never use 0, so its SUBACK is recognisably ours.
pub(crate) const RESUBSCRIBE_PKID: u16 = 0;

/// A user property that carries a live message's RETAIN flag through the router (which
/// clears RETAIN on fan-out) to subscriptions with Retain As Published.
pub(crate) const RETAIN_MARK: &str = "fleetmq:retain";

/// The properties a checked publish is routed with: a client's own copy of the mark is
/// removed, and a retained publish is marked.
pub(crate) fn route_properties(
    props: Option<PublishProperties>,
    retain: bool,
) -> Option<PublishProperties> {
    let mut props = match props {
        Some(mut p) => {
            p.user_properties.retain(|(k, _)| k != RETAIN_MARK);
            p
        }
        None if !retain => return None,
        None => PublishProperties::default(),
    };
    if retain {
        props
            .user_properties
            .push((RETAIN_MARK.to_owned(), String::new()));
    }
    Some(props)
}

/// What CONNECT decided about the session.
#[derive(Debug, Default)]
pub(crate) struct SessionStart {
    /// Whether the session outlives this connection.
    pub(crate) persistent: bool,
    /// The client's Clean Session (3.1.1) / Clean Start (5) flag, for the admin API.
    pub(crate) clean_start: bool,
    /// Session Expiry Interval in seconds (`store::NEVER` for 3.1.1).
    pub(crate) expiry_s: u32,
    /// The stored session this connection resumes (CONNACK session present).
    /// Boxed: taken at the start, and most connections have none.
    pub(crate) resumed: Option<Box<SessionRecord>>,
}

idle!(HashMap<u16, Vec<(SessionSubscription, bool)>>, |m| m.is_empty());

/// Per-connection session state.
#[derive(Default)]
pub(crate) struct SessionLink {
    pub(crate) start: SessionStart,
    pub(crate) subs: crate::link::session::sub_table::SubTable,
    /// Filters of SUBSCRIBEs the router has not answered yet, and whether each
    /// subscription existed before (Retain Handling 1).
    pub(crate) pending_subs: Lazy<HashMap<u16, Vec<(SessionSubscription, bool)>>>,
    pub(crate) subs_dirty: bool,
    pub(crate) saved_qos2: Lazy<HashSet<u16>>,
    /// The outbound PUBRELs the stored record holds.
    pub(crate) saved_pubrels: Vec<u16>,
    /// Whether this connection stored a session record.
    pub(crate) saved: bool,
    /// What the router still owes this persistent session (`session::ledger`).
    pub(crate) ledger: Option<SharedLedger>,
    /// Arrival numbers the router delivered since the ledger was last told.
    pub(crate) delivered: Vec<u64>,
    /// When its subscriptions took effect (`session::owed`).
    pub(crate) owed: Lazy<OwedState>,
    /// What the stored queue of the resumed session holds of its live deliveries.
    pub(crate) queued_window: Option<Box<store::QueuedWindow>>,
}

impl SessionLink {
    pub(crate) fn new(start: SessionStart) -> SessionLink {
        SessionLink {
            start,
            ..SessionLink::default()
        }
    }

    /// Whether the session outlives this connection.
    pub(crate) fn persistent(&self) -> bool {
        self.start.persistent
    }
}

pub(crate) fn qos_of(code: &SubscribeReasonCode) -> Option<u8> {
    match code {
        SubscribeReasonCode::QoS0 => Some(0),
        SubscribeReasonCode::QoS1 => Some(1),
        SubscribeReasonCode::QoS2 => Some(2),
        SubscribeReasonCode::Success(q) => Some(*q as u8),
        _ => None,
    }
}

pub(crate) fn subscription_of(f: &Filter, id: Option<usize>) -> SessionSubscription {
    SessionSubscription {
        id: id.and_then(|id| u32::try_from(id).ok()),
        filter: f.path.clone(),
        qos: f.qos as u8,
        no_local: f.nolocal,
        retain_as_published: f.preserve_retain,
        retain_handling: match f.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => 0,
            RetainForwardRule::OnNewSubscribe => 1,
            RetainForwardRule::Never => 2,
        },
    }
}

fn filter_of(s: &SessionSubscription) -> Filter {
    Filter {
        path: s.filter.clone(),
        qos: rumqttd::protocol::qos(s.qos).unwrap_or_default(),
        nolocal: s.no_local,
        preserve_retain: s.retain_as_published,
        retain_forward_rule: match s.retain_handling {
            0 => RetainForwardRule::OnEverySubscribe,
            1 => RetainForwardRule::OnNewSubscribe,
            _ => RetainForwardRule::Never,
        },
    }
}

impl Connection {
    pub(crate) fn session_record(&self) -> SessionRecord {
        let mut inbound_qos2: Vec<u16> = self.inbound_qos2.ids().iter().copied().collect();
        inbound_qos2.sort_unstable();
        SessionRecord {
            key: self.s.router_key.clone(),
            client_id: self.s.client_id.clone(),
            subscriptions: self.sess.subs.values().cloned().collect(),
            expiry_s: self.sess.start.expiry_s,
            disconnected_at_ms: None,
            inbound_qos2,
            outbound_pubrels: self.queue.pubrels(),
        }
    }

    /// Right after CONNACK: restores a resumed session's subscriptions in the router,
    /// stops queuing for it, and queues its stored messages for delivery ahead of live
    /// traffic [MQTT-3.1.2-5] [MQTT-4.4.0-1].
    pub(crate) async fn resume_session(&mut self) -> Result<(), Ending> {
        let Some(rec) = self.sess.start.resumed.take() else {
            if self.sess.start.persistent {
                self.sess.saved = true;
                self.core.session_store.save(self.session_record()).await;
                let (ledger, window, _) =
                    self.core
                        .session_store
                        .go_live(&self.s.router_key, &[], self.s.conn_id);
                self.sess.ledger = Some(ledger);
                self.sess.queued_window = window.map(Box::new);
            }
            return Ok(());
        };
        self.inbound_qos2.restore(rec.inbound_qos2.iter().copied());
        *self.sess.saved_qos2 = self.inbound_qos2.ids().clone();
        // Its client was connected when the broker stopped without parking it (kill -9):
        // any of its queue may have been sent, so all of it goes with DUP=1 ("might be a
        // re-delivery") [MQTT-3.3.1-1].
        let crashed = rec.disconnected_at_ms.is_none();
        let resubscribed = self.resubscribe(rec.subscriptions).await?;
        let key = self.s.router_key.clone();
        // What is numbered from here on comes from the router, not the stored queue.
        let mut live_from = self.core.session_store.arrival_mark();
        if self.sess.start.persistent {
            // From parked to connected in one step: every publish is stored for it.
            let subs: Vec<SessionSubscription> = self.sess.subs.values().cloned().collect();
            let (ledger, window, since) =
                self.core.session_store.go_live(&key, &subs, self.s.conn_id);
            live_from = since;
            self.sess.ledger = Some(ledger);
            self.sess.queued_window = window.map(Box::new);
            // Its subscriptions take effect here; each re-subscribe's SUBACK settles what
            // was checked before the router had it (`session::owed`).
            self.sess.owed.resubscribing = resubscribed.into_iter().map(|f| (f, since)).collect();
        } else {
            self.core.session_store.unpark(&key);
        }
        self.requeue(rec.outbound_pubrels, &key, live_from, crashed)
            .await;
        if self.sess.start.persistent {
            self.sess.saved = true;
            self.sess.saved_pubrels = self.queue.pubrels();
            self.core.session_store.save(self.session_record()).await;
        } else {
            // Resumed by a connection whose session ends with it (v5 expiry 0).
            self.core.session_store.discard(&key).await;
        }
        // The first sends, with the packet ids of QoS 2 ones recorded before they go out.
        self.session_sync().await;
        Ok(())
    }

    /// Subscribes the router again to every stored subscription the client may still
    /// have (permissions may have changed while it was away), one SUBSCRIBE per
    /// Subscription Identifier so live messages carry it again; returns each
    /// re-subscribe's filters.
    async fn resubscribe(
        &mut self,
        stored: Vec<SessionSubscription>,
    ) -> Result<Vec<Vec<String>>, Ending> {
        let mut filters: BTreeMap<Option<u32>, Vec<Filter>> = BTreeMap::new();
        for sub in stored {
            if matches!(
                self.check_filter(&sub.filter),
                Ok(crate::link::connection::subscribe::Target::Router)
            ) {
                filters.entry(sub.id).or_default().push(filter_of(&sub));
                let options = crate::link::connection::subscriptions::SubOptions {
                    qos: sub.qos,
                    no_local: sub.no_local,
                    id: sub.id.map(|id| id as usize),
                };
                self.subs.add(&sub.filter, options);
                self.sess.subs.insert(sub);
            }
        }
        if filters.is_empty() {
            return Ok(Vec::new());
        }
        let mut resubscribed = Vec::new();
        for (id, filters) in filters {
            resubscribed.push(filters.iter().map(|f| f.path.clone()).collect());
            let props = id.map(|id| SubscribeProperties {
                id: Some(id as usize),
                user_properties: Vec::new(),
            });
            self.to_router.push(Packet::Subscribe(
                Subscribe {
                    pkid: RESUBSCRIBE_PKID,
                    filters,
                },
                props,
            ));
        }
        self.send_to_router().await?;
        Ok(resubscribed)
    }

    /// What the stored session still owes its client goes into the outbound queue:
    /// PUBRELs of QoS 2 exchanges the client had not completed first [MQTT-4.4.0-1], then
    /// the stored queue up to `live_from`, those that were in flight on their packet ids
    /// again with DUP=1 (all of it after a crash).
    async fn requeue(&mut self, pubrels: Vec<u16>, key: &str, live_from: u64, crashed: bool) {
        for pkid in pubrels {
            if self.queue.released(pkid) {
                self.write_packet(Packet::PubRel(
                    PubRel {
                        pkid,
                        reason: PubRelReason::Success,
                    },
                    None,
                ));
            }
        }
        // Copies publishers were still writing when it went live belong to the queue.
        self.core.session_store.settled(key).await;
        for (seq, m) in self.core.session_store.queued(key, live_from).await {
            let mut msg = OutMsg::plain(m.topic, m.payload.into(), m.qos);
            msg.dup = m.dup || m.pkid.is_some() || crashed;
            msg.retain = m.retain;
            msg.seq = Some(seq);
            msg.stored = true;
            msg.pkid = m.pkid;
            msg.expires_at_ms = m.expires_at_ms;
            // Sent to MQTT 5 clients only; the expiry left is added when it is written.
            msg.props = store::publish_properties(&m.properties, None);
            self.queue.push(msg);
        }
    }

    /// A v5 DISCONNECT may change the Session Expiry Interval, but not from 0 to
    /// non-zero [MQTT-3.14.2-2] (protocol error).
    pub(crate) fn session_expiry_on_disconnect(
        &mut self,
        expiry: Option<u32>,
    ) -> Result<(), Ending> {
        let Some(expiry) = expiry else {
            return Ok(());
        };
        if self.sess.start.expiry_s == 0 && expiry > 0 {
            return Err(Ending::Violation(
                rumqttd::protocol::DisconnectReasonCode::ProtocolError,
            ));
        }
        if self.s.version == Version::V5 {
            self.sess.start.expiry_s = expiry;
            self.sess.start.persistent = expiry > 0;
        }
        Ok(())
    }
}
