//! `admin.tls`: the admin API over HTTPS. The MQTT listeners' loader lives in the broker's
//! link layer and is private to it; this is the admin listener's own, small one (rustls
//! with the ring provider, no client certificates).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::AdminTls;
use crate::error::WebError;

fn invalid(key: &'static str, path: &Path, reason: impl std::fmt::Display) -> WebError {
    WebError::Tls {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, WebError> {
    let bad = |e: &dyn std::fmt::Display| invalid("admin.tls.cert", path, e);
    let mut reader = BufReader::new(File::open(path).map_err(|e| bad(&e))?);
    let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate found"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, WebError> {
    let bad = |e: &dyn std::fmt::Display| invalid("admin.tls.key", path, e);
    let mut reader = BufReader::new(File::open(path).map_err(|e| bad(&e))?);
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| bad(&e))?
        .ok_or_else(|| bad(&"no PEM private key found"))
}

/// Loads the certificate chain and key of `admin.tls`; errors name the key and the file.
pub(crate) fn acceptor(tls: &AdminTls) -> Result<TlsAcceptor, WebError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("admin.tls.cert", &tls.cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs(&tls.cert)?, key(&tls.key)?)
        .map_err(|e| invalid("admin.tls.key", &tls.key, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
