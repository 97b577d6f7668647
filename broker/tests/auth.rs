//! CONNECT authentication matrix (SPEC §2) over TCP and WebSocket, MQTT 3.1.1 and 5.

use crate::common;

use common::*;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rumqttc::{ConnectReturnCode, ConnectionError};

fn refused_v4(
    r: Result<(rumqttc::AsyncClient, rumqttc::EventLoop), ConnectionError>,
) -> ConnectReturnCode {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
        Ok(_) => panic!("expected a CONNACK refusal, got a session"),
    }
}

fn refused_v5(
    r: Result<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop), rumqttc::v5::ConnectionError>,
) -> V5Code {
    match r {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
        Ok(_) => panic!("expected a CONNACK refusal, got a session"),
    }
}

#[tokio::test]
async fn device_connects_with_its_token_on_every_listener_and_version() {
    let b = TestBroker::start().await;
    b.add_device("dev-1", "secret-token", false).await;
    for via in [Via::Tcp, Via::Ws] {
        let (c, _el) = connect_v4(&b, via, "dev-1", Some(("dev-1", "secret-token")))
            .await
            .expect("v4 connect");
        c.disconnect().await.ok();
        drop(_el);
        let (c, _el) = connect_v5(&b, via, "dev-1", Some(("dev-1", "secret-token")))
            .await
            .expect("v5 connect");
        c.disconnect().await.ok();
    }
}

#[tokio::test]
async fn bad_credentials_get_not_authorized_in_both_versions() {
    let b = TestBroker::start().await;
    b.add_device("dev-1", "secret-token", false).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    let cases: [(&str, Option<(&str, &str)>); 5] = [
        ("dev-1", Some(("dev-1", "wrong"))),
        // A device must connect with client id = username = its id.
        ("someone-else", Some(("dev-1", "secret-token"))),
        ("x", Some(("nobody", "whatever"))),
        ("backend", Some(("backend", "wrong"))),
        // Anonymous clients are refused unless security.allow_anonymous is set.
        ("anon", None),
    ];
    for via in [Via::Tcp, Via::Ws] {
        for (id, creds) in cases {
            assert_eq!(
                refused_v4(connect_v4(&b, via, id, creds).await),
                ConnectReturnCode::NotAuthorized,
                "{via:?} {id} {creds:?}"
            );
            assert_eq!(
                refused_v5(connect_v5(&b, via, id, creds).await),
                V5Code::NotAuthorized,
                "{via:?} {id} {creds:?}"
            );
        }
    }
    let stats = b.handle.stats();
    assert_eq!(stats.connections.refused_total, 20);
    assert_eq!(stats.connections.current, 0);
}

#[tokio::test]
async fn service_clients_and_allowed_anonymous_clients_connect() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.allow_anonymous = true;
    let b = TestBroker::with_config(config).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    let (_c, _el) = connect_v4(
        &b,
        Via::Tcp,
        "any-client-id",
        Some(("backend", "backend-pass")),
    )
    .await
    .expect("service");
    let (_c2, _el2) = connect_v5(&b, Via::Ws, "anon-1", None)
        .await
        .expect("anonymous");
    let kinds: Vec<_> = b
        .handle
        .clients()
        .into_iter()
        .map(|c| (c.client_id, c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("anon-1".to_string(), fleetmq_broker::ClientKind::Anonymous),
            (
                "any-client-id".to_string(),
                fleetmq_broker::ClientKind::Service
            )
        ]
    );
}

#[tokio::test]
async fn a_deleted_device_is_disconnected_and_its_token_stops_working() {
    let b = TestBroker::start().await;
    let rec = b.add_device("dev-1", "secret-token", false).await;
    let (_c, mut el) = connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .unwrap();
    assert!(b.handle.is_device_online(&rec.id));
    let id = rec.id.clone();
    b.store.call(move |s| s.delete_device(&id)).await.unwrap();
    b.handle.device_removed(&rec.id);
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if el.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the live connection is closed at once");
    assert_eq!(
        refused_v4(connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "secret-token"))).await),
        ConnectReturnCode::NotAuthorized
    );
}

