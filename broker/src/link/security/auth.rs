//! Who is connecting: device registry and service-client lookup, password checks.
//!
//! A device token is stored as a keyed hash (HMAC-SHA256 under the install's token key,
//! SPEC §2) and checked in constant time in about a microsecond, right here on the
//! connection's task: a fleet reconnecting after a restart is never held up by hashing.
//!
//! Two kinds of credential are still PBKDF2 hashes, checked on the blocking pool behind
//! a gate that bounds the work per address and overall (`slow_checks.rs`):
//! - service-client passwords (chosen by people, so slow on purpose). After a successful
//!   slow check, an HMAC of the accepted secret (under a key that lives only in this
//!   process) is remembered together with the stored hash's salt; a later CONNECT with the
//!   same secret against the same stored hash is checked in constant time against that.
//!   A deleted client's entry is forgotten, and a new record has a new salt, so a
//!   remembered entry can never accept a secret the store no longer accepts.
//! - device tokens stored before keyed hashes. A successful check queues the token's keyed
//!   hash for the record, and a task writes what is queued in batches, one non-durable
//!   transaction each (`Store::upgrade_device_credentials`; one write per device, each
//!   waiting for the store's writer, made a fleet of 2,000 reconnect in minutes instead
//!   of the 20 s its PBKDF2 checks take), so each such device pays PBKDF2 once. A
//!   rotation issues a keyed hash too.
//!
//! A username that is neither a device nor a service client is checked against a decoy
//! keyed hash, so an unknown id costs what a wrong token for a known device costs; one
//! that is not presented as a device is answered after the time a password check takes
//! (a sleep, no CPU), as a wrong service-client password is.

use std::collections::HashMap;
use std::sync::Mutex;

use fleetmq_storage::{
    CredentialHash, CredentialUpgrade, DeviceCredential, DeviceId, DeviceRecord,
    ServiceClientRecord, Store, TokenHash,
};
use ring::hmac;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::security::slow_checks::{NotChecked, SlowChecks};
use crate::stats::RefusalCause;

/// Verified legacy credentials waiting for their upgrade; past that many, a device is
/// upgraded at a later connect instead.
const UPGRADE_QUEUE: usize = 4096;
/// Upgrades written per transaction.
const UPGRADE_BATCH: usize = 1024;

/// What a CONNECT authenticated as.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    Device(Box<DeviceRecord>),
    Service(Box<ServiceClientRecord>),
    Anonymous,
}

/// Why a CONNECT was refused. Only the log and the counters tell these apart: the
/// client reads "not authorized" for each of the first five.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A username that is no device and no service client.
    UnknownUser {
        /// Whether it was presented the way a device presents itself (a device id, the
        /// client id being the same).
        as_device: bool,
    },
    /// A device's token did not match.
    WrongToken,
    /// A service client's password did not match.
    WrongPassword,
    /// A device's username or certificate with another client id (or username).
    ClientIdMismatch,
    /// No credentials and anonymous clients are not allowed.
    AnonymousRefused,
    /// The store failed: our fault, not the client's.
    Unavailable,
    /// A password check was not run: this address has too many under way, or too many
    /// wait overall (`slow_checks.rs`).
    Busy,
}

impl Refusal {
    pub(crate) fn cause(self) -> RefusalCause {
        match self {
            Refusal::UnknownUser { as_device: true } => RefusalCause::UnknownDevice,
            Refusal::UnknownUser { as_device: false } => RefusalCause::UnknownServiceClient,
            Refusal::WrongToken => RefusalCause::WrongToken,
            Refusal::WrongPassword => RefusalCause::WrongPassword,
            Refusal::ClientIdMismatch => RefusalCause::ClientIdMismatch,
            Refusal::AnonymousRefused => RefusalCause::AnonymousNotAllowed,
            Refusal::Unavailable => RefusalCause::ServerUnavailable,
            Refusal::Busy => RefusalCause::AuthBusy,
        }
    }

