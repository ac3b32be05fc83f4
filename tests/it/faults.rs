//! Process and server faults at the moments a kill from outside cannot hit
//! reliably, driven by walhook's failpoints (`WALHOOK_FAILPOINTS`, compiled
//! into the binary `cargo test` builds), plus SIGSTOP/SIGCONT, PostgreSQL
//! stops and a second instance. Every scenario ends with the shared oracle:
//! nothing lost, duplicates only within the scenario's in-flight bound,
//! per-key order, and the slot never confirmed past the store's durable LSN.
//!
//! Reliability matrix rows: 9, 10, 11, 12, 14, 16, 20, and 21 (in part; see
//! [`a_crash_before_the_store_commit_acknowledges_nothing_of_the_lost_commit`]).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use walhook::demo::cluster::{ClusterOptions, StopMode};
use walhook::failpoint::EXIT_CODE;
use walhook::store::inspect::StoreView;

use crate::pipeline::{verify_signature, SECRET};
use crate::runner::{eventually, scratch_dir, spawn_run_env, terminate, ConfigText};
use crate::support::db::{start_cluster, TestDb};
use crate::support::oracle::{self, AckWatch, Ledger};
use crate::support::receiver::{Request, TestReceiver};

const WAIT: Duration = Duration::from_secs(60);
const SUB: &str = "hook";

/// Redeliveries one crash may cause in commit order: the cursor advances a
/// worker had not persisted yet (`FLUSH_EVERY_EVENTS` in the delivery worker).
const CRASH_REDELIVERIES: usize = 64;

/// One scenario's files: store, config, logs.
struct Run {
    dir: PathBuf,
    store: PathBuf,
    slot: String,
    config: PathBuf,
}

impl Run {
    /// The ledger table, one subscription signed with `SECRET`, fast retries.
    fn new(db: &TestDb, receiver: &TestReceiver, source: &str) -> Run {
        let slot = db.slot_name();
        let dir = scratch_dir(&slot);
        Run::with_store(db, receiver, source, &dir, &dir.join("store"))
    }

    fn with_store(
        db: &TestDb,
        receiver: &TestReceiver,
        source: &str,
        dir: &Path,
        store: &Path,
    ) -> Run {
        let slot = db.slot_name();
        let mut cfg = ConfigText::new(&db.url(), &slot, store)
            .table(Ledger::TABLE_TOML)
            .subscription(
                SUB,
                &receiver.url(),
                &format!(
                    "auth = {{ type = \"hmac\", secret = \"{SECRET}\" }}\n\
                     retry = {{ max_attempts = 50, initial = \"50ms\", max = \"200ms\" }}"
                ),
            );
        if !source.is_empty() {
            cfg = cfg.source(source);
        }
        Run {
            dir: dir.to_path_buf(),
            store: store.to_path_buf(),
            slot,
            config: cfg.write(dir),
        }
    }

    fn view(&self) -> StoreView {
        StoreView::open(&self.store)
            .unwrap_or_else(|e| panic!("open the store {}: {e}", self.store.display()))
    }

    /// The highest seq the store ever handed out (AUTOINCREMENT's counter):
    /// an insert the UNIQUE key ignored still consumes one.
    fn seq_counter(&self) -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            self.store.join(walhook::store::DB_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    }
}

/// The real binary as a child process; killed if a test fails before it ends.
struct Walhook {
    child: Child,
    log: PathBuf,
}

