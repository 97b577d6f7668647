//! Last will conformance (MQTT 3.1.1 §3.1.2.5 / MQTT 5 §3.1.2.5, §3.1.3.2), over TCP and
//! WebSocket, 3.1.1 and 5. Also runs against an external broker (`CONFORMANCE_TARGET`).

use crate::common;

use std::time::Duration;

use common::conf::*;

/// A subscriber for `topic` over the same transport and version as the case (so that a
/// 3.1.1 case runs on a listener that speaks 3.1.1 only, like bare rumqttd's WebSocket;
/// the v5 cases' watcher sees properties).
async fn watcher(t: &Target, via: Via, ver: Ver, topic: &str, q: u8) -> Client {
    let mut w = t.connect(via, ver, &unique("watch")).await;
    assert_eq!(w.subscribe(topic, q).await, vec![q]);
    w
}

/// [MQTT-3.1.2-8] The will is published when the network connection closes without
/// DISCONNECT.
async fn published_on_unclean_close(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/unclean/");
    let mut w = watcher(&t, via, ver, &topic, 0).await;
    let mut c = t.open(via, ver).await;
    let ack = c
        .connect(Conn::new(&unique("w")).will(&topic, b"gone", 0))
        .await;
    assert_eq!(ack.code, 0);
    c.drop_connection().await;
    let m = w.next_msg().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        (topic.as_str(), &b"gone"[..])
    );
}
matrix!(
    will_published_on_unclean_close_mqtt_3_1_2_8,
    published_on_unclean_close
);

/// [MQTT-3.1.2-10] A will is deleted, not published, when the client sends DISCONNECT
/// (v5: reason 0x00) [MQTT-3.14.4-3].
async fn not_published_after_disconnect(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/clean/");
    let mut w = watcher(&t, via, ver, &topic, 0).await;
    let mut c = t.open(via, ver).await;
    c.connect(Conn::new(&unique("w")).will(&topic, b"gone", 0))
        .await;
    c.disconnect(0).await;
    assert!(w.msgs_within(QUIET).await.is_empty());
}
matrix!(
    will_not_published_after_disconnect_mqtt_3_1_2_10,
    not_published_after_disconnect
);

/// MQTT 5 §3.14.2.1: DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes it.
async fn published_after_disconnect_with_will(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/0x04/");
    let mut w = watcher(&t, via, ver, &topic, 0).await;
    let mut c = t.open(via, ver).await;
    c.connect(Conn::new(&unique("w")).will(&topic, b"bye", 0))
        .await;
    c.disconnect(0x04).await;
    assert_eq!(w.next_msg().await.payload, b"bye");
}
matrix!(
    will_published_after_disconnect_0x04_mqtt_3_14_2_1,
    published_after_disconnect_with_will,
    v5
);

/// [MQTT-3.1.2-22] / [MQTT-3.1.2-8]: a client silent for 1.5 x keepalive is disconnected
/// and its will published. The will may come late (up to 10 s): when the connection is
/// closed is `conformance_keepalive`'s business, this case is about the will.
async fn published_on_keepalive_timeout(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/keepalive/");
    let mut w = watcher(&t, via, ver, &topic, 0).await;
    let mut c = t.open(via, ver).await;
    let ack = c
        .connect(
            Conn::new(&unique("w"))
                .keep_alive(1)
                .will(&topic, b"silent", 0),
        )
        .await;
    assert_eq!(ack.code, 0);
    let m = w.next_msg_within(Duration::from_secs(10)).await;
    assert_eq!(m.expect("the will within 10 s").payload, b"silent");
    c.closed().await;
}
matrix!(
    will_published_on_keepalive_timeout_mqtt_3_1_2_22,
    published_on_keepalive_timeout
);

/// [MQTT-3.1.2-14]/[MQTT-3.1.2-15]: the will is published with its QoS (capped by the
/// subscription) and its retain flag.
async fn will_qos_and_retain(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/qos/");
    let mut w = watcher(&t, via, ver, &topic, 1).await;
    let mut c = t.open(via, ver).await;
    let mut conn = Conn::new(&unique("w")).will(&topic, b"q1", 1);
    conn.will.as_mut().expect("will").retain = true;
    c.connect(conn).await;
    c.drop_connection().await;
    let m = w.next_msg().await;
    assert_eq!((m.qos, &m.payload[..]), (1, &b"q1"[..]));
    w.puback(m.pkid).await;
    // Retained: a new subscriber gets it with the retain flag.
    let mut late = t.connect(via, ver, &unique("late")).await;
    late.subscribe(&topic, 1).await;
    let r = late.next_msg().await;
    assert!(r.retain, "retained will: {r:?}");
    assert_eq!(r.payload, b"q1");
    // Clean up the retained message.
    late.publish(&topic, b"", 0, true).await;
}
matrix!(will_qos_and_retain_mqtt_3_1_2_14, will_qos_and_retain);

