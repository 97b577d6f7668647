//! Taps (`BrokerHandle::tap`, behind `GET /api/v1/subscribe`) see what the broker routes:
//! an encrypted device's publish as the plaintext it routes, a command as it is before
//! it is sealed for its device, a retained will with its RETAIN; nothing else.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::fleet::commands::NewCommand;
use fleetmq_broker::{Tap, TappedMessage};
use rumqttc::QoS;

async fn next(tap: &mut Tap) -> TappedMessage {
    tokio::time::timeout(Duration::from_secs(10), tap.recv())
        .await
        .expect("a tapped message in time")
        .expect("the tap is open")
}

/// What the client receives within two seconds.
async fn publishes_v4_owned(mut el: rumqttc::EventLoop) -> Vec<(String, Vec<u8>)> {
    publishes_v4(&mut el, Duration::from_secs(2)).await
}

#[tokio::test]
async fn taps_see_decrypted_device_publishes_and_commands_before_sealing() {
    let b = TestBroker::start().await;
    let rec = b.add_device("sealed-1", "token", true).await;
    let k = rec.keys.last().expect("a key");
    let mut telemetry = b.handle.tap("device/+/telemetry").unwrap();
    let mut commands = b.handle.tap("device/sealed-1/#").unwrap();
    let (dev, mut el) = connect_v4(&b, Via::Tcp, "sealed-1", Some(("sealed-1", "token")))
        .await
        .unwrap();
    subscribe_v4(&dev, &mut el, "device/sealed-1/command", QoS::AtLeastOnce).await;
    // The device's connection runs meanwhile; what it receives is kept.
    let received = tokio::spawn(publishes_v4_owned(el));
    let topic = "device/sealed-1/telemetry";
    let envelope = crate::encryption::seal(&k.key, k.generation, [7; 12], topic, b"{\"cpu\":3}");
    dev.publish(topic, QoS::AtLeastOnce, false, envelope)
        .await
        .unwrap();
    let routed = next(&mut telemetry).await;
    assert_eq!(&*routed.topic, topic);
    assert_eq!(
        &routed.payload[..],
        b"{\"cpu\":3}",
        "the plaintext it routes"
    );
    assert_eq!(routed.client_id.as_deref(), Some("sealed-1"));
    assert_eq!((routed.qos, routed.retain), (1, false));
    // The same publish matches `device/sealed-1/#` too.
    assert_eq!(&*next(&mut commands).await.topic, topic);

    let new: NewCommand = serde_json::from_str(r#"{"type":"PING"}"#).unwrap();
    let created = b.handle.commands().create(&rec, new, None).await.unwrap();
    let cmd = next(&mut commands).await;
    assert_eq!(&*cmd.topic, "device/sealed-1/command");
    assert_eq!(cmd.client_id, None, "the broker's own");
    let body: serde_json::Value = serde_json::from_slice(&cmd.payload).expect("plaintext JSON");
    assert_eq!(body["type"], "PING", "{body}");
    assert!(
        body.to_string().contains(&created.record.command_id),
        "{body}"
    );
    // What the device got is an envelope (first byte its version).
    let got = received.await.unwrap();
    assert!(got.iter().any(|(t, p)| t == "device/sealed-1/command"
        && matches!(p.first(), Some(1 | 2))
        && !p.windows(4).any(|w| w == b"PING")));
    // Nothing about other topics reached the telemetry tap.
    assert!(telemetry.try_recv().is_none());
    assert_eq!((telemetry.take_dropped(), commands.take_dropped()), (0, 0));
}
