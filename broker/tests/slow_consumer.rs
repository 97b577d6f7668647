//! Slow and stuck consumers (issue #3): a connected subscriber never loses QoS 1/2
//! messages silently. Publishers of a congested subscriber's topics are paused (their
//! PUBACKs wait); a subscriber that takes nothing is disconnected after
//! `mqtt.slow_consumer_timeout_s`, its publishers resume, and what it was owed is either
//! parked with its persistent session or counted as dropped. The router's per-filter log
//! is made small here (128 KiB, about 600 of these messages), so a subscriber whose
//! messages waited in it would lose them.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::conf::{self, In, Ver};
use common::*;
use fleetmq_broker::BrokerConfig;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};

/// Bytes per message payload; the first four are its index.
const SIZE: usize = 200;

fn payload(i: u32) -> Vec<u8> {
    let mut p = vec![0u8; SIZE];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p
}

fn index(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

/// A fleetmq whose router log holds 4 x 32 KiB per filter. It must still absorb what is
/// routed before a subscriber's task drains it (a scheduling delay, which a loaded test
/// machine stretches), so it is not made smaller.
async fn target(adjust: impl FnOnce(&mut BrokerConfig)) -> conf::Target {
    conf::Target::with(|c| {
        c.router_segment_size = 32 * 1024;
        adjust(c);
    })
    .await
}

/// A publisher flooding `n` QoS 1 messages on `topic` in the background; the counter
/// says how many PUBACKs it got.
struct Flood {
    _client: AsyncClient,
    acked: Arc<AtomicUsize>,
    _tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Flood {
    async fn start(b: &TestBroker, topic: &str, n: u32) -> Flood {
        let (client, el) = connect_v4(b, Via::Tcp, &conf::unique("flood"), None)
            .await
            .expect("publisher connects");
        let acked = Arc::new(AtomicUsize::new(0));
        let poll = tokio::spawn(count_pubacks(el, acked.clone()));
        let c = client.clone();
        let topic = topic.to_owned();
        let publish = tokio::spawn(async move {
            for i in 0..n {
                c.publish(&topic, QoS::AtLeastOnce, false, payload(i))
                    .await
                    .expect("queue publish");
            }
        });
        Flood {
            _client: client,
            acked,
            _tasks: [poll, publish],
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    async fn all_acked(&self, n: u32) {
        eventually("every PUBACK", || async {
            (self.acked() == n as usize).then_some(())
        })
        .await;
    }
}

async fn count_pubacks(mut el: EventLoop, acked: Arc<AtomicUsize>) {
    while let Ok(event) = el.poll().await {
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A subscriber that stops reading while a publisher floods more QoS 1 messages than
/// the router's log holds: the publisher is paused (its PUBACKs wait), and once the
/// subscriber reads again it gets every message, in order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_gets_every_message_in_order_and_its_publisher_waits() {
    // About 430 KB: more than three times what the router's log holds.
    const N: u32 = 2000;
    let t = target(|c| c.max_pending_messages = 50).await;
    let Some(b) = t.broker.as_ref() else { return };
    let mut sub = t.connect(conf::Via::Tcp, Ver::V5, "slow-reader").await;
    sub.subscribe("flood/#", 1).await;
    let flood = Flood::start(b, "flood/a", N).await;
    eventually("the publisher is paused", || async {
        (b.handle.stats().messages.publisher_pauses > 0).then_some(())
    })
    .await;
    assert!(
        flood.acked() < N as usize,
        "PUBACKs wait while the subscriber is congested"
    );
    for i in 0..N {
        let m = sub.next_msg().await;
        assert_eq!(index(&m.payload), i, "in order, none lost");
        assert_eq!(m.qos, 1);
        sub.puback(m.pkid).await;
    }
    flood.all_acked(N).await;
    let stats = b.handle.stats();
    assert_eq!(stats.drops.slow_consumer, 0);
    assert_eq!(stats.messages.slow_consumers_disconnected, 0);
}

/// A congested v5 subscriber that acknowledges nothing is disconnected with 0x97 after
/// `mqtt.slow_consumer_timeout_s`; the publisher resumes, and what the clean session
/// was owed is counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_subscriber_is_disconnected_and_publishers_resume() {
    const N: u32 = 300;
    let t = target(|c| {
        c.max_pending_messages = 20;
        c.slow_consumer_timeout = Duration::from_secs(1);
    })
    .await;
    let Some(b) = t.broker.as_ref() else { return };
    let mut stuck = t.connect(conf::Via::Tcp, Ver::V5, "stuck").await;
    stuck.subscribe("stuck/#", 1).await;
    // A healthy subscriber of the same topic is not affected.
    let mut healthy = t.connect(conf::Via::Tcp, Ver::V4, "healthy").await;
    healthy.subscribe("stuck/#", 1).await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N as usize {
            let m = healthy.next_msg().await;
            healthy.puback(m.pkid).await;
            got.push(index(&m.payload));
        }
        got
    });
    let flood = Flood::start(b, "stuck/x", N).await;
    flood.all_acked(N).await;
    assert_eq!(
        stuck.closed().await,
        Some(0x97),
        "DISCONNECT Quota exceeded"
    );
    let got = reader.await.expect("healthy reader");
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let stats = b.handle.stats();
    assert_eq!(stats.messages.slow_consumers_disconnected, 1);
    assert!(stats.messages.publisher_pauses > 0);
    assert!(stats.drops.slow_consumer > 0, "owed messages counted");
}

/// A persistent session's stuck consumer: its queue and in-flight messages are parked
/// when it is cut, and after reconnecting it gets every message in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_stuck_consumer_gets_its_messages_after_reconnect() {
    const N: u32 = 300;
    let t = target(|c| {
        c.max_pending_messages = 20;
        c.slow_consumer_timeout = Duration::from_secs(1);
    })
    .await;
    let Some(b) = t.broker.as_ref() else { return };
    let mut stuck = t.open(conf::Via::Tcp, Ver::V4).await;
    let mut conn = conf::Conn::new("parked-stuck");
    conn.clean = false;
    assert_eq!(stuck.connect(conn.clone()).await.code, 0);
    stuck.subscribe("park/#", 1).await;
    let flood = Flood::start(b, "park/x", N).await;
    flood.all_acked(N).await;
    stuck.closed().await;
    assert_eq!(b.handle.stats().messages.slow_consumers_disconnected, 1);
    let mut back = t.open(conf::Via::Tcp, Ver::V4).await;
    let ack = back.connect(conn).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < N as usize {
        let m = back.next_msg().await;
        back.puback(m.pkid).await;
        got.push(index(&m.payload));
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "in order, none lost");
    assert_eq!(b.handle.stats().drops.slow_consumer, 0);
}

/// Outbound QoS 2 on the link's own packet ids: a client that answers PUBREC and
/// PUBCOMP out of order completes every exchange, and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_qos2_acked_out_of_order() {
    let t = target(|_| {}).await;
    if t.external() {
        return;
    }
    let topic = conf::unique("q2/");
    let mut sub = t.connect(conf::Via::Tcp, Ver::V5, "q2-sub").await;
    sub.subscribe(&topic, 2).await;
    let mut publ = t.connect(conf::Via::Tcp, Ver::V5, "q2-pub").await;
    let send = |i: u8| payload(u32::from(i));
    for i in 0..4u8 {
        let pkid = publ.publish(&topic, &send(i), 2, false).await;
        publ.expect(|p| matches!(p, In::PubRec { pkid: id, .. } if *id == pkid))
            .await;
        publ.pubrel(pkid).await;
    }
    let mut msgs = Vec::new();
    for i in 0..4 {
        let m = sub.next_msg().await;
        assert_eq!((m.qos, index(&m.payload)), (2, i));
        msgs.push(m.pkid);
    }
    for &pkid in msgs.iter().rev() {
        sub.pubrec(pkid).await;
    }
    for _ in 0..4 {
        sub.expect(|p| matches!(p, In::PubRel { .. })).await;
    }
    for &pkid in [msgs[2], msgs[0], msgs[3], msgs[1]].iter() {
        sub.pubcomp(pkid).await;
    }
    let pkid = publ.publish(&topic, &send(4), 2, false).await;
    publ.expect(|p| matches!(p, In::PubRec { pkid: id, .. } if *id == pkid))
        .await;
    publ.pubrel(pkid).await;
    let m = sub.next_msg().await;
    assert_eq!((m.qos, index(&m.payload)), (2, 4));
    sub.pubrec(m.pkid).await;
    sub.expect(|p| matches!(p, In::PubRel { pkid, .. } if *pkid == m.pkid))
        .await;
    sub.pubcomp(m.pkid).await;
}

