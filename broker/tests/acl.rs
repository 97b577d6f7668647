//! The ACL matrix of SPEC §3 on PUBLISH, SUBSCRIBE (incl. `$share`), wills and delivery.

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_storage::{AclAction, AclRule};
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, SubscribeReasonCode as S5};
use rumqttc::{LastWill, Packet, QoS};

const QUIET: Duration = Duration::from_millis(300);

fn rule(action: AclAction, topic: &str, allow: bool) -> AclRule {
    AclRule {
        action,
        topic: topic.into(),
        allow,
    }
}

async fn broker_with_devices() -> TestBroker {
    let b = TestBroker::start().await;
    b.add_device("dev-a", "token-a", false).await;
    b.add_device("dev-b", "token-b", false).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    b
}

#[tokio::test]
async fn device_publishes_only_to_its_own_upstream_topics() {
    let b = broker_with_devices().await;
    let (svc, mut svc_el) =
        connect_v4(&b, Via::Tcp, "backend-1", Some(("backend", "backend-pass")))
            .await
            .unwrap();
    assert_eq!(
        subscribe_v4(&svc, &mut svc_el, "device/#", QoS::AtLeastOnce).await,
        [1]
    );
    let (dev, dev_el) = connect_v4(&b, Via::Ws, "dev-a", Some(("dev-a", "token-a")))
        .await
        .unwrap();
    let _d = drive_v4(dev_el);
    for t in ["telemetry", "status", "response", "events"] {
        dev.publish(
            format!("device/dev-a/{t}"),
            QoS::AtLeastOnce,
            false,
            t.as_bytes(),
        )
        .await
        .unwrap();
    }
    for topic in [
        "device/dev-b/telemetry",
        "device/dev-a/command",
        "device/dev-a/config",
        "other/topic",
        "device/dev-a/telemetry/x",
    ] {
        dev.publish(topic, QoS::AtLeastOnce, false, "denied")
            .await
            .unwrap();
    }
    let got = publishes_v4(&mut svc_el, QUIET * 2).await;
    let topics: Vec<_> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "device/dev-a/telemetry",
            "device/dev-a/status",
            "device/dev-a/response",
            "device/dev-a/events"
        ]
    );
    assert_eq!(b.handle.stats().drops.acl_publish, 5);
    svc.disconnect().await.ok();
}

