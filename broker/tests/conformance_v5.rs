//! MQTT 5 properties and flow control (MQTT 5 §3.3.2.3, §3.1.2.11, §3.8.3.1, §4.9,
//! §4.13), over TCP and WebSocket; a 3.1.1 receiver never sees properties. Also runs
//! against an external broker.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::conf::*;

fn rich_props() -> Option<PublishProperties> {
    publish_props(|p| {
        p.payload_format_indicator = Some(1);
        p.content_type = Some("application/json".into());
        p.response_topic = Some("reply/to".into());
        p.correlation_data = Some(Bytes::from_static(b"\x00corr"));
        p.user_properties = vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ];
    })
}

/// [MQTT-3.3.2-15]..[MQTT-3.3.2-20]: Payload Format Indicator, Content Type, Response
/// Topic, Correlation Data and User Properties (in order) reach a v5 subscriber unchanged.
async fn properties_pass_through(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("props/");
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&topic, 1).await;
    let mut p = t.connect(via, Ver::V5, &unique("pub")).await;
    p.publish_with(&topic, b"{}", 1, false, rich_props()).await;
    let m = sub.next_msg().await;
    let got = m.props.expect("properties");
    let want = rich_props().expect("set");
    assert_eq!(got.payload_format_indicator, want.payload_format_indicator);
    assert_eq!(got.content_type, want.content_type);
    assert_eq!(got.response_topic, want.response_topic);
    assert_eq!(got.correlation_data, want.correlation_data);
    assert_eq!(
        got.user_properties, want.user_properties,
        "[MQTT-3.3.2-18] order kept"
    );
}
matrix!(
    publish_properties_pass_through_mqtt_3_3_2_18,
    properties_pass_through,
    v5
);

/// A 3.1.1 subscriber of a v5 publisher gets the bare message, never v5 properties
/// (bare rumqttd panics the connection here).
async fn v4_receiver_gets_no_properties(via: Via, _ver: Ver) {
    let t = Target::start().await;
    let topic = unique("props4/");
    let mut sub = t.connect(via, Ver::V4, &unique("sub")).await;
    sub.subscribe(&topic, 1).await;
    let mut p = t.connect(via, Ver::V5, &unique("pub")).await;
    p.publish_with(&topic, b"plain", 1, false, rich_props())
        .await;
    let m = sub.next_msg().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        (topic.as_str(), &b"plain"[..])
    );
    sub.puback(m.pkid).await;
    sub.pingreq().await;
    sub.expect(|p| matches!(p, In::PingResp)).await;
}
matrix!(v4_receiver_never_sees_v5_properties, v4_receiver_gets_no_properties, [tcp_v4: Tcp V4, ws_v4: Ws V4]);

/// [MQTT-3.3.2-5], [MQTT-3.3.2-6]: an expired message is not delivered; a delivered one
/// carries the remaining interval (checked with retained messages, which wait).
async fn message_expiry(via: Via, ver: Ver) {
    let t = Target::start().await;
    let short = unique("expiry/short/");
    let long = unique("expiry/long/");
    let mut p = t.connect(via, ver, &unique("pub")).await;
    let exp = |s| publish_props(|p| p.message_expiry_interval = Some(s));
    p.publish_with(&short, b"s", 1, true, exp(1)).await;
    p.publish_with(&long, b"l", 1, true, exp(30)).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&short, 1).await;
    sub.subscribe(&long, 1).await;
    let got = sub.msgs_within(QUIET).await;
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, vec![&b"l"[..]], "the expired one is gone");
    let left = got[0]
        .props
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining interval");
    assert!((1..30).contains(&left), "remaining {left}");
    p.publish(&long, b"", 0, true).await;
    p.publish(&short, b"", 0, true).await;
}
matrix!(
    message_expiry_drops_expired_and_counts_down_mqtt_3_3_2_5,
    message_expiry,
    v5
);

