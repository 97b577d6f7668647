//! Topic aliases (MQTT 5 §3.3.2.3.4), inbound and outbound, over TCP and WebSocket.
//! Also runs against an external broker.

use crate::common;

use common::conf::*;

/// Property block with Topic Alias `n`.
fn alias(n: u16) -> Vec<u8> {
    vec![0x23, (n >> 8) as u8, n as u8]
}

/// The Topic Alias Maximum the server announced (skips the test when 0 / absent).
async fn connect_with_aliases(t: &Target, via: Via, ver: Ver) -> Option<(Client, u16)> {
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new(&unique("alias"))).await;
    let max = ack.props.and_then(|p| p.topic_alias_max).unwrap_or(0);
    (max > 0).then_some((c, max))
}

/// [MQTT-3.3.2-12]-ish: a PUBLISH sets an alias; later PUBLISHes with an empty topic and
/// that alias reach the subscribers of the full topic; an alias can be re-pointed.
async fn set_and_use(via: Via, ver: Ver) {
    let t = Target::start().await;
    let (a, b) = (unique("alias/a/"), unique("alias/b/"));
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&a, 0).await;
    sub.subscribe(&b, 0).await;
    let Some((mut c, _max)) = connect_with_aliases(&t, via, ver).await else {
        panic!("the server announces no Topic Alias Maximum");
    };
    c.send_raw(&raw_publish(ver, &a, b"1", 0, 0, &alias(1)))
        .await;
    c.send_raw(&raw_publish(ver, "", b"2", 0, 0, &alias(1)))
        .await;
    c.send_raw(&raw_publish(ver, &b, b"3", 0, 0, &alias(1)))
        .await;
    c.send_raw(&raw_publish(ver, "", b"4", 0, 0, &alias(1)))
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = sub.next_msg().await;
        got.push((m.topic, m.payload));
    }
    assert_eq!(
        got,
        vec![
            (a.clone(), b"1".to_vec()),
            (a, b"2".to_vec()),
            (b.clone(), b"3".to_vec()),
            (b, b"4".to_vec())
        ]
    );
}
matrix!(topic_alias_set_and_used_mqtt_3_3_2_12, set_and_use, v5);

/// [MQTT-3.3.2-9], [MQTT-3.3.2-8]: an alias above the announced maximum, or 0, ends the
/// connection with DISCONNECT 0x94 Topic Alias invalid.
async fn out_of_range(via: Via, ver: Ver) {
    let t = Target::start().await;
    for bad in [None, Some(0u16)] {
        let Some((mut c, max)) = connect_with_aliases(&t, via, ver).await else {
            skipped("the server announces no Topic Alias Maximum");
            return;
        };
        let n = bad.unwrap_or(max.saturating_add(1));
        c.send_raw(&raw_publish(ver, "x/y", b"1", 0, 0, &alias(n)))
            .await;
        let reason = c.closed().await;
        if n == 0 && t.external() {
            // 0x94 is defined for "greater than the maximum"; 0 may count as malformed.
            assert!(
                matches!(reason, Some(0x81 | 0x82 | 0x94)),
                "alias 0: {reason:?}"
            );
        } else {
            assert_eq!(reason, Some(0x94), "alias {n}");
        }
    }
}
matrix!(
    topic_alias_out_of_range_gets_0x94_mqtt_3_3_2_9,
    out_of_range,
    v5
);

/// §3.3.4: an empty topic with an alias that was never set is a protocol error
/// (DISCONNECT 0x82 or 0x94).
async fn unknown_alias(via: Via, ver: Ver) {
    let t = Target::start().await;
    let Some((mut c, _)) = connect_with_aliases(&t, via, ver).await else {
        skipped("the server announces no Topic Alias Maximum");
        return;
    };
    c.send_raw(&raw_publish(ver, "", b"1", 0, 0, &alias(1)))
        .await;
    let reason = c.closed().await;
    assert!(matches!(reason, Some(0x82 | 0x94)), "{reason:?}");
}
matrix!(unknown_topic_alias_is_refused, unknown_alias, v5);

