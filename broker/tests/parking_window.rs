//! The parking window (issue #3): a persistent session's client that leaves in the middle
//! of a QoS 1 flood gets, after it resumes, every message a publisher was acknowledged
//! for — exactly once, except that a message still in flight (sent, its PUBACK not
//! processed) when the connection ended may come again with DUP=1 — and in each
//! publisher's order [MQTT-4.6.0-5]: a message first arrives after every earlier one of
//! its publisher.
//!
//! The messages at risk are those a publisher checked against the parked sessions just
//! before the session was parked, but that the router had not yet handed to the leaving
//! connection (still in the publisher's batch, in the router's event channel or in a
//! filter log): nobody queued them. Several publishers and many abrupt disconnects make
//! that window show within seconds on two cores.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::conf::{unique, Client, In, Target, Ver, Via};

const PUBLISHERS: usize = 4;
/// QoS 1 publishes a publisher has outstanding at a time.
const WINDOW: usize = 8;
/// Between a publisher's bursts.
const PAUSE_MS: u64 = 1;
const CYCLES: usize = 60;
/// How long a reply may take on a machine busy with other builds (a bound, not a wait).
const PATIENCE: Duration = Duration::from_secs(30);

/// Publishes QoS 1 bursts on `topic` until `stop`; returns the payloads PUBACKed.
async fn flood(
    t: Arc<Target>,
    ver: Ver,
    topic: String,
    who: usize,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut c = t.connect(Via::Tcp, ver, &unique("pw-pub")).await;
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut waiting: HashMap<u16, String> = HashMap::new();
        for _ in 0..WINDOW {
            let payload = format!("{who}-{n}");
            n += 1;
            let pkid = c.publish(&topic, payload.as_bytes(), 1, false).await;
            waiting.insert(pkid, payload);
        }
        while !waiting.is_empty() {
            match c.recv_within(PATIENCE).await {
                Some(In::PubAck { pkid, reason }) => {
                    assert_eq!(reason, 0, "PUBACK reason");
                    if let Some(p) = waiting.remove(&pkid) {
                        acked.push(p);
                    }
                }
                Some(_) => {}
                None => panic!("publisher {who}: PUBACKs stopped coming"),
            }
        }
        // A flood the subscriber keeps up with, so its backlog stays small.
        tokio::time::sleep(Duration::from_millis(PAUSE_MS)).await;
    }
    c.disconnect(0).await;
    acked
}

/// What the persistent subscriber saw: payload → how often, whether every copy after
/// the first carried DUP, and whether each message first came after every earlier one
/// of its publisher.
#[derive(Default)]
struct Seen {
    count: HashMap<String, usize>,
    undue_duplicates: Vec<String>,
    /// Publisher → the highest message number seen from it.
    highest: HashMap<String, u64>,
    out_of_order: Vec<String>,
}

impl Seen {
    fn record(&mut self, payload: &[u8], dup: bool) {
        let p = String::from_utf8_lossy(payload).into_owned();
        let n = self.count.entry(p.clone()).or_default();
        *n += 1;
        if *n > 1 && !dup {
            self.undue_duplicates.push(p.clone());
        }
        if *n == 1 {
            let (who, num) = p.split_once('-').expect("who-n");
            let num: u64 = num.parse().expect("message number");
            let highest = self.highest.entry(who.to_owned()).or_insert(num);
            if num < *highest {
                self.out_of_order.push(format!("{p} after {who}-{highest}"));
            }
            *highest = (*highest).max(num);
        }
    }
}

/// Connects the persistent subscriber; whether its session was resumed.
async fn connect(t: &Target, id: &str, ver: Ver) -> (Client, bool) {
    t.connect_persistent(ver, id, PATIENCE).await
}

/// Takes (and acknowledges) PUBLISHes for `slice`, or until none came for `quiet`.
async fn take(c: &mut Client, seen: &mut Seen, slice: Duration, quiet: Duration) -> usize {
    let until = tokio::time::Instant::now() + slice;
    let mut got = 0;
    while tokio::time::Instant::now() < until {
        let Some(m) = c.next_msg_within(quiet).await else {
            break;
        };
        if m.qos > 0 {
            c.puback(m.pkid).await;
        }
        seen.record(&m.payload, m.dup);
        got += 1;
    }
    got
}

async fn parking_window(ver: Ver, durable: bool) {
    // Queues never overflow here (that loss is counted, and not this test's subject).
    let t = Arc::new(
        Target::with(|c| {
            c.max_queued_messages = 1_000_000;
            c.durable_connected_sessions = durable;
        })
        .await,
    );
    if t.skip_external("many abrupt disconnects of one session") {
        return;
    }
    let topic = unique("pw/t");
    let id = unique("pw-sub");
    let mut seen = Seen::default();

    let (mut sub, _) = connect(&t, &id, ver).await;
    sub.subscribe(&topic, 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|who| tokio::spawn(flood(t.clone(), ver, topic.clone(), who, stop.clone())))
        .collect();

    for cycle in 0..CYCLES {
        // Leave after a varying while, mid-flood, without DISCONNECT.
        let slice = Duration::from_millis(10 + (cycle as u64 * 7) % 40);
        take(&mut sub, &mut seen, slice, PATIENCE).await;
        sub.drop_connection().await;
        let (next, resumed) = connect(&t, &id, ver).await;
        assert!(resumed, "cycle {cycle}: session resumed");
        sub = next;
    }
    stop.store(true, Ordering::Relaxed);
    // Keep reading while the publishers finish their last bursts: a subscriber that
    // reads nothing becomes congested and pauses them (`congestion.rs`) until it is
    // cut as a stuck consumer after `slow_consumer_timeout_s` (30 s), which is what made
    // this test take 35 s once in a while.
    while !publishers.iter().all(|p| p.is_finished()) {
        take(
            &mut sub,
            &mut seen,
            Duration::from_millis(20),
            Duration::from_millis(20),
        )
        .await;
    }
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.expect("publisher"));
    }
    // Everything still owed arrives now.
    take(
        &mut sub,
        &mut seen,
        Duration::from_secs(600),
        Duration::from_secs(2),
    )
    .await;
    sub.disconnect(0).await;

    let lost: Vec<&String> = acked
        .iter()
        .filter(|p| !seen.count.contains_key(*p))
        .collect();
    assert!(
        acked.len() > 1000,
        "the flood was too thin: {} acked",
        acked.len()
    );
    assert!(
        lost.is_empty() && seen.undue_duplicates.is_empty(),
        "{} of {} acknowledged messages lost (first: {:?}); {} duplicates without DUP (first: {:?})",
        lost.len(),
        acked.len(),
        lost.iter().take(5).collect::<Vec<_>>(),
        seen.undue_duplicates.len(),
        seen.undue_duplicates.iter().take(5).collect::<Vec<_>>(),
    );
    assert!(
        seen.out_of_order.is_empty(),
        "{} messages first came after a later one of their publisher (first: {:?})",
        seen.out_of_order.len(),
        seen.out_of_order.iter().take(5).collect::<Vec<_>>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_or_doubled_across_abrupt_leaves_v4() {
    parking_window(Ver::V4, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_or_doubled_across_abrupt_leaves_v5() {
    parking_window(Ver::V5, true).await;
}

/// The same with `mqtt.durable_connected_sessions = false`: a connected session's
/// messages reach its queue only when it parks (from its outbound queue, the router's
/// leftovers and its ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_or_doubled_across_abrupt_leaves_not_durable() {
    parking_window(Ver::V4, false).await;
}