impl Walhook {
    /// `walhook run` with `failpoints` (`WALHOOK_FAILPOINTS`), logging to `<tag>.log`.
    fn start(run: &Run, tag: &str, failpoints: Option<&str>) -> Walhook {
        let log = run.dir.join(format!("{tag}.log"));
        let env: Vec<(&str, &str)> = failpoints
            .map(|spec| (walhook::failpoint::ENV, spec))
            .into_iter()
            .collect();
        let child = spawn_run_env(&run.config, &log, &env);
        Walhook { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far, without the terminal colour codes tracing writes.
    fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut text = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-byte
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                text.push(c);
            }
        }
        text
    }

    /// The log's last lines, for failure messages.
    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for a log line that satisfies `pred`.
    async fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !self.log().lines().any(&pred) {
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for {what} in {}; its tail:\n{}",
                self.log.display(),
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_log(&self, needle: &str) {
        self.wait_line(&format!("{needle:?}"), |line| line.contains(needle))
            .await;
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "walhook did not exit within {timeout:?}; its log's tail:\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts the process ended through the `exit` failpoint named `point`.
    async fn expect_failpoint_exit(&mut self, point: &str) {
        let status = self.wait_exit(WAIT).await;
        assert_eq!(
            status.code(),
            Some(EXIT_CODE),
            "walhook should have died at failpoint {point} ({status}); log tail:\n{}",
            self.tail()
        );
        assert!(
            self.log()
                .contains(&format!("walhook failpoint {point}: exit")),
            "the log names the failpoint {point}:\n{}",
            self.tail()
        );
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and a clean exit (code 0) with no panic in the log.
    async fn stop(mut self) {
        terminate(&self.child);
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM is a clean stop; log tail:\n{}",
            self.tail()
        );
        assert_no_panic(&self);
    }
}

impl Drop for Walhook {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_no_panic(wh: &Walhook) {
    assert!(
        !wh.log().contains("panicked"),
        "walhook panicked; log tail:\n{}",
        wh.tail()
    );
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Whether a walsender (not, say, the backend creating the slot) holds `slot`.
async fn streaming(db: &TestDb, slot: &str) -> bool {
    db.query_one_i64(&format!(
        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid \
         WHERE s.slot_name = '{slot}' AND a.backend_type = 'walsender'"
    ))
    .await
        == 1
}

/// Waits until walhook streams from `slot`.
async fn wait_slot_active(db: &TestDb, slot: &str, wh: &Walhook) {
    let deadline = Instant::now() + WAIT;
    while !streaming(db, slot).await {
        assert!(
            Instant::now() < deadline,
            "walhook did not start streaming from slot {slot} within {WAIT:?}; log tail:\n{}",
            wh.tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drops the test's slot on the shared cluster so it pins no WAL for later tests.
async fn drop_slot(db: &TestDb, slot: &str) {
    eventually(WAIT, "the slot to be released", || async {
        (!db.slot_active(slot).await).then_some(())
    })
    .await;
    db.execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await;
}

/// The commit LSN of a ledger event (the first 16 hex digits of its id).
fn commit_lsn(request: &Request) -> u64 {
    let id = request.header("webhook-id").expect("webhook-id");
    u64::from_str_radix(&id[..16], 16).unwrap_or_else(|e| panic!("event id {id}: {e}"))
}

fn lsn(value: u64) -> String {
    walhook::event::lsn_text(value)
}

/// Row 10: a kill -9 while a 10,000-row transaction is half decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_transaction_acknowledges_none_of_it_and_stores_it_once() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let mut wh = Walhook::start(&run, "run1", Some("capture_after_row=5000:pause"));
    wait_slot_active(&db, &run.slot, &wh).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;

    Ledger::insert(&db, 1, 10_000).await;
    wh.wait_log("walhook failpoint capture_after_row: pause (hit 5001)")
        .await;
    wh.kill9();
    let confirmed_at_kill = db.slot_confirmed_flush_lsn(&run.slot).await.unwrap();
    let (stored_at_kill, durable_at_kill) = {
        let view = run.view();
        (view.events().unwrap(), view.durable_lsn().unwrap())
    };
    assert!(
        stored_at_kill <= 5_000,
        "at most the 5,000 decoded rows can be stored, found {stored_at_kill}"
    );

    let wh = Walhook::start(&run, "run2", None);
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    verdict.assert_ok(CRASH_REDELIVERIES);
    assert_eq!(verdict.committed, 10_000);

    let tx_lsn = commit_lsn(&receiver.requests()[0]);
    assert!(
        receiver.requests().iter().all(|r| commit_lsn(r) == tx_lsn),
        "one transaction, one commit LSN"
    );
    assert!(
        confirmed_at_kill < tx_lsn,
        "the slot was confirmed up to {} at the kill, past the commit {} of the half-received transaction",
        lsn(confirmed_at_kill),
        lsn(tx_lsn)
    );
    assert!(
        durable_at_kill.unwrap_or(0) < tx_lsn,
        "the store's durable LSN {} passed the commit {} it never received",
        lsn(durable_at_kill.unwrap_or(0)),
        lsn(tx_lsn)
    );
    eprintln!(
        "row 10: {stored_at_kill} events stored and slot at {} at the kill; commit {}",
        lsn(confirmed_at_kill),
        lsn(tx_lsn)
    );
    // Postgres sent the transaction again from BEGIN; the rows stored before
    // the kill were absorbed by the UNIQUE key.
    assert_eq!(
        run.view().events().unwrap(),
        10_000,
        "exactly one queue row per event ({stored_at_kill} were stored before the kill)"
    );
    watch.finish().await.assert_ok();
    wh.stop().await;
    drop_slot(&db, &run.slot).await;
}

/// Row 11: the process dies after the store committed a transaction and
/// before the new durable LSN reached Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_the_store_commit_and_the_ack_resends_into_the_same_rows() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let mut wh = Walhook::start(&run, "run1", Some("after_store_commit_before_ack=exit"));
    wait_slot_active(&db, &run.slot, &wh).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;

    Ledger::insert(&db, 1, 100).await;
    wh.expect_failpoint_exit("after_store_commit_before_ack")
        .await;
    let (stored, durable) = {
        let view = run.view();
        (view.events().unwrap(), view.durable_lsn().unwrap().unwrap())
    };
    let seq_at_crash = run.seq_counter();
    let confirmed = db.slot_confirmed_flush_lsn(&run.slot).await.unwrap();
    assert_eq!(stored, 100, "the transaction was committed to the store");
    assert!(
        confirmed < durable,
        "the crash came after the store made {} durable and before the ack, yet the slot is confirmed up to {}",
        lsn(durable),
        lsn(confirmed)
    );

    let wh = Walhook::start(&run, "run2", None);
    wait_slot_active(&db, &run.slot, &wh).await;
    Ledger::bump(&db, 1, 50).await;
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    // The transaction's events may have been stored in an earlier group
    // commit than its end, and delivered before the crash.
    verdict.assert_ok(CRASH_REDELIVERIES);
    assert_eq!(verdict.committed, 150);
    assert_eq!(
        run.view().events().unwrap(),
        150,
        "the re-sent transaction added no queue rows"
    );
    let seq_now = run.seq_counter();
    eprintln!(
        "row 11: durable {} / confirmed {} at the crash; seq counter {seq_at_crash} -> {seq_now}",
        lsn(durable),
        lsn(confirmed)
    );
    assert!(
        seq_now >= seq_at_crash + 150,
        "Postgres re-sent the 100 unacknowledged events and the UNIQUE key ignored them \
         (the seq counter went from {seq_at_crash} to {seq_now}, expected at least +150)"
    );
    watch.finish().await.assert_ok();
    wh.stop().await;
    drop_slot(&db, &run.slot).await;
}

/// Row 12: the receiver answered 2xx and the process died before marking
/// the event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_a_2xx_before_the_mark_resends_the_same_id_freshly_signed() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let mut wh = Walhook::start(&run, "run1", Some("after_2xx_before_mark=exit"));
    wait_slot_active(&db, &run.slot, &wh).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;

    Ledger::insert(&db, 1, 3).await;
    wh.expect_failpoint_exit("after_2xx_before_mark").await;
    let before = receiver.requests();
    assert_eq!(before.len(), 1, "one request got its 2xx, then the crash");
    let first = &before[0];
    let id = first.header("webhook-id").unwrap().to_string();
    let ts: u64 = first.header("webhook-timestamp").unwrap().parse().unwrap();
    // A redelivery in the same second would rightly carry the same timestamp.
    eventually(
        WAIT,
        "the clock to pass the first attempt's second",
        || async { (walhook::app::now_ms() / 1000 > ts as i64).then_some(()) },
    )
    .await;

    let wh = Walhook::start(&run, "run2", None);
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    verdict.assert_ok(1);
    assert_eq!(
        verdict.duplicate_deliveries.into_iter().collect::<Vec<_>>(),
        vec![(id.clone(), 2)],
        "only the event whose 2xx was not marked is sent again"
    );
    let again: Vec<Request> = receiver
        .requests()
        .into_iter()
        .filter(|r| r.header("webhook-id") == Some(id.as_str()))
        .collect();
    assert_eq!(again.len(), 2);
    let ts_again: u64 = again[1]
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ts_again > ts,
        "a new webhook-timestamp ({ts} then {ts_again})"
    );
    assert_eq!(again[0].body, again[1].body, "the same body");
    for request in &again {
        verify_signature(request);
    }
    watch.finish().await.assert_ok();
    wh.stop().await;
    drop_slot(&db, &run.slot).await;
}

/// Row 14: `pg_ctl stop -m fast` under a streaming walhook is not held up
/// waiting for it, and after `-m immediate` (crash recovery, the slot may
/// rewind to the last checkpoint) nothing is lost or queued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_stop_is_not_held_up_and_an_immediate_stop_loses_nothing() {
    // A walsender whose client never confirms the shutdown checkpoint holds
    // a fast stop until wal_sender_timeout: make that far longer than the bound.
    let cluster = start_cluster(ClusterOptions {
        extra_conf: vec!["wal_sender_timeout = '120s'".into()],
        ..ClusterOptions::default()
    })
    .await;
    let mut db = TestDb::on(cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "max_connect_attempts = 100");
    let wh = Walhook::start(&run, "run", None);
    wait_slot_active(&db, &run.slot, &wh).await;

    for (round, mode) in [StopMode::Fast, StopMode::Immediate]
        .into_iter()
        .enumerate()
    {
        let watch = AckWatch::start(&db, &run.slot, &run.store).await;
        let base = round as i64 * 10_000;
        Ledger::insert(&db, base + 1, base + 2_000).await;
        Ledger::bump(&db, base + 1, base + 500).await;
        // Stop while walhook is streaming and delivering.
        let delivered = receiver.requests().len();
        receiver.wait_for(delivered + 1, WAIT).await;
        let c = cluster.clone();
        let took = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            c.stop(mode).unwrap();
            started.elapsed()
        })
        .await
        .unwrap();
        eprintln!("row 14: pg_ctl stop -m {mode:?} took {took:?}");
        if mode == StopMode::Fast {
            assert!(
                took < Duration::from_secs(20),
                "pg_ctl stop -m fast took {took:?}: the walsender waited for walhook to confirm the shutdown checkpoint"
            );
        }
        watch.finish().await.assert_ok();
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.start_again().unwrap())
            .await
            .unwrap();
        db.reconnect().await;
        wait_slot_active(&db, &run.slot, &wh).await;
    }
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;
    Ledger::delete(&db, 1, 100).await;
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    // walhook itself never crashed: nothing is delivered twice.
    verdict.assert_ok(0);
    assert_eq!(verdict.committed, 2 * 2_500 + 100);
    watch.finish().await.assert_ok();
    assert!(
        wh.log()
            .contains("replication connection lost; reconnecting"),
        "walhook noticed the stops; log tail:\n{}",
        wh.tail()
    );
    wh.stop().await;
}

