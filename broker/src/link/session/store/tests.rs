//! Unit tests of the parked-session index, the queued copies and the parking window,
//! over a real redb file.

use super::*;
use fleetmq_storage::MessageProperties;
use rumqttd::protocol::PublishProperties;

use crate::link::codec::framing::PublishMeta;
use crate::link::codec::origin::{Origin, Routing};
use crate::link::session::resume;

fn sub(filter: &str, qos: u8, id: Option<u32>) -> SessionSubscription {
    SessionSubscription {
        filter: filter.to_owned(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
        id,
    }
}

fn record(key: &str, subscriptions: Vec<SessionSubscription>) -> SessionRecord {
    SessionRecord {
        key: key.to_owned(),
        client_id: key.to_owned(),
        subscriptions,
        expiry_s: NEVER,
        disconnected_at_ms: Some(1),
        inbound_qos2: Vec::new(),
        outbound_pubrels: Vec::new(),
    }
}

fn incoming(topic: &str) -> Incoming<'_> {
    Incoming {
        topic,
        payload: b"m",
        qos: 1,
        retain: false,
        conn_id: 1,
    }
}

/// The check as ingress runs it; the arrival number the routed header carries.
async fn enqueue(s: &SessionStore, m: Incoming<'_>, stats: &Stats) -> Option<u64> {
    enqueue_with(s, m, None, stats).await
}

async fn enqueue_with(
    s: &SessionStore,
    m: Incoming<'_>,
    props: Option<PublishProperties>,
    stats: &Stats,
) -> Option<u64> {
    let origin = Origin {
        qos: m.qos,
        conn_id: 1,
        at_ms: 0,
        arrival: None,
        message: 0,
    };
    let meta = PublishMeta {
        qos: m.qos,
        pkid: 1,
        dup: false,
        retain: false,
    };
    let routing = Routing::new(meta, m.topic, origin, m.payload, props);
    let (mut p, _) = s.enqueue_matching(m, routing, stats).await;
    Origin::take(&mut p.payload).and_then(|o| o.arrival)
}

fn sessions(records: Vec<SessionRecord>) -> (tempfile::TempDir, SessionStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    for r in &records {
        store.put_session(r).expect("put");
    }
    (dir, SessionStore::load(store, 100, records, None, true))
}

/// A publish looks only at the parked sessions whose filters can match: with
/// thousands parked, a topic one of them subscribed to touches that one.
#[test]
fn a_publish_looks_only_at_matching_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mut records: Vec<SessionRecord> = (0..5000)
        .map(|i| {
            record(
                &format!("c:{i}"),
                vec![sub(&format!("dev/{i}/cmd/#"), 1, None)],
            )
        })
        .collect();
    records.push(record("c:all", vec![sub("dev/+/cmd/reboot", 1, None)]));
    records.push(record("c:shared", vec![sub("$share/g/dev/#", 1, None)]));
    let s = SessionStore::load(store, 100, records, None, true);
    let set = s.parked();
    let mut got: Vec<&str> = set.index.matching("dev/7/cmd/reboot").into_iter().collect();
    got.sort_unstable();
    assert_eq!(got, ["c:7", "c:all"]);
    assert!(set.index.matching("telemetry/7").is_empty());
    drop(set);
    s.unpark("c:7");
    assert_eq!(
        s.parked()
            .index
            .matching("dev/7/cmd/reboot")
            .into_iter()
            .collect::<Vec<_>>(),
        ["c:all"]
    );
}

