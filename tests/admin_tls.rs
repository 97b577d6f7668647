//! `admin.tls`: the real binary serves the admin API over https, and the CLI talks to it
//! with `--ca` / `FLEETMQ_ADMIN_CA` (issue 18).

use crate::support;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use support::cli::run;
use support::Server;

/// A CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 and localhost
/// (`server.pem`, `server.key`), written to `dir`.
fn pki(dir: &std::path::Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(DnType::CommonName, "fleetmq test admin CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("self-signed CA");
    let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, "fleetmq admin");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &*ca).expect("sign leaf");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_against_an_https_admin_api_with_its_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki(dir.path());
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let ca = dir.path().join("ca.pem");
    let env = [
        ("FLEETMQ_ADMIN_TLS_CERT", cert.to_str().unwrap()),
        ("FLEETMQ_ADMIN_TLS_KEY", key.to_str().unwrap()),
    ];
    let server = Server::start_env(dir.path(), &env).await;
    assert!(server.url().starts_with("https://"), "{}", server.url());

    // FLEETMQ_ADMIN_CA, then the --ca flag (before the command too).
    let mut add = server.cli(&["device", "add", "d1", "--json"]);
    add.env("FLEETMQ_ADMIN_CA", &ca);
    let out = run(add).await.ok();
    assert_eq!(out.json()["device"]["id"], "d1", "{out:#?}");
    let ca_flag = ca.to_str().unwrap();
    let out = server.run(&["--ca", ca_flag, "device", "list"]).await.ok();
    assert!(out.stdout.contains("d1"), "{out:#?}");
    let copy = dir.path().join("copy.redb");
    let out = (server
        .run(&["backup", copy.to_str().unwrap(), "--ca", ca_flag])
        .await)
        .ok();
    assert!(out.stdout.contains("backup written"), "{out:#?}");

    // Without the CA the certificate is not trusted: exit 3, and it says why.
    let refused = server.run(&["device", "list"]).await;
    assert_eq!(refused.code, 3, "{refused:#?}");
    assert!(
        refused.stderr.contains(&server.url()) && refused.stderr.contains("certificate"),
        "{refused:#?}"
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = support::http(server.admin, &server.key, "GET", "/health", None).await;
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_admin_tls_key_stops_the_start_and_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki(dir.path());
    let mut cmd = support::fleetmq();
    let ports = support::free_ports(2);
    cmd.args(["serve", "--mqtt-ws", ""])
        .arg("--mqtt-tcp")
        .arg(ports[0].to_string())
        .arg("--admin-listen")
        .arg(ports[1].to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("FLEETMQ_ADMIN_TLS_CERT", dir.path().join("server.pem"))
        .env("FLEETMQ_ADMIN_TLS_KEY", dir.path().join("nope.key"));
    let out = run(cmd).await;
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(
        out.stderr.contains("admin.tls.key") && out.stderr.contains("nope.key"),
        "{out:#?}"
    );
}
