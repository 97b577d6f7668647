//! Conformance harness: a packet-level MQTT client over TCP or WebSocket speaking 3.1.1
//! or 5, and a target that is either a fresh [`TestBroker`] or an external broker.
//!
//! `CONFORMANCE_TARGET=host:tcpport:wsport[:tcpport_v5]` points every conformance test at
//! a running broker with anonymous access (Mosquitto, bare rumqttd, another fleetmq); the
//! optional last port is for brokers that take MQTT 5 on a listener of its own (rumqttd).
//! Tests that need a fleetmq-specific configuration skip themselves there.
//!
//! Outgoing packets are encoded with rumqttc's client codecs; incoming packets are read
//! by a small parser of our own (so reason codes are seen as the bytes on the wire), with
//! rumqttc's v5 codec for PUBLISH properties.

mod client;
mod packet;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use super::TestBroker;
use fleetmq_broker::BrokerConfig;

#[allow(unused_imports, reason = "each test file uses a different subset")]
pub use client::Client;
#[allow(unused_imports, reason = "each test file uses a different subset")]
pub use packet::{
    connect_props, filter, publish_props, put_var_int, raw_publish, will_props, Conn, Will,
};
#[allow(unused_imports, reason = "each test file uses a different subset")]
pub use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, LastWillProperties, PublishProperties, SubscribeProperties,
};
#[allow(unused_imports, reason = "each test file uses a different subset")]
pub use wire::{ConnAck, In, Msg};

/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to wait for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(400);

/// Which listener a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Ws,
}

/// Which protocol version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ver {
    V4,
    V5,
}

/// Generates one `#[tokio::test]` per transport and version for `case(target, via, ver)`;
/// `ignore = "why"` after the list marks them `#[ignore]` (a known fleetmq failure that
/// `benches/peers/run.sh` still measures, with `--include-ignored`).
#[macro_export]
macro_rules! matrix {
    ($name:ident, $case:ident) => {
        $crate::matrix!($name, $case, [tcp_v4: Tcp V4, tcp_v5: Tcp V5, ws_v4: Ws V4, ws_v5: Ws V5]);
    };
    ($name:ident, $case:ident, v5) => {
        $crate::matrix!($name, $case, [tcp_v5: Tcp V5, ws_v5: Ws V5]);
    };
    ($name:ident, $case:ident, [$($t:ident: $via:ident $ver:ident),*], ignore = $why:literal) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = $why]
                async fn $t() {
                    use $crate::common::conf::{Ver, Via};
                    super::$case(Via::$via, Ver::$ver).await
                }
            )*
        }
    };
    ($name:ident, $case:ident, [$($t:ident: $via:ident $ver:ident),*]) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $t() {
                    use $crate::common::conf::{Ver, Via};
                    super::$case(Via::$via, Ver::$ver).await
                }
            )*
        }
    };
}

/// The broker under test.
pub struct Target {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// MQTT 5 over TCP, when the broker wants it on a port of its own.
    pub tcp5: Option<SocketAddr>,
    /// `None` when the tests run against an external broker.
    pub broker: Option<TestBroker>,
    /// The configuration `broker` runs with, for [`Target::restart`].
    config: Option<BrokerConfig>,
}

impl Target {
    /// A fleetmq with anonymous access (SPEC §3 default rules), or the external target.
    pub async fn start() -> Target {
        Target::with(|_| {}).await
    }

    /// Like [`Target::start`], with the fleetmq config adjusted (ignored for an external
    /// target: check [`Target::external`] when the test depends on the adjustment).
    pub async fn with(adjust: impl FnOnce(&mut BrokerConfig)) -> Target {
        if let Some(t) = external() {
            return t;
        }
        let mut config = BrokerConfig::for_tests();
        config.allow_anonymous = true;
        adjust(&mut config);
        let broker = TestBroker::with_config(config.clone()).await;
        Target::fleetmq(broker, config)
    }

    fn fleetmq(broker: TestBroker, config: BrokerConfig) -> Target {
        Target {
            tcp: broker.tcp,
            ws: broker.ws,
            tcp5: None,
            broker: Some(broker),
            config: Some(config),
        }
    }

    pub fn external(&self) -> bool {
        self.broker.is_none()
    }

    /// True for an external target, after printing `SKIPPED` and why: the caller returns
    /// at once, as the case needs fleetmq itself (its configuration, its admin API or a
    /// restart). `benches/peers/run.sh` counts these apart from the passes.
    pub fn skip_external(&self, why: &str) -> bool {
        if self.external() {
            skipped(&format!("fleetmq only: {why}"));
        }
        self.external()
    }

    /// Stops fleetmq and starts it again on the same data directory and configuration,
    /// on new ports (fleetmq only: check [`Target::skip_external`] first).
    pub async fn restart(mut self) -> Target {
        let broker = self.broker.take().expect("restart needs fleetmq");
        let config = self.config.take().expect("fleetmq's config");
        let dir = broker.stop().await;
        Target::fleetmq(
            TestBroker::with_config_in(config.clone(), dir).await,
            config,
        )
    }

    /// Opens a client connection (no CONNECT sent yet).
    pub async fn open(&self, via: Via, ver: Ver) -> Client {
        Client::open(self, via, ver).await
    }

    /// Opens and connects with a clean session; panics unless CONNACK is a success.
    pub async fn connect(&self, via: Via, ver: Ver, id: &str) -> Client {
        let mut c = self.open(via, ver).await;
        let ack = c.connect(Conn::new(id)).await;
        assert_eq!(ack.code, 0, "CONNACK for {id}: {ack:?}");
        c
    }

    /// Opens and connects over TCP with a persistent session ([`Conn::persistent`], kept
    /// 600 s in v5), waiting up to `within` for the CONNACK; panics unless it is a
    /// success. Returns the client and whether its session was present.
    pub async fn connect_persistent(&self, ver: Ver, id: &str, within: Duration) -> (Client, bool) {
        let mut c = self.open(Via::Tcp, ver).await;
        c.send_connect(Conn::persistent(id, ver, 600)).await;
        match c.recv_within(within).await {
            Some(In::ConnAck(a)) => {
                assert_eq!(a.code, 0, "CONNACK for {id}: {a:?}");
                (c, a.session_present)
            }
            other => panic!("expected CONNACK for {id}, got {other:?}"),
        }
    }
}

/// `CONFORMANCE_TARGET=host:tcpport:wsport[:tcpport_v5]` (host: an IP address).
fn external() -> Option<Target> {
    let spec = std::env::var("CONFORMANCE_TARGET").ok()?;
    let parts: Vec<&str> = spec.split(':').collect();
    let ip = parts
        .first()?
        .parse()
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let port = |i: usize| parts.get(i).and_then(|p| p.parse::<u16>().ok());
    Some(Target {
        tcp: SocketAddr::new(ip, port(1)?),
        ws: SocketAddr::new(ip, port(2)?),
        tcp5: port(3).map(|p| SocketAddr::new(ip, p)),
        broker: None,
        config: None,
    })
}

/// Prints `SKIPPED` and why, for a case that returns without checking anything
/// (`benches/peers/run.sh` counts these apart from the passes).
pub fn skipped(why: &str) {
    println!("SKIPPED: {why}");
}

/// Unique names per test run, so an external broker's leftovers never interfere.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{prefix}{}x{}",
        t % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
