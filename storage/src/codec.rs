//! Versioned on-disk encodings (postcard).
//!
//! Each table stores one enum per record kind whose variants are format
//! versions (`StoredDevice::V1`, ...). The `V1` structs mirror the API records
//! field for field but are private, so nothing outside this module can change
//! the bytes on disk by accident; the golden-byte tests below pin them. A new
//! format is a new variant, never an edit to an existing one.
//!
//! Decoding never panics: undecodable bytes, trailing bytes, unknown versions
//! and broken invariants all come back as [`StoreError::Corrupt`].

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::ids::DeviceId;
use crate::model::{
    AclAction, AclRule, DeviceKey, DeviceRecord, MessageProperties, RetainedMessage,
    ServiceClientRecord,
};
use crate::secret::{CredentialHash, DeviceCredential, TokenHash};

#[derive(Serialize, Deserialize)]
enum StoredDevice {
    /// Every device until keyed token hashes: a PBKDF2 credential.
    V1(DeviceV1),
    /// V1 with the credential as [`DeviceCredentialV2`]: a keyed hash or PBKDF2.
    V2(DeviceV2),
}

#[derive(Serialize, Deserialize)]
struct DeviceV2 {
    id: String,
    plugin: String,
    labels: BTreeMap<String, String>,
    encrypted: bool,
    credential: DeviceCredentialV2,
    keys: Vec<DeviceKeyV1>,
    created_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum DeviceCredentialV2 {
    /// A legacy PBKDF2 hash (`DeviceCredential::Legacy`), as V1 stored it.
    Pbkdf2(CredentialV1),
    /// HMAC-SHA256 under the install's token key (`DeviceCredential::Keyed`).
    HmacSha256([u8; 32]),
}

impl From<DeviceV1> for DeviceV2 {
    fn from(v1: DeviceV1) -> Self {
        DeviceV2 {
            id: v1.id,
            plugin: v1.plugin,
            labels: v1.labels,
            encrypted: v1.encrypted,
            credential: DeviceCredentialV2::Pbkdf2(v1.credential),
            keys: v1.keys,
            created_at_ms: v1.created_at_ms,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DeviceV1 {
    id: String,
    plugin: String,
    labels: BTreeMap<String, String>,
    encrypted: bool,
    credential: CredentialV1,
    keys: Vec<DeviceKeyV1>,
    created_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct DeviceKeyV1 {
    generation: u8,
    key: [u8; 32],
    created_at_ms: u64,
    superseded_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct CredentialV1 {
    iterations: u32,
    salt: [u8; 16],
    hash: [u8; 32],
}

#[derive(Serialize, Deserialize)]
enum StoredServiceClient {
    V1(ServiceClientV1),
}

#[derive(Serialize, Deserialize)]
struct ServiceClientV1 {
    name: String,
    credential: CredentialV1,
    rules: Vec<AclRuleV1>,
    created_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct AclRuleV1 {
    action: AclActionV1,
    topic: String,
    allow: bool,
}

#[derive(Serialize, Deserialize)]
enum AclActionV1 {
    Publish,
    Subscribe,
    All,
}

#[derive(Serialize, Deserialize)]
enum StoredRetained {
    V1(RetainedV1),
    V2(RetainedV2),
    V3(RetainedV3),
}

/// V2 plus the publisher's MQTT 5 PUBLISH properties.
#[derive(Serialize, Deserialize)]
struct RetainedV3 {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    stored_at_ms: u64,
    expires_at_ms: Option<u64>,
    payload_format_indicator: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
}

/// V1 plus the expiry time (MQTT 5 Message Expiry Interval).
#[derive(Serialize, Deserialize)]
struct RetainedV2 {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    stored_at_ms: u64,
    expires_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct RetainedV1 {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    stored_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum StoredCredential {
    V1(CredentialV1),
}

/// The install's device token key (`token_key`).
#[derive(Serialize, Deserialize)]
enum StoredTokenKey {
    V1([u8; 32]),
}

/// Where a record lives, for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Location<'a> {
    pub(crate) table: &'static str,
    pub(crate) key: &'a str,
}

impl Location<'_> {
    pub(crate) fn corrupt(self, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            key: self.key.to_owned(),
            reason: reason.into(),
        }
    }
}

pub(crate) fn encode<T: Serialize>(at: Location<'_>, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| {
        let what = format!("record for table {:?} key {:?}", at.table, at.key);
        StoreError::encode(what, e)
    })
}

pub(crate) fn decode<T: DeserializeOwned>(at: Location<'_>, bytes: &[u8]) -> Result<T, StoreError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| at.corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(at.corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

// ---- credentials -------------------------------------------------------

impl From<&CredentialHash> for CredentialV1 {
    fn from(c: &CredentialHash) -> Self {
        CredentialV1 {
            iterations: c.iterations,
            salt: c.salt,
            hash: c.hash,
        }
    }
}

impl CredentialV1 {
    fn into_api(self, at: Location<'_>) -> Result<CredentialHash, StoreError> {
        if self.iterations == 0 {
            return Err(at.corrupt("credential hash has 0 iterations"));
        }
        Ok(CredentialHash {
            iterations: self.iterations,
            salt: self.salt,
            hash: self.hash,
        })
    }
}

/// Encodes a stand-alone credential hash (the admin key).
pub(crate) fn encode_credential(
    at: Location<'_>,
    c: &CredentialHash,
) -> Result<Vec<u8>, StoreError> {
    encode(at, &StoredCredential::V1(c.into()))
}

/// Decodes a stand-alone credential hash.
pub(crate) fn decode_credential(
    at: Location<'_>,
    bytes: &[u8],
) -> Result<CredentialHash, StoreError> {
    match decode(at, bytes)? {
        StoredCredential::V1(c) => c.into_api(at),
    }
}

/// Encodes the install's device token key.
pub(crate) fn encode_token_key(at: Location<'_>, key: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
    encode(at, &StoredTokenKey::V1(*key))
}

/// Decodes the install's device token key.
pub(crate) fn decode_token_key(at: Location<'_>, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    match decode(at, bytes)? {
        StoredTokenKey::V1(key) => Ok(key),
    }
}

// ---- devices -----------------------------------------------------------

/// Encodes a device record (always the newest version).
pub(crate) fn encode_device(at: Location<'_>, d: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    let v2 = DeviceV2 {
        id: d.id.as_str().to_owned(),
        plugin: d.plugin.clone(),
        labels: d.labels.clone(),
        encrypted: d.encrypted,
        credential: match &d.credential {
            DeviceCredential::Keyed(hash) => DeviceCredentialV2::HmacSha256(hash.tag),
            DeviceCredential::Legacy(hash) => DeviceCredentialV2::Pbkdf2(hash.into()),
        },
        keys: d
            .keys
            .iter()
            .map(|k| DeviceKeyV1 {
                generation: k.generation,
                key: k.key,
                created_at_ms: k.created_at_ms,
                superseded_at_ms: k.superseded_at_ms,
            })
            .collect(),
        created_at_ms: d.created_at_ms,
    };
    encode(at, &StoredDevice::V2(v2))
}

/// Decodes a device record of any version stored under `at.key`, checking its
/// invariants. A V1 record's credential is [`DeviceCredential::Legacy`].
pub(crate) fn decode_device(at: Location<'_>, bytes: &[u8]) -> Result<DeviceRecord, StoreError> {
    let v2 = match decode(at, bytes)? {
        StoredDevice::V1(v1) => DeviceV2::from(v1),
        StoredDevice::V2(v2) => v2,
    };
    let id: DeviceId = v2.id.parse().map_err(|e| at.corrupt(format!("{e}")))?;
    if id.as_str() != at.key {
        return Err(at.corrupt(format!("record is for device {id:?}")));
    }
    let ascending = v2
        .keys
        .windows(2)
        .all(|w| w[0].generation < w[1].generation);
    if !ascending {
        return Err(at.corrupt("key generations are not strictly ascending"));
    }
    Ok(DeviceRecord {
        id,
        plugin: v2.plugin,
        labels: v2.labels,
        encrypted: v2.encrypted,
        credential: match v2.credential {
            DeviceCredentialV2::Pbkdf2(c) => DeviceCredential::Legacy(c.into_api(at)?),
            DeviceCredentialV2::HmacSha256(tag) => DeviceCredential::Keyed(TokenHash { tag }),
        },
        keys: v2
            .keys
            .into_iter()
            .map(|k| DeviceKey {
                generation: k.generation,
                key: k.key,
                created_at_ms: k.created_at_ms,
                superseded_at_ms: k.superseded_at_ms,
            })
            .collect(),
        created_at_ms: v2.created_at_ms,
    })
}

// ---- service clients -----------------------------------------------------

/// Encodes a service client record.
pub(crate) fn encode_service_client(
    at: Location<'_>,
    c: &ServiceClientRecord,
) -> Result<Vec<u8>, StoreError> {
    let v1 = ServiceClientV1 {
        name: c.name.clone(),
        credential: (&c.credential).into(),
        rules: c
            .rules
            .iter()
            .map(|r| AclRuleV1 {
                action: match r.action {
                    AclAction::Publish => AclActionV1::Publish,
                    AclAction::Subscribe => AclActionV1::Subscribe,
                    AclAction::All => AclActionV1::All,
                },
                topic: r.topic.clone(),
                allow: r.allow,
            })
            .collect(),
        created_at_ms: c.created_at_ms,
    };
    encode(at, &StoredServiceClient::V1(v1))
}

/// Decodes a service client record stored under `at.key`.
pub(crate) fn decode_service_client(
    at: Location<'_>,
    bytes: &[u8],
) -> Result<ServiceClientRecord, StoreError> {
    let StoredServiceClient::V1(v1) = decode(at, bytes)?;
    if v1.name != at.key {
        return Err(at.corrupt(format!("record is for service client {:?}", v1.name)));
    }
    Ok(ServiceClientRecord {
        name: v1.name,
        credential: v1.credential.into_api(at)?,
        rules: v1
            .rules
            .into_iter()
            .map(|r| AclRule {
                action: match r.action {
                    AclActionV1::Publish => AclAction::Publish,
                    AclActionV1::Subscribe => AclAction::Subscribe,
                    AclActionV1::All => AclAction::All,
                },
                topic: r.topic,
                allow: r.allow,
            })
            .collect(),
        created_at_ms: v1.created_at_ms,
    })
}

// ---- retained messages -----------------------------------------------------

/// Encodes a retained message.
pub(crate) fn encode_retained(
    at: Location<'_>,
    m: &RetainedMessage,
) -> Result<Vec<u8>, StoreError> {
    if !m.properties.subscription_ids.is_empty() {
        return Err(StoreError::Invalid(
            "a retained message has no subscription identifiers".into(),
        ));
    }
    let p = &m.properties;
    let v3 = RetainedV3 {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        stored_at_ms: m.stored_at_ms,
        expires_at_ms: m.expires_at_ms,
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
    };
    encode(at, &StoredRetained::V3(v3))
}

/// Decodes a retained message stored under `at.key`.
pub(crate) fn decode_retained(
    at: Location<'_>,
    bytes: &[u8],
) -> Result<RetainedMessage, StoreError> {
    let m = match decode(at, bytes)? {
        StoredRetained::V1(v1) => RetainedMessage {
            topic: v1.topic,
            payload: v1.payload,
            qos: v1.qos,
            stored_at_ms: v1.stored_at_ms,
            expires_at_ms: None,
            properties: MessageProperties::default(),
        },
        StoredRetained::V2(v2) => RetainedMessage {
            topic: v2.topic,
            payload: v2.payload,
            qos: v2.qos,
            stored_at_ms: v2.stored_at_ms,
            expires_at_ms: v2.expires_at_ms,
            properties: MessageProperties::default(),
        },
        StoredRetained::V3(v3) => RetainedMessage {
            topic: v3.topic,
            payload: v3.payload,
            qos: v3.qos,
            stored_at_ms: v3.stored_at_ms,
            expires_at_ms: v3.expires_at_ms,
            properties: MessageProperties {
                payload_format_indicator: v3.payload_format_indicator,
                content_type: v3.content_type,
                response_topic: v3.response_topic,
                correlation_data: v3.correlation_data,
                user_properties: v3.user_properties,
                subscription_ids: Vec::new(),
            },
        },
    };
    if m.topic != at.key {
        return Err(at.corrupt(format!("record is for topic {:?}", m.topic)));
    }
    if m.qos > 2 {
        return Err(at.corrupt(format!("qos {} is not 0, 1 or 2", m.qos)));
    }
    if let Some(bad) = m.properties.payload_format_indicator.filter(|&f| f > 1) {
        return Err(at.corrupt(format!("payload format indicator {bad}")));
    }
    Ok(m)
}

#[cfg(test)]
mod tests;
