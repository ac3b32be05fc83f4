//! `ordering = "key"` (issue 3, point 6), end to end: Postgres → walhook
//! (in-process) → a real HTTP receiver that fails every request for one row
//! key while the others go through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walhook::delivery::lane_of;

use crate::pipeline::db_name;
use crate::runner::{eventually, scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;
use crate::support::receiver::{Reply, TestReceiver};

const WAIT: Duration = Duration::from_secs(60);
const LANES: usize = 4;
const ROWS: i64 = 100;
const FAILING: i64 = 42;
/// A create and three updates per row.
const EVENTS_PER_ROW: usize = 4;

/// Table `t` and one subscription "hook" with key lanes and quick retries.
fn config(db: &TestDb, receiver: &TestReceiver) -> ConfigText {
    let name = db_name(db);
    ConfigText::new(&db.url(), &name, &scratch_dir(&name))
        .table("name = \"t\"")
        .subscription(
            "hook",
            &receiver.url(),
            &format!(
                "ordering = \"key\"\nlanes = {LANES}\n\
                 retry = {{ max_attempts = 1000, initial = \"50ms\", max = \"200ms\" }}"
            ),
        )
}

/// Fails every request for row `FAILING` with 500 while `failing` is set.
fn fail_key_while(receiver: &TestReceiver, failing: &Arc<AtomicBool>) {
    let failing = failing.clone();
    receiver.set_rule(move |body| {
        let event: serde_json::Value = serde_json::from_slice(body).ok()?;
        (failing.load(Ordering::SeqCst) && event["data"]["id"].as_i64() == Some(FAILING))
            .then_some(Reply::Status(500))
    });
}

/// Per row id, the `(event id, v)` of every request answered 2xx, in arrival order.
fn delivered(receiver: &TestReceiver) -> BTreeMap<i64, Vec<(String, i64)>> {
    let mut by_row: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    for request in receiver.requests() {
        if !(200..300).contains(&request.status) {
            continue;
        }
        let event = request.json();
        let row = event["data"]["id"].as_i64().unwrap();
        let id = event["id"].as_str().unwrap().to_owned();
        let v = event["data"]["v"].as_i64().unwrap();
        by_row.entry(row).or_default().push((id, v));
    }
    by_row
}

fn lane(row: i64) -> usize {
    lane_of("t", Some(&row.to_string()), LANES)
}

/// Every row's events arrived in commit order (ids and `v` increasing); with
/// `dupes_allowed`, a redelivered tail may start over (after a restart).
fn assert_per_key_order(by_row: &BTreeMap<i64, Vec<(String, i64)>>, dupes_allowed: bool) {
    for (row, events) in by_row {
        for pair in events.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if dupes_allowed && b.0 <= a.0 {
                continue;
            }
            assert!(
                a.0 < b.0 && a.1 < b.1,
                "row {row}: events out of commit order: {events:?}"
            );
        }
    }
}

async fn write_rows(db: &TestDb) {
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        .await;
}

