//! Filters, body formats and header templates end to end: Postgres → walhook
//! (in-process) → a real HTTP receiver.

use std::time::Duration;

use serde_json::Value;

use crate::pipeline::db_name;
use crate::runner::{scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;
use crate::support::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(30);

/// A config for `tables` with one subscription `hook` to `receiver` (fast retries).
fn config(db: &TestDb, tables: &[&str], receiver: &TestReceiver, extra: &str) -> ConfigText {
    let name = db_name(db);
    let mut cfg = ConfigText::new(&db.url(), &name, &scratch_dir(&name));
    for t in tables {
        cfg = cfg.table(t);
    }
    cfg.subscription(
        "hook",
        &receiver.url(),
        &format!("retry = {{ max_attempts = 3, initial = \"50ms\", max = \"100ms\" }}\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_selects_only_matching_rows() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric, status text)")
        .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &db,
        &["name = \"public.orders\""],
        &receiver,
        "filter = \"data.total > 100 and data.status != 'draft'\"",
    )
    .parse();
    let wh = InProcess::start(cfg).await;

    db.execute(
        "INSERT INTO orders VALUES (1, 50, 'paid'), (2, 120.50, 'paid'), (3, 500, 'draft'),
                                   (4, 100.01, 'new'), (5, 100, 'paid'), (6, 99999999999999999999.5, NULL)",
    )
    .await;
    // A later matching row: once it arrives, everything before it was decided.
    db.execute("INSERT INTO orders VALUES (7, 1000, 'paid')")
        .await;
    let reqs = receiver.wait_for(4, WAIT).await;
    let ids: Vec<String> = reqs
        .iter()
        .map(|r| r.json()["data"]["id"].to_string())
        .collect();
    // 6: a NULL status is none, which is != 'draft'.
    assert_eq!(ids, ["2", "4", "6", "7"]);
    // The body is the walhook event, digits untouched.
    assert_eq!(reqs[0].json()["data"]["total"].to_string(), "120.50");
    wh.stop().await.unwrap();
}

/// The 简道云 time of a body (millisecond precision, `Z`), checked for shape.
fn jdy_time(body: &Value) -> String {
    let time = body["data"]["updateTime"].as_str().unwrap().to_owned();
    assert_eq!(time.len(), "2026-11-22T04:20:00.123Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    time
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jiandaoyun_bodies_are_exact_for_insert_update_delete() {
    let db = TestDb::new().await;
    db.execute(
        "CREATE TABLE order_lines (order_id int, line text, qty int, price numeric,
                                   PRIMARY KEY (order_id, line))",
    )
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &db,
        &["name = \"public.order_lines\"\nform = \"lines\""],
        &receiver,
        "format = \"jiandaoyun\"",
    )
    .parse();
    let app = db.name().to_owned();
    let wh = InProcess::start(cfg).await;

    db.execute("INSERT INTO order_lines VALUES (42, 'a\"1', 2, 120.50)")
        .await;
    db.execute("UPDATE order_lines SET qty = 3 WHERE order_id = 42")
        .await;
    db.execute("DELETE FROM order_lines").await;
    let reqs = receiver.wait_for(3, WAIT).await;
    let bodies: Vec<String> = reqs
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    let t: Vec<String> = reqs.iter().map(|r| jdy_time(&r.json())).collect();
    let meta = |id: &str, t: &str, deleted: bool| {
        format!(
            r#""_id":"{id}","appId":"{app}","entryId":"lines","formName":"lines","createTime":"{t}","updateTime":"{t}","deleteTime":{},"creator":null,"updater":null,"deleter":null"#,
            if deleted {
                format!("\"{t}\"")
            } else {
                "null".to_owned()
            }
        )
    };
    assert_eq!(
        bodies[0],
        format!(
            r#"{{"op":"data_create","data":{{{},"order_id":42,"line":"a\"1","qty":2,"price":120.50}}}}"#,
            meta("42:a\\\"1", &t[0], false)
        )
    );
    assert_eq!(
        bodies[1],
        format!(
            r#"{{"op":"data_update","data":{{{},"order_id":42,"line":"a\"1","qty":3,"price":120.50}}}}"#,
            meta("42:a\\\"1", &t[1], false)
        )
    );
    // DEFAULT replica identity: a delete carries the key columns only.
    assert_eq!(
        bodies[2],
        format!(
            r#"{{"op":"data_remove","data":{{{},"order_id":42,"line":"a\"1"}}}}"#,
            meta("42:a\\\"1", &t[2], true)
        )
    );
    // Still the event id for deduplication.
    assert!(reqs[0].header("webhook-id").unwrap().ends_with("-0000"));
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_subscription_sends_a_wecom_robot_message() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric, customer text)")
        .await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let mut cfg =
        ConfigText::new(&db.url(), &name, &scratch_dir(&name)).table("name = \"public.orders\"");
    // The shipped example, pointed at the test receiver.
    let example = include_str!("../../examples/robots/wecom.toml").replace(
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=${WECOM_ROBOT_KEY}",
        &receiver.url(),
    );
    cfg.subscriptions.push_str(&example);
    // A second subscription whose naive template breaks on a quote: that
    // event is dead-lettered with the reason, the others are delivered.
    cfg = cfg.subscription(
        "naive",
        &format!("{}/naive", receiver.url()),
        "format = \"template\"\ntemplate = '{\"text\": \"{{ data.customer }}\"}'\nretry = { max_attempts = 5 }",
    );
    let store = cfg.store.clone();
    let wh = InProcess::start(cfg.parse()).await;

    db.execute("INSERT INTO orders VALUES (7, 120.50, E'Zoë \"Z\"\\nLtd'), (8, 5, 'small')")
        .await;
    db.execute("INSERT INTO orders VALUES (9, 300, 'last')")
        .await;
    let all = receiver.wait_for(4, WAIT).await;
    let at = |path: &str| -> Vec<Value> {
        all.iter()
            .filter(|r| r.path == path)
            .map(|r| r.json())
            .collect()
    };
    let robot = at("/");
    assert_eq!(robot.len(), 2, "{robot:?}");
    assert_eq!(robot[0]["msgtype"], "text");
    assert_eq!(
        robot[0]["text"]["content"],
        "[orders] created #7\nid: 7\ntotal: 120.5\ncustomer: Zoë \"Z\"\nLtd"
    );
    // The example's filter (total > 100) skipped row 8.
    assert_eq!(
        robot[1]["text"]["content"],
        "[orders] created #9\nid: 9\ntotal: 300\ncustomer: last"
    );
    assert_eq!(
        at("/naive"),
        [
            serde_json::json!({"text": "small"}),
            serde_json::json!({"text": "last"})
        ]
    );
    wh.stop().await.unwrap();

    let store = walhook::store::Store::open(&store).unwrap();
    let letters = store.dead_letters("naive", 10).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("is not valid JSON"),
        "{}",
        letters[0].reason
    );
    assert_eq!(letters[0].attempts, 1, "a render failure is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templated_header_is_rendered_per_request() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &db,
        &["name = \"public.orders\""],
        &receiver,
        "headers = { \"Idempotency-Key\" = \"{{ id }}/{{ data.id }}\", \"X-Team\" = \"ops\" }",
    )
    .parse();
    let wh = InProcess::start(cfg).await;

    db.execute("INSERT INTO orders VALUES (1, 'a'), (2, 'b')")
        .await;
    let reqs = receiver.wait_for(2, WAIT).await;
    for (req, row) in reqs.iter().zip([1, 2]) {
        let id = req.header("webhook-id").unwrap();
        assert_eq!(
            req.header("idempotency-key"),
            Some(format!("{id}/{row}").as_str())
        );
        assert_eq!(req.header("x-team"), Some("ops"));
        assert_eq!(req.json()["id"], id);
    }
    wh.stop().await.unwrap();
}
