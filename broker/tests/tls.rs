//! MQTT over TLS (SPEC §1, §2): rustls with the ring provider on both ends, token and
//! client-certificate authentication, a listener that survives what is not TLS, and
//! certificate files that fail at bind time with their path in the error.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use fleetmq_broker::{BrokerConfig, ClientKind, Listeners, TlsConfig, Transport as Listener};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet};
use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, Packet, QoS, TlsConfiguration};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// Certificates

/// A certificate authority that issues the server's and the clients' certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &*self.issuer).expect("sign leaf");
        Leaf { cert, key }
    }

    /// A client certificate whose subject CN is `cn`.
    fn client(&self, cn: &str) -> Leaf {
        self.issue(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A server CA, the broker's certificate and key on disk, and optionally a client CA.
struct Pki {
    dir: tempfile::TempDir,
    server_ca: Ca,
    client_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let server_ca = Ca::new("fleetmq test server CA");
        let client_ca = Ca::new("fleetmq test device CA");
        let server = server_ca.issue(
            "fleetmq test broker",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
        write("server.pem", server.cert.pem()).expect("write server.pem");
        write("server.key", server.key.serialize_pem()).expect("write server.key");
        write("client-ca.pem", client_ca.pem()).expect("write client-ca.pem");
        Pki {
            dir,
            server_ca,
            client_ca,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[mqtt.tls]` on port 0; with `require_client_cert` the device CA is `client_ca`.
    fn tls_config(&self, require_client_cert: bool) -> TlsConfig {
        TlsConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: require_client_cert.then(|| self.path("client-ca.pem")),
        }
    }

    async fn broker(&self, require_client_cert: bool) -> TestBroker {
        let mut config = BrokerConfig::for_tests();
        config.tls = Some(self.tls_config(require_client_cert));
        TestBroker::with_config(config).await
    }

    /// What a client trusts (the server CA) and, optionally, the certificate it presents.
    fn client_config(&self, cert: Option<&Leaf>) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(self.server_ca.issuer.der().clone())
            .expect("trust the server CA");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match cert {
            Some(leaf) => {
                let chain: Vec<CertificateDer<'static>> = vec![leaf.cert.der().clone()];
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.serialize_der()));
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client cert")
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

// ---------------------------------------------------------------------------------------
// Clients

fn tls_port(b: &TestBroker) -> u16 {
    b.tls.expect("the TLS listener is bound").port()
}

fn tls_options_v4(
    b: &TestBroker,
    tls: Arc<ClientConfig>,
    id: &str,
    creds: Option<(&str, &str)>,
) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", tls_port(b));
    opts.set_transport(rumqttc::Transport::tls_with_config(
        TlsConfiguration::Rustls(tls),
    ));
    opts.set_keep_alive(std::time::Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    opts
}

async fn connect_tls_v4(
    b: &TestBroker,
    tls: Arc<ClientConfig>,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), ConnectionError> {
    let (client, mut el) = rumqttc::AsyncClient::new(tls_options_v4(b, tls, id, creds), 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK or an error in time")?
        {
            rumqttc::Event::Incoming(Packet::ConnAck(_)) => return Ok((client, el)),
            _ => continue,
        }
    }
}

async fn connect_tls_v5(
    b: &TestBroker,
    tls: Arc<ClientConfig>,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop), rumqttc::v5::ConnectionError> {
    let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", tls_port(b));
    opts.set_transport(rumqttc::Transport::tls_with_config(
        TlsConfiguration::Rustls(tls),
    ));
    opts.set_keep_alive(std::time::Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK or an error in time")?
        {
            rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_)) => return Ok((client, el)),
            _ => continue,
        }
    }
}

/// A TCP service client subscribed to every device's telemetry (keep the client alive:
/// dropping it ends the event loop).
async fn telemetry_listener(b: &TestBroker) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    b.add_service("backend", "backend-pass", allow_all()).await;
    let (svc, mut el) = connect_v4(b, Via::Tcp, "backend", Some(("backend", "backend-pass")))
        .await
        .expect("service connects over TCP");
    let codes = subscribe_v4(&svc, &mut el, "device/+/telemetry", QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![1]);
    (svc, el)
}

async fn next_telemetry(el: &mut rumqttc::EventLoop) -> (String, Vec<u8>) {
    next_v4(el, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.to_vec())),
        _ => None,
    })
    .await
}

fn refused_v4<T>(r: Result<T, ConnectionError>) -> ConnectReturnCode {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
        Ok(_) => panic!("expected a CONNACK refusal, got a session"),
    }
}

fn refused_v5<T>(r: Result<T, rumqttc::v5::ConnectionError>) -> V5Code {
    match r {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
        Ok(_) => panic!("expected a CONNACK refusal, got a session"),
    }
}

/// The TLS handshake failed: no CONNACK, and the client read a fatal TLS alert from the
/// broker. With TLS 1.3 the client learns the server's verdict on its certificate only
/// after its side of the handshake is done, from the alert it reads after sending CONNECT,
/// so rumqttc reports it as a read error rather than a `Tls` error.
fn handshake_failed<T>(r: Result<T, ConnectionError>, alert: &str) {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => {
            panic!("expected the TLS handshake to fail, got CONNACK {code:?}")
        }
        Err(e) => {
            let e = format!("{e:?}");
            let expected = format!("AlertReceived({alert})");
            assert!(e.contains(&expected), "expected {expected}, got {e}");
        }
        Ok(_) => panic!("expected the TLS handshake to fail, got a session"),
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn device_with_token_over_tls_reaches_a_tcp_service_in_both_versions() {
    let pki = Pki::new();
    let b = pki.broker(false).await;
    b.add_device("dev-1", "secret-token", false).await;
    let (_svc, mut svc) = telemetry_listener(&b).await;
    let tls = pki.client_config(None);

    let (dev, el) = connect_tls_v4(&b, tls.clone(), "dev-1", Some(("dev-1", "secret-token")))
        .await
        .expect("3.1.1 device connects over TLS");
    let _drive = drive_v4(el);
    let info = b
        .handle
        .clients()
        .into_iter()
        .find(|c| c.client_id == "dev-1")
        .expect("dev-1 listed");
    assert_eq!(
        (info.kind, info.transport, info.protocol),
        (ClientKind::Device, Listener::Tls, "3.1.1")
    );
    dev.publish(
        "device/dev-1/telemetry",
        QoS::AtLeastOnce,
        false,
        br#"{"cpu":40}"#.to_vec(),
    )
    .await
    .expect("queue publish");
    assert_eq!(
        next_telemetry(&mut svc).await,
        ("device/dev-1/telemetry".into(), br#"{"cpu":40}"#.to_vec())
    );
    dev.disconnect().await.ok();

    let (dev, el) = connect_tls_v5(&b, tls, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .expect("MQTT 5 device connects over TLS");
    let _drive = drive_v5(el);
    dev.publish(
        "device/dev-1/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        br#"{"cpu":41}"#.to_vec(),
    )
    .await
    .expect("queue publish");
    assert_eq!(
        next_telemetry(&mut svc).await,
        ("device/dev-1/telemetry".into(), br#"{"cpu":41}"#.to_vec())
    );
    dev.disconnect().await.ok();
}

#[tokio::test]
async fn wrong_token_over_tls_is_not_authorized() {
    let pki = Pki::new();
    let b = pki.broker(false).await;
    b.add_device("dev-1", "secret-token", false).await;
    let tls = pki.client_config(None);
    let r = connect_tls_v4(&b, tls.clone(), "dev-1", Some(("dev-1", "wrong"))).await;
    assert_eq!(refused_v4(r), ConnectReturnCode::NotAuthorized);
    let r = connect_tls_v5(&b, tls, "dev-1", Some(("dev-1", "wrong"))).await;
    assert_eq!(refused_v5(r), V5Code::NotAuthorized);
}

#[tokio::test]
async fn client_certificate_naming_the_device_authenticates_it_without_a_password() {
    let pki = Pki::new();
    let b = pki.broker(true).await;
    b.add_device("dev-1", "secret-token", false).await;
    let (_svc, mut svc) = telemetry_listener(&b).await;
    let tls = pki.client_config(Some(&pki.client_ca.client("dev-1")));

    let (dev, el) = connect_tls_v4(&b, tls.clone(), "dev-1", None)
        .await
        .expect("3.1.1 device connects with its certificate alone");
    let _drive = drive_v4(el);
    let info = b
        .handle
        .clients()
        .into_iter()
        .find(|c| c.client_id == "dev-1")
        .expect("dev-1 listed");
    assert_eq!(
        (info.kind, info.transport, info.username),
        (ClientKind::Device, Listener::Tls, None)
    );
    dev.publish(
        "device/dev-1/telemetry",
        QoS::AtLeastOnce,
        false,
        br#"{"t":1}"#.to_vec(),
    )
    .await
    .expect("queue publish");
    assert_eq!(
        next_telemetry(&mut svc).await,
        ("device/dev-1/telemetry".into(), br#"{"t":1}"#.to_vec())
    );
    // The device ACL applies to a certificate-authenticated device like to any other.
    dev.publish(
        "device/dev-2/telemetry",
        QoS::AtLeastOnce,
        false,
        b"{}".to_vec(),
    )
    .await
    .expect("queue publish");
    dev.disconnect().await.ok();

    let (dev, el) = connect_tls_v5(&b, tls, "dev-1", None)
        .await
        .expect("MQTT 5 device connects with its certificate alone");
    let _drive = drive_v5(el);
    dev.publish(
        "device/dev-1/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        br#"{"t":2}"#.to_vec(),
    )
    .await
    .expect("queue publish");
    // The denied dev-2 publish above never arrived: the next message is this one.
    assert_eq!(
        next_telemetry(&mut svc).await,
        ("device/dev-1/telemetry".into(), br#"{"t":2}"#.to_vec())
    );
    dev.disconnect().await.ok();
}

#[tokio::test]
async fn certificate_of_an_unknown_device_or_another_client_id_is_not_authorized() {
    let pki = Pki::new();
    let b = pki.broker(true).await;
    b.add_device("dev-1", "token-1", false).await;
    b.add_device("dev-2", "token-2", false).await;
    let ghost = pki.client_config(Some(&pki.client_ca.client("ghost")));
    let not_an_id = pki.client_config(Some(&pki.client_ca.client("not a device id")));
    let dev1 = pki.client_config(Some(&pki.client_ca.client("dev-1")));
    let cases = [
        ("CN of an unprovisioned device", &ghost, "ghost", None),
        (
            "CN that is no device id",
            &not_an_id,
            "not a device id",
            None,
        ),
        ("CN != client id", &dev1, "dev-2", None),
        // A device's certificate cannot be combined with another device's token.
        (
            "CN != client id, other device's token",
            &dev1,
            "dev-2",
            Some(("dev-2", "token-2")),
        ),
    ];
    for (what, tls, id, creds) in cases {
        let r = connect_tls_v4(&b, (*tls).clone(), id, creds).await;
        assert_eq!(refused_v4(r), ConnectReturnCode::NotAuthorized, "{what}");
        let r = connect_tls_v5(&b, (*tls).clone(), id, creds).await;
        assert_eq!(refused_v5(r), V5Code::NotAuthorized, "{what} (v5)");
    }
    assert!(b.handle.clients().is_empty(), "{:?}", b.handle.clients());
}

#[tokio::test]
async fn without_a_certificate_from_the_client_ca_the_handshake_fails() {
    let pki = Pki::new();
    let b = pki.broker(true).await;
    b.add_device("dev-1", "secret-token", false).await;

    // No certificate, even with a valid token.
    let r = connect_tls_v4(
        &b,
        pki.client_config(None),
        "dev-1",
        Some(("dev-1", "secret-token")),
    )
    .await;
    handshake_failed(r, "CertificateRequired");
    // A certificate naming a provisioned device, but issued by a CA the broker does not trust.
    let rogue = Ca::new("rogue CA");
    let r = connect_tls_v4(
        &b,
        pki.client_config(Some(&rogue.client("dev-1"))),
        "dev-1",
        None,
    )
    .await;
    handshake_failed(r, "UnknownCA");
    // A server certificate is no client certificate, even from the right CA.
    let r = connect_tls_v4(
        &b,
        pki.client_config(Some(&pki.client_ca.issue(
            "dev-1",
            &[],
            ExtendedKeyUsagePurpose::ServerAuth,
        ))),
        "dev-1",
        None,
    )
    .await;
    handshake_failed(r, "UnsupportedCertificate");
    assert!(b.handle.clients().is_empty(), "{:?}", b.handle.clients());
    assert_eq!(b.handle.stats().connections.accepted_total, 0);

    // The listener is still fine for a device with a good certificate.
    let (dev, _el) = connect_tls_v4(
        &b,
        pki.client_config(Some(&pki.client_ca.client("dev-1"))),
        "dev-1",
        None,
    )
    .await
    .expect("a good certificate still works");
    dev.disconnect().await.ok();
}

/// Writes `bytes` to the TLS port and reads until the broker closes the connection;
/// returns what it answered. Panics if the broker keeps the socket open.
async fn throw_at_tls_port(b: &TestBroker, bytes: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect(("127.0.0.1", tls_port(b)))
        .await
        .expect("TCP connect to the TLS port");
    // The broker may close while we are still writing; that is a fine answer too.
    let _ = socket.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("the broker closes a connection that does not speak TLS");
    answer
}

/// An MQTT 3.1.1 CONNECT for client id `dev-1`, clean session, keep-alive 60 s.
const PLAIN_CONNECT: &[u8] = &[
    0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 5, b'd', b'e', b'v', b'-', b'1',
];

#[tokio::test]
async fn garbage_and_plain_mqtt_on_the_tls_port_leave_the_broker_healthy() {
    let pki = Pki::new();
    let b = pki.broker(false).await;
    b.add_device("dev-1", "secret-token", false).await;

    let answer = throw_at_tls_port(&b, PLAIN_CONNECT).await;
    assert_ne!(answer.first(), Some(&0x20), "no CONNACK in plaintext");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let answer = throw_at_tls_port(&b, &garbage).await;
    assert_ne!(answer.first(), Some(&0x20));
    // An HTTP request, and a TLS record header that promises more than it sends.
    throw_at_tls_port(&b, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut truncated = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    truncated.extend_from_slice(&[0x03, 0x03]);
    {
        let mut socket = TcpStream::connect(("127.0.0.1", tls_port(&b)))
            .await
            .expect("connect");
        socket.write_all(&truncated).await.expect("write");
        // Hang up mid-handshake.
    }
    // Many connections that hang up at once.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            TcpStream::connect(("127.0.0.1", tls_port(&b)))
                .await
                .expect("connect"),
        );
    }
    drop(idle);

    // A real TLS client still gets through, and so does the plain TCP listener.
    let tls = pki.client_config(None);
    let (dev, _el) = connect_tls_v4(&b, tls.clone(), "dev-1", Some(("dev-1", "secret-token")))
        .await
        .expect("TLS client after the garbage");
    dev.disconnect().await.ok();
    let (dev, _el) = connect_tls_v5(&b, tls, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .expect("MQTT 5 TLS client after the garbage");
    dev.disconnect().await.ok();
    let (dev, _el) = connect_v4(&b, Via::Tcp, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .expect("TCP client after the garbage");
    dev.disconnect().await.ok();
}

async fn bind_error(tls: TlsConfig) -> String {
    let mut config = BrokerConfig::for_tests();
    config.tls = Some(tls);
    match Listeners::bind(&config).await {
        Ok(_) => panic!("bind should fail for {:?}", config.tls),
        Err(e) => e.to_string(),
    }
}

fn assert_names(error: &str, path: &Path) {
    let path = path.display().to_string();
    assert!(error.contains(&path), "error {error:?} should name {path}");
}

#[tokio::test]
async fn bad_certificate_files_fail_bind_naming_the_path() {
    let pki = Pki::new();
    let good = pki.tls_config(true);
    // The good config binds.
    let mut config = BrokerConfig::for_tests();
    config.tls = Some(good.clone());
    let bound = Listeners::bind(&config).await.expect("good files bind");
    assert!(bound.tls_addr().is_some());
    drop(bound);

    let missing = pki.path("missing-cert.pem");
    let e = bind_error(TlsConfig {
        cert: missing.clone(),
        ..good.clone()
    })
    .await;
    assert_names(&e, &missing);

    let missing = pki.path("missing.key");
    let e = bind_error(TlsConfig {
        key: missing.clone(),
        ..good.clone()
    })
    .await;
    assert_names(&e, &missing);

    // A key file that holds a certificate and no key.
    let no_key = pki.path("no-key.pem");
    std::fs::copy(pki.path("server.pem"), &no_key).expect("copy");
    let e = bind_error(TlsConfig {
        key: no_key.clone(),
        ..good.clone()
    })
    .await;
    assert_names(&e, &no_key);
    assert!(e.contains("key"), "{e}");

    // A certificate file that holds only a key.
    let no_cert = pki.path("no-cert.pem");
    std::fs::copy(pki.path("server.key"), &no_cert).expect("copy");
    let e = bind_error(TlsConfig {
        cert: no_cert.clone(),
        ..good.clone()
    })
    .await;
    assert_names(&e, &no_cert);

    // A key that does not belong to the certificate.
    let other_key = pki.path("other.key");
    std::fs::write(
        &other_key,
        KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let e = bind_error(TlsConfig {
        key: other_key.clone(),
        ..good.clone()
    })
    .await;
    assert_names(&e, &other_key);

    // The client CA: missing, or a file that is not a certificate.
    let missing = pki.path("missing-ca.pem");
    let e = bind_error(TlsConfig {
        client_ca: Some(missing.clone()),
        ..good.clone()
    })
    .await;
    assert_names(&e, &missing);
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "not PEM at all\n").expect("write");
    let e = bind_error(TlsConfig {
        client_ca: Some(junk.clone()),
        ..good
    })
    .await;
    assert_names(&e, &junk);
}

#[tokio::test]
async fn with_client_ca_a_certificate_that_names_no_device_falls_back_to_passwords() {
    let pki = Pki::new();
    let b = pki.broker(true).await;
    b.add_device("dev-1", "token-1", false).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    let shared = pki.client_config(Some(&pki.client_ca.client("fleet-gateway")));
    // A service client with a CA certificate and its password.
    let (c, _el) = connect_tls_v4(
        &b,
        shared.clone(),
        "backend-1",
        Some(("backend", "backend-pass")),
    )
    .await
    .expect("service client");
    c.disconnect().await.ok();
    // A device behind a shared certificate uses its token; a wrong token is refused.
    let (c, _el) = connect_tls_v5(&b, shared.clone(), "dev-1", Some(("dev-1", "token-1")))
        .await
        .expect("device by token");
    c.disconnect().await.ok();
    let r = connect_tls_v4(&b, shared, "dev-1", Some(("dev-1", "wrong"))).await;
    assert_eq!(refused_v4(r), ConnectReturnCode::NotAuthorized);
}
