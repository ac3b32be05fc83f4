//! `sslmode`/`sslrootcert` parsing and the certificate checks of each mode,
//! the latter with in-memory TLS handshakes against a rustls server whose
//! certificate comes from a CA made for the test.

#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use super::*;

fn settings(conn: &str) -> Result<TlsSettings, TlsParamError> {
    split(conn).settings()
}

#[test]
fn url_form_loses_the_tls_keys_and_keeps_everything_else() {
    let s = split("postgres://u:p%40ss@db.example:5433/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&connect_timeout=5");
    assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
    assert_eq!(s.sslrootcert.as_deref(), Some("/etc/ca dir/root.pem"));
    assert_eq!(
        s.rest,
        "postgres://u:p%40ss@db.example:5433/app?application_name=x&connect_timeout=5"
    );
    let pg = tokio_postgres::Config::from_str(&s.rest).unwrap();
    assert_eq!(pg.get_dbname(), Some("app"));
    assert_eq!(pg.get_password(), Some(&b"p@ss"[..]));
}

#[test]
fn url_with_only_tls_keys_has_no_query_left() {
    let s = split("postgresql://u@h/db?sslmode=require");
    assert_eq!(s.rest, "postgresql://u@h/db");
    assert_eq!(s.sslmode.as_deref(), Some("require"));
    let s = split("postgres://u@h/db?sslrootcert=system&sslmode=verify-full");
    assert_eq!(s.rest, "postgres://u@h/db");
    let s = split("postgres://u@h/db");
    assert_eq!(s.rest, "postgres://u@h/db");
    assert_eq!(s.sslmode, None);
}

#[test]
fn a_question_mark_in_the_password_is_not_the_query() {
    let s = split("postgres://u:a?b@h/db?sslmode=disable");
    assert_eq!(s.rest, "postgres://u:a?b@h/db");
    assert_eq!(s.sslmode.as_deref(), Some("disable"));
}

#[test]
fn keyword_form_loses_the_tls_keys_quoted_or_not() {
    let s = split(
        r"host=db.example sslmode = verify-ca  user=walhook sslrootcert='/etc/my ca/it\'s.pem' dbname=app",
    );
    assert_eq!(s.sslmode.as_deref(), Some("verify-ca"));
    assert_eq!(s.sslrootcert.as_deref(), Some("/etc/my ca/it's.pem"));
    let pg = tokio_postgres::Config::from_str(&s.rest).unwrap();
    assert_eq!(pg.get_user(), Some("walhook"));
    assert_eq!(pg.get_dbname(), Some("app"));
    assert!(!s.rest.contains("ssl"), "{}", s.rest);
}

#[test]
fn the_last_value_wins() {
    let s = split("postgres://u@h/db?sslmode=disable&sslmode=verify-full");
    assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
    let s = split("sslmode=require host=h sslmode=prefer");
    assert_eq!(s.sslmode.as_deref(), Some("prefer"));
}

#[test]
fn a_string_that_does_not_tokenise_is_left_to_tokio_postgres() {
    let s = split("host='unterminated sslmode=require");
    assert_eq!(s.rest, "host='unterminated sslmode=require");
    assert_eq!(s.sslmode, None);
    assert!(tokio_postgres::Config::from_str(&s.rest).is_err());
}

