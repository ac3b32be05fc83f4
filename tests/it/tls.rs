//! Per-subscription TLS against a real HTTPS receiver whose certificate comes
//! from a private CA made for the test (rcgen): refused by default, accepted
//! with `tls.ca_file`, and accepted with `tls.verify = false`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pipeline::db_name;
use crate::runner::{eventually, run_cli, scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;

const WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Seen {
    /// Paths of requests that arrived over a completed TLS handshake.
    paths: Mutex<Vec<String>>,
    /// Handshakes the client broke off (it did not trust the certificate).
    failed_handshakes: AtomicUsize,
}

/// An HTTPS server on 127.0.0.1 with a certificate for 127.0.0.1 and
/// localhost, signed by a fresh CA whose PEM is returned.
struct HttpsReceiver {
    url: String,
    ca_pem: String,
    seen: Arc<Seen>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(seen): State<Arc<Seen>>, uri: axum::http::Uri) -> &'static str {
    seen.paths.lock().unwrap().push(uri.path().to_owned());
    "ok"
}

impl HttpsReceiver {
    async fn start() -> HttpsReceiver {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "walhook test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let counter = seen.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app, counter) = (acceptor.clone(), app.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        counter.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsReceiver {
            url,
            ca_pem: ca.pem(),
            seen,
            server,
        }
    }

    fn paths(&self, path: &str) -> usize {
        self.seen
            .paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_refused_by_default_and_trusted_with_ca_file() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE orders (id int4 PRIMARY KEY)")
        .await;
    let https = HttpsReceiver::start().await;
    let dir = scratch_dir("tls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &https.ca_pem).unwrap();
    let name = db_name(&db);
    let cfg = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"orders\"")
        .subscription(
            "default",
            &format!("{}/default", https.url),
            "retry = { max_attempts = 2, initial = \"50ms\", max = \"100ms\" }",
        )
        .subscription(
            "with_ca",
            &format!("{}/with_ca", https.url),
            &format!("tls = {{ ca_file = \"{}\" }}", ca_file.display()),
        )
        .subscription(
            "unverified",
            &format!("{}/unverified", https.url),
            "tls = { verify = false }",
        );
    let store = cfg.store.clone();
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO orders VALUES (1), (2)").await;

    eventually(WAIT, "deliveries over TLS", || {
        let done = https.paths("/with_ca") >= 2
            && https.paths("/unverified") >= 2
            && https.seen.failed_handshakes.load(Ordering::SeqCst) >= 4;
        async move { done.then_some(()) }
    })
    .await;
    // Both events of `default` are dead letters after their two refused
    // handshakes; stopping lets the second one be written.
    wh.stop().await.unwrap();
    assert_eq!(https.paths("/default"), 0, "no request without trust");
    let dead = walhook::store::Store::open(&store)
        .unwrap()
        .dead_letters("default", 10)
        .unwrap();
    assert!(!dead.is_empty(), "the refused subscription dead-letters");
    assert!(
        dead[0].reason.contains("certificate") && dead[0].status.is_none(),
        "{:?}",
        dead[0]
    );
    assert!(
        !dead[0].reason.contains("127.0.0.1"),
        "URL stripped: {}",
        dead[0].reason
    );
}

#[test]
fn a_bad_ca_file_exits_2_naming_the_field() {
    let dir = scratch_dir("badca");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let config = dir.join("walhook.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\n[[tables]]\nname = \"t\"\n\
             [[subscriptions]]\nname = \"x\"\nurl = \"https://example.com/h\"\n\
             tls = {{ ca_file = \"{}\" }}\n",
            ca.display()
        ),
    )
    .unwrap();
    let out = run_cli(&["check", "-c", config.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("subscriptions[0].tls.ca_file"), "{text}");
}
