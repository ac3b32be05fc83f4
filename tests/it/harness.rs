//! Checks of the test support itself: the throwaway cluster and the scripted receiver.

use std::time::Duration;

use crate::support::db::{parse_lsn, start_cluster, TestDb};
use crate::support::receiver::{Reply, TestReceiver};
use walhook::demo::cluster::{ClusterOptions, StopMode};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn shared_cluster_is_logical_and_databases_are_fresh() {
    let (a, b) = tokio::join!(TestDb::new(), TestDb::new());
    assert_ne!(a.name(), b.name());
    assert_eq!(a.query_one_string("SHOW wal_level").await, "logical");
    assert_eq!(
        a.cluster().port(),
        b.cluster().port(),
        "one cluster per binary"
    );

    a.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await;
    assert_eq!(a.query_one_i64("SELECT count(*) FROM t").await, 2);
    let in_b = b
        .query_one_i64("SELECT count(*) FROM pg_tables WHERE tablename = 't'")
        .await;
    assert_eq!(in_b, 0, "each test gets a fresh database");

    let slot = a.slot_name();
    assert_eq!(a.slot_confirmed_flush_lsn(&slot).await, None);
    a.execute(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))
    .await;
    let confirmed = a
        .slot_confirmed_flush_lsn(&slot)
        .await
        .expect("a new slot has a confirmed_flush_lsn");
    assert!(confirmed > 0);
    assert!(a.wal_lsn().await >= confirmed);
    assert!(!a.slot_active(&slot).await, "nobody streams from it");
    a.execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await;
}

#[tokio::test]
async fn dedicated_replica_cluster_survives_fast_and_immediate_restarts() {
    let cluster = start_cluster(ClusterOptions {
        wal_level: "replica".to_owned(),
        ..ClusterOptions::default()
    })
    .await;
    let db = TestDb::on(cluster.clone()).await;
    assert_eq!(db.query_one_string("SHOW wal_level").await, "replica");
    let err = db
        .client()
        .batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .await
        .expect_err("logical slots need wal_level = logical");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
    );
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await;

    for mode in [StopMode::Fast, StopMode::Immediate] {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop(mode))
            .await
            .expect("stop task")
            .expect("stop the cluster");
        assert!(!cluster.is_running());
        assert!(tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .is_err());
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.start_again())
            .await
            .expect("start task")
            .expect("start the cluster again");
        let client = db.connect().await;
        let row = client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .expect("count after restart");
        assert_eq!(row.get::<_, i64>(0), 1, "committed rows survive {mode:?}");
    }

    let root = cluster.root().to_path_buf();
    assert!(root.exists());
    drop(db);
    let cluster = std::sync::Arc::into_inner(cluster).expect("no other handle");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("drop task");
    if std::env::var("WALHOOK_KEEP_PG").is_err() {
        assert!(
            !root.exists(),
            "dropping the cluster deletes {}",
            root.display()
        );
    }
}

#[test]
fn lsn_text_is_parsed() {
    assert_eq!(parse_lsn("0/16B3748"), 0x16B_3748);
    assert_eq!(parse_lsn("1/0"), 1 << 32);
}

#[tokio::test]
async fn receiver_records_requests_and_follows_the_script() {
    let receiver = TestReceiver::start().await;
    let http = reqwest::Client::new();
    receiver.set_script(vec![
        Reply::Status(500),
        Reply::StatusWithHeaders(429, vec![("Retry-After".into(), "3".into())]),
    ]);

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..3 {
        let response = http
            .post(format!("{}/hook?n={i}", receiver.url()))
            .header("webhook-id", format!("msg_{i}"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "n": i }).to_string())
            .send()
            .await
            .expect("post to the receiver");
        statuses.push(response.status().as_u16());
        retry_after = retry_after.or(response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().expect("ascii").to_owned()));
    }
    assert_eq!(statuses, [500, 429, 200], "script, then the default");
    assert_eq!(retry_after.as_deref(), Some("3"));

    let requests = receiver.wait_for(3, WAIT).await;
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/hook?n=0");
    assert_eq!(requests[1].header("Webhook-Id"), Some("msg_1"));
    assert_eq!(requests[2].reply, Reply::Status(200));
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 429, 200]
    );
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    assert!(requests[0].at <= requests[1].at);
    assert_eq!(
        receiver.events(),
        [0, 1, 2].map(|n| serde_json::json!({ "n": n }))
    );
    assert_eq!(receiver.events_after_wait(3, WAIT).await, receiver.events());
}