    /// What happened, for the log.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Refusal::UnknownUser { as_device: true } => {
                "no device with this id (never provisioned, or deleted)"
            }
            Refusal::UnknownUser { as_device: false } => {
                "no device or service client with this username"
            }
            Refusal::WrongToken => "the token is not the device's current one",
            Refusal::WrongPassword => "the password is not the service client's",
            Refusal::ClientIdMismatch => "a device connects with client id = username = its id",
            Refusal::AnonymousRefused => "no credentials, and security.allow_anonymous is off",
            Refusal::Unavailable => "the store could not be read",
            Refusal::Busy => "too many password checks under way (for this address, or at all)",
        }
    }

    /// The MQTT 5 reason string, as before there were causes: every bad credential
    /// reads the same, so a guesser learns nothing from it.
    pub(crate) fn told(self) -> &'static str {
        match self {
            Refusal::AnonymousRefused => "AnonymousRefused",
            Refusal::Unavailable | Refusal::Busy => "Unavailable",
            _ => "NotAuthorized",
        }
    }
}

/// Credentials a CONNECT presented.
pub(crate) struct Presented<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) username: Option<&'a str>,
    pub(crate) password: Option<&'a [u8]>,
    /// The CN of a verified TLS client certificate.
    pub(crate) cert_cn: Option<&'a str>,
    /// Where the CONNECT came from (password checks are bounded per address).
    pub(crate) peer: std::net::IpAddr,
}

/// Looks up and checks credentials.
pub(crate) struct Authenticator {
    store: Store,
    allow_anonymous: bool,
    /// What an unknown username's password is checked against (a random tag no token
    /// hashes to).
    decoy: DeviceCredential,
    /// Accepted service-client passwords, by name.
    remembered: Remembered,
    /// Bounds PBKDF2 work per address and overall (`slow_checks.rs`).
    slow_checks: SlowChecks,
    /// To the task that writes keyed hashes over verified legacy ones.
    upgrades: mpsc::Sender<CredentialUpgrade>,
}

impl Authenticator {
    /// Also starts the task that upgrades legacy device credentials (until `shutdown`).
    pub(crate) fn new(
        store: Store,
        allow_anonymous: bool,
        max_wait: std::time::Duration,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Authenticator {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let tag = fleetmq_storage::generate_key();
        let (upgrades, queued) = mpsc::channel(UPGRADE_QUEUE);
        tracker.spawn(upgrade_legacy(store.clone(), queued, shutdown.clone()));
        Authenticator {
            store,
            allow_anonymous,
            decoy: DeviceCredential::Keyed(TokenHash { tag }),
            remembered: Remembered::new(),
            slow_checks: SlowChecks::new(cores, max_wait),
            upgrades,
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
            let found = self.store.call(move |s| s.get_device(&id));
            if let Some(device) = found.await.map_err(|_| Refusal::Unavailable)? {
                if p.client_id != device.id.as_str() {
                    return Err(Refusal::ClientIdMismatch);
                }
                let device = self.check_device(device, password, p.peer).await?;
                return Ok(Identity::Device(Box::new(device)));
            }
        }
        let name = username.to_owned();
        let found = self.store.call(move |s| s.get_service_client(&name)).await;
        let Some(client) = found.map_err(|_| Refusal::Unavailable)? else {
            // Costs what a wrong token for a known device costs, and when presented as
            // no device, takes what a wrong service-client password takes.
            std::hint::black_box(self.decoy.verify(self.store.token_key(), password));
            let as_device = p.client_id == username && username.parse::<DeviceId>().is_ok();
            if !as_device {
                self.slow_checks.pause_like_a_check().await;
            }
            return Err(Refusal::UnknownUser { as_device });
        };
        self.check_service(&client, password, p.peer).await?;
        Ok(Identity::Service(Box::new(client)))
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
            return Err(Refusal::ClientIdMismatch);
        }
        Ok(Some(Identity::Device(Box::new(device))))
    }

