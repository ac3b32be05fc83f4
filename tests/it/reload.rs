//! SIGHUP reloads the subscriptions of a running walhook binary.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::pipeline::db_name;
use crate::runner::{eventually, scratch_dir, spawn_run, terminate, wait_exit, ConfigText};
use crate::support::db::TestDb;
use crate::support::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(60);

fn row_ids(receiver: &TestReceiver) -> BTreeSet<i64> {
    receiver
        .events()
        .iter()
        .filter_map(|e| e["data"]["id"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_changes_and_removes_subscriptions_without_loss() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE r (id int PRIMARY KEY)").await;
    let keep = TestReceiver::start().await;
    let old = TestReceiver::start().await;
    let new = TestReceiver::start().await;
    let late = TestReceiver::start().await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let base = || ConfigText::new(&db.url(), &name, &dir.join("store")).table("name = \"r\"");
    let config = base()
        .subscription("keep", &keep.url(), "")
        .subscription("old", &old.url(), "")
        .write(&dir);
    let log = dir.join("run.log");
    let mut child = spawn_run(&config, &log);
    eventually(WAIT, "walhook to stream", || async {
        db.slot_active(&name).await.then_some(())
    })
    .await;
    db.execute("INSERT INTO r SELECT generate_series(1, 100)")
        .await;
    keep.wait_for(100, WAIT).await;
    old.wait_for(100, WAIT).await;

    base()
        .subscription(
            "keep",
            &keep.url(),
            "headers = { \"X-Reloaded\" = \"yes\" }",
        )
        .subscription("new", &new.url(), "")
        .subscription("late", &late.url(), "start = \"earliest\"")
        .write(&dir);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(WAIT, "the reload to be applied", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("config reloaded")
            .then_some(())
    })
    .await;
    db.execute("INSERT INTO r SELECT generate_series(101, 200)")
        .await;

    eventually(WAIT, "every subscription to catch up", || async {
        (row_ids(&keep).len() == 200 && row_ids(&new).len() == 100 && row_ids(&late).len() == 200)
            .then_some(())
    })
    .await;
    assert_eq!(
        row_ids(&keep),
        (1..=200).collect(),
        "no loss across the reload"
    );
    assert!(
        keep.requests()
            .iter()
            .any(|r| r.header("x-reloaded") == Some("yes")),
        "the changed subscription uses its new headers"
    );
    assert_eq!(
        row_ids(&new),
        (101..=200).collect(),
        "a new subscription starts at the end"
    );
    assert_eq!(
        row_ids(&late),
        (1..=200).collect(),
        "start = earliest replays the log"
    );
    assert_eq!(
        row_ids(&old),
        (1..=100).collect(),
        "a removed subscription gets nothing more"
    );

    // A broken config is refused and the running one kept.
    std::fs::write(&config, "this is [not toml").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    db.execute("INSERT INTO r VALUES (201)").await;
    eventually(WAIT, "delivery to go on after a bad reload", || async {
        row_ids(&keep).contains(&201).then_some(())
    })
    .await;
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("keeping the running one"));

    terminate(&child);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(30)).code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redelivers_retained_events_with_the_same_ids() {
    use crate::runner::{run_cli, InProcess};
    let db = TestDb::new().await;
    db.execute("CREATE TABLE rp (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let other = TestReceiver::start().await;
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let cfg = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"rp\"")
        .subscription("hook", &receiver.url(), "")
        .subscription("other", &other.url(), "");
    let path = cfg.write(&dir);
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO rp SELECT generate_series(1, 30)")
        .await;
    let first: Vec<String> = receiver
        .wait_for(30, WAIT)
        .await
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    other.wait_for(30, WAIT).await;

    // While walhook runs.
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "replay",
            "hook",
            "--since",
            "1h",
            "--wait",
            "-c",
            p.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // --wait follows the backlog until the running walhook has delivered it.
    assert!(
        text.trim_end()
            .ends_with("replay of 'hook': delivered, backlog 0"),
        "{text}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("30 events re-queued"), "{text}");
    let all = receiver.wait_for(60, WAIT).await;
    let again: Vec<String> = all[30..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(again, first, "same ids, same order");
    assert_eq!(
        other.requests().len(),
        30,
        "other subscriptions are not replayed"
    );
    wh.stop().await.unwrap();

    // While walhook is stopped: applied at once, delivered at the next start.
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["replay", "hook", "--since", "1h", "-c", p.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("30 events re-queued"));
    let wh = InProcess::start(cfg.parse()).await;
    receiver.wait_for(90, WAIT).await;
    wh.stop().await.unwrap();

    let out = run_cli(&[
        "replay",
        "nope",
        "--since",
        "1h",
        "-c",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_cli(&[
        "replay",
        "hook",
        "--since",
        "soon",
        "-c",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_dead_requeues_dead_letters_with_the_same_ids() {
    use crate::runner::{run_cli, InProcess};
    use crate::support::receiver::Reply;
    let db = TestDb::new().await;
    db.execute("CREATE TABLE dl (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let other = TestReceiver::start().await;
    receiver.set_default(Reply::Status(400));
    let name = db_name(&db);
    let dir = scratch_dir(&name);
    let cfg = ConfigText::new(&db.url(), &name, &dir.join("store"))
        .table("name = \"dl\"")
        .subscription(
            "hook",
            &receiver.url(),
            "retry = { max_attempts = 2, initial = \"10ms\", max = \"10ms\" }",
        )
        .subscription("other", &other.url(), "");
    let path = cfg.write(&dir);
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO dl SELECT generate_series(1, 3)")
        .await;
    // 3 events × 2 attempts, all refused: 3 dead letters.
    receiver.wait_for(6, WAIT).await;
    other.wait_for(3, WAIT).await;
    eventually(WAIT, "three dead letters", || async {
        let report = walhook::status::collect(&cfg.parse()).await.ok()?;
        let hook = report.subscriptions.iter().find(|s| s.name == "hook")?;
        (hook.dead_letters == 3).then_some(())
    })
    .await;
    let refused: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();

    receiver.set_default(Reply::Status(200));
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["replay", "hook", "--dead", "-c", p.to_str().unwrap()])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("3 dead letters re-queued"), "{text}");
    let all = receiver.wait_for(9, WAIT).await;
    let redelivered: Vec<String> = all[6..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = refused.clone();
    expected.dedup();
    assert_eq!(redelivered, expected, "same ids, in their order");
    assert!(all[6..].iter().all(|r| r.status == 200));
    assert_eq!(
        other.requests().len(),
        3,
        "other subscriptions get no copies"
    );
    let report = walhook::status::collect(&cfg.parse()).await.unwrap();
    let hook = report
        .subscriptions
        .iter()
        .find(|s| s.name == "hook")
        .unwrap();
    assert_eq!(hook.dead_letters, 0);
    assert_eq!(hook.backlog, 0);
    wh.stop().await.unwrap();

    let out = run_cli(&["replay", "hook", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "--since or --dead is required");
}