#[tokio::test]
async fn denied_publish_gets_v5_reason_0x87_and_the_connection_stays_up() {
    let b = broker_with_devices().await;
    let (dev, mut el) = connect_v5(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")))
        .await
        .unwrap();
    dev.publish(
        "device/dev-b/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "x",
    )
    .await
    .unwrap();
    let reason = next_v5(&mut el, |p| match p {
        P5::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    dev.publish(
        "device/dev-a/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "{}",
    )
    .await
    .unwrap();
    let reason = next_v5(&mut el, |p| match p {
        P5::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PubAckReason::Success);
}

#[tokio::test]
async fn device_subscribe_matrix_with_merged_suback_codes() {
    let b = broker_with_devices().await;
    let (dev, mut el) = connect_v4(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")))
        .await
        .unwrap();
    let cases = [
        ("device/dev-a/command", 1),
        ("device/dev-a/#", 1),
        ("device/dev-a/+", 1),
        ("device/+/command", 0x80),
        ("#", 0x80),
        ("device/dev-b/command", 0x80),
        ("device/dev-a/telemetry", 0x80),
        ("$share/g/device/dev-a/config", 1),
        ("$share/g/device/+/config", 0x80),
    ];
    for (filter, code) in cases {
        assert_eq!(
            subscribe_v4(&dev, &mut el, filter, QoS::AtLeastOnce).await,
            [code],
            "{filter}"
        );
    }
    // One SUBSCRIBE mixing allowed and denied filters gets one SUBACK in filter order.
    let filters = ["device/dev-b/config", "device/dev-a/config", "x/y"]
        .map(|f| rumqttc::SubscribeFilter::new(f.into(), QoS::AtMostOnce));
    dev.subscribe_many(filters).await.unwrap();
    let codes = next_v4(&mut el, |p| match p {
        Packet::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await;
    use rumqttc::SubscribeReasonCode::{Failure, Success};
    assert_eq!(codes, [Failure, Success(QoS::AtMostOnce), Failure]);

    let (dev5, mut el5) = connect_v5(&b, Via::Ws, "dev-b", Some(("dev-b", "token-b")))
        .await
        .unwrap();
    dev5.subscribe("device/+/command", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = next_v5(&mut el5, |p| match p {
        P5::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, [S5::NotAuthorized]);
}

#[tokio::test]
async fn commands_reach_only_their_device() {
    let b = broker_with_devices().await;
    let (svc, svc_el) = connect_v4(&b, Via::Tcp, "backend-1", Some(("backend", "backend-pass")))
        .await
        .unwrap();
    let _s = drive_v4(svc_el);
    let (dev, mut el) = connect_v4(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")))
        .await
        .unwrap();
    assert_eq!(
        subscribe_v4(&dev, &mut el, "device/dev-a/#", QoS::AtLeastOnce).await,
        [1]
    );
    svc.publish("device/dev-a/command", QoS::AtLeastOnce, false, "cmd-a")
        .await
        .unwrap();
    svc.publish("device/dev-b/command", QoS::AtLeastOnce, false, "cmd-b")
        .await
        .unwrap();
    // Matches the subscription, but a device may read only command and config.
    svc.publish(
        "device/dev-a/telemetry",
        QoS::AtLeastOnce,
        false,
        "not-for-device",
    )
    .await
    .unwrap();
    svc.publish("device/dev-a/config", QoS::AtLeastOnce, false, "cfg-a")
        .await
        .unwrap();
    let got = publishes_v4(&mut el, QUIET).await;
    let payloads: Vec<_> = got
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    // (The telemetry never reaches the device's connection: only its command and config
    // topics are dispatched to it, so no delivery is refused by its read ACL either.)
    assert_eq!(payloads, ["cmd-a", "cfg-a"]);
}

#[tokio::test]
async fn a_wildcard_subscription_never_leaks_what_the_client_may_not_read() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.allow_anonymous = true;
    let b = TestBroker::with_config(config).await;
    b.add_device("dev-a", "token-a", false).await;
    // Service client with read access to telemetry only, but a `#` subscribe right.
    b.add_service(
        "reader",
        "reader-pass",
        vec![
            rule(AclAction::Subscribe, "#", true),
            rule(AclAction::All, "device/+/command", false),
        ],
    )
    .await;
    let (anon, mut anon_el) = connect_v4(&b, Via::Tcp, "anon", None).await.unwrap();
    assert_eq!(
        subscribe_v4(&anon, &mut anon_el, "#", QoS::AtMostOnce).await,
        [0]
    );
    let (dev, dev_el) = connect_v4(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")))
        .await
        .unwrap();
    let _d = drive_v4(dev_el);
    dev.publish("device/dev-a/telemetry", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    anon.publish("plain/topic", QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    let got = publishes_v4(&mut anon_el, QUIET).await;
    assert_eq!(
        got,
        [("plain/topic".to_string(), b"hello".to_vec())],
        "anonymous sees only the non-device tree"
    );
}

#[tokio::test]
async fn a_will_on_a_forbidden_topic_refuses_the_connect() {
    let b = broker_with_devices().await;
    let mut opts = options_v4(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")));
    opts.set_last_will(LastWill::new(
        "device/dev-b/status",
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let (_c, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let err = tokio::time::timeout(WAIT, el.poll())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );

    // Its own status topic is fine, and the will fires when the connection drops.
    let (svc, mut svc_el) =
        connect_v4(&b, Via::Tcp, "backend-1", Some(("backend", "backend-pass")))
            .await
            .unwrap();
    subscribe_v4(&svc, &mut svc_el, "device/+/status", QoS::AtLeastOnce).await;
    let mut opts = options_v4(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")));
    opts.set_last_will(LastWill::new(
        "device/dev-a/status",
        "{\"state\":\"offline\"}",
        QoS::AtLeastOnce,
        false,
    ));
    let (_c, mut el) = rumqttc::AsyncClient::new(opts, 10);
    next_v4(&mut el, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    drop(el); // socket closed without DISCONNECT
    let got = publishes_v4(&mut svc_el, QUIET).await;
    assert_eq!(
        got,
        [(
            "device/dev-a/status".to_string(),
            b"{\"state\":\"offline\"}".to_vec()
        )]
    );
}

#[tokio::test]
async fn service_client_rules_first_match_wins_with_substitution() {
    let b = broker_with_devices().await;
    b.add_service(
        "ops",
        "ops-password",
        vec![
            rule(AclAction::Publish, "device/dev-b/command", false),
            rule(AclAction::Publish, "device/+/command", true),
            rule(AclAction::All, "clients/%c/#", true),
        ],
    )
    .await;
    let (dev, mut dev_el) = connect_v4(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")))
        .await
        .unwrap();
    subscribe_v4(&dev, &mut dev_el, "device/dev-a/command", QoS::AtMostOnce).await;
    let (devb, mut devb_el) = connect_v4(&b, Via::Tcp, "dev-b", Some(("dev-b", "token-b")))
        .await
        .unwrap();
    subscribe_v4(&devb, &mut devb_el, "device/dev-b/command", QoS::AtMostOnce).await;
    let (ops, mut ops_el) = connect_v4(&b, Via::Tcp, "ops-1", Some(("ops", "ops-password")))
        .await
        .unwrap();
    assert_eq!(
        subscribe_v4(&ops, &mut ops_el, "clients/ops-1/#", QoS::AtMostOnce).await,
        [0]
    );
    assert_eq!(
        subscribe_v4(&ops, &mut ops_el, "clients/other/#", QoS::AtMostOnce).await,
        [0x80]
    );
    assert_eq!(
        subscribe_v4(&ops, &mut ops_el, "device/#", QoS::AtMostOnce).await,
        [0x80]
    );
    ops.publish("device/dev-a/command", QoS::AtMostOnce, false, "a")
        .await
        .unwrap();
    ops.publish("device/dev-b/command", QoS::AtMostOnce, false, "b")
        .await
        .unwrap();
    let _o = drive_v4(ops_el);
    assert_eq!(publishes_v4(&mut dev_el, QUIET).await.len(), 1);
    assert_eq!(publishes_v4(&mut devb_el, QUIET).await.len(), 0);
}

#[tokio::test]
async fn retained_publishes_pass_the_acl_and_are_stored() {
    let b = broker_with_devices().await;
    let (dev, dev_el) = connect_v4(&b, Via::Tcp, "dev-a", Some(("dev-a", "token-a")))
        .await
        .unwrap();
    let _d = drive_v4(dev_el);
    dev.publish(
        "device/dev-a/status",
        QoS::AtLeastOnce,
        true,
        r#"{"state":"online"}"#,
    )
    .await
    .unwrap();
    dev.publish(
        "device/dev-b/status",
        QoS::AtLeastOnce,
        true,
        r#"{"state":"forged"}"#,
    )
    .await
    .unwrap();
    tokio::time::sleep(QUIET).await;
    let stored = b.store.call(|s| s.list_retained()).await.unwrap();
    let topics: Vec<_> = stored.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["device/dev-a/status"]);
    // A later subscriber gets the retained message, not the forged one.
    let (svc, mut svc_el) =
        connect_v4(&b, Via::Tcp, "backend-1", Some(("backend", "backend-pass")))
            .await
            .unwrap();
    subscribe_v4(&svc, &mut svc_el, "device/+/status", QoS::AtLeastOnce).await;
    let got = publishes_v4(&mut svc_el, QUIET).await;
    assert_eq!(
        got,
        [(
            "device/dev-a/status".to_string(),
            br#"{"state":"online"}"#.to_vec()
        )]
    );
    // An empty retained payload deletes it.
    dev.publish("device/dev-a/status", QoS::AtLeastOnce, true, Vec::new())
        .await
        .unwrap();
    tokio::time::sleep(QUIET).await;
    assert!(b
        .store
        .call(|s| s.list_retained())
        .await
        .unwrap()
        .is_empty());
}
