//! Inbound topic aliases (MQTT 5 §3.3.2.3.4), over TCP and WebSocket. Also runs against
//! an external broker.

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