/// QoS 0 messages are never waited for: past `mqtt.max_pending_messages` waiting, they
/// are dropped and counted (`drops.slow_consumer`); nothing else is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_past_the_bound_is_dropped_and_counted() {
    let t = target(|c| c.max_pending_messages = 10).await;
    let Some(b) = t.broker.as_ref() else { return };
    let mut sub = t.connect(conf::Via::Tcp, Ver::V4, "mixed-sub").await;
    sub.subscribe("mix/#", 1).await;
    let mut publ = t.connect(conf::Via::Tcp, Ver::V4, "mixed-pub").await;
    // 100 in flight and unacknowledged, one waiting behind them.
    for i in 0..101 {
        publ.publish_acked("mix/1", &payload(i)).await;
    }
    // Queued behind the waiting QoS 1 message: 9 fit, 41 are dropped.
    for i in 0..50 {
        publ.publish("mix/0", &payload(1000 + i), 0, false).await;
    }
    eventually("QoS 0 drops counted", || async {
        (b.handle.stats().drops.slow_consumer >= 41).then_some(())
    })
    .await;
    let (mut qos1, mut qos0) = (Vec::new(), Vec::new());
    while qos1.len() + qos0.len() < 110 {
        let m = sub.next_msg().await;
        if m.qos == 1 {
            sub.puback(m.pkid).await;
            qos1.push(index(&m.payload));
        } else {
            qos0.push(index(&m.payload));
        }
    }
    assert_eq!(qos1, (0..101).collect::<Vec<_>>());
    assert_eq!(qos0, (1000..1009).collect::<Vec<_>>());
    assert_eq!(b.handle.stats().drops.slow_consumer, 41);
    assert!(sub.msgs_within(Duration::from_millis(200)).await.is_empty());
}