/// Row 16: walhook frozen (SIGSTOP) past the server's wal_sender_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_past_wal_sender_timeout_walhook_reconnects_and_loses_nothing() {
    let cluster = start_cluster(ClusterOptions {
        extra_conf: vec!["wal_sender_timeout = '2s'".into()],
        ..ClusterOptions::default()
    })
    .await;
    let db = TestDb::on(cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let wh = Walhook::start(&run, "run", None);
    wait_slot_active(&db, &run.slot, &wh).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;
    Ledger::insert(&db, 1, 200).await;
    receiver.wait_for(1, WAIT).await;

    signal(wh.pid(), "STOP");
    Ledger::insert(&db, 201, 1_000).await;
    Ledger::bump(&db, 1, 100).await;
    // Frozen until the server has given up on the connection.
    let frozen = Instant::now();
    let deadline = frozen + WAIT;
    while db.slot_active(&run.slot).await {
        if Instant::now() > deadline {
            signal(wh.pid(), "CONT");
            panic!("the server kept the frozen walhook's walsender for {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "row 16: the server dropped the frozen walhook after {:?}",
        frozen.elapsed()
    );
    let server_log = std::fs::read_to_string(cluster.log_path()).unwrap_or_default();
    assert!(
        server_log.contains("terminating walsender process due to replication timeout"),
        "the server ended the connection for the timeout"
    );
    signal(wh.pid(), "CONT");

    wait_slot_active(&db, &run.slot, &wh).await;
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    // A request in flight at the freeze may time out on waking and be re-sent.
    verdict.assert_ok(1);
    assert_eq!(verdict.committed, 1_100);
    watch.finish().await.assert_ok();
    assert!(
        wh.log()
            .contains("replication connection lost; reconnecting"),
        "walhook noticed the lost connection; log tail:\n{}",
        wh.tail()
    );
    wh.stop().await;
}

/// Row 20: the store cannot be written (SQLITE_FULL) while walhook runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_pauses_replication_acks_nothing_past_it_and_resumes() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    // Some history first, without faults.
    let wh = Walhook::start(&run, "run1", None);
    wait_slot_active(&db, &run.slot, &wh).await;
    Ledger::insert(&db, 1, 100).await;
    oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT)
        .await
        .assert_ok(0);
    wh.stop().await;
    let durable_before = run.view().durable_lsn().unwrap().unwrap();

    // From its first write on, the store is full: appends until `appends`
    // exists, delivery-state writes until `state` exists.
    let appends = run.dir.join("appends-fit-again");
    let state = run.dir.join("state-writes-fit-again");
    let spec = format!(
        "store_append=error({});store_state_write=error({})",
        appends.display(),
        state.display()
    );
    let mut wh = Walhook::start(&run, "run2", Some(&spec));
    wait_slot_active(&db, &run.slot, &wh).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;
    Ledger::insert(&db, 101, 300).await;
    Ledger::bump(&db, 1, 50).await;
    // Paused, and still so after a few retries.
    wh.wait_line("the third failed append", |line| {
        line.contains("the store is full: replication is paused") && line.contains("attempt=3")
    })
    .await;
    let paused = wh.log();
    assert!(
        paused.contains("walhook.db") && paused.contains("free space"),
        "the error names the file and the fix:\n{}",
        wh.tail()
    );
    assert!(
        wh.running(),
        "a full store pauses walhook, it does not stop it"
    );
    assert_eq!(
        run.view().durable_lsn().unwrap(),
        Some(durable_before),
        "nothing became durable while the store was full"
    );
    let confirmed = db.slot_confirmed_flush_lsn(&run.slot).await.unwrap();
    assert!(
        confirmed <= durable_before,
        "the slot was confirmed up to {} past the last durable LSN {}",
        lsn(confirmed),
        lsn(durable_before)
    );
    assert!(
        db.wal_lsn().await > durable_before,
        "Postgres holds the WAL written meanwhile"
    );
    assert_eq!(
        oracle::check(&db, &receiver, None, SUB).await.delivered,
        100,
        "nothing written during the pause was delivered"
    );

    // Appends fit again; delivery-state writes do not yet: delivery pauses
    // at its first cursor write.
    std::fs::write(&appends, b"").unwrap();
    wh.wait_log("the store is writable again; replication resumes")
        .await;
    wh.wait_log("the store is full: delivery is paused").await;
    assert!(wh.running());
    std::fs::write(&state, b"").unwrap();
    wh.wait_log("the store is writable again; delivery resumes")
        .await;

    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    // No crash: a paused write is retried, never skipped or repeated.
    verdict.assert_ok(0);
    assert_eq!(verdict.committed, 350);
    watch.finish().await.assert_ok();
    wh.stop().await;
    drop_slot(&db, &run.slot).await;
}

