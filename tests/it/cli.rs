//! The binary's checks and exit codes on good and bad input.

use std::process::Output;

use crate::pipeline::db_name;
use crate::runner::{run_cli, scratch_dir, ConfigText};
use crate::support::db::TestDb;
use walhook::demo::cluster::{ClusterOptions, TempCluster};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check(config: &std::path::Path) -> Output {
    run_cli(&["check", "-c", config.to_str().unwrap()])
}

fn write(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("bad.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn bad_configs_exit_2_and_name_the_problem() {
    let dir = scratch_dir("badcfg");
    let ok_head = "[source]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\n[[tables]]\nname = \"t\"\n";

    let out = check(&write(&dir, "[source\nurl = 1"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("bad.toml:1:"),
        "file:line:col: {}",
        text(&out)
    );

    let out = check(&write(&dir, &format!("{ok_head}colour = \"red\"\n")));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("colour"), "{}", text(&out));

    let out = check(&write(
        &dir,
        &format!("{ok_head}[[subscriptions]]\nname = \"x\"\nurl = \"http://h/\"\ntimeout = \"ten seconds\"\n"),
    ));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("timeout"), "{}", text(&out));

    let out = check(&write(
        &dir,
        &format!("{ok_head}[[subscriptions]]\nname = \"x\"\nurl = \"not a url\"\n"),
    ));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("subscriptions[0].url"),
        "{}",
        text(&out)
    );

    let out = check(&write(
        &dir,
        "[source]\nurl = \"postgres://u:${WALHOOK_TEST_UNSET_VAR}@127.0.0.1:1/db\"\n[[tables]]\nname = \"t\"\n",
    ));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("WALHOOK_TEST_UNSET_VAR"),
        "{}",
        text(&out)
    );

    let out = run_cli(&["check", "-c", dir.join("missing.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_then_names_database_problems_with_exit_3() {
    let db = TestDb::new().await;
    db.execute(
        "CREATE TABLE good (id int PRIMARY KEY);
         CREATE TABLE nokey (x int);
         CREATE TABLE parted (id int, v text) PARTITION BY RANGE (id);
         ALTER TABLE parted REPLICA IDENTITY FULL;
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
         CREATE TABLE withmail (id int PRIMARY KEY, email text);
         CREATE ROLE plain_role LOGIN PASSWORD 'pw';",
    )
    .await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let good = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"good\"")
        .subscription("hook", "http://127.0.0.1:9/hook", "")
        .write(&dir);
    let out = check(&good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("wal_level is logical"), "{t}");
    assert!(t.contains("table public.good"), "{t}");
    assert!(t.contains("all checks passed"), "{t}");
    // check creates nothing
    assert_eq!(
        db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .await,
        0
    );

    let cases: Vec<(String, &str)> = vec![
        (
            ConfigText::new(&db.url(), &name, &dir.join("store"))
                .table("name = \"public.nope\"")
                .render(),
            "public.nope does not exist",
        ),
        (
            ConfigText::new(&db.url(), &name, &dir.join("store"))
                .table("name = \"nokey\"")
                .render(),
            "REPLICA IDENTITY FULL",
        ),
        (
            ConfigText::new(&db.url(), &name, &dir.join("store"))
                .table("name = \"parted\"\nkey = [\"id\"]")
                .render(),
            "partitions do not inherit REPLICA IDENTITY",
        ),
        (
            ConfigText::new(&db.url(), &name, &dir.join("store"))
                .table("name = \"withmail\"\nkey = [\"email\"]")
                .render(),
            "not part of the replica identity",
        ),
        (
            ConfigText::new(
                &url_with_user(&db.url(), "postgres", "wrongpw-s3cret"),
                &name,
                &dir.join("store"),
            )
            .table("name = \"good\"")
            .render(),
            "rejected the login",
        ),
        (
            ConfigText::new(
                &url_with_user(&db.url(), "plain_role", "pw"),
                &name,
                &dir.join("store"),
            )
            .table("name = \"good\"")
            .render(),
            "REPLICATION privilege",
        ),
        (
            ConfigText::new("postgres://u:p@127.0.0.1:1/db", &name, &dir.join("store"))
                .source("max_connect_attempts = 1")
                .table("name = \"good\"")
                .render(),
            "cannot connect",
        ),
    ];
    for (config, expected) in cases {
        let path = write(&dir, &config);
        let out = check(&path);
        let t = text(&out);
        assert_eq!(
            out.status.code(),
            Some(3),
            "expected exit 3 for {expected}: {t}"
        );
        assert!(t.contains(expected), "expected '{expected}' in: {t}");
        assert!(
            !t.contains("wrongpw-s3cret"),
            "the password never appears: {t}"
        );
    }
    // `run` refuses to start on the same failure and leaves nothing behind.
    let path = write(
        &dir,
        &ConfigText::new(&db.url(), &name, &dir.join("store"))
            .table("name = \"nokey\"")
            .render(),
    );
    let out = run_cli(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{name}'"
        ))
        .await,
        0,
        "no publication created for a failed start"
    );
    // The application's UPDATE of the key-less table still works.
    db.execute("INSERT INTO nokey VALUES (1); UPDATE nokey SET x = 2")
        .await;
}

