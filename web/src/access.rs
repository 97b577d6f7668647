//! Who a request is ([`Access::authenticate`]) and whether its role may use a route
//! ([`allowed`]).
//!
//! Two kinds of key are accepted, both from `x-api-key` or `Authorization: Bearer`:
//! - the built-in key ([`AdminKey`]: `admin.api_key` or the generated
//!   `<data_dir>/admin.key`), always `admin`;
//! - named keys (`POST /api/v1/keys`), stored as HMAC-SHA256 under the install's token
//!   key. They are kept in memory (loaded on first use, reloaded after every change)
//!   and compared in constant time against the presented key's HMAC, so checking one
//!   costs about a microsecond and touches no disk.
//!
//! Named keys are checked first: a wrong key costs the slow built-in check only until
//! the built-in key has been seen once (see `auth`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fleetmq_storage::{ApiKeyRecord, ApiRole, Store, TokenKey};
use http::{HeaderMap, Method};

use crate::auth::{presented_key, AdminKey, Verdict};
use crate::error::ApiError;

/// The key a request was accepted with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) role: ApiRole,
}

/// The role a request needs: `None` for the open routes (outside `/api/v1`), `viewer`
/// for reads, `write` (the route's) for anything that may change state.
pub(crate) fn required(api: bool, method: &Method, write: ApiRole) -> Option<ApiRole> {
    if !api {
        None
    } else if is_read(method) {
        Some(ApiRole::Viewer)
    } else {
        Some(write)
    }
}

/// Methods that never change state.
pub(crate) fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `role` may do what needs `needed`.
pub(crate) fn allowed(role: ApiRole, needed: Option<ApiRole>) -> bool {
    needed.is_none_or(|n| role >= n)
}

/// The built-in key and the named keys.
pub(crate) struct Access {
    pub(crate) builtin: AdminKey,
    token_key: TokenKey,
    /// The named keys; `None` until loaded or after a change.
    named: RwLock<Option<Arc<Vec<ApiKeyRecord>>>>,
    /// Bumped by every change, so a load that raced a change is not kept.
    generation: AtomicU64,
}

impl Access {
    pub(crate) fn new(builtin: AdminKey, token_key: TokenKey) -> Self {
        Access {
            builtin,
            token_key,
            named: RwLock::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// Forgets the named keys; the next request reloads them. Call it right after a
    /// change is committed (from the blocking call that made it).
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        *self.named.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The named keys, loading them if needed.
    pub(crate) async fn named(&self, store: &Store) -> Result<Arc<Vec<ApiKeyRecord>>, ApiError> {
        if let Some(keys) = self.named.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(keys);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let keys = Arc::new(store.call(|s| s.list_api_keys()).await?);
        let mut slot = self.named.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) == generation {
            *slot = Some(Arc::clone(&keys));
        }
        Ok(keys)
    }

    /// The identity of the key `headers` present; `401` without one or with a wrong
    /// one, `503` when the built-in key's slow check has no turn.
    pub(crate) async fn authenticate(
        &self,
        store: &Store,
        headers: &HeaderMap,
    ) -> Result<Identity, ApiError> {
        let Some(presented) = presented_key(headers) else {
            return Err(ApiError::Unauthorized(
                "missing API key: send `x-api-key: <key>` or `Authorization: Bearer <key>`",
            ));
        };
        let hash = self.token_key.hash(presented.as_bytes());
        let named = self.named(store).await?;
        // Every key is compared, so the time taken does not tell which one matched.
        let mut found = None;
        for key in named.iter() {
            if key.hash.matches(&hash) {
                found = Some(key);
            }
        }
        if let Some(key) = found {
            return Ok(Identity {
                name: key.name.clone(),
                role: key.role,
            });
        }
        match self.builtin.check(presented).await {
            Verdict::Accepted => Ok(Identity {
                name: self.builtin.name().to_owned(),
                role: ApiRole::Admin,
            }),
            Verdict::Rejected => Err(ApiError::Unauthorized("invalid API key")),
            Verdict::Busy => Err(ApiError::Unavailable(
                "too many API key checks in flight; retry".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        let write = ApiRole::Operator;
        let get = required(true, &Method::GET, write);
        let post = required(true, &Method::POST, write);
        assert!(allowed(ApiRole::Viewer, get));
        assert!(!allowed(ApiRole::Viewer, post));
        assert!(allowed(ApiRole::Operator, post));
        assert!(!allowed(
            ApiRole::Operator,
            required(true, &Method::DELETE, ApiRole::Admin)
        ));
        assert!(allowed(
            ApiRole::Admin,
            required(true, &Method::DELETE, ApiRole::Admin)
        ));
        assert!(allowed(
            ApiRole::Viewer,
            required(false, &Method::POST, ApiRole::Admin)
        ));
    }
}
