//! Network faults between walhook and PostgreSQL or its receivers, through the fault
//! proxy (matrix rows 15, 24, 25, 26), and the egress guard (row 29).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walhook::app::Hooks;
use walhook::demo::cluster::ClusterOptions;

use crate::pipeline::db_name;
use crate::runner::{eventually, scratch_dir, ConfigText, InProcess};
use crate::support::db::{start_cluster, TestDb};
use crate::support::oracle::{self, AckWatch, Ledger};
use crate::support::proxy::{Fault, FaultProxy};
use crate::support::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(60);

/// `url` with its port replaced by `port` (the proxy's).
fn via_port(url: &str, port: u16) -> String {
    let mut parsed = url::Url::parse(url).expect("a database URL");
    parsed.set_port(Some(port)).expect("a URL with a host");
    parsed.to_string()
}

/// Row 15: the network to PostgreSQL becomes a black hole for 10 s, longer than the
/// server's `wal_sender_timeout` (2 s). walhook's receive watchdog must notice the
/// silence, report the connection degraded, tear it down and reconnect once the path
/// works again; the server drops the old walsender; nothing is lost or queued twice and
/// the slot is never confirmed past what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_replication_connection_is_replaced_and_loses_nothing() {
    let cluster = start_cluster(ClusterOptions {
        extra_conf: vec!["wal_sender_timeout = '2s'".into()],
        ..ClusterOptions::default()
    })
    .await;
    let db = TestDb::on(cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], cluster.port()))).await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let store = dir.join("store");
    let cfg = ConfigText::new(&via_port(&db.url(), proxy.port()), &name, &store)
        .source("receive_timeout = \"3s\"")
        .source("connect_timeout = \"2s\"")
        .table(Ledger::TABLE_TOML)
        .subscription("sink", &receiver.url(), "");

    let degraded: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = degraded.clone();
    let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = streams.clone();
    let hooks = Hooks {
        on_degraded: Some(Arc::new(move |reason| seen.lock().unwrap().push(reason))),
        on_streaming: Some(Arc::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })),
        ..Hooks::default()
    };
    let wh = InProcess::start_with(cfg.parse(), hooks).await;
    let acks = AckWatch::start(&db, &name, &store).await;

    Ledger::insert(&db, 1, 50).await;
    oracle::settle(&db, &receiver, Some(&store), "sink", WAIT)
        .await
        .assert_ok(0);

    // The partition. The database itself stays reachable for the test's own writes.
    let fault_at = tokio::time::Instant::now();
    let accepted_before = proxy.accepted();
    proxy.set(Fault::BlackHole);
    Ledger::insert(&db, 51, 100).await;
    Ledger::bump(&db, 1, 20).await;
    let reason = eventually(WAIT, "walhook to report the connection degraded", || {
        let reason = degraded.lock().unwrap().iter().flatten().next().cloned();
        async move { reason }
    })
    .await;
    assert!(
        reason.contains("went silent") && reason.contains("source.receive_timeout"),
        "{reason}"
    );
    eventually(WAIT, "the server to drop the old walsender", || async {
        (!db.slot_active(&name).await).then_some(())
    })
    .await;
    eventually(WAIT, "a reconnect attempt into the black hole", || async {
        // The watchdog's check plus at least one new replication connection.
        (proxy.accepted() >= accepted_before + 2).then_some(())
    })
    .await;
    assert_eq!(
        streams.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing can stream through a black hole"
    );
    tokio::time::sleep_until(fault_at + Duration::from_secs(10)).await;
    proxy.set(Fault::Pass);

    eventually(WAIT, "replication to stream again", || async {
        (streams.load(std::sync::atomic::Ordering::SeqCst) >= 2 && db.slot_active(&name).await)
            .then_some(())
    })
    .await;
    assert_eq!(
        degraded.lock().unwrap().last(),
        Some(&None),
        "streaming again clears the degraded state"
    );
    Ledger::insert(&db, 101, 120).await;
    Ledger::delete(&db, 40, 45).await;
    let verdict = oracle::settle(&db, &receiver, Some(&store), "sink", WAIT).await;
    verdict.assert_ok(0);
    assert_eq!(verdict.committed, 50 + 50 + 20 + 20 + 6);
    acks.finish().await.assert_ok();
    wh.stop().await.expect("a clean stop after the partition");
}

