//! Persistent MQTT sessions: the `sessions` table (session key → versioned
//! [`SessionRecord`]) and the `session_queue` table ((session key, sequence) →
//! versioned [`QueuedMessage`]), the QoS 1/2 messages kept for a session while its
//! client is away.
//!
//! A session key is the broker's router client id (`d:{device}` / `c:{client}`).
//! Sequence numbers grow per session, so a range scan returns a queue in arrival order.
//!
//! Versions: sessions V1 had no subscription identifiers (V2 adds them); queued messages
//! V1 kept topic, payload, QoS and DUP only (V2 adds RETAIN, the expiry time and the
//! MQTT 5 PUBLISH properties). V1 records still decode, with none of those.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::store::Store;

const SESSIONS_TABLE: &str = "sessions";
const QUEUE_TABLE: &str = "session_queue";

/// Session key → `StoredSession`.
pub(crate) const SESSIONS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new(SESSIONS_TABLE);
/// (session key, sequence) → `StoredQueued`.
pub(crate) const QUEUE: TableDefinition<'static, (&str, u64), &[u8]> =
    TableDefinition::new(QUEUE_TABLE);

/// One subscription of a persistent session, with its MQTT 5 options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSubscription {
    pub filter: String,
    /// The granted maximum QoS.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// Retain Handling 0, 1 or 2.
    pub retain_handling: u8,
    /// The MQTT 5 Subscription Identifier it was made with (1..=268,435,455).
    pub id: Option<u32>,
}

/// The largest Subscription Identifier (a variable byte integer) [MQTT-3.8.2.1.2].
pub const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

/// What survives of a session while its client is disconnected (and across restarts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session key (router client id).
    pub key: String,
    /// The client id the client connected with.
    pub client_id: String,
    pub subscriptions: Vec<SessionSubscription>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires (3.1.1).
    pub expiry_s: u32,
    /// When the client left, unix ms; `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// Inbound QoS 2 packet ids answered with PUBREC and awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
}

/// A QoS 1/2 message kept for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The delivery QoS (1 or 2): the lower of the publish and the subscription QoS.
    pub qos: u8,
    /// Whether it was sent before and must be re-sent with DUP=1.
    pub dup: bool,
    /// The RETAIN flag it is delivered with (Retain As Published, or a retained message
    /// sent at SUBSCRIBE that is re-sent).
    pub retain: bool,
    pub queued_at_ms: u64,
    /// When its MQTT 5 Message Expiry Interval runs out, unix ms [MQTT-3.3.2-5].
    pub expires_at_ms: Option<u64>,
    /// Its MQTT 5 PUBLISH properties for this session (none for 3.1.1 receivers).
    pub properties: MessageProperties,
}

/// The MQTT 5 PUBLISH properties a queued message is delivered with, besides the
/// Message Expiry Interval (kept as [`QueuedMessage::expires_at_ms`]) and the Topic
/// Alias (per connection, never stored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    /// The publisher's user properties, in order [MQTT-3.3.2-18].
    pub user_properties: Vec<(String, String)>,
    /// The identifiers of the receiving session's subscriptions that matched
    /// [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
