//! TLS between walhook and PostgreSQL (`sslmode` and `sslrootcert` in
//! `source.url`), against a dedicated cluster that serves a certificate for
//! `localhost` and `127.0.0.1` signed by a CA made for this run, and that
//! accepts TCP logins over TLS only (`hostssl` lines in pg_hba.conf), as a
//! managed service with forced TLS (RDS `rds.force_ssl=1`) does. The harness
//! itself sets up databases over the cluster's Unix socket.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use walhook::demo::cluster::{ClusterOptions, ServerTls, TempCluster};

use crate::pipeline::db_name;
use crate::runner::{
    eventually, run_cli, scratch_dir, spawn_run, wait_exit, ConfigText, InProcess,
};
use crate::support::db::{start_cluster, TestDb};
use crate::support::oracle::{settle, AckWatch, Ledger};
use crate::support::pki::TestCa;
use crate::support::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(30);

/// The TLS-only cluster shared by this file's tests, and its CA.
struct TlsServer {
    cluster: Arc<TempCluster>,
    /// The PEM file of the CA that signed the server's certificate.
    ca_file: PathBuf,
}

static TLS_SERVER: OnceCell<TlsServer> = OnceCell::const_new();

async fn tls_server() -> &'static TlsServer {
    TLS_SERVER
        .get_or_init(|| async {
            let ca = TestCa::new("walhook pgtls test CA");
            let server = ca.issue(&["localhost", "127.0.0.1"]);
            let cluster = start_cluster(ClusterOptions {
                tls: Some(ServerTls {
                    cert_pem: server.cert_pem,
                    key_pem: server.key_pem,
                    tls_only: true,
                }),
                ..ClusterOptions::default()
            })
            .await;
            let ca_file = scratch_dir("pgtls-ca").join("ca.pem");
            std::fs::write(&ca_file, ca.pem()).unwrap();
            TlsServer { cluster, ca_file }
        })
        .await
}

/// `postgres://postgres:<pw>@<host>:<port>/<db>?<query>` for `db` on `cluster`.
fn url(cluster: &TempCluster, db: &TestDb, host: &str, query: &str) -> String {
    format!(
        "postgres://{}:{}@{host}:{}/{}?{query}",
        cluster.user(),
        cluster.password(),
        cluster.port(),
        db.name()
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `walhook check` (the real binary) on `cfg`.
async fn check(cfg: &ConfigText) -> Output {
    let path = cfg.write(&scratch_dir("pgtls-check"));
    tokio::task::spawn_blocking(move || run_cli(&["check", "-c", path.to_str().unwrap()]))
        .await
        .unwrap()
}

/// Runs `walhook run` (the real binary) on `cfg` until it exits by itself;
/// its exit code and output.
async fn run_until_exit(cfg: &ConfigText) -> (Option<i32>, String) {
    let dir = scratch_dir("pgtls-run");
    let path = cfg.write(&dir);
    let log = dir.join("walhook.log");
    let status = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || wait_exit(&mut spawn_run(&path, &log), WAIT))
            .await
            .unwrap()
    };
    (status.code(), std::fs::read_to_string(&log).unwrap())
}

/// Whether the walsender streaming `slot` to walhook runs over TLS, as the
/// server sees it; `None` while no one streams from the slot.
async fn replication_over_tls(db: &TestDb, slot: &str) -> Option<bool> {
    let row = db
        .client()
        .query_opt(
            "SELECT s.ssl FROM pg_replication_slots r \
             JOIN pg_stat_replication p ON p.pid = r.active_pid \
             JOIN pg_stat_ssl s ON s.pid = p.pid \
             WHERE r.slot_name = $1 AND p.application_name = 'walhook'",
            &[&slot],
        )
        .await
        .unwrap();
    row.map(|row| row.get(0))
}

