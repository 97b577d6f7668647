//! Refused connection attempts: each counted by its cause, kept in the recent refusals
//! with who the client said it was (never its secret), answered with the CONNACK code of
//! before; and the failure backoff of `[mqtt.auth_backoff]`, per identity and address.

use std::net::IpAddr;
use std::time::Duration;

use crate::common;

use common::conf::*;
use common::{eventually, TestBroker};
use fleetmq_broker::{BrokerConfig, RefusedConnect};

/// A username and password.
type Creds<'a> = Option<(&'a str, &'a str)>;

const NOT_AUTHORIZED_V4: u8 = 0x05;
const NOT_AUTHORIZED_V5: u8 = 0x87;

fn fleetmq(t: &Target) -> &TestBroker {
    t.broker.as_ref().expect("a fleetmq target")
}

fn conn(id: &str, creds: Option<(&str, &str)>) -> Conn {
    let mut c = Conn::new(id);
    c.login = creds.map(|(u, p)| (u.to_owned(), p.to_owned()));
    c
}

fn counted(t: &Target, cause: &str) -> u64 {
    let stats = fleetmq(t).handle.stats().connections;
    stats
        .refused_by_cause
        .get(cause)
        .copied()
        .unwrap_or_default()
}

fn refusals(t: &Target, identity: Option<&str>) -> Vec<RefusedConnect> {
    fleetmq(t)
        .handle
        .refused_connections(identity, None, 1000)
        .items
}

