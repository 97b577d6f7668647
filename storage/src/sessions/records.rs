//! The on-disk versions of session records and queued messages (postcard enums, one
//! variant per format version; see `crate::codec`). Older versions still decode.
//!
//! Sessions: V1 had no subscription identifiers (V2 adds them); V3 adds the packet ids of
//! outbound QoS 2 exchanges waiting for the client's PUBCOMP. Queued messages: V1 kept
//! topic, payload, QoS and DUP only; V2 adds RETAIN, the expiry time and the MQTT 5
//! PUBLISH properties; V3 adds the packet id the message was in flight with.

use serde::{Deserialize, Serialize};

use super::{QueuedMessage, SessionRecord, SessionSubscription, MAX_SUBSCRIPTION_ID};
use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::model::MessageProperties;
use crate::schema::{SESSIONS_TABLE, SESSION_QUEUE_TABLE as QUEUE_TABLE};

#[derive(Serialize, Deserialize)]
enum StoredSession {
    V1(SessionV1),
    V2(SessionV2),
    V3(SessionV3),
}

/// V2 with the outbound PUBRELs awaiting PUBCOMP.
#[derive(Serialize, Deserialize)]
struct SessionV3 {
    client_id: String,
    subscriptions: Vec<SubscriptionV2>,
    expiry_s: u32,
    disconnected_at_ms: Option<u64>,
    inbound_qos2: Vec<u16>,
    outbound_pubrels: Vec<u16>,
}

/// V1 with subscription identifiers.
#[derive(Serialize, Deserialize)]
struct SessionV2 {
    client_id: String,
    subscriptions: Vec<SubscriptionV2>,
    expiry_s: u32,
    disconnected_at_ms: Option<u64>,
    inbound_qos2: Vec<u16>,
}

#[derive(Serialize, Deserialize)]
struct SubscriptionV2 {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct SessionV1 {
    client_id: String,
    subscriptions: Vec<SubscriptionV1>,
    expiry_s: u32,
    disconnected_at_ms: Option<u64>,
    inbound_qos2: Vec<u16>,
}

#[derive(Serialize, Deserialize)]
struct SubscriptionV1 {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
}

#[derive(Serialize, Deserialize)]
enum StoredQueued {
    V1(QueuedV1),
    V2(QueuedV2),
    V3(QueuedV3),
}

/// V2 with the packet id it was in flight with.
#[derive(Serialize, Deserialize)]
struct QueuedV3 {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    dup: bool,
    retain: bool,
    queued_at_ms: u64,
    expires_at_ms: Option<u64>,
    payload_format_indicator: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
    subscription_ids: Vec<u32>,
    pkid: Option<u16>,
}

/// V1 with RETAIN, the expiry time and the MQTT 5 properties.
#[derive(Serialize, Deserialize)]
struct QueuedV2 {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    dup: bool,
    retain: bool,
    queued_at_ms: u64,
    expires_at_ms: Option<u64>,
    payload_format_indicator: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
    subscription_ids: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct QueuedV1 {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    dup: bool,
    queued_at_ms: u64,
}

fn session_at(key: &str) -> Location<'_> {
    Location {
        table: SESSIONS_TABLE,
        key,
    }
}

fn queue_at(key: &str) -> Location<'_> {
    Location {
        table: QUEUE_TABLE,
        key,
    }
}

pub(super) fn encode_session(s: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    let v3 = SessionV3 {
        client_id: s.client_id.clone(),
        subscriptions: s
            .subscriptions
            .iter()
            .map(|s| SubscriptionV2 {
                filter: s.filter.clone(),
                qos: s.qos,
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
                retain_handling: s.retain_handling,
                id: s.id,
            })
            .collect(),
        expiry_s: s.expiry_s,
        disconnected_at_ms: s.disconnected_at_ms,
        inbound_qos2: s.inbound_qos2.clone(),
        outbound_pubrels: s.outbound_pubrels.clone(),
    };
    codec::encode(session_at(&s.key), &StoredSession::V3(v3))
}

