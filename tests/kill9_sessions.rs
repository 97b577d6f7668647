//! kill -9 while a persistent subscriber is *connected* (issue #3: "survive kill -9 for
//! everything acknowledged"), against the real binary: publishers get their PUBACKs /
//! PUBRECs, the subscriber has been sent the messages but acknowledged none (QoS 1), or
//! completed some (QoS 2), the broker is killed with SIGKILL, started again on the same
//! data directory, and the subscriber resumes its session.
//!
//! The subscriber is a raw MQTT 3.1.1 client, so nothing is acknowledged behind the
//! test's back and DUP flags and packet ids are seen as sent.

use crate::support;

use std::collections::BTreeMap;

use tokio::io::AsyncWriteExt;

use support::raw::{
    ack, connect, disconnect, next_packet, parse_publish, read_packet, subscribe, Delivery,
};
use support::Server;

/// `n` QoS 1 (or 2) messages from one publisher, each acknowledged to it (PUBACK, or
/// PUBREC and then PUBCOMP) before the next.
async fn publish(s: &Server, topic: &str, qos: u8, payloads: &[String]) {
    let (mut p, _) = connect(s, &format!("k9-pub-{qos}"), true).await;
    for (i, payload) in payloads.iter().enumerate() {
        let pkid = i as u16 + 1;
        support::raw::publish(&mut p, topic, qos, pkid, payload, false).await;
        if qos == 1 {
            assert_eq!(read_packet(&mut p).await, ack(0x40, pkid), "PUBACK");
        } else {
            assert_eq!(read_packet(&mut p).await, ack(0x50, pkid), "PUBREC");
            p.write_all(&ack(0x62, pkid)).await.unwrap();
            assert_eq!(read_packet(&mut p).await, ack(0x70, pkid), "PUBCOMP");
        }
    }
    disconnect(p).await;
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// QoS 1: everything the publisher got a PUBACK for and the subscriber did not
/// acknowledge is delivered after kill -9 and a restart, in order, with DUP=1 (it had
/// been sent), and nothing more once acknowledged.
#[tokio::test]
async fn qos1_owed_to_a_connected_subscriber_survives_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_anonymous(dir.path()).await;
    let (mut sub, present) = connect(&server, "k9-sub-1", false).await;
    assert!(!present);
    subscribe(&mut sub, "k9/q1/#", 1).await;
    let sent = payloads("m", 20);
    publish(&server, "k9/q1/t", 1, &sent).await;
    // All of them reach the subscriber, which acknowledges none.
    let mut first = Vec::new();
    for _ in 0..sent.len() {
        let d = parse_publish(&read_packet(&mut sub).await);
        assert!(!d.dup && d.qos == 1, "{d:?}");
        first.push(d.payload);
    }
    assert_eq!(first, sent);

    server.kill9().await;
    drop(sub);
    server.start_again().await;

    let (mut sub, present) = connect(&server, "k9-sub-1", false).await;
    assert!(present, "the session survived");
    let mut again = Vec::new();
    while let Some(p) = next_packet(&mut sub).await {
        let d = parse_publish(&p);
        assert!(d.dup && d.qos == 1, "re-sent with DUP=1: {d:?}");
        sub.write_all(&ack(0x40, d.pkid)).await.unwrap();
        again.push(d.payload);
    }
    assert_eq!(again, sent, "every acknowledged message, once, in order");
    disconnect(sub).await;
    let (mut sub, present) = connect(&server, "k9-sub-1", false).await;
    assert!(present);
    assert_eq!(next_packet(&mut sub).await, None, "nothing owed any more");
    disconnect(sub).await;
}

/// QoS 2: the subscriber completed some exchanges, released others (PUBREL received, no
/// PUBCOMP) and received the rest without answering. After kill -9 and a restart it
/// gets PUBRELs for the released ones (maybe also for completed ones: it answers an
/// unknown id with PUBCOMP), the rest again with DUP=1 on their original packet ids —
/// so its QoS 2 state recognises them — and never a completed or released one again.
#[tokio::test]
async fn qos2_owed_to_a_connected_subscriber_survives_kill9_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_anonymous(dir.path()).await;
    let (mut sub, _) = connect(&server, "k9-sub-2", false).await;
    subscribe(&mut sub, "k9/q2/#", 2).await;
    let sent = payloads("x", 10);
    publish(&server, "k9/q2/t", 2, &sent).await;
    let mut first = Vec::new();
    for _ in 0..sent.len() {
        let d = parse_publish(&read_packet(&mut sub).await);
        assert!(!d.dup && d.qos == 2, "{d:?}");
        first.push(d);
    }
    assert_eq!(
        first.iter().map(|d| &d.payload).collect::<Vec<_>>(),
        sent.iter().collect::<Vec<_>>()
    );
    // 0..3 completed, 3..5 released (PUBREL seen, no PUBCOMP), 5.. only received.
    for d in &first[..5] {
        sub.write_all(&ack(0x50, d.pkid)).await.unwrap();
        assert_eq!(read_packet(&mut sub).await, ack(0x62, d.pkid), "PUBREL");
    }
    for d in &first[..3] {
        sub.write_all(&ack(0x70, d.pkid)).await.unwrap();
    }
    // The PUBCOMPs reached the broker before it dies (a PINGRESP after them).
    sub.write_all(&[0xc0, 0]).await.unwrap();
    assert_eq!(read_packet(&mut sub).await, [0xd0, 0], "PINGRESP");

    server.kill9().await;
    drop(sub);
    server.start_again().await;

    let (mut sub, present) = connect(&server, "k9-sub-2", false).await;
    assert!(present, "the session survived");
    let by_pkid: BTreeMap<u16, &Delivery> = first.iter().map(|d| (d.pkid, d)).collect();
    let mut pubrels = Vec::new();
    let mut again = Vec::new();
    let mut recd = Vec::new();
    while let Some(p) = next_packet(&mut sub).await {
        if p[0] == 0x62 {
            let pkid = u16::from_be_bytes([p[2], p[3]]);
            if !recd.contains(&pkid) {
                pubrels.push(by_pkid[&pkid].payload.clone());
            }
            sub.write_all(&ack(0x70, pkid)).await.unwrap();
            continue;
        }
        let d = parse_publish(&p);
        let before = by_pkid.get(&d.pkid).map(|b| b.payload.as_str());
        assert_eq!(
            (d.dup, d.qos, before),
            (true, 2, Some(d.payload.as_str())),
            "re-sent with DUP=1 on its original packet id: {d:?}"
        );
        again.push(d.payload.clone());
        recd.push(d.pkid);
        sub.write_all(&ack(0x50, d.pkid)).await.unwrap();
    }
    assert_eq!(again, sent[5..], "the unanswered ones, once, in order");
    for released in &sent[3..5] {
        assert!(pubrels.contains(released), "PUBREL of {released} again");
    }
    assert!(
        pubrels.iter().all(|p| sent[..5].contains(p)),
        "PUBRELs only for released exchanges: {pubrels:?}"
    );
    disconnect(sub).await;
    let (mut sub, present) = connect(&server, "k9-sub-2", false).await;
    assert!(present);
    assert_eq!(next_packet(&mut sub).await, None, "nothing owed any more");
    disconnect(sub).await;
}
