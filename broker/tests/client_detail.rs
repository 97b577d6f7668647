//! `BrokerHandle::client`: a live connection's subscriptions (with their MQTT 5
//! options), session and counters, as it answers them, with real rumqttc clients.

use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5, RetainForwardRule, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{Event, Packet, QoS};

use crate::common::*;

#[tokio::test]
async fn subscriptions_keep_their_v5_options_and_the_session_shows() {
    let b = TestBroker::start().await;
    b.add_service("backend", "pw", allow_all()).await;
    let mut opts = options_v5(&b, Via::Tcp, "backend-5", Some(("backend", "pw")));
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
    let filter = Filter {
        path: "plant/+/temp".into(),
        qos: Q5::AtLeastOnce,
        nolocal: true,
        preserve_retain: true,
        retain_forward_rule: RetainForwardRule::Never,
    };
    let props = SubscribeProperties {
        id: Some(5),
        user_properties: Vec::new(),
    };
    client
        .subscribe_many_with_properties([filter], props)
        .await
        .unwrap();
    next_v5(&mut el, |p| matches!(p, P5::SubAck(..)).then_some(())).await;
    let _el = drive_v5(el);

    let detail = b.handle.client("backend-5").await.expect("connected");
    assert_eq!(detail.info.protocol, "5");
    assert_eq!(detail.clean_start, Some(false));
    assert_eq!(detail.session_persistent, Some(true));
    assert_eq!(detail.session_expiry_s, Some(300));
    assert_eq!(detail.keepalive_s, Some(30));
    let [sub] = detail.subscriptions.as_slice() else {
        panic!("one subscription: {:?}", detail.subscriptions)
    };
    assert_eq!(sub.filter, "plant/+/temp");
    assert_eq!(sub.qos, 1);
    assert!(sub.no_local && sub.retain_as_published);
    assert_eq!(sub.retain_handling, 2);
    assert_eq!(sub.subscription_id, Some(5));
    assert_eq!(sub.share_group, None);
    assert!(b.handle.client("nobody").await.is_none());
    b.stop().await;
}

#[tokio::test]
async fn unacknowledged_deliveries_are_in_flight() {
    let b = TestBroker::start().await;
    b.add_service("backend", "pw", allow_all()).await;
    let mut opts = options_v4(&b, Via::Tcp, "slow", Some(("backend", "pw")));
    opts.set_manual_acks(true);
    let (sub, mut el) = rumqttc::AsyncClient::new(opts, 10);
    sub.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    next_v4(&mut el, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let (publisher, pel) = connect_v4(&b, Via::Tcp, "pub", Some(("backend", "pw")))
        .await
        .unwrap();
    let _pel = drive_v4(pel);
    for n in 0..3 {
        publisher
            .publish(format!("load/{n}"), QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(WAIT, el.poll()).await
        {
            got.push(p);
        }
    }
    let detail = b.handle.client("slow").await.expect("connected");
    let counters = detail.counters.expect("an MQTT connection counts");
    assert_eq!(counters.inflight_out, 3, "{counters:?}");
    assert_eq!(counters.messages_out, 3, "{counters:?}");
    assert_eq!(counters.messages_in, 0, "{counters:?}");

    // Acknowledged: nothing is in flight any more.
    for p in &got {
        sub.ack(p).await.unwrap();
    }
    let _el = drive_v4(el);
    eventually("acks counted", || async {
        let detail = b.handle.client("slow").await?;
        (detail.counters?.inflight_out == 0).then_some(())
    })
    .await;
    let publisher_side = b.handle.client("pub").await.expect("connected");
    assert_eq!(publisher_side.counters.expect("counted").messages_in, 3);
    b.stop().await;
}