fn url_with_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (_, host) = rest.split_once('@').unwrap();
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_refused_with_exit_3() {
    let cluster = tokio::task::spawn_blocking(|| {
        TempCluster::start(ClusterOptions {
            wal_level: "replica".into(),
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let dir = scratch_dir("replica");
    let path = ConfigText::new(&cluster.url("postgres"), "s", &dir.join("store"))
        .table("name = \"pg_class_copy\"")
        .write(&dir);
    let out = check(&path);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("wal_level must be logical (found: replica)"),
        "{t}"
    );
}

#[test]
fn demo_shows_events_and_cleans_up() {
    let out = run_cli(&["demo", "--events", "4"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("data_create"), "{t}");
    assert!(t.contains("signature ok"), "{t}");
    assert!(!t.contains("INVALID"), "{t}");
    // It removes its temporary directory (cluster and store).
    let removed = t
        .lines()
        .find_map(|l| l.split("removing ").nth(1))
        .expect("the demo says what it removes");
    assert!(
        !std::path::Path::new(removed.trim()).exists(),
        "{removed} still exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_and_status_work_beside_a_running_walhook() {
    use crate::runner::InProcess;
    use crate::support::receiver::{Reply, TestReceiver};

    let db = TestDb::new().await;
    db.execute("CREATE TABLE st (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let failing = TestReceiver::start().await;
    failing.set_default(Reply::Status(500));
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let cfg = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"st\"")
        .subscription(
            "hook",
            &receiver.url(),
            "auth = { type = \"hmac\", secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\" }",
        )
        .subscription(
            "broken",
            &failing.url(),
            "retry = { max_attempts = 100, initial = \"10s\", max = \"10s\" }",
        );
    let path = cfg.write(&dir);
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO st SELECT generate_series(1, 5)")
        .await;
    receiver
        .wait_for(5, std::time::Duration::from_secs(30))
        .await;
    failing
        .wait_for(1, std::time::Duration::from_secs(30))
        .await;

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["send-test", "hook", "-c", p.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("HTTP 200"), "{}", text(&out));
    let test_event = receiver.events().pop().unwrap();
    assert_eq!(test_event["op"], "test");
    assert!(receiver
        .requests()
        .last()
        .unwrap()
        .header("webhook-signature")
        .is_some_and(|s| s.starts_with("v1,")));

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["send-test", "broken", "-c", p.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("HTTP 500"), "{}", text(&out));

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["send-test", "nope", "-c", p.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["status", "-c", p.to_str().unwrap(), "--json"])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["slot"]["exists"], true, "{report}");
    assert_eq!(report["slot"]["active"], true, "{report}");
    assert_eq!(report["stored_events"], 5, "{report}");
    let subs = report["subscriptions"].as_array().unwrap();
    let hook = subs.iter().find(|s| s["name"] == "hook").unwrap();
    assert_eq!(hook["backlog"], 0, "{report}");
    let broken = subs.iter().find(|s| s["name"] == "broken").unwrap();
    assert_eq!(broken["backlog"], 5, "{report}");
    assert!(broken["attempts"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        broken["last_error"].as_str().unwrap_or("").contains("500"),
        "{report}"
    );

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || run_cli(&["status", "-c", p.to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("broken"), "{}", text(&out));
    wh.stop().await.unwrap();
}
