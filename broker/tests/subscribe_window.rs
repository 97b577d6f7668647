//! The subscribe window (`link/session/owed.rs`, architecture.md "Sessions",
//! "Subscribing"): a connected persistent session's new subscription takes effect at
//! its *mark*, when its filter enters the session's ledger trie, before rumqttd's router
//! has the SUBSCRIBE; the router starts the subscription at the end of the filter's log
//! when it processes it. A QoS 1 message another client publishes in between is
//! numbered past the mark (recorded in the ledger, acknowledged to its publisher) but
//! routed before the subscription exists, so the router never delivers it: the link
//! delivers it from the ledger at the SUBACK. The same holds for a resumed session's
//! re-subscribes, which reach the router after the session went live.
//!
//! The router's own timing opens that window only now and then, so these tests hold the
//! subscriber's SUBSCRIBE back from the router ([`TestBroker::hold_router`], feature
//! `testing`) while a publisher is acknowledged for its messages — acknowledged by the
//! router, so routed before the SUBSCRIBE — then let it through: the subscriber must get
//! every one of them exactly once, in order, and nothing of them again after it resumes.
//!
//! A clean session has no such window: its SUBACK is the router's, written once the
//! router has the subscription, so whatever another client publishes after the SUBACK
//! reaches it (the last section: a hold shows no SUBACK leaves before the router has the
//! SUBSCRIBE; rounds on real sockets publish right after each SUBACK).

use crate::common;

use common::conf::{unique, Client, Conn, In, SubscribeProperties, Target, Ver, Via, QUIET, WAIT};
use common::TestBroker;
use fleetmq_broker::testing::RouterHold;

/// Messages published while the SUBSCRIBE is held.
const HELD: usize = 5;
/// The v5 subscriber's Subscription Identifier, carried by what the ledger delivers.
const SUB_ID: usize = 7;

#[derive(Debug, Clone, Copy)]
struct Case {
    ver: Ver,
    durable: bool,
    /// A clean subscriber on the same filter, so the router appends the held-window
    /// messages to the filter's log (past which the new subscription starts) instead of
    /// routing them nowhere.
    watcher: bool,
}

/// Connects the persistent subscriber; whether its session was resumed.
async fn connect(t: &Target, id: &str, ver: Ver) -> (Client, bool) {
    t.connect_persistent(ver, id, WAIT).await
}

fn sub_props(ver: Ver) -> Option<SubscribeProperties> {
    (ver == Ver::V5).then(|| SubscribeProperties {
        id: Some(SUB_ID),
        user_properties: Vec::new(),
    })
}

async fn subscribe(sub: &mut Client, filter: &str, ver: Ver) {
    let codes = sub.subscribe_many(&[(filter, 1)], sub_props(ver)).await;
    assert_eq!(codes, vec![1], "SUBACK for {filter}");
}

/// Publishes `HELD` QoS 1 messages from a fresh clean client and waits for every
/// PUBACK (the router sends them: it has routed the messages). Returns the payloads.
async fn publish_acked(t: &Target, ver: Ver, topic: &str, tag: &str) -> Vec<String> {
    let mut p = t.connect(Via::Tcp, ver, &unique("sw-pub")).await;
    let mut sent = Vec::new();
    for n in 0..HELD {
        let payload = format!("{tag}-{n}");
        p.publish_acked(topic, payload.as_bytes()).await;
        sent.push(payload);
    }
    p.disconnect(0).await;
    sent
}

/// The subscriber gets exactly `want`, in order, each once, at QoS 1 without DUP (and
/// on v5 with its Subscription Identifier); it acknowledges each.
async fn expect_exactly(sub: &mut Client, want: &[String], ver: Ver, what: &str) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let Some(m) = sub.next_msg_within(WAIT).await else {
            panic!(
                "{what}: got {} of {} messages within {WAIT:?}: {got:?}, wanted {want:?}",
                got.len(),
                want.len()
            );
        };
        assert_eq!(m.qos, 1, "{what}: QoS of {m:?}");
        assert!(!m.dup, "{what}: DUP on a first delivery: {m:?}");
        if ver == Ver::V5 {
            let ids = m.props.as_ref().map(|p| p.subscription_identifiers.clone());
            assert_eq!(ids, Some(vec![SUB_ID]), "{what}: subscription ids of {m:?}");
        }
        sub.puback(m.pkid).await;
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(got, want, "{what}: in publish order");
    let more: Vec<String> = sub
        .msgs_within(QUIET)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert!(more.is_empty(), "{what}: delivered again: {more:?}");
}

