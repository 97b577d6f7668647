//! MQTT 5 PUBLISH properties and subscription identifiers of messages queued for a
//! parked persistent session, delivered on resume and kept across a restart. rumqttc
//! clients over TCP and WebSocket against fleetmq (the conformance suites' packet-level
//! client covers the rest of sessions, also against other brokers).

use crate::common;

use std::time::Duration;

use common::*;
use fleetmq_broker::BrokerConfig;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};

const QUIET: Duration = Duration::from_millis(300);

fn config() -> BrokerConfig {
    let mut config = BrokerConfig::for_tests();
    config.allow_anonymous = true;
    config
}

async fn broker() -> TestBroker {
    TestBroker::with_config(config()).await
}

/// Connects a 3.1.1 client; returns it with the CONNACK's session-present flag.
async fn connect4(
    b: &TestBroker,
    via: Via,
    id: &str,
    clean: bool,
    manual_acks: bool,
) -> (AsyncClient, EventLoop, bool) {
    let mut opts = options_v4(b, via, id, None);
    opts.set_clean_session(clean);
    opts.set_manual_acks(manual_acks);
    let (c, mut el) = AsyncClient::new(opts, 100);
    let present = next_v4(&mut el, |p| match p {
        Packet::ConnAck(a) => Some(a.session_present),
        _ => None,
    })
    .await;
    (c, el, present)
}

async fn connect5(
    b: &TestBroker,
    via: Via,
    id: &str,
    clean_start: bool,
    expiry: Option<u32>,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop, bool) {
    let mut opts = options_v5(b, via, id, None);
    opts.set_clean_start(clean_start);
    opts.set_session_expiry_interval(expiry);
    let (c, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    let present = next_v5(&mut el, |p| match p {
        P5::ConnAck(a) => Some(a.session_present),
        _ => None,
    })
    .await;
    (c, el, present)
}

async fn hang_up(c: AsyncClient, mut el: EventLoop) {
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(QUIET, async { while el.poll().await.is_ok() {} }).await;
}

async fn hang_up5(c: rumqttc::v5::AsyncClient, mut el: rumqttc::v5::EventLoop) {
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(QUIET, async { while el.poll().await.is_ok() {} }).await;
}

async fn payloads4(el: &mut EventLoop, n: usize) -> Vec<(String, bool)> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < n {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
                got.push((String::from_utf8_lossy(&p.payload).into_owned(), p.dup));
            }
        }
    })
    .await
    .expect("queued messages in time");
    got
}

/// [MQTT-3.2.2-1] [MQTT-3.2.2-2] [MQTT-3.2.2-3] [MQTT-3.1.2-6]: session present is 0 for
/// a clean session and for a new persistent one, 1 when a stored session is resumed;
/// a clean session discards the stored one.
async fn park_v5_subscriber(b: &TestBroker, via: Via, id: &str) {
    let (c, mut el, _) = connect5(b, via, id, true, Some(3600)).await;
    for (filter, sub_id) in [("pr/+", 5), ("pr/x/#", 6)] {
        let props = SubscribeProperties {
            id: Some(sub_id),
            user_properties: Vec::new(),
        };
        c.subscribe_with_properties(filter, Q5::AtLeastOnce, props)
            .await
            .unwrap();
        next_v5(&mut el, |p| matches!(p, P5::SubAck(_)).then_some(())).await;
    }
    hang_up5(c, el).await;
}

fn message_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr")),
        user_properties: vec![
            ("a".into(), "1".into()),
            // fleetmq's internal retain mark: a client cannot set it, nobody sees it.
            ("fleetmq:retain".into(), String::new()),
            ("a".into(), "2".into()),
        ],
        content_type: Some("text/plain".into()),
        ..PublishProperties::default()
    }
}

