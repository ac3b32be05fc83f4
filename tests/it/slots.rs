//! Start-up and the replication slot (matrix rows 8, 17 and 18): an unreachable
//! server or a rejected login end in exit 3 without spinning; a slot that was
//! invalidated (`max_slot_wal_keep_size`) or dropped while walhook was stopped
//! ends in exit 4 and is never recreated, unless the operator runs
//! `walhook run --resync`, which replaces it, records the gap and keeps
//! delivering what the store holds.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use walhook::app::Hooks;
use walhook::demo::cluster::ClusterOptions;
use walhook::store::inspect::StoreView;

use crate::pipeline::db_name;
use crate::runner::{
    eventually, run_cli, scratch_dir, spawn_run, spawn_walhook, terminate, wait_exit, ConfigText,
    InProcess,
};
use crate::support::db::{start_cluster, TestDb};
use crate::support::process::cpu_time;
use crate::support::receiver::{Reply, TestReceiver};

const WAIT: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that nobody listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `X/Y`, as Postgres and walhook print LSNs.
fn lsn_text(lsn: u64) -> String {
    walhook::event::lsn_text(lsn)
}

/// The numbers after `key=` in every line of `text` that contains `marker`.
fn field_values(text: &str, marker: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let at = l.find(&format!("{key}="))? + key.len() + 1;
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn unreachable_postgres_backs_off_with_jitter_then_exits_3_without_spinning() {
    const ATTEMPTS: u64 = 4;
    let port = closed_port();
    let dir = scratch_dir("unreachable");
    let password = "s3cret-unreachable-pw";
    let config = ConfigText::new(
        &format!("postgres://walhook:{password}@127.0.0.1:{port}/app"),
        "unreachable",
        &dir.join("store"),
    )
    .source(&format!("max_connect_attempts = {ATTEMPTS}"))
    .table("name = \"t\"")
    .write(&dir);
    let log = dir.join("run.log");
    let started = Instant::now();
    let mut child = spawn_run(&config, &log);
    let pid = child.id();

    // CPU time over the waiting period: from the first "retrying" line (the
    // first backoff sleep has begun) to the last sample before the exit.
    let mut first: Option<(Instant, Duration)> = None;
    let mut last: Option<(Instant, Duration)> = None;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < WAIT,
            "walhook did not give up within {WAIT:?}: {}",
            read(&log)
        );
        if let Some(cpu) = cpu_time(pid) {
            let now = Instant::now();
            if first.is_none() && read(&log).contains("retrying") {
                first = Some((now, cpu));
            }
            if first.is_some() {
                last = Some((now, cpu));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let out = read(&log);
    assert_eq!(
        status.code(),
        Some(3),
        "exit 3 for an unreachable database: {out}"
    );
    assert!(
        out.contains(&format!("gave up after {ATTEMPTS} connection attempts"))
            && out.contains(&format!(
                "cannot connect to PostgreSQL at walhook@127.0.0.1:{port}/app"
            )),
        "a clear final message: {out}"
    );
    assert!(!out.contains(password), "the password never appears: {out}");

    // Exponential backoff, ±20% jitter: 500 ms, 1 s, 2 s between the 4 attempts.
    let delays = field_values(&out, "cannot connect to PostgreSQL; retrying", "delay_ms");
    assert_eq!(
        delays.len(),
        ATTEMPTS as usize - 1,
        "one retry line per wait: {out}"
    );
    for (i, delay) in delays.iter().enumerate() {
        let base = 500u64 << i;
        assert!(
            (base * 8 / 10..=base * 12 / 10).contains(delay),
            "wait {} was {delay} ms, outside {base} ms ± 20%: {delays:?}",
            i + 1
        );
    }
    assert!(
        delays.iter().enumerate().any(|(i, d)| *d != 500u64 << i),
        "the waits carry jitter, not the bare schedule: {delays:?}"
    );
    let slept: u64 = delays.iter().sum();
    assert!(
        elapsed >= Duration::from_millis(slept),
        "walhook really waited ({elapsed:?} for {slept} ms of backoff)"
    );

    // Idle between attempts: a hot loop would burn a whole core.
    let ((t0, cpu0), (t1, cpu1)) = (first.expect("a retry line"), last.unwrap());
    let wall = t1 - t0;
    let cpu = cpu1.saturating_sub(cpu0);
    assert!(
        wall >= Duration::from_secs(2),
        "the waiting period was sampled ({wall:?})"
    );
    assert!(
        cpu.as_secs_f64() < 0.05 * wall.as_secs_f64(),
        "walhook used {cpu:?} of CPU in {wall:?} of waiting: it must sleep between attempts"
    );
    eprintln!("unreachable: {ATTEMPTS} attempts, waits {delays:?} ms, CPU {cpu:?} over {wall:?} of waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_exits_3_after_one_attempt_without_leaking_it() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let role = format!("{}_login", db.name());
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'the-right-one'"
    ))
    .await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let password = "wrong-s3cret-pw";
    let (_, host) = db
        .url()
        .split_once('@')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    let config = ConfigText::new(
        &format!("postgres://{role}:{password}@{host}"),
        &name,
        &dir.join("store"),
    )
    .source("max_connect_attempts = 6")
    .table("name = \"t\"")
    .write(&dir);
    let log = dir.join("run.log");
    let started = Instant::now();
    let mut child = spawn_run(&config, &log);
    let pid = child.id();
    let mut cpu = Duration::ZERO;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < WAIT,
            "walhook did not exit: {}",
            read(&log)
        );
        cpu = cpu_time(pid).unwrap_or(cpu);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = read(&log);
    assert_eq!(status.code(), Some(3), "exit 3 for a rejected login: {out}");
    assert!(
        out.contains(&format!("PostgreSQL rejected the login of role '{role}'")),
        "{out}"
    );
    assert!(!out.contains(password), "the password never appears: {out}");
    // Bounded: a rejected password is not retried (it cannot get better, and
    // each attempt is a failed login in the server's log).
    let server_log = read(&db.cluster().log_path());
    let failed_logins = server_log
        .matches(&format!(
            "password authentication failed for user \"{role}\""
        ))
        .count();
    assert_eq!(
        failed_logins, 1,
        "exactly one login attempt reached the server"
    );
    assert!(
        cpu < Duration::from_secs(2),
        "no hot loop: {cpu:?} of CPU before the exit"
    );
    assert_eq!(
        db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .await,
        0,
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_with_an_empty_store_creates_the_slot() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let store = scratch_dir(&name);
    assert!(
        !store.join(walhook::store::DB_FILE).exists(),
        "an empty state"
    );
    assert_eq!(
        db.slot_confirmed_flush_lsn(&name).await,
        None,
        "no slot yet"
    );
    let cfg = ConfigText::new(&db.url(), &name, &store)
        .table("name = \"t\"")
        .subscription("hook", &receiver.url(), "");
    let wh = InProcess::start(cfg.parse()).await;
    assert!(
        db.slot_active(&name).await,
        "the slot was created and is streaming"
    );
    db.execute("INSERT INTO t VALUES (1)").await;
    let events = receiver.events_after_wait(1, WAIT).await;
    assert_eq!(events[0]["data"]["id"], 1);
    wh.stop().await.unwrap();
    assert!(
        StoreView::open(&store)
            .unwrap()
            .resyncs()
            .unwrap()
            .is_empty(),
        "creating the first slot is not a resync"
    );
    db.execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_stops_run_and_check_with_exit_4_until_resync() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let cfg = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"t\"")
        .subscription("hook", &receiver.url(), "");
    let config = cfg.write(&dir);
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO t VALUES (1)").await;
    receiver.wait_for(1, WAIT).await;
    wh.stop().await.unwrap();
    let durable = StoreView::open(&dir.join("store"))
        .unwrap()
        .durable_lsn()
        .unwrap()
        .expect("prior progress");
    db.execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
    // Committed while there is no slot: nobody can ever decode this again.
    db.execute("INSERT INTO t VALUES (2)").await;

    for command in ["run", "check"] {
        let out = run_cli(&[command, "-c", config.to_str().unwrap()]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(4), "{command}: {text}");
        assert!(
            text.contains("slot missing: resync required"),
            "{command}: {text}"
        );
        assert!(
            text.contains(&lsn_text(durable)),
            "{command} names the durable LSN: {text}"
        );
        assert!(
            text.contains("--resync"),
            "{command} names the way out: {text}"
        );
        assert_eq!(
            db.query_one_i64(&format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'"
            ))
            .await,
            0,
            "{command} never recreates the slot"
        );
    }

    let hooks = Hooks {
        resync: true,
        ..Hooks::default()
    };
    let wh = InProcess::start_with(cfg.parse(), hooks).await;
    db.execute("INSERT INTO t VALUES (3)").await;
    let events = receiver.events_after_wait(2, WAIT).await;
    assert_eq!(
        events[1]["data"]["id"], 3,
        "capture continues on the new slot"
    );
    wh.stop().await.unwrap();
    let resyncs = StoreView::open(&dir.join("store"))
        .unwrap()
        .resyncs()
        .unwrap();
    assert_eq!(resyncs.len(), 1, "{resyncs:?}");
    assert_eq!(resyncs[0].old_durable_lsn, Some(durable));
    assert!(resyncs[0].reason.contains("slot missing"), "{resyncs:?}");
    assert!(resyncs[0].new_start_lsn > durable);
    let ids: Vec<i64> = receiver
        .events()
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 3], "row 2 fell into the recorded gap");
    // The next start resumes the new slot without any flag.
    let wh = InProcess::start(cfg.parse()).await;
    wh.stop().await.unwrap();
    db.execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
}

