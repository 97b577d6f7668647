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

use crate::common;

use common::conf::{unique, Client, SubscribeProperties, Target, Ver, Via, QUIET, WAIT};
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