/// The queued copy keeps the publisher's properties, not fleetmq's internal ones,
/// and carries the identifiers of the session's own matching subscriptions.
#[tokio::test]
async fn queued_copy_keeps_properties_and_session_ids() {
    let subs = vec![
        sub("p/+", 1, Some(7)),
        sub("p/#", 2, Some(9)),
        sub("q", 1, Some(3)),
    ];
    let (_dir, s) = sessions(vec![record("c:a", subs)]);
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/a".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
        user_properties: vec![
            ("k".into(), "v".into()),
            (resume::RETAIN_MARK.into(), String::new()),
            ("k".into(), "w".into()),
        ],
        ..PublishProperties::default()
    };
    let stats = Stats::default();
    enqueue_with(&s, incoming("p/x"), Some(props), &stats).await;
    let q = s.queued("c:a", u64::MAX).await;
    assert_eq!(q.len(), 1);
    let m = &q[0].1;
    assert_eq!(m.qos, 1);
    let p = &m.properties;
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("reply/a"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(
        p.user_properties,
        [
            ("k".to_owned(), "v".to_owned()),
            ("k".to_owned(), "w".to_owned())
        ]
    );
    assert_eq!(p.subscription_ids, [7, 9]);
    let left = m.expires_at_ms.expect("expiry kept") - m.queued_at_ms;
    assert_eq!(left, 60_000);
    let out = publish_properties(p, Some(59)).expect("properties");
    assert_eq!(out.subscription_identifiers, [7, 9]);
    assert_eq!(out.message_expiry_interval, Some(59));
    assert_eq!(
        publish_properties(&MessageProperties::default(), None),
        None
    );
}

fn owed(payload: &[u8], pkid: Option<u16>) -> QueuedMessage {
    QueuedMessage {
        topic: "w/x".into(),
        payload: payload.to_vec(),
        qos: 1,
        dup: pkid.is_some(),
        retain: false,
        queued_at_ms: 0,
        expires_at_ms: None,
        properties: MessageProperties::default(),
        pkid,
    }
}

async fn payloads(s: &SessionStore, key: &str) -> Vec<(Vec<u8>, Option<u16>)> {
    s.queued(key, u64::MAX)
        .await
        .into_iter()
        .map(|(_, m)| (m.payload, m.pkid))
        .collect()
}

/// The parking window: a message checked while the session was connected was stored by
/// its publisher, one checked after `begin_park` too; when the router also handed both
/// to the leaving link, `finish_park` writes them at the same slots, so each is queued
/// once, in arrival order, the one in flight with its packet id. What no publisher
/// stored (a retained message sent at SUBSCRIBE) gets a fresh slot.
#[tokio::test]
async fn message_in_the_parking_window_is_queued_once() {
    let subs = vec![sub("w/#", 1, None)];
    let rec = record("c:w", subs.clone());
    let (_dir, s) = sessions(vec![]);
    s.save(rec.clone()).await;
    let stats = Stats::default();
    s.go_live("c:w", &subs, 7);
    let before = enqueue(&s, incoming("w/x"), &stats)
        .await
        .expect("numbered");
    assert_eq!(payloads(&s, "c:w").await.len(), 1, "stored while connected");
    s.begin_park("c:w", &subs, NEVER);
    let after = enqueue(&s, incoming("w/x"), &stats)
        .await
        .expect("numbered");
    assert!(before < after);
    assert_eq!(payloads(&s, "c:w").await.len(), 2);
    // The router handed both to the leaving link before it left; the first was in
    // flight on packet id 5; a retained message it had not sent yet is owed too.
    let retained = s.next_slot();
    let leftovers = vec![
        (before, owed(b"before", Some(5))),
        (after, owed(b"after", None)),
        (retained, owed(b"retained", None)),
    ];
    s.finish_park(rec, Vec::new(), leftovers, &stats).await;
    assert_eq!(
        payloads(&s, "c:w").await,
        [
            (b"m".to_vec(), Some(5)),
            (b"m".to_vec(), None),
            (b"retained".to_vec(), None)
        ]
    );
    // What the client acknowledged before it left goes.
    s.finish_park(record("c:w", subs), vec![before], Vec::new(), &stats)
        .await;
    assert_eq!(payloads(&s, "c:w").await.len(), 2);
}