async fn change_rows(db: &TestDb) {
    db.execute(&format!(
        "INSERT INTO t (id) SELECT generate_series(1, {ROWS})"
    ))
    .await;
    for _ in 0..3 {
        db.execute("UPDATE t SET v = v + 1").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_key_blocks_only_its_lane_and_per_key_order_holds() {
    let db = TestDb::new().await;
    write_rows(&db).await;
    let receiver = TestReceiver::start().await;
    let failing = Arc::new(AtomicBool::new(true));
    fail_key_while(&receiver, &failing);
    let wh = InProcess::start(config(&db, &receiver).parse()).await;
    change_rows(&db).await;

    // Every key outside row 42's lane is fully delivered while 42 fails.
    let other_lanes: Vec<i64> = (1..=ROWS).filter(|&r| lane(r) != lane(FAILING)).collect();
    assert!(other_lanes.len() > 40, "the hash spreads: {other_lanes:?}");
    eventually(WAIT, "keys in other lanes delivered", || {
        let by_row = delivered(&receiver);
        let done = other_lanes
            .iter()
            .all(|r| by_row.get(r).map_or(0, Vec::len) == EVENTS_PER_ROW);
        async move { done.then_some(()) }
    })
    .await;
    let by_row = delivered(&receiver);
    assert!(!by_row.contains_key(&FAILING), "42 has not been delivered");
    let attempts_42 = receiver
        .requests()
        .iter()
        .filter(|r| r.json()["data"]["id"].as_i64() == Some(FAILING))
        .count();
    assert!(attempts_42 >= 2, "42 was retried ({attempts_42} attempts)");
    assert!(
        receiver
            .requests()
            .iter()
            .filter(|r| r.json()["data"]["id"].as_i64() == Some(FAILING))
            .all(|r| r.json()["op"] == "data_create"),
        "42's lane retries its first event, nothing of 42 overtakes it"
    );
    assert_per_key_order(&by_row, false);

    // 42 recovers: its events arrive, in order, and so does the rest of its lane.
    failing.store(false, Ordering::SeqCst);
    eventually(WAIT, "every key delivered", || {
        let by_row = delivered(&receiver);
        let done = (1..=ROWS).all(|r| by_row.get(&r).map_or(0, Vec::len) == EVENTS_PER_ROW);
        async move { done.then_some(()) }
    })
    .await;
    let by_row = delivered(&receiver);
    assert_per_key_order(&by_row, false);
    let vs: Vec<i64> = by_row[&FAILING].iter().map(|(_, v)| *v).collect();
    assert_eq!(vs, [0, 1, 2, 3], "42's create and updates in commit order");
    let total: usize = by_row.values().map(Vec::len).sum();
    assert_eq!(total, ROWS as usize * EVENTS_PER_ROW, "no duplicates");
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_a_stuck_lane_loses_nothing() {
    let db = TestDb::new().await;
    write_rows(&db).await;
    let receiver = TestReceiver::start().await;
    let failing = Arc::new(AtomicBool::new(true));
    fail_key_while(&receiver, &failing);
    let cfg = config(&db, &receiver);
    let wh = InProcess::start(cfg.parse()).await;
    change_rows(&db).await;
    // Stop while 42 is stuck: the other lanes delivered events above the
    // watermark, which must stay at 42's create.
    eventually(WAIT, "most keys delivered", || {
        let n: usize = delivered(&receiver).values().map(Vec::len).sum();
        async move { (n >= 200).then_some(()) }
    })
    .await;
    wh.stop().await.unwrap();

    failing.store(false, Ordering::SeqCst);
    let wh = InProcess::start(cfg.parse()).await;
    eventually(WAIT, "every event delivered after the restart", || {
        let by_row = delivered(&receiver);
        let done = (1..=ROWS).all(|r| {
            by_row.get(&r).map_or(0, |events| {
                events
                    .iter()
                    .map(|(id, _)| id)
                    .collect::<BTreeSet<_>>()
                    .len()
            }) == EVENTS_PER_ROW
        });
        async move { done.then_some(()) }
    })
    .await;
    let by_row = delivered(&receiver);
    assert_per_key_order(&by_row, true);
    let vs: BTreeSet<i64> = by_row[&FAILING].iter().map(|(_, v)| *v).collect();
    assert_eq!(vs, BTreeSet::from([0, 1, 2, 3]));
    // The stored cursor had stayed below 42's create, so events other lanes
    // had delivered after it were sent again (at-least-once, same ids).
    let total: usize = by_row.values().map(Vec::len).sum();
    assert!(
        total > ROWS as usize * EVENTS_PER_ROW,
        "the tail above the watermark was re-sent ({total} deliveries)"
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gone_in_one_lane_disables_the_whole_subscription_at_the_watermark() {
    let db = TestDb::new().await;
    write_rows(&db).await;
    let receiver = TestReceiver::start().await;
    let gone = Arc::new(AtomicBool::new(true));
    let flag = gone.clone();
    receiver.set_rule(move |body| {
        let event: serde_json::Value = serde_json::from_slice(body).ok()?;
        (flag.load(Ordering::SeqCst) && event["data"]["id"].as_i64() == Some(FAILING))
            .then_some(Reply::Status(410))
    });
    let cfg = config(&db, &receiver);
    let wh = InProcess::start(cfg.parse()).await;
    db.execute(&format!(
        "INSERT INTO t (id) SELECT generate_series(1, {ROWS})"
    ))
    .await;
    let parsed = cfg.parse();
    let status = eventually(WAIT, "the subscription to be disabled", || async {
        let report = walhook::status::collect(&parsed).await.unwrap();
        let sub = report.subscriptions.into_iter().next().unwrap();
        (sub.state == "disabled").then_some(sub)
    })
    .await;
    let reason = status.last_error.unwrap();
    assert!(reason.contains("410"), "{reason}");
    // The stored cursor stays below 42's event: it and everything after it
    // that was not finished in order is still owed.
    assert!(
        status.backlog >= (ROWS - FAILING + 1) as u64,
        "backlog {} keeps 42 and the events after it",
        status.backlog
    );
    let sent = receiver.requests().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.requests().len(), sent, "all lanes stopped");
    wh.stop().await.unwrap();

    // Re-enabled by a restart: every row arrives (duplicates allowed).
    gone.store(false, Ordering::SeqCst);
    let wh = InProcess::start(cfg.parse()).await;
    eventually(WAIT, "every row delivered after re-enabling", || {
        let by_row = delivered(&receiver);
        let done = (1..=ROWS).all(|r| by_row.contains_key(&r));
        async move { done.then_some(()) }
    })
    .await;
    wh.stop().await.unwrap();
}

/// Matrix row 27, with the shared oracle's ledger: the receiver answers 400
/// to every request for key 42, whose row is updated three times. Key 42's
/// events go out one at a time (its updates wait behind the failing create),
/// the other keys are delivered meanwhile, each of 42's events becomes a dead
/// letter after `max_attempts` (which releases the key, as documented), and
/// `replay --dead` re-delivers them in order under the same `webhook-id`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_key_waits_in_its_lane_then_replay_redelivers_it_with_the_same_ids() {
    use crate::support::oracle::{self, Ledger};
    const ATTEMPTS: usize = 3;
    let db = TestDb::new().await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let poison = Arc::new(AtomicBool::new(true));
    let flag = poison.clone();
    receiver.set_rule(move |body| {
        let event: serde_json::Value = serde_json::from_slice(body).ok()?;
        (flag.load(Ordering::SeqCst) && event["data"]["k"].as_i64() == Some(FAILING))
            .then_some(Reply::Status(400))
    });
    let name = db_name(&db);
    let store = scratch_dir(&name);
    let cfg = ConfigText::new(&db.url(), &name, &store)
        .table(Ledger::TABLE_TOML)
        .subscription(
            "hook",
            &receiver.url(),
            &format!(
                "ordering = \"key\"\nlanes = {LANES}\n\
                 retry = {{ max_attempts = {ATTEMPTS}, initial = \"50ms\", max = \"100ms\" }}"
            ),
        );
    let wh = InProcess::start(cfg.parse()).await;
    Ledger::insert(&db, 1, ROWS).await;
    for _ in 0..3 {
        Ledger::bump(&db, 1, ROWS).await;
    }
    let committed = oracle::committed(&db).await.len();
    assert_eq!(committed, ROWS as usize * EVENTS_PER_ROW);

    // Everything is either delivered or, for 42, dead-lettered.
    let verdict = oracle::settle(&db, &receiver, Some(&store), "hook", WAIT).await;
    verdict.assert_ok(0);
    assert_eq!(verdict.dead_lettered, EVENTS_PER_ROW, "42's four events");
    assert_eq!(
        verdict.delivered,
        (ROWS as usize - 1) * EVENTS_PER_ROW,
        "every other key"
    );

    // 42's attempts in arrival order: each event tried ATTEMPTS times before
    // the next one of 42 went out at all.
    let attempts_42: Vec<(String, i64)> = receiver
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|e| e["data"]["k"].as_i64() == Some(FAILING))
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["data"]["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let seqs: Vec<i64> = attempts_42.iter().map(|(_, seq)| *seq).collect();
    let expected: Vec<i64> = (1..=EVENTS_PER_ROW as i64)
        .flat_map(|seq| std::iter::repeat_n(seq, ATTEMPTS))
        .collect();
    assert_eq!(seqs, expected, "one event of 42 at a time, in commit order");
    let mut dead_ids: Vec<String> = attempts_42.iter().map(|(id, _)| id.clone()).collect();
    dead_ids.dedup();
    let stored_dead: Vec<String> = walhook::store::inspect::StoreView::open(&store)
        .unwrap()
        .dead_letter_payloads("hook")
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(stored_dead, dead_ids, "the dead letters are 42's events");

    // The receiver is fixed; replay the dead letters into the running walhook.
    poison.store(false, Ordering::SeqCst);
    let before = receiver.requests().len();
    walhook::app::replay(&cfg.parse(), "hook", walhook::app::Replay::Dead, false)
        .await
        .unwrap();
    let replayed = eventually(WAIT, "42's events re-delivered", || {
        let got: Vec<(String, i64)> = receiver.requests()[before..]
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| {
                let e = r.json();
                assert_eq!(
                    r.header("webhook-id"),
                    e["id"].as_str(),
                    "webhook-id is the event id"
                );
                (
                    e["id"].as_str().unwrap().to_owned(),
                    e["data"]["seq"].as_i64().unwrap(),
                )
            })
            .collect();
        async move { (got.len() >= EVENTS_PER_ROW).then_some(got) }
    })
    .await;
    let replayed_ids: Vec<String> = replayed.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(replayed_ids, dead_ids, "same webhook-ids, same order");
    assert_eq!(
        replayed.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    wh.stop().await.unwrap();
    let verdict = oracle::check(&db, &receiver, Some(&store), "hook").await;
    verdict.assert_ok(0);
    assert_eq!(
        verdict.delivered,
        ROWS as usize * EVENTS_PER_ROW,
        "now every event arrived"
    );
}