enum StoredSession {
    V1(SessionV1),
    V2(SessionV2),
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

fn encode_session(s: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    let v2 = SessionV2 {
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
    };
    codec::encode(session_at(&s.key), &StoredSession::V2(v2))
}

fn decode_session(key: &str, bytes: &[u8]) -> Result<SessionRecord, StoreError> {
    let at = session_at(key);
    let v2 = match codec::decode(at, bytes)? {
        StoredSession::V1(v1) => SessionV2 {
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
        },
        StoredSession::V2(v2) => v2,
    };
    if let Some(bad) = v2.subscriptions.iter().find(|s| {
        s.qos > 2
            || s.retain_handling > 2
            || s.id.is_some_and(|id| id == 0 || id > MAX_SUBSCRIPTION_ID)
    }) {
        return Err(at.corrupt(format!("subscription {:?} has bad options", bad.filter)));
    }
    Ok(SessionRecord {
        key: key.to_owned(),
        client_id: v2.client_id,
        subscriptions: v2
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
        expiry_s: v2.expiry_s,
        disconnected_at_ms: v2.disconnected_at_ms,
        inbound_qos2: v2.inbound_qos2,
    })
}

fn encode_queued(key: &str, m: &QueuedMessage) -> Result<Vec<u8>, StoreError> {
    let p = &m.properties;
    let v2 = QueuedV2 {
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
    };
    codec::encode(queue_at(key), &StoredQueued::V2(v2))
}

fn decode_queued(key: &str, bytes: &[u8]) -> Result<QueuedMessage, StoreError> {
    let at = queue_at(key);
    let m = match codec::decode(at, bytes)? {
        StoredQueued::V1(v1) => QueuedMessage {
            topic: v1.topic,
            payload: v1.payload,
            qos: v1.qos,
            dup: v1.dup,
            retain: false,
            queued_at_ms: v1.queued_at_ms,
            expires_at_ms: None,
            properties: MessageProperties::default(),
        },
        StoredQueued::V2(v2) => QueuedMessage {
            topic: v2.topic,
            payload: v2.payload,
            qos: v2.qos,
            dup: v2.dup,
            retain: v2.retain,
            queued_at_ms: v2.queued_at_ms,
            expires_at_ms: v2.expires_at_ms,
            properties: MessageProperties {
                payload_format_indicator: v2.payload_format_indicator,
                content_type: v2.content_type,
                response_topic: v2.response_topic,
                correlation_data: v2.correlation_data,
                user_properties: v2.user_properties,
                subscription_ids: v2.subscription_ids,
            },
        },
    };
    if !(1..=2).contains(&m.qos) {
        return Err(at.corrupt(format!("queued message has qos {}", m.qos)));
    }
    if let Some(bad) = m.properties.payload_format_indicator.filter(|&f| f > 1) {
        return Err(at.corrupt(format!("payload format indicator {bad}")));
    }
    Ok(m)
}

impl Store {
    /// Stores (or replaces) a session record, committed durably.
    pub fn put_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let bytes = encode_session(s)?;
        self.write(|txn| {
            txn.open_table(SESSIONS)?
                .insert(s.key.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// The session stored under `key`, if any.
    pub fn get_session(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SESSIONS)?;
            match table.get(key)? {
                Some(v) => Ok(Some(decode_session(key, v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Removes a session and its queue; whether there was a session.
    pub fn delete_session(&self, key: &str) -> Result<bool, StoreError> {
        self.write(|txn| {
            let existed = txn.open_table(SESSIONS)?.remove(key)?.is_some();
            let mut queue = txn.open_table(QUEUE)?;
            queue.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)?;
            Ok(existed)
        })
    }

    /// Every stored session. Undecodable records are skipped and logged, so one bad
    /// record cannot keep the broker from starting.
    pub fn list_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SESSIONS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                match decode_session(k.value(), v.value()) {
                    Ok(s) => out.push(s),
                    Err(error) => tracing::error!(%error, "skipping corrupt session"),
                }
            }
            Ok(out)
        })
    }

    /// Appends messages to session queues in one durable transaction. A queue longer
    /// than `max_per_session` loses its oldest messages; returns how many were dropped.
    /// Messages for sessions that no longer exist are not stored.
    pub fn enqueue(
        &self,
        batch: &[(String, QueuedMessage)],
        max_per_session: usize,
    ) -> Result<u64, StoreError> {
        self.write(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let mut queue = txn.open_table(QUEUE)?;
            let mut dropped = 0;
            for (key, msg) in batch {
                let key = key.as_str();
                if sessions.get(key)?.is_none() {
                    continue;
                }
                let last = queue
                    .range((key, 0)..=(key, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                let seq = last.map_or(0, |s| s + 1);
                queue.insert((key, seq), encode_queued(key, msg)?.as_slice())?;
                let len = queue.range((key, 0)..=(key, u64::MAX))?.count();
                let excess = len.saturating_sub(max_per_session);
                if excess > 0 {
                    let oldest: Vec<u64> = queue
                        .range((key, 0)..=(key, u64::MAX))?
                        .take(excess)
                        .map(|e| e.map(|(k, _)| k.value().1))
                        .collect::<Result<_, _>>()?;
                    for seq in oldest {
                        queue.remove((key, seq))?;
                        dropped += 1;
                    }
                }
            }
            Ok(dropped)
        })
    }

    /// A session's queue in arrival order, with sequence numbers. Undecodable entries
    /// are skipped and logged.
    pub fn queued(&self, key: &str) -> Result<Vec<(u64, QueuedMessage)>, StoreError> {
        self.read(|txn| {
            let queue = txn.open_table(QUEUE)?;
            let mut out = Vec::new();
            for entry in queue.range((key, 0)..=(key, u64::MAX))? {
                let (k, v) = entry?;
                match decode_queued(key, v.value()) {
                    Ok(m) => out.push((k.value().1, m)),
                    Err(error) => tracing::error!(%error, "skipping corrupt queued message"),
                }
            }
            Ok(out)
        })
    }

    /// Removes delivered messages from a session's queue.
    pub fn dequeue(&self, key: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut queue = txn.open_table(QUEUE)?;
            for &seq in seqs {
                queue.remove((key, seq))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{hex, temp_store, unhex};

    fn session() -> SessionRecord {
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
        }
    }

    /// What V1 could hold.
    fn queued(payload: &[u8]) -> QueuedMessage {
        QueuedMessage {
            topic: "a/b".into(),
            payload: payload.to_vec(),
            qos: 2,
            dup: true,
            retain: false,
            queued_at_ms: 9,
            expires_at_ms: None,
            properties: MessageProperties::default(),
        }
    }

    /// Every V2 field set.
    fn queued_v5() -> QueuedMessage {
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

    // Pinned bytes: a change here means stored sessions would no longer read. Add a
    // version variant instead of editing an existing one.
    const SESSION_V1: &str = "000673656e736f720103612f2b01000102ac02010702039003";
    const SESSION_V2: &str = "010673656e736f720103612f2b01000102012aac02010702039003";
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

    #[test]
    fn session_golden_bytes() {
        // V1 records (written before subscription identifiers were kept) still read.
        assert_eq!(
            decode_session("c:sensor", &unhex(SESSION_V1)).unwrap(),
            session()
        );
        let mut with_id = session();
        with_id.subscriptions[0].id = Some(42);
        let bytes = encode_session(&with_id).unwrap();
        assert_eq!(hex(&bytes), SESSION_V2);
        assert_eq!(decode_session("c:sensor", &bytes).unwrap(), with_id);
    }

    #[test]
    fn queued_golden_bytes() {
        // V1 records (written before properties were kept) still read, with none.
        assert_eq!(
            decode_queued("c:sensor", &unhex(QUEUED_V1)).unwrap(),
            queued(b"hi")
        );
        let bytes = encode_queued("c:sensor", &queued_v5()).unwrap();
        assert_eq!(hex(&bytes), QUEUED_V2);
        assert_eq!(decode_queued("c:sensor", &bytes).unwrap(), queued_v5());
    }

    #[test]
    fn bad_records_are_corrupt() {
        let mut m = queued(b"x");
        m.qos = 0;
        let bytes = encode_queued("k", &m).unwrap();
        assert!(matches!(
            decode_queued("k", &bytes),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_session("k", &[1, 2, 3]),
            Err(StoreError::Corrupt { .. })
        ));
        let mut m = queued_v5();
        m.properties.payload_format_indicator = Some(2);
        let bytes = encode_queued("k", &m).unwrap();
        assert!(matches!(
            decode_queued("k", &bytes),
            Err(StoreError::Corrupt { .. })
        ));
        let mut s = session();
        s.subscriptions[0].id = Some(0);
        let bytes = encode_session(&s).unwrap();
        assert!(matches!(
            decode_session("k", &bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn queue_keeps_order_drops_oldest_and_goes_with_its_session() {
        let (_dir, store) = temp_store();
        assert_eq!(store.list_sessions().unwrap(), vec![]);
        assert_eq!(store.queued("c:sensor").unwrap(), vec![]);
        store.put_session(&session()).unwrap();
        let batch: Vec<_> = (0..5u8)
            .map(|i| ("c:sensor".to_owned(), queued(&[i])))
            .collect();
        let orphan = vec![("c:gone".to_owned(), queued(b"z"))];
        assert_eq!(store.enqueue(&orphan, 3).unwrap(), 0);
        assert_eq!(store.enqueue(&batch, 3).unwrap(), 2);
        let q = store.queued("c:sensor").unwrap();
        let payloads: Vec<_> = q.iter().map(|(_, m)| m.payload[0]).collect();
        assert_eq!(payloads, [2, 3, 4]);
        store.dequeue("c:sensor", &[q[0].0]).unwrap();
        assert_eq!(store.queued("c:sensor").unwrap().len(), 2);
        assert_eq!(store.queued("c:gone").unwrap(), vec![]);
        assert_eq!(store.list_sessions().unwrap(), vec![session()]);
        assert!(store.delete_session("c:sensor").unwrap());
        assert_eq!(store.queued("c:sensor").unwrap(), vec![]);
        assert_eq!(store.get_session("c:sensor").unwrap(), None);
    }
}
