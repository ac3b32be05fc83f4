//! The admin server over real HTTP: status codes, token auth, the allow
//! list, JSON shapes, metrics moving with events, the delivery history and
//! its pruning, pause/resume/replay surviving a restart, readiness through
//! a PostgreSQL outage, JSON logs with audit lines, and the status page in
//! a real headless browser.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::db_name;
use crate::runner::{
    eventually, scratch_dir, spawn_run, terminate, wait_exit, ConfigText, InProcess,
};
use crate::support::db::{start_cluster, TestDb};
use crate::support::oracle::{settle, Ledger};
use crate::support::receiver::{Reply, TestReceiver};
use walhook::demo::cluster::{ClusterOptions, StopMode};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "admin-token-7f3a9c";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A response, read whole.
struct Answer {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: body is not JSON ({e}): {}",
                self.status, self.body
            )
        })
    }

    /// Asserts the status and that the body is a JSON error with a message.
    fn assert_error(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "{what}: content-type {}",
            self.content_type
        );
        let message = self.json()["error"].as_str().map(str::to_owned);
        assert!(
            message.as_deref().is_some_and(|m| !m.is_empty()),
            "{what}: no error message in {}",
            self.body
        );
    }
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Answer {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status().as_u16();
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    let body = response.text().await.unwrap();
    Answer {
        status,
        content_type,
        www_authenticate,
        body,
    }
}

async fn get(wh: &InProcess, path: &str) -> Answer {
    call("GET", &wh.admin_url(path), Some(TOKEN), None).await
}

async fn post(wh: &InProcess, path: &str, body: Option<&str>) -> Answer {
    call("POST", &wh.admin_url(path), Some(TOKEN), body).await
}

/// The value of one sample line of a Prometheus text exposition, e.g.
/// `walhook_deliveries_total{subscription="hook",outcome="delivered"}`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn hook_extra() -> String {
    format!(
        "auth = {{ type = \"hmac\", secret = \"{SECRET}\" }}\nretry = {{ max_attempts = 3, initial = \"50ms\", max = \"100ms\" }}"
    )
}

