//! The `api_keys` table: named admin API keys (SPEC §8), name → versioned
//! [`ApiKeyRecord`]; and revoking the built-in key (its hash is in `meta`).
//!
//! Secrets are 256-bit random tokens, so only their HMAC-SHA256 under the install's
//! [`TokenKey`](crate::TokenKey) is stored, as for device tokens.
//!
//! Nobody can lock everyone out: removing a key is refused while it is the last admin
//! key, counting the built-in key (present unless revoked) and the named admin keys, in
//! the transaction that would remove it.

use redb::{ReadableTable, ReadableTableMetadata as _, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Location};
use crate::error::StoreError;
use crate::model::{ApiKeyRecord, ApiRole};
use crate::schema::{
    ADMIN_KEY_HASH_KEY, ADMIN_KEY_REVOKED_KEY, API_KEYS, API_KEYS_TABLE as TABLE, META,
};
use crate::secret::TokenHash;
use crate::store::Store;

/// Longest key name.
pub const MAX_API_KEY_NAME_LEN: usize = 64;

/// Whether `name` is a valid key name: 1 to [`MAX_API_KEY_NAME_LEN`] characters of
/// `A-Z a-z 0-9 . _ -`.
pub fn valid_api_key_name(name: &str) -> bool {
    (1..=MAX_API_KEY_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a key could not be removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteKeyError {
    /// No key has this name.
    #[error("API key {0:?} not found")]
    NotFound(String),
    /// It is the last admin key; removing it would leave nobody able to manage keys.
    #[error("API key {0:?} is the last admin key; create another admin key first")]
    LastAdmin(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Serialize, Deserialize)]
enum StoredApiKey {
    V1(ApiKeyV1),
}

#[derive(Serialize, Deserialize)]
struct ApiKeyV1 {
    name: String,
    role: RoleV1,
    /// HMAC-SHA256 of the secret under the token key.
    tag: [u8; 32],
    created_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum RoleV1 {
    Viewer,
    Operator,
    Admin,
}

fn at(key: &str) -> Location<'_> {
    Location { table: TABLE, key }
}

pub(crate) fn encode(at: Location<'_>, rec: &ApiKeyRecord) -> Result<Vec<u8>, StoreError> {
    let role = match rec.role {
        ApiRole::Viewer => RoleV1::Viewer,
        ApiRole::Operator => RoleV1::Operator,
        ApiRole::Admin => RoleV1::Admin,
    };
    let v1 = ApiKeyV1 {
        name: rec.name.clone(),
        role,
        tag: rec.hash.tag,
        created_at_ms: rec.created_at_ms,
    };
    codec::encode(at, &StoredApiKey::V1(v1))
}

pub(crate) fn decode(at: Location<'_>, bytes: &[u8]) -> Result<ApiKeyRecord, StoreError> {
    let StoredApiKey::V1(v1) = codec::decode(at, bytes)?;
    if v1.name != at.key {
        return Err(at.corrupt(format!("record is for API key {:?}", v1.name)));
    }
    Ok(ApiKeyRecord {
        name: v1.name,
        role: match v1.role {
            RoleV1::Viewer => ApiRole::Viewer,
            RoleV1::Operator => ApiRole::Operator,
            RoleV1::Admin => ApiRole::Admin,
        },
        hash: TokenHash { tag: v1.tag },
        created_at_ms: v1.created_at_ms,
    })
}

impl Store {
    /// Stores a new named key. [`StoreError::Conflict`] if the name is taken,
    /// [`StoreError::Invalid`] if it is not a valid name.
    pub fn create_api_key(&self, rec: &ApiKeyRecord) -> Result<(), StoreError> {
        if !valid_api_key_name(&rec.name) {
            return Err(StoreError::Invalid(format!(
                "key name {:?}: must be 1 to {MAX_API_KEY_NAME_LEN} characters of A-Z a-z 0-9 . _ -",
                rec.name
            )));
        }
        self.write(|txn| {
            let mut table = txn.open_table(API_KEYS)?;
            let key = rec.name.as_str();
            if table.get(key)?.is_some() {
                return Err(StoreError::Conflict {
                    kind: "API key",
                    key: key.to_owned(),
                });
            }
            table.insert(key, encode(at(key), rec)?.as_slice())?;
            Ok(())
        })
    }

    /// Every named key, by name.
    pub fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(API_KEYS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                out.push(decode(at(k.value()), v.value())?);
            }
            Ok(out)
        })
    }

    /// Removes a named key and returns it; refused if it is the last admin key.
    pub fn delete_api_key(&self, name: &str) -> Result<ApiKeyRecord, DeleteKeyError> {
        let outcome = self.write(|txn| {
            let found = txn
                .open_table(API_KEYS)?
                .get(name)?
                .map(|v| v.value().to_vec());
            let Some(bytes) = found else {
                return Ok(Err(DeleteKeyError::NotFound(name.to_owned())));
            };
            let rec = decode(at(name), &bytes)?;
            if rec.role == ApiRole::Admin && admins(txn)? <= 1 {
                return Ok(Err(DeleteKeyError::LastAdmin(name.to_owned())));
            }
            txn.open_table(API_KEYS)?.remove(name)?;
            Ok(Ok(rec))
        })?;
        outcome
    }

    /// Revokes the built-in admin key (`admin.api_key` or `<data_dir>/admin.key`): its
    /// hash is removed and a restart does not generate a new one (a configured key comes
    /// back with [`Store::set_admin_key_hash`]). `name` is for the error only.
    pub fn revoke_admin_key(&self, name: &str) -> Result<(), DeleteKeyError> {
        let outcome = self.write(|txn| {
            if txn.open_table(META)?.get(ADMIN_KEY_HASH_KEY)?.is_none() {
                return Ok(Err(DeleteKeyError::NotFound(name.to_owned())));
            }
            if admins(txn)? <= 1 {
                return Ok(Err(DeleteKeyError::LastAdmin(name.to_owned())));
            }
            let mut meta = txn.open_table(META)?;
            meta.remove(ADMIN_KEY_HASH_KEY)?;
            meta.insert(ADMIN_KEY_REVOKED_KEY, [].as_slice())?;
            Ok(Ok(()))
        })?;
        outcome
    }

    /// Whether the built-in admin key was revoked (and not configured again since).
    pub fn admin_key_revoked(&self) -> Result<bool, StoreError> {
        self.read(|txn| Ok(txn.open_table(META)?.get(ADMIN_KEY_REVOKED_KEY)?.is_some()))
    }
}

/// How many admin keys exist: the built-in one (if its hash is stored) and the named
/// admin keys.
fn admins(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let builtin = u64::from(txn.open_table(META)?.get(ADMIN_KEY_HASH_KEY)?.is_some());
    let table = txn.open_table(API_KEYS)?;
    if table.len()? == 0 {
        return Ok(builtin);
    }
    let mut named = 0;
    for entry in table.iter()? {
        let (k, v) = entry?;
        named += u64::from(decode(at(k.value()), v.value())?.role == ApiRole::Admin);
    }
    Ok(builtin + named)
}

#[cfg(test)]
mod tests;