pub(super) fn decode_session(key: &str, bytes: &[u8]) -> Result<SessionRecord, StoreError> {
    let at = session_at(key);
    let v3 = match codec::decode(at, bytes)? {
        StoredSession::V1(v1) => SessionV3 {
            client_id: v1.client_id,
            subscriptions: v1
                .subscriptions
                .into_iter()
                .map(|s| SubscriptionV2 {
                    filter: s.filter,
                    qos: s.qos,
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling: s.retain_handling,
                    id: None,
                })
                .collect(),
            expiry_s: v1.expiry_s,
            disconnected_at_ms: v1.disconnected_at_ms,
            inbound_qos2: v1.inbound_qos2,
            outbound_pubrels: Vec::new(),
        },
        StoredSession::V2(v2) => SessionV3 {
            client_id: v2.client_id,
            subscriptions: v2.subscriptions,
            expiry_s: v2.expiry_s,
            disconnected_at_ms: v2.disconnected_at_ms,
            inbound_qos2: v2.inbound_qos2,
            outbound_pubrels: Vec::new(),
        },
        StoredSession::V3(v3) => v3,
    };
    if let Some(bad) = v3.subscriptions.iter().find(|s| {
        s.qos > 2
            || s.retain_handling > 2
            || s.id.is_some_and(|id| id == 0 || id > MAX_SUBSCRIPTION_ID)
    }) {
        return Err(at.corrupt(format!("subscription {:?} has bad options", bad.filter)));
    }
    if v3.inbound_qos2.contains(&0) || v3.outbound_pubrels.contains(&0) {
        return Err(at.corrupt("packet id 0"));
    }
    Ok(SessionRecord {
        key: key.to_owned(),
        client_id: v3.client_id,
        subscriptions: v3
            .subscriptions
            .into_iter()
            .map(|s| SessionSubscription {
                filter: s.filter,
                qos: s.qos,
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
                retain_handling: s.retain_handling,
                id: s.id,
            })
            .collect(),
        expiry_s: v3.expiry_s,
        disconnected_at_ms: v3.disconnected_at_ms,
        inbound_qos2: v3.inbound_qos2,
        outbound_pubrels: v3.outbound_pubrels,
    })
}

pub(super) fn encode_queued(key: &str, m: &QueuedMessage) -> Result<Vec<u8>, StoreError> {
    let p = &m.properties;
    let v3 = QueuedV3 {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        dup: m.dup,
        retain: m.retain,
        queued_at_ms: m.queued_at_ms,
        expires_at_ms: m.expires_at_ms,
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        subscription_ids: p.subscription_ids.clone(),
        pkid: m.pkid,
    };
    codec::encode(queue_at(key), &StoredQueued::V3(v3))
}

