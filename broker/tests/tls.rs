//! MQTT over TLS (SPEC §1, §2): rustls with the ring provider on both ends, token and
//! client-certificate authentication, a listener that survives what is not TLS, and
//! certificate files that fail at bind time with their path in the error.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use fleetmq_broker::{
    BrokerConfig, ClientKind, ListenerSpec, Listeners, TlsConfig, Transport as Listener,
};
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

/// Where a client connects: a TLS port, or a WebSocket-over-TLS port (`wss://…/mqtt`).
#[derive(Debug, Clone, Copy)]
enum Secure {
    Tls(u16),
    Wss(u16),
}

impl Secure {
    /// The broker address and the transport that rumqttc wants for it.
    fn endpoint(self, tls: Arc<ClientConfig>) -> (String, u16, rumqttc::Transport) {
        let tls = TlsConfiguration::Rustls(tls);
        match self {
            Secure::Tls(port) => (
                "127.0.0.1".into(),
                port,
                rumqttc::Transport::tls_with_config(tls),
            ),
            Secure::Wss(port) => (
                format!("wss://127.0.0.1:{port}/mqtt"),
                port,
                rumqttc::Transport::wss_with_config(tls),
            ),
        }
    }
}

async fn connect_tls_v4(
    b: &TestBroker,
    tls: Arc<ClientConfig>,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), ConnectionError> {
    connect_secure_v4(Secure::Tls(tls_port(b)), tls, id, creds).await
}

async fn connect_secure_v4(
    to: Secure,
    tls: Arc<ClientConfig>,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), ConnectionError> {
    let (host, port, transport) = to.endpoint(tls);
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_transport(transport);
    opts.set_keep_alive(std::time::Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
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
    connect_secure_v5(Secure::Tls(tls_port(b)), tls, id, creds).await
}

async fn connect_secure_v5(
    to: Secure,
    tls: Arc<ClientConfig>,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop), rumqttc::v5::ConnectionError> {
    let (host, port, transport) = to.endpoint(tls);
    let mut opts = rumqttc::v5::MqttOptions::new(id, host, port);
    opts.set_transport(transport);
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

// ---------------------------------------------------------------------------------------
// `[[mqtt.listeners]]`: WebSocket over TLS, and TLS listeners side by side

/// The listed client `id`: who it is, how it came in, and which MQTT version it speaks.
fn listed(b: &TestBroker, id: &str) -> (ClientKind, Listener, &'static str) {
    let info = (b.handle.clients().into_iter())
        .find(|c| c.client_id == id)
        .unwrap_or_else(|| panic!("{id} listed"));
    (info.kind, info.transport, info.protocol)
}

#[tokio::test]
async fn websocket_over_tls_carries_mqtt_5_and_3_1_1_both_ways() {
    use rumqttc::v5::mqttbytes::QoS as V5QoS;
    let pki = Pki::new();
    let mut config = BrokerConfig::for_tests();
    config.listeners = vec![ListenerSpec::Wss(pki.tls_config(false))];
    let b = TestBroker::with_config(config).await;
    let wss = Secure::Wss(b.extra[0].port());
    b.add_device("dev-1", "secret-token", false).await;
    b.add_service("backend", "backend-pass", allow_all()).await;
    let tls = pki.client_config(None);

    // An MQTT 5 service client subscribes to every device's telemetry over wss.
    let (svc, mut svc_el) = connect_secure_v5(
        wss,
        tls.clone(),
        "backend",
        Some(("backend", "backend-pass")),
    )
    .await
    .expect("MQTT 5 over wss");
    svc.subscribe("device/+/telemetry", V5QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    next_v5(&mut svc_el, |p| {
        matches!(p, V5Packet::SubAck(_)).then_some(())
    })
    .await;

    // A 3.1.1 device over wss subscribes to its commands and publishes telemetry.
    let (dev, mut dev_el) = connect_secure_v4(wss, tls, "dev-1", Some(("dev-1", "secret-token")))
        .await
        .expect("3.1.1 over wss");
    let codes = subscribe_v4(&dev, &mut dev_el, "device/dev-1/command", QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![1]);
    assert_eq!(
        listed(&b, "dev-1"),
        (ClientKind::Device, Listener::Wss, "3.1.1")
    );
    assert_eq!(
        listed(&b, "backend"),
        (ClientKind::Service, Listener::Wss, "5")
    );
    // What `GET /api/v1/clients` shows.
    assert_eq!(serde_json::to_value(Listener::Wss).unwrap(), "wss");

    dev.publish(
        "device/dev-1/telemetry",
        QoS::AtLeastOnce,
        false,
        br#"{"cpu":40}"#.to_vec(),
    )
    .await
    .expect("queue publish");
    next_v4(&mut dev_el, |p| {
        matches!(p, Packet::PubAck(_)).then_some(())
    })
    .await;
    let got = next_v5(&mut svc_el, |p| match p {
        V5Packet::Publish(p) => Some((p.topic.to_vec(), p.payload.to_vec())),
        _ => None,
    })
    .await;
    assert_eq!(
        got,
        (
            b"device/dev-1/telemetry".to_vec(),
            br#"{"cpu":40}"#.to_vec()
        )
    );

    // And the other way: the MQTT 5 client publishes, the 3.1.1 device receives.
    let command = br#"{"type":"RELOAD","commandId":"c-1","params":{}}"#.to_vec();
    svc.publish(
        "device/dev-1/command",
        V5QoS::AtLeastOnce,
        false,
        command.clone(),
    )
    .await
    .expect("queue publish");
    next_v5(&mut svc_el, |p| {
        matches!(p, V5Packet::PubAck(_)).then_some(())
    })
    .await;
    let got = next_v4(&mut dev_el, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.to_vec())),
        _ => None,
    })
    .await;
    assert_eq!(got, ("device/dev-1/command".into(), command));
    dev.disconnect().await.ok();
    svc.disconnect().await.ok();
}