/// How many of walhook's sessions on `db` exist, and how many of them are not
/// over TLS.
async fn walhook_sessions(db: &TestDb) -> (i64, i64) {
    let row = db
        .client()
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s ON s.pid = a.pid \
             WHERE a.application_name = 'walhook' AND a.datname = $1",
            &[&db.name()],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn slot_exists(db: &TestDb, slot: &str) -> bool {
    db.query_one_i64(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .await
        > 0
}

/// Streams the oracle's workload through walhook (in-process) with `cfg`,
/// checks that the replication connection and every other walhook session
/// use TLS, and judges the deliveries with the oracle.
async fn stream_over_tls(db: &TestDb, cfg: ConfigText, receiver: &TestReceiver) {
    let slot = cfg.slot.clone();
    let store = cfg.store.clone();
    let watch = AckWatch::start(db, &slot, &store).await;
    let wh = InProcess::start(cfg.parse()).await;
    Ledger::insert(db, 1, 20).await;
    Ledger::bump(db, 1, 10).await;
    Ledger::delete(db, 15, 20).await;

    let over_tls = eventually(WAIT, "the slot's walsender in pg_stat_ssl", || async {
        replication_over_tls(db, &slot).await
    })
    .await;
    assert!(over_tls, "the replication connection is not TLS");
    // The replication session and the heartbeat's SQL session at least.
    let (sessions, plain) = eventually(WAIT, "two walhook sessions", || async {
        let seen = walhook_sessions(db).await;
        (seen.0 >= 2).then_some(seen)
    })
    .await;
    assert_eq!(
        plain, 0,
        "{plain} of walhook's {sessions} sessions are not TLS"
    );

    let verdict = settle(db, receiver, Some(&store), "hook", WAIT).await;
    verdict.assert_ok(0);
    assert_eq!(verdict.committed, 36, "20 inserts, 10 updates, 6 deletes");
    wh.stop().await.unwrap();
    watch.finish().await.assert_ok();
    db.execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await;
}

fn config(db_url: &str, db: &TestDb, receiver: &TestReceiver) -> ConfigText {
    let name = db_name(db);
    ConfigText::new(db_url, &name, &scratch_dir(&name))
        .table(Ledger::TABLE_TOML)
        .subscription("hook", &receiver.url(), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_checks_and_streams_over_tls_on_a_hostssl_only_server() {
    let server = tls_server().await;
    let db = TestDb::on(server.cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &url(&server.cluster, &db, "127.0.0.1", "sslmode=require"),
        &db,
        &receiver,
    );

    let out = check(&cfg).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("over TLS (TLSv1.3; sslmode=require: encrypted, the server's certificate is not checked)"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("ok    replication connection accepted (sslmode=require)"),
        "{}",
        text(&out)
    );
    stream_over_tls(&db, cfg, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_test_ca_accepts_localhost_and_127_0_0_1() {
    let server = tls_server().await;
    let db = TestDb::on(server.cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let ca = server.ca_file.display();

    // A host name in the certificate.
    let cfg = config(
        &url(
            &server.cluster,
            &db,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &db,
        &receiver,
    );
    let out = check(&cfg).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(
            "sslmode=verify-full: certificate chain and host name checked against sslrootcert"
        ),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("ok    replication connection accepted (sslmode=verify-full)"),
        "{}",
        text(&out)
    );
    // require with a root certificate checks the chain, as in libpq.
    let cfg = config(
        &url(
            &server.cluster,
            &db,
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={ca}"),
        ),
        &db,
        &receiver,
    );
    let out = check(&cfg).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("sslmode=verify-ca: certificate chain checked against sslrootcert"),
        "{}",
        text(&out)
    );

    // An IP address in the certificate, for both connections while streaming.
    let cfg = config(
        &url(
            &server.cluster,
            &db,
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &db,
        &receiver,
    );
    stream_over_tls(&db, cfg, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_an_untrusted_ca_exits_3_naming_the_certificate_problem() {
    let server = tls_server().await;
    let db = TestDb::on(server.cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let other_ca = scratch_dir("pgtls-other-ca").join("other.pem");
    std::fs::write(&other_ca, TestCa::new("some other CA").pem()).unwrap();
    let cfg = config(
        &url(
            &server.cluster,
            &db,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
        ),
        &db,
        &receiver,
    );
    let expected = format!(
        "the server's certificate is not signed by a CA in sslrootcert {} (unknown issuer); put the certificate of the CA that signed the server's certificate into the sslrootcert file",
        other_ca.display()
    );

    let out = check(&cfg).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains(&expected), "{}", text(&out));
    assert!(text(&out).contains("sslmode=verify-full"), "{}", text(&out));

    let (code, log) = run_until_exit(&cfg).await;
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains(&expected), "{log}");
    assert!(!log.contains(server.cluster.password()), "{log}");
    assert!(
        !slot_exists(&db, &cfg.slot).await,
        "nothing is created when the connection is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_disable_against_a_hostssl_only_server_exits_3_saying_tls_is_needed() {
    let server = tls_server().await;
    let db = TestDb::on(server.cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &url(&server.cluster, &db, "127.0.0.1", "sslmode=disable"),
        &db,
        &receiver,
    );
    let hint = "if the server accepts only TLS connections (hostssl in pg_hba.conf, or rds.force_ssl), set sslmode=require or verify-full in source.url";

    let out = check(&cfg).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // The server's reason, then ours.
    assert!(text(&out).contains("no encryption"), "{}", text(&out));
    assert!(text(&out).contains(hint), "{}", text(&out));

    let (code, log) = run_until_exit(&cfg).await;
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains(hint), "{log}");
    assert!(!slot_exists(&db, &cfg.slot).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_without_tls_exits_3() {
    // The shared cluster has ssl = off.
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&format!("{}?sslmode=require", db.url()), &db, &receiver);
    let out = check(&cfg).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(
            "sql connection, sslmode=require): the server does not accept TLS connections"
        ),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("ssl = on"), "{}", text(&out));
}

#[test]
fn a_missing_sslrootcert_exits_2_naming_the_key() {
    let dir = scratch_dir("pgtls-norootcert");
    let missing = dir.join("nowhere").join("root.pem");
    let config = dir.join("walhook.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"postgres://u:p@127.0.0.1:1/db?sslmode=verify-full&sslrootcert={}\"\n\
             [[tables]]\nname = \"t\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = run_cli(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let expected = format!(
        "source.url: sslrootcert {}: cannot read the file",
        missing.display()
    );
    assert!(text(&out).contains(&expected), "{}", text(&out));
}

/// verify-ca checks the chain only, but walhook's replication client (pgwire-replication
/// 0.5) also checks the host name under verify-ca. The SQL connections accept a
/// certificate that does not name the host; the replication connection does not, and
/// that is found by the check of the replication connection before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_with_a_certificate_for_another_name_stops_before_creating_anything() {
    let ca = TestCa::new("walhook pgtls other-name CA");
    let server = ca.issue(&["db.example"]);
    let cluster = start_cluster(ClusterOptions {
        tls: Some(ServerTls {
            cert_pem: server.cert_pem,
            key_pem: server.key_pem,
            tls_only: true,
        }),
        ..ClusterOptions::default()
    })
    .await;
    let ca_file = scratch_dir("pgtls-other-name-ca").join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let db = TestDb::on(cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &url(
            &cluster,
            &db,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={}", ca_file.display()),
        ),
        &db,
        &receiver,
    );
    let limitation = "(replication connection, sslmode=verify-ca): TLS handshake failed: invalid peer certificate: certificate not valid for name \"127.0.0.1\"";
    let fix =
        "walhook's replication connection also needs the certificate to name the host '127.0.0.1'";

    let out = check(&cfg).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // The SQL connection checks the chain only, as libpq does.
    assert!(
        text(&out).contains("over TLS (TLSv1.3; sslmode=verify-ca: certificate chain checked"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains(limitation), "{}", text(&out));
    assert!(text(&out).contains(fix), "{}", text(&out));

    let (code, log) = run_until_exit(&cfg).await;
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains(limitation) && log.contains(fix), "{log}");
    assert!(!slot_exists(&db, &cfg.slot).await, "no slot was created");
    assert_eq!(
        db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{}'",
            cfg.slot
        ))
        .await,
        0,
        "no publication was created"
    );
}