    /// Checks a device's token; one that matches a legacy hash is queued for its upgrade.
    async fn check_device(
        &self,
        device: DeviceRecord,
        token: &[u8],
        peer: std::net::IpAddr,
    ) -> Result<DeviceRecord, Refusal> {
        let legacy = match &device.credential {
            DeviceCredential::Legacy(hash) => hash.clone(),
            keyed @ DeviceCredential::Keyed(_) => {
                return if keyed.verify(self.store.token_key(), token) {
                    Ok(device)
                } else {
                    Err(Refusal::WrongToken)
                };
            }
        };
        if !self.slow_verify(peer, legacy.clone(), token).await? {
            return Err(Refusal::WrongToken);
        }
        let upgrade = CredentialUpgrade {
            id: device.id.clone(),
            checked: legacy,
            keyed: self.store.token_key().hash(token),
        };
        if self.upgrades.try_send(upgrade).is_err() {
            tracing::debug!(device_id = %device.id, "token hash upgrade queue full; upgraded at a later connect");
        }
        Ok(device)
    }

    async fn check_service(
        &self,
        client: &ServiceClientRecord,
        secret: &[u8],
        peer: std::net::IpAddr,
    ) -> Result<(), Refusal> {
        let stored = &client.credential;
        if self.remembered.matches(&client.name, stored, secret) {
            return Ok(());
        }
        if !self.slow_verify(peer, stored.clone(), secret).await? {
            return Err(Refusal::WrongPassword);
        }
        self.remembered.insert(&client.name, stored, secret);
        Ok(())
    }

    /// PBKDF2 through the gate (`slow_checks.rs`).
    async fn slow_verify(
        &self,
        peer: std::net::IpAddr,
        stored: CredentialHash,
        secret: &[u8],
    ) -> Result<bool, Refusal> {
        (self.slow_checks.verify(peer, stored, secret).await).map_err(|e| match e {
            NotChecked::Busy => Refusal::Busy,
            NotChecked::Unavailable => Refusal::Unavailable,
        })
    }

    /// Forgets what was remembered for a service client.
    pub(crate) fn forget_service(&self, name: &str) {
        self.remembered.forget(name);
    }
}

/// Writes the upgrades queued by [`Authenticator::check_device`], as many as are waiting
/// (up to [`UPGRADE_BATCH`]) per transaction; at shutdown, what is still queued too.
async fn upgrade_legacy(
    store: Store,
    mut queued: mpsc::Receiver<CredentialUpgrade>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(UPGRADE_BATCH);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            n = queued.recv_many(&mut batch, UPGRADE_BATCH) => {
                if n == 0 {
                    return;
                }
                write_upgrades(&store, &mut batch).await;
            }
        }
    }
    while let Ok(upgrade) = queued.try_recv() {
        batch.push(upgrade);
    }
    write_upgrades(&store, &mut batch).await;
}

async fn write_upgrades(store: &Store, batch: &mut Vec<CredentialUpgrade>) {
    if batch.is_empty() {
        return;
    }
    let upgrades = std::mem::take(batch);
    let queued = upgrades.len();
    match store
        .call(move |s| s.upgrade_device_credentials(&upgrades))
        .await
    {
        Ok(upgraded) => tracing::debug!(
            upgraded,
            queued,
            "device token hashes upgraded to keyed hashes"
        ),
        // The legacy hashes still verify: the next connect queues them again.
        Err(e) => tracing::error!(error = %e, queued, "cannot upgrade device token hashes"),
    }
}

/// Accepted slow secrets by service-client name: the stored hash's salt and an HMAC of
/// the secret under a key that lives only in this process.
struct Remembered {
    key: hmac::Key,
    entries: Mutex<HashMap<String, RememberedEntry>>,
}

struct RememberedEntry {
    salt: [u8; 16],
    tag: hmac::Tag,
}

impl Remembered {
    fn new() -> Remembered {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("the OS random source works");
        Remembered {
            key,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Constant-time: `hmac::verify` compares the tags without early exit.
    fn matches(&self, name: &str, stored: &CredentialHash, secret: &[u8]) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(name) {
            Some(r) if r.salt == stored.salt => {
                hmac::verify(&self.key, secret, r.tag.as_ref()).is_ok()
            }
            _ => false,
        }
    }

    fn insert(&self, name: &str, stored: &CredentialHash, secret: &[u8]) {
        let tag = hmac::sign(&self.key, secret);
        let entry = RememberedEntry {
            salt: stored.salt,
            tag,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(name.to_owned(), entry);
    }

    fn forget(&self, name: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}