/// [MQTT-3.3.4-7], [MQTT-3.3.4-8]: never more unacknowledged QoS 1 messages to a client
/// than its Receive Maximum; the rest follow as it acknowledges.
async fn client_receive_maximum(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("recvmax/");
    let mut sub = t.open(via, ver).await;
    sub.connect(Conn::new(&unique("sub")).props(connect_props(|p| p.receive_maximum = Some(2))))
        .await;
    sub.subscribe(&topic, 1).await;
    let mut p = t.connect(via, ver, &unique("pub")).await;
    for i in 0..5u8 {
        p.publish_acked(&topic, &[i]).await;
    }
    let first = sub.msgs_within(QUIET).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let mut seen: Vec<u8> = first.iter().map(|m| m.payload[0]).collect();
    for m in &first {
        sub.puback(m.pkid).await;
    }
    while seen.len() < 5 {
        let m = sub.next_msg().await;
        seen.push(m.payload[0]);
        sub.puback(m.pkid).await;
    }
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}
matrix!(
    client_receive_maximum_respected_mqtt_3_3_4_7,
    client_receive_maximum,
    v5
);

/// [MQTT-3.1.2-24], [MQTT-3.1.2-25]: no packet larger than the client's Maximum Packet
/// Size; such a message is discarded, later ones still arrive.
async fn client_maximum_packet_size(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("maxpkt/");
    let mut sub = t.open(via, ver).await;
    sub.connect(Conn::new(&unique("sub")).props(connect_props(|p| p.max_packet_size = Some(128))))
        .await;
    sub.subscribe(&topic, 1).await;
    let mut p = t.connect(via, ver, &unique("pub")).await;
    p.publish_acked(&topic, &[b'x'; 300]).await;
    p.publish_acked(&topic, b"small").await;
    let got = sub.msgs_within(QUIET).await;
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, vec![&b"small"[..]]);
}
matrix!(
    client_maximum_packet_size_respected_mqtt_3_1_2_24,
    client_maximum_packet_size,
    v5
);

/// [MQTT-3.3.4-9] / §4.9: more unacknowledged QoS 2 PUBLISHes than our Receive Maximum
/// end the connection with DISCONNECT 0x93.
async fn our_receive_maximum(via: Via, ver: Ver) {
    let t = Target::with(|c| c.max_inflight = 3).await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new(&unique("c"))).await;
    let Some(max) = ack.props.and_then(|p| p.receive_max) else {
        // Nothing announced: 65535, not testable quickly.
        skipped("the server announces no Receive Maximum");
        return;
    };
    let topic = unique("ourmax/");
    for pkid in 1..=max + 1 {
        c.publish_raw(&topic, b"x", 2, false, false, pkid, None)
            .await;
    }
    assert_eq!(c.closed().await, Some(0x93));
}
matrix!(
    our_receive_maximum_enforced_with_0x93_mqtt_3_3_4_9,
    our_receive_maximum,
    v5
);

/// §3.1.2.11.3, §3.3.4: "The value of Receive Maximum applies only to the current Network
/// Connection". QoS 2 exchanges that a resumed session still holds from an earlier
/// connection (PUBREC sent, no PUBREL yet) do not count against it: the client may have
/// Receive Maximum new ones unreleased on this connection, and only the PUBLISH past it
/// gets DISCONNECT 0x93 [MQTT-3.3.4-9] (earlier state once ended the connection while the
/// client was still writing). The earlier exchanges are still known: their PUBREL gets
/// PUBCOMP 0x00.
async fn receive_maximum_per_connection(via: Via, ver: Ver) {
    let t = Target::with(|c| c.max_inflight = 3).await;
    let id = unique("rmsess");
    let topic = unique("rmsess/");
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::persistent(&id, ver, 600)).await;
    let Some(max) = ack.props.and_then(|p| p.receive_max) else {
        skipped("the server announces no Receive Maximum");
        return;
    };
    // The earlier connection leaves `max - 1` exchanges unreleased (ids 1001..).
    let earlier: Vec<u16> = (1001..1000 + max).collect();
    for &pkid in &earlier {
        c.publish_raw(&topic, b"early", 2, false, false, pkid, None)
            .await;
        c.expect(|p| matches!(p, In::PubRec { pkid: id, .. } if *id == pkid))
            .await;
    }
    c.drop_connection().await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::persistent(&id, ver, 600)).await;
    assert!(ack.code == 0 && ack.session_present, "{ack:?}");
    c.pubrel(earlier[0]).await;
    match c.expect(|p| matches!(p, In::PubComp { .. })).await {
        In::PubComp { pkid, reason } => assert_eq!((pkid, reason), (earlier[0], 0)),
        _ => unreachable!(),
    }
    for pkid in 1..=max + 1 {
        c.publish_raw(&topic, b"x", 2, false, false, pkid, None)
            .await;
    }
    let mut recs = Vec::new();
    let mut reason = None;
    while let Some(p) = c.recv_within(WAIT).await {
        match p {
            In::PubRec { pkid, .. } => recs.push(pkid),
            In::Disconnect { reason: r, .. } => reason = Some(r),
            _ => {}
        }
    }
    assert_eq!(recs, (1..=max).collect::<Vec<u16>>(), "PUBRECs");
    assert_eq!(reason, Some(0x93));
}
matrix!(
    receive_maximum_counts_this_connection_only_mqtt_3_3_4_9,
    receive_maximum_per_connection,
    v5
);

