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

/// Waits for the server to close `c` and checks it did so 1.5 s after the last packet,
/// as for a Keep Alive of 1 s (v5: DISCONNECT 0x8D first).
async fn held_to_one_second(c: &mut Client, ver: Ver, what: &str) {
    let start = tokio::time::Instant::now();
    let closed = c.closed_within(Duration::from_secs(10)).await;
    let took = start.elapsed();
    assert!(
        closed.is_some()
            && took >= Duration::from_millis(1000)
            && took <= Duration::from_millis(3000),
        "{what}: closed after {took:?}: {closed:?}"
    );
    if ver == Ver::V5 {
        assert_eq!(closed.flatten(), Some(0x8d), "{what}");
    }
}

/// `mqtt.max_keepalive_s` (fleetmq; Mosquitto's `max_keepalive`). MQTT 5: a client asking
/// for more than the cap, or for none (0), gets Server Keep Alive = cap in CONNACK and
/// is held to it [MQTT-3.2.2-21]; one within the cap gets no Server Keep Alive and keeps
/// its own [MQTT-3.2.2-22]. 3.1.1 has no way to tell the client, so one asking for more
/// or for none is refused with CONNACK 2 (as Mosquitto does); within the cap it is
/// accepted and held to its own value.
async fn max_keepalive(via: Via, ver: Ver) {
    let t = Target::with(|c| c.max_keepalive = 1).await;
    if t.skip_external("needs mqtt.max_keepalive_s") {
        return;
    }
    for asked in [0u16, 60] {
        let mut c = t.open(via, ver).await;
        let ack = c
            .connect(Conn::new(&unique("kacap")).keep_alive(asked))
            .await;
        match ver {
            Ver::V5 => {
                assert_eq!(ack.code, 0, "keep alive {asked}");
                let server = ack.props.and_then(|p| p.server_keep_alive);
                assert_eq!(server, Some(1), "keep alive {asked}");
                held_to_one_second(&mut c, ver, &format!("keep alive {asked}")).await;
            }
            Ver::V4 => {
                assert_eq!(ack.code, 2, "keep alive {asked}: identifier rejected");
                assert_eq!(c.closed().await, None);
            }
        }
    }
    let t = Target::with(|c| c.max_keepalive = 2).await;
    let mut c = t.open(via, ver).await;
    let ack = c.connect(Conn::new(&unique("kacap")).keep_alive(1)).await;
    assert_eq!(ack.code, 0);
    assert!(
        ack.props.and_then(|p| p.server_keep_alive).is_none(),
        "within the cap: no Server Keep Alive"
    );
    held_to_one_second(&mut c, ver, "keep alive 1 within a cap of 2").await;
}
matrix!(
    max_keepalive_caps_the_client_keep_alive_mqtt_3_2_2_21,
    max_keepalive
);
