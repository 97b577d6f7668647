//! SUBSCRIBE / UNSUBSCRIBE conformance (MQTT 3.1.1 §3.8-§3.11, §4.7 / MQTT 5 §3.8-§3.11),
//! over TCP and WebSocket, 3.1.1 and 5. Also runs against an external broker.

use crate::common;

use common::conf::*;

/// [MQTT-3.8.4-1], [MQTT-3.9.3-1]: one SUBACK with one code per filter, in order.
async fn suback_per_filter(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("sub/");
    let mut c = t.connect(via, ver, &unique("c")).await;
    let codes = c
        .subscribe_many(
            &[
                (&format!("{base}/a"), 0),
                (&format!("{base}/b"), 1),
                (&format!("{base}/c"), 2),
            ],
            None,
        )
        .await;
    assert_eq!(codes, vec![0, 1, 2]);
}
matrix!(one_suback_code_per_filter_mqtt_3_8_4_1, suback_per_filter);

/// [MQTT-4.7.1-2], [MQTT-4.7.1-3]: `+` matches one level, `#` the parent and any depth.
async fn wildcards_match(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("wild");
    let mut c = t.connect(via, ver, &unique("c")).await;
    c.subscribe(&format!("{base}/+/x"), 0).await;
    c.subscribe(&format!("{base}/deep/#"), 0).await;
    let mut p = t.connect(via, ver, &unique("p")).await;
    for topic in ["a/x", "a/b/x", "deep", "deep/1/2/3", "other"] {
        p.publish(&format!("{base}/{topic}"), topic.as_bytes(), 0, false)
            .await;
    }
    let mut got: Vec<String> = c
        .msgs_within(QUIET)
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["a/x", "deep", "deep/1/2/3"]);
}
matrix!(wildcards_match_levels_mqtt_4_7_1_2, wildcards_match);

/// [MQTT-3.10.4-4], [MQTT-3.10.4-5] / MQTT 5 §3.11.3: exactly one UNSUBACK per
/// UNSUBSCRIBE; v5 says per filter whether a subscription existed (0x00 / 0x11); rumqttd
/// sends none for an unknown filter and one per known filter.
async fn one_unsuback_with_codes(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("unsub/");
    let (a, b, never) = (
        format!("{base}/a"),
        format!("{base}/b"),
        format!("{base}/never"),
    );
    let mut c = t.connect(via, ver, &unique("c")).await;
    c.subscribe(&a, 0).await;
    c.subscribe(&b, 1).await;
    let acks = c.unsubscribe(&[&a, &never, &b]).await;
    assert_eq!(acks.len(), 1, "UNSUBACKs: {acks:?}");
    if ver == Ver::V5 {
        assert_eq!(acks[0], vec![0x00, 0x11, 0x00]);
    } else {
        assert!(acks[0].is_empty());
    }
    // Only unknown filters: still exactly one.
    let acks = c.unsubscribe(&[&never]).await;
    assert_eq!(acks.len(), 1, "UNSUBACKs: {acks:?}");
    if ver == Ver::V5 {
        assert_eq!(acks[0], vec![0x11]);
    }
}
matrix!(
    exactly_one_unsuback_per_unsubscribe_mqtt_3_10_4_4,
    one_unsuback_with_codes
);

/// [MQTT-3.10.4-1], [MQTT-3.10.4-2]: after UNSUBSCRIBE no more messages for that filter;
/// other subscriptions keep working.
async fn unsubscribe_stops_delivery(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("unsub2/");
    let mut c = t.connect(via, ver, &unique("c")).await;
    c.subscribe(&format!("{base}/a"), 1).await;
    c.subscribe(&format!("{base}/b"), 1).await;
    c.unsubscribe(&[&format!("{base}/a")]).await;
    let mut p = t.connect(via, ver, &unique("p")).await;
    p.publish_acked(&format!("{base}/a"), b"a").await;
    p.publish_acked(&format!("{base}/b"), b"b").await;
    let got = c.msgs_within(QUIET).await;
    let payloads: Vec<&[u8]> = got.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, vec![&b"b"[..]]);
}
matrix!(
    unsubscribe_stops_delivery_mqtt_3_10_4_2,
    unsubscribe_stops_delivery
);

