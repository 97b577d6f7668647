//! Sessions: Clean Session / Clean Start, Session Expiry Interval, session present,
//! subscriptions and queued QoS 1/2 messages across reconnects and restarts, inbound
//! QoS 2 state, outbound re-delivery with DUP=1. Real clients over TCP and WebSocket,
//! 3.1.1 and 5; a raw socket where a client library cannot send what the test needs.

mod common;

use std::time::Duration;

use common::*;
use fleetmq_broker::BrokerConfig;
use rumqttc::v5::mqttbytes::v5::Packet as P5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUIET: Duration = Duration::from_millis(300);

fn config() -> BrokerConfig {
    let mut config = BrokerConfig::for_tests();
    config.allow_anonymous = true;
    config
}

async fn broker() -> TestBroker {
    TestBroker::with_config(config()).await
}

/// Connects a 3.1.1 client; returns it with the CONNACK's session-present flag.
async fn connect4(
    b: &TestBroker,
    via: Via,
    id: &str,
    clean: bool,
    manual_acks: bool,
) -> (AsyncClient, EventLoop, bool) {
    let mut opts = options_v4(b, via, id, None);
    opts.set_clean_session(clean);
    opts.set_manual_acks(manual_acks);
    let (c, mut el) = AsyncClient::new(opts, 100);
    let present = next_v4(&mut el, |p| match p {
        Packet::ConnAck(a) => Some(a.session_present),
        _ => None,
    })
    .await;
    (c, el, present)
}

async fn connect5(
    b: &TestBroker,
    via: Via,
    id: &str,
    clean_start: bool,
    expiry: Option<u32>,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop, bool) {
    let mut opts = options_v5(b, via, id, None);
    opts.set_clean_start(clean_start);
    opts.set_session_expiry_interval(expiry);
    let (c, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    let present = next_v5(&mut el, |p| match p {
        P5::ConnAck(a) => Some(a.session_present),
        _ => None,
    })
    .await;
    (c, el, present)
}

async fn hang_up(c: AsyncClient, mut el: EventLoop) {
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(QUIET, async { while el.poll().await.is_ok() {} }).await;
}

async fn hang_up5(c: rumqttc::v5::AsyncClient, mut el: rumqttc::v5::EventLoop) {
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(QUIET, async { while el.poll().await.is_ok() {} }).await;
}

/// Publishes QoS 1 messages `payloads` on `topic`, each acknowledged.
async fn publish_acked(b: &TestBroker, topic: &str, payloads: &[&str]) {
    let (c, mut el) = connect_v4(b, Via::Tcp, "publisher", None).await.unwrap();
    for p in payloads {
        c.publish(topic, QoS::AtLeastOnce, false, p.as_bytes().to_vec())
            .await
            .unwrap();
        next_v4(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    hang_up(c, el).await;
}

async fn payloads4(el: &mut EventLoop, n: usize) -> Vec<(String, bool)> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < n {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
                got.push((String::from_utf8_lossy(&p.payload).into_owned(), p.dup));
            }
        }
    })
    .await
    .expect("queued messages in time");
    got
}

/// [MQTT-3.2.2-1] [MQTT-3.2.2-2] [MQTT-3.2.2-3] [MQTT-3.1.2-6]: session present is 0 for
/// a clean session and for a new persistent one, 1 when a stored session is resumed;
/// a clean session discards the stored one.
#[tokio::test]
async fn session_present_flag_v4() {
    let b = broker().await;
    for (via, id) in [(Via::Tcp, "sp-tcp"), (Via::Ws, "sp-ws")] {
        let (c, el, sp) = connect4(&b, via, id, true, false).await;
        assert!(!sp, "clean session");
        hang_up(c, el).await;
        let (c, el, sp) = connect4(&b, via, id, false, false).await;
        assert!(!sp, "no stored session yet");
        hang_up(c, el).await;
        let (c, el, sp) = connect4(&b, via, id, false, false).await;
        assert!(sp, "stored session resumed ({via:?})");
        hang_up(c, el).await;
        let (c, el, sp) = connect4(&b, via, id, true, false).await;
        assert!(!sp, "clean session");
        hang_up(c, el).await;
        let (c, el, sp) = connect4(&b, via, id, false, false).await;
        assert!(!sp, "the clean session discarded the stored one");
        hang_up(c, el).await;
    }
}

