//! `--tls`: a certificate made for the run, and devices that keep their TLS session
//! tickets between rounds (as a device's TLS stack does across reconnects).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mqtt::Login;

pub type Stream = tokio_rustls::client::TlsStream<TcpStream>;

/// Every device's TLS stack: trusting the run's certificate, each with a session store
/// of its own (rustls keys stored tickets by server name, and every device connects to
/// `localhost`, so one shared store would hand one device's tickets to another).
pub struct Client {
    devices: Vec<tokio_rustls::TlsConnector>,
}

impl Client {
    /// Writes `server.pem` / `server.key` for `localhost` into `dir`: an ECDSA P-256
    /// key, or with `rsa` an RSA-2048 key (made by the `openssl` command; ring makes none).
    pub fn new(dir: &Path, devices: usize, rsa: bool) -> anyhow::Result<Client> {
        let key = if rsa {
            let path = dir.join("rsa.key");
            let made = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .arg("-out")
                .arg(&path)
                .status()
                .context("run openssl for an RSA key")?;
            if !made.success() {
                bail!("openssl genpkey failed: {made}");
            }
            let pem = std::fs::read_to_string(&path)?;
            rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)?
        } else {
            rcgen::KeyPair::generate()?
        };
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("server.pem"), cert.pem())?;
        std::fs::write(dir.join("server.key"), key.serialize_pem())?;
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let devices = (0..devices)
            .map(|_| {
                let mut own = config.clone();
                own.resumption = Resumption::in_memory_sessions(4);
                tokio_rustls::TlsConnector::from(Arc::new(own))
            })
            .collect();
        Ok(Client { devices })
    }

    /// Device number `n`'s TLS stack.
    pub fn device(&self, n: usize) -> Device {
        Device {
            connector: self.devices[n % self.devices.len()].clone(),
        }
    }
}

/// One device's TLS stack.
pub struct Device {
    connector: tokio_rustls::TlsConnector,
}

impl Device {
    /// TLS handshake, CONNECT, CONNACK; the stream, and whether the handshake resumed.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        login: &Login,
    ) -> anyhow::Result<(Box<Stream>, bool)> {
        let tcp = TcpStream::connect(addr).await.context("tcp connect")?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost")?.to_owned();
        let mut tls = self.connector.connect(name, tcp).await.context("TLS")?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        let mut connect = v4::Connect::new(login.client_id.as_str());
        connect.keep_alive = 600;
        if let Some((user, pass)) = &login.credentials {
            connect.set_login(user.as_str(), pass.as_str());
        }
        let mut out = BytesMut::new();
        connect.write(&mut out)?;
        tls.write_all(&out).await?;
        tls.flush().await?;
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(600), tls.read_exact(&mut connack))
            .await
            .context("CONNACK in time")??;
        if connack != [0x20, 2, 0, 0] {
            bail!("CONNACK {connack:?} for {}", login.client_id);
        }
        Ok((Box::new(tls), resumed))
    }
}
