//! Keep alive conformance (MQTT 3.1.1 §3.1.2.10, §3.12 / MQTT 5 §3.1.2.10, §3.12), over
//! TCP and WebSocket, 3.1.1 and 5. Also runs against an external broker.

use crate::common;

use std::time::Duration;

use common::conf::*;

/// [MQTT-3.1.2-10]-ish / MQTT 5 §3.1.2.10: Keep Alive 0 turns the mechanism off; the
/// connection is accepted (rumqttd refuses it) and is not timed out.
async fn keepalive_zero(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new(&unique("ka0")).keep_alive(0)).await;
    assert_eq!(ack.code, 0);
    if let (Some(props), false) = (ack.props.as_ref(), t.external()) {
        // A Server Keep Alive, if any, is what the client must use; fleetmq sends none,
        // so 0 stays off (Mosquitto answers 65535).
        assert!(props.server_keep_alive.is_none_or(|k| k == 0), "{props:?}");
    }
    assert!(c.recv_within(Duration::from_millis(1600)).await.is_none());
    c.pingreq().await;
    assert!(matches!(c.recv().await, Some(In::PingResp)));
}
matrix!(
    keepalive_zero_is_accepted_and_never_times_out_mqtt_3_1_2_10,
    keepalive_zero
);

/// [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5): nothing received for 1.5 x Keep Alive
/// closes the connection (v5: DISCONNECT 0x8D first).
async fn keepalive_timeout(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.open(via, ver).await;
    c.connect(Conn::new(&unique("ka1")).keep_alive(1)).await;
    let start = tokio::time::Instant::now();
    // Waits past the limit, so that a late close is reported with its time.
    let closed = c.closed_within(Duration::from_secs(10)).await;
    let took = start.elapsed();
    // 1.5 s plus 1.5 s of scheduling slack, for every target (Mosquitto 2.0.11 closes
    // after 5-6 s: its keepalive check is coarse).
    assert!(
        closed.is_some()
            && took >= Duration::from_millis(1000)
            && took <= Duration::from_millis(3000),
        "closed after {took:?}: {closed:?}"
    );
    let reason = closed.flatten();
    if ver == Ver::V5 && !t.external() {
        assert_eq!(reason, Some(0x8d));
    }
}
matrix!(
    keepalive_timeout_closes_after_one_and_a_half_mqtt_3_1_2_24,
    keepalive_timeout
);

/// [MQTT-3.12.4-1]: PINGREQ gets PINGRESP, and pings keep a connection with Keep Alive
/// alive past 1.5 x the interval.
async fn pings_keep_alive(via: Via, ver: Ver) {
    let t = Target::start().await;
    let mut c = t.open(via, ver).await;
    c.connect(Conn::new(&unique("ping")).keep_alive(1)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.pingreq().await;
        assert!(matches!(c.recv().await, Some(In::PingResp)));
    }
}
matrix!(
    pingreq_gets_pingresp_and_keeps_alive_mqtt_3_12_4_1,
    pings_keep_alive
);