#[test]
fn libpq_rules_for_mode_and_root_certificate() {
    let file = |mode| TlsSettings {
        mode,
        roots: Roots::File("/ca.pem".into()),
    };
    let web = |mode| TlsSettings {
        mode,
        roots: Roots::WebPki,
    };
    let u = "postgres://u@h/db";
    assert_eq!(
        settings(u).unwrap(),
        web(SslMode::Prefer),
        "libpq's default"
    );
    for (mode, expected) in [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        assert_eq!(
            settings(&format!("{u}?sslmode={mode}")).unwrap(),
            web(expected)
        );
    }
    // require with a root certificate checks the chain, as in libpq.
    assert_eq!(
        settings(&format!("{u}?sslmode=require&sslrootcert=/ca.pem")).unwrap(),
        file(SslMode::VerifyCa)
    );
    assert_eq!(
        settings(&format!("{u}?sslmode=verify-ca&sslrootcert=/ca.pem")).unwrap(),
        file(SslMode::VerifyCa)
    );
    assert_eq!(
        settings(&format!("{u}?sslmode=verify-full&sslrootcert=/ca.pem")).unwrap(),
        file(SslMode::VerifyFull)
    );
    // sslrootcert=system: the web PKI, and verify-full (libpq 16).
    assert_eq!(
        settings(&format!("{u}?sslrootcert=system")).unwrap(),
        web(SslMode::VerifyFull)
    );
    assert!(matches!(
        settings(&format!("{u}?sslrootcert=system&sslmode=require")),
        Err(TlsParamError::SystemNeedsVerifyFull(SslMode::Require))
    ));
    // A root certificate nothing would check is a mistake, not a no-op.
    assert!(matches!(
        settings(&format!("{u}?sslrootcert=/ca.pem")),
        Err(TlsParamError::RootCertUnused(SslMode::Prefer))
    ));
    assert!(matches!(
        settings(&format!("{u}?sslmode=disable&sslrootcert=/ca.pem")),
        Err(TlsParamError::RootCertUnused(SslMode::Disable))
    ));
    assert!(matches!(
        settings(&format!("{u}?sslmode=allow")),
        Err(TlsParamError::Allow)
    ));
    assert!(matches!(
        settings(&format!("{u}?sslmode=verify_full")),
        Err(TlsParamError::UnknownMode)
    ));
    let err = settings(&format!("{u}?sslcert=/c.pem&sslkey=/k.pem")).unwrap_err();
    assert!(
        matches!(err, TlsParamError::Unsupported("sslcert")),
        "{err}"
    );
    assert!(err.to_string().contains("sslcert"), "{err}");
    assert!(matches!(
        settings(&format!("{u}?sslrootcert=%ff")),
        Err(TlsParamError::Encoding("sslrootcert"))
    ));
    assert_eq!(
        settings("host=h sslmode=verify-full sslrootcert=/ca.pem").unwrap(),
        file(SslMode::VerifyFull)
    );
}

#[test]
fn error_messages_name_the_key_and_not_the_value() {
    let err = settings("postgres://u:hunter2@h/db?sslmode=hunter3").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("sslmode"), "{text}");
    assert!(!text.contains("hunter"), "{text}");
}

/// A CA and a server certificate for `names`, signed by it.
struct Pki {
    ca_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
}

fn pki(names: &[&str]) -> Pki {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("walhook unit-test CA {}", N.fetch_add(1, Ordering::SeqCst)),
    );
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf_der: leaf.der().clone(),
        leaf_key_der: leaf_key.serialize_der(),
    }
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "walhook-tls-unit-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Runs a TLS handshake in memory between `client` (connecting to `host`)
/// and a server presenting `server`'s certificate.
fn handshake(client: rustls::ClientConfig, host: &str, server: &Pki) -> Result<(), rustls::Error> {
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.leaf_der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server.leaf_key_der.clone().into()),
        )
        .unwrap();
    let mut c = rustls::ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(host.to_owned()).unwrap(),
    )
    .unwrap();
    let mut s = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        // The server's own complaint (an alert we sent) is not what we test.
        let _ = s.process_new_packets();
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the in-memory handshake did not finish");
}

fn config(mode: SslMode, ca_pem: Option<&str>) -> rustls::ClientConfig {
    let roots = match ca_pem {
        Some(pem) => Roots::File(write_temp("ca.pem", pem)),
        None => Roots::WebPki,
    };
    client_config(&TlsSettings { mode, roots }).unwrap()
}

