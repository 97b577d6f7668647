//! Device tokens as keyed hashes (SPEC §2): a device stored with a legacy PBKDF2 hash is
//! upgraded by its first successful CONNECT, a wrong token upgrades nothing, the install's
//! token key survives a restart, and an unknown id costs what a wrong token costs.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use fleetmq_storage::{now_ms, CredentialHash, DeviceCredential, DeviceId, NewDevice};
use rumqttc::{ConnectReturnCode, ConnectionError};

fn refused(r: Result<(rumqttc::AsyncClient, rumqttc::EventLoop), ConnectionError>) -> bool {
    matches!(
        r,
        Err(ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        ))
    )
}

async fn credential(b: &TestBroker, id: &str) -> DeviceCredential {
    let id: DeviceId = id.parse().unwrap();
    let found = b.store.call(move |s| s.get_device(&id)).await.unwrap();
    found.expect("device exists").credential
}

/// The device's credential once its upgrade (written in the background) is stored.
async fn upgraded(b: &TestBroker, id: &str) -> DeviceCredential {
    eventually(&format!("the upgrade of {id}"), || async {
        Some(credential(b, id).await).filter(|c| !c.is_legacy())
    })
    .await
}

/// Connects as device `id` over TCP with MQTT 3.1.1; how long until the CONNACK.
async fn connect_timed(b: &TestBroker, id: &str, token: &str) -> Duration {
    let started = Instant::now();
    let (c, _el) = connect_v4(b, Via::Tcp, id, Some((id, token)))
        .await
        .expect("device connects");
    let took = started.elapsed();
    c.disconnect().await.ok();
    took
}

#[tokio::test]
async fn a_legacy_pbkdf2_device_is_upgraded_by_its_first_connect() {
    let b = TestBroker::start().await;
    // As an older install stored it: PBKDF2 at the production cost.
    let token = "legacy-token-1";
    let new = NewDevice::new(
        "old-1".parse().unwrap(),
        DeviceCredential::Legacy(CredentialHash::new(token.as_bytes())),
        now_ms(),
    );
    b.store.call(move |s| s.create_device(new)).await.unwrap();

    // A wrong token is refused and changes nothing.
    assert!(refused(
        connect_v4(&b, Via::Tcp, "old-1", Some(("old-1", "wrong"))).await
    ));
    assert!(credential(&b, "old-1").await.is_legacy());

    let first = connect_timed(&b, "old-1", token).await;
    let stored = upgraded(&b, "old-1").await;
    let key = b.store.token_key().clone();
    assert!(stored.verify(&key, token.as_bytes()));

    // Later connects take the keyed path; the token and nothing else still works.
    let again = connect_timed(&b, "old-1", token).await;
    assert!(refused(
        connect_v4(&b, Via::Tcp, "old-1", Some(("old-1", "wrong"))).await
    ));
    eprintln!("legacy device: first connect {first:?} (PBKDF2 + upgrade), then {again:?}");
}

#[tokio::test]
async fn tokens_keep_working_across_a_restart() {
    let b = TestBroker::start().await;
    b.add_device("dev-1", "token-1", false).await;
    b.add_legacy_device("old-1", "token-2").await;
    b.add_legacy_device("old-2", "token-3").await;
    connect_timed(&b, "dev-1", "token-1").await;
    connect_timed(&b, "old-1", "token-2").await;
    let upgraded_1 = upgraded(&b, "old-1").await;

    let dir = b.stop().await;
    let b = TestBroker::with_config_in(fleetmq_broker::BrokerConfig::for_tests(), dir).await;
    // The key the hashes were made with is the one the file kept.
    assert_eq!(credential(&b, "old-1").await, upgraded_1);
    connect_timed(&b, "dev-1", "token-1").await;
    connect_timed(&b, "old-1", "token-2").await;
    // A device not seen before the restart is still upgraded now.
    assert!(credential(&b, "old-2").await.is_legacy());
    connect_timed(&b, "old-2", "token-3").await;
    upgraded(&b, "old-2").await;
    for (id, wrong) in [("dev-1", "token-2"), ("old-1", "token-1"), ("old-2", "x")] {
        assert!(refused(
            connect_v4(&b, Via::Tcp, id, Some((id, wrong))).await
        ));
    }
}

#[tokio::test]
async fn a_token_rotated_in_the_store_replaces_the_legacy_one() {
    let b = TestBroker::start().await;
    b.add_legacy_device("old-1", "before").await;
    let key = b.store.token_key().clone();
    let id: DeviceId = "old-1".parse().unwrap();
    let rotated = DeviceCredential::keyed(&key, b"after");
    b.store
        .call(move |s| s.set_device_credential(&id, rotated))
        .await
        .unwrap();
    assert!(refused(
        connect_v4(&b, Via::Tcp, "old-1", Some(("old-1", "before"))).await
    ));
    connect_timed(&b, "old-1", "after").await;
    assert!(credential(&b, "old-1").await.verify(&key, b"after"));
}

/// Before keyed hashes, a wrong token for a known id took a PBKDF2 check (21 ms measured)
/// and an unknown id none (0.34 ms): enumeration by timing. Both now take one keyed hash;
/// over loopback MQTT the two must be indistinguishable to within the noise.
#[tokio::test]
async fn an_unknown_id_costs_what_a_wrong_token_costs() {
    // What is timed is the check, which `mqtt.auth_backoff` would skip after a few.
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.auth_backoff.identity_failures = 0;
    config.auth_backoff.address_failures = 0;
    let b = TestBroker::with_config(config).await;
    b.add_device("dev-1", "right", false).await;
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..25 {
        let started = Instant::now();
        assert!(refused(
            connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "wrong"))).await
        ));
        wrong.push(started.elapsed());
        let nobody = format!("nobody-{i}");
        let started = Instant::now();
        assert!(refused(
            connect_v4(&b, Via::Tcp, &nobody, Some((&nobody, "wrong"))).await
        ));
        unknown.push(started.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (wrong, unknown) = (median(&mut wrong), median(&mut unknown));
    eprintln!("median refusal: wrong token {wrong:?}, unknown id {unknown:?}");
    let gap = wrong.abs_diff(unknown);
    assert!(
        gap < Duration::from_millis(3),
        "wrong token {wrong:?} vs unknown id {unknown:?}"
    );
}

/// A fleet of legacy devices reconnecting at once: every one gets in, and every record is
/// upgraded (in batches written by one task, not one write per CONNECT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_fleet_reconnecting_at_once_is_upgraded() {
    let b = TestBroker::start().await;
    let ids: Vec<String> = (0..40).map(|i| format!("old-{i:02}")).collect();
    for id in &ids {
        b.add_legacy_device(id, &format!("token-{id}")).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let opts = options_v4(&b, Via::Tcp, &id, Some((&id, &format!("token-{id}"))));
        tasks.spawn(async move {
            let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
            loop {
                let event = tokio::time::timeout(WAIT, el.poll())
                    .await
                    .expect("in time");
                if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) =
                    event.expect("connects")
                {
                    break;
                }
            }
            client.disconnect().await.ok();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let key = b.store.token_key().clone();
    for id in &ids {
        let stored = upgraded(&b, id).await;
        assert!(
            stored.verify(&key, format!("token-{id}").as_bytes()),
            "{id}"
        );
    }
}
