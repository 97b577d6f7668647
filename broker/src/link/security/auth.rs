//! Who is connecting: device registry and service-client lookup, password checks.
//!
//! Tokens are stored only as PBKDF2 hashes, so checking one costs tens of milliseconds of
//! CPU. After a successful slow check, an HMAC of the accepted secret (under a key that
//! lives only in this process) is remembered together with the stored hash's salt; a later
//! CONNECT with the same secret against the same stored hash is checked in constant time
//! against that. A rotated or deleted credential changes the salt or removes the record,
//! so a remembered entry can never accept a secret the store no longer accepts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleetmq_storage::{CredentialHash, DeviceId, DeviceRecord, ServiceClientRecord, Store};
use ring::hmac;
use tokio::sync::Semaphore;

/// What a CONNECT authenticated as.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    Device(Box<DeviceRecord>),
    Service(ServiceClientRecord),
    Anonymous,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown user, wrong password, or a device whose client id is not its id.
    NotAuthorized,
    /// No credentials and anonymous clients are not allowed.
    AnonymousRefused,
    /// The store failed: our fault, not the client's.
    Unavailable,
}

/// Credentials a CONNECT presented.
pub(crate) struct Presented<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) username: Option<&'a str>,
    pub(crate) password: Option<&'a [u8]>,
    /// The CN of a verified TLS client certificate.
    pub(crate) cert_cn: Option<&'a str>,
}

struct Remembered {
    salt: [u8; 16],
    tag: hmac::Tag,
}

/// Looks up and checks credentials.
pub(crate) struct Authenticator {
    store: Store,
    allow_anonymous: bool,
    fingerprint_key: hmac::Key,
    remembered: Mutex<HashMap<String, Remembered>>,
    /// Bounds concurrent PBKDF2 checks so a flood of bad passwords cannot take every core.
    slow_checks: Arc<Semaphore>,
}

impl Authenticator {
    pub(crate) fn new(store: Store, allow_anonymous: bool) -> Authenticator {
        let rng = ring::rand::SystemRandom::new();
        let fingerprint_key =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the OS random source works");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            store,
            allow_anonymous,
            fingerprint_key,
            remembered: Mutex::new(HashMap::new()),
            slow_checks: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Authenticates a CONNECT (SPEC §2).
    pub(crate) async fn authenticate(&self, p: Presented<'_>) -> Result<Identity, Refusal> {
        if let Some(identity) = self.by_certificate(&p).await? {
            return Ok(identity);
        }
        let Some(username) = p.username else {
            return if self.allow_anonymous {
                Ok(Identity::Anonymous)
            } else {
                Err(Refusal::AnonymousRefused)
            };
        };
        let password = p.password.unwrap_or_default();
        if let Ok(id) = username.parse::<DeviceId>() {
            let found = self.store.call({
                let id = id.clone();
                move |s| s.get_device(&id)
            });
            if let Some(device) = found.await.map_err(|_| Refusal::Unavailable)? {
                if p.client_id != device.id.as_str() {
                    return Err(Refusal::NotAuthorized);
                }
                let key = format!("d:{}", device.id);
                self.check(&key, &device.credential, password).await?;
                return Ok(Identity::Device(Box::new(device)));
            }
        }
        let name = username.to_owned();
        let found = self.store.call(move |s| s.get_service_client(&name)).await;
        let Some(client) = found.map_err(|_| Refusal::Unavailable)? else {
            return Err(Refusal::NotAuthorized);
        };
        let key = format!("s:{}", client.name);
        self.check(&key, &client.credential, password).await?;
        Ok(Identity::Service(client))
    }

    /// A verified client certificate whose CN is a provisioned device id is that device's
    /// credential (as with Mosquitto's `use_identity_as_username`): the client id (and the
    /// username, if one is given) must be that id. A certificate whose CN is no device (a
    /// service client's, a shared fleet certificate) falls back to username and password.
    async fn by_certificate(&self, p: &Presented<'_>) -> Result<Option<Identity>, Refusal> {
        let Some(cn) = p.cert_cn else { return Ok(None) };
        let Ok(id) = cn.parse::<DeviceId>() else {
            return Ok(None);
        };
        let found = self.store.call(move |s| s.get_device(&id)).await;
        let Some(device) = found.map_err(|_| Refusal::Unavailable)? else {
            return Ok(None);
        };
        if p.client_id != cn || p.username.is_some_and(|u| u != cn) {
            return Err(Refusal::NotAuthorized);
        }
        Ok(Some(Identity::Device(Box::new(device))))
    }

    async fn check(
        &self,
        key: &str,
        stored: &CredentialHash,
        secret: &[u8],
    ) -> Result<(), Refusal> {
        if self.remembered_matches(key, stored, secret) {
            return Ok(());
        }
        let permit = self
            .slow_checks
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refusal::Unavailable)?;
        let (stored_c, secret_c) = (stored.clone(), secret.to_vec());
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            stored_c.verify(&secret_c)
        })
        .await
        .map_err(|_| Refusal::Unavailable)?;
        if !ok {
            return Err(Refusal::NotAuthorized);
        }
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        let tag = hmac::sign(&self.fingerprint_key, secret);
        remembered.insert(
            key.to_owned(),
            Remembered {
                salt: stored.salt,
                tag,
            },
        );
        Ok(())
    }

    /// Constant-time: `hmac::verify` compares the tags without early exit.
    fn remembered_matches(&self, key: &str, stored: &CredentialHash, secret: &[u8]) -> bool {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        match remembered.get(key) {
            Some(r) if r.salt == stored.salt => {
                hmac::verify(&self.fingerprint_key, secret, r.tag.as_ref()).is_ok()
            }
            _ => false,
        }
    }

    /// Forgets what was remembered for a device (credentials rotated or device deleted).
    pub(crate) fn forget_device(&self, id: &DeviceId) {
        self.remembered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("d:{id}"));
    }

    /// Forgets what was remembered for a service client.
    pub(crate) fn forget_service(&self, name: &str) {
        self.remembered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("s:{name}"));
    }
}
