//! Bad input never hurts the broker or other clients: random bytes, malformed and
//! forbidden packets on every listener, v5 properties towards 3.1.1 clients, keepalive.

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use proptest::prelude::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A healthy client can still connect and round-trip a message.
async fn assert_healthy(b: &TestBroker) {
    let (c, mut el) = connect_v4(b, Via::Tcp, "probe", Some(("backend", "backend-pass")))
        .await
        .expect("broker still accepts");
    subscribe_v4(&c, &mut el, "health/check", QoS::AtLeastOnce).await;
    c.publish("health/check", QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    let got = next_v4(&mut el, |p| match p {
        rumqttc::Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    assert_eq!(got, b"ok");
    c.disconnect().await.ok();
    let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
}

async fn broker() -> TestBroker {
    let b = TestBroker::start().await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    b
}

/// Sends raw bytes over TCP and reads until the broker closes (or a short while).
async fn raw_tcp(b: &TestBroker, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(b.tcp).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut out)).await;
    out
}

fn connect_v5_bytes(client_id: &str, user: &str, pass: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b1100_0010, 0, 30, 0];
    for s in [client_id, user, pass] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend(body);
    pkt
}

#[tokio::test]
async fn v5_properties_never_reach_a_3_1_1_subscriber() {
    // Bare rumqttd panics here and then stops accepting 3.1.1 connections.
    let b = broker().await;
    let (sub, mut sub_el) = connect_v4(
        &b,
        Via::Tcp,
        "old-client",
        Some(("backend", "backend-pass")),
    )
    .await
    .unwrap();
    subscribe_v4(&sub, &mut sub_el, "mixed/topic", QoS::AtLeastOnce).await;
    let (pubr, pub_el) = connect_v5(&b, Via::Ws, "new-client", Some(("backend", "backend-pass")))
        .await
        .unwrap();
    let _p = drive_v5(pub_el);
    let props = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    pubr.publish_with_properties(
        "mixed/topic",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "{}",
        props,
    )
    .await
    .unwrap();
    let got = next_v4(&mut sub_el, |p| match p {
        rumqttc::Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    assert_eq!(got, b"{}");
    assert_healthy(&b).await;
}

#[tokio::test]
async fn forbidden_and_malformed_packets_close_only_their_connection() {
    let b = broker().await;
    let (bystander, mut by_el) =
        connect_v4(&b, Via::Tcp, "bystander", Some(("backend", "backend-pass")))
            .await
            .unwrap();
    subscribe_v4(&bystander, &mut by_el, "still/alive", QoS::AtMostOnce).await;
    let connect = connect_v5_bytes("evil", "backend", "backend-pass");
    // CONNACK and UNSUBACK from a client hit unreachable!() in rumqttd's v5 codec.
    for tail in [
        &[0x20u8, 0x03, 0x00, 0x00, 0x00][..],
        &[0xb0, 0x03, 0x00, 0x01, 0x00],
        &[0x90, 0x03, 0x00, 0x01, 0x00],
        &[0xf0, 0x00],
        &[0x36, 0x02, 0, 0],
    ] {
        let mut bytes = connect.clone();
        bytes.extend_from_slice(tail);
        let reply = raw_tcp(&b, &bytes).await;
        assert_eq!(reply.first(), Some(&0x20), "CONNACK first");
    }
    // A second CONNECT is a protocol violation; so is a PUBLISH before CONNECT.
    let mut twice = connect.clone();
    twice.extend(connect.clone());
    raw_tcp(&b, &twice).await;
    assert!(raw_tcp(&b, &[0x30, 0x05, 0x00, 0x01, b'a', b'x', b'y'])
        .await
        .is_empty());
    // MQTT 3.1 is refused with return code 1.
    let mut v31 = vec![
        0x10, 0x0e, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 30, 0, 0,
    ];
    v31[1] = (v31.len() - 2) as u8;
    assert_eq!(raw_tcp(&b, &v31).await, [0x20, 0x02, 0x00, 0x01]);
    bystander
        .publish("still/alive", QoS::AtMostOnce, false, "yes")
        .await
        .unwrap();
    let got = publishes_v4(&mut by_el, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1, "the bystander kept its connection");
    assert!(b.handle.stats().drops.malformed >= 5);
    assert_healthy(&b).await;
}

#[tokio::test]
async fn random_bytes_on_websocket_and_bad_upgrades_are_harmless() {
    let b = broker().await;
    let url = format!("ws://127.0.0.1:{}/mqtt", b.ws.port());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff, 0xff, 0xff].into()))
        .await
        .ok();
    ws.send(Message::Text("hello".into())).await.ok();
    let wrong_path = format!("ws://127.0.0.1:{}/nope", b.ws.port());
    assert!(tokio_tungstenite::connect_async(wrong_path).await.is_err());
    // Plain TCP garbage on the WebSocket port.
    let mut s = TcpStream::connect(b.ws).await.unwrap();
    s.write_all(b"\x10\x00\x00garbage\r\n\r\n").await.ok();
    assert_healthy(&b).await;
}