fn localhost(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Connects from `from` over TCP; the CONNACK's code and v5 reason string.
async fn attempt_from(t: &Target, from: IpAddr, ver: Ver, c: Conn) -> (u8, Option<String>) {
    let mut client = Client::open_tcp_from(t, from, ver).await;
    let ack = client.connect(c).await;
    (ack.code, ack.props.and_then(|p| p.reason_string))
}

async fn attempt(t: &Target, via: Via, ver: Ver, c: Conn) -> (u8, Option<String>) {
    let mut client = t.open(via, ver).await;
    let ack = client.connect(c).await;
    (ack.code, ack.props.and_then(|p| p.reason_string))
}

async fn credentials_broker() -> Target {
    let t = Target::with(|c| c.allow_anonymous = false).await;
    let b = fleetmq(&t);
    b.add_device("dev-1", "token-1", false).await;
    b.add_device("dev-2", "token-2", false).await;
    b.add_service("backend", "backend-pass", common::allow_all())
        .await;
    t
}

#[tokio::test]
async fn every_credential_cause_is_counted_listed_and_answered_as_before() {
    let t = credentials_broker().await;
    let cases: [(&str, &str, Creds<'_>); 6] = [
        ("wrong_token", "dev-1", Some(("dev-1", "secret-guess-1"))),
        ("unknown_device", "ghost", Some(("ghost", "secret-guess-2"))),
        (
            "unknown_service_client",
            "cid",
            Some(("nobody", "secret-guess-3")),
        ),
        ("wrong_password", "any", Some(("backend", "secret-guess-4"))),
        (
            "client_id_mismatch",
            "not-dev-2",
            Some(("dev-2", "token-2")),
        ),
        ("anonymous_not_allowed", "anon", None),
    ];
    for (cause, id, creds) in cases {
        for via in [Via::Tcp, Via::Ws] {
            let (code, _) = attempt(&t, via, Ver::V4, conn(id, creds)).await;
            assert_eq!(code, NOT_AUTHORIZED_V4, "{cause} {via:?} 3.1.1");
            let (code, reason) = attempt(&t, via, Ver::V5, conn(id, creds)).await;
            assert_eq!(code, NOT_AUTHORIZED_V5, "{cause} {via:?} 5");
            // The reason string of before: no cause on the wire.
            let told = if creds.is_some() {
                "NotAuthorized"
            } else {
                "AnonymousRefused"
            };
            assert_eq!(reason.as_deref(), Some(told), "{cause}");
        }
        assert_eq!(counted(&t, cause), 4, "{cause}");
        // One entry per (address, client id, cause): the four attempts collapsed.
        let listed = refusals(&t, Some(id));
        let [entry] = listed.as_slice() else {
            panic!("{cause}: one entry for {id}, got {listed:?}");
        };
        assert_eq!(entry.cause.name(), cause);
        assert_eq!(entry.count, 4);
        assert_eq!(entry.client_id.as_deref(), Some(id));
        assert_eq!(entry.username.as_deref(), creds.map(|(u, _)| u));
        assert_eq!(entry.protocol, Some("5"));
        assert!(entry.first_at_ms <= entry.at_ms);
    }
    let stats = fleetmq(&t).handle.stats().connections;
    assert_eq!(stats.refused_total, 24);
    assert_eq!(stats.refused_by_cause.values().sum::<u64>(), 24);
    let listed = serde_json::to_string(&refusals(&t, None)).unwrap();
    assert!(!listed.contains("secret-guess") && !listed.contains("token-2"));
    // The device's own filter also finds attempts that only named it as username.
    let for_dev_2 = refusals(&t, Some("dev-2"));
    assert_eq!(for_dev_2.len(), 1);
    assert_eq!(for_dev_2[0].client_id.as_deref(), Some("not-dev-2"));
}

#[tokio::test]
async fn protocol_causes_are_counted_and_answered_as_before() {
    let t = Target::with(|c| {
        c.max_keepalive = 60;
        c.connect_timeout = Duration::from_millis(300);
    })
    .await;
    // Protocol level 6.
    let mut c = t.open(Via::Tcp, Ver::V4).await;
    c.send_raw(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 1, b'x',
    ])
    .await;
    assert!(matches!(c.recv().await, Some(In::ConnAck(a)) if a.code == 0x01));
    // A first packet that is not a CONNECT.
    let mut c = t.open(Via::Tcp, Ver::V4).await;
    c.pingreq().await;
    c.closed().await;
    // An empty client id without a clean session (3.1.1).
    let mut empty = Conn::new("");
    empty.clean = false;
    assert_eq!(attempt(&t, Via::Tcp, Ver::V4, empty).await.0, 0x02);
    // A Keep Alive over mqtt.max_keepalive_s (3.1.1).
    let long = Conn::new("sleepy").keep_alive(120);
    assert_eq!(attempt(&t, Via::Ws, Ver::V4, long).await.0, 0x02);
    // A will the anonymous rules deny.
    let will = Conn::new("willing").will("device/x/status", b"gone", 0);
    assert_eq!(attempt(&t, Via::Tcp, Ver::V5, will).await.0, 0x87);
    // Nothing sent until the connect timeout; a socket closed at once.
    let mut silent = t.open(Via::Tcp, Ver::V4).await;
    silent.closed().await;
    drop(t.open(Via::Tcp, Ver::V4).await);
    // A WebSocket upgrade to a path that is not MQTT's.
    let url = format!("ws://{}/nope", t.ws);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    let expected = [
        ("unsupported_protocol", None),
        ("malformed_connect", None),
        ("invalid_client_id", None),
        ("keep_alive_too_long", Some("sleepy")),
        ("will_refused", Some("willing")),
        ("connect_timeout", None),
        ("closed_before_connect", None),
        ("handshake_failed", None),
    ];
    for (cause, client_id) in expected {
        eventually(cause, || async { (counted(&t, cause) == 1).then_some(()) }).await;
        let listed = refusals(&t, None);
        let entry = listed.iter().find(|e| e.cause.name() == cause);
        let entry = entry.unwrap_or_else(|| panic!("{cause} listed: {listed:?}"));
        assert_eq!(entry.client_id.as_deref(), client_id, "{cause}");
    }
}

#[tokio::test]
async fn the_connection_limit_is_a_cause_of_its_own() {
    let t = Target::with(|c| c.max_connections = 1).await;
    let _first = t.connect(Via::Tcp, Ver::V5, "first").await;
    assert_eq!(
        attempt(&t, Via::Tcp, Ver::V4, Conn::new("second")).await.0,
        0x03
    );
    assert_eq!(
        attempt(&t, Via::Ws, Ver::V5, Conn::new("third")).await.0,
        0x97
    );
    assert_eq!(counted(&t, "connection_limit"), 2);
}

fn backoff_config(identity_failures: u32, address_failures: u32) -> impl FnOnce(&mut BrokerConfig) {
    move |c| {
        c.allow_anonymous = false;
        c.auth_backoff.identity_failures = identity_failures;
        c.auth_backoff.address_failures = address_failures;
        // Long enough never to end within a test unless the test waits for it.
        c.auth_backoff.initial = Duration::from_secs(60);
        c.auth_backoff.max = Duration::from_secs(600);
    }
}

/// Wrong tokens for one device from one address get that pair backed off: even the right
/// token is refused from there without being checked, while the device connects with it
/// from another address, and other identities from the first address are still checked.
#[tokio::test]
async fn a_guessed_identity_is_backed_off_from_the_guessing_address_only() {
    let t = Target::with(backoff_config(3, 0)).await;
    fleetmq(&t).add_device("dev-1", "token-1", false).await;
    fleetmq(&t).add_device("dev-2", "token-2", false).await;
    let attacker = localhost(1);
    for i in 0..3 {
        let guess = conn("dev-1", Some(("dev-1", &format!("guess-{i}"))));
        assert_eq!(
            attempt_from(&t, attacker, Ver::V4, guess).await.0,
            NOT_AUTHORIZED_V4
        );
    }
    for ver in [Ver::V4, Ver::V5] {
        let right = conn("dev-1", Some(("dev-1", "token-1")));
        let (code, reason) = attempt_from(&t, attacker, ver, right).await;
        let want = if ver == Ver::V4 {
            NOT_AUTHORIZED_V4
        } else {
            NOT_AUTHORIZED_V5
        };
        assert_eq!(code, want, "backed off, answered as a wrong token");
        if ver == Ver::V5 {
            assert_eq!(reason.as_deref(), Some("NotAuthorized"));
        }
    }
    assert_eq!(counted(&t, "wrong_token"), 3);
    assert_eq!(counted(&t, "backoff"), 2);
    let stats = fleetmq(&t).handle.stats().connections.backoff;
    assert_eq!((stats.identities, stats.addresses), (1, 0));
    // The device itself, from its own address.
    let right = conn("dev-1", Some(("dev-1", "token-1")));
    assert_eq!(attempt_from(&t, localhost(2), Ver::V4, right).await.0, 0);
    // Another identity from the attacker's address is checked as usual.
    let other = conn("dev-2", Some(("dev-2", "token-2")));
    assert_eq!(attempt_from(&t, attacker, Ver::V5, other).await.0, 0);
    let listed = refusals(&t, Some("dev-1"));
    let causes: Vec<_> = listed.iter().map(|e| (e.cause.name(), e.count)).collect();
    assert_eq!(causes, [("backoff", 2), ("wrong_token", 3)]);
}

/// Many failures from one address, whatever the identities, back off that address.
#[tokio::test]
async fn a_guessing_address_is_backed_off_for_every_identity() {
    let t = Target::with(backoff_config(0, 4)).await;
    fleetmq(&t).add_device("dev-1", "token-1", false).await;
    let attacker = localhost(3);
    for i in 0..4 {
        let id = format!("ghost-{i}");
        let guess = conn(&id, Some((&id, "guess")));
        assert_eq!(
            attempt_from(&t, attacker, Ver::V5, guess).await.0,
            NOT_AUTHORIZED_V5
        );
    }
    let right = conn("dev-1", Some(("dev-1", "token-1")));
    assert_eq!(
        attempt_from(&t, attacker, Ver::V4, right.clone()).await.0,
        NOT_AUTHORIZED_V4
    );
    assert_eq!(counted(&t, "backoff"), 1);
    assert_eq!(fleetmq(&t).handle.stats().connections.backoff.addresses, 1);
    assert_eq!(attempt_from(&t, localhost(4), Ver::V4, right).await.0, 0);
}

/// A success starts the pair over; a block ends after its time.
#[tokio::test]
async fn a_success_resets_and_a_block_ends() {
    let t = Target::with(|c| {
        backoff_config(3, 0)(c);
        c.auth_backoff.initial = Duration::from_millis(500);
    })
    .await;
    fleetmq(&t).add_device("dev-1", "token-1", false).await;
    let from = localhost(5);
    let wrong = || conn("dev-1", Some(("dev-1", "wrong")));
    let right = || conn("dev-1", Some(("dev-1", "token-1")));
    for _ in 0..2 {
        assert_eq!(
            attempt_from(&t, from, Ver::V4, wrong()).await.0,
            NOT_AUTHORIZED_V4
        );
    }
    assert_eq!(attempt_from(&t, from, Ver::V4, right()).await.0, 0);
    for _ in 0..2 {
        assert_eq!(
            attempt_from(&t, from, Ver::V4, wrong()).await.0,
            NOT_AUTHORIZED_V4
        );
    }
    assert_eq!(counted(&t, "backoff"), 0, "reset by the success");
    assert_eq!(
        attempt_from(&t, from, Ver::V4, wrong()).await.0,
        NOT_AUTHORIZED_V4
    );
    assert_eq!(
        attempt_from(&t, from, Ver::V4, right()).await.0,
        NOT_AUTHORIZED_V4
    );
    assert_eq!(counted(&t, "backoff"), 1);
    eventually("the block to end", || async {
        (attempt_from(&t, from, Ver::V4, right()).await.0 == 0).then_some(())
    })
    .await;
}

/// The ring keeps the newest entries up to its bound, and repeats are one entry.
#[tokio::test]
async fn the_recent_refusals_are_bounded_and_collapse_repeats() {
    let t = Target::with(|c| {
        backoff_config(0, 0)(c);
        c.refusal_log.capacity = 4;
    })
    .await;
    for i in 0..6 {
        let id = format!("ghost-{i}");
        attempt(&t, Via::Tcp, Ver::V4, conn(&id, Some((&id, "x")))).await;
    }
    for _ in 0..5 {
        attempt(
            &t,
            Via::Ws,
            Ver::V5,
            conn("ghost-3", Some(("ghost-3", "x"))),
        )
        .await;
    }
    let listed = refusals(&t, None);
    let seen: Vec<_> = (listed.iter())
        .map(|e| (e.client_id.as_deref().unwrap(), e.count))
        .collect();
    assert_eq!(
        seen,
        [
            ("ghost-3", 6),
            ("ghost-5", 1),
            ("ghost-4", 1),
            ("ghost-2", 1)
        ]
    );
    assert_eq!(counted(&t, "unknown_device"), 11);
}

/// Issue 15: a flood of wrong service-client passwords from one address has two password
/// checks under way at a time and a bounded queue; the rest are refused at once
/// (`auth_busy`, v5 0x89 Server busy) without hashing, while the client's right password
/// from another address is checked as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_flood_from_one_address_is_bounded_and_others_still_connect() {
    let t = Target::with(backoff_config(0, 0)).await;
    // At the production cost, so that the guesses queue up.
    let record = fleetmq_storage::ServiceClientRecord {
        name: "backend".into(),
        credential: fleetmq_storage::CredentialHash::new(b"backend-pass"),
        rules: common::allow_all(),
        created_at_ms: fleetmq_storage::now_ms(),
    };
    (fleetmq(&t).store)
        .call(move |s| s.create_service_client(record))
        .await
        .expect("create service client");
    let mut flood = tokio::task::JoinSet::new();
    let guesses = 80;
    for i in 0..guesses {
        let c = conn(&format!("guess-{i}"), Some(("backend", "wrong")));
        let mut client = Client::open_tcp_from(&t, localhost(1), Ver::V5).await;
        flood.spawn(async move { client.connect(c).await.code });
    }
    let right = conn("backend-1", Some(("backend", "backend-pass")));
    let (code, _) = attempt_from(&t, localhost(2), Ver::V5, right).await;
    assert_eq!(code, 0, "the right password from elsewhere is checked");
    let mut codes = Vec::new();
    while let Some(code) = flood.join_next().await {
        codes.push(code.expect("attempt"));
    }
    let busy = codes.iter().filter(|c| **c == 0x89).count();
    let wrong = codes.iter().filter(|c| **c == NOT_AUTHORIZED_V5).count();
    assert_eq!(busy + wrong, guesses, "{codes:?}");
    assert!(busy >= 1, "not every guess was hashed: {codes:?}");
    assert_eq!(counted(&t, "auth_busy"), busy as u64);
    assert_eq!(counted(&t, "wrong_password"), wrong as u64);
}
