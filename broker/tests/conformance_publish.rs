//! PUBLISH and QoS conformance (MQTT 3.1.1 §3.3, §4.3, §4.6 / MQTT 5 §3.3, §4.3), over
//! TCP and WebSocket, 3.1.1 and 5. Also runs against an external broker.

use crate::common;

use common::conf::*;

/// [MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5): a message is delivered at the minimum
/// of its publish QoS and the subscription's granted QoS (rumqttd uses the subscription's).
async fn delivery_qos_is_the_minimum(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("qos/");
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    for sq in 0..=2u8 {
        assert_eq!(sub.subscribe(&format!("{base}/s{sq}"), sq).await, vec![sq]);
    }
    let mut publ = t.connect(via, ver, &unique("pub")).await;
    for pq in 0..=2u8 {
        for sq in 0..=2u8 {
            let topic = format!("{base}/s{sq}");
            let payload = format!("p{pq}s{sq}");
            let pkid = publ.publish(&topic, payload.as_bytes(), pq, false).await;
            match pq {
                1 => {
                    publ.expect(|p| matches!(p, In::PubAck { pkid: id, .. } if *id == pkid))
                        .await;
                }
                2 => {
                    publ.expect(|p| matches!(p, In::PubRec { pkid: id, .. } if *id == pkid))
                        .await;
                    publ.pubrel(pkid).await;
                    publ.expect(|p| matches!(p, In::PubComp { pkid: id, .. } if *id == pkid))
                        .await;
                }
                _ => {}
            }
            let m = sub.next_msg().await;
            assert_eq!(m.payload, payload.as_bytes());
            assert_eq!(m.qos, pq.min(sq), "publish QoS {pq}, subscription QoS {sq}");
            match m.qos {
                1 => sub.puback(m.pkid).await,
                2 => {
                    sub.pubrec(m.pkid).await;
                    sub.expect(|p| matches!(p, In::PubRel { pkid, .. } if *pkid == m.pkid))
                        .await;
                    sub.pubcomp(m.pkid).await;
                }
                _ => {}
            }
        }
    }
    // Everything was completed: the connection still works.
    publ.publish(&format!("{base}/s0"), b"end", 0, false).await;
    assert_eq!(sub.next_msg().await.payload, b"end");
}
matrix!(
    delivery_qos_is_min_of_publish_and_subscription_mqtt_3_8_4_6,
    delivery_qos_is_the_minimum
);

/// [MQTT-4.3.3-1]..[MQTT-4.3.3-3] / [MQTT-4.3.3-9]: inbound QoS 2 completes with
/// PUBREC/PUBREL/PUBCOMP, and a re-sent PUBLISH (DUP=1) before PUBREL is not delivered twice.
async fn inbound_qos2_exactly_once(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("qos2/in/");
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&topic, 2).await;
    let mut publ = t.connect(via, ver, &unique("pub")).await;
    publ.publish_raw(&topic, b"once", 2, false, false, 7, None)
        .await;
    publ.expect(|p| matches!(p, In::PubRec { pkid: 7, .. }))
        .await;
    publ.publish_raw(&topic, b"once", 2, false, true, 7, None)
        .await;
    publ.expect(|p| matches!(p, In::PubRec { pkid: 7, .. }))
        .await;
    publ.pubrel(7).await;
    publ.expect(|p| matches!(p, In::PubComp { pkid: 7, .. }))
        .await;
    let m = sub.next_msg().await;
    assert_eq!(m.payload, b"once");
    sub.pubrec(m.pkid).await;
    sub.expect(|p| matches!(p, In::PubRel { .. })).await;
    sub.pubcomp(m.pkid).await;
    assert!(sub.msgs_within(QUIET).await.is_empty(), "delivered twice");
}
matrix!(
    inbound_qos2_duplicate_not_redelivered_mqtt_4_3_3_9,
    inbound_qos2_exactly_once
);

