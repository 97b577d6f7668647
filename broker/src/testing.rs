//! A real broker on `127.0.0.1:0` with a fresh redb file, for integration tests of this
//! crate and of the admin API (feature `testing`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_storage::{
    now_ms, AclRule, CredentialHash, DeviceCredential, DeviceId, DeviceRecord, NewDevice,
    ServiceClientRecord, Store,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::connection::hold;
use crate::{BrokerConfig, BrokerHandle, Listeners};

/// A running broker; everything stops when it is dropped.
pub struct TestBroker {
    pub handle: BrokerHandle,
    pub store: Store,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub tls: Option<SocketAddr>,
    /// The bound addresses of `config.listeners` (`[[mqtt.listeners]]`), in its order.
    pub extra: Vec<SocketAddr>,
    /// The Teltonika listener, when `config.teltonika.listen` is set.
    pub teltonika: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// The data directory (taken by [`TestBroker::stop`] for restarts).
    pub dir: Option<tempfile::TempDir>,
}

/// Hashing cost for test service-client passwords and legacy device tokens: the broker
/// verifies whatever the hash says.
const TEST_ITERATIONS: u32 = 1_000;

impl TestBroker {
    /// Starts with [`BrokerConfig::for_tests`].
    pub async fn start() -> TestBroker {
        TestBroker::with_config(BrokerConfig::for_tests()).await
    }

    /// Starts with the given config (listener addresses are used as given).
    pub async fn with_config(config: BrokerConfig) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        TestBroker::with_config_in(config, dir).await
    }

    /// Starts on an existing data directory (restart tests).
    pub async fn with_config_in(config: BrokerConfig, dir: tempfile::TempDir) -> TestBroker {
        let store = Store::open(dir.path()).expect("open store");
        let listeners = Listeners::bind(&config).await.expect("bind listeners");
        let (tcp, ws, tls, extra) = (
            listeners.tcp_addr(),
            listeners.ws_addr(),
            listeners.tls_addr(),
            listeners.extra_addrs(),
        );
        let teltonika = listeners.teltonika_addr();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handle = crate::start(config, listeners, store.clone(), shutdown.clone(), &tracker)
            .await
            .expect("start broker");
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        TestBroker {
            handle,
            store,
            tcp: tcp.unwrap_or(unbound),
            ws: ws.unwrap_or(unbound),
            tls,
            extra,
            teltonika,
            shutdown,
            tracker,
            dir: Some(dir),
        }
    }

    /// Provisions a device with `token` as its password, stored as the admin API stores
    /// it: a keyed hash.
    pub async fn add_device(&self, id: &str, token: &str, encrypted: bool) -> DeviceRecord {
        let credential = DeviceCredential::keyed(self.store.token_key(), token.as_bytes());
        self.create_device(id, credential, encrypted).await
    }

    /// Provisions a device whose token is stored as a PBKDF2 hash, as every device was
    /// before keyed hashes (an older install's record).
    pub async fn add_legacy_device(&self, id: &str, token: &str) -> DeviceRecord {
        let credential = DeviceCredential::Legacy(hash(token));
        self.create_device(id, credential, false).await
    }

    async fn create_device(
        &self,
        id: &str,
        credential: DeviceCredential,
        encrypted: bool,
    ) -> DeviceRecord {
        let id: DeviceId = id.parse().expect("valid device id");
        let mut new = NewDevice::new(id, credential, now_ms());
        new.encrypted = encrypted;
        self.store
            .call(move |s| s.create_device(new))
            .await
            .expect("create device")
    }

    /// Provisions a Teltonika tracker (plugin `teltonika`) whose id is its IMEI.
    pub async fn add_tracker(&self, imei: &str) -> DeviceRecord {
        let id: DeviceId = imei.parse().expect("valid device id");
        let token = b"unused: trackers log in by IMEI";
        let credential = DeviceCredential::keyed(self.store.token_key(), token);
        let mut new = NewDevice::new(id, credential, now_ms());
        new.plugin = "teltonika".to_owned();
        self.store
            .call(move |s| s.create_device(new))
            .await
            .expect("create tracker")
    }

    /// Creates a service client with these rules.
    pub async fn add_service(&self, name: &str, password: &str, rules: Vec<AclRule>) {
        let rec = ServiceClientRecord {
            name: name.to_owned(),
            credential: hash(password),
            rules,
            created_at_ms: now_ms(),
        };
        self.store
            .call(move |s| s.create_service_client(rec))
            .await
            .expect("create service client");
    }

    /// Holds back from rumqttd's router what the connection(s) of `client_id` hand it,
    /// from the first batch with a SUBSCRIBE on, until [`RouterHold::release`]: the
    /// link layer goes on (a connected persistent session's subscription has taken
    /// effect in its ledger, a resumed one's re-subscribe is followed by its going
    /// live), but the router processes the SUBSCRIBE only after whatever other clients
    /// publish meanwhile. That is the window a SUBACK settles (`link/session/owed.rs`),
    /// which the router's own timing opens only now and then. Armed before the SUBSCRIBE
    /// (or the CONNECT whose re-subscribe is to be held).
    pub fn hold_router(&self, client_id: &str) -> RouterHold {
        let state = hold::arm(client_id);
        RouterHold {
            client_id: client_id.to_owned(),
            state,
        }
    }

    /// Stops accepting, closes every connection and waits for the tasks.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.tracker.wait()).await;
        self.dir.take().expect("data dir present until stop")
    }
}

/// See [`TestBroker::hold_router`]. Dropped without [`RouterHold::release`], it stops
/// holding: what was held goes to the router with the connection's next batch for it.
pub struct RouterHold {
    client_id: String,
    state: Arc<hold::HoldState>,
}

impl RouterHold {
    /// Waits until a SUBSCRIBE of the client is being held; panics after `within`.
    pub async fn held(&self, within: Duration) {
        if self.state.holding.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::timeout(within, self.state.held.notified())
            .await
            .unwrap_or_else(|_| panic!("no SUBSCRIBE of {} was held", self.client_id));
    }

    /// The router gets what was held back (in one event, as the link would have sent
    /// it) and the client's packets flow as usual again. Panics if nothing was held.
    pub fn release(self, broker: &TestBroker) {
        assert!(
            self.state.holding.load(Ordering::SeqCst),
            "release of {}: nothing was held",
            self.client_id
        );
        hold::disarm(&self.client_id);
        let told = broker.handle.core.sessions.send_where(
            |l| l.info.client_id == self.client_id,
            || crate::link::session::live::Control::RouterRelease,
        );
        assert!(told > 0, "release of {}: not connected", self.client_id);
    }
}

impl Drop for RouterHold {
    fn drop(&mut self) {
        hold::disarm(&self.client_id);
    }
}

fn hash(secret: &str) -> CredentialHash {
    CredentialHash::with_iterations(
        secret.as_bytes(),
        NonZeroU32::new(TEST_ITERATIONS).expect("non-zero"),
    )
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