fn broker(t: &Target) -> &TestBroker {
    t.broker.as_ref().expect("fleetmq")
}

async fn start(case: Case) -> Option<Target> {
    let t = Target::with(|c| c.durable_connected_sessions = case.durable).await;
    (!t.skip_external("holds a SUBSCRIBE back from fleetmq's router")).then_some(t)
}

/// Once `hold` has caught a SUBSCRIBE: publishes `HELD` acknowledged messages on
/// `topic`, then lets the SUBSCRIBE through. Returns the payloads.
async fn publish_while_held(t: &Target, hold: RouterHold, ver: Ver, topic: &str) -> Vec<String> {
    hold.held(WAIT).await;
    // The subscription has taken effect in the ledger; the router has not seen it.
    let sent = publish_acked(t, ver, topic, "held").await;
    hold.release(broker(t));
    sent
}

/// With `case.watcher`, a clean subscriber on `filter` (see [`Case::watcher`]).
async fn watcher(t: &Target, case: Case, filter: &str) -> Option<Client> {
    if !case.watcher {
        return None;
    }
    let mut w = t.connect(Via::Tcp, case.ver, &unique("sw-watch")).await;
    w.subscribe(filter, 1).await;
    Some(w)
}

/// After the window: live traffic flows as usual, and a resume brings nothing back
/// (every message was acknowledged once, so nothing of it is left stored or owed).
async fn after_the_window(t: &Target, mut sub: Client, id: &str, topic: &str, case: Case) {
    let live = publish_acked(t, case.ver, topic, "live").await;
    expect_exactly(&mut sub, &live, case.ver, "after the window").await;
    sub.disconnect(0).await;
    nothing_after_a_resume(t, id, case.ver).await;
}

/// The session resumes and gets nothing: every message was settled.
async fn nothing_after_a_resume(t: &Target, id: &str, ver: Ver) {
    let (mut sub, present) = connect(t, id, ver).await;
    assert!(present, "session resumed");
    let again = sub.msgs_within(QUIET).await;
    assert!(again.is_empty(), "after a resume, again: {again:?}");
    sub.disconnect(0).await;
}

/// A connected persistent session SUBSCRIBEs; what is published while the router does
/// not have the SUBSCRIBE yet arrives at the SUBACK.
async fn new_subscription(case: Case) {
    let Some(t) = start(case).await else {
        return;
    };
    let ver = case.ver;
    let base = unique("sw/new");
    let (topic, filter) = (format!("{base}/a"), format!("{base}/+"));
    let id = unique("sw-sub");
    let _watcher = watcher(&t, case, &filter).await;
    let (mut sub, present) = connect(&t, &id, ver).await;
    assert!(!present, "a fresh session");

    let hold = broker(&t).hold_router(&id);
    let publisher = publish_while_held(&t, hold, ver, &topic);
    let ((), sent) = tokio::join!(subscribe(&mut sub, &filter, ver), publisher);
    expect_exactly(
        &mut sub,
        &sent,
        ver,
        "published while the SUBSCRIBE was held",
    )
    .await;
    after_the_window(&t, sub, &id, &topic, case).await;
}

/// A persistent session resumes; what is published after it went live (its CONNACK) but
/// before the router has its re-subscribe arrives at that re-subscribe's SUBACK.
async fn resumed_subscription(case: Case) {
    let Some(t) = start(case).await else {
        return;
    };
    let ver = case.ver;
    let base = unique("sw/resume");
    let (topic, filter) = (format!("{base}/a"), format!("{base}/+"));
    let id = unique("sw-sub");
    let _watcher = watcher(&t, case, &filter).await;
    let (mut sub, _) = connect(&t, &id, ver).await;
    subscribe(&mut sub, &filter, ver).await;
    sub.disconnect(0).await;

    let hold = broker(&t).hold_router(&id);
    let (mut sub, present) = connect(&t, &id, ver).await;
    assert!(present, "session resumed");
    // CONNACK comes after the session went live: from here on its messages are
    // recorded in its ledger, not delivered from its stored queue.
    let sent = publish_while_held(&t, hold, ver, &topic).await;
    expect_exactly(
        &mut sub,
        &sent,
        ver,
        "published while the re-subscribe was held",
    )
    .await;
    after_the_window(&t, sub, &id, &topic, case).await;
}