/// [MQTT-3.8.4-3]: a SUBSCRIBE for an existing filter replaces it (new QoS), and the
/// message is delivered once.
async fn resubscribe_replaces(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("resub/");
    let mut c = t.connect(via, ver, &unique("c")).await;
    c.subscribe(&topic, 0).await;
    assert_eq!(c.subscribe(&topic, 1).await, vec![1]);
    let mut p = t.connect(via, ver, &unique("p")).await;
    p.publish_acked(&topic, b"x").await;
    let got = c.msgs_within(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].qos, 1);
}
matrix!(
    resubscribe_replaces_the_subscription_mqtt_3_8_4_3,
    resubscribe_replaces
);

/// A SUBSCRIBE (`0x82`) or UNSUBSCRIBE (`0xa2`) frame for one filter, written by hand:
/// rumqttc would refuse nothing here, but the test needs the exact bytes.
fn raw_filter_packet(byte1: u8, ver: Ver, pkid: u16, filter: &str, qos: Option<u8>) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if ver == Ver::V5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.extend(qos);
    let mut frame = bytes::BytesMut::new();
    frame.extend_from_slice(&[byte1]);
    put_var_int(&mut frame, body.len());
    frame.extend_from_slice(&body);
    frame.to_vec()
}

/// MQTT 5 §1.5.4 [MQTT-1.5.4-2] / 3.1.1 §1.5.3 [MQTT-1.5.3-2]: a topic filter containing
/// U+0000 makes the SUBSCRIBE / UNSUBSCRIBE a Malformed Packet: the server closes the
/// connection (v5: DISCONNECT 0x81 first, §4.13) and never acknowledges it.
async fn nul_in_filter(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("nul/");
    for (byte1, qos) in [(0x82u8, Some(0u8)), (0xa2, None)] {
        let mut c = t.connect(via, ver, &unique("c")).await;
        if byte1 == 0xa2 {
            // Something to unsubscribe from, so that only the NUL is wrong.
            c.subscribe(&format!("{base}/a"), 0).await;
        }
        let filter = format!("{base}/a\0b");
        let raw = raw_filter_packet(byte1, ver, 77, &filter, qos);
        closed_unacknowledged(c, ver, &raw, 0x81, "with U+0000").await;
    }
}

/// Sends `raw` (a SUBSCRIBE or UNSUBSCRIBE) and expects the connection closed without a
/// SUBACK or UNSUBACK, after DISCONNECT `v5_reason` for MQTT 5.
async fn closed_unacknowledged(mut c: Client, ver: Ver, raw: &[u8], v5_reason: u8, what: &str) {
    let byte1 = raw[0];
    c.send_raw(raw).await;
    let start = tokio::time::Instant::now();
    let mut reason = None;
    while let Some(p) = c.recv_within(WAIT).await {
        match p {
            In::Disconnect { reason: r, .. } => reason = Some(r),
            In::SubAck { .. } | In::UnsubAck { .. } => {
                panic!("packet {byte1:#x} {what} acknowledged: {p:?}")
            }
            _ => {}
        }
    }
    assert!(
        start.elapsed() < WAIT,
        "packet {byte1:#x} {what}: the server did not close the connection"
    );
    if ver == Ver::V5 {
        assert_eq!(reason, Some(v5_reason), "packet {byte1:#x} {what}");
    }
}
matrix!(
    nul_in_topic_filter_closes_the_connection_mqtt_1_5_4_2,
    nul_in_filter
);

/// MQTT 5 [MQTT-2.2.1-3] / 3.1.1 [MQTT-2.3.1-1]: SUBSCRIBE and UNSUBSCRIBE carry a
/// non-zero Packet Identifier. One with 0 closes the connection (v5: DISCONNECT 0x82
/// Protocol Error) and is never acknowledged.
async fn zero_packet_id(via: Via, ver: Ver) {
    let t = Target::start().await;
    let base = unique("pkid0/");
    for (byte1, qos) in [(0x82u8, Some(0u8)), (0xa2, None)] {
        let c = t.connect(via, ver, &unique("c")).await;
        let raw = raw_filter_packet(byte1, ver, 0, &format!("{base}/a"), qos);
        closed_unacknowledged(c, ver, &raw, 0x82, "with packet id 0").await;
    }
}
matrix!(
    zero_packet_id_closes_the_connection_mqtt_2_2_1_3,
    zero_packet_id
);

/// Subscribes to `filter` at `q` with Subscription Identifier `id` (3.1.1: without).
async fn subscribe_with_id(c: &mut Client, filter: &str, q: u8, id: usize, no_local: bool) {
    let mut f = common::conf::filter(filter, q);
    f.nolocal = no_local;
    let props = SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    };
    assert_eq!(c.subscribe_filters(vec![f], Some(props)).await, vec![q]);
}