/// An alias is resolved before the ACL: an aliased PUBLISH to a denied topic is dropped
/// like any other (fleetmq only: anonymous rules deny `device/#`).
async fn alias_then_acl(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("needs fleetmq's anonymous ACL rules") {
        return;
    }
    let Some((mut c, _)) = connect_with_aliases(&t, via, ver).await else {
        panic!("no aliases");
    };
    c.send_raw(&raw_publish(ver, "device/d1/status", b"1", 1, 1, &alias(1)))
        .await;
    c.expect(|p| {
        matches!(
            p,
            In::PubAck {
                pkid: 1,
                reason: 0x87
            }
        )
    })
    .await;
    c.send_raw(&raw_publish(ver, "", b"2", 1, 2, &alias(1)))
        .await;
    c.expect(|p| {
        matches!(
            p,
            In::PubAck {
                pkid: 2,
                reason: 0x87
            }
        )
    })
    .await;
}
matrix!(aliased_publish_passes_the_acl, alias_then_acl, v5);

/// MQTT 5 §3.3.2.3.4, outbound (fleetmq only: a server need not send aliases). A client
/// whose CONNECT carries a Topic Alias Maximum gets a repeated topic by alias: its first
/// PUBLISH carries the topic and an alias within that maximum [MQTT-3.3.2-11], later ones
/// an empty topic and the alias; past the maximum, topics go in full. A DUP re-send after
/// a reconnect names its topic in full, and the new connection starts without aliases
/// [MQTT-3.3.2-7].
async fn outbound_aliases(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("sending topic aliases is optional for a server") {
        return;
    }
    let id = unique("aliasout");
    let (a, b) = (unique("aliasout/a/"), unique("aliasout/b/"));
    let conn = || {
        Conn::persistent(&id, ver, 600).props(connect_props(|p| {
            p.session_expiry_interval = Some(600);
            p.topic_alias_max = Some(1);
        }))
    };
    let mut sub = t.open(via, ver).await;
    assert_eq!(sub.connect(conn()).await.code, 0);
    sub.subscribe(&a, 1).await;
    sub.subscribe(&b, 1).await;
    let mut p = t.connect(via, ver, &unique("pub")).await;
    for (topic, payload) in [(&a, b"1"), (&a, b"2"), (&b, b"3"), (&a, b"4")] {
        p.publish_acked(topic, payload).await;
    }
    let alias = |m: &Msg| m.props.as_ref().and_then(|p| p.topic_alias);
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = sub.next_msg().await;
        got.push((m.topic.clone(), alias(&m), m.payload.clone()));
        if m.payload != b"4" {
            sub.puback(m.pkid).await;
        }
    }
    assert_eq!(
        got,
        vec![
            (a.clone(), Some(1), b"1".to_vec()),
            (String::new(), Some(1), b"2".to_vec()),
            (b.clone(), None, b"3".to_vec()),
            (String::new(), Some(1), b"4".to_vec()),
        ]
    );
    // The server has read the PUBACKs once it answers a later PINGREQ; else a takeover
    // may overtake them and "1" to "3" come again too (allowed, but not this test).
    sub.pingreq().await;
    assert!(matches!(sub.recv().await, Some(In::PingResp)));
    // "4" was not acknowledged: it comes again on the next connection, in full.
    sub.drop_connection().await;
    let mut sub = t.open(via, ver).await;
    let ack = sub.connect(conn()).await;
    assert!(ack.code == 0 && ack.session_present, "{ack:?}");
    let m = sub.next_msg().await;
    assert_eq!(
        (m.topic.as_str(), alias(&m), m.dup, &m.payload[..]),
        (a.as_str(), None, true, &b"4"[..])
    );
    sub.puback(m.pkid).await;
    // A fresh table: the topic and a new alias again, then the alias alone.
    for payload in [b"5", b"6"] {
        p.publish_acked(&a, payload).await;
    }
    let (m5, m6) = (sub.next_msg().await, sub.next_msg().await);
    assert_eq!((m5.topic.as_str(), alias(&m5)), (a.as_str(), Some(1)));
    assert_eq!((m6.topic.as_str(), alias(&m6)), ("", Some(1)));
    assert_eq!((&m5.payload[..], &m6.payload[..]), (&b"5"[..], &b"6"[..]));
}
matrix!(
    outbound_topic_aliases_per_connection_mqtt_3_3_2_11,
    outbound_aliases,
    v5
);