fn config(db: &TestDb, receiver: &TestReceiver, store: &Path) -> ConfigText {
    ConfigText::new(&db.url(), &db_name(db), store)
        .admin(&format!("token = \"{TOKEN}\""))
        .admin("allow = [\"127.0.0.0/8\", \"::1\"]")
        .table("name = \"t\"")
        .subscription("hook", &receiver.url(), &hook_extra())
        .subscription("off", &receiver.url(), "enabled = false")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_answer_with_status_codes_token_auth_and_json_errors() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await;
    let receiver = TestReceiver::start().await;
    let store = scratch_dir(&db_name(&db));
    let wh = InProcess::start(config(&db, &receiver, &store).parse()).await;

    // Health and readiness need no token.
    let health = call("GET", &wh.admin_url("/healthz"), None, None).await;
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    let ready = eventually(WAIT, "/readyz to answer 200", || async {
        let ready = call("GET", &wh.admin_url("/readyz"), None, None).await;
        (ready.status == 200).then_some(ready)
    })
    .await;
    assert_eq!(ready.json(), json!({"ready": true}));

    // Every other route needs the bearer token: 401 with a JSON error, counted.
    for path in ["/metrics", "/", "/api/subscriptions", "/api/deliveries"] {
        let missing = call("GET", &wh.admin_url(path), None, None).await;
        missing.assert_error(401, path);
        assert_eq!(
            missing.www_authenticate.as_deref(),
            Some("Bearer realm=\"walhook\""),
            "{path}"
        );
    }
    let wrong = call(
        "POST",
        &wh.admin_url("/api/subscriptions/hook/pause"),
        Some("nope"),
        None,
    )
    .await;
    wrong.assert_error(401, "pause with a wrong token");
    let metrics = get(&wh, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "{}",
        metrics.content_type
    );
    assert_eq!(
        metric(&metrics.body, "walhook_admin_unauthorized_total"),
        Some(5.0),
        "four missing and one wrong token are counted:\n{}",
        metrics.body
    );

    // JSON shapes.
    let subs = get(&wh, "/api/subscriptions").await;
    assert_eq!(subs.status, 200, "{}", subs.body);
    let list = subs.json()["subscriptions"].as_array().unwrap().clone();
    let names: Vec<&str> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hook", "off"]);
    assert_eq!(list[0]["state"], "active");
    assert_eq!(list[1]["state"], "off", "enabled = false in the config");
    for key in [
        "enabled",
        "paused",
        "endpoint",
        "format",
        "ordering",
        "backlog",
        "delivered",
        "dead_letters",
        "attempts",
        "last_error",
        "last_hour",
    ] {
        assert!(
            list[0].get(key).is_some(),
            "subscription has no {key}: {}",
            list[0]
        );
    }
    assert_eq!(
        list[0]["endpoint"],
        receiver.url(),
        "origin only, never the path"
    );
    for key in [
        "attempts",
        "delivered",
        "success_rate",
        "p50_latency_ms",
        "p99_latency_ms",
    ] {
        assert!(
            list[0]["last_hour"].get(key).is_some(),
            "last_hour has no {key}"
        );
    }
    let one = get(&wh, "/api/subscriptions/hook").await;
    assert_eq!(
        (one.status, one.json()["name"].clone()),
        (200, json!("hook"))
    );

    // Bad requests: JSON errors, never a panic.
    get(&wh, "/api/subscriptions/nope")
        .await
        .assert_error(404, "unknown subscription");
    post(&wh, "/api/subscriptions/nope/pause", None)
        .await
        .assert_error(404, "pause unknown");
    get(&wh, "/api/deliveries?status=bogus")
        .await
        .assert_error(400, "bad status");
    get(&wh, "/api/deliveries?limit=0")
        .await
        .assert_error(400, "limit 0");
    get(&wh, "/api/deliveries?limit=x")
        .await
        .assert_error(400, "limit not a number");
    get(&wh, "/api/deliveries?colour=red")
        .await
        .assert_error(400, "unknown parameter");
    get(&wh, "/api/subscriptions/hook/pause")
        .await
        .assert_error(405, "GET on a POST route");
    get(&wh, "/no/such/route")
        .await
        .assert_error(404, "unknown route");
    let replay = "/api/subscriptions/hook/replay";
    post(&wh, replay, None)
        .await
        .assert_error(400, "replay without a body");
    post(&wh, replay, Some("{"))
        .await
        .assert_error(400, "replay with broken JSON");
    post(&wh, replay, Some("{}"))
        .await
        .assert_error(400, "replay with neither since nor dead");
    post(&wh, replay, Some(r#"{"since": "2h", "dead": true}"#))
        .await
        .assert_error(400, "replay with both");
    post(&wh, replay, Some(r#"{"since": "soon"}"#))
        .await
        .assert_error(400, "replay with a bad duration");
    post(&wh, replay, Some(r#"{"sinse": "2h"}"#))
        .await
        .assert_error(400, "replay with an unknown key");

    // The test delivery goes out with the subscription's signing.
    let test = post(&wh, "/api/subscriptions/hook/test", None).await;
    assert_eq!(test.status, 200, "{}", test.body);
    let result = test.json();
    assert_eq!(result["delivered"], true, "{result}");
    assert_eq!(result["status"], 200);
    assert!(result["duration_ms"].is_u64());
    let sent = receiver.wait_for(1, WAIT).await;
    assert_eq!(sent[0].json()["op"], "test");
    assert!(sent[0]
        .header("webhook-signature")
        .is_some_and(|s| s.starts_with("v1,")));

    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_delivery_history_move_when_events_flow() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await;
    let receiver = TestReceiver::start().await;
    // The first attempt fails, every later one succeeds.
    receiver.set_script(vec![Reply::Status(500)]);
    let store = scratch_dir(&db_name(&db));
    let wh = InProcess::start(config(&db, &receiver, &store).parse()).await;

    let before = get(&wh, "/metrics").await.body;
    assert_eq!(
        metric(&before, r#"walhook_events_stored_total"#),
        Some(0.0),
        "{before}"
    );
    db.execute("INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 5) i")
        .await;
    receiver.wait_for(6, WAIT).await;

    // Delivered attempts reach the history with the next cursor flush.
    let history = eventually(WAIT, "6 attempts in the delivery history", || async {
        let answer = get(&wh, "/api/deliveries?subscription=hook").await;
        let rows = answer.json()["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (rows.len() == 6).then_some(rows)
    })
    .await;
    for row in &history {
        for key in [
            "id",
            "subscription",
            "event_id",
            "op",
            "form",
            "attempt",
            "outcome",
            "status",
            "duration_ms",
            "error",
            "at",
            "at_ms",
        ] {
            assert!(row.get(key).is_some(), "attempt has no {key}: {row}");
        }
        assert_eq!(row["op"], "data_create");
        assert_eq!(row["form"], "t");
    }
    let failed = get(
        &wh,
        "/api/deliveries?subscription=hook&status=failed&limit=50",
    )
    .await;
    let failed = failed.json()["deliveries"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["status"], 500);
    assert_eq!(failed[0]["outcome"], "retry");
    assert_eq!(failed[0]["attempt"], 1);
    assert_eq!(failed[0]["error"], "HTTP 500 Internal Server Error");
    let retried = history
        .iter()
        .find(|r| r["event_id"] == failed[0]["event_id"] && r["outcome"] == "delivered")
        .expect("the failed event was delivered on its second attempt");
    assert_eq!(retried["attempt"], 2);
    assert!(retried["latency_ms"].is_i64(), "{retried}");
    let limited = get(&wh, "/api/deliveries?limit=2").await.json();
    assert_eq!(limited["deliveries"].as_array().unwrap().len(), 2);

    let text = eventually(WAIT, "metrics with the slot sampled", || async {
        let text = get(&wh, "/metrics").await.body;
        metric(&text, "walhook_confirmed_flush_lsn")
            .is_some_and(|lsn| lsn > 0.0)
            .then_some(text)
    })
    .await;
    let value = |series: &str| {
        metric(&text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    };
    assert_eq!(
        value(r#"walhook_events_captured_total{form="t",op="data_create"}"#),
        5.0
    );
    assert_eq!(value("walhook_events_stored_total"), 5.0);
    assert_eq!(
        value(r#"walhook_deliveries_total{subscription="hook",outcome="delivered"}"#),
        5.0
    );
    assert_eq!(
        value(r#"walhook_deliveries_total{subscription="hook",outcome="retry"}"#),
        1.0
    );
    assert_eq!(
        value(r#"walhook_deliveries_total{subscription="hook",outcome="dead_letter"}"#),
        0.0
    );
    assert_eq!(value(r#"walhook_retries_total{subscription="hook"}"#), 1.0);
    assert_eq!(
        value(r#"walhook_dead_letters_total{subscription="hook"}"#),
        0.0
    );
    assert_eq!(
        value(r#"walhook_delivery_latency_seconds_count{subscription="hook"}"#),
        5.0
    );
    assert_eq!(
        value(r#"walhook_attempt_duration_seconds_count{subscription="hook"}"#),
        6.0
    );
    assert_eq!(value(r#"walhook_backlog_events{subscription="hook"}"#), 0.0);
    assert!(value("walhook_store_events") >= 5.0);
    assert!(value("walhook_store_bytes") > 0.0);
    assert!(value("walhook_durable_lsn") > 0.0);
    assert_eq!(value("walhook_replication_streaming"), 1.0);
    assert_eq!(value("walhook_replication_reconnects_total"), 0.0);
    assert!(value("walhook_replication_lag_bytes") >= 0.0);
    assert!(value("walhook_replication_lag_seconds") >= 0.0);
    assert!(
        text.contains("# TYPE walhook_delivery_latency_seconds histogram"),
        "{text}"
    );

    // The one-hour window in the API agrees: 5 of 6 attempts delivered.
    let hook = get(&wh, "/api/subscriptions/hook").await.json();
    assert_eq!(hook["delivered"], 5);
    assert_eq!(hook["last_hour"]["attempts"], 6);
    assert_eq!(hook["last_hour"]["delivered"], 5);
    assert!(hook["last_hour"]["p50_latency_ms"].is_u64(), "{hook}");

    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_survives_a_restart_and_resume_and_replay_redeliver_with_the_same_ids() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await;
    let receiver = TestReceiver::start().await;
    let store = scratch_dir(&db_name(&db));
    let cfg = config(&db, &receiver, &store);
    let wh = InProcess::start(cfg.parse()).await;

    let paused = post(&wh, "/api/subscriptions/hook/pause", None).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["state"], "paused");
    db.execute("INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 3) i")
        .await;
    eventually(WAIT, "a backlog of 3 while paused", || async {
        let hook = get(&wh, "/api/subscriptions/hook").await.json();
        (hook["backlog"] == 3).then_some(())
    })
    .await;
    assert!(
        receiver.requests().is_empty(),
        "a paused subscription sent something"
    );
    wh.stop().await.unwrap();

    // Still paused after a restart.
    let wh = InProcess::start(cfg.parse()).await;
    let hook = get(&wh, "/api/subscriptions/hook").await.json();
    assert_eq!(hook["state"], "paused", "{hook}");
    assert_eq!(hook["backlog"], 3);
    assert!(
        receiver.requests().is_empty(),
        "a paused subscription sent something after a restart"
    );

    let resumed = post(&wh, "/api/subscriptions/hook/resume", None).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.json()["state"], "active");
    let first: Vec<String> = receiver
        .events_after_wait(3, WAIT)
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    eventually(WAIT, "the backlog to drain", || async {
        let hook = get(&wh, "/api/subscriptions/hook").await.json();
        (hook["backlog"] == 0).then_some(())
    })
    .await;

    // Replay what was stored in the last hour: the same ids again.
    let replay = post(
        &wh,
        "/api/subscriptions/hook/replay",
        Some(r#"{"since": "1h"}"#),
    )
    .await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    let replay = replay.json();
    assert_eq!(replay["requeued"], 3, "{replay}");
    assert_eq!(replay["summary"], "3 events re-queued");
    let all = receiver.events_after_wait(6, WAIT).await;
    let again: Vec<String> = all[3..]
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(again, first, "replayed with the same ids, in order");
    let dead = post(
        &wh,
        "/api/subscriptions/hook/replay",
        Some(r#"{"dead": true}"#),
    )
    .await;
    assert_eq!(dead.status, 200, "{}", dead.body);
    assert_eq!(dead.json()["requeued"], 0);
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_allow_closes_connections_from_outside_the_list() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let store = scratch_dir(&db_name(&db));
    let cfg = ConfigText::new(&db.url(), &db_name(&db), &store)
        .admin("allow = [\"10.0.0.0/8\"]")
        .table("name = \"t\"")
        .subscription("hook", &receiver.url(), "")
        .parse();
    let wh = InProcess::start(cfg).await;
    // 127.0.0.1 is not in 10.0.0.0/8: the connection is closed before any answer.
    let refused = reqwest::Client::new()
        .get(wh.admin_url("/healthz"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client outside admin.allow got an answer: {refused:?}"
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_why_while_starting_and_during_a_postgres_outage() {
    // Starting: the database does not answer yet (a closed port).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = scratch_dir("readyz");
    let cfg = ConfigText::new(
        &format!("postgres://postgres:x@127.0.0.1:{port}/postgres"),
        "readyz_slot",
        &dir.join("store"),
    )
    .source("max_connect_attempts = 1000")
    .table("name = \"t\"")
    .parse();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let hooks = walhook::app::Hooks {
        admin_listener: Some(listener),
        ..walhook::app::Hooks::default()
    };
    let t = token.clone();
    let run = tokio::spawn(async move { walhook::app::run(cfg, t, hooks).await });
    let health = call("GET", &format!("http://{admin}/healthz"), None, None).await;
    assert_eq!(health.status, 200, "the process is up while it connects");
    let ready = call("GET", &format!("http://{admin}/readyz"), None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["ready"], false);
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("store is not open"),
        "{}",
        ready.body
    );
    call(
        "GET",
        &format!("http://{admin}/api/subscriptions"),
        None,
        None,
    )
    .await
    .assert_error(503, "API before the store is open");
    token.cancel();
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Streaming, then the database goes away and comes back.
    let cluster = start_cluster(ClusterOptions::default()).await;
    let db = TestDb::on(cluster.clone()).await;
    Ledger::create(&db).await;
    let receiver = TestReceiver::start().await;
    let store = dir.join("store2");
    let cfg = ConfigText::new(&db.url(), &db_name(&db), &store)
        .source("max_connect_attempts = 1000")
        .table(Ledger::TABLE_TOML)
        .subscription("hook", &receiver.url(), "")
        .parse();
    let wh = InProcess::start(cfg).await;
    let readyz = || async { call("GET", &wh.admin_url("/readyz"), None, None).await };
    eventually(WAIT, "ready", || async {
        (readyz().await.status == 200).then_some(())
    })
    .await;
    Ledger::insert(&db, 1, 50).await;
    Ledger::bump(&db, 1, 25).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop(StopMode::Fast).unwrap())
        .await
        .unwrap();
    let down = eventually(WAIT, "503 while PostgreSQL is down", || async {
        let answer = readyz().await;
        (answer.status == 503).then_some(answer)
    })
    .await;
    let reason = down.json()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("replication is not streaming"), "{reason}");
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again().unwrap())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "ready again after the restart",
        || async { (readyz().await.status == 200).then_some(()) },
    )
    .await;
    let text = call("GET", &wh.admin_url("/metrics"), None, None)
        .await
        .body;
    assert!(
        metric(&text, "walhook_replication_reconnects_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // Nothing lost across the outage, per-key order kept (the shared oracle).
    let mut db = db;
    db.reconnect().await;
    Ledger::insert(&db, 51, 100).await;
    Ledger::delete(&db, 1, 10).await;
    let verdict = settle(&db, &receiver, Some(&store), "hook", WAIT).await;
    verdict.assert_ok(64);
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_history_is_pruned_after_history_retention() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let store = scratch_dir(&db_name(&db));
    let cfg = config(&db, &receiver, &store).store("history_retention = \"2s\"");
    let parse = || cfg.parse();
    let wh = InProcess::start(parse()).await;
    db.execute("INSERT INTO t SELECT generate_series(1, 3)")
        .await;
    receiver.wait_for(3, WAIT).await;
    let rows = eventually(WAIT, "3 attempts in the history", || async {
        let rows = get(&wh, "/api/deliveries").await.json()["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (rows.len() == 3).then_some(rows)
    })
    .await;
    wh.stop().await.unwrap();
    let newest = rows
        .iter()
        .map(|r| r["at_ms"].as_i64().unwrap())
        .max()
        .unwrap();
    // Wait (by the clock, not by a fixed sleep) until every row is past retention.
    eventually(WAIT, "the rows to be older than 2 s", || async {
        (walhook::app::now_ms() > newest + 2_000).then_some(())
    })
    .await;
    // Housekeeping runs at start-up, in the background.
    let wh = InProcess::start(parse()).await;
    eventually(WAIT, "the old attempts to be pruned", || async {
        let rows = get(&wh, "/api/deliveries").await.json()["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        rows.is_empty().then_some(())
    })
    .await;
    // New attempts are recorded as before.
    db.execute("INSERT INTO t VALUES (4)").await;
    receiver.wait_for(4, WAIT).await;
    eventually(WAIT, "the new attempt in the history", || async {
        let rows = get(&wh, "/api/deliveries").await.json()["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (rows.len() == 1).then_some(())
    })
    .await;
    wh.stop().await.unwrap();
}

/// The first JSON log line whose fields satisfy `pred`.
fn find_line(log: &Path, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| pred(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_failed_attempts_and_audit_lines_without_values_or_secrets() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await;
    let receiver = TestReceiver::start().await;
    receiver.set_default(Reply::Status(500));
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let cfg = config(&db, &receiver, &dir.join("store")).section("[log]\nformat = \"json\"");
    let path = cfg.write(&dir);
    let log = dir.join("run.log");
    let mut child = spawn_run(&path, &log);
    let listening = eventually(WAIT, "the admin server's log line", || async {
        find_line(&log, |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin server listening"))
        })
    })
    .await;
    let admin = listening["addr"].as_str().unwrap().to_owned();
    eventually(WAIT, "walhook to start streaming", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    let row_value = "row-value-do-not-log-4711";
    db.execute(&format!("INSERT INTO t VALUES (1, '{row_value}')"))
        .await;
    let failed = eventually(WAIT, "a failed-attempt log line", || async {
        find_line(&log, |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("delivery attempt failed"))
        })
    })
    .await;
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["subscription"], "hook");
    assert_eq!(failed["status"], 500);
    assert_eq!(failed["error"], "HTTP 500 Internal Server Error");
    assert!(
        failed["event_id"]
            .as_str()
            .is_some_and(|id| id.ends_with("-0000")),
        "{failed}"
    );

    let paused = call(
        "POST",
        &format!("http://{admin}/api/subscriptions/hook/pause"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let audit = eventually(WAIT, "the audit line of the pause", || async {
        find_line(&log, |v| v["target"] == "walhook::audit")
    })
    .await;
    assert_eq!(audit["action"], "pause");
    assert_eq!(audit["subscription"], "hook");
    assert_eq!(audit["status"], 200);
    assert!(
        audit["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{audit}"
    );

    terminate(&child);
    let status = wait_exit(&mut child, WAIT);
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    let text = std::fs::read_to_string(&log).unwrap();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "log line {} is not JSON: {line}",
            i + 1
        );
    }
    let password = db.url();
    let password = password
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    for secret in [
        row_value,
        TOKEN,
        SECRET,
        SECRET.trim_start_matches("whsec_"),
        &password,
    ] {
        assert!(!text.contains(secret), "the log contains {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "/usr/bin/chromium is missing: install it with `apt-get install -y chromium` \
         (.ci/run does this); the status page test needs a real browser"
    );
    let db = TestDb::new().await;
    db.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let store = scratch_dir(&db_name(&db));
    // No token: a browser cannot send a bearer header by itself.
    let cfg = ConfigText::new(&db.url(), &db_name(&db), &store)
        .table("name = \"t\"")
        .subscription("crm", &receiver.url(), "")
        .subscription("erp", &format!("{}/erp", receiver.url()), "")
        .subscription("archive", &receiver.url(), "enabled = false")
        .parse();
    let wh = InProcess::start(cfg).await;
    db.execute("INSERT INTO t SELECT generate_series(1, 4)")
        .await;
    receiver.wait_for(8, WAIT).await;

    let url = wh.admin_url("/");
    let profile = scratch_dir("chromium-profile");
    let browse = |extra: Vec<String>| {
        let url = url.clone();
        let profile = profile.clone();
        async move {
            let output = tokio::process::Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1200,800",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .args(extra)
                .arg(&url)
                .kill_on_drop(true)
                .output();
            tokio::time::timeout(Duration::from_secs(120), output)
                .await
                .expect("chromium did not finish within 120 s")
                .expect("cannot run chromium")
        }
    };
    let dom = browse(vec!["--dump-dom".into()]).await;
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains("<table id=\"subscriptions\">"),
        "no subscriptions table in:\n{dom}"
    );
    let rows: BTreeSet<&str> = dom
        .split("<tr data-subscription=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(
        rows,
        BTreeSet::from(["crm", "erp", "archive"]),
        "rows of the table:\n{dom}"
    );
    assert!(dom.contains("id=\"replication-state\">streaming<"), "{dom}");
    assert!(
        dom.contains("http-equiv=\"refresh\""),
        "the page refreshes itself"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let taken = browse(vec![format!("--screenshot={}", shot.display())]).await;
    assert!(
        taken.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a real screenshot"
    );
    println!("status page screenshot: {}", shot.display());
    wh.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
}