/// While the client is connected, each message its subscriptions take is stored and
/// recorded until the router delivers it. Resumed: a live delivery numbered below the
/// counter at going live, that the parked subscriptions take, is in the stored queue
/// and left out; the queue is read up to that counter.
#[tokio::test]
async fn a_connected_session_stores_and_records_what_it_takes() {
    let subs = vec![sub("w/#", 1, None), sub("q0/#", 0, None)];
    let (_dir, s) = sessions(vec![]);
    s.save(record("c:w", subs.clone())).await;
    let stats = Stats::default();
    let (ledger, window, _) = s.go_live("c:w", &subs, 7);
    assert!(window.is_none(), "a new session was not parked");
    let first = enqueue(&s, incoming("w/1"), &stats)
        .await
        .expect("numbered");
    let second = enqueue(&s, incoming("w/2"), &stats)
        .await
        .expect("numbered");
    enqueue(&s, incoming("other"), &stats).await;
    // A QoS 0 subscription gets no QoS 1 copy to keep.
    enqueue(&s, incoming("q0/x"), &stats).await;
    // Its own message on a No Local subscription is not stored for it.
    let mut no_local = subs.clone();
    no_local.push(SessionSubscription {
        no_local: true,
        ..sub("own/#", 1, None)
    });
    s.live_subscriptions("c:w", &no_local);
    enqueue(
        &s,
        Incoming {
            conn_id: 7,
            ..incoming("own/x")
        },
        &stats,
    )
    .await;
    s.live_subscriptions("c:w", &subs);
    assert_eq!(ledger.lock().len(), 3);
    let slots: Vec<u64> = s
        .queued("c:w", u64::MAX)
        .await
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(slots, [first, second], "stored at their arrival numbers");
    ledger.lock().delivered([second]);
    assert_eq!(ledger.lock().len(), 2);
    s.begin_park("c:w", &subs, NEVER);
    let third = enqueue(&s, incoming("w/3"), &stats)
        .await
        .expect("numbered");
    assert_eq!(ledger.lock().len(), 2, "parked: no longer recorded");
    let (ledger, window, since) = s.go_live("c:w", &subs, 8);
    let window = window.expect("it was parked");
    assert!(window.queued(first, "w/1"));
    assert!(window.queued(third, "w/3"));
    assert!(!window.queued(third, "q0/x"));
    let fourth = enqueue(&s, incoming("w/4"), &stats)
        .await
        .expect("numbered");
    assert!(!window.queued(fourth, "w/4"));
    assert!(fourth >= since);
    let resumed: Vec<u64> = s
        .queued("c:w", since)
        .await
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(resumed, [first, second, third]);
    ledger.lock().delivered([fourth]);
    // A discarded session records and stores nothing.
    s.discard("c:w").await;
    enqueue(&s, incoming("w/6"), &stats).await;
    assert_eq!(ledger.lock().len(), 0);
    assert!(s.queued("c:w", u64::MAX).await.is_empty());
}

/// Arrival numbers start past every stored slot after a restart.
#[tokio::test]
async fn arrival_numbers_start_past_stored_slots() {
    let subs = vec![sub("w/#", 1, None)];
    let (_dir, s) = sessions(vec![record("c:w", subs)]);
    let stats = Stats::default();
    let a = enqueue(&s, incoming("w/1"), &stats)
        .await
        .expect("numbered");
    let max = s.store.max_queued_seq().expect("read");
    assert_eq!(max, Some(a));
    let reloaded = SessionStore::load(s.store.clone(), 100, Vec::new(), max, true);
    assert_eq!(reloaded.arrival_mark(), a + 1);
}

/// A ledger keeps at most its cap: the oldest entries go (they are stored).
#[test]
fn a_ledger_is_bounded() {
    let ledger = crate::link::session::ledger::SharedLedger::new(3);
    let meta = PublishMeta {
        qos: 1,
        pkid: 1,
        dup: false,
        retain: false,
    };
    let o = Origin {
        qos: 1,
        conn_id: 1,
        at_ms: 0,
        arrival: None,
        message: 0,
    };
    let record = |a: u64| {
        let routed = Routing::new(meta, "t", o, b"x", None).finish(Some(a));
        ledger.lock().record(a, routed);
    };
    for a in 0..5 {
        record(a);
    }
    assert_eq!(ledger.lock().len(), 3);
    // 0 and 1 were evicted; the router still delivers 1, and 3 (in the middle).
    ledger.lock().delivered([1, 3]);
    assert_eq!(ledger.lock().len(), 2);
    record(5);
    record(6);
    assert_eq!(ledger.lock().len(), 3);
    let all = ledger.lock().take_where(|_, _| true);
    let left: Vec<u64> = all
        .into_iter()
        .filter_map(|(mut p, _)| Origin::take(&mut p.payload).and_then(|o| o.arrival))
        .collect();
    assert_eq!(left, [4, 5, 6]);
}
