//! Sessions: Clean Session / Clean Start, Session Expiry Interval, session present,
//! subscriptions and queued QoS 1 messages across reconnects, inbound QoS 2 state,
//! outbound re-delivery with DUP=1, over TCP and WebSocket, 3.1.1 and 5. Also runs
//! against an external broker (`CONFORMANCE_TARGET`), except the cases that need
//! fleetmq's configuration or a restart.

use crate::common;

use std::time::Duration;

use common::conf::*;

/// CONNECT that starts a new session (Clean Session / Clean Start 1) kept for 60 s after
/// the connection in v5 (3.1.1: a clean session ends with the connection).
fn fresh_kept(id: &str, ver: Ver) -> Conn {
    let mut c = Conn::persistent(id, ver, 60);
    c.clean = true;
    c
}

/// Connects and returns the client with the CONNACK's session present flag.
async fn connect(t: &Target, via: Via, ver: Ver, conn: Conn) -> (Client, bool) {
    let mut c = t.open(via, ver).await;
    let ack = c.connect(conn).await;
    assert_eq!(ack.code, 0, "CONNACK {ack:?}");
    (c, ack.session_present)
}

/// Ends the session of `id`: a clean connection, then DISCONNECT.
async fn forget(t: &Target, via: Via, ver: Ver, id: &str) {
    let (c, _) = connect(t, via, ver, Conn::new(id)).await;
    c.disconnect(0).await;
}

/// Publishes each payload on `topic` at QoS 1 and waits for its PUBACK.
async fn publish_acked(t: &Target, via: Via, ver: Ver, topic: &str, payloads: &[&str]) {
    let mut p = t.connect(via, ver, &unique("pub")).await;
    for payload in payloads {
        p.publish_acked(topic, payload.as_bytes()).await;
    }
    p.disconnect(0).await;
}

/// The next `n` PUBLISHes, QoS 1 ones acknowledged.
async fn take(c: &mut Client, n: usize) -> Vec<Msg> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = c.next_msg().await;
        if m.qos == 1 {
            c.puback(m.pkid).await;
        }
        got.push(m);
    }
    got
}

