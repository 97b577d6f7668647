//! SPEC §4 payload encryption end to end: devices send and receive envelopes, everyone
//! else sees plaintext. The envelope is built here independently of the broker's code.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_storage::DeviceRecord;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::QoS;

const QUIET: Duration = Duration::from_millis(300);

/// The AAD of an envelope: the topic, behind version and generation for 0x02.
fn aad(version: u8, generation: u8, topic: &str) -> Vec<u8> {
    let mut aad = if version == 2 {
        vec![2, generation]
    } else {
        Vec::new()
    };
    aad.extend_from_slice(topic.as_bytes());
    aad
}

fn seal_version(
    version: u8,
    key: &[u8; 32],
    generation: u8,
    nonce: [u8; 12],
    topic: &str,
    plain: &[u8],
) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut data = plain.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad(version, generation, topic)),
        &mut data,
    )
    .unwrap();
    let mut env = vec![version, generation];
    env.extend_from_slice(&nonce);
    env.extend(data);
    env
}

pub(crate) fn seal(
    key: &[u8; 32],
    generation: u8,
    nonce: [u8; 12],
    topic: &str,
    plain: &[u8],
) -> Vec<u8> {
    seal_version(1, key, generation, nonce, topic, plain)
}

/// A 0x02 envelope: nonce = epoch (u32) | counter (u64), big-endian.
fn seal_v2(
    key: &[u8; 32],
    generation: u8,
    epoch: u32,
    counter: u64,
    topic: &str,
    plain: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&epoch.to_be_bytes());
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    seal_version(2, key, generation, nonce, topic, plain)
}

fn open(key: &[u8; 32], topic: &str, env: &[u8]) -> Option<Vec<u8>> {
    if env.len() < 14 + 16 || !matches!(env[0], 1 | 2) {
        return None;
    }
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let nonce = Nonce::try_assume_unique_for_key(&env[2..14]).ok()?;
    let mut data = env[14..].to_vec();
    let plain = k
        .open_in_place(nonce, Aad::from(aad(env[0], env[1], topic)), &mut data)
        .ok()?;
    Some(plain.to_vec())
}

fn current(rec: &DeviceRecord) -> (u8, [u8; 32]) {
    let k = rec.keys.last().expect("a key");
    (k.generation, k.key)
}

async fn setup(
    grace: Duration,
) -> (
    TestBroker,
    DeviceRecord,
    rumqttc::AsyncClient,
    rumqttc::EventLoop,
) {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.key_grace = grace;
    setup_with(config).await
}

async fn setup_with(
    config: fleetmq_broker::BrokerConfig,
) -> (
    TestBroker,
    DeviceRecord,
    rumqttc::AsyncClient,
    rumqttc::EventLoop,
) {
    let b = TestBroker::with_config(config).await;
    let rec = b.add_device("sealed-1", "token", true).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    let (svc, mut el) = connect_v4(&b, Via::Tcp, "backend-1", Some(("backend", "backend-pass")))
        .await
        .unwrap();
    subscribe_v4(&svc, &mut el, "device/+/telemetry", QoS::AtLeastOnce).await;
    (b, rec, svc, el)
}

#[tokio::test]
async fn device_envelopes_are_decrypted_before_routing_and_bad_ones_dropped() {
    let (b, rec, _svc, mut svc_el) = setup(Duration::from_secs(3600)).await;
    let (generation, key) = current(&rec);
    let (dev, dev_el) = connect_v4(&b, Via::Ws, "sealed-1", Some(("sealed-1", "token")))
        .await
        .unwrap();
    let _d = drive_v4(dev_el);
    let topic = "device/sealed-1/telemetry";
    dev.publish(
        topic,
        QoS::AtLeastOnce,
        false,
        seal(&key, generation, [1; 12], topic, b"{\"cpu\":1}"),
    )
    .await
    .unwrap();
    // Wrong AAD (sealed for another topic), garbage, a flipped bit, unknown generation.
    dev.publish(
        topic,
        QoS::AtLeastOnce,
        false,
        seal(&key, generation, [2; 12], "device/sealed-1/status", b"x"),
    )
    .await
    .unwrap();
    dev.publish(
        topic,
        QoS::AtLeastOnce,
        false,
        b"plain text is not an envelope".to_vec(),
    )
    .await
    .unwrap();
    let mut flipped = seal(&key, generation, [3; 12], topic, b"{}");
    flipped[20] ^= 1;
    dev.publish(topic, QoS::AtLeastOnce, false, flipped)
        .await
        .unwrap();
    dev.publish(
        topic,
        QoS::AtLeastOnce,
        false,
        seal(&key, generation + 1, [4; 12], topic, b"{}"),
    )
    .await
    .unwrap();
    dev.publish(
        topic,
        QoS::AtLeastOnce,
        false,
        seal(&key, generation, [5; 12], topic, b"{\"cpu\":2}"),
    )
    .await
    .unwrap();
    let got = publishes_v4(&mut svc_el, QUIET).await;
    let payloads: Vec<_> = got.into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        payloads,
        [b"{\"cpu\":1}".to_vec(), b"{\"cpu\":2}".to_vec()],
        "plaintext downstream, the connection stayed up"
    );
    assert_eq!(b.handle.stats().drops.decrypt_failed, 4);
}

