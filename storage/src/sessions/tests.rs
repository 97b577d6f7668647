use proptest::prelude::*;

use super::*;
use crate::test_support::temp_store;

pub(crate) fn session() -> SessionRecord {
    SessionRecord {
        key: "c:sensor".into(),
        client_id: "sensor".into(),
        subscriptions: vec![SessionSubscription {
            filter: "a/+".into(),
            qos: 1,
            no_local: false,
            retain_as_published: true,
            retain_handling: 2,
            id: None,
        }],
        expiry_s: 300,
        disconnected_at_ms: Some(7),
        inbound_qos2: vec![3, 400],
        outbound_pubrels: Vec::new(),
    }
}

/// What V1 could hold.
pub(crate) fn queued(payload: &[u8]) -> QueuedMessage {
    QueuedMessage {
        topic: "a/b".into(),
        payload: payload.to_vec(),
        qos: 2,
        dup: true,
        retain: false,
        queued_at_ms: 9,
        expires_at_ms: None,
        properties: MessageProperties::default(),
        pkid: None,
    }
}

/// Every V2 field set.
pub(crate) fn queued_v5() -> QueuedMessage {
    QueuedMessage {
        retain: true,
        expires_at_ms: Some(2000),
        properties: MessageProperties {
            payload_format_indicator: Some(1),
            content_type: Some("t".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(vec![0xc0]),
            user_properties: vec![("k".into(), "v".into())],
            subscription_ids: vec![42, 300],
        },
        ..queued(b"hi")
    }
}

fn insert(key: &str, seq: u64, payload: u8, trim: bool) -> QueueOp {
    QueueOp::Insert {
        key: key.into(),
        seq,
        msg: queued(&[payload]),
        trim,
    }
}

fn payloads(store: &Store, key: &str) -> Vec<(u64, u8)> {
    let q = store.queued(key).unwrap();
    q.iter().map(|(s, m)| (*s, m.payload[0])).collect()
}

#[test]
fn queue_keeps_slots_drops_oldest_marks_sent_and_goes_with_its_session() {
    let (_dir, store) = temp_store();
    let key = "c:sensor";
    assert_eq!(store.list_sessions().unwrap(), vec![]);
    assert_eq!(store.queued(key).unwrap(), vec![]);
    assert_eq!(store.max_queued_seq().unwrap(), None);
    // Nothing is stored for a session that does not exist.
    let orphan = [insert("c:gone", 1, b'z', true)];
    assert_eq!(store.apply_queue_ops(&orphan, 3, true).unwrap(), 0);
    assert_eq!(store.queued("c:gone").unwrap(), vec![]);
    // Slots are the broker's (arrival numbers): sparse, in order; a connected
    // session's inserts are not trimmed, a parked one's are.
    let mut ops = vec![QueueOp::PutSession(session())];
    ops.extend([10, 12, 15, 20].map(|s| insert(key, s, s as u8, false)));
    assert_eq!(store.apply_queue_ops(&ops, 3, true).unwrap(), 0);
    assert_eq!(payloads(&store, key).len(), 4);
    assert_eq!(
        store
            .apply_queue_ops(&[insert(key, 21, 21, true)], 3, true)
            .unwrap(),
        2
    );
    assert_eq!(payloads(&store, key), [(15, 15), (20, 20), (21, 21)]);
    assert_eq!(store.max_queued_seq().unwrap(), Some(21));
    // A slot written twice keeps the first; marks and removals, not durable.
    let ops = [
        insert(key, 15, 99, true),
        QueueOp::Mark {
            key: key.into(),
            seq: 20,
            pkid: 9,
        },
        QueueOp::Mark {
            key: key.into(),
            seq: 3,
            pkid: 8,
        },
        QueueOp::Remove {
            key: key.into(),
            seq: 21,
        },
    ];
    store.apply_queue_ops(&ops, 3, false).unwrap();
    let q = store.queued(key).unwrap();
    let sent: Vec<_> = q.iter().map(|(s, m)| (*s, m.payload[0], m.pkid)).collect();
    assert_eq!(sent, [(15, 15, None), (20, 20, Some(9))]);
    assert!(q[1].1.dup);
    assert_eq!(store.list_sessions().unwrap(), vec![session()]);
    assert!(store.delete_session(key).unwrap());
    assert_eq!(store.queued(key).unwrap(), vec![]);
    assert_eq!(store.get_session(key).unwrap(), None);
}

/// A parking connection's upsert keeps what a publisher stored at the slot and adds
/// DUP and the packet id; an empty slot gets its message; then the queue is cut.
#[test]
fn upsert_keeps_stored_content_and_fills_empty_slots() {
    let (_dir, store) = temp_store();
    let key = "c:sensor";
    store.put_session(&session()).unwrap();
    store
        .apply_queue_ops(&[insert(key, 5, 5, true)], 10, true)
        .unwrap();
    let mut sent = queued(&[50]);
    sent.dup = true;
    sent.pkid = Some(7);
    let ops = [
        QueueOp::Upsert {
            key: key.into(),
            seq: 5,
            msg: sent.clone(),
        },
        QueueOp::Upsert {
            key: key.into(),
            seq: 3,
            msg: queued(&[3]),
        },
        QueueOp::Upsert {
            key: key.into(),
            seq: 8,
            msg: queued(&[8]),
        },
    ];
    assert_eq!(store.apply_queue_ops(&ops, 2, true).unwrap(), 1);
    let q = store.queued(key).unwrap();
    let got: Vec<_> = q.iter().map(|(s, m)| (*s, m.payload[0], m.pkid)).collect();
    assert_eq!(got, [(5, 5, Some(7)), (8, 8, None)]);
    // A publisher's copy arriving after the parking connection wrote the slot
    // leaves it as it is.
    store
        .apply_queue_ops(&[insert(key, 5, 77, true)], 10, true)
        .unwrap();
    assert_eq!(store.queued(key).unwrap()[0].1.pkid, Some(7));
}

fn arb_properties() -> impl Strategy<Value = MessageProperties> {
    (
        prop::option::of(0u8..=1),
        prop::option::of(".{0,8}"),
        prop::option::of(".{0,8}"),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        prop::collection::vec((".{0,4}", ".{0,4}"), 0..3),
        prop::collection::vec(1..=MAX_SUBSCRIPTION_ID, 0..3),
    )
        .prop_map(
            |(format, content_type, response_topic, correlation, user, ids)| MessageProperties {
                payload_format_indicator: format,
                content_type,
                response_topic,
                correlation_data: correlation,
                user_properties: user,
                subscription_ids: ids,
            },
        )
}

proptest! {
    #[test]
    fn session_records_round_trip(
        client_id in ".{0,16}",
        subs in prop::collection::vec(
            (".{0,16}", 0u8..=2, any::<(bool, bool)>(), 0u8..=2,
             prop::option::of(1..=MAX_SUBSCRIPTION_ID)),
            0..4,
        ),
        expiry_s in any::<u32>(),
        disconnected_at_ms in any::<Option<u64>>(),
        inbound_qos2 in prop::collection::vec(1u16.., 0..4),
        outbound_pubrels in prop::collection::vec(1u16.., 0..4),
    ) {
        let s = SessionRecord {
            key: format!("c:{client_id}"),
            client_id,
            subscriptions: subs
                .into_iter()
                .map(|(filter, qos, (no_local, rap), retain_handling, id)| SessionSubscription {
                    filter,
                    qos,
                    no_local,
                    retain_as_published: rap,
                    retain_handling,
                    id,
                })
                .collect(),
            expiry_s,
            disconnected_at_ms,
            inbound_qos2,
            outbound_pubrels,
        };
        let bytes = encode_session(&s).unwrap();
        prop_assert_eq!(decode_session(&s.key, &bytes).unwrap(), s);
    }

    #[test]
    fn queued_records_round_trip(
        topic in ".{0,16}",
        payload in prop::collection::vec(any::<u8>(), 0..64),
        qos in 1u8..=2,
        flags in any::<(bool, bool)>(),
        queued_at_ms in any::<u64>(),
        expires_at_ms in any::<Option<u64>>(),
        properties in arb_properties(),
        pkid in prop::option::of(1u16..),
    ) {
        let m = QueuedMessage {
            topic,
            payload,
            qos,
            dup: flags.0,
            retain: flags.1,
            queued_at_ms,
            expires_at_ms,
            properties,
            pkid,
        };
        let bytes = encode_queued("c:sensor", &m).unwrap();
        prop_assert_eq!(decode_queued("c:sensor", &bytes).unwrap(), m);
    }
}