#[tokio::test]
async fn wss_with_a_client_ca_takes_the_device_from_its_certificate() {
    let pki = Pki::new();
    let mut config = BrokerConfig::for_tests();
    config.listeners = vec![ListenerSpec::Wss(pki.tls_config(true))];
    let b = TestBroker::with_config(config).await;
    let wss = Secure::Wss(b.extra[0].port());
    b.add_device("dev-1", "secret-token", false).await;

    let r = connect_secure_v4(
        wss,
        pki.client_config(None),
        "dev-1",
        Some(("dev-1", "secret-token")),
    )
    .await;
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => {
            panic!("expected the TLS handshake to fail, got CONNACK {code:?}")
        }
        Err(_) => assert!(b.handle.clients().is_empty()),
        Ok(_) => panic!("no certificate, yet a session over wss"),
    }
    let cert = pki.client_config(Some(&pki.client_ca.client("dev-1")));
    let (dev, _el) = connect_secure_v5(wss, cert, "dev-1", None)
        .await
        .expect("the certificate names the device");
    assert_eq!(
        listed(&b, "dev-1"),
        (ClientKind::Device, Listener::Wss, "5")
    );
    dev.disconnect().await.ok();
}

/// The certificate a TLS listener presents (the client trusts the server CA).
async fn presented_certificate(port: u16, tls: Arc<ClientConfig>) -> Vec<u8> {
    let socket = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let stream = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(tls).connect(name, socket),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake");
    let (_, conn) = stream.get_ref();
    let certs = conn.peer_certificates().expect("a server certificate");
    certs[0].as_ref().to_vec()
}