/// Row 9, same store: the second walhook fails fast on the store's lock and
/// the first goes on delivering without a single duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_walhook_on_the_same_store_exits_5_and_the_first_is_unaffected() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let mut first = Walhook::start(&run, "first", None);
    wait_slot_active(&db, &run.slot, &first).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;
    Ledger::insert(&db, 1, 500).await;

    let mut second = Walhook::start(&run, "second", None);
    let status = second.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(5), "log:\n{}", second.tail());
    assert!(
        second.log().contains("another walhook is using"),
        "the second names the reason:\n{}",
        second.tail()
    );

    Ledger::bump(&db, 1, 500).await;
    Ledger::insert(&db, 501, 600).await;
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    verdict.assert_ok(0);
    assert_eq!(verdict.committed, 1_100);
    assert!(first.running());
    watch.finish().await.assert_ok();
    first.stop().await;
    drop_slot(&db, &run.slot).await;
}

/// Row 9, same slot with a store of its own: the second walhook finds the
/// slot active, backs off for the server's wal_sender_timeout, then exits 3
/// naming the holder; the first is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_walhook_on_the_same_slot_backs_off_then_exits_3_naming_the_holder() {
    // The second gives up after wal_sender_timeout plus a margin: keep it short.
    let cluster = start_cluster(ClusterOptions {
        extra_conf: vec!["wal_sender_timeout = '2s'".into()],
        ..ClusterOptions::default()
    })
    .await;
    let db = TestDb::on(cluster).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let mut first = Walhook::start(&run, "first", None);
    wait_slot_active(&db, &run.slot, &first).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;
    Ledger::insert(&db, 1, 500).await;
    let holder = db
        .query_one_i64(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}'",
            run.slot
        ))
        .await;

    let other_dir = run.dir.join("second");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = Run::with_store(&db, &receiver, "", &other_dir, &other_dir.join("store"));
    let mut second = Walhook::start(&other, "second", None);
    second
        .wait_log("replication slot is in use by another connection")
        .await;
    let status = second.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(3), "log:\n{}", second.tail());
    let log = second.log();
    assert!(
        log.contains(&format!("server pid {holder}")) && log.contains("its own source.slot"),
        "the second names the holder and the fix:\n{}",
        second.tail()
    );

    Ledger::bump(&db, 1, 500).await;
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    verdict.assert_ok(0);
    assert_eq!(verdict.committed, 1_000);
    assert!(first.running());
    watch.finish().await.assert_ok();
    first.stop().await;
}

