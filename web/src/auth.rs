//! The admin API key: making sure one exists ([`ensure_admin_key`]) and checking the
//! key a request presents ([`AdminKey`]).
//!
//! Only a slow salted hash of the key is stored. Checking that hash on every request
//! would cost a PBKDF2 run each (tens of milliseconds of CPU), so once a key has been
//! accepted, its HMAC under a random per-process key is remembered and later requests
//! are compared against that in constant time. There is exactly one valid key, so once
//! it is known every other key is rejected without the slow path; before that, at most
//! [`MAX_SLOW_VERIFIES`] slow checks run at once; further requests wait up to
//! [`SLOW_VERIFY_WAIT`] for a turn (re-checking the remembered key first, so the right
//! key is never refused because it arrived together with others) and then get `503`, so
//! a flood of wrong keys cannot stall the server.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use fleetmq_storage::{generate_token, CredentialHash, Store};
use http::{header, HeaderMap};
use ring::hmac;
use ring::rand::SystemRandom;
use tokio::sync::Semaphore;

use crate::error::WebError;

/// File name of the generated key inside the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// How many slow (PBKDF2) key checks may run at once.
pub const MAX_SLOW_VERIFIES: usize = 2;
/// How long a request waits for a slow check before it is answered `503`.
pub const SLOW_VERIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The outcome of checking a presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Rejected,
    /// Too many slow checks in flight; try again.
    Busy,
}
/// A presented key longer than this is rejected without hashing it.
const MAX_PRESENTED_KEY_LEN: usize = 1024;
/// The built-in key's name when it comes from `admin.api_key`.
pub const CONFIGURED_KEY_NAME: &str = "config";
/// The built-in key's name when it was generated (`<data_dir>/admin.key`).
pub const GENERATED_KEY_NAME: &str = "admin";

/// Checks the API key of a request. Cheap to clone.
#[derive(Clone)]
pub struct AdminKey {
    inner: Arc<Inner>,
}

struct Inner {
    /// [`CONFIGURED_KEY_NAME`] or [`GENERATED_KEY_NAME`].
    name: &'static str,
    /// Revoked through the API (or before this start): accepts nothing.
    revoked: AtomicBool,
    hash: CredentialHash,
    /// Per-process random key for [`Inner::accepted`].
    mac_key: hmac::Key,
    /// HMAC of the key once it has been seen to verify.
    accepted: OnceLock<hmac::Tag>,
    slow_verifies: Arc<Semaphore>,
}

impl AdminKey {
    /// A key known only by its stored hash: the first correct request pays one slow check.
    pub fn from_hash(hash: CredentialHash) -> Self {
        Self::named(GENERATED_KEY_NAME, hash)
    }

    fn named(name: &'static str, hash: CredentialHash) -> Self {
        let rng = SystemRandom::new();
        // Like the store's token generator: no safe fallback if the OS RNG fails.
        let mac_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .expect("the operating system's random number generator failed");
        AdminKey {
            inner: Arc::new(Inner {
                name,
                revoked: AtomicBool::new(false),
                hash,
                mac_key,
                accepted: OnceLock::new(),
                slow_verifies: Arc::new(Semaphore::new(MAX_SLOW_VERIFIES)),
            }),
        }
    }

    /// A key whose plaintext is known (configured or just generated) and matches `hash`.
    fn known(name: &'static str, hash: CredentialHash, key: &str) -> Self {
        let admin_key = Self::named(name, hash);
        let tag = hmac::sign(&admin_key.inner.mac_key, key.as_bytes());
        let _ = admin_key.inner.accepted.set(tag);
        admin_key
    }

    /// A built-in key that was revoked: it accepts nothing.
    fn revoked() -> Self {
        let key = Self::named(
            GENERATED_KEY_NAME,
            CredentialHash::new(generate_token().as_bytes()),
        );
        key.revoke();
        key
    }

    /// Its name in `GET /api/v1/keys` and the audit log: `config` when configured,
    /// `admin` when generated.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Whether it comes from `admin.api_key` (and so cannot be revoked by the API).
    pub fn is_configured(&self) -> bool {
        self.inner.name == CONFIGURED_KEY_NAME
    }

    /// Whether it was revoked; it then accepts nothing.
    pub fn is_revoked(&self) -> bool {
        self.inner.revoked.load(Ordering::Acquire)
    }

    /// Stops accepting it (its stored hash is already gone).
    pub(crate) fn revoke(&self) {
        self.inner.revoked.store(true, Ordering::Release);
    }

    /// Whether `presented` is the admin key. Never blocks an async thread.
    pub async fn verify(&self, presented: &str) -> bool {
        self.check(presented).await == Verdict::Accepted
    }

    fn remembered(&self, presented: &str) -> Option<Verdict> {
        let inner = &self.inner;
        let tag = inner.accepted.get()?;
        let ok = hmac::verify(&inner.mac_key, presented.as_bytes(), tag.as_ref()).is_ok();
        Some(if ok {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        })
    }