/// [MQTT-4.3.3-?] outbound QoS 2: PUBLISH, PUBREC from the client, PUBREL, PUBCOMP; the
/// flow repeats on the same connection.
async fn outbound_qos2_flow(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("qos2/out/");
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&topic, 2).await;
    let mut publ = t.connect(via, ver, &unique("pub")).await;
    for i in 0..3u8 {
        let pkid = publ.publish(&topic, &[i], 2, false).await;
        publ.expect(|p| matches!(p, In::PubRec { pkid: id, .. } if *id == pkid))
            .await;
        publ.pubrel(pkid).await;
        let m = sub.next_msg().await;
        assert_eq!((m.qos, &m.payload[..]), (2, &[i][..]));
        sub.pubrec(m.pkid).await;
        sub.expect(|p| matches!(p, In::PubRel { pkid, .. } if *pkid == m.pkid))
            .await;
        sub.pubcomp(m.pkid).await;
    }
}
matrix!(
    outbound_qos2_flow_completes_mqtt_4_3_3_2,
    outbound_qos2_flow
);

/// [MQTT-4.6.0-2]..: a client may acknowledge in any order; the connection stays up and
/// delivery goes on (rumqttd disconnects on out-of-order acks).
async fn acks_in_any_order(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("ack/order/");
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&topic, 1).await;
    let mut publ = t.connect(via, ver, &unique("pub")).await;
    for i in 0..4u8 {
        publ.publish_acked(&topic, &[i]).await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sub.next_msg().await);
    }
    // [MQTT-4.6.0-5]: in order per topic.
    let order: Vec<u8> = got.iter().map(|m| m.payload[0]).collect();
    assert_eq!(order, [0, 1, 2, 3]);
    for m in got.iter().rev() {
        sub.puback(m.pkid).await;
    }
    for i in 4..8u8 {
        publ.publish_acked(&topic, &[i]).await;
        let m = sub.next_msg().await;
        assert_eq!(m.payload, [i]);
        sub.puback(m.pkid).await;
    }
}
matrix!(
    acks_in_any_order_are_accepted_mqtt_4_6_0_2,
    acks_in_any_order
);

/// [MQTT-3.3.4-1]: QoS 1 is answered with PUBACK carrying the packet id; QoS 0 with nothing.
async fn qos1_puback_and_qos0_silence(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("qos1/");
    let mut c = t.connect(via, ver, &unique("c")).await;
    let pkid = c.publish(&topic, b"x", 1, false).await;
    match c.recv().await {
        Some(In::PubAck { pkid: id, reason }) => {
            assert_eq!(id, pkid);
            assert!(reason == 0 || reason == 0x10, "reason {reason:#x}");
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    c.publish(&topic, b"y", 0, false).await;
    assert!(c.recv_within(QUIET).await.is_none());
}
matrix!(qos1_gets_puback_mqtt_3_3_4_1, qos1_puback_and_qos0_silence);

/// SPEC §1 `mqtt.max_payload`: a larger PUBLISH closes the connection (v5: DISCONNECT
/// 0x95 Packet too large) and is not delivered (fleetmq only: needs the config).
async fn max_payload_enforced(via: Via, ver: Ver) {
    let t = Target::with(|c| c.max_payload = 64).await;
    if t.skip_external("needs mqtt.max_payload = 64 and fleetmq's drop counter") {
        return;
    }
    let topic = unique("big/");
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&topic, 0).await;
    let mut c = t.connect(via, ver, &unique("c")).await;
    c.publish(&topic, &[0u8; 65], 0, false).await;
    let reason = c.closed().await;
    if ver == Ver::V5 {
        assert_eq!(reason, Some(0x95));
    }
    assert!(sub.msgs_within(QUIET).await.is_empty());
    let stats = t.broker.as_ref().expect("fleetmq").handle.stats();
    assert!(stats.drops.too_large >= 1);
}
matrix!(max_payload_enforced_with_0x95, max_payload_enforced);