/// [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-4.6.0-6]: subscriptions survive a reconnect, and
/// QoS 1 messages published while the client was away are delivered after it, in order.
#[tokio::test]
async fn queued_messages_after_reconnect_v4() {
    let b = broker().await;
    for (via, id) in [(Via::Tcp, "q-tcp"), (Via::Ws, "q-ws")] {
        let (c, mut el, _) = connect4(&b, via, id, false, false).await;
        subscribe_v4(&c, &mut el, "q/+", QoS::AtLeastOnce).await;
        hang_up(c, el).await;
        publish_acked(&b, "q/1", &["a", "b", "c", "d"]).await;
        let (c, mut el, sp) = connect4(&b, via, id, false, false).await;
        assert!(sp);
        let got = payloads4(&mut el, 4).await;
        let got: Vec<_> = got.into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, ["a", "b", "c", "d"], "{via:?}");
        // The subscription itself survived: live traffic arrives too.
        publish_acked(&b, "q/2", &["live"]).await;
        assert_eq!(payloads4(&mut el, 1).await[0].0, "live");
        hang_up(c, el).await;
    }
}

/// v5: Session Expiry Interval > 0 keeps the session (queued messages delivered,
/// session present), 0 ends it with the connection, and an expired session is gone
/// [MQTT-3.1.2-23] [MQTT-3.2.2-2].
#[tokio::test]
async fn v5_session_expiry() {
    let b = broker().await;
    for (via, id) in [(Via::Tcp, "x-tcp"), (Via::Ws, "x-ws")] {
        let (c, el, sp) = connect5(&b, via, id, true, Some(60)).await;
        assert!(!sp);
        c.subscribe("x/t", Q5::AtLeastOnce).await.unwrap();
        let mut el = el;
        next_v5(&mut el, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
        hang_up5(c, el).await;
        publish_acked(&b, "x/t", &["1", "2"]).await;
        let (c, mut el, sp) = connect5(&b, via, id, false, Some(0)).await;
        assert!(sp, "resumed ({via:?})");
        let mut got = Vec::new();
        while got.len() < 2 {
            let p = next_v5(&mut el, |p| match p {
                P5::Publish(p) => Some(p.payload.to_vec()),
                _ => None,
            })
            .await;
            got.push(p);
        }
        assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
        hang_up5(c, el).await;
        // That connection had expiry 0: nothing is left.
        let (c, el, sp) = connect5(&b, via, id, false, Some(1)).await;
        assert!(!sp, "expiry 0 ended the session");
        hang_up5(c, el).await;
    }
    // Expiry 1 s: gone after it.
    let (c, el, _) = connect5(&b, Via::Tcp, "short", false, Some(1)).await;
    hang_up5(c, el).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (c, el, sp) = connect5(&b, Via::Tcp, "short", false, Some(1)).await;
    assert!(!sp, "expired session purged");
    hang_up5(c, el).await;
}

/// `mqtt.max_queued_messages`: the oldest queued messages are dropped and counted.
#[tokio::test]
async fn queue_bound_drops_oldest() {
    let mut config = config();
    config.max_queued_messages = 3;
    let b = TestBroker::with_config(config).await;
    let (c, mut el, _) = connect4(&b, Via::Tcp, "bounded", false, false).await;
    subscribe_v4(&c, &mut el, "bq", QoS::AtLeastOnce).await;
    hang_up(c, el).await;
    publish_acked(&b, "bq", &["1", "2", "3", "4", "5"]).await;
    let (_c, mut el, _) = connect4(&b, Via::Tcp, "bounded", false, false).await;
    let got: Vec<_> = payloads4(&mut el, 3)
        .await
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(got, ["3", "4", "5"]);
    assert_eq!(b.handle.stats().drops.session_queue_full, 2);
}

/// [MQTT-4.4.0-1]: a QoS 1 message the client did not acknowledge before it left is
/// sent again after reconnect with DUP=1.
#[tokio::test]
async fn unacked_redelivered_with_dup() {
    let b = broker().await;
    let (c, mut el, _) = connect4(&b, Via::Tcp, "unacked", false, true).await;
    subscribe_v4(&c, &mut el, "u", QoS::AtLeastOnce).await;
    let (p, mut pel) = connect_v4(&b, Via::Tcp, "pub-u", None).await.unwrap();
    p.publish("u", QoS::AtLeastOnce, false, b"once".to_vec())
        .await
        .unwrap();
    next_v4(&mut pel, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    let first = payloads4(&mut el, 1).await;
    assert_eq!(first, [("once".to_owned(), false)]);
    drop(c);
    drop(el);
    let (_c, mut el, sp) = connect4(&b, Via::Tcp, "unacked", false, false).await;
    assert!(sp);
    assert_eq!(payloads4(&mut el, 1).await, [("once".to_owned(), true)]);
}

/// Persistent sessions, their queues and subscriptions survive a broker restart.
#[tokio::test]
async fn sessions_survive_restart() {
    let b = broker().await;
    let (c, el, _) = connect5(&b, Via::Ws, "durable", true, Some(3600)).await;
    c.subscribe("d/#", Q5::AtLeastOnce).await.unwrap();
    let mut el = el;
    next_v5(&mut el, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
    hang_up5(c, el).await;
    publish_acked(&b, "d/x", &["before"]).await;
    let dir = b.stop().await;
    let b = TestBroker::with_config_in(config(), dir).await;
    publish_acked(&b, "d/y", &["after"]).await;
    let (_c, mut el, sp) = connect5(&b, Via::Tcp, "durable", false, Some(3600)).await;
    assert!(sp);
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = next_v5(&mut el, |p| match p {
            P5::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
            _ => None,
        })
        .await;
        got.push(p);
    }
    assert_eq!(got, ["before", "after"]);
}

// ---- raw 3.1.1 packets for inbound QoS 2 ------------------------------------------

fn connect_packet(id: &str, clean: bool) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        if clean { 2 } else { 0 },
        0,
        60,
    ];
    body.extend((id.len() as u16).to_be_bytes());
    body.extend(id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

fn publish_qos2(topic: &str, pkid: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic.as_bytes());
    body.extend(pkid.to_be_bytes());
    body.extend(payload);
    let mut p = vec![0x34 | if dup { 8 } else { 0 }, body.len() as u8];
    p.extend(body);
    p
}

async fn raw_connect(b: &TestBroker, id: &str, clean: bool) -> (tokio::net::TcpStream, bool) {
    let mut s = tokio::net::TcpStream::connect(b.tcp).await.unwrap();
    s.write_all(&connect_packet(id, clean)).await.unwrap();
    let ack = read_packet(&mut s).await;
    assert_eq!(ack[0], 0x20);
    (s, ack[2] & 1 == 1)
}

async fn read_packet(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("packet in time")
        .unwrap();
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).await.unwrap();
    let mut p = head.to_vec();
    p.extend(rest);
    p
}

