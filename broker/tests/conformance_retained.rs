//! Retained messages [MQTT-3.3.1-5..12], [MQTT-3.8.4-3], v5 Retain Handling and
//! Retain As Published, over TCP and WebSocket, 3.1.1 and 5, with real clients.

mod common;

use std::time::Duration;

use common::*;
use fleetmq_broker::BrokerConfig;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{Packet, QoS};

const QUIET: Duration = Duration::from_millis(300);

async fn broker() -> TestBroker {
    let mut config = BrokerConfig::for_tests();
    config.allow_anonymous = true;
    TestBroker::with_config(config).await
}

async fn retain(b: &TestBroker, topic: &str, payload: &[u8], retain: bool) {
    let (c, mut el) = connect_v4(b, Via::Tcp, "retainer", None).await.unwrap();
    c.publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    next_v4(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(QUIET, async { while el.poll().await.is_ok() {} }).await;
}

/// Subscribes (3.1.1) and collects the retained PUBLISHes that follow (topic, payload, retain flag).
async fn subscribe_collect_v4(
    c: &rumqttc::AsyncClient,
    el: &mut rumqttc::EventLoop,
    filter: &str,
) -> Vec<(String, Vec<u8>, bool)> {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(QUIET, async {
        while let Ok(ev) = el.poll().await {
            if let rumqttc::Event::Incoming(Packet::Publish(p)) = ev {
                got.push((p.topic.clone(), p.payload.to_vec(), p.retain));
            }
        }
    })
    .await;
    got
}

async fn subscribe_collect_v5(
    c: &rumqttc::v5::AsyncClient,
    el: &mut rumqttc::v5::EventLoop,
    filter: &str,
    rule: RetainForwardRule,
) -> Vec<(Vec<u8>, bool)> {
    let mut f = Filter::new(filter, Q5::AtLeastOnce);
    f.retain_forward_rule = rule;
    c.subscribe_many(vec![f]).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(QUIET, async {
        while let Ok(ev) = el.poll().await {
            if let rumqttc::v5::Event::Incoming(P5::Publish(p)) = ev {
                got.push((p.payload.to_vec(), p.retain));
            }
        }
    })
    .await;
    got
}

/// [MQTT-3.3.1-6] [MQTT-3.8.4-3]: retained messages go out on every matching
/// SUBSCRIBE, also one that replaces an existing subscription, with RETAIN=1.
#[tokio::test]
async fn retained_on_every_subscribe_v4() {
    let b = broker().await;
    retain(&b, "r/a", b"one", true).await;
    for via in [Via::Tcp, Via::Ws] {
        let (c, mut el) = connect_v4(&b, via, "sub", None).await.unwrap();
        for _ in 0..2 {
            let got = subscribe_collect_v4(&c, &mut el, "r/+").await;
            assert_eq!(
                got,
                vec![("r/a".to_owned(), b"one".to_vec(), true)],
                "{via:?}"
            );
        }
    }
}

/// [MQTT-3.3.1-10] [MQTT-3.3.1-12]: an empty retained payload deletes the retained
/// message; an empty payload with RETAIN=0 must not (rumqttd deletes it).
#[tokio::test]
async fn empty_payload_deletes_only_when_retained() {
    let b = broker().await;
    retain(&b, "r/b", b"keep", true).await;
    retain(&b, "r/b", b"", false).await;
    let (c, mut el) = connect_v4(&b, Via::Tcp, "sub1", None).await.unwrap();
    let got = subscribe_collect_v4(&c, &mut el, "r/b").await;
    assert_eq!(got, vec![("r/b".to_owned(), b"keep".to_vec(), true)]);
    assert!(b.store.get_retained("r/b").unwrap().is_some());
    retain(&b, "r/b", b"", true).await;
    let (c, mut el) = connect_v4(&b, Via::Ws, "sub2", None).await.unwrap();
    assert!(subscribe_collect_v4(&c, &mut el, "r/b").await.is_empty());
    assert!(b.store.get_retained("r/b").unwrap().is_none());
}

/// [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11]: Retain Handling 0 sends retained
/// messages on every subscribe, 1 only when the subscription is new, 2 never.
#[tokio::test]
async fn v5_retain_handling() {
    let b = broker().await;
    retain(&b, "rh/x", b"v", true).await;
    for via in [Via::Tcp, Via::Ws] {
        let (c, mut el) = connect_v5(&b, via, "rh", None).await.unwrap();
        let every = RetainForwardRule::OnEverySubscribe;
        let new = RetainForwardRule::OnNewSubscribe;
        assert_eq!(
            subscribe_collect_v5(&c, &mut el, "rh/x", every.clone())
                .await
                .len(),
            1
        );
        assert_eq!(
            subscribe_collect_v5(&c, &mut el, "rh/x", every).await.len(),
            1
        );
        assert_eq!(
            subscribe_collect_v5(&c, &mut el, "rh/#", new.clone())
                .await
                .len(),
            1
        );
        assert!(subscribe_collect_v5(&c, &mut el, "rh/#", new)
            .await
            .is_empty());
        let never = RetainForwardRule::Never;
        assert!(subscribe_collect_v5(&c, &mut el, "rh/+", never)
            .await
            .is_empty());
        let got =
            subscribe_collect_v5(&c, &mut el, "+/x", RetainForwardRule::OnEverySubscribe).await;
        assert_eq!(got, vec![(b"v".to_vec(), true)], "{via:?}");
    }
}

/// None dropped for lack of inflight slots: rumqttd truncates retained messages to its
/// free inflight window (100); every one of 250 arrives.
#[tokio::test]
async fn many_retained_all_delivered() {
    let b = broker().await;
    let (c, mut el) = connect_v4(&b, Via::Tcp, "bulk", None).await.unwrap();
    for i in 0..250 {
        c.publish(format!("bulk/{i:03}"), QoS::AtLeastOnce, true, vec![1])
            .await
            .unwrap();
        next_v4(&mut el, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    }
    for (via, id) in [(Via::Tcp, "s4"), (Via::Ws, "s4w")] {
        let (c, mut el) = connect_v4(&b, via, id, None).await.unwrap();
        c.subscribe("bulk/#", QoS::AtLeastOnce).await.unwrap();
        let mut topics = std::collections::BTreeSet::new();
        tokio::time::timeout(WAIT, async {
            while topics.len() < 250 {
                if let rumqttc::Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
                    topics.insert(p.topic.clone());
                }
            }
        })
        .await
        .expect("all 250 retained messages");
    }
}

/// Retained messages are written through and come back after a restart [MQTT-3.3.1-5].
#[tokio::test]
async fn retained_survive_restart() {
    let b = broker().await;
    retain(&b, "keep/me", b"durable", true).await;
    let config = {
        let mut c = BrokerConfig::for_tests();
        c.allow_anonymous = true;
        c
    };
    let dir = b.stop().await;
    let b = TestBroker::with_config_in(config, dir).await;
    let (c, mut el) = connect_v5(&b, Via::Ws, "after", None).await.unwrap();
    let got =
        subscribe_collect_v5(&c, &mut el, "keep/#", RetainForwardRule::OnEverySubscribe).await;
    assert_eq!(got, vec![(b"durable".to_vec(), true)]);
}

/// Retained delivery honours the read ACL (SPEC §3): anonymous clients never see the
/// device tree, even through `#`.
#[tokio::test]
async fn retained_delivery_checks_read_acl() {
    let b = broker().await;
    b.handle
        .publish(fleetmq_broker::PublishRequest {
            topic: "device/d1/config".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            qos: 1,
            retain: true,
        })
        .await
        .unwrap();
    retain(&b, "open/x", b"ok", true).await;
    let (c, mut el) = connect_v4(&b, Via::Tcp, "anon", None).await.unwrap();
    let got = subscribe_collect_v4(&c, &mut el, "#").await;
    let topics: Vec<_> = got.into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(topics, ["open/x"]);
}

/// MQTT 5 [MQTT-3.3.1-12] [MQTT-3.3.1-13]: live messages keep their RETAIN flag only
/// for subscriptions with Retain As Published; 3.1.1 subscribers always get RETAIN=0
/// on live traffic (3.1.1 [MQTT-3.3.1-9]).
#[tokio::test]
async fn retain_as_published_for_live_messages() {
    let b = broker().await;
    for via in [Via::Tcp, Via::Ws] {
        // A topic per transport: nothing is retained on it before the subscriptions.
        let topic = format!("rap/{via:?}");
        let (keep, mut keep_el) = connect_v5(&b, via, "rap-1", None).await.unwrap();
        let mut f = Filter::new(topic.clone(), Q5::AtLeastOnce);
        f.preserve_retain = true;
        keep.subscribe_many(vec![f]).await.unwrap();
        next_v5(&mut keep_el, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
        let (plain, mut plain_el) = connect_v5(&b, via, "rap-0", None).await.unwrap();
        plain
            .subscribe(topic.clone(), Q5::AtLeastOnce)
            .await
            .unwrap();
        next_v5(&mut plain_el, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
        let (old, mut old_el) = connect_v4(&b, via, "rap-4", None).await.unwrap();
        subscribe_v4(&old, &mut old_el, &topic, QoS::AtLeastOnce).await;

        retain(&b, &topic, b"r", true).await;
        retain(&b, &topic, b"n", false).await;
        for (el, expect) in [
            (&mut keep_el, [true, false]),
            (&mut plain_el, [false, false]),
        ] {
            let mut flags = Vec::new();
            while flags.len() < 2 {
                flags.push(
                    next_v5(el, |p| match p {
                        P5::Publish(p) => Some(p.retain),
                        _ => None,
                    })
                    .await,
                );
            }
            assert_eq!(flags, expect, "{via:?}");
        }
        let mut flags = Vec::new();
        while flags.len() < 2 {
            flags.push(
                next_v4(&mut old_el, |p| match p {
                    Packet::Publish(p) => Some(p.retain),
                    _ => None,
                })
                .await,
            );
        }
        assert_eq!(flags, [false, false], "{via:?}");
    }
}
