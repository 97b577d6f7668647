//! Unit tests of the parked-session index, the queued copies and the parking window,
//! over a real redb file.

use super::*;

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

fn incoming<'a>(topic: &'a str, props: Option<&'a PublishProperties>) -> Incoming<'a> {
    Incoming {
        topic,
        payload: b"m",
        qos: 1,
        retain: false,
        props,
    }
}

fn sessions(records: Vec<SessionRecord>) -> (tempfile::TempDir, SessionStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    for r in &records {
        store.put_session(r).expect("put");
    }
    (dir, SessionStore::load(store, 100, records))
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
    let s = SessionStore::load(store, 100, records);
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
            (session_link::RETAIN_MARK.into(), String::new()),
            ("k".into(), "w".into()),
        ],
        ..PublishProperties::default()
    };
    let stats = Stats::default();
    s.enqueue_matching(incoming("p/x", Some(&props)), &stats)
        .await;
    let q = s.queued("c:a").await;
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

/// The parking window: a message checked after `begin_park` is queued by its
/// publisher; when the router also handed it to the leaving link, `finish_park`
/// must not queue it again. One checked before `begin_park` is queued by the link.
#[tokio::test]
async fn message_in_the_parking_window_is_queued_once() {
    let subs = vec![sub("w/#", 1, None)];
    let rec = record("c:w", subs.clone());
    let (_dir, s) = sessions(vec![]);
    s.save(rec.clone()).await;
    let stats = Stats::default();
    let copy = |payload: &[u8], arrival| Unacked {
        msg: QueuedMessage {
            topic: "w/x".into(),
            payload: payload.to_vec(),
            qos: 1,
            dup: false,
            retain: false,
            queued_at_ms: 0,
            expires_at_ms: None,
            properties: MessageProperties::default(),
            pkid: None,
        },
        arrival,
    };
    // Checked while the client was connected: nobody queued it.
    let before = s.enqueue_matching(incoming("w/x", None), &stats).await;
    let mark = s.begin_park("c:w", &subs, NEVER);
    // Checked after parking: the publisher queued it.
    let after = s.enqueue_matching(incoming("w/x", None), &stats).await;
    assert!(before.expect("numbered") < after.expect("numbered"));
    assert_eq!(s.queued("c:w").await.len(), 1);
    // The router handed both to the leaving link before it left.
    let leftovers = vec![copy(b"before", before), copy(b"after", after)];
    s.finish_park(rec, leftovers, Vec::new(), mark, &stats)
        .await;
    let mut q: Vec<Vec<u8>> = s
        .queued("c:w")
        .await
        .into_iter()
        .map(|(_, m)| m.payload)
        .collect();
    // (The publisher's copy was written first; see the module docs on order.)
    q.sort();
    assert_eq!(q, [b"before".to_vec(), b"m".to_vec()], "each message once");
}