/// One `#[tokio::test]` per case of a scenario: `test_name: CASE` runs
/// `scenario(CASE)`. With `NOT_DURABLE` (`mqtt.durable_connected_sessions = false`) the
/// ledger is all there is of the held messages.
macro_rules! cases {
    ($scenario:ident { $($name:ident: $case:ident),* $(,)? }) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $scenario($case).await;
            }
        )*
    };
}

const V4: Case = Case {
    ver: Ver::V4,
    durable: true,
    watcher: false,
};
const V5: Case = Case {
    ver: Ver::V5,
    durable: true,
    watcher: true,
};
const NOT_DURABLE: Case = Case {
    ver: Ver::V4,
    durable: false,
    watcher: true,
};
const NOT_DURABLE_V5: Case = Case {
    ver: Ver::V5,
    durable: false,
    watcher: false,
};

cases!(new_subscription {
    new_subscription_gets_what_was_routed_before_the_router_had_it_v4: V4,
    new_subscription_gets_what_was_routed_before_the_router_had_it_v5: V5,
    new_subscription_gets_what_was_routed_before_the_router_had_it_not_durable: NOT_DURABLE,
    new_subscription_gets_what_was_routed_before_the_router_had_it_not_durable_v5: NOT_DURABLE_V5,
});

cases!(resumed_subscription {
    resumed_subscription_gets_what_was_routed_before_the_router_had_it_v4: V4,
    resumed_subscription_gets_what_was_routed_before_the_router_had_it_v5: V5,
    resumed_subscription_gets_what_was_routed_before_the_router_had_it_not_durable: NOT_DURABLE,
    resumed_subscription_gets_what_was_routed_before_the_router_had_it_not_durable_v5:
        NOT_DURABLE_V5,
});

