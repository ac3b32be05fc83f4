//! Batching, rate limits and auto-disable (issue 3, points 5, 7 and 11),
//! end to end: Postgres → walhook (in-process) → a real HTTP receiver.

use std::time::Duration;

use serde_json::Value;

use crate::pipeline::db_name;
use crate::runner::{eventually, scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;
use crate::support::receiver::{Reply, Request, TestReceiver};

const WAIT: Duration = Duration::from_secs(30);

/// A config with table `t` and one subscription "hook" with `extra` keys.
fn config(db: &TestDb, receiver: &TestReceiver, extra: &str) -> ConfigText {
    let name = db_name(db);
    ConfigText::new(&db.url(), &name, &scratch_dir(&name))
        .table("name = \"t\"")
        .subscription("hook", &receiver.url(), extra)
}

/// The events of a batch body, checking its shape and its webhook-id.
fn batch(req: &Request) -> Vec<Value> {
    let body = req.json();
    let events = body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("not a batch body: {body}"))
        .clone();
    assert_eq!(body.as_object().unwrap().len(), 1, "only `events`: {body}");
    assert_eq!(
        req.header("webhook-id"),
        events[0]["id"].as_str(),
        "webhook-id is the batch's first event id"
    );
    events
}

fn row_ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_max_events_and_commit_order() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &db,
        &receiver,
        "batch = { max_events = 100, max_wait = \"1s\" }",
    );
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO t SELECT generate_series(1, 250)")
        .await;
    let reqs = receiver.wait_for(3, WAIT).await;
    let batches: Vec<Vec<Value>> = reqs.iter().map(batch).collect();
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50]);
    let all: Vec<Value> = batches.concat();
    assert_eq!(row_ids(&all), (1..=250).collect::<Vec<_>>());
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in commit order");

    // A later transaction in another batch, after the first ones.
    db.execute("INSERT INTO t VALUES (251); INSERT INTO t VALUES (252)")
        .await;
    let reqs = receiver.wait_for(4, WAIT).await;
    assert_eq!(row_ids(&batch(&reqs[3])), [251, 252]);
    assert!(reqs[3].header("webhook-id") > reqs[2].header("webhook-id"));
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_never_exceed_max_bytes_and_a_larger_event_goes_alone() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
        .await;
    let receiver = TestReceiver::start().await;
    let max_bytes = 4000;
    let cfg = config(
        &db,
        &receiver,
        &format!("batch = {{ max_events = 100, max_bytes = {max_bytes}, max_wait = \"500ms\" }}"),
    );
    let wh = InProcess::start(cfg.parse()).await;
    db.execute(
        "INSERT INTO t SELECT i, repeat('x', CASE WHEN i = 15 THEN 9000 ELSE 500 END)
         FROM generate_series(1, 30) i",
    )
    .await;
    let mut all = Vec::new();
    let mut reqs = Vec::new();
    eventually(WAIT, "all 30 rows", || {
        reqs = receiver.requests();
        let n: usize = reqs.iter().map(|r| batch(r).len()).sum();
        std::future::ready((n >= 30).then_some(()))
    })
    .await;
    for req in &reqs {
        let events = batch(req);
        if row_ids(&events).contains(&15) {
            assert_eq!(row_ids(&events), [15], "the oversized event goes alone");
            assert!(req.body.len() > max_bytes);
        } else {
            assert!(req.body.len() <= max_bytes, "{} bytes", req.body.len());
        }
        all.extend(events);
    }
    assert_eq!(row_ids(&all), (1..=30).collect::<Vec<_>>());
    assert!(
        reqs.len() < 15,
        "events are batched up to max_bytes: {} requests",
        reqs.len()
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_is_retried_as_a_unit_then_delivered() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    receiver.set_script(vec![Reply::Status(500), Reply::Status(503)]);
    let cfg = config(
        &db,
        &receiver,
        "batch = { max_events = 10, max_wait = \"1s\" }\n\
         retry = { max_attempts = 5, initial = \"50ms\", max = \"100ms\" }",
    );
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO t SELECT generate_series(1, 10)")
        .await;
    let reqs = receiver.wait_for(3, WAIT).await;
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    for req in &reqs[1..] {
        assert_eq!(req.body, reqs[0].body, "the same batch on every attempt");
        assert_eq!(req.header("webhook-id"), reqs[0].header("webhook-id"));
    }
    assert_eq!(row_ids(&batch(&reqs[0])), (1..=10).collect::<Vec<_>>());
    // Delivered: the cursor moved past the whole batch.
    db.execute("INSERT INTO t VALUES (11)").await;
    let reqs = receiver.wait_for(4, WAIT).await;
    assert_eq!(row_ids(&batch(&reqs[3])), [11]);
    assert_eq!(reqs.len(), 4);
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_requests() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, "rate_limit = \"600/min\"");
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO t SELECT generate_series(1, 8)")
        .await;
    let reqs = receiver.wait_for(8, WAIT).await;
    // 600/min = one request every 100 ms: request k is sent no earlier than
    // k × 100 ms after the first. Times are taken on arrival, so each one may
    // lag its sending by scheduling delay (the first one too): allow 40 ms.
    for (k, req) in reqs.iter().enumerate().skip(1) {
        let since_first = req.at.duration_since(reqs[0].at);
        let floor = Duration::from_millis(100 * k as u64 - 40);
        assert!(
            since_first >= floor,
            "request {k} arrived {since_first:?} after the first (at least {floor:?} expected)"
        );
    }
    let ids: Vec<i64> = reqs
        .iter()
        .map(|r| r.json()["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_after_pauses_the_subscription_until_a_restart() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    receiver.set_default(Reply::Status(500));
    let cfg = config(
        &db,
        &receiver,
        "disable_after = 3\nretry = { max_attempts = 100, initial = \"50ms\", max = \"50ms\" }",
    );
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)")
        .await;
    receiver.wait_for(3, WAIT).await;
    let parsed = cfg.parse();
    let status = eventually(WAIT, "the subscription to be disabled", || async {
        let report = walhook::status::collect(&parsed).await.unwrap();
        let sub = report.subscriptions.into_iter().next().unwrap();
        (sub.state == "disabled").then_some(sub)
    })
    .await;
    let reason = status.last_error.unwrap();
    assert!(
        reason.contains("disabled after 3 consecutive failed attempts"),
        "{reason}"
    );
    assert!(reason.contains("HTTP 500"), "{reason}");
    assert_eq!(status.backlog, 2, "the events stay in the store");
    // Nothing more is sent while disabled.
    let more = tokio::time::timeout(
        Duration::from_millis(800),
        receiver.wait_for(4, Duration::from_secs(60)),
    )
    .await;
    assert!(
        more.is_err(),
        "requests after the subscription was disabled"
    );
    assert_eq!(receiver.requests().len(), 3);
    wh.stop().await.unwrap();

    // A restart with the subscription enabled re-enables it at its cursor.
    receiver.set_default(Reply::Status(200));
    let wh = InProcess::start(cfg.parse()).await;
    let reqs = receiver.wait_for(5, WAIT).await;
    let delivered: Vec<i64> = reqs[3..]
        .iter()
        .map(|r| r.json()["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(delivered, [1, 2]);
    let report = walhook::status::collect(&parsed).await.unwrap();
    assert_eq!(report.subscriptions[0].state, "active");
    wh.stop().await.unwrap();
}
