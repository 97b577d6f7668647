//! Versioned device configuration (SPEC §6): stored, published retained at QoS 1, sealed
//! for encrypted devices, delivered on connect and after a restart.

use crate::common;

use std::time::Duration;

use common::*;
use rumqttc::QoS;
use serde_json::json;

#[tokio::test]
async fn config_versions_are_published_retained_and_survive_a_restart() {
    let b = TestBroker::start().await;
    let rec = b.add_device("dev-1", "token", false).await;
    assert!(b.handle.device_config(&rec.id).await.unwrap().is_none());
    let v1 = b
        .handle
        .set_device_config(&rec.id, json!({"interval": 5}))
        .await
        .unwrap();
    let v2 = b
        .handle
        .set_device_config(&rec.id, json!({"interval": 10}))
        .await
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let bad = b.handle.set_device_config(&rec.id, json!([1, 2])).await;
    assert!(matches!(
        bad,
        Err(fleetmq_broker::fleet::FleetError::Invalid(_))
    ));
    let missing = b
        .handle
        .set_device_config(&"ghost".parse().unwrap(), json!({}))
        .await;
    assert!(matches!(
        missing,
        Err(fleetmq_broker::fleet::FleetError::NotFound { .. })
    ));

    // A device connecting later gets the newest version, retained.
    let (dev, mut el) = connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "token")))
        .await
        .unwrap();
    subscribe_v4(&dev, &mut el, "device/dev-1/config", QoS::AtLeastOnce).await;
    let got = publishes_v4(&mut el, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(body, json!({"version": 2, "config": {"interval": 10}}));
    drop(el);

    // After a restart the stored config and its retained message are still there.
    let dir = b.stop().await;
    let b = TestBroker::with_config_in(fleetmq_broker::BrokerConfig::for_tests(), dir).await;
    let current = b.handle.device_config(&rec.id).await.unwrap().unwrap();
    assert_eq!(current.version, 2);
    let (dev, mut el) = connect_v4(&b, Via::Ws, "dev-1", Some(("dev-1", "token")))
        .await
        .unwrap();
    subscribe_v4(&dev, &mut el, "device/dev-1/config", QoS::AtLeastOnce).await;
    let got = publishes_v4(&mut el, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1, "retained config replayed after restart");
}