/// [MQTT-4.3.3-9] [MQTT-4.3.3-10]: inbound QoS 2 state outlives the connection of a
/// persistent session: after reconnect a re-sent PUBLISH (DUP=1) is acknowledged but
/// not delivered again, and the PUBREL gets its PUBCOMP.
#[tokio::test]
async fn inbound_qos2_across_reconnect() {
    let b = broker().await;
    let (sub, mut sel) = connect_v4(&b, Via::Tcp, "q2-sub", None).await.unwrap();
    subscribe_v4(&sub, &mut sel, "q2", QoS::ExactlyOnce).await;
    let (mut s, _) = raw_connect(&b, "q2-pub", false).await;
    s.write_all(&publish_qos2("q2", 7, b"x", false))
        .await
        .unwrap();
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 7]);
    drop(s);
    let (mut s, present) = raw_connect(&b, "q2-pub", false).await;
    assert!(present);
    s.write_all(&publish_qos2("q2", 7, b"x", true))
        .await
        .unwrap();
    assert_eq!(read_packet(&mut s).await, [0x50, 2, 0, 7]);
    s.write_all(&[0x62, 2, 0, 7]).await.unwrap();
    assert_eq!(read_packet(&mut s).await, [0x70, 2, 0, 7]);
    let got = publishes_v4(&mut sel, QUIET).await;
    assert_eq!(
        got,
        [("q2".to_owned(), b"x".to_vec())],
        "delivered exactly once"
    );
}

fn connect_v5_packet(id: &str, clean: bool, expiry: u32) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        if clean { 2 } else { 0 },
        0,
        60,
    ];
    body.push(5);
    body.push(0x11);
    body.extend(expiry.to_be_bytes());
    body.extend((id.len() as u16).to_be_bytes());
    body.extend(id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// v5 [MQTT-3.14.2-2] and §3.14.2.2.2: a DISCONNECT may change the Session Expiry
/// Interval; set to 0 the session ends with the connection.
#[tokio::test]
async fn v5_disconnect_changes_session_expiry() {
    let b = broker().await;
    for (change, kept) in [(None, true), (Some(0u32), false)] {
        let mut s = tokio::net::TcpStream::connect(b.tcp).await.unwrap();
        s.write_all(&connect_v5_packet("dx", true, 60))
            .await
            .unwrap();
        assert_eq!(read_packet(&mut s).await[0], 0x20);
        let disconnect = match change {
            None => vec![0xe0, 0],
            Some(e) => {
                let mut d = vec![0xe0, 7, 0, 5, 0x11];
                d.extend(e.to_be_bytes());
                d
            }
        };
        s.write_all(&disconnect).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        let (c, el, sp) = connect5(&b, Via::Tcp, "dx", false, Some(60)).await;
        assert_eq!(sp, kept, "DISCONNECT expiry {change:?}");
        hang_up5(c, el).await;
    }
}

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
    eventually("the session is parked", || async {
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