/// Every PUBLISH up to `n` of them, then [`QUIET`] more; each QoS 1/2 one acknowledged.
/// As (payload, QoS, Subscription Identifiers), sorted by payload: copies of different
/// messages may come through different subscriptions, in any order between them.
async fn received(c: &mut Client, n: usize) -> Vec<(String, u8, Vec<usize>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let Some(m) = c.next_msg_within(WAIT).await else {
            break;
        };
        match m.qos {
            1 => c.puback(m.pkid).await,
            2 => c.pubrec(m.pkid).await,
            _ => {}
        }
        got.push(m);
    }
    got.extend(c.msgs_within(QUIET).await);
    let mut got: Vec<_> = got
        .into_iter()
        .map(|m| {
            let ids = m.props.map(|p| p.subscription_identifiers);
            let payload = String::from_utf8_lossy(&m.payload).into_owned();
            (payload, m.qos, ids.unwrap_or_default())
        })
        .collect();
    got.sort();
    got
}

/// [MQTT-3.3.4-2], [MQTT-3.3.4-4]: a message that matches several subscriptions of one
/// client reaches it once, at the highest QoS they grant (never above the publisher's),
/// carrying every matching Subscription Identifier. MQTT also allows one copy per
/// subscription; clients and Mosquitto's users expect one.
async fn overlapping_subscriptions(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("Mosquitto sends one copy per matching subscription, which MQTT allows") {
        return;
    }
    let base = unique("overlap");
    let mut c = t.connect(via, ver, &unique("c")).await;
    subscribe_with_id(&mut c, &format!("{base}/+"), 0, 1, false).await;
    subscribe_with_id(&mut c, &format!("{base}/#"), 1, 2, false).await;
    subscribe_with_id(&mut c, &format!("{base}/a"), 2, 3, false).await;
    let mut p = t.connect(via, ver, &unique("p")).await;
    for (leaf, payload, q) in [
        ("a", "m1", 2),
        ("b", "m2", 1),
        ("c/d", "m3", 2),
        ("a", "m4", 0),
    ] {
        p.publish(&format!("{base}/{leaf}"), payload.as_bytes(), q, false)
            .await;
    }
    let ids = |v: &[usize]| {
        if ver == Ver::V5 {
            v.to_vec()
        } else {
            Vec::new()
        }
    };
    let want = vec![
        ("m1".to_owned(), 2, ids(&[1, 2, 3])),
        ("m2".to_owned(), 1, ids(&[1, 2])),
        ("m3".to_owned(), 1, ids(&[2])),
        ("m4".to_owned(), 0, ids(&[1, 2, 3])),
    ];
    assert_eq!(received(&mut c, 4).await, want);
    // Without `#`, `b` matches `+` alone again.
    c.unsubscribe(&[&format!("{base}/#")]).await;
    p.publish(&format!("{base}/b"), b"m5", 1, false).await;
    assert_eq!(received(&mut c, 1).await, vec![("m5".into(), 0, ids(&[1]))]);
}
matrix!(
    overlapping_subscriptions_deliver_one_copy_mqtt_3_3_4_2,
    overlapping_subscriptions
);

/// [MQTT-3.8.3-3] with overlap: the client's own message comes back once, through the
/// subscriptions without No Local only (their QoS, their identifiers).
async fn overlapping_with_no_local(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("Mosquitto sends one copy per matching subscription, which MQTT allows") {
        return;
    }
    let base = unique("overlap-nl");
    let mut c = t.connect(via, ver, &unique("c")).await;
    subscribe_with_id(&mut c, &format!("{base}/+"), 0, 7, false).await;
    subscribe_with_id(&mut c, &format!("{base}/a"), 2, 8, true).await;
    c.publish(&format!("{base}/a"), b"own", 2, false).await;
    c.expect(|p| matches!(p, In::PubRec { .. })).await;
    let mut other = t.connect(via, ver, &unique("o")).await;
    other
        .publish(&format!("{base}/a"), b"theirs", 2, false)
        .await;
    let want = vec![
        ("own".to_owned(), 0, vec![7]),
        ("theirs".to_owned(), 2, vec![7, 8]),
    ];
    assert_eq!(received(&mut c, 2).await, want);
}
matrix!(
    overlapping_with_no_local_counts_only_the_others,
    overlapping_with_no_local,
    v5
);