/// Without a Topic Alias Maximum in its CONNECT, a v5 client never gets an alias
/// [MQTT-3.3.2-11]; nor does a 3.1.1 client.
async fn no_outbound_aliases(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("noalias/");
    let mut sub = t.connect(via, ver, &unique("sub")).await;
    sub.subscribe(&topic, 0).await;
    let mut p = t.connect(via, ver, &unique("pub")).await;
    for payload in [b"1", b"2", b"3"] {
        p.publish(&topic, payload, 0, false).await;
    }
    for _ in 0..3 {
        let m = sub.next_msg().await;
        assert_eq!(m.topic, topic);
        assert!(m.props.and_then(|p| p.topic_alias).is_none());
    }
}
matrix!(
    no_outbound_aliases_unless_asked_mqtt_3_3_2_11,
    no_outbound_aliases
);

/// A real client library takes the aliases we send: rumqttc 5 with a Topic Alias Maximum
/// stays connected (an alias it could not place would be its protocol error, 0x82) and
/// the packets it hands out name the topic once, then by alias. rumqttc 0.25 queues the
/// event before it resolves the alias (`v5/state.rs`, `handle_incoming_packet`), so an
/// application that opts in with `set_topic_alias_max` maps aliases back itself, as
/// here; without it (the default) no alias is ever sent (fleetmq only).
async fn rumqttc_takes_aliases(via: Via, _ver: Ver) {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let t = Target::start().await;
    if t.skip_external("a rumqttc client against fleetmq") {
        return;
    }
    let broker = t.broker.as_ref().expect("fleetmq");
    let via = match via {
        Via::Tcp => common::Via::Tcp,
        Via::Ws => common::Via::Ws,
    };
    let mut opts = common::options_v5(broker, via, &unique("rumqttc"), None);
    opts.set_topic_alias_max(Some(8));
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    let topic = unique("aliasrq/");
    client.subscribe(&topic, Q5::AtLeastOnce).await.unwrap();
    common::next_v5(&mut el, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
    let mut p = t.connect(Via::Tcp, Ver::V5, &unique("pub")).await;
    for payload in [b"1", b"2", b"3"] {
        p.publish_acked(&topic, payload).await;
    }
    let mut by_alias = std::collections::HashMap::new();
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = common::next_v5(&mut el, |p| match p {
            P5::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await;
        let alias = m.properties.as_ref().and_then(|p| p.topic_alias);
        let mut name = String::from_utf8_lossy(&m.topic).into_owned();
        match alias {
            Some(a) if name.is_empty() => name = by_alias.get(&a).cloned().expect("known alias"),
            Some(a) => {
                by_alias.insert(a, name.clone());
            }
            None => {}
        }
        got.push((name, alias, m.payload.to_vec()));
    }
    let want: Vec<_> = [b"1", b"2", b"3"]
        .iter()
        .map(|p| (topic.clone(), Some(1), p.to_vec()))
        .collect();
    assert_eq!(got, want);
    // Still connected: a QoS 1 round trip through rumqttc's state machine.
    client
        .publish(&topic, Q5::AtLeastOnce, false, "4")
        .await
        .unwrap();
    common::next_v5(&mut el, |p| matches!(p, P5::PubAck(_)).then_some(())).await;
}
matrix!(rumqttc_takes_outbound_aliases, rumqttc_takes_aliases, v5);