    /// Checks `presented` against the admin key. Never blocks an async thread.
    pub async fn check(&self, presented: &str) -> Verdict {
        let inner = &self.inner;
        if presented.is_empty() || presented.len() > MAX_PRESENTED_KEY_LEN || self.is_revoked() {
            return Verdict::Rejected;
        }
        if let Some(verdict) = self.remembered(presented) {
            return verdict;
        }
        let wait = tokio::time::timeout(
            SLOW_VERIFY_WAIT,
            inner.slow_verifies.clone().acquire_owned(),
        );
        let Ok(Ok(permit)) = wait.await else {
            tracing::debug!("admin key check postponed: too many slow checks in flight");
            return Verdict::Busy;
        };
        // Another request may have proven the key while this one waited.
        if let Some(verdict) = self.remembered(presented) {
            return verdict;
        }
        let hash = inner.hash.clone();
        let candidate = presented.to_owned();
        // The permit moves into the task: it is held until the hash is done even if
        // the request is dropped meanwhile.
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(candidate.as_bytes())
        })
        .await;
        let ok = checked.unwrap_or(false);
        if ok {
            let _ = inner
                .accepted
                .set(hmac::sign(&inner.mac_key, presented.as_bytes()));
            Verdict::Accepted
        } else {
            Verdict::Rejected
        }
    }
}

/// The key a request presents, from `x-api-key` or else `Authorization: Bearer`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-api-key") {
        return value.to_str().ok().map(str::trim);
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Makes sure an admin API key exists and returns its checker.
///
/// - A configured key wins: its hash replaces whatever the store held.
/// - Otherwise the stored hash is used.
/// - Otherwise a key is generated, written to `<data_dir>/admin.key` (mode 0600, before
///   its hash is stored, so a stored hash always has a readable key), and its hash
///   stored; the log says where the key is.
pub async fn ensure_admin_key(
    store: &Store,
    data_dir: &Path,
    configured: Option<&str>,
) -> Result<AdminKey, WebError> {
    if let Some(key) = configured {
        let key = key.to_owned();
        let (hash, key) = store
            .call(move |s| {
                let hash = CredentialHash::new(key.as_bytes());
                s.set_admin_key_hash(&hash).map(|()| (hash, key))
            })
            .await?;
        return Ok(AdminKey::known(CONFIGURED_KEY_NAME, hash, &key));
    }
    if let Some(hash) = store.call(|s| s.admin_key_hash()).await? {
        return Ok(AdminKey::from_hash(hash));
    }
    if store.call(|s| s.admin_key_revoked()).await? {
        tracing::info!("the built-in admin key was revoked; only named API keys are accepted");
        return Ok(AdminKey::revoked());
    }
    let path = data_dir.join(ADMIN_KEY_FILE);
    let key = generate_token();
    let hash = {
        let (path, key) = (path.clone(), key.clone());
        store
            .call(move |s| -> Result<CredentialHash, WebError> {
                write_key_file(&path, &key)?;
                let hash = CredentialHash::new(key.as_bytes());
                s.set_admin_key_hash(&hash)?;
                Ok(hash)
            })
            .await?
    };
    tracing::info!(path = %path.display(), "generated an admin API key; it is in this file");
    Ok(AdminKey::known(GENERATED_KEY_NAME, hash, &key))
}

/// Writes the key through a temporary file so a crash never leaves a half-written key,
/// readable by the owner only.
fn write_key_file(path: &Path, key: &str) -> Result<(), WebError> {
    use std::io::Write;
    let err = |source| WebError::WriteKeyFile {
        path: path.to_owned(),
        source,
    };
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn fast_hash(key: &str) -> CredentialHash {
        CredentialHash::with_iterations(key.as_bytes(), NonZeroU32::new(2).unwrap())
    }

    #[tokio::test]
    async fn from_hash_verifies_then_caches() {
        let key = AdminKey::from_hash(fast_hash("right-key"));
        assert!(!key.verify("wrong-key").await);
        assert!(key.inner.accepted.get().is_none());
        assert!(key.verify("right-key").await);
        assert!(key.inner.accepted.get().is_some());
        assert!(key.verify("right-key").await);
        assert!(!key.verify("wrong-key").await);
        assert!(!key.verify("").await);
    }

    #[tokio::test]
    async fn known_key_never_needs_the_hash() {
        let key = AdminKey::known(GENERATED_KEY_NAME, fast_hash("right-key"), "right-key");
        assert!(key.verify("right-key").await);
        assert!(!key.verify("right-kez").await);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_slow_path_waits_then_answers_busy() {
        let key = AdminKey::from_hash(fast_hash("right-key"));
        let held = key
            .inner
            .slow_verifies
            .clone()
            .acquire_many_owned(MAX_SLOW_VERIFIES as u32)
            .await
            .unwrap();
        assert_eq!(key.check("right-key").await, Verdict::Busy);
        drop(held);
        assert_eq!(key.check("right-key").await, Verdict::Accepted);
    }

    #[tokio::test]
    async fn many_concurrent_first_requests_with_the_right_key_all_pass() {
        let key = AdminKey::from_hash(fast_hash("right-key"));
        let checks = (0..16).map(|_| {
            let key = key.clone();
            tokio::spawn(async move { key.check("right-key").await })
        });
        for check in checks {
            assert_eq!(check.await.unwrap(), Verdict::Accepted);
        }
    }

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(presented_key(&h), Some("xyz"));
    }
}