fn payloads(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// [MQTT-3.2.2-1] [MQTT-3.2.2-2] [MQTT-3.2.2-3] [MQTT-3.1.2-6] (5: [MQTT-3.1.2-4]):
/// session present is 0 for a clean session and for a new persistent one, 1 when a
/// stored session is resumed; a clean session discards the stored one.
async fn session_present(via: Via, ver: Ver) {
    let t = Target::start().await;
    let id = unique("sp");
    let (c, sp) = connect(&t, via, ver, Conn::new(&id)).await;
    assert!(!sp, "clean session");
    c.disconnect(0).await;
    let (c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert!(!sp, "no stored session yet");
    c.disconnect(0).await;
    let (c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert!(sp, "stored session resumed");
    c.disconnect(0).await;
    let (c, sp) = connect(&t, via, ver, Conn::new(&id)).await;
    assert!(!sp, "clean session");
    c.disconnect(0).await;
    let (c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert!(!sp, "the clean session discarded the stored one");
    c.disconnect(0).await;
    forget(&t, via, ver, &id).await;
}
matrix!(session_present_flag_mqtt_3_2_2_2, session_present);

/// [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-4.6.0-6] (5: [MQTT-3.1.2-23]): subscriptions
/// survive a reconnect, and QoS 1 messages published while the client was away are
/// delivered after it, in order.
async fn queued_after_reconnect(via: Via, ver: Ver) {
    let t = Target::start().await;
    let id = unique("q");
    let prefix = unique("q/");
    let (mut c, _) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert_eq!(c.subscribe(&format!("{prefix}/+"), 1).await, [1]);
    c.disconnect(0).await;
    let topic = format!("{prefix}/1");
    publish_acked(&t, via, ver, &topic, &["a", "b", "c", "d"]).await;
    let (mut c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert!(sp, "session resumed");
    assert_eq!(payloads(&take(&mut c, 4).await), ["a", "b", "c", "d"]);
    // The subscription itself survived: live traffic arrives too.
    publish_acked(&t, via, ver, &format!("{prefix}/2"), &["live"]).await;
    assert_eq!(payloads(&take(&mut c, 1).await), ["live"]);
    c.disconnect(0).await;
    forget(&t, via, ver, &id).await;
}
matrix!(
    queued_messages_after_reconnect_mqtt_3_1_2_5,
    queued_after_reconnect
);

/// v5: Session Expiry Interval > 0 keeps the session (queued messages delivered,
/// session present) [MQTT-3.1.2-23]; 0 ends it with the connection; a session whose
/// interval has passed is gone. (The wait is 2.5 s for an interval of 1 s: the spec
/// sets no deadline for the purge, and Mosquitto checks expiry once a second.)
async fn session_expiry(via: Via, ver: Ver) {
    let t = Target::start().await;
    let id = unique("x");
    let topic = unique("x/");
    let (mut c, sp) = connect(&t, via, ver, fresh_kept(&id, ver)).await;
    assert!(!sp);
    c.subscribe(&topic, 1).await;
    c.disconnect(0).await;
    publish_acked(&t, via, ver, &topic, &["1", "2"]).await;
    let (mut c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 0)).await;
    assert!(sp, "resumed");
    assert_eq!(payloads(&take(&mut c, 2).await), ["1", "2"]);
    c.disconnect(0).await;
    // That connection had expiry 0: nothing is left.
    let (c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 1)).await;
    assert!(!sp, "expiry 0 ended the session");
    c.disconnect(0).await;
    // Expiry 1 s: gone after it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 1)).await;
    assert!(!sp, "expired session purged");
    c.disconnect(0).await;
    forget(&t, via, ver, &id).await;
}
matrix!(v5_session_expiry_mqtt_3_1_2_23, session_expiry, v5);

/// `mqtt.max_queued_messages`: the oldest queued messages are dropped and counted
/// (fleetmq only: needs the config and the drop counter).
async fn queue_bound(via: Via, ver: Ver) {
    let t = Target::with(|c| c.max_queued_messages = 3).await;
    if t.skip_external("needs mqtt.max_queued_messages = 3 and fleetmq's drop counter") {
        return;
    }
    let (mut c, _) = connect(&t, via, ver, Conn::persistent("bounded", ver, 60)).await;
    c.subscribe("bq", 1).await;
    c.disconnect(0).await;
    publish_acked(&t, via, ver, "bq", &["1", "2", "3", "4", "5"]).await;
    let (mut c, _) = connect(&t, via, ver, Conn::persistent("bounded", ver, 60)).await;
    assert_eq!(payloads(&take(&mut c, 3).await), ["3", "4", "5"]);
    let stats = t.broker.as_ref().expect("fleetmq").handle.stats();
    assert_eq!(stats.drops.session_queue_full, 2);
}
matrix!(queue_bound_drops_oldest, queue_bound, [tcp_v4: Tcp V4]);

/// A QoS 1 message the client did not acknowledge before it dropped the connection,
/// as first delivered and as delivered again after the reconnect.
async fn redelivery(via: Via, ver: Ver) -> (Msg, Msg) {
    let t = Target::start().await;
    let id = unique("unacked");
    let topic = unique("u/");
    let (mut c, _) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    c.subscribe(&topic, 1).await;
    publish_acked(&t, via, ver, &topic, &["once"]).await;
    let first = c.next_msg().await;
    c.drop_connection().await;
    let (mut c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert!(sp);
    let again = take(&mut c, 1).await.remove(0);
    c.disconnect(0).await;
    forget(&t, via, ver, &id).await;
    (first, again)
}

/// [MQTT-4.4.0-1] [MQTT-3.3.1-1]: a QoS 1 message the client did not acknowledge before
/// it left is sent again after the reconnect, with DUP=1.
async fn unacked_redelivered(via: Via, ver: Ver) {
    let (first, again) = redelivery(via, ver).await;
    assert_eq!((first.payload.as_slice(), first.dup), (&b"once"[..], false));
    assert_eq!((again.payload.as_slice(), again.dup), (&b"once"[..], true));
}
matrix!(
    unacked_redelivered_with_dup_mqtt_4_4_0_1,
    unacked_redelivered
);

/// [MQTT-4.4.0-1]: ... and with its original Packet Identifier.
async fn unacked_redelivered_same_pkid(via: Via, ver: Ver) {
    let (first, again) = redelivery(via, ver).await;
    assert_eq!(again.pkid, first.pkid, "{again:?}");
}
matrix!(
    unacked_redelivered_with_original_packet_id_mqtt_4_4_0_1,
    unacked_redelivered_same_pkid
);

/// [MQTT-4.4.0-1]: a QoS 2 exchange the client had PUBRECed but not completed when it
/// left: after the reconnect the server sends the PUBREL again, on the same packet id,
/// and the message itself is not delivered again.
async fn unacked_pubrel_resent(via: Via, ver: Ver) {
    let t = Target::start().await;
    let id = unique("pubrel");
    let topic = unique("r/");
    let (mut c, _) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    c.subscribe(&topic, 2).await;
    let mut p = t.connect(via, ver, &unique("pub2")).await;
    let pkid = p.publish(&topic, b"twice?", 2, false).await;
    p.expect(|x| matches!(x, In::PubRec { pkid: id, .. } if *id == pkid))
        .await;
    p.pubrel(pkid).await;
    p.expect(|x| matches!(x, In::PubComp { .. })).await;
    let m = c.next_msg().await;
    assert_eq!(m.qos, 2);
    c.pubrec(m.pkid).await;
    c.expect(|x| matches!(x, In::PubRel { pkid, .. } if *pkid == m.pkid))
        .await;
    // Gone before the PUBCOMP.
    c.drop_connection().await;
    let (mut c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert!(sp);
    c.expect(|x| matches!(x, In::PubRel { pkid, .. } if *pkid == m.pkid))
        .await;
    c.pubcomp(m.pkid).await;
    // Not delivered again: the next message is the next one published.
    p.publish_acked(&topic, b"next").await;
    let n = c.next_msg().await;
    assert_eq!(n.payload, b"next");
    c.puback(n.pkid).await;
    c.disconnect(0).await;
    p.disconnect(0).await;
    forget(&t, via, ver, &id).await;
}
matrix!(unacked_pubrel_resent_mqtt_4_4_0_1, unacked_pubrel_resent);

/// Persistent sessions, their queues and subscriptions survive a broker restart
/// (fleetmq only: the suite cannot restart another broker; `tests/restart.rs` does the
/// same through SIGTERM and kill -9 of the binary).
async fn survive_restart(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("restarts the broker") {
        return;
    }
    let (mut c, _) = connect(&t, via, ver, fresh_kept("durable", ver)).await;
    c.subscribe("d/#", 1).await;
    c.disconnect(0).await;
    publish_acked(&t, via, ver, "d/x", &["before"]).await;
    let t = t.restart().await;
    publish_acked(&t, via, ver, "d/y", &["after"]).await;
    let (mut c, sp) = connect(&t, via, ver, Conn::persistent("durable", ver, 3600)).await;
    assert!(sp);
    assert_eq!(payloads(&take(&mut c, 2).await), ["before", "after"]);
}
matrix!(sessions_survive_restart, survive_restart, [ws_v5: Ws V5]);

/// [MQTT-4.3.3-9] [MQTT-4.3.3-10] (5: [MQTT-4.3.3-10] [MQTT-4.3.3-11]): inbound QoS 2
/// state outlives the connection of a persistent session: after the reconnect a
/// re-sent PUBLISH (DUP=1) is acknowledged but not delivered again, and the PUBREL gets
/// its PUBCOMP.
async fn inbound_qos2_across_reconnect(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("q2/");
    let id = unique("q2pub");
    let mut sub = t.connect(via, ver, &unique("q2sub")).await;
    sub.subscribe(&topic, 0).await;
    let (mut p, _) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    let pubrec = |p: &In| matches!(p, In::PubRec { pkid: 7, .. });
    p.publish_raw(&topic, b"x", 2, false, false, 7, None).await;
    p.expect(pubrec).await;
    p.drop_connection().await;
    let (mut p, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert!(sp);
    p.publish_raw(&topic, b"x", 2, false, true, 7, None).await;
    p.expect(pubrec).await;
    p.pubrel(7).await;
    p.expect(|p| matches!(p, In::PubComp { pkid: 7, .. })).await;
    let got = sub.msgs_within(QUIET).await;
    assert_eq!(payloads(&got), ["x"], "delivered exactly once");
    p.disconnect(0).await;
    forget(&t, via, ver, &id).await;
}
matrix!(
    inbound_qos2_across_reconnect_mqtt_4_3_3_10,
    inbound_qos2_across_reconnect
);

/// v5 §3.14.2.2.2: a DISCONNECT may change the Session Expiry Interval; set to 0 the
/// session ends with the connection.
async fn disconnect_changes_expiry(via: Via, ver: Ver) {
    let t = Target::start().await;
    for (change, kept) in [(None, true), (Some(0u32), false)] {
        let id = unique("dx");
        let (mut c, _) = connect(&t, via, ver, fresh_kept(&id, ver)).await;
        let disconnect = match change {
            None => vec![0xe0, 0],
            Some(e) => {
                let mut d = vec![0xe0, 7, 0, 5, 0x11];
                d.extend(e.to_be_bytes());
                d
            }
        };
        c.send_raw(&disconnect).await;
        // Until the server closes the connection (or WAIT passes).
        while c.recv_within(WAIT).await.is_some() {}
        let (c, sp) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
        assert_eq!(sp, kept, "DISCONNECT expiry {change:?}");
        c.disconnect(0).await;
        forget(&t, via, ver, &id).await;
    }
}
matrix!(
    v5_disconnect_changes_session_expiry_mqtt_3_14_2,
    disconnect_changes_expiry,
    v5
);

/// [MQTT-4.4.0-1]: messages the client had in flight when it left are re-sent after it
/// reconnects with DUP=1 and their original packet ids, in order, before new ones.
#[tokio::test]
async fn unacked_redelivered_with_their_packet_ids() {
    use common::conf::{Conn, Target, Ver, Via as CVia};
    let t = Target::with(|_| {}).await;
    if t.external() {
        return;
    }
    let mut conn = Conn::new("same-ids");
    conn.clean = false;
    let mut sub = t.open(CVia::Tcp, Ver::V4).await;
    assert_eq!(sub.connect(conn.clone()).await.code, 0);
    sub.subscribe("ids/#", 1).await;
    let mut publ = t.connect(CVia::Tcp, Ver::V4, "ids-pub").await;
    for i in 0..3u8 {
        publ.publish_acked("ids/a", &[i]).await;
    }
    let mut sent = Vec::new();
    for _ in 0..3 {
        let m = sub.next_msg().await;
        assert!(!m.dup);
        sent.push((m.pkid, m.payload));
    }
    // The first one is acknowledged; the other two are in flight when the client goes.
    sub.puback(sent[0].0).await;
    sub.pingreq().await;
    sub.expect(|p| matches!(p, common::conf::In::PingResp))
        .await;
    sub.drop_connection().await;
    let b = t.broker.as_ref().expect("fleetmq");
    common::eventually("the session is parked", || async {
        (b.handle.stats().connections.current == 1).then_some(())
    })
    .await;
    publ.publish_acked("ids/a", &[3]).await;
    let mut back = t.open(CVia::Tcp, Ver::V4).await;
    assert!(back.connect(conn).await.session_present);
    for (pkid, payload) in &sent[1..] {
        let m = back.next_msg().await;
        assert_eq!((m.pkid, &m.payload, m.dup), (*pkid, payload, true));
        back.puback(m.pkid).await;
    }
    let m = back.next_msg().await;
    assert_eq!((m.payload.as_slice(), m.dup), (&[3u8][..], false));
}

/// Issue 18: a client id belongs to the identity that uses it. An anonymous client, or
/// another service client, that connects with a service client's client id neither
/// takes over its connection nor resumes its stored session and queue; the service
/// client then gets everything queued for it (fleetmq only: other brokers kick).
async fn client_id_bound_to_identity(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("provisions service clients through fleetmq's store") {
        return;
    }
    let b = t.broker.as_ref().expect("fleetmq");
    b.add_service("backend", "pw-1", common::allow_all()).await;
    b.add_service("other", "pw-2", common::allow_all()).await;
    let id = unique("backend");
    let prefix = unique("jobs/");
    let login = |user: &str, pw: &str| {
        let mut c = Conn::persistent(&id, ver, 60);
        c.login = Some((user.to_owned(), pw.to_owned()));
        c
    };
    let (mut backend, _) = connect(&t, via, ver, login("backend", "pw-1")).await;
    assert_eq!(backend.subscribe(&format!("{prefix}/+"), 1).await, [1]);
    backend.disconnect(0).await;
    publish_acked(&t, via, ver, &format!("{prefix}/1"), &["a", "b"]).await;

    // The same client id, anonymous and as another service client: fresh sessions.
    for conn in [Conn::persistent(&id, ver, 60), login("other", "pw-2")] {
        let (mut intruder, sp) = connect(&t, via, ver, conn).await;
        assert!(!sp, "not the backend's session");
        assert!(
            intruder.msgs_within(QUIET).await.is_empty(),
            "none of its queue"
        );
        intruder.disconnect(0).await;
    }
    // A live backend is not kicked by them either.
    let (mut backend, sp) = connect(&t, via, ver, login("backend", "pw-1")).await;
    assert!(sp, "its session is still there");
    assert_eq!(payloads(&take(&mut backend, 2).await), ["a", "b"]);
    let (intruder, _) = connect(&t, via, ver, Conn::persistent(&id, ver, 60)).await;
    assert_eq!(backend.closed_within(QUIET).await, None, "not taken over");
    intruder.disconnect(0).await;
    backend.disconnect(0).await;
}
matrix!(
    a_client_id_belongs_to_the_identity_that_uses_it,
    client_id_bound_to_identity
);

/// A session stored by an earlier build under `c:{client id}` is resumed by the service
/// client that connects with that id after the upgrade, never by an anonymous client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stored_by_an_earlier_build_goes_on_for_its_service_client() {
    use fleetmq_storage::{SessionRecord, SessionSubscription};
    let t = Target::start().await;
    if t.skip_external("writes a session into fleetmq's store") {
        return;
    }
    let b = t.broker.as_ref().expect("fleetmq");
    b.add_service("backend", "pw", common::allow_all()).await;
    let legacy = SessionRecord {
        key: "c:backend-1".into(),
        client_id: "backend-1".into(),
        subscriptions: vec![SessionSubscription {
            filter: "orders/+".into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            id: None,
        }],
        expiry_s: u32::MAX,
        disconnected_at_ms: Some(fleetmq_storage::now_ms()),
        inbound_qos2: Vec::new(),
        outbound_pubrels: Vec::new(),
    };
    b.store
        .put_session(&legacy)
        .expect("store a legacy session");
    let t = t.restart().await;
    let (anon, sp) = connect(
        &t,
        Via::Tcp,
        Ver::V4,
        Conn::persistent("backend-1", Ver::V4, 0),
    )
    .await;
    assert!(!sp, "an anonymous client does not get it");
    anon.disconnect(0).await;
    let mut conn = Conn::persistent("backend-1", Ver::V4, 0);
    conn.login = Some(("backend".into(), "pw".into()));
    let (mut backend, sp) = connect(&t, Via::Tcp, Ver::V4, conn).await;
    assert!(sp, "the service client resumes its session");
    publish_acked(&t, Via::Tcp, Ver::V4, "orders/1", &["x"]).await;
    assert_eq!(payloads(&take(&mut backend, 1).await), ["x"]);
    backend.disconnect(0).await;
}