/// The one loss fleetmq cannot prevent: a subscriber's connection that takes nothing
/// from the router (here: its write buffer is full, its client stopped reading) while
/// publishers route past the end of the router's bounded per-filter log. rumqttd moves
/// the reader to the head of the log without a word; fleetmq sees the step in the log
/// offsets of the deliveries that follow and counts every skipped message
/// (`drops.slow_consumer`), so nothing is lost silently: what the subscriber got plus
/// what was counted is what was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_router_log_skipped_are_counted() {
    // 100 KiB messages: a hundred in flight are more than the sockets' buffers and the
    // 1 MiB write buffer hold, so the connection stops waking the router; the log holds
    // about four of them.
    const N: u32 = 400;
    const BIG: usize = 100 * 1024;
    let t = conf::Target::with(|c| {
        c.router_segment_size = 1024;
        c.max_outbound_bytes = 1 << 20;
    })
    .await;
    let Some(b) = t.broker.as_ref() else { return };
    let mut sub = t.connect(conf::Via::Tcp, Ver::V4, "blocked-reader").await;
    sub.subscribe("skip/#", 1).await;
    let mut publ = t.connect(conf::Via::Tcp, Ver::V4, "big-publisher").await;
    for i in 0..N {
        let mut p = vec![0u8; BIG];
        p[..4].copy_from_slice(&i.to_be_bytes());
        publ.publish_acked("skip/a", &p).await;
    }
    let mut got = Vec::new();
    while let Some(m) = sub.next_msg_within(Duration::from_secs(2)).await {
        sub.puback(m.pkid).await;
        got.push(index(&m.payload));
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    let counted = b.handle.stats().drops.slow_consumer;
    assert!(got.len() < N as usize, "the log was outrun (test premise)");
    assert_eq!(
        got.len() as u64 + counted,
        u64::from(N),
        "every message either delivered or counted"
    );
}