/// Writes WAL and checkpoints until `slot` is invalidated (PostgreSQL's
/// `019_replslot_limit.pl` recipe); returns how many rounds it took.
async fn invalidate(db: &TestDb, slot: &str) -> u32 {
    db.execute("CREATE TABLE IF NOT EXISTS filler (pad text)")
        .await;
    for round in 1..=20 {
        for _ in 0..3 {
            db.execute(
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000);
                 SELECT pg_switch_wal();",
            )
            .await;
        }
        db.execute("CHECKPOINT").await;
        let status = db
            .query_one_string(&format!(
                "SELECT coalesce(wal_status, '-') FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await;
        if status == "lost" {
            return round;
        }
    }
    panic!("slot {slot} was not invalidated after 20 rounds of WAL and checkpoints");
}

fn ids_delivered(receiver: &TestReceiver) -> BTreeSet<i64> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["data"]["id"].as_i64().unwrap())
        .collect()
}

fn stop(mut child: Child, what: &str) {
    terminate(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{what}: SIGTERM is a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_exits_4_until_resync_which_keeps_the_stored_events() {
    // A cluster of our own: the slot limit applies cluster-wide.
    let cluster = start_cluster(ClusterOptions {
        extra_conf: vec![
            "max_slot_wal_keep_size = '1MB'".into(),
            "wal_keep_size = 0".into(),
        ],
        ..ClusterOptions::default()
    })
    .await;
    let db = TestDb::on(cluster).await;
    db.execute("CREATE TABLE g (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    receiver.set_default(Reply::Status(503));
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let store = dir.join("store");
    let config = ConfigText::new(&db.url(), &name, &store)
        .table("name = \"g\"")
        .subscription(
            "hook",
            &receiver.url(),
            "retry = { max_attempts = 1000, initial = \"50ms\", max = \"200ms\" }",
        )
        .write(&dir);
    let config = config.to_str().unwrap();

    // 1. Three rows are stored; the receiver is down, so none is delivered.
    let child = spawn_run(Path::new(config), &dir.join("run1.log"));
    eventually(WAIT, "walhook to stream", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    db.execute("INSERT INTO g VALUES (1), (2), (3)").await;
    eventually(
        WAIT,
        "3 events stored and a first failed attempt",
        || async {
            let stored = StoreView::open(&store).ok()?.events().ok()?;
            (stored == 3 && !receiver.requests().is_empty()).then_some(())
        },
    )
    .await;
    stop(child, "run 1");
    let durable = StoreView::open(&store)
        .unwrap()
        .durable_lsn()
        .unwrap()
        .expect("prior progress");

    // 2. While walhook is stopped: rows 4 and 5, then WAL until the slot is lost.
    db.execute("INSERT INTO g VALUES (4), (5)").await;
    let rounds = invalidate(&db, &name).await;
    eprintln!("slot invalidated after {rounds} round(s) of WAL switches and a checkpoint");

    // 3. Without --resync: exit 4, the slot left as it is.
    let mut child = spawn_run(Path::new(config), &dir.join("run2.log"));
    let status = wait_exit(&mut child, WAIT);
    let out = read(&dir.join("run2.log"));
    assert_eq!(status.code(), Some(4), "{out}");
    assert!(out.contains("slot lost: resync required"), "{out}");
    assert!(
        out.contains("wal_status = lost"),
        "names the wal_status: {out}"
    );
    assert!(
        out.contains(&format!("last durable LSN is {}", lsn_text(durable))),
        "names the last durable LSN {}: {out}",
        lsn_text(durable)
    );
    assert_eq!(
        db.query_one_string(&format!(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .await,
        "lost",
        "the slot is not recreated"
    );
    let check = run_cli(&["check", "-c", config]);
    assert_eq!(
        check.status.code(),
        Some(4),
        "check agrees: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    // 4. With --resync: a new slot, the stored events still delivered, the gap recorded.
    receiver.set_default(Reply::Status(200));
    let child = spawn_walhook(&["run", "--resync", "-c", config], &dir.join("run3.log"));
    eventually(WAIT, "walhook to stream on a new slot", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    db.execute("INSERT INTO g VALUES (6), (7)").await;
    eventually(
        WAIT,
        "rows 1-3 (stored) and 6-7 (new) delivered",
        || async {
            let ids = ids_delivered(&receiver);
            [1, 2, 3, 6, 7]
                .iter()
                .all(|i| ids.contains(i))
                .then_some(())
        },
    )
    .await;
    let new_slot = db
        .query_one_string(&format!(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .await;
    assert_ne!(new_slot, "lost", "the slot was replaced");
    let status_out = run_cli(&["status", "-c", config]);
    let status_text = String::from_utf8_lossy(&status_out.stdout).into_owned();
    stop(child, "run 3");
    let out = read(&dir.join("run3.log"));
    assert!(
        out.contains("audit=\"resync\"") && out.contains("replaced the replication slot"),
        "an audit line for the resync: {out}"
    );
    let resyncs = StoreView::open(&store).unwrap().resyncs().unwrap();
    assert_eq!(resyncs.len(), 1, "{resyncs:?}");
    assert_eq!(resyncs[0].old_durable_lsn, Some(durable));
    assert!(
        resyncs[0].reason.contains("wal_status = lost"),
        "{resyncs:?}"
    );
    assert!(
        status_text.contains("resync at")
            && status_text.contains(&format!(
                "changes after {} up to {} were not captured",
                lsn_text(durable),
                lsn_text(resyncs[0].new_start_lsn)
            )),
        "status shows the gap: {status_text}"
    );
    let ids = ids_delivered(&receiver);
    assert!(
        !ids.contains(&4) && !ids.contains(&5),
        "rows 4 and 5 were committed in the gap and cannot be delivered: {ids:?}"
    );

    // 5. The next start resumes the new slot without any flag.
    let child = spawn_run(Path::new(config), &dir.join("run4.log"));
    eventually(WAIT, "walhook to stream again", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    db.execute("INSERT INTO g VALUES (8)").await;
    eventually(WAIT, "row 8 delivered", || async {
        ids_delivered(&receiver).contains(&8).then_some(())
    })
    .await;
    stop(child, "run 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_lag_stays_bounded_while_200_mb_go_to_an_uncaptured_table() {
    const WRITE: u64 = 200 * 1024 * 1024;
    const MAX_LAG: i64 = 16 * 1024 * 1024;
    const PACE: Duration = Duration::from_millis(50);
    // A cluster of our own: 200 MB of WAL would disturb the shared one.
    let db = TestDb::on(start_cluster(ClusterOptions::default()).await).await;
    db.execute("CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int, pad text)")
        .await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let cfg = ConfigText::new(&db.url(), &name, &scratch_dir(&name))
        .table("name = \"quiet\"")
        .subscription("hook", &receiver.url(), "")
        .parse();
    let wh = InProcess::start(cfg).await;

    // Sample the slot's lag every 100 ms while the other table is written.
    let sampler = db.connect().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let slot = name.clone();
    let samples = tokio::spawn(async move {
        let mut lags = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let row = sampler
                .query_one(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap();
            lags.push(row.get::<_, i64>(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lags
    });
    let start = db.wal_lsn().await;
    let started = Instant::now();
    let mut statements = 0;
    while db.wal_lsn().await - start < WRITE {
        // About 1 MB of WAL per transaction, paced at about 20 MB/s: a busy
        // database (the matrix writes 200 MB in 60 s), not a bulk load.
        let next = tokio::time::Instant::now() + PACE;
        db.execute(
            "INSERT INTO busy SELECT i, repeat(md5(i::text), 28) FROM generate_series(1, 1000) i",
        )
        .await;
        statements += 1;
        tokio::time::sleep_until(next).await;
    }
    let written = db.wal_lsn().await - start;
    let elapsed = started.elapsed();
    // Quiesce: the lag comes back down once the writes stop.
    eventually(WAIT, "the slot to catch up after the writes", || async {
        let lsn = db.slot_confirmed_flush_lsn(&name).await?;
        (lsn >= start + written).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lags = samples.await.unwrap();
    wh.stop().await.unwrap();
    let max = lags.iter().copied().max().unwrap_or(0);
    let mut sorted = lags.clone();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "row 19: {:.0} MB of WAL in {statements} transactions over {:.1} s; slot lag max {:.2} MB, median {:.2} MB over {} samples",
        written as f64 / 1e6,
        elapsed.as_secs_f64(),
        max as f64 / 1e6,
        median as f64 / 1e6,
        lags.len()
    );
    assert!(
        lags.len() >= 10,
        "the lag was sampled while writing ({} samples)",
        lags.len()
    );
    assert!(
        max < MAX_LAG,
        "slot lag reached {max} bytes while only an uncaptured table was written; it must stay below {MAX_LAG}"
    );
    assert!(
        receiver.requests().is_empty(),
        "no events for an uncaptured table"
    );
}