#[tokio::test]
async fn receiver_delays_and_hangs() {
    let receiver = TestReceiver::start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    receiver.set_script(vec![Reply::Delay(Duration::from_millis(50), 204)]);
    receiver.set_default(Reply::Hang);

    let delayed = http.post(receiver.url()).body("x").send().await;
    assert_eq!(delayed.expect("delayed reply").status().as_u16(), 204);
    let hung = http.post(receiver.url()).body("y").send().await;
    assert!(hung.expect_err("no reply").is_timeout());
    // Hung requests are recorded too.
    let requests = receiver.wait_for(2, WAIT).await;
    assert_eq!(requests[1].body.as_ref(), b"y");
    assert_eq!(requests[1].status, 0, "a hung request has no status");
}

#[tokio::test]
#[should_panic(expected = "timed out after 200ms waiting for 2 request(s); 1 arrived")]
async fn receiver_wait_for_reports_what_arrived() {
    let receiver = TestReceiver::start().await;
    reqwest::Client::new()
        .put(format!("{}/only-one", receiver.url()))
        .body("{\"lonely\":true}")
        .send()
        .await
        .expect("put");
    receiver.wait_for(2, Duration::from_millis(200)).await;
}

/// The oracle passes a clean run (including a rolled-back transaction and deletes), and
/// catches loss: a subscription whose filter drops key 5 is reported as having lost
/// exactly key 5's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_passes_a_clean_run_and_catches_a_filtered_key() {
    use crate::runner::{scratch_dir, ConfigText, InProcess};
    use crate::support::oracle::{check, settle, AckWatch, Ledger, Write};

    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let all = TestReceiver::start().await;
    let some = TestReceiver::start().await;
    let slot = db.slot_name();
    let dir = scratch_dir(db.name());
    let store = dir.join("store");
    let cfg = ConfigText::new(&db.url(), &slot, &store)
        .table(Ledger::TABLE_TOML)
        .subscription("all", &all.url(), "")
        .subscription("some", &some.url(), "filter = \"data.k != 5\"");
    let app = InProcess::start(cfg.parse()).await;
    let watch = AckWatch::start(&db, &slot, &store).await;

    Ledger::insert(&db, 1, 20).await;
    Ledger::bump(&db, 1, 10).await;
    Ledger::bump(&db, 5, 6).await;
    db.execute("BEGIN; UPDATE ledger SET seq = seq + 1 WHERE k = 7; ROLLBACK")
        .await;
    Ledger::delete(&db, 15, 20).await;

    let verdict = settle(&db, &all, Some(&store), "all", Duration::from_secs(30)).await;
    verdict.assert_ok(0);
    assert_eq!(verdict.committed, 20 + 10 + 2 + 6);
    assert_eq!(verdict.delivered, verdict.committed);

    let filtered = check(&db, &some, Some(&store), "some").await;
    let lost: Vec<(u8, i64, i64)> = filtered
        .lost
        .iter()
        .map(|w: &Write| (w.op, w.k, w.seq))
        .collect();
    assert_eq!(
        lost,
        vec![(0, 5, 1), (1, 5, 2), (1, 5, 3)],
        "the oracle must see exactly key 5 as lost"
    );

    app.stop().await.unwrap();
    watch.finish().await.assert_ok();
}

/// An upstream for proxy tests: echoes every byte back.
async fn echo_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the echo server");
    let addr = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Reads what arrives within `within`; empty when nothing does.
async fn read_for(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(n)) => Ok(buf[..n].to_vec()),
        Ok(Err(err)) => Err(err),
        Err(_) => Ok(Vec::new()),
    }
}

