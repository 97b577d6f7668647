//! SPEC §4 payload encryption end to end: devices send and receive envelopes, everyone
//! else sees plaintext. The envelope is built here independently of the broker's code.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_storage::DeviceRecord;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use rumqttc::QoS;

const QUIET: Duration = Duration::from_millis(300);

fn seal(key: &[u8; 32], generation: u8, nonce: [u8; 12], topic: &str, plain: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut data = plain.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(topic.as_bytes()),
        &mut data,
    )
    .unwrap();
    let mut env = vec![1, generation];
    env.extend_from_slice(&nonce);
    env.extend(data);
    env
}

fn open(key: &[u8; 32], topic: &str, env: &[u8]) -> Option<Vec<u8>> {
    if env.len() < 14 + 16 || env[0] != 1 {
        return None;
    }
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let nonce = Nonce::try_assume_unique_for_key(&env[2..14]).ok()?;
    let mut data = env[14..].to_vec();
    let plain = k
        .open_in_place(nonce, Aad::from(topic.as_bytes()), &mut data)
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