#[tokio::test]
async fn a_second_connection_takes_the_session_over() {
    let b = TestBroker::start().await;
    let rec = b.add_device("dev-1", "secret-token", false).await;
    let (_c1, mut el1) = connect_v5(&b, Via::Tcp, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .unwrap();
    let (c2, el2) = connect_v4(&b, Via::Ws, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .unwrap();
    // The first connection is told why (v5 DISCONNECT 0x8E) and closed.
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            match el1.poll().await {
                Err(rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                )) => return Some(reason_code),
                Ok(_) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await
    .expect("old connection closed");
    assert_eq!(
        reason,
        Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver)
    );
    let _driver = drive_v4(el2);
    c2.subscribe("device/dev-1/command", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(b.handle.is_device_online(&rec.id));
    assert_eq!(b.handle.clients().len(), 1);
    assert_eq!(b.handle.stats().connections.devices, 1);
}

#[tokio::test]
async fn a_full_server_says_busy_and_bad_client_ids_are_rejected() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.max_connections = 1;
    config.allow_anonymous = true;
    let b = TestBroker::with_config(config).await;
    let (_c, el) = connect_v4(&b, Via::Tcp, "first", None).await.unwrap();
    let _d = drive_v4(el);
    assert_eq!(
        refused_v4(connect_v4(&b, Via::Tcp, "second", None).await),
        ConnectReturnCode::ServiceUnavailable
    );
    assert_eq!(
        refused_v5(connect_v5(&b, Via::Ws, "second", None).await),
        V5Code::QuotaExceeded
    );

    let b = TestBroker::with_config({
        let mut c = fleetmq_broker::BrokerConfig::for_tests();
        c.allow_anonymous = true;
        c
    })
    .await;
    // [MQTT-3.1.3-8]: an empty client id needs a clean session in 3.1.1.
    // (rumqttc refuses to send that, so the CONNECT is written by hand.)
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.tcp).await.unwrap();
        s.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 30, 0, 0])
            .await
            .unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            reply,
            [0x20, 2, 0, 2],
            "CONNACK identifier rejected, then close"
        );
    }
    // With a clean session, or in v5, the broker assigns one.
    let (_c, _el) = connect_v4(&b, Via::Tcp, "", None)
        .await
        .expect("assigned id");
    let (_c5, mut el5) = rumqttc::v5::AsyncClient::new(options_v5(&b, Via::Tcp, "", None), 10);
    let assigned = next_v5(&mut el5, |p| match p {
        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a) => Some(
            a.properties
                .as_ref()
                .and_then(|p| p.assigned_client_identifier.clone()),
        ),
        _ => None,
    })
    .await;
    assert!(assigned.is_some_and(|id| id.starts_with("fleetmq-")));
}

#[tokio::test]
async fn a_client_that_never_sends_connect_is_dropped_after_the_connect_timeout() {
    use tokio::io::AsyncReadExt;
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.connect_timeout = std::time::Duration::from_millis(300);
    let b = TestBroker::with_config(config).await;
    let mut silent = tokio::net::TcpStream::connect(b.tcp).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed by the broker")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Same on the WebSocket port before the upgrade.
    let mut silent = tokio::net::TcpStream::connect(b.ws).await.unwrap();
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed by the broker")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// Only an authenticated client takes a slot of `mqtt.max_connections`: on a full
/// server a wrong password still hears "not authorized", not "busy", and while many
/// wrong passwords are being checked a real device still gets in.
#[tokio::test]
async fn wrong_passwords_take_no_connection_slot() {
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.max_connections = 2;
    // Eight wrong passwords for `backend` from this address would back it off here
    // (`mqtt.auth_backoff`, tested in `refusals`), and the last CONNECT would not be
    // checked at all.
    config.auth_backoff.identity_failures = 0;
    let b = TestBroker::with_config(config).await;
    b.add_device("dev-1", "secret-token", false).await;
    b.add_device("dev-2", "other-token", false).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    let (_c, el) = connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .expect("first device");
    let _d = drive_v4(el);
    let wrong = (0..8).map(|i| {
        let b = &b;
        async move {
            let id = format!("backend-{i}");
            refused_v4(connect_v4(b, Via::Tcp, &id, Some(("backend", "wrong"))).await)
        }
    });
    let (codes, second) = tokio::join!(
        futures_util::future::join_all(wrong),
        connect_v4(&b, Via::Tcp, "dev-2", Some(("dev-2", "other-token")))
    );
    assert!(
        codes.iter().all(|c| *c == ConnectReturnCode::NotAuthorized),
        "{codes:?}"
    );
    let (_c2, el2) = second.expect("the second device gets the last slot");
    let _d2 = drive_v4(el2);
    // Full now: a wrong password is still told why it failed.
    assert_eq!(
        refused_v4(connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "wrong"))).await),
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(
        refused_v4(connect_v4(&b, Via::Tcp, "x", Some(("backend", "backend-pass"))).await),
        ConnectReturnCode::ServiceUnavailable
    );
}

/// Sockets that never send CONNECT hold at most `mqtt.max_pending_connects` slots: past
/// that the listeners stop accepting (the kernel's backlog waits), and the next client
/// is served as soon as a silent socket goes.
#[tokio::test]
async fn silent_sockets_are_bounded_by_the_pending_budget() {
    use tokio::io::AsyncReadExt;
    let mut config = fleetmq_broker::BrokerConfig::for_tests();
    config.max_pending_connects = 2;
    config.connect_timeout = std::time::Duration::from_secs(2);
    config.allow_anonymous = true;
    let b = TestBroker::with_config(config).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(b.tcp).await.unwrap());
    }
    // The third is connected by the kernel, but nobody reads its CONNECT yet.
    let waiting = tokio::spawn({
        let b = b.tcp;
        async move {
            let mut s = tokio::net::TcpStream::connect(b).await.unwrap();
            use tokio::io::AsyncWriteExt;
            s.write_all(&[
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'w',
            ])
            .await
            .unwrap();
            let mut connack = [0u8; 4];
            s.read_exact(&mut connack).await.map(|_| connack)
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "answered while the budget was full");
    drop(silent.pop());
    let connack = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("served once a slot was free")
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // The remaining silent socket still goes at the connect timeout.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, silent[0].read(&mut buf))
        .await
        .expect("closed by the broker")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
