//! Crashes and restarts: the real binary killed with SIGKILL, and a
//! PostgreSQL restart under a running walhook.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::pipeline::db_name;
use crate::runner::{
    eventually, scratch_dir, spawn_run, terminate, wait_exit, ConfigText, InProcess,
};
use crate::support::db::TestDb;
use crate::support::receiver::TestReceiver;
use walhook::demo::cluster::{ClusterOptions, StopMode, TempCluster};

const WAIT: Duration = Duration::from_secs(60);

fn ids_of(receiver: &TestReceiver) -> Vec<String> {
    receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_of_10k_rows_loses_nothing() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE k (id int PRIMARY KEY, v text)")
        .await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let cfg = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"k\"")
        .subscription("hook", &receiver.url(), "");
    let config_path = cfg.write(&dir);

    let mut child = spawn_run(&config_path, &dir.join("run1.log"));
    // Wait until walhook holds the slot before writing.
    eventually(WAIT, "walhook to start streaming", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    // One transaction of 3,000 rows (larger than a capture chunk, so part of
    // it is stored before its commit arrives), then 7 of 1,000.
    db.execute("INSERT INTO k SELECT i, md5(i::text) FROM generate_series(1, 3000) i")
        .await;
    for t in 3..10 {
        db.execute(&format!(
            "INSERT INTO k SELECT i, md5(i::text) FROM generate_series({}, {}) i",
            t * 1000 + 1,
            (t + 1) * 1000
        ))
        .await;
    }
    eventually(WAIT, "some deliveries before the kill", || async {
        (ids_of(&receiver).len() >= 1500).then_some(())
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = ids_of(&receiver).len();
    assert!(
        at_kill < 10_000,
        "the kill happened mid-delivery ({at_kill} delivered)"
    );

    let mut child = spawn_run(&config_path, &dir.join("run2.log"));
    eventually(WAIT, "all 10,000 ids after the restart", || async {
        let distinct: BTreeSet<String> = ids_of(&receiver).into_iter().collect();
        (distinct.len() == 10_000).then_some(())
    })
    .await;
    terminate(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");

    let ids = ids_of(&receiver);
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 10_000, "lost events");
    // First deliveries come in commit order: (commit LSN, index) ascending.
    let mut seen = BTreeSet::new();
    let firsts: Vec<(u64, u32)> = ids
        .iter()
        .filter(|id| seen.insert(*id))
        .map(|id| {
            let (lsn, index) = id.split_once('-').unwrap();
            (
                u64::from_str_radix(lsn, 16).unwrap(),
                index.parse().unwrap(),
            )
        })
        .collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(firsts, sorted, "first deliveries are in commit order");
    // Duplicates only for what was in flight at the crash: at most one
    // event per subscription plus the cursor advances not yet persisted.
    let dups = ids.len() - distinct.len();
    assert!(dups < 2_000, "{dups} duplicates");
    // Rows in Postgres match what was delivered.
    assert_eq!(db.query_one_i64("SELECT count(*) FROM k").await, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_nothing() {
    // A cluster of our own: restarting the shared one would disturb other tests.
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(ClusterOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url("postgres");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE p (id int PRIMARY KEY)")
        .await
        .unwrap();
    drop(client);
    let receiver = TestReceiver::start().await;
    let dir = scratch_dir("pgrestart");
    let cfg = ConfigText::new(&url, "restart_slot", &dir.join("store"))
        .source("max_connect_attempts = 100")
        .table("name = \"p\"")
        .subscription("hook", &receiver.url(), "")
        .parse();
    let wh = InProcess::start(cfg).await;

    let exec = |sql: String| {
        let url = url.clone();
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute(&sql).await.unwrap();
        }
    };
    exec("INSERT INTO p SELECT generate_series(1, 500)".into()).await;
    receiver.wait_for(1, WAIT).await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop(StopMode::Fast).unwrap();
        cluster.start_again().unwrap();
        cluster
    })
    .await
    .unwrap();
    exec("INSERT INTO p SELECT generate_series(501, 1000)".into()).await;
    eventually(WAIT, "all 1,000 ids after the Postgres restart", || async {
        let distinct: BTreeSet<String> = ids_of(&receiver).into_iter().collect();
        (distinct.len() == 1000).then_some(())
    })
    .await;
    wh.stop().await.unwrap();
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_killed_mid_transaction_with_a_column_change_loses_nothing() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE w (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let cfg = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"w\"")
        .subscription(
            "hook",
            &receiver.url(),
            "ops = [\"data_create\", \"form_update\"]",
        )
        .parse();
    let wh = InProcess::start(cfg).await;
    db.execute("INSERT INTO w VALUES (0)").await;
    receiver.wait_for(1, WAIT).await;
    // One transaction: a column change (a form_update event at index 0),
    // then 20,000 rows: far more than one capture chunk.
    db.execute(
        "BEGIN; ALTER TABLE w ADD COLUMN v int;
         INSERT INTO w SELECT i, i FROM generate_series(1, 20000) i; COMMIT;",
    )
    .await;
    // As soon as the first part of it is delivered (so the transaction is
    // still being received), cut the replication connection.
    receiver.wait_for(2, WAIT).await;
    let killed = db
        .query_one_i64(&format!(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = '{name}' AND active_pid IS NOT NULL"
        ))
        .await;
    assert_eq!(killed, 1, "the walsender was terminated");
    // 20,002 single requests from a debug build on a loaded 2-core machine can
    // take more than a minute; this bound only guards against a hang.
    eventually(
        WAIT * 3,
        "all 20,002 events after the reconnect",
        || async {
            let distinct: BTreeSet<String> = ids_of(&receiver).into_iter().collect();
            (distinct.len() >= 20_002).then_some(())
        },
    )
    .await;
    wh.stop().await.unwrap();
    let events: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let distinct: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(distinct.len(), 20_002, "no event lost, no id shifted");
    let form_updates: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["op"] == "form_update")
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        form_updates.len(),
        1,
        "the replayed form_update keeps its id"
    );
    assert!(form_updates.iter().all(|id| id.ends_with("-0000")));
    let rows: BTreeSet<i64> = events
        .iter()
        .filter(|e| e["op"] == "data_create")
        .map(|e| {
            let d = &e["data"];
            if d["id"].as_i64().unwrap() > 0 {
                assert_eq!(
                    d["v"], d["id"],
                    "rows after the change carry the new column"
                );
            }
            d["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(rows, (0..=20_000).collect());
}