#[tokio::test]
async fn two_tls_listeners_keep_their_own_certificate_and_client_policy() {
    let pki = Pki::new();
    // A second server certificate, for the listener that requires client certificates.
    let second = pki.server_ca.issue(
        "fleetmq test broker, certificate listener",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(pki.path("second.pem"), second.cert.pem()).expect("write second.pem");
    std::fs::write(pki.path("second.key"), second.key.serialize_pem()).expect("write key");
    let mut config = BrokerConfig::for_tests();
    // "8883": passwords; "8884": client certificates from the device CA.
    config.tls = Some(pki.tls_config(false));
    config.listeners = vec![ListenerSpec::Tls(TlsConfig {
        cert: pki.path("second.pem"),
        key: pki.path("second.key"),
        ..pki.tls_config(true)
    })];
    let b = TestBroker::with_config(config).await;
    let (passwords, certificates) = (Secure::Tls(tls_port(&b)), Secure::Tls(b.extra[0].port()));
    b.add_device("dev-1", "secret-token", false).await;
    let no_cert = pki.client_config(None);
    let with_cert = pki.client_config(Some(&pki.client_ca.client("dev-1")));

    // Each listener presents its own certificate.
    assert_eq!(
        presented_certificate(b.extra[0].port(), with_cert.clone()).await,
        second.cert.der().to_vec()
    );
    assert_ne!(
        presented_certificate(tls_port(&b), no_cert.clone()).await,
        second.cert.der().to_vec()
    );

    // Without a certificate: the password listener takes the device by its token...
    let (dev, _el) = connect_secure_v4(
        passwords,
        no_cert.clone(),
        "dev-1",
        Some(("dev-1", "secret-token")),
    )
    .await
    .expect("token over the password listener");
    assert_eq!(
        listed(&b, "dev-1"),
        (ClientKind::Device, Listener::Tls, "3.1.1")
    );
    dev.disconnect().await.ok();
    // ...and the certificate listener refuses it, token or not.
    let r = connect_secure_v4(
        certificates,
        no_cert,
        "dev-1",
        Some(("dev-1", "secret-token")),
    )
    .await;
    handshake_failed(r, "CertificateRequired");

    // With a certificate from the device CA: the certificate listener takes the device by
    // it, no password needed; the password listener does not ask for one, so it still
    // wants the token.
    let (dev, _el) = connect_secure_v5(certificates, with_cert.clone(), "dev-1", None)
        .await
        .expect("certificate over the certificate listener");
    assert_eq!(
        listed(&b, "dev-1"),
        (ClientKind::Device, Listener::Tls, "5")
    );
    dev.disconnect().await.ok();
    let r = connect_secure_v4(passwords, with_cert, "dev-1", None).await;
    assert_eq!(refused_v4(r), ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn max_connections_counts_the_clients_of_every_listener() {
    let pki = Pki::new();
    let mut config = BrokerConfig::for_tests();
    config.max_connections = 1;
    config.listeners = vec![ListenerSpec::Wss(pki.tls_config(false))];
    let b = TestBroker::with_config(config).await;
    b.add_device("dev-1", "token-1", false).await;
    b.add_device("dev-2", "token-2", false).await;
    let (dev, _el) = connect_secure_v4(
        Secure::Wss(b.extra[0].port()),
        pki.client_config(None),
        "dev-1",
        Some(("dev-1", "token-1")),
    )
    .await
    .expect("the first client, over wss");
    let r = connect_v4(&b, Via::Tcp, "dev-2", Some(("dev-2", "token-2"))).await;
    assert_eq!(refused_v4(r), ConnectReturnCode::ServiceUnavailable);
    let stats = b.handle.stats().connections;
    assert_eq!((stats.accepted_total, stats.refused_total), (1, 1));
    dev.disconnect().await.ok();
}

#[tokio::test]
async fn a_bad_file_of_an_extra_listener_fails_bind_naming_the_path() {
    let pki = Pki::new();
    let missing = pki.path("missing-wss.pem");
    let mut config = BrokerConfig::for_tests();
    config.tls = Some(pki.tls_config(false));
    config.listeners = vec![ListenerSpec::Wss(TlsConfig {
        client_ca: Some(missing.clone()),
        ..pki.tls_config(false)
    })];
    match Listeners::bind(&config).await {
        Ok(_) => panic!("bind should fail for {:?}", config.listeners),
        Err(e) => assert_names(&e.to_string(), &missing),
    }
}

/// A TLS handshake with `client` (which keeps tickets between calls) and an MQTT CONNECT
/// as `dev-1` with its token; whether the handshake resumed a session.
async fn tls_connect(port: u16, client: &Arc<ClientConfig>) -> rustls::HandshakeKind {
    tls_connect_as(port, client, true).await
}

/// [`tls_connect`], with the token or (`token` false) by the client certificate alone.
async fn tls_connect_as(
    port: u16,
    client: &Arc<ClientConfig>,
    token: bool,
) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    let mut connect = vec![
        0x10, 29, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 5, b'd', b'e', b'v', b'-', b'1',
        0, 5, b'd', b'e', b'v', b'-', b'1', 0, 3, b't', b'o', b'k',
    ];
    if !token {
        // Clean session only, no username or password.
        connect.truncate(19);
        connect[1] = 17;
        connect[9] = 0x02;
    }
    tls.write_all(&connect).await.expect("CONNECT");
    tls.flush().await.expect("CONNECT sent");
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    // Reading the CONNACK took in the tickets sent after the handshake.
    tls.write_all(&[0xE0, 0]).await.expect("DISCONNECT");
    let _ = tls.shutdown().await;
    kind
}

/// Issue #15: a fleet reconnecting after a restart resumes its TLS sessions (stateless
/// tickets sealed under a secret of the install's database) instead of paying a full
/// handshake each.
#[tokio::test]
async fn tls_sessions_resume_and_survive_a_restart_of_the_broker() {
    let pki = Pki::new();
    let mut config = BrokerConfig::for_tests();
    config.tls = Some(pki.tls_config(false));
    let b = TestBroker::with_config(config.clone()).await;
    b.add_device("dev-1", "tok", false).await;
    let client = pki.client_config(None);
    let port = tls_port(&b);
    assert_eq!(
        tls_connect(port, &client).await,
        rustls::HandshakeKind::Full
    );
    assert_eq!(
        tls_connect(port, &client).await,
        rustls::HandshakeKind::Resumed
    );

    // Restarted on the same data directory (tickets are kept by server name, so the
    // new port does not matter): the tickets are still good.
    let dir = b.stop().await;
    let b = TestBroker::with_config_in(config.clone(), dir).await;
    let port = tls_port(&b);
    assert_eq!(
        tls_connect(port, &client).await,
        rustls::HandshakeKind::Resumed
    );

    // Another install (another database) does not take them: a full handshake.
    b.stop().await;
    let other = TestBroker::with_config(config).await;
    other.add_device("dev-1", "tok", false).await;
    let port = tls_port(&other);
    assert_eq!(
        tls_connect(port, &client).await,
        rustls::HandshakeKind::Full
    );
    other.stop().await;

    // A resumed session keeps the client certificate it was made with: a device that
    // authenticates by its certificate alone still does.
    let b = pki.broker(true).await;
    b.add_device("dev-1", "tok", false).await;
    let with_cert = pki.client_config(Some(&pki.client_ca.client("dev-1")));
    let port = tls_port(&b);
    let kind = tls_connect_as(port, &with_cert, false).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    let kind = tls_connect_as(port, &with_cert, false).await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
}