/// §3.2.2.3.6 / §4.13: a packet larger than our announced Maximum Packet Size ends the
/// connection with DISCONNECT 0x95.
async fn our_maximum_packet_size(via: Via, ver: Ver) {
    let t = Target::with(|c| c.max_payload = 256).await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new(&unique("c"))).await;
    let Some(max) = ack.props.and_then(|p| p.max_packet_size) else {
        skipped("the server announces no Maximum Packet Size");
        return;
    };
    let payload = vec![0u8; max as usize + 1];
    c.publish(&unique("big/"), &payload, 0, false).await;
    assert_eq!(c.closed().await, Some(0x95));
}
matrix!(
    our_maximum_packet_size_enforced_with_0x95,
    our_maximum_packet_size,
    v5
);

/// [MQTT-3.8.3-3]: with No Local a client does not get its own messages back; others do.
async fn no_local(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("nolocal/");
    let mut c = t.connect(via, ver, &unique("c")).await;
    let mut f = filter(&topic, 1);
    f.nolocal = true;
    c.subscribe_filters(vec![f], None).await;
    let mut other = t.connect(via, ver, &unique("o")).await;
    other.subscribe(&topic, 1).await;
    c.publish_acked(&topic, b"mine").await;
    assert_eq!(other.next_msg().await.payload, b"mine");
    assert!(
        c.msgs_within(QUIET).await.is_empty(),
        "echoed despite No Local"
    );
    let mut third = t.connect(via, ver, &unique("t")).await;
    third.publish_acked(&topic, b"theirs").await;
    assert_eq!(c.next_msg().await.payload, b"theirs");
}
matrix!(no_local_suppresses_own_messages_mqtt_3_8_3_3, no_local, v5);

/// [MQTT-3.3.4-3]: a message carries the Subscription Identifier of the matching
/// subscription.
async fn subscription_identifiers(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("subid/");
    let mut c = t.connect(via, ver, &unique("c")).await;
    let props = SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    c.subscribe_filters(vec![filter(&topic, 0)], Some(props))
        .await;
    let mut p = t.connect(via, ver, &unique("p")).await;
    p.publish(&topic, b"x", 0, false).await;
    let m = c.next_msg().await;
    let ids = m
        .props
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert_eq!(ids, vec![42]);
}
matrix!(
    subscription_identifier_delivered_mqtt_3_3_4_3,
    subscription_identifiers,
    v5
);

/// [MQTT-3.3.4-6] / §4.13.1: a protocol error is answered with DISCONNECT carrying a
/// reason code (and, from fleetmq, a reason string) before the server closes.
async fn protocol_error_disconnect(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.connect(via, ver, &unique("c")).await;
    // A PUBLISH with a Subscription Identifier (property 0x0b) from a client.
    let props = [0x0b, 0x01];
    c.send_raw(&raw_publish(ver, "a/b", b"x", 0, 0, &props))
        .await;
    let got = c.recv_within(WAIT).await;
    match got {
        Some(In::Disconnect {
            reason,
            reason_string,
        }) => {
            assert!(reason >= 0x80, "reason {reason:#x}");
            if !t.external() {
                assert_eq!(reason, 0x82);
                assert!(reason_string.is_some());
            }
        }
        None => {
            // Say which: closed without DISCONNECT, or ignored (still answers pings).
            c.pingreq().await;
            match c.recv_within(QUIET).await {
                Some(In::PingResp) => panic!("no DISCONNECT within {WAIT:?}: ignored"),
                _ => panic!("no DISCONNECT within {WAIT:?}: closed"),
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}
matrix!(
    protocol_error_gets_disconnect_with_reason_mqtt_4_13_1,
    protocol_error_disconnect,
    v5
);