#[tokio::test]
async fn messages_to_a_device_are_sealed_with_its_current_key() {
    let (b, rec, svc, svc_el) = setup(Duration::from_secs(3600)).await;
    let _s = drive_v4(svc_el);
    let (dev, mut dev_el) = connect_v5(&b, Via::Tcp, "sealed-1", Some(("sealed-1", "token")))
        .await
        .unwrap();
    dev.subscribe(
        "device/sealed-1/command",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )
    .await
    .unwrap();
    next_v5(&mut dev_el, |p| {
        matches!(p, rumqttc::v5::mqttbytes::v5::Packet::SubAck(_)).then_some(())
    })
    .await;
    let cmd = br#"{"type":"RELOAD","commandId":"c1","params":{}}"#;
    svc.publish(
        "device/sealed-1/command",
        QoS::AtLeastOnce,
        false,
        cmd.to_vec(),
    )
    .await
    .unwrap();
    let env = next_v5(&mut dev_el, |p| match p {
        rumqttc::v5::mqttbytes::v5::Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    let (generation, key) = current(&rec);
    assert_eq!(env[1], generation);
    assert_eq!(
        open(&key, "device/sealed-1/command", &env).as_deref(),
        Some(&cmd[..])
    );
    // A second message uses a different nonce.
    svc.publish(
        "device/sealed-1/command",
        QoS::AtLeastOnce,
        false,
        cmd.to_vec(),
    )
    .await
    .unwrap();
    let env2 = next_v5(&mut dev_el, |p| match p {
        rumqttc::v5::mqttbytes::v5::Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await;
    assert_ne!(env[2..14], env2[2..14]);
}

async fn rotate(b: &TestBroker, rec: &DeviceRecord) -> DeviceRecord {
    let id = rec.id.clone();
    let rotated = b
        .store
        .call(move |s| s.rotate_device_key(&id, fleetmq_storage::now_ms()))
        .await
        .unwrap();
    b.handle.device_updated(&rotated);
    rotated
}

/// Rotates the key of a connected device under `grace`, then sends one message sealed
/// with the old generation and one with the new; returns what the service client got.
async fn old_then_new_after_rotation(grace: Duration) -> Vec<Vec<u8>> {
    let (b, rec, _svc, mut svc_el) = setup(grace).await;
    let (old_gen, old_key) = current(&rec);
    let (dev, dev_el) = connect_v4(&b, Via::Tcp, "sealed-1", Some(("sealed-1", "token")))
        .await
        .unwrap();
    let _d = drive_v4(dev_el);
    let rotated = rotate(&b, &rec).await;
    let (new_gen, new_key) = current(&rotated);
    assert_eq!(new_gen, old_gen + 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let topic = "device/sealed-1/telemetry";
    for (key, generation, nonce, plain) in [
        (&old_key, old_gen, [7; 12], b"old"),
        (&new_key, new_gen, [8; 12], b"new"),
    ] {
        let envelope = seal(key, generation, nonce, topic, plain);
        dev.publish(topic, QoS::AtLeastOnce, false, envelope)
            .await
            .unwrap();
    }
    publishes_v4(&mut svc_el, QUIET)
        .await
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test]
async fn the_previous_key_generation_is_accepted_only_during_the_grace_period() {
    let got = old_then_new_after_rotation(Duration::from_secs(3600)).await;
    assert_eq!(got, [b"old".to_vec(), b"new".to_vec()]);

    // With no grace period the old generation is refused at once.
    let got = old_then_new_after_rotation(Duration::ZERO).await;
    assert_eq!(got, [b"new".to_vec()]);
}

const TELEMETRY: &str = "device/sealed-1/telemetry";
const COMMAND: &str = "device/sealed-1/command";

/// Publishes `payload` on the device's telemetry topic at QoS 1 and returns the reason
/// code of its PUBACK.
async fn publish_v5(
    dev: &rumqttc::v5::AsyncClient,
    el: &mut rumqttc::v5::EventLoop,
    payload: Vec<u8>,
) -> PubAckReason {
    dev.publish(TELEMETRY, V5QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    next_v5(el, |p| match p {
        V5Packet::PubAck(ack) => Some(ack.reason),
        _ => None,
    })
    .await
}

/// A device on MQTT 5 subscribed to its command topic.
async fn commanded_device(b: &TestBroker) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    let (dev, mut el) = connect_v5(b, Via::Tcp, "sealed-1", Some(("sealed-1", "token")))
        .await
        .unwrap();
    dev.subscribe(COMMAND, V5QoS::AtLeastOnce).await.unwrap();
    next_v5(&mut el, |p| matches!(p, V5Packet::SubAck(_)).then_some(())).await;
    (dev, el)
}

/// Sends a command as the backend and returns the envelope the device got.
async fn command_envelope(svc: &rumqttc::AsyncClient, el: &mut rumqttc::v5::EventLoop) -> Vec<u8> {
    let cmd = br#"{"type":"RELOAD","commandId":"c1","params":{}}"#;
    svc.publish(COMMAND, QoS::AtLeastOnce, false, cmd.to_vec())
        .await
        .unwrap();
    next_v5(el, |p| match p {
        V5Packet::Publish(p) => Some(p.payload.to_vec()),
        _ => None,
    })
    .await
}

/// The counter of a 0x02 envelope's nonce.
fn counter(env: &[u8]) -> u64 {
    u64::from_be_bytes(env[6..14].try_into().unwrap())
}

#[tokio::test]
async fn a_replayed_envelope_is_dropped_counted_and_reported_and_the_connection_stays_up() {
    let (b, rec, _svc, mut svc_el) = setup(Duration::from_secs(3600)).await;
    let mut events = b.handle.events().subscribe();
    let (generation, key) = current(&rec);
    let (dev, mut dev_el) = connect_v5(&b, Via::Tcp, "sealed-1", Some(("sealed-1", "token")))
        .await
        .unwrap();
    let captured = seal_v2(&key, generation, 7, 0, TELEMETRY, b"{\"cpu\":1}");
    let next = seal_v2(&key, generation, 7, 1, TELEMETRY, b"{\"cpu\":2}");
    for (payload, want) in [
        (captured.clone(), PubAckReason::Success),
        (captured.clone(), PubAckReason::PayloadFormatInvalid),
        (next, PubAckReason::Success),
    ] {
        assert_eq!(publish_v5(&dev, &mut dev_el, payload).await, want);
    }
    let event = next_event(&mut events, |e| e.kind == "device.decrypt_failed").await;
    assert_eq!(event.device_id.as_deref(), Some("sealed-1"));
    let data = event.data_value();
    assert_eq!(
        (data["cause"].as_str(), data["topic"].as_str()),
        (Some("replayed"), Some(TELEMETRY))
    );
    assert!(
        data["reason"]
            .as_str()
            .unwrap()
            .contains("already accepted"),
        "{data}"
    );

    // The window is the device's, not the connection's: on a new connection (after a
    // reboot: a higher epoch) the captured envelope is still refused.
    let (dev2, dev2_el) = connect_v4(&b, Via::Ws, "sealed-1", Some(("sealed-1", "token")))
        .await
        .unwrap();
    let _d = drive_v4(dev2_el);
    let rebooted = seal_v2(&key, generation, 8, 0, TELEMETRY, b"{\"cpu\":3}");
    for payload in [captured, rebooted] {
        dev2.publish(TELEMETRY, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let got: Vec<_> = publishes_v4(&mut svc_el, QUIET)
        .await
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        got,
        [
            b"{\"cpu\":1}".to_vec(),
            b"{\"cpu\":2}".to_vec(),
            b"{\"cpu\":3}".to_vec()
        ]
    );
    let drops = b.handle.stats().drops;
    assert_eq!((drops.replayed, drops.decrypt_failed), (2, 0));
}

#[tokio::test]
async fn version_1_is_accepted_by_default_and_the_broker_answers_in_the_devices_version() {
    let (b, rec, svc, svc_el) = setup(Duration::from_secs(3600)).await;
    let _s = drive_v4(svc_el);
    let (generation, key) = current(&rec);
    let (dev, mut dev_el) = commanded_device(&b).await;
    // A device that never sent 0x02 gets 0x01 (all it may read).
    let env = command_envelope(&svc, &mut dev_el).await;
    assert_eq!(env[0], 1);
    let v1 = seal(&key, generation, [1; 12], TELEMETRY, b"{}");
    assert_eq!(
        publish_v5(&dev, &mut dev_el, v1.clone()).await,
        PubAckReason::Success
    );
    // 0x01 has no replay protection: the same envelope is taken again (the default).
    assert_eq!(
        publish_v5(&dev, &mut dev_el, v1).await,
        PubAckReason::Success
    );
    let v2 = seal_v2(&key, generation, 1, 0, TELEMETRY, b"{}");
    assert_eq!(
        publish_v5(&dev, &mut dev_el, v2).await,
        PubAckReason::Success
    );
    // Once it sends 0x02, it gets 0x02, with a broker-direction counter.
    let env = command_envelope(&svc, &mut dev_el).await;
    assert_eq!(env[0], 2);
    assert!(counter(&env) >> 63 == 1, "the broker's direction bit");
    assert!(open(&key, COMMAND, &env).is_some());
    let later = command_envelope(&svc, &mut dev_el).await;
    assert!(counter(&later) > counter(&env));
    assert_eq!(b.handle.stats().drops.decrypt_failed, 0);
}

#[tokio::test]
async fn version_1_is_refused_when_replay_protection_is_required() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.require_replay_protection = true;
    let (b, rec, svc, svc_el) = setup_with(config).await;
    let _s = drive_v4(svc_el);
    let mut events = b.handle.events().subscribe();
    let (generation, key) = current(&rec);
    let (dev, mut dev_el) = commanded_device(&b).await;
    // Everything the broker seals is 0x02 from the start.
    let env = command_envelope(&svc, &mut dev_el).await;
    assert_eq!(env[0], 2);
    assert!(open(&key, COMMAND, &env).is_some());
    let v1 = seal(&key, generation, [1; 12], TELEMETRY, b"{}");
    assert_eq!(
        publish_v5(&dev, &mut dev_el, v1).await,
        PubAckReason::PayloadFormatInvalid
    );
    let event = next_event(&mut events, |e| e.kind == "device.decrypt_failed").await;
    assert_eq!(event.data_value()["cause"], "replay_protection_required");
    // A 0x02 envelope relabelled 0x01 does not open either (the header is authenticated).
    let v2 = seal_v2(&key, generation, 1, 0, TELEMETRY, b"{}");
    let mut relabelled = v2.clone();
    relabelled[0] = 1;
    assert_eq!(
        publish_v5(&dev, &mut dev_el, relabelled).await,
        PubAckReason::PayloadFormatInvalid
    );
    assert_eq!(
        publish_v5(&dev, &mut dev_el, v2).await,
        PubAckReason::Success
    );
    let drops = b.handle.stats().drops;
    assert_eq!((drops.decrypt_failed, drops.replayed), (2, 0));
}

/// Connects the device on 3.1.1 with `will` as its sealed last will.
async fn connect_with_will(b: &TestBroker, will: Vec<u8>) -> Result<(), rumqttc::ConnectionError> {
    let mut opts = options_v4(b, Via::Tcp, "sealed-1", Some(("sealed-1", "token")));
    opts.set_last_will(rumqttc::LastWill::new(
        "device/sealed-1/status",
        will,
        QoS::AtLeastOnce,
        false,
    ));
    let (_client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), el.poll())
            .await
            .expect("CONNACK in time")?;
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) = event {
            return Ok(());
        }
    }
}

/// MQTT clients fix the will when the client is built and send the same bytes in every
/// CONNECT: a sealed 0x02 will is not held against the replay window, or the device could
/// never reconnect. The version policy still applies to it.
#[tokio::test]
async fn the_same_sealed_will_is_accepted_on_every_reconnect() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.require_replay_protection = true;
    let (b, rec, _svc, _svc_el) = setup_with(config).await;
    let (generation, key) = current(&rec);
    let topic = "device/sealed-1/status";
    let will = seal_v2(&key, generation, 1, 9, topic, br#"{"state":"offline"}"#);
    for _ in 0..2 {
        connect_with_will(&b, will.clone()).await.expect("connects");
    }
    let v1_will = seal(&key, generation, [1; 12], topic, br#"{"state":"offline"}"#);
    let refused = connect_with_will(&b, v1_will).await;
    assert!(
        matches!(
            refused,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::NotAuthorized
            ))
        ),
        "{refused:?}"
    );
    let drops = b.handle.stats().drops;
    assert_eq!((drops.decrypt_failed, drops.replayed), (1, 0));
}

/// The reason code of the next PUBACK (`rec: false`) or PUBREC for `pkid`.
async fn ack_reason(c: &mut common::conf::Client, pkid: u16, rec: bool) -> u8 {
    use common::conf::In;
    match c
        .expect(|i| match i {
            In::PubAck { pkid: p, .. } => !rec && *p == pkid,
            In::PubRec { pkid: p, .. } => rec && *p == pkid,
            _ => false,
        })
        .await
    {
        In::PubAck { reason, .. } | In::PubRec { reason, .. } => reason,
        other => panic!("{other:?}"),
    }
}

/// A device resending (DUP) a QoS 1/2 envelope the broker already took has only lost the
/// ack: it is acknowledged with success and dropped (counted as replayed) without an
/// event. The same envelope without DUP is a replay (0x99, one event).
#[tokio::test]
async fn a_resent_envelope_already_taken_is_acknowledged_without_an_event() {
    use common::conf::{Conn, Target, Ver};
    let t = Target::with(|_| {}).await;
    let b = t.broker.as_ref().expect("fleetmq");
    let rec = b.add_device("sealed-1", "token", true).await;
    let mut events = b.handle.events().subscribe();
    let (generation, key) = current(&rec);
    let mut c = t.open(common::conf::Via::Tcp, Ver::V5).await;
    let mut conn = Conn::new("sealed-1");
    conn.login = Some(("sealed-1".to_owned(), "token".to_owned()));
    assert_eq!(c.connect(conn).await.code, 0);

    let env = seal_v2(&key, generation, 1, 0, TELEMETRY, b"{}");
    c.publish_raw(TELEMETRY, &env, 1, false, false, 1, None)
        .await;
    assert_eq!(ack_reason(&mut c, 1, false).await, 0x00);
    c.publish_raw(TELEMETRY, &env, 1, false, true, 1, None)
        .await;
    assert_eq!(ack_reason(&mut c, 1, false).await, 0x00, "a resend");
    c.publish_raw(TELEMETRY, &env, 1, false, false, 2, None)
        .await;
    assert_eq!(ack_reason(&mut c, 2, false).await, 0x99, "a replay");

    // QoS 2: the resend of an exchange still open completes as usual.
    let env = seal_v2(&key, generation, 1, 1, TELEMETRY, b"{}");
    c.publish_raw(TELEMETRY, &env, 2, false, false, 3, None)
        .await;
    assert_eq!(ack_reason(&mut c, 3, true).await, 0x00);
    c.publish_raw(TELEMETRY, &env, 2, false, true, 3, None)
        .await;
    assert_eq!(ack_reason(&mut c, 3, true).await, 0x00, "a resend");
    c.pubrel(3).await;
    c.expect(|i| matches!(i, common::conf::In::PubComp { pkid: 3, reason: 0 }))
        .await;

    let failed: Vec<_> = events_within(&mut events, QUIET)
        .await
        .into_iter()
        .filter(|e| e.kind == "device.decrypt_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let drops = b.handle.stats().drops;
    assert_eq!((drops.replayed, drops.decrypt_failed), (3, 0));
}