/// The session already has an overlapping QoS 0 subscription, through which the router
/// delivers the held-window messages at QoS 0 before the SUBACK: they are still owed at
/// the new subscription's QoS 1 (a further copy per matching subscription is allowed).
async fn under_a_qos0_subscription(case: Case) {
    let Some(t) = start(case).await else {
        return;
    };
    let ver = case.ver;
    let base = unique("sw/qos0");
    let (topic, wide, narrow) = (
        format!("{base}/a"),
        format!("{base}/+"),
        format!("{base}/a"),
    );
    let id = unique("sw-sub");
    let (mut sub, _) = connect(&t, &id, ver).await;
    assert_eq!(sub.subscribe(&wide, 0).await, vec![0], "SUBACK for {wide}");

    let hold = broker(&t).hold_router(&id);
    let publisher = publish_while_held(&t, hold, ver, &topic);
    let filters = [(narrow.as_str(), 1)];
    let (codes, sent) = tokio::join!(sub.subscribe_many(&filters, None), publisher);
    assert_eq!(codes, vec![1], "SUBACK for {narrow}");
    let mut at_qos1 = Vec::new();
    while at_qos1.len() < sent.len() {
        let Some(m) = sub.next_msg_within(WAIT).await else {
            panic!("got {at_qos1:?} at QoS 1 of {sent:?}");
        };
        if m.qos == 1 {
            sub.puback(m.pkid).await;
            at_qos1.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }
    assert_eq!(at_qos1, sent, "at QoS 1, in publish order");
    let more: Vec<_> = sub
        .msgs_within(QUIET)
        .await
        .into_iter()
        .filter(|m| m.qos > 0)
        .collect();
    assert!(more.is_empty(), "at QoS 1 again: {more:?}");
    // Settled: a resume brings none of them back.
    sub.disconnect(0).await;
    nothing_after_a_resume(&t, &id, ver).await;
}

cases!(under_a_qos0_subscription {
    new_subscription_under_a_qos0_one_gets_its_qos_v4: V4,
    new_subscription_under_a_qos0_one_gets_its_qos_not_durable: NOT_DURABLE,
});

/// The session SUBSCRIBEs again to a filter it has (MQTT replaces the subscription; the
/// link has the router drop and re-create it): what the old subscription delivers while
/// the new SUBSCRIBE is held is not delivered again at the SUBACK.
async fn replaced_subscription(case: Case) {
    let Some(t) = start(case).await else {
        return;
    };
    let ver = case.ver;
    let base = unique("sw/again");
    let (topic, filter) = (format!("{base}/a"), format!("{base}/+"));
    let id = unique("sw-sub");
    let (mut sub, _) = connect(&t, &id, ver).await;
    subscribe(&mut sub, &filter, ver).await;

    let hold = broker(&t).hold_router(&id);
    let publisher = publish_while_held(&t, hold, ver, &topic);
    let ((), sent) = tokio::join!(subscribe(&mut sub, &filter, ver), publisher);
    expect_exactly(
        &mut sub,
        &sent,
        ver,
        "published while the SUBSCRIBE was held",
    )
    .await;
    after_the_window(&t, sub, &id, &topic, case).await;
}

cases!(replaced_subscription {
    replaced_subscription_gets_each_message_once_v5: V5,
    replaced_subscription_gets_each_message_once_not_durable: NOT_DURABLE,
});

// ---- Clean sessions: the SUBACK comes after the router has the subscription ----
//
// MQTT 5 §3.8.4 / 3.1.1 §3.8.4: once the server has sent the SUBACK it delivers what
// matches; a client that gets its SUBACK and then has another client publish (out of
// band) must receive that publish. A clean session has no ledger, so the only thing
// that makes a subscription take effect is rumqttd's router processing it: the link must
// not write the SUBACK before. It does not: the SUBACK is the router's own SubAck
// (`egress.rs` `router_ack`, locally refused filters merged in by packet id), which the
// router produces only after `prepare_filter` registered the filter with its cursor at
// the end of the filter's log (rumqttd `routing.rs` `handle_device_payload`); and the
// router processes events one at a time, so a publish that reaches it after the SUBACK
// left goes into the log past that cursor.

/// SUBSCRIBE → SUBACK → another client publishes at once, this many times per case.
const ROUNDS: usize = 200;

/// `publisher` publishes one QoS 0 and one QoS 1 message on `topic` and `sub` must get
/// both, each once (QoS 1 acknowledged); the publisher's PUBACK is awaited last, so
/// nothing but the SUBACK orders the publishes after the subscription.
async fn published_after_the_suback(
    sub: &mut Client,
    publisher: &mut Client,
    topic: &str,
    tag: &str,
) {
    let (q0, q1) = (format!("{tag}-q0"), format!("{tag}-q1"));
    publisher.publish(topic, q0.as_bytes(), 0, false).await;
    let pkid = publisher.publish(topic, q1.as_bytes(), 1, false).await;
    let mut want = vec![q0, q1];
    while !want.is_empty() {
        let Some(m) = sub.next_msg_within(WAIT).await else {
            panic!("{tag}: {want:?}, published right after the SUBACK, never arrived");
        };
        if m.qos > 0 {
            sub.puback(m.pkid).await;
        }
        let payload = String::from_utf8_lossy(&m.payload).into_owned();
        let Some(at) = want.iter().position(|w| *w == payload) else {
            panic!("{tag}: unexpected (or repeated) {payload:?} on {}", m.topic);
        };
        want.remove(at);
    }
    publisher
        .expect(|p| matches!(p, In::PubAck { pkid: id, .. } if *id == pkid))
        .await;
}

/// `ROUNDS` times: `sub` subscribes to one of `filters` (each matching `topic`; new to
/// the router on the first pass, known to it later) and gets what `publisher` publishes
/// right after the SUBACK arrived; every third round it subscribes to the same filter
/// again (MQTT replaces the subscription; the link has the router drop and re-create
/// it) and the same holds; then it unsubscribes.
async fn rounds(sub: &mut Client, publisher: &mut Client, filters: &[String], topic: &str) {
    for round in 0..ROUNDS {
        let filter = &filters[round % filters.len()];
        let codes = sub.subscribe(filter, 1).await;
        assert_eq!(codes, vec![1], "round {round}: SUBACK for {filter}");
        published_after_the_suback(sub, publisher, topic, &format!("r{round}")).await;
        if round % 3 == 2 {
            let codes = sub.subscribe(filter, 1).await;
            assert_eq!(codes, vec![1], "round {round}: SUBACK for {filter} again");
            published_after_the_suback(sub, publisher, topic, &format!("r{round}-again")).await;
        }
        sub.unsubscribe_acked(&[filter]).await;
    }
}

/// Filters on `{base}/…` that all match `{base}/t/x`.
fn filters_under(base: &str) -> Vec<String> {
    ["t/x", "t/+", "+/x", "#", "t/#", "+/+"]
        .iter()
        .map(|f| format!("{base}/{f}"))
        .collect()
}

/// Anonymous clean subscriber, anonymous publisher.
async fn anonymous_right_after_suback(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("sw/clean");
    let mut sub = t.connect(via, ver, &unique("sw-sub")).await;
    let mut publisher = t.connect(via, ver, &unique("sw-pub")).await;
    rounds(
        &mut sub,
        &mut publisher,
        &filters_under(&base),
        &format!("{base}/t/x"),
    )
    .await;
}
matrix!(
    anonymous_gets_what_is_published_right_after_its_suback_mqtt_3_8_4,
    anonymous_right_after_suback
);

/// A service client's clean subscriber (its ACL rules), anonymous publisher.
async fn service_right_after_suback(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("provisions a service client") {
        return;
    }
    let name = unique("svc");
    broker(&t)
        .add_service(&name, "pw", common::allow_all())
        .await;
    let mut conn = Conn::new(&unique("sw-svc"));
    conn.login = Some((name, "pw".into()));
    let mut sub = t.open(via, ver).await;
    assert_eq!(sub.connect(conn).await.code, 0, "service CONNACK");
    let base = unique("sw/svc");
    let mut publisher = t.connect(via, ver, &unique("sw-pub")).await;
    rounds(
        &mut sub,
        &mut publisher,
        &filters_under(&base),
        &format!("{base}/t/x"),
    )
    .await;
}
matrix!(
    service_gets_what_is_published_right_after_its_suback_mqtt_3_8_4,
    service_right_after_suback
);

/// A device's clean subscriber (the device ACL: its `config` topic), a service client
/// publishing to it.
async fn device_right_after_suback(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("provisions a device") {
        return;
    }
    let id = unique("swdev-");
    broker(&t).add_device(&id, "tok", false).await;
    broker(&t)
        .add_service("sw-ops", "pw", common::allow_all())
        .await;
    let mut conn = Conn::new(&id);
    conn.login = Some((id.clone(), "tok".into()));
    let mut sub = t.open(via, ver).await;
    assert_eq!(sub.connect(conn).await.code, 0, "device CONNACK");
    let mut conn = Conn::new(&unique("sw-ops"));
    conn.login = Some(("sw-ops".into(), "pw".into()));
    let mut publisher = t.open(via, ver).await;
    assert_eq!(publisher.connect(conn).await.code, 0, "service CONNACK");
    let filters: Vec<String> = ["config", "+", "#"]
        .iter()
        .map(|f| format!("device/{id}/{f}"))
        .collect();
    rounds(
        &mut sub,
        &mut publisher,
        &filters,
        &format!("device/{id}/config"),
    )
    .await;
}
matrix!(
    device_gets_what_is_published_right_after_its_suback_mqtt_3_8_4,
    device_right_after_suback
);

/// Deterministic: while the router does not have a clean session's SUBSCRIBE (held back,
/// [`TestBroker::hold_router`]), no SUBACK is written, not even for the filter the link
/// refuses itself; once the router has it, the SUBACK comes with the link's refusal
/// merged in, and what another client publishes right after it is delivered.
async fn clean_suback_waits_for_the_router(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("holds a SUBSCRIBE back from fleetmq's router") {
        return;
    }
    let base = unique("sw/held");
    let (topic, filter) = (format!("{base}/a"), format!("{base}/+"));
    // The default anonymous rules deny `device/#`: refused by the link itself.
    let denied = format!("device/{}/config", unique("d"));
    let id = unique("sw-sub");
    let mut sub = t.connect(via, ver, &id).await;
    let mut publisher = t.connect(via, ver, &unique("sw-pub")).await;

    let hold = broker(&t).hold_router(&id);
    let filters = vec![
        common::conf::filter(&filter, 1),
        common::conf::filter(&denied, 1),
    ];
    let pkid = sub.send_subscribe(filters, None).await;
    hold.held(WAIT).await;
    let early = sub.recv_within(QUIET).await;
    assert!(
        early.is_none(),
        "written before the router had the SUBSCRIBE: {early:?}"
    );
    hold.release(broker(&t));
    let refused = if ver == Ver::V5 { 0x87 } else { 0x80 };
    assert_eq!(sub.suback(pkid).await, vec![1, refused], "merged SUBACK");
    published_after_the_suback(&mut sub, &mut publisher, &topic, "after").await;
}
matrix!(
    clean_suback_is_written_after_the_router_has_the_subscription,
    clean_suback_waits_for_the_router
);