/// A later connection of the same client id without a will has no will: the old one
/// does not come back when that connection drops (rumqttd keeps it).
async fn reconnect_without_will_clears_it(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/replaced/");
    let id = unique("w");
    let mut w = watcher(&t, via, ver, &topic, 0).await;
    let mut c = t.open(via, ver).await;
    let mut conn = Conn::new(&id).will(&topic, b"old", 0);
    conn.clean = false;
    c.connect(conn).await;
    c.disconnect(0).await;
    let mut c = t.open(via, ver).await;
    let mut conn = Conn::new(&id);
    conn.clean = false;
    c.connect(conn).await;
    c.drop_connection().await;
    assert!(w.msgs_within(QUIET).await.is_empty());
    // Leave no session behind.
    let mut c = t.open(via, ver).await;
    c.connect(Conn::new(&id)).await;
    c.disconnect(0).await;
}
matrix!(
    reconnect_without_will_clears_the_old_will_mqtt_3_1_2_10,
    reconnect_without_will_clears_it
);

/// [MQTT-3.1.3-9]: with a Will Delay Interval the will waits; a reconnect of the same
/// client id inside the delay cancels it.
async fn will_delay_and_cancel(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/delay/");
    let id = unique("w");
    let mut w = watcher(&t, via, ver, &topic, 0).await;
    let delayed = |id: &str| {
        Conn::new(id)
            .will(&topic, b"late", 0)
            .will_props(LastWillProperties {
                delay_interval: Some(1),
                ..will_props()
            })
            .props(connect_props(|p| p.session_expiry_interval = Some(10)))
    };
    // Delayed, then published.
    let mut c = t.open(via, ver).await;
    c.connect(delayed(&id)).await;
    let dropped = tokio::time::Instant::now();
    c.drop_connection().await;
    let m = w.next_msg().await;
    assert_eq!(m.payload, b"late");
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "published after {:?}",
        dropped.elapsed()
    );
    // Cancelled by a reconnect within the delay.
    let mut c = t.open(via, ver).await;
    c.connect(delayed(&id)).await;
    c.drop_connection().await;
    let mut again = t.open(via, ver).await;
    let mut conn = Conn::new(&id);
    conn.clean = false;
    again.connect(conn).await;
    assert!(w.msgs_within(Duration::from_millis(1500)).await.is_empty());
    again.disconnect(0).await;
}
matrix!(
    will_delay_interval_and_cancel_mqtt_3_1_3_9,
    will_delay_and_cancel,
    v5
);

/// [MQTT-3.1.3-10]: the will's properties (payload format, content type, response topic,
/// correlation data, user properties) reach the subscriber unchanged.
async fn will_properties_forwarded(via: Via, ver: Ver) {
    let t = Target::start().await;
    let topic = unique("will/props/");
    let mut w = watcher(&t, via, ver, &topic, 0).await;
    let mut c = t.open(via, ver).await;
    let props = LastWillProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        ..will_props()
    };
    c.connect(
        Conn::new(&unique("w"))
            .will(&topic, b"p", 0)
            .will_props(props),
    )
    .await;
    c.drop_connection().await;
    let m = w.next_msg().await;
    let p = m.props.expect("properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(
        p.user_properties,
        vec![
            ("k".to_owned(), "v".to_owned()),
            ("k".to_owned(), "w".to_owned())
        ]
    );
}
matrix!(
    will_properties_forwarded_mqtt_3_1_3_10,
    will_properties_forwarded,
    v5
);

/// SPEC §3: the will topic passes the publish ACL at CONNECT; a denied will refuses the
/// connection with "not authorized" (fleetmq only: anonymous rules deny `device/#`).
async fn will_acl_checked(via: Via, ver: Ver) {
    let t = Target::start().await;
    if t.skip_external("needs fleetmq's anonymous ACL rules") {
        return;
    }
    let mut c = t.open(via, ver).await;
    let ack = c
        .connect(Conn::new(&unique("w")).will("device/x/status", b"x", 0))
        .await;
    let want = if ver == Ver::V5 { 0x87 } else { 5 };
    assert_eq!(ack.code, want);
}
matrix!(will_topic_acl_checked_at_connect, will_acl_checked);