fn cert_error(result: Result<(), rustls::Error>) -> CertificateError {
    match result {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn verify_full_checks_the_chain_and_the_host_name() {
    let server = pki(&["db.example", "127.0.0.1"]);
    let other = pki(&["db.example"]);
    let full = || config(SslMode::VerifyFull, Some(&server.ca_pem));
    handshake(full(), "db.example", &server).unwrap();
    handshake(full(), "127.0.0.1", &server).unwrap();
    let name = cert_error(handshake(full(), "other.example", &server));
    assert!(
        matches!(
            name,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{name:?}"
    );
    assert_eq!(
        cert_error(handshake(full(), "db.example", &other)),
        CertificateError::UnknownIssuer
    );
    // Without sslrootcert the web PKI roots decide: a private CA is unknown.
    assert_eq!(
        cert_error(handshake(
            config(SslMode::VerifyFull, None),
            "db.example",
            &server
        )),
        CertificateError::UnknownIssuer
    );
}

#[test]
fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let server = pki(&["db.example"]);
    let other = pki(&["db.example"]);
    let ca = || config(SslMode::VerifyCa, Some(&server.ca_pem));
    handshake(ca(), "other.example", &server).unwrap();
    handshake(ca(), "127.0.0.1", &server).unwrap();
    assert_eq!(
        cert_error(handshake(ca(), "db.example", &other)),
        CertificateError::UnknownIssuer
    );
}

#[test]
fn require_and_prefer_accept_any_certificate() {
    let server = pki(&["db.example"]);
    for mode in [SslMode::Prefer, SslMode::Require] {
        handshake(config(mode, None), "anything.example", &server).unwrap();
    }
}

#[test]
fn the_client_offers_the_postgresql_alpn() {
    let cfg = config(SslMode::Require, None);
    assert_eq!(cfg.alpn_protocols, vec![b"postgresql".to_vec()]);
}

#[test]
fn root_certificate_files_are_read_and_checked() {
    let server = pki(&["db.example"]);
    let good = write_temp("ca.pem", &server.ca_pem);
    let store = load_roots(&Roots::File(good)).unwrap();
    assert_eq!(store.len(), 1);
    assert!(load_roots(&Roots::WebPki).unwrap().len() > 50);

    let missing = std::env::temp_dir().join("walhook-no-such-dir/ca.pem");
    let err = load_roots(&Roots::File(missing)).unwrap_err();
    assert!(matches!(err, TlsParamError::Read { .. }), "{err}");
    assert!(err.to_string().contains("sslrootcert"), "{err}");

    let empty = write_temp("empty.pem", "not a certificate\n");
    let err = load_roots(&Roots::File(empty)).unwrap_err();
    assert!(matches!(err, TlsParamError::NoCertificate { .. }), "{err}");

    // PEM armour around bytes that are not a certificate.
    let junk = write_temp(
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    assert!(load_roots(&Roots::File(junk)).is_err());
}

#[test]
fn handshake_failures_are_explained_with_a_fix() {
    let server = pki(&["db.example"]);
    let other = pki(&["db.example"]);
    let settings = TlsSettings {
        mode: SslMode::VerifyFull,
        roots: Roots::File(write_temp("ca.pem", &server.ca_pem)),
    };
    let client = || client_config(&settings).unwrap();

    let err = handshake(client(), "db.example", &other).unwrap_err();
    // The connection reports it wrapped in an io::Error, as tokio-rustls does.
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
    let found = handshake_error(&io).unwrap();
    let (problem, fix) = explain_handshake(found, &settings, "db.example");
    assert!(
        problem.contains("not signed by a CA in sslrootcert"),
        "{problem}"
    );
    assert!(fix.contains("sslrootcert"), "{fix}");

    let err = handshake(client(), "wrong.example", &server).unwrap_err();
    let (problem, fix) = explain_handshake(&err, &settings, "wrong.example");
    assert!(
        problem.contains("not valid for the host name 'wrong.example'"),
        "{problem}"
    );
    assert!(
        problem.contains("db.example"),
        "names what it holds: {problem}"
    );
    assert!(fix.contains("verify-ca"), "{fix}");
}

#[test]
fn replication_gets_the_same_mode_and_roots() {
    use pgwire_replication::SslMode as P;
    let map = |mode, roots| replication_tls(&TlsSettings { mode, roots }, "127.0.0.1");
    assert_eq!(map(SslMode::Disable, Roots::WebPki).mode, P::Disable);
    assert_eq!(map(SslMode::Prefer, Roots::WebPki).mode, P::Prefer);
    assert_eq!(map(SslMode::Require, Roots::WebPki).mode, P::Require);
    let ca = map(SslMode::VerifyCa, Roots::File("/ca.pem".into()));
    assert_eq!(ca.mode, P::VerifyCa);
    assert_eq!(ca.ca_pem_path.as_deref(), Some(Path::new("/ca.pem")));
    let full = map(SslMode::VerifyFull, Roots::WebPki);
    assert_eq!(full.mode, P::VerifyFull);
    assert_eq!(full.ca_pem_path, None, "web PKI roots");
    assert_eq!(full.sni_hostname.as_deref(), Some("127.0.0.1"));
}