#[tokio::test]
async fn keepalive_is_enforced_at_one_and_a_half_times_the_interval() {
    let b = broker().await;
    let mut s = TcpStream::connect(b.tcp).await.unwrap();
    // keepalive = 1 s, then silence.
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 1];
    for f in ["ka", "backend", "backend-pass"] {
        connect.extend_from_slice(&(f.len() as u16).to_be_bytes());
        connect.extend_from_slice(f.as_bytes());
    }
    let mut pkt = vec![0x10, connect.len() as u8];
    pkt.extend(connect);
    s.write_all(&pkt).await.unwrap();
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let waited = start.elapsed();
    assert_eq!(&buf[..2], [0x20, 0x02], "got a CONNACK");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000),
        "closed after {waited:?}"
    );
    assert_healthy(&b).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_bytes_after_connect_never_break_the_broker(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let b = broker().await;
            for version in [4u8, 5] {
                let mut bytes = connect_v5_bytes("fuzz", "backend", "backend-pass");
                if version == 4 {
                    bytes = {
                        let mut c = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 30];
                        for f in ["fuzz", "backend", "backend-pass"] {
                            c.extend_from_slice(&(f.len() as u16).to_be_bytes());
                            c.extend_from_slice(f.as_bytes());
                        }
                        let mut p = vec![0x10, c.len() as u8];
                        p.extend(c);
                        p
                    };
                }
                bytes.extend_from_slice(&tail);
                raw_tcp(&b, &bytes).await;
                raw_tcp(&b, &tail).await;
            }
            assert_healthy(&b).await;
        });
    }
}

#[tokio::test]
async fn a_slow_subscriber_gets_backpressure_and_every_message_then_leaves_cleanly() {
    // A write buffer far smaller than the 8 MB published: the connection stops waking
    // the router once its client stopped reading (`writing.rs`).
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.max_outbound_bytes = 256 * 1024;
    let b = TestBroker::with_config(config).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    for round in 0..3 {
        let (sub, mut sub_el) =
            connect_v4(&b, Via::Tcp, "slow-sub", Some(("backend", "backend-pass")))
                .await
                .unwrap();
        // QoS 0 has no inflight window, so only the router's buffer limit holds it back.
        subscribe_v4(&sub, &mut sub_el, "load/#", QoS::AtMostOnce).await;
        let (publ, pub_el) =
            connect_v4(&b, Via::Tcp, "fast-pub", Some(("backend", "backend-pass")))
                .await
                .unwrap();
        let _p = drive_v4(pub_el);
        for i in 0..2000u32 {
            let mut payload = vec![0u8; 4096];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            publ.publish(format!("load/{}", i % 7), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        // Not reading yet: the write buffer reaches its bound, the router fills this
        // link's buffer and pauses it (Unschedule), and is not woken.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if round < 2 {
            let got = publishes_v4(&mut sub_el, Duration::from_millis(1500)).await;
            assert_eq!(got.len(), 2000, "round {round}: every message arrives");
        } else {
            // Leave while paused: the link must leave the router without upsetting it.
            drop(sub_el);
        }
        drop(publ);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.handle.stats().messages.backpressure_pauses > 0,
        "the router paused the slow link"
    );
    assert_healthy(&b).await;
}
