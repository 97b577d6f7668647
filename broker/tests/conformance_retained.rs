//! Retained messages [MQTT-3.3.1-5..12], [MQTT-3.8.4-3], v5 Retain Handling and
//! Retain As Published, over TCP and WebSocket, 3.1.1 and 5. Also runs against an
//! external broker (`CONFORMANCE_TARGET`), except the cases that need fleetmq's ACL, its
//! handle or a restart.

use crate::common;

use common::conf::*;
use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};

/// Publishes `payload` on `topic` at QoS 1 with the given RETAIN flag and waits for the
/// PUBACK.
async fn retain(t: &Target, via: Via, ver: Ver, topic: &str, payload: &[u8], retain: bool) {
    let mut c = t.connect(via, ver, &unique("retainer")).await;
    let pkid = c.publish(topic, payload, 1, retain).await;
    c.expect(|p| matches!(p, In::PubAck { pkid: id, .. } if *id == pkid))
        .await;
    c.disconnect(0).await;
}

/// Subscribes with `filters` and returns (topic, payload, RETAIN) of the PUBLISHes that
/// follow within [`QUIET`], acknowledging them.
async fn subscribe_collect(c: &mut Client, filters: Vec<Filter>) -> Vec<(String, Vec<u8>, bool)> {
    c.subscribe_filters(filters, None).await;
    let got = c.msgs_within(QUIET).await;
    for m in got.iter().filter(|m| m.qos == 1) {
        c.puback(m.pkid).await;
    }
    got.into_iter()
        .map(|m| (m.topic, m.payload, m.retain))
        .collect()
}

fn with_rule(path: &str, rule: RetainForwardRule) -> Vec<Filter> {
    let mut f = filter(path, 1);
    f.retain_forward_rule = rule;
    vec![f]
}

/// [MQTT-3.3.1-6] [MQTT-3.8.4-3]: retained messages go out on every matching
/// SUBSCRIBE, also one that replaces an existing subscription, with RETAIN=1.
async fn on_every_subscribe(via: Via, ver: Ver) {
    let t = Target::start().await;
    let prefix = unique("r/");
    let topic = format!("{prefix}/a");
    retain(&t, via, ver, &topic, b"one", true).await;
    let mut c = t.connect(via, ver, &unique("sub")).await;
    for _ in 0..2 {
        let got = subscribe_collect(&mut c, vec![filter(&format!("{prefix}/+"), 1)]).await;
        assert_eq!(got, [(topic.clone(), b"one".to_vec(), true)]);
    }
    retain(&t, via, ver, &topic, b"", true).await;
}
matrix!(retained_on_every_subscribe_mqtt_3_8_4_3, on_every_subscribe);

/// [MQTT-3.3.1-10] [MQTT-3.3.1-12] (5: [MQTT-3.3.1-6] [MQTT-3.3.1-8]): an empty retained
/// payload deletes the retained message; an empty payload with RETAIN=0 must not
/// (rumqttd deletes it).
async fn empty_payload_deletes(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("r/b/");
    retain(&t, via, ver, &topic, b"keep", true).await;
    retain(&t, via, ver, &topic, b"", false).await;
    let mut c = t.connect(via, ver, &unique("sub1")).await;
    let got = subscribe_collect(&mut c, vec![filter(&topic, 1)]).await;
    assert_eq!(got, [(topic.clone(), b"keep".to_vec(), true)]);
    if let Some(b) = &t.broker {
        assert!(b.store.get_retained(&topic).unwrap().is_some());
    }
    retain(&t, via, ver, &topic, b"", true).await;
    let mut c = t.connect(via, ver, &unique("sub2")).await;
    assert!(subscribe_collect(&mut c, vec![filter(&topic, 1)])
        .await
        .is_empty());
    if let Some(b) = &t.broker {
        assert!(b.store.get_retained(&topic).unwrap().is_none());
    }
}
matrix!(
    empty_payload_deletes_only_when_retained_mqtt_3_3_1_12,
    empty_payload_deletes
);

/// [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11]: Retain Handling 0 sends retained
/// messages on every subscribe, 1 only when the subscription is new, 2 never.
async fn retain_handling(via: Via, ver: Ver) {
    let t = Target::start().await;
    let prefix = unique("rh");
    let topic = format!("{prefix}/rh/x");
    retain(&t, via, ver, &topic, b"v", true).await;
    let mut c = t.connect(via, ver, &unique("rh")).await;
    let every = RetainForwardRule::OnEverySubscribe;
    let new = RetainForwardRule::OnNewSubscribe;
    let sub = |path: &str, rule| with_rule(&format!("{prefix}/{path}"), rule);
    let got = subscribe_collect(&mut c, sub("rh/x", every.clone())).await;
    assert_eq!(got.len(), 1, "0, new subscription");
    let got = subscribe_collect(&mut c, sub("rh/x", every.clone())).await;
    assert_eq!(got.len(), 1, "0, existing subscription");
    let got = subscribe_collect(&mut c, sub("rh/#", new.clone())).await;
    assert_eq!(got.len(), 1, "1, new subscription");
    let got = subscribe_collect(&mut c, sub("rh/#", new)).await;
    assert!(got.is_empty(), "1, existing subscription");
    let got = subscribe_collect(&mut c, sub("rh/+", RetainForwardRule::Never)).await;
    assert!(got.is_empty(), "2");
    let got = subscribe_collect(&mut c, sub("+/x", every)).await;
    assert_eq!(got, [(topic.clone(), b"v".to_vec(), true)]);
    retain(&t, via, ver, &topic, b"", true).await;
}
matrix!(v5_retain_handling_mqtt_3_3_1_9, retain_handling, v5);

