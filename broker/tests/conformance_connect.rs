//! CONNECT / CONNACK conformance (MQTT 3.1.1 §3.1, §3.2 / MQTT 5 §3.1, §3.2), over TCP
//! and WebSocket, 3.1.1 and 5. Also runs against an external broker.

use crate::common;

use common::conf::*;

/// [MQTT-3.2.0-1]: the first packet from the server is CONNACK, code 0.
async fn connack_success(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new(&unique("c"))).await;
    assert_eq!(ack.code, 0);
    assert!(!ack.session_present, "[MQTT-3.2.2-1] clean session");
    if ver == Ver::V4 {
        assert!(ack.props.is_none());
    }
}
matrix!(connack_is_the_first_packet_mqtt_3_2_0_1, connack_success);

/// [MQTT-3.1.0-2]: a second CONNECT is a protocol violation; the connection closes
/// (v5: DISCONNECT 0x82 first, [MQTT-4.13.2-1]).
async fn second_connect_closes(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.connect(via, ver, &unique("c")).await;
    c.send_connect(Conn::new(&unique("again"))).await;
    let reason = c.closed().await;
    if ver == Ver::V5 && !t.external() {
        assert_eq!(reason, Some(0x82));
    }
}
matrix!(second_connect_closes_mqtt_3_1_0_2, second_connect_closes);

/// [MQTT-3.1.0-1]: a first packet that is not CONNECT closes the connection.
async fn first_packet_must_be_connect(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.open(via, ver).await;
    c.pingreq().await;
    c.closed().await;
}
matrix!(
    first_packet_must_be_connect_mqtt_3_1_0_1,
    first_packet_must_be_connect
);

/// [MQTT-3.1.2-2]: an unsupported protocol level gets CONNACK 0x01 (3.1.1 code) and the
/// connection closes.
async fn unsupported_protocol_level(via: Via, _ver: Ver) {
    let t = Target::start().await;
    let mut c = t.open(via, Ver::V4).await;
    // CONNECT, protocol "MQTT" level 6, clean session, keepalive 60, client id "x".
    c.send_raw(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 1, b'x',
    ])
    .await;
    match c.recv().await {
        Some(In::ConnAck(a)) => assert_eq!(a.code, 0x01),
        None => {} // closing without CONNACK is allowed for levels the server never knew
        other => panic!("unexpected {other:?}"),
    }
    c.closed().await;
}
matrix!(unsupported_protocol_level_refused_mqtt_3_1_2_2, unsupported_protocol_level, [tcp_v4: Tcp V4, ws_v4: Ws V4]);

/// [MQTT-3.1.3-6], [MQTT-3.1.3-7] / MQTT 5 §3.2.2.3.7: an empty client id with a clean
/// session is accepted (v5: the assigned id is in CONNACK); 3.1.1 refuses it without a
/// clean session with 0x02 [MQTT-3.1.3-8].
async fn empty_client_id(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new("")).await;
    assert_eq!(ack.code, 0);
    if ver == Ver::V5 {
        let assigned = ack.props.and_then(|p| p.assigned_client_identifier);
        assert!(assigned.is_some_and(|id| !id.is_empty()));
    } else {
        let mut c = t.open(via, ver).await;
        let mut conn = Conn::new("");
        conn.clean = false;
        assert_eq!(c.connect(conn).await.code, 0x02);
    }
}
matrix!(empty_client_id_gets_assigned_mqtt_3_1_3_6, empty_client_id);

/// [MQTT-3.1.4-2]: a second connection with the same client id takes over; the first is
/// closed (v5: DISCONNECT 0x8E Session taken over).
async fn takeover(via: Via, ver: Ver) {
    let t = Target::start().await;
    let id = unique("dup");
    let mut first = t.connect(via, ver, &id).await;
    let mut second = t.connect(via, ver, &id).await;
    let reason = first.closed().await;
    // "sends a DISCONNECT ... 0x8E" is not a MUST of its own: external brokers may just close.
    if ver == Ver::V5 && !t.external() {
        assert_eq!(reason, Some(0x8e));
    }
    second.pingreq().await;
    assert!(matches!(second.recv().await, Some(In::PingResp)));
}
matrix!(same_client_id_takes_over_mqtt_3_1_4_2, takeover);

/// MQTT 5 §3.2.2.3: CONNACK announces the server's limits (Receive Maximum, Maximum
/// Packet Size, Topic Alias Maximum) from the configuration (fleetmq only).
async fn connack_limits(via: Via, ver: Ver) {
    let t = Target::with(|c| {
        c.max_inflight = 7;
        c.topic_alias_max = 9;
        c.max_payload = 1000;
    })
    .await;
    if t.skip_external("needs limits set in BrokerConfig") {
        return;
    }
    let mut c = t.open(via, ver).await;
    let props = c
        .connect(Conn::new(&unique("c")))
        .await
        .props
        .expect("v5 CONNACK properties");
    assert_eq!(props.receive_max, Some(7));
    assert_eq!(props.topic_alias_max, Some(9));
    assert!(props.max_packet_size.is_some_and(|m| m >= 1000));
}
matrix!(connack_announces_configured_limits, connack_limits, v5);

/// `mqtt.max_connections`: one more client is refused with CONNACK 0x03 Server
/// unavailable (3.1.1) / 0x97 Quota exceeded (5), and counted (fleetmq only).
async fn max_connections(via: Via, ver: Ver) {
    let t = Target::with(|c| c.max_connections = 1).await;
    if t.skip_external("needs mqtt.max_connections = 1 and fleetmq's counters") {
        return;
    }
    let _first = t.connect(via, ver, &unique("first")).await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new(&unique("second"))).await;
    assert_eq!(ack.code, if ver == Ver::V5 { 0x97 } else { 0x03 });
    if ver == Ver::V5 {
        assert!(ack.props.and_then(|p| p.reason_string).is_some());
    }
    c.closed().await;
    let stats = t.broker.as_ref().expect("fleetmq").handle.stats();
    assert!(stats.drops.limit >= 1);
    assert!(stats.connections.refused_total >= 1);
}
matrix!(max_connections_refused_with_quota_exceeded, max_connections);