async fn publish_v5_props(b: &TestBroker, topic: &str, payload: &str) {
    let (c, mut el) = connect_v5(b, Via::Tcp, "prop-publisher", None)
        .await
        .unwrap();
    c.publish_with_properties(
        topic,
        Q5::AtLeastOnce,
        false,
        payload.as_bytes().to_vec(),
        message_properties(),
    )
    .await
    .unwrap();
    next_v5(&mut el, |p| matches!(p, P5::PubAck(_)).then_some(())).await;
    hang_up5(c, el).await;
}

async fn next_publish5(el: &mut rumqttc::v5::EventLoop) -> rumqttc::v5::mqttbytes::v5::Publish {
    next_v5(el, |p| match p {
        P5::Publish(p) => Some(p.clone()),
        _ => None,
    })
    .await
}

/// What a queued message must arrive with: the publisher's properties in order
/// [MQTT-3.3.2-18] (fleetmq's own removed), the expiry counted down [MQTT-3.3.2-6], and
/// the identifiers of every matching subscription of the receiving session
/// [MQTT-3.3.4-3].
fn assert_queued_properties(p: &rumqttc::v5::mqttbytes::v5::Publish, ids: &[usize]) {
    let props = p.properties.clone().expect("properties kept");
    let sent = message_properties();
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(props.response_topic, sent.response_topic);
    assert_eq!(props.correlation_data, sent.correlation_data);
    assert_eq!(props.content_type, sent.content_type);
    assert_eq!(
        props.user_properties,
        [
            ("a".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned())
        ]
    );
    let left = props.message_expiry_interval.expect("expiry kept");
    assert!((3500..=3600).contains(&left), "{left}");
    assert_eq!(props.subscription_identifiers, ids);
    assert!(!p.retain);
}

/// A message queued for a parked MQTT 5 session keeps its PUBLISH properties, and the
/// resumed session's live messages carry their subscription identifiers again; a 3.1.1
/// session gets the message without properties.
#[tokio::test]
async fn v5_properties_survive_the_session_queue() {
    let b = broker().await;
    for (via, id) in [(Via::Tcp, "props-tcp"), (Via::Ws, "props-ws")] {
        park_v5_subscriber(&b, via, id).await;
        let v4_id = format!("{id}-v4");
        let (c, mut el, _) = connect4(&b, via, &v4_id, false, false).await;
        subscribe_v4(&c, &mut el, "pr/#", QoS::AtLeastOnce).await;
        hang_up(c, el).await;
        publish_v5_props(&b, "pr/x", "queued").await;
        let (_c, mut el, sp) = connect5(&b, via, id, false, Some(3600)).await;
        assert!(sp);
        let p = next_publish5(&mut el).await;
        assert_eq!(&p.payload[..], b"queued");
        assert_queued_properties(&p, &[5, 6]);
        // Live, after resume: `pr/y` matches `pr/+` only.
        publish_v5_props(&b, "pr/y", "live").await;
        let p = next_publish5(&mut el).await;
        assert_eq!(&p.payload[..], b"live");
        let ids = p.properties.map(|p| p.subscription_identifiers);
        assert_eq!(ids, Some(vec![5]), "{via:?}");
        let (_c4, mut el4, sp) = connect4(&b, via, &v4_id, false, false).await;
        assert!(sp);
        assert_eq!(payloads4(&mut el4, 2).await[0].0, "queued");
    }
}

/// The queued properties are in redb: they survive a restart.
#[tokio::test]
async fn v5_queued_properties_survive_restart() {
    let b = broker().await;
    park_v5_subscriber(&b, Via::Tcp, "props-durable").await;
    publish_v5_props(&b, "pr/x", "kept").await;
    let dir = b.stop().await;
    let b = TestBroker::with_config_in(config(), dir).await;
    let (_c, mut el, sp) = connect5(&b, Via::Tcp, "props-durable", false, Some(3600)).await;
    assert!(sp);
    let p = next_publish5(&mut el).await;
    assert_eq!(&p.payload[..], b"kept");
    assert_queued_properties(&p, &[5, 6]);
}

// ---- raw 3.1.1 packets for inbound QoS 2 ------------------------------------------