/// Row 21 in part. A power loss on the store's volume (LazyFS) cannot be
/// produced here; what it must never cause is an acknowledged commit that
/// the store then lacks. This kills walhook after a transaction's rows were
/// written to SQLite and before its commit: the rows are lost as unsynced
/// writes would be, nothing of them was acknowledged, and Postgres sends the
/// transaction again. (`synchronous = FULL` on the event connection is
/// checked by the store's unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_store_commit_acknowledges_nothing_of_the_lost_commit() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let mut wh = Walhook::start(&run, "run1", Some("before_store_commit=exit"));
    wait_slot_active(&db, &run.slot, &wh).await;
    let watch = AckWatch::start(&db, &run.slot, &run.store).await;

    Ledger::insert(&db, 1, 100).await;
    wh.expect_failpoint_exit("before_store_commit").await;
    let durable = run.view().durable_lsn().unwrap().unwrap_or(0);
    let confirmed = db.slot_confirmed_flush_lsn(&run.slot).await.unwrap();

    let wh = Walhook::start(&run, "run2", None);
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    // Events of the transaction committed in an earlier group than its end
    // may have been delivered before the crash.
    verdict.assert_ok(CRASH_REDELIVERIES);
    assert_eq!(verdict.committed, 100);
    let tx_lsn = commit_lsn(&receiver.requests()[0]);
    assert!(
        durable < tx_lsn && confirmed < tx_lsn,
        "the lost commit {} was neither durable (store at {}) nor acknowledged (slot at {})",
        lsn(tx_lsn),
        lsn(durable),
        lsn(confirmed)
    );
    assert_eq!(run.view().events().unwrap(), 100);
    watch.finish().await.assert_ok();
    wh.stop().await;
    drop_slot(&db, &run.slot).await;
}