/// The other side of row 15: a stream that is merely quiet (here: a receive timeout
/// shorter than the heartbeat) is checked over SQL and kept, because its walsender is
/// alive and hears walhook's status updates. No reconnect, nothing degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_but_healthy_replication_stream_is_checked_and_kept() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], db.cluster().port()))).await;
    let name = db_name(&db);
    let store = scratch_dir(&name).join("store");
    let cfg = ConfigText::new(&via_port(&db.url(), proxy.port()), &name, &store)
        .source("receive_timeout = \"400ms\"")
        .table(Ledger::TABLE_TOML)
        .subscription("sink", &receiver.url(), "");
    let degraded: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = degraded.clone();
    let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = streams.clone();
    let hooks = Hooks {
        on_degraded: Some(Arc::new(move |reason| seen.lock().unwrap().push(reason))),
        on_streaming: Some(Arc::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })),
        ..Hooks::default()
    };
    let wh = InProcess::start_with(cfg.parse(), hooks).await;
    // Each check opens one SQL connection through the proxy.
    let after_start = proxy.accepted();
    eventually(WAIT, "three checks of the quiet stream", || async {
        (proxy.accepted() >= after_start + 3).then_some(())
    })
    .await;
    Ledger::insert(&db, 1, 10).await;
    oracle::settle(&db, &receiver, Some(&store), "sink", WAIT)
        .await
        .assert_ok(0);
    assert_eq!(
        streams.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a healthy stream was replaced"
    );
    assert!(
        degraded.lock().unwrap().iter().all(Option::is_none),
        "a healthy stream was reported degraded: {:?}",
        degraded.lock().unwrap()
    );
    wh.stop().await.expect("clean stop");
    let _ = db
        .client()
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/fd: {err}"))
        .count()
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/status: {err}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The subscription's state as the running walhook stored it.
fn stored_state(store: &std::path::Path, name: &str) -> walhook::store::SubscriptionState {
    walhook::store::inspect::StoreView::open(store)
        .expect("open the store read-only")
        .subscriptions()
        .expect("read subscriptions")
        .into_iter()
        .find(|view| view.state.name == name)
        .unwrap_or_else(|| panic!("no subscription {name} in the store"))
        .state
}