pub(super) fn decode_queued(key: &str, bytes: &[u8]) -> Result<QueuedMessage, StoreError> {
    let at = queue_at(key);
    let v3 = match codec::decode(at, bytes)? {
        StoredQueued::V1(v1) => QueuedV3 {
            topic: v1.topic,
            payload: v1.payload,
            qos: v1.qos,
            dup: v1.dup,
            retain: false,
            queued_at_ms: v1.queued_at_ms,
            expires_at_ms: None,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            subscription_ids: Vec::new(),
            pkid: None,
        },
        StoredQueued::V2(v2) => QueuedV3 {
            topic: v2.topic,
            payload: v2.payload,
            qos: v2.qos,
            dup: v2.dup,
            retain: v2.retain,
            queued_at_ms: v2.queued_at_ms,
            expires_at_ms: v2.expires_at_ms,
            payload_format_indicator: v2.payload_format_indicator,
            content_type: v2.content_type,
            response_topic: v2.response_topic,
            correlation_data: v2.correlation_data,
            user_properties: v2.user_properties,
            subscription_ids: v2.subscription_ids,
            pkid: None,
        },
        StoredQueued::V3(v3) => v3,
    };
    if !(1..=2).contains(&v3.qos) {
        return Err(at.corrupt(format!("queued message has qos {}", v3.qos)));
    }
    if let Some(bad) = v3.payload_format_indicator.filter(|&f| f > 1) {
        return Err(at.corrupt(format!("payload format indicator {bad}")));
    }
    if v3.pkid == Some(0) {
        return Err(at.corrupt("queued message has packet id 0"));
    }
    Ok(QueuedMessage {
        topic: v3.topic,
        payload: v3.payload,
        qos: v3.qos,
        dup: v3.dup,
        retain: v3.retain,
        queued_at_ms: v3.queued_at_ms,
        expires_at_ms: v3.expires_at_ms,
        properties: MessageProperties {
            payload_format_indicator: v3.payload_format_indicator,
            content_type: v3.content_type,
            response_topic: v3.response_topic,
            correlation_data: v3.correlation_data,
            user_properties: v3.user_properties,
            subscription_ids: v3.subscription_ids,
        },
        pkid: v3.pkid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::tests::{queued, queued_v5, session};
    use crate::test_support::{hex, unhex};

    // Pinned bytes: a change here means stored sessions would no longer read. Add a
    // version variant instead of editing an existing one.
    const SESSION_V1: &str = "000673656e736f720103612f2b01000102ac02010702039003";
    const SESSION_V2: &str = "010673656e736f720103612f2b01000102012aac02010702039003";
    const SESSION_V3: &str = "020673656e736f720103612f2b01000102012aac0201070203900302050b";
    const QUEUED_V1: &str = "0003612f62026869020109";
    const QUEUED_V2: &str = concat!(
        "01",
        "03612f62",
        "026869",
        "02",
        "01",
        "01",
        "09",
        "01d00f",
        "0101",
        "010174",
        "010172",
        "0101c0",
        "01016b0176",
        "022aac02"
    );
    const QUEUED_V3: &str = concat!(
        "02",
        "03612f62",
        "026869",
        "02",
        "01",
        "01",
        "09",
        "01d00f",
        "0101",
        "010174",
        "010172",
        "0101c0",
        "01016b0176",
        "022aac02",
        "01e807"
    );

    #[test]
    fn session_golden_bytes() {
        // V1 records (written before subscription identifiers were kept) still read.
        assert_eq!(
            decode_session("c:sensor", &unhex(SESSION_V1)).unwrap(),
            session()
        );
        let mut with_id = session();
        with_id.subscriptions[0].id = Some(42);
        // V2 records (written before outbound PUBRELs were kept) still read, with none.
        assert_eq!(
            decode_session("c:sensor", &unhex(SESSION_V2)).unwrap(),
            with_id
        );
        with_id.outbound_pubrels = vec![5, 11];
        let bytes = encode_session(&with_id).unwrap();
        assert_eq!(hex(&bytes), SESSION_V3);
        assert_eq!(decode_session("c:sensor", &bytes).unwrap(), with_id);
    }

    #[test]
    fn queued_golden_bytes() {
        // V1 records (written before properties were kept) still read, with none.
        assert_eq!(
            decode_queued("c:sensor", &unhex(QUEUED_V1)).unwrap(),
            queued(b"hi")
        );
        // V2 records (written before packet ids were kept) still read, with none.
        assert_eq!(
            decode_queued("c:sensor", &unhex(QUEUED_V2)).unwrap(),
            queued_v5()
        );
        let mut sent = queued_v5();
        sent.pkid = Some(1000);
        let bytes = encode_queued("c:sensor", &sent).unwrap();
        assert_eq!(hex(&bytes), QUEUED_V3);
        assert_eq!(decode_queued("c:sensor", &bytes).unwrap(), sent);
    }

    fn corrupt<T>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::Corrupt { .. }))
    }

    #[test]
    fn bad_records_are_corrupt() {
        let mut m = queued(b"x");
        m.qos = 0;
        assert!(corrupt(decode_queued(
            "k",
            &encode_queued("k", &m).unwrap()
        )));
        assert!(corrupt(decode_session("k", &[1, 2, 3])));
        let mut m = queued_v5();
        m.properties.payload_format_indicator = Some(2);
        assert!(corrupt(decode_queued(
            "k",
            &encode_queued("k", &m).unwrap()
        )));
        let mut m = queued_v5();
        m.pkid = Some(0);
        assert!(corrupt(decode_queued(
            "k",
            &encode_queued("k", &m).unwrap()
        )));
        let mut s = session();
        s.subscriptions[0].id = Some(0);
        assert!(corrupt(decode_session("k", &encode_session(&s).unwrap())));
        let mut s = session();
        s.outbound_pubrels = vec![0];
        assert!(corrupt(decode_session("k", &encode_session(&s).unwrap())));
    }
}