/// `cargo test` builds the binary the tests spawn with failpoints.
#[test]
fn the_tested_binary_has_failpoints() {
    let out = crate::runner::run_cli(&["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains("(failpoints)"),
        "`walhook --version` of the tested binary: {version}"
    );
}

/// Exit code 1 (unexpected): a bug — here a panic injected into a delivery
/// worker — stops walhook with exit 1 and a message, instead of leaving it
/// running without that subscription's deliveries. A restart resumes with
/// nothing lost (the event whose 2xx was not marked is sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_stops_walhook_with_exit_1_and_a_restart_loses_nothing() {
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let run = Run::new(&db, &receiver, "");
    let mut wh = Walhook::start(&run, "run1", Some("after_2xx_before_mark=panic"));
    wait_slot_active(&db, &run.slot, &wh).await;

    Ledger::insert(&db, 1, 3).await;
    let status = wh.wait_exit(WAIT).await;
    let log = wh.log();
    assert_eq!(
        status.code(),
        Some(walhook::exit::UNEXPECTED as i32),
        "a panicking worker must stop walhook with exit 1; log tail:\n{}",
        wh.tail()
    );
    assert!(
        log.contains("delivery for subscription 'hook' stopped unexpectedly"),
        "the exit message names the subscription:\n{}",
        wh.tail()
    );

    let wh = Walhook::start(&run, "run2", None);
    let verdict = oracle::settle(&db, &receiver, Some(&run.store), SUB, WAIT).await;
    verdict.assert_ok(1);
    wh.stop().await;
}