/// Rows 24 and 25, with the real binary: one receiver accepts the connection and never
/// sends a byte (a black-holed proxy), the other answers one byte every 20 ms (a
/// slow-loris proxy: status line and headers dribble in, so a per-read timeout would
/// never fire). Each attempt must end at the subscription's total deadline (100 ms) as
/// a failed attempt, and be retried. After 100 more attempts each, the process has as
/// many open file descriptors as before (± a small margin) and its memory has not grown
/// with the attempts; the slow-loris connections were all closed by walhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_slow_loris_receivers_hit_the_total_deadline_without_leaking() {
    const WARMUP: usize = 10;
    const ATTEMPTS: usize = 100;
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let hang = FaultProxy::start(receiver.addr()).await;
    hang.set(Fault::BlackHole);
    let loris = FaultProxy::start(receiver.addr()).await;
    loris.set(Fault::TrickleDown {
        bytes: 1,
        every: Duration::from_millis(20),
    });
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let store = dir.join("store");
    let patient = "timeout = \"100ms\"\nretry = { max_attempts = 100000, initial = \"10ms\", max = \"10ms\" }";
    let cfg = ConfigText::new(&db.url(), &name, &store)
        .table("name = \"t\"")
        .subscription("hang", &format!("http://{}/hang", hang.addr()), patient)
        .subscription("loris", &format!("http://{}/loris", loris.addr()), patient)
        .subscription("direct", &format!("{}/direct", receiver.url()), "");
    let mut child = crate::runner::spawn_run(&cfg.write(&dir), &dir.join("run.log"));
    let pid = child.id();
    eventually(WAIT, "walhook to start streaming", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    db.execute("INSERT INTO t VALUES (1)").await;
    receiver.wait_for(1, WAIT).await;

    eventually(WAIT, "the warm-up attempts", || async {
        (hang.accepted() >= WARMUP && loris.accepted() >= WARMUP).then_some(())
    })
    .await;
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    let (hang_start, loris_start) = (hang.accepted(), loris.accepted());
    eventually(
        Duration::from_secs(120),
        "100 more attempts each",
        || async {
            (hang.accepted() >= hang_start + ATTEMPTS && loris.accepted() >= loris_start + ATTEMPTS)
                .then_some(())
        },
    )
    .await;
    let (fds_after, rss_after) = (open_fds(pid), rss_kib(pid));
    eprintln!(
        "fds {fds_before} -> {fds_after}, rss {rss_before} -> {rss_after} KiB, \
         attempts hang {} loris {}",
        hang.accepted(),
        loris.accepted()
    );

    for sub in ["hang", "loris"] {
        let state = stored_state(&store, sub);
        assert_eq!(state.delivered, 0, "{sub}: an attempt succeeded: {state:?}");
        assert_eq!(state.dead_lettered, 0, "{sub}: {state:?}");
        assert!(
            state.attempts as usize > ATTEMPTS,
            "{sub}: only {} failed attempts recorded",
            state.attempts
        );
        assert_eq!(
            state.last_error.as_deref(),
            Some("request timed out after 100ms"),
            "{sub}"
        );
    }
    // One request reached the receiver directly; the black hole let none through and
    // the slow-loris answers never completed in time.
    let paths: Vec<String> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/direct").count(), 1);
    assert!(
        paths.iter().all(|p| p != "/hang"),
        "a request crossed the black hole"
    );
    // The slow-loris receiver got every request at once and answered 200 at once:
    // only its answer was slow, and walhook still gave up on each at the deadline.
    assert!(
        paths.iter().filter(|p| *p == "/loris").count() >= ATTEMPTS,
        "the slow-loris receiver saw only {} requests",
        paths.iter().filter(|p| *p == "/loris").count()
    );
    assert!(
        fds_after <= fds_before + 4,
        "open fds grew from {fds_before} to {fds_after} over {ATTEMPTS} timed-out attempts"
    );
    assert!(
        rss_after <= rss_before + 4 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB over {ATTEMPTS} timed-out attempts"
    );
    // walhook closed every slow-loris connection it gave up on (the black hole keeps its
    // side open by design, so only this proxy can tell).
    eventually(WAIT, "the slow-loris connections to close", || async {
        (loris.open() <= 1).then_some(())
    })
    .await;

    crate::runner::terminate(&child);
    let status = crate::runner::wait_exit(&mut child, WAIT);
    assert_eq!(status.code(), Some(0), "clean stop");
    let _ = db
        .client()
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

/// Row 26: an endpoint on a closed port and one whose host name does not resolve. Each
/// attempt is a connection error, retried, then a dead letter; with `disable_after` the
/// unresolvable one is disabled. A healthy subscription keeps receiving everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_dead_letter_and_disable_while_others_flow() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let nobody = TestReceiver::start().await; // stands for the unreachable ones: gets nothing
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let name = db_name(&db);
    let store = scratch_dir(&name).join("store");
    let retry = "retry = { max_attempts = 2, initial = \"10ms\", max = \"10ms\" }";
    let cfg = ConfigText::new(&db.url(), &name, &store)
        .table(Ledger::TABLE_TOML)
        .subscription(
            "closed",
            &format!("http://127.0.0.1:{closed_port}/hook"),
            retry,
        )
        .subscription(
            "nxdomain",
            "http://walhook-test.invalid/hook",
            &format!("{retry}\ndisable_after = 3"),
        )
        .subscription("healthy", &receiver.url(), "");
    let wh = InProcess::start(cfg.parse()).await;

    Ledger::insert(&db, 1, 3).await;
    let nxdomain = eventually(WAIT, "nxdomain to be disabled", || async {
        let state = stored_state(&store, "nxdomain");
        state.disabled_reason.is_some().then_some(state)
    })
    .await;
    // Event 1: two attempts, dead letter; event 2: the third failure in a row.
    assert_eq!(nxdomain.dead_lettered, 1, "{nxdomain:?}");
    let reason = nxdomain.disabled_reason.unwrap();
    assert!(
        reason.starts_with("disabled after 3 consecutive failed attempts")
            && reason.contains("dns error"),
        "{reason}"
    );
    // The disabled subscription keeps its events and gets no more attempts.
    Ledger::insert(&db, 4, 6).await;
    let healthy = oracle::settle(&db, &receiver, Some(&store), "healthy", WAIT).await;
    healthy.assert_ok(0);
    assert_eq!(healthy.delivered, 6);
    let closed = oracle::settle(&db, &nobody, Some(&store), "closed", WAIT).await;
    closed.assert_ok(0);
    assert_eq!(
        closed.dead_lettered, 6,
        "every event of 'closed' is a dead letter"
    );
    let letters = walhook::store::inspect::StoreView::open(&store)
        .unwrap()
        .subscriptions()
        .unwrap();
    for view in letters {
        let state = &view.state;
        match state.name.as_str() {
            "closed" => {
                assert_eq!(view.dead_letters, 6);
                let last = state.last_error.as_deref().unwrap_or_default();
                assert!(last.contains("Connection refused"), "{last}");
                assert!(
                    !last.contains(&closed_port.to_string()),
                    "URL in the error: {last}"
                );
            }
            "nxdomain" => {
                assert_eq!(view.dead_letters, 1);
                assert_eq!(view.backlog, 5, "its events are kept for a re-enable");
                assert_eq!(state.attempts, 1, "no attempt after the disable");
            }
            "healthy" => assert_eq!(view.backlog, 0),
            other => panic!("unexpected subscription {other}"),
        }
    }
    assert!(nobody.requests().is_empty());
    wh.stop().await.expect("clean stop");
    let _ = db
        .client()
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

/// Row 29 end to end: with `delivery.deny_private_networks = true` and no allowlist,
/// events for receivers on 127.0.0.1 (by address and by `localhost`) become dead
/// letters at the first attempt with the reason, and nothing reaches the listener; the
/// same store restarted with `allow_networks = ["127.0.0.1/32"]` delivers new events
/// to it. `send-test` is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_private_networks_keeps_deliveries_off_the_local_listener_unless_allowed() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    // One receiver per subscription, so the oracle judges each on its own.
    let literal = TestReceiver::start().await;
    let named = TestReceiver::start().await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let store = dir.join("store");
    let base = ConfigText::new(&db.url(), &name, &store)
        .delivery("deny_private_networks = true")
        .table(Ledger::TABLE_TOML)
        .subscription("literal", &format!("{}/literal", literal.url()), "")
        .subscription(
            "named",
            &format!("http://localhost:{}/named", named.addr().port()),
            "",
        );
    let receivers = [("literal", &literal), ("named", &named)];

    let wh = InProcess::start(base.parse()).await;
    Ledger::insert(&db, 1, 3).await;
    for (sub, receiver) in receivers {
        let verdict = oracle::settle(&db, receiver, Some(&store), sub, WAIT).await;
        verdict.assert_ok(0);
        assert_eq!(
            verdict.dead_lettered, 3,
            "{sub}: every event is a dead letter"
        );
        let state = stored_state(&store, sub);
        let reason = state.last_error.unwrap_or_default();
        assert!(
            reason.starts_with("blocked: ")
                && reason.contains("a loopback address; allow it in delivery.allow_networks"),
            "{sub}: {reason}"
        );
        assert!(
            receiver.requests().is_empty(),
            "{sub}: a blocked delivery reached the local listener"
        );
    }

    // send-test goes through the same guard.
    let config = base.write(&dir);
    let out = crate::runner::run_cli(&["send-test", "literal", "-c", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("blocked: 127.0.0.1 is a loopback address"),
        "{stderr}"
    );
    assert!(literal.requests().is_empty());
    wh.stop().await.expect("clean stop");

    let allowed = base.delivery("allow_networks = [\"127.0.0.1/32\"]");
    let wh = InProcess::start(allowed.parse()).await;
    Ledger::insert(&db, 4, 6).await;
    for (sub, receiver) in receivers {
        let verdict = oracle::settle(&db, receiver, Some(&store), sub, WAIT).await;
        verdict.assert_ok(0);
        assert_eq!(
            (verdict.delivered, verdict.dead_lettered),
            (3, 3),
            "{sub}: the three new events delivered, the first three stay dead letters"
        );
    }
    wh.stop().await.expect("clean stop");
    let _ = db
        .client()
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

/// Row 29, configuration: a malformed CIDR stops `walhook check` with exit 2, naming
/// the key, before any connection.
#[test]
fn a_bad_allow_network_is_a_config_error_naming_the_key() {
    let dir = scratch_dir("badcidr");
    let config = dir.join("walhook.toml");
    std::fs::write(
        &config,
        "[source]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\n\
         [delivery]\ndeny_private_networks = true\nallow_networks = [\"10.0.0.0/8\", \"10.0.0/8\"]\n\
         [[tables]]\nname = \"t\"\n",
    )
    .unwrap();
    let out = crate::runner::run_cli(&["check", "-c", config.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("delivery.allow_networks"), "{text}");
    assert!(
        text.contains("\"10.0.0/8\" is not a CIDR network"),
        "{text}"
    );
}