/// None dropped for lack of inflight slots: rumqttd truncates retained messages to its
/// free inflight window (100); every one of 250 QoS 1 messages arrives.
async fn many_retained(via: Via, ver: Ver) {
    let t = Target::start().await;
    let prefix = unique("bulk/");
    let topics: Vec<String> = (0..250).map(|i| format!("{prefix}/{i:03}")).collect();
    let mut p = t.connect(via, ver, &unique("bulk")).await;
    // Ten at a time: under any Receive Maximum a broker announces.
    for chunk in topics.chunks(10) {
        let mut pkids = Vec::new();
        for topic in chunk {
            pkids.push(p.publish(topic, &[1], 1, true).await);
        }
        for pkid in pkids {
            p.expect(|p| matches!(p, In::PubAck { pkid: id, .. } if *id == pkid))
                .await;
        }
    }
    let mut c = t.connect(via, ver, &unique("s")).await;
    c.subscribe(&format!("{prefix}/#"), 1).await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < topics.len() {
        let Some(m) = c.next_msg_within(WAIT).await else {
            break;
        };
        if m.qos == 1 {
            c.puback(m.pkid).await;
        }
        got.insert(m.topic);
    }
    assert_eq!(got.len(), topics.len(), "retained messages delivered");
    c.disconnect(0).await;
    for topic in &topics {
        p.publish(topic, b"", 0, true).await;
    }
    p.publish_acked(&prefix, b"done").await;
}
matrix!(many_retained_all_delivered, many_retained);

/// Retained messages are written through and come back after a restart [MQTT-3.3.1-5]
/// (fleetmq only: the suite cannot restart another broker).
async fn survive_restart(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("restarts the broker") {
        return;
    }
    retain(&t, Via::Tcp, Ver::V4, "keep/me", b"durable", true).await;
    let t = t.restart().await;
    let mut c = t.connect(via, ver, "after").await;
    let got = subscribe_collect(&mut c, vec![filter("keep/#", 1)]).await;
    assert_eq!(got, [("keep/me".to_owned(), b"durable".to_vec(), true)]);
}
matrix!(retained_survive_restart, survive_restart, [ws_v5: Ws V5]);

/// Retained delivery honours the read ACL (SPEC §3): anonymous clients never see the
/// device tree, even through `#` (fleetmq only: needs its ACL and its handle).
async fn checks_read_acl(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("needs fleetmq's anonymous ACL and its handle to publish device/...") {
        return;
    }
    let b = t.broker.as_ref().expect("fleetmq");
    b.handle
        .publish(fleetmq_broker::PublishRequest {
            topic: "device/d1/config".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            qos: 1,
            retain: true,
        })
        .await
        .unwrap();
    retain(&t, via, ver, "open/x", b"ok", true).await;
    let mut c = t.connect(via, ver, "anon").await;
    let got = subscribe_collect(&mut c, vec![filter("#", 1)]).await;
    let topics: Vec<_> = got.into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(topics, ["open/x"]);
}
matrix!(retained_delivery_checks_read_acl, checks_read_acl, [tcp_v4: Tcp V4]);

/// MQTT 5 [MQTT-3.3.1-12] [MQTT-3.3.1-13]: live messages keep their RETAIN flag only for
/// subscriptions with Retain As Published.
async fn retain_as_published(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("rap/");
    let mut keep = t.connect(via, ver, &unique("rap1")).await;
    let mut f = filter(&topic, 1);
    f.preserve_retain = true;
    keep.subscribe_filters(vec![f], None).await;
    let mut plain = t.connect(via, ver, &unique("rap0")).await;
    plain.subscribe(&topic, 1).await;
    retain(&t, via, ver, &topic, b"r", true).await;
    retain(&t, via, ver, &topic, b"n", false).await;
    for (c, expect) in [(&mut keep, [true, false]), (&mut plain, [false, false])] {
        let got = c.next_msg().await;
        c.puback(got.pkid).await;
        let next = c.next_msg().await;
        c.puback(next.pkid).await;
        assert_eq!([got.retain, next.retain], expect);
    }
    retain(&t, via, ver, &topic, b"", true).await;
}
matrix!(
    retain_as_published_for_live_messages_mqtt_3_3_1_12,
    retain_as_published,
    v5
);

