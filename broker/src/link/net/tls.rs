//! TLS for the MQTT listeners (rustls with the ring provider), one acceptor per TLS or
//! WSS listener, all resuming sessions with the same tickets (`tickets.rs`). With its `client_ca`, clients of that listener must present a
//! certificate signed by it; its subject CN names the device.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::link::net::tickets::TicketKeys;
use crate::link::settings::TlsConfig;

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {what}", path.display()),
    )
}

fn certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let mut reader = BufReader::new(File::open(path).map_err(|e| invalid(path, e))?);
    let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(path, e))?;
    if certs.is_empty() {
        return Err(invalid(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let mut reader = BufReader::new(File::open(path).map_err(|e| invalid(path, e))?);
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| invalid(path, e))?
        .ok_or_else(|| invalid(path, "no PEM private key found"))
}

/// Builds the acceptor of `[mqtt.tls]` or of a `tls`/`wss` entry of `[[mqtt.listeners]]`;
/// errors name the file at fault.
pub(crate) fn acceptor(
    config: &TlsConfig,
    tickets: &mut Vec<Arc<TicketKeys>>,
) -> io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots.add(cert).map_err(|e| invalid(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs(&config.cert)?, key(&config.key)?)
        .map_err(|e| invalid(&config.key, e))?;
    // Stateless resumption whose tickets outlive a restart, never valid at another
    // listener (`tickets.rs`).
    let label = format!(
        "{}|{}|{:?}",
        config.listen,
        config.cert.display(),
        config
            .client_ca
            .as_deref()
            .map(Path::display)
            .map(|p| p.to_string())
    );
    let keys = Arc::new(TicketKeys::new(label));
    tickets.push(keys.clone());
    server.ticketer = keys;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The subject CN of the verified client certificate, if one was presented.
pub(crate) fn client_cn(tls: &TlsStream<TcpStream>) -> Option<String> {
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}