#[tokio::test]
async fn fault_proxy_passes_black_holes_resets_refuses_and_trickles() {
    use crate::support::proxy::{Fault, FaultProxy};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let proxy = FaultProxy::start(echo_server().await).await;
    let mut a = TcpStream::connect(proxy.addr()).await.expect("connect");
    a.write_all(b"ping").await.unwrap();
    assert_eq!(read_for(&mut a, WAIT).await.unwrap(), b"ping", "pass");

    // Black hole: nothing comes back, the socket stays open; bytes flow on after.
    proxy.set(Fault::BlackHole);
    a.write_all(b"held").await.unwrap();
    assert!(
        read_for(&mut a, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "a black hole forwarded data"
    );
    let mut b = TcpStream::connect(proxy.addr())
        .await
        .expect("a black hole still accepts");
    b.write_all(b"new").await.unwrap();
    assert!(read_for(&mut b, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(proxy.open(), 2);
    proxy.set(Fault::Pass);
    assert_eq!(
        read_for(&mut a, WAIT).await.unwrap(),
        b"held",
        "held bytes flow on"
    );
    assert_eq!(read_for(&mut b, WAIT).await.unwrap(), b"new");

    // Refuse: new connections fail, open ones carry on; listening again on Pass.
    proxy.set(Fault::Refuse);
    crate::runner::eventually(WAIT, "the proxy to stop listening", || async {
        TcpStream::connect(proxy.addr())
            .await
            .err()
            .filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    a.write_all(b"still").await.unwrap();
    assert_eq!(read_for(&mut a, WAIT).await.unwrap(), b"still");
    proxy.set(Fault::Pass);
    let mut c = crate::runner::eventually(WAIT, "the proxy to listen again", || async {
        TcpStream::connect(proxy.addr()).await.ok()
    })
    .await;
    c.write_all(b"back").await.unwrap();
    assert_eq!(read_for(&mut c, WAIT).await.unwrap(), b"back");

    // Trickle: one byte per step, so a 6-byte answer arrives in pieces.
    proxy.set(Fault::Trickle {
        bytes: 1,
        every: Duration::from_millis(50),
    });
    c.write_all(b"abcdef").await.unwrap();
    let mut got = Vec::new();
    let mut reads = 0;
    while got.len() < 6 {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, c.read(&mut buf))
            .await
            .expect("trickled bytes arrive")
            .unwrap();
        assert!(n > 0, "closed while trickling");
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    assert_eq!(got, b"abcdef");
    assert!(reads >= 3, "6 trickled bytes arrived in {reads} read(s)");

    // Reset: every open connection gets an RST, and so does a new one.
    proxy.set(Fault::Reset);
    for stream in [&mut a, &mut b, &mut c] {
        let err = read_for(stream, WAIT)
            .await
            .expect_err("a reset connection reads an error");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    let mut d = TcpStream::connect(proxy.addr()).await.expect("accepted");
    let got = read_for(&mut d, WAIT).await;
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a new connection is reset: {got:?}"
    );
    crate::runner::eventually(WAIT, "every connection closed", || async {
        (proxy.open() == 0).then_some(())
    })
    .await;
    assert_eq!(proxy.accepted(), 4);
}

#[test]
fn standard_webhooks_verifier_accepts_the_published_vector_and_nothing_else() {
    use crate::support::standard_webhooks::{Rejected, Verifier};
    let verifier = Verifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let (id, ts, body) = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#.as_slice(),
    );
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let now = 1_614_265_330;
    let verify =
        |id, ts, sigs, body, now| verifier.verify(Some(id), Some(ts), Some(sigs), body, now);
    assert_eq!(verify(id, ts, sig, body, now), Ok(()));
    // Any one matching signature of a list is enough; other versions are ignored.
    let listed = format!("v2,abc v1,AAAA {sig}");
    assert_eq!(verify(id, ts, &listed, body, now), Ok(()));
    assert_eq!(
        verify(id, ts, sig, br#"{"test": 2432232315}"#, now),
        Err(Rejected::NoMatchingSignature),
        "tampered body"
    );
    assert_eq!(
        verify("msg_other", ts, sig, body, now),
        Err(Rejected::NoMatchingSignature)
    );
    assert_eq!(
        Verifier::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").verify(
            Some(id),
            Some(ts),
            Some(sig),
            body,
            now
        ),
        Err(Rejected::NoMatchingSignature),
        "the raw text of a whsec_ secret is another key"
    );
    assert_eq!(
        verify(id, ts, sig, body, now + 300),
        Ok(()),
        "5 minutes late is fine"
    );
    assert_eq!(verify(id, ts, sig, body, now + 301), Err(Rejected::TooOld));
    assert_eq!(verify(id, ts, sig, body, now - 301), Err(Rejected::TooNew));
    assert_eq!(
        verify(id, "soon", sig, body, now),
        Err(Rejected::BadTimestamp)
    );
    assert_eq!(
        verifier.verify(Some(id), None, Some(sig), body, now),
        Err(Rejected::MissingHeader("webhook-timestamp"))
    );
}