/// 3.1.1 [MQTT-3.3.1-9]: a message sent because it matches an established subscription
/// has RETAIN=0, however it was published.
async fn live_retain_0(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("live/");
    let mut c = t.connect(via, ver, &unique("live")).await;
    c.subscribe(&topic, 1).await;
    retain(&t, via, ver, &topic, b"r", true).await;
    retain(&t, via, ver, &topic, b"n", false).await;
    let mut flags = Vec::new();
    for _ in 0..2 {
        let m = c.next_msg().await;
        c.puback(m.pkid).await;
        flags.push(m.retain);
    }
    assert_eq!(flags, [false, false]);
    retain(&t, via, ver, &topic, b"", true).await;
}
matrix!(
    live_messages_have_retain_0_mqtt_3_3_1_9,
    live_retain_0,
    [tcp_v4: Tcp V4, ws_v4: Ws V4]
);

/// Every v5 PUBLISH property a retained message keeps, user properties with a repeat.
fn rich_props() -> Option<PublishProperties> {
    publish_props(|p| {
        p.payload_format_indicator = Some(1);
        p.content_type = Some("application/json".into());
        p.response_topic = Some("reply/here".into());
        p.correlation_data = Some(bytes::Bytes::from_static(b"\x00corr"));
        p.user_properties = vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ];
    })
}

/// A retained message published with [`rich_props`] on `topic`, acknowledged.
async fn retain_rich(t: &Target, via: Via, topic: &str) {
    let mut p = t.connect(via, Ver::V5, &unique("rich")).await;
    let pkid = p.publish_with(topic, b"{}", 1, true, rich_props()).await;
    p.expect(|x| matches!(x, In::PubAck { pkid: id, .. } if *id == pkid))
        .await;
    p.disconnect(0).await;
}

/// Subscribes to `topic` (v5: with Subscription Identifier 7) and checks the retained
/// message it gets: a v5 subscriber sees its publisher's properties, a 3.1.1 one none.
async fn check_rich_retained(c: &mut Client, ver: Ver, topic: &str) {
    let id = SubscribeProperties {
        id: Some(7),
        user_properties: Vec::new(),
    };
    c.subscribe_filters(vec![filter(topic, 1)], (ver == Ver::V5).then_some(id))
        .await;
    let m = c.next_msg().await;
    assert_eq!((m.payload.as_slice(), m.retain), (&b"{}"[..], true));
    c.puback(m.pkid).await;
    if ver == Ver::V4 {
        assert_eq!(m.props, None);
        return;
    }
    let got = m.props.expect("properties");
    let want = rich_props().expect("set");
    assert_eq!(got.payload_format_indicator, Some(1), "[MQTT-3.3.2-4]");
    assert_eq!(got.response_topic, want.response_topic, "[MQTT-3.3.2-15]");
    assert_eq!(
        got.correlation_data, want.correlation_data,
        "[MQTT-3.3.2-16]"
    );
    assert_eq!(
        got.user_properties, want.user_properties,
        "[MQTT-3.3.2-17] [MQTT-3.3.2-18] all, in order"
    );
    assert_eq!(got.content_type, want.content_type, "[MQTT-3.3.2-20]");
    assert_eq!(got.subscription_identifiers, [7], "[MQTT-3.3.4-3]");
}

/// v5 [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
/// [MQTT-3.3.2-20]: a retained message sent at SUBSCRIBE carries its publisher's
/// Payload Format Indicator, Response Topic, Correlation Data, User Properties (all, in
/// order) and Content Type, as a live message does, plus the identifier of the
/// subscription [MQTT-3.3.4-3]; a 3.1.1 subscriber gets the bare message.
async fn retained_properties(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("rp/");
    retain_rich(&t, via, &topic).await;
    let mut c = t.connect(via, ver, &unique("sub")).await;
    check_rich_retained(&mut c, ver, &topic).await;
    c.pingreq().await;
    c.expect(|p| matches!(p, In::PingResp)).await;
    retain(&t, via, Ver::V5, &topic, b"", true).await;
}
matrix!(
    retained_carries_publisher_properties_mqtt_3_3_2_17,
    retained_properties
);

/// ... and they are stored with it: they come back after a restart (fleetmq only).
async fn retained_properties_restart(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("restarts the broker") {
        return;
    }
    retain_rich(&t, via, "rich/kept").await;
    let t = t.restart().await;
    let mut c = t.connect(via, ver, &unique("after")).await;
    check_rich_retained(&mut c, ver, "rich/kept").await;
}
matrix!(
    retained_properties_survive_restart,
    retained_properties_restart,
    [tcp_v5: Tcp V5, ws_v4: Ws V4]
);
