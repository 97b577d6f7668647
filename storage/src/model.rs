//! The records the rest of the program works with.
//!
//! These derive serde for the program's own use (JSON in the admin API); the
//! file format lives in `codec` and does not follow changes made here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;
use crate::secret::{CredentialHash, DeviceCredential, TokenHash};

/// The plugin a device gets when none is given.
pub const DEFAULT_PLUGIN: &str = "json";

/// A provisioned device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device id; also its MQTT client id and username.
    pub id: DeviceId,
    /// How its payloads are read and written ([`DEFAULT_PLUGIN`] by default).
    pub plugin: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Per-device override: payload encryption on even if the global flag is off.
    pub encrypted: bool,
    /// How its token (its MQTT password) is stored: a keyed hash, or a legacy PBKDF2
    /// hash until its next successful connect or rotation.
    pub credential: DeviceCredential,
    /// Payload keys in ascending generation; the last is current. At most two
    /// are kept: the current one and the one it superseded (grace period).
    pub keys: Vec<DeviceKey>,
    /// When the device was provisioned, unix ms.
    pub created_at_ms: u64,
}

impl DeviceRecord {
    /// The newest key, used to encrypt payloads sent to the device.
    pub fn current_key(&self) -> Option<&DeviceKey> {
        self.keys.last()
    }

    /// The stored key with this generation, if it is still kept.
    pub fn key(&self, generation: u8) -> Option<&DeviceKey> {
        self.keys.iter().find(|k| k.generation == generation)
    }
}

/// One generation of a device's AES-256-GCM payload key. `Debug` redacts the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKey {
    /// Generation number, carried in byte 1 of every envelope. Starts at 1.
    pub generation: u8,
    /// The AES-256 key.
    pub key: [u8; 32],
    /// When this generation was created, unix ms.
    pub created_at_ms: u64,
    /// When a newer generation replaced it, unix ms; `None` for the current key.
    pub superseded_at_ms: Option<u64>,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("generation", &self.generation)
            .field("key", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("superseded_at_ms", &self.superseded_at_ms)
            .finish()
    }
}

/// What [`Store::create_device`](crate::Store::create_device) needs; the store
/// adds key generation 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDevice {
    /// The device id.
    pub id: DeviceId,
    /// Plugin name ([`DEFAULT_PLUGIN`] unless the caller chose another).
    pub plugin: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Per-device encryption override.
    pub encrypted: bool,
    /// Hash of the device token ([`DeviceCredential::keyed`]).
    pub credential: DeviceCredential,
    /// Provisioning time, unix ms.
    pub created_at_ms: u64,
}

impl NewDevice {
    /// A device with the default plugin, no labels and no encryption override.
    pub fn new(id: DeviceId, credential: DeviceCredential, created_at_ms: u64) -> NewDevice {
        NewDevice {
            id,
            plugin: DEFAULT_PLUGIN.to_owned(),
            labels: BTreeMap::new(),
            encrypted: false,
            credential,
            created_at_ms,
        }
    }
}

/// A device whose token was just verified against its legacy PBKDF2 hash, and the
/// keyed hash of that token to store instead
/// ([`Store::upgrade_device_credentials`](crate::Store::upgrade_device_credentials)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialUpgrade {
    /// The device.
    pub id: DeviceId,
    /// The hash the token was verified against; nothing changes if the record no longer
    /// holds it.
    pub checked: CredentialHash,
    /// The token's keyed hash.
    pub keyed: TokenHash,
}

/// Which MQTT operation an [`AclRule`] covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE (and delivery of messages).
    Subscribe,
    /// Both.
    All,
}

/// One ACL rule: `{"action":"publish","topic":"x/#","allow":true}`. `topic` is
/// an MQTT filter that may contain `%c` (client id) and `%u` (username).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    /// Operation covered.
    pub action: AclAction,
    /// Topic filter, as written.
    pub topic: String,
    /// Allow or deny when this rule is the first match.
    pub allow: bool,
}

/// A named MQTT user for host applications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceClientRecord {
    /// Its MQTT username (unique across devices and service clients).
    pub name: String,
    /// Hash of its password.
    pub credential: CredentialHash,
    /// Its ACL, first match wins, default deny.
    pub rules: Vec<AclRule>,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
}

/// What a named admin API key may do (SPEC §8), least first: a role allows everything
/// the roles before it allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Reads only.
    Viewer,
    /// Reads, and changes to devices, commands, configuration, publishing.
    Operator,
    /// Everything, including API keys, webhooks and service clients.
    Admin,
}

impl ApiRole {
    /// Every role, least first.
    pub const ALL: [ApiRole; 3] = [ApiRole::Viewer, ApiRole::Operator, ApiRole::Admin];

    /// Its name in the API: `viewer`, `operator` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Viewer => "viewer",
            ApiRole::Operator => "operator",
            ApiRole::Admin => "admin",
        }
    }
}

impl fmt::Display for ApiRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApiRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected viewer, operator or admin"))
    }
}

/// A named admin API key. Only a keyed hash of its secret is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Its name (see [`valid_api_key_name`](crate::valid_api_key_name)).
    pub name: String,
    /// What it may do.
    pub role: ApiRole,
    /// HMAC-SHA256 of its secret under the install's token key.
    pub hash: TokenHash,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
}

/// One state-changing admin API request, as the audit log keeps it: never a body or a
/// secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it was answered, unix ms.
    pub at_ms: u64,
    /// The name of the key it presented, `-` if none was accepted.
    pub key: String,
    /// The HTTP method.
    pub method: String,
    /// The route template (`/api/v1/devices/{id}`), `-` for no route.
    pub route: String,
    /// The route's first `{…}` value (device id, key name, ...), if it has one.
    pub target: Option<String>,
    /// The answer's status code.
    pub status: u16,
}

/// A retained MQTT message, keyed by topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedMessage {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Payload, plaintext.
    pub payload: Vec<u8>,
    /// QoS it was published with.
    pub qos: u8,
    /// When it was stored, unix ms.
    pub stored_at_ms: u64,
    /// When it expires (MQTT 5 Message Expiry Interval), unix ms; `None`: never.
    pub expires_at_ms: Option<u64>,
    /// Its publisher's MQTT 5 PUBLISH properties (no subscription identifiers).
    pub properties: MessageProperties,
}

/// The MQTT 5 PUBLISH properties a queued (or retained) message is delivered with,
/// besides the Message Expiry Interval (kept as an expiry time) and the Topic Alias (per
/// connection, never stored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    /// The publisher's user properties, in order [MQTT-3.3.2-18].
    pub user_properties: Vec<(String, String)>,
    /// The identifiers of the receiving session's subscriptions that matched
    /// [MQTT-3.3.4-3] (none for a retained message: they are the subscriber's).
    pub subscription_ids: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_rule_json_shape() {
        let rule = AclRule {
            action: AclAction::Publish,
            topic: "x/#".into(),
            allow: true,
        };
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(json, r#"{"action":"publish","topic":"x/#","allow":true}"#);
        let back: AclRule =
            serde_json::from_str(r#"{"action":"all","topic":"%c/#","allow":false}"#).unwrap();
        assert_eq!(back.action, AclAction::All);
        assert!(
            serde_json::from_str::<AclRule>(r#"{"action":"write","topic":"a","allow":true}"#)
                .is_err()
        );
    }

    #[test]
    fn key_debug_redacts() {
        let k = DeviceKey {
            generation: 1,
            key: [0xab; 32],
            created_at_ms: 0,
            superseded_at_ms: None,
        };
        let s = format!("{k:?}");
        assert!(s.contains("redacted") && !s.contains("171"), "{s}");
    }
}
