//! Schema-level behaviour across PostgreSQL 14–18 (RELIABILITY.md rows 7, 39
//! and 40): generated columns, partitioned tables, DDL while running and while
//! stopped, TRUNCATE, two-phase commit, sequences, and a publication that is
//! missing or younger than the slot.
//!
//! "Nothing else arrived" is checked with a marker: a row inserted into the
//! `mark` table after the writes under test. One subscription delivers in
//! commit order, so once the marker's event is in, every event committed
//! before it is in too; no sleeps.
//!
//! Where PostgreSQL versions differ, the test asserts what each version does
//! and says why (`server_version_num` decides), never skips.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use walhook::app::{self, Hooks};

use crate::pipeline::db_name;
use crate::runner::{eventually, run_cli, scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;
use crate::support::oracle::AckWatch;
use crate::support::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(60);

/// PostgreSQL 18 publishes stored generated columns (walhook's publication
/// sets `publish_generated_columns = stored`) and refuses UPDATE/DELETE when
/// the replica identity holds unpublished generated columns.
const PG18: i64 = 180000;

/// PostgreSQL 15 fixed the walsender's stale view of a detached partition.
const PG15: i64 = 150000;

/// Every op, so truncates and form updates are delivered too.
const ALL_OPS: &str =
    "ops = [\"data_create\", \"data_update\", \"data_remove\", \"data_truncate\", \"form_update\"]";

async fn server_version(db: &TestDb) -> i64 {
    db.query_one_i64("SELECT current_setting('server_version_num')::int")
        .await
}

/// A config for `tables` plus the `mark` table (created here), one
/// subscription receiving every op.
async fn config(db: &TestDb, receiver: &TestReceiver, tables: &[&str]) -> ConfigText {
    db.execute("CREATE TABLE IF NOT EXISTS mark (id int PRIMARY KEY)")
        .await;
    let name = db_name(db);
    let mut cfg = ConfigText::new(&db.url(), &name, &scratch_dir(&name).join("store"))
        .table("name = \"mark\"");
    for t in tables {
        cfg = cfg.table(t);
    }
    cfg.subscription("hook", &receiver.url(), ALL_OPS)
}

/// Inserts marker `n` and returns every event delivered before it (markers
/// left out), once it has arrived.
async fn events_through_marker(db: &TestDb, receiver: &TestReceiver, n: i32) -> Vec<Value> {
    db.execute(&format!("INSERT INTO mark VALUES ({n})")).await;
    eventually(WAIT, &format!("marker {n} to be delivered"), || async {
        let events = receiver.events();
        events
            .iter()
            .any(|e| e["form"] == "mark" && e["data"]["id"] == n)
            .then_some(())
    })
    .await;
    receiver
        .events()
        .into_iter()
        .take_while(|e| !(e["form"] == "mark" && e["data"]["id"] == n))
        .filter(|e| e["form"] != "mark")
        .collect()
}

/// `(op, data)` of each event, for comparing whole sequences.
fn ops_and_data(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|e| (e["op"].as_str().unwrap().to_string(), e["data"].clone()))
        .collect()
}

/// The field names of a `form_update` event.
fn field_names(event: &Value) -> Vec<String> {
    assert_eq!(event["op"], "form_update", "not a form_update: {event}");
    event["data"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

/// The type of field `name` in a `form_update` event.
fn field_type(event: &Value, name: &str) -> String {
    event["data"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name} in {event}"))["type"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `walhook check` on `cfg`: (exit code, stdout + stderr).
async fn check(cfg: &ConfigText) -> (Option<i32>, String) {
    let dir = scratch_dir("check");
    let path = cfg.write(&dir);
    let out =
        tokio::task::spawn_blocking(move || run_cli(&["check", "-c", path.to_str().unwrap()]))
            .await
            .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

// ---------------------------------------------------------------- row 39 (a)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_are_in_events_from_postgres_18_on() {
    let db = TestDb::new().await;
    let version = server_version(&db).await;
    db.execute(
        "CREATE TABLE gen (id int PRIMARY KEY, a int, doubled int GENERATED ALWAYS AS (a * 2) STORED);
         CREATE TABLE gen_full (id int PRIMARY KEY, a int, doubled int GENERATED ALWAYS AS (a * 2) STORED);
         ALTER TABLE gen_full REPLICA IDENTITY FULL;",
    )
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, &["name = \"gen\"", "name = \"gen_full\""]).await;
    let (code, text) = check(&cfg).await;
    assert_eq!(code, Some(0), "{text}");
    let wh = InProcess::start(cfg.parse()).await;
    db.execute(
        "INSERT INTO gen (id, a) VALUES (1, 10);
         UPDATE gen SET a = 11 WHERE id = 1;
         INSERT INTO gen_full (id, a) VALUES (1, 5);",
    )
    .await;
    // On 18 this UPDATE fails in Postgres if the publication does not
    // publish the stored column the FULL identity holds; ours does.
    db.execute("UPDATE gen_full SET a = 6 WHERE id = 1; DELETE FROM gen_full WHERE id = 1")
        .await;
    let events = events_through_marker(&db, &receiver, 1).await;
    let seen = ops_and_data(&events);
    if version >= PG18 {
        assert!(
            text.contains("generated column(s) doubled are published"),
            "{text}"
        );
        assert_eq!(
            db.query_one_string(&format!(
                "SELECT pubgencols::text FROM pg_publication WHERE pubname = '{}'",
                db_name(&db)
            ))
            .await,
            "s",
            "walhook's publication publishes stored generated columns on 18"
        );
        assert_eq!(
            seen,
            vec![
                (
                    "data_create".into(),
                    json!({"id": 1, "a": 10, "doubled": 20})
                ),
                (
                    "data_update".into(),
                    json!({"id": 1, "a": 11, "doubled": 22})
                ),
                (
                    "data_create".into(),
                    json!({"id": 1, "a": 5, "doubled": 10})
                ),
                (
                    "data_update".into(),
                    json!({"id": 1, "a": 6, "doubled": 12})
                ),
                (
                    "data_remove".into(),
                    json!({"id": 1, "a": 6, "doubled": 12})
                ),
            ]
        );
        assert_eq!(events[3]["old"], json!({"id": 1, "a": 5, "doubled": 10}));
        assert_eq!(events[3]["changed"], json!(["a", "doubled"]));
    } else {
        // Before 18 pgoutput never sends generated columns (documented in
        // docs/events.md): the events carry the other columns only.
        assert!(
            text.contains("generated column(s) doubled are not in events"),
            "{text}"
        );
        assert_eq!(
            seen,
            vec![
                ("data_create".into(), json!({"id": 1, "a": 10})),
                ("data_update".into(), json!({"id": 1, "a": 11})),
                ("data_create".into(), json!({"id": 1, "a": 5})),
                ("data_update".into(), json!({"id": 1, "a": 6})),
                ("data_remove".into(), json!({"id": 1, "a": 6})),
            ]
        );
        assert_eq!(events[3]["old"], json!({"id": 1, "a": 5}));
        assert_eq!(events[3]["changed"], json!(["a"]));
    }
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_an_identity_with_unpublished_generated_columns_on_18() {
    let db = TestDb::new().await;
    let version = server_version(&db).await;
    let name = db_name(&db);
    db.execute(
        "CREATE TABLE stored_full (id int PRIMARY KEY, a int, s int GENERATED ALWAYS AS (a + 1) STORED);
         ALTER TABLE stored_full REPLICA IDENTITY FULL;
         INSERT INTO stored_full (id, a) VALUES (1, 1);",
    )
    .await;
    // A publication made by the user, without publish_generated_columns.
    db.execute(&format!(
        "CREATE PUBLICATION {name} FOR TABLE stored_full WITH (publish_via_partition_root = true)"
    ))
    .await;
    let receiver = TestReceiver::start().await;
    let user_made = ConfigText::new(&db.url(), &name, &scratch_dir(&name).join("store"))
        .source("manage_publication = false")
        .table("name = \"stored_full\"")
        .subscription("hook", &receiver.url(), "");
    let (code, text) = check(&user_made).await;
    if version < PG18 {
        // Before 18 Postgres neither publishes generated columns nor rejects
        // writes over them, so there is nothing to refuse.
        assert_eq!(code, Some(0), "{text}");
        assert!(
            text.contains("PostgreSQL before 18 never publishes generated columns"),
            "{text}"
        );
        db.execute("UPDATE stored_full SET a = 2 WHERE id = 1")
            .await;
        return;
    }
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("includes generated column(s) s that publication"),
        "{text}"
    );
    assert!(
        text.contains("publish_generated_columns = stored"),
        "the fix is named: {text}"
    );
    // What the check protects: Postgres itself refuses this UPDATE now.
    let err = db
        .client()
        .batch_execute("UPDATE stored_full SET a = 2 WHERE id = 1")
        .await
        .expect_err(
            "PostgreSQL 18 rejects the UPDATE (unpublished generated column in a FULL identity)",
        );
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("42P10"),
        "invalid_column_reference: {err}"
    );
    // Applying the fix makes the check pass and the application's UPDATE work.
    db.execute(&format!(
        "ALTER PUBLICATION {name} SET (publish_generated_columns = stored)"
    ))
    .await;
    let (code, text) = check(&user_made).await;
    assert_eq!(code, Some(0), "{text}");
    db.execute("UPDATE stored_full SET a = 2 WHERE id = 1")
        .await;

    // Virtual generated columns (18's default kind) are never published: a
    // FULL identity over one is refused even with a managed publication.
    db.execute(
        "CREATE TABLE virtual_full (id int PRIMARY KEY, a int, v int GENERATED ALWAYS AS (a * 3) VIRTUAL);
         ALTER TABLE virtual_full REPLICA IDENTITY FULL;
         INSERT INTO virtual_full (id, a) VALUES (1, 1);",
    )
    .await;
    let other = format!("{name}_v");
    let managed = ConfigText::new(&db.url(), &other, &scratch_dir(&other).join("store"))
        .table("name = \"virtual_full\"")
        .subscription("hook", &receiver.url(), "");
    let (code, text) = check(&managed).await;
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("virtual generated columns are never published"),
        "{text}"
    );
    let err = app::run(managed.parse(), CancellationToken::new(), Hooks::default())
        .await
        .expect_err("run refuses the same table");
    assert_eq!(err.exit_code(), 3, "{err}");
    assert_eq!(
        db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{other}'"
        ))
        .await,
        0,
        "nothing was created"
    );
    db.execute("UPDATE virtual_full SET a = 2 WHERE id = 1")
        .await;
}

// ---------------------------------------------------------------- row 39 (b)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_table_is_captured_under_its_root_name() {
    let db = TestDb::new().await;
    let version = server_version(&db).await;
    db.execute(
        "CREATE TABLE m (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
         CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
         CREATE TABLE m_asia (id int, region text, v text, PRIMARY KEY (id, region));
         INSERT INTO m_asia VALUES (100, 'asia', 'before attach');",
    )
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, &["name = \"m\"\nform = \"metrics\""]).await;
    let (code, text) = check(&cfg).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("partitioned, 2 partition(s), captured through the root"),
        "{text}"
    );
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO m_eu VALUES (1, 'eu', 'into a leaf')")
        .await;
    db.execute("INSERT INTO m VALUES (2, 'us', 'through the root')")
        .await;
    db.execute("UPDATE m_eu SET v = 'changed' WHERE id = 1")
        .await;
    // Moves the row to another partition: a delete and an insert.
    db.execute("UPDATE m SET region = 'us' WHERE id = 1").await;
    db.execute("ALTER TABLE m ATTACH PARTITION m_asia FOR VALUES IN ('asia')")
        .await;
    db.execute("INSERT INTO m_asia VALUES (101, 'asia', 'attached')")
        .await;
    db.execute("UPDATE m SET v = 'updated after attach' WHERE id = 100")
        .await;
    db.execute("ALTER TABLE m DETACH PARTITION m_us").await;
    // m_us is an ordinary, unpublished table now.
    db.execute("INSERT INTO m_us VALUES (3, 'us', 'detached'); DELETE FROM m_us WHERE id = 2")
        .await;
    // PostgreSQL does not publish a TRUNCATE of a single partition through
    // its root (documented); a TRUNCATE of the root is published.
    db.execute("TRUNCATE m_eu").await;
    db.execute("DELETE FROM m WHERE id = 101").await;
    let events = events_through_marker(&db, &receiver, 1).await;
    for e in &events {
        assert_eq!(e["form"], "metrics", "{e}");
        assert_eq!(e["source"]["schema"], "public", "{e}");
        assert_eq!(
            e["source"]["table"], "m",
            "the root's name, not a partition's: {e}"
        );
    }
    let mut expected: Vec<(String, Value)> = vec![
        (
            "data_create".into(),
            json!({"id": 1, "region": "eu", "v": "into a leaf"}),
        ),
        (
            "data_create".into(),
            json!({"id": 2, "region": "us", "v": "through the root"}),
        ),
        (
            "data_update".into(),
            json!({"id": 1, "region": "eu", "v": "changed"}),
        ),
        ("data_remove".into(), json!({"id": 1, "region": "eu"})),
        (
            "data_create".into(),
            json!({"id": 1, "region": "us", "v": "changed"}),
        ),
        (
            "data_create".into(),
            json!({"id": 101, "region": "asia", "v": "attached"}),
        ),
        (
            "data_update".into(),
            json!({"id": 100, "region": "asia", "v": "updated after attach"}),
        ),
    ];
    if version < PG15 {
        // A PostgreSQL 14 bug (fixed in 15): DETACH PARTITION does not reset
        // the walsender's cache of how a partition is published, so changes
        // of the detached table keep coming under the root's name until the
        // replication connection is re-established (documented).
        expected.push((
            "data_create".into(),
            json!({"id": 3, "region": "us", "v": "detached"}),
        ));
        expected.push(("data_remove".into(), json!({"id": 2, "region": "us"})));
    }
    expected.push(("data_remove".into(), json!({"id": 101, "region": "asia"})));
    assert_eq!(ops_and_data(&events), expected);

    // A new replication connection sees m_us as the ordinary table it now is
    // (on 14 too).
    wh.stop().await.unwrap();
    receiver.clear();
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO m_us VALUES (4, 'us', 'detached, after a restart')")
        .await;
    db.execute("TRUNCATE m").await;
    let events = events_through_marker(&db, &receiver, 2).await;
    assert_eq!(events.len(), 1, "only the root's truncate: {events:?}");
    assert_eq!(events[0]["op"], "data_truncate");
    assert_eq!(events[0]["source"]["table"], "m");
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_publication_must_publish_partitions_via_the_root() {
    let db = TestDb::new().await;
    let name = db_name(&db);
    db.execute(&format!(
        "CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE p_1 PARTITION OF p FOR VALUES FROM (0) TO (100);
         CREATE PUBLICATION {name} FOR TABLE p;"
    ))
    .await;
    let cfg = ConfigText::new(&db.url(), &name, &scratch_dir(&name).join("store"))
        .source("manage_publication = false")
        .table("name = \"p\"")
        .subscription("hook", "http://127.0.0.1:9/", "");
    let (code, text) = check(&cfg).await;
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("does not publish via the partition root"),
        "{text}"
    );
    assert!(
        text.contains("SET (publish_via_partition_root = true)"),
        "the fix is named: {text}"
    );
    db.execute(&format!(
        "ALTER PUBLICATION {name} SET (publish_via_partition_root = true)"
    ))
    .await;
    let (code, text) = check(&cfg).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("publishes every configured table"), "{text}");
}

// ---------------------------------------------------------------- row 39 (c)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_column_alter_type_and_rename_while_running_apply_without_a_restart() {
    // ADD COLUMN while running: pipeline::column_change_emits_form_update.
    let db = TestDb::new().await;
    db.execute("CREATE TABLE s (id int PRIMARY KEY, a text, b int, c text)")
        .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, &["name = \"s\""]).await;
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO s VALUES (1, 'x', 1, 'c1')").await;
    // In one transaction: the row before the DROP keeps the old shape.
    db.execute(
        "BEGIN;
         INSERT INTO s VALUES (2, 'y', 2, 'c2');
         ALTER TABLE s DROP COLUMN c;
         INSERT INTO s VALUES (3, 'z', 3);
         COMMIT;",
    )
    .await;
    db.execute("ALTER TABLE s ALTER COLUMN b TYPE text USING b::text")
        .await;
    db.execute("INSERT INTO s VALUES (4, 'w', 'four')").await;
    db.execute("ALTER TABLE s RENAME COLUMN a TO title").await;
    db.execute("INSERT INTO s VALUES (5, 't', '5'); UPDATE s SET title = 'u' WHERE id = 1")
        .await;
    let events = events_through_marker(&db, &receiver, 1).await;
    let shapes: Vec<(String, Value)> = ops_and_data(&events)
        .into_iter()
        .filter(|(op, _)| op != "form_update")
        .collect();
    assert_eq!(
        shapes,
        vec![
            (
                "data_create".into(),
                json!({"id": 1, "a": "x", "b": 1, "c": "c1"})
            ),
            (
                "data_create".into(),
                json!({"id": 2, "a": "y", "b": 2, "c": "c2"})
            ),
            ("data_create".into(), json!({"id": 3, "a": "z", "b": 3})),
            (
                "data_create".into(),
                json!({"id": 4, "a": "w", "b": "four"})
            ),
            (
                "data_create".into(),
                json!({"id": 5, "title": "t", "b": "5"})
            ),
            (
                "data_update".into(),
                json!({"id": 1, "title": "u", "b": "1"})
            ),
        ],
        "each event has the shape of the table when it was written"
    );
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "data_create",
            "data_create",
            "form_update",
            "data_create",
            "form_update",
            "data_create",
            "form_update",
            "data_create",
            "data_update"
        ],
        "a form_update right before the first event of each new shape"
    );
    assert_eq!(field_names(&events[2]), ["id", "a", "b"]);
    assert_eq!(field_type(&events[2], "b"), "int4");
    assert_eq!(field_names(&events[4]), ["id", "a", "b"]);
    assert_eq!(field_type(&events[4], "b"), "text");
    assert_eq!(field_names(&events[6]), ["id", "title", "b"]);
    // The DROP happened inside the transaction: one commit LSN, consecutive indexes.
    let lsn = |e: &Value| {
        e["id"]
            .as_str()
            .unwrap()
            .split_once('-')
            .unwrap()
            .0
            .to_string()
    };
    assert_eq!(lsn(&events[1]), lsn(&events[2]));
    assert_eq!(lsn(&events[2]), lsn(&events[3]));
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_while_stopped_are_replayed_with_each_rows_shape() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE st (id int PRIMARY KEY, a text, b int, c text)")
        .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, &["name = \"st\""]).await;
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO st VALUES (1, 'x', 1, 'c1')").await;
    events_through_marker(&db, &receiver, 1).await;
    wh.stop().await.unwrap();
    receiver.clear();

    // Written while walhook is down: the slot decodes each row with the
    // catalog as it was when the row was written.
    db.execute("INSERT INTO st VALUES (2, 'y', 2, 'c2')").await;
    db.execute("ALTER TABLE st ADD COLUMN d int").await;
    db.execute("INSERT INTO st VALUES (3, 'z', 3, 'c3', 33)")
        .await;
    db.execute("ALTER TABLE st DROP COLUMN a").await;
    db.execute("ALTER TABLE st ALTER COLUMN b TYPE text USING b::text")
        .await;
    db.execute("ALTER TABLE st RENAME COLUMN c TO note").await;
    db.execute("INSERT INTO st VALUES (4, 'four', 'n4', 44)")
        .await;

    let wh = InProcess::start(cfg.parse()).await;
    let events = events_through_marker(&db, &receiver, 2).await;
    assert_eq!(
        ops_and_data(&events)
            .into_iter()
            .filter(|(op, _)| op != "form_update")
            .collect::<Vec<_>>(),
        vec![
            (
                "data_create".into(),
                json!({"id": 2, "a": "y", "b": 2, "c": "c2"})
            ),
            (
                "data_create".into(),
                json!({"id": 3, "a": "z", "b": 3, "c": "c3", "d": 33})
            ),
            (
                "data_create".into(),
                json!({"id": 4, "b": "four", "note": "n4", "d": 44})
            ),
        ]
    );
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "data_create",
            "form_update",
            "data_create",
            "form_update",
            "data_create"
        ],
        "row 2 has the shape the store already knew: no form_update before it"
    );
    assert_eq!(field_names(&events[1]), ["id", "a", "b", "c", "d"]);
    assert_eq!(field_names(&events[3]), ["id", "b", "note", "d"]);
    assert_eq!(field_type(&events[3], "b"), "text");
    wh.stop().await.unwrap();
}

// ---------------------------------------------------------------- row 40

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_cascade_gives_one_event_per_table_with_its_flags() {
    let db = TestDb::new().await;
    db.execute(
        "CREATE TABLE ta (id int PRIMARY KEY);
         CREATE TABLE tb (id int PRIMARY KEY);
         CREATE TABLE tc (id int PRIMARY KEY, a_id int REFERENCES ta (id));
         CREATE TABLE tid (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         INSERT INTO ta VALUES (1); INSERT INTO tb VALUES (1); INSERT INTO tc VALUES (1, 1);
         INSERT INTO tid (v) VALUES ('a');",
    )
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(
        &db,
        &receiver,
        &[
            "name = \"ta\"",
            "name = \"tb\"",
            "name = \"tc\"",
            "name = \"tid\"",
        ],
    )
    .await;
    let wh = InProcess::start(cfg.parse()).await;
    // tc is truncated too, by CASCADE (it references ta).
    db.execute("TRUNCATE ta, tb CASCADE").await;
    db.execute("TRUNCATE tid RESTART IDENTITY").await;
    let events = events_through_marker(&db, &receiver, 1).await;
    let truncates: Vec<&Value> = events
        .iter()
        .filter(|e| e["op"] == "data_truncate")
        .collect();
    assert_eq!(truncates.len(), 4, "{events:?}");
    assert_eq!(events.len(), 4, "nothing but the truncates: {events:?}");
    let mut cascaded: Vec<&str> = truncates[..3]
        .iter()
        .map(|e| e["form"].as_str().unwrap())
        .collect();
    cascaded.sort();
    assert_eq!(cascaded, ["ta", "tb", "tc"], "one event per table");
    let lsn = |e: &Value| {
        e["id"]
            .as_str()
            .unwrap()
            .split_once('-')
            .unwrap()
            .0
            .to_string()
    };
    for e in &truncates[..3] {
        assert_eq!(
            e["data"],
            json!({"cascade": true, "restart_identity": false}),
            "{e}"
        );
        assert_eq!(lsn(e), lsn(truncates[0]), "one transaction: {e}");
    }
    assert_eq!(truncates[3]["form"], "tid");
    assert_eq!(
        truncates[3]["data"],
        json!({"cascade": false, "restart_identity": true})
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_emit_once_at_commit_prepared_and_never_on_rollback() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE tp (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, &["name = \"tp\""]).await;
    let wh = InProcess::start(cfg.parse()).await;
    // Global transaction ids are cluster-wide: derive them from the database.
    let gid = |tag: &str| format!("{}_{tag}", db.name());
    db.execute(&format!(
        "BEGIN; INSERT INTO tp VALUES (1), (2); PREPARE TRANSACTION '{}'",
        gid("commit")
    ))
    .await;
    // Committed after the PREPARE: had the prepared rows been sent at
    // PREPARE time, they would be in before this marker.
    let before_commit = events_through_marker(&db, &receiver, 1).await;
    assert!(
        before_commit.is_empty(),
        "nothing is sent at PREPARE TRANSACTION: {before_commit:?}"
    );
    db.execute(&format!("COMMIT PREPARED '{}'", gid("commit")))
        .await;
    db.execute(&format!(
        "BEGIN; INSERT INTO tp VALUES (3); PREPARE TRANSACTION '{}'",
        gid("rollback")
    ))
    .await;
    db.execute(&format!("ROLLBACK PREPARED '{}'", gid("rollback")))
        .await;
    let events = events_through_marker(&db, &receiver, 2).await;
    assert_eq!(
        ops_and_data(&events),
        vec![
            ("data_create".into(), json!({"id": 1})),
            ("data_create".into(), json!({"id": 2})),
        ],
        "the committed prepared transaction exactly once; the rolled back one never"
    );
    let marker_1 = receiver
        .events()
        .into_iter()
        .find(|e| e["form"] == "mark" && e["data"]["id"] == 1)
        .unwrap();
    assert!(
        events[0]["id"].as_str() > marker_1["id"].as_str(),
        "the prepared rows carry COMMIT PREPARED's position, after marker 1"
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_emit_nothing() {
    let db = TestDb::new().await;
    db.execute(
        "CREATE SEQUENCE counter;
         CREATE TABLE ids (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);",
    )
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, &["name = \"ids\""]).await;
    let wh = InProcess::start(cfg.parse()).await;
    db.execute(
        "SELECT nextval('counter'); SELECT nextval('counter');
         SELECT setval('counter', 100); ALTER SEQUENCE counter RESTART WITH 5;
         SELECT nextval('ids_id_seq');",
    )
    .await;
    db.execute("INSERT INTO ids (v) VALUES ('row')").await;
    let events = events_through_marker(&db, &receiver, 1).await;
    assert_eq!(
        ops_and_data(&events),
        vec![("data_create".into(), json!({"id": 2, "v": "row"}))],
        "only the row: sequence changes are not replicated (documented)"
    );
    wh.stop().await.unwrap();
}

// ---------------------------------------------------------------- row 7

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_dropped_while_running_stops_walhook_with_exit_3() {
    let db = TestDb::new().await;
    let version = server_version(&db).await;
    let name = db_name(&db);
    db.execute("CREATE TABLE pd (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let cfg = config(&db, &receiver, &["name = \"pd\""]).await;
    let wh = InProcess::start(cfg.parse()).await;
    let acks = AckWatch::start(&db, &name, &cfg.store).await;
    db.execute("INSERT INTO pd VALUES (1)").await;
    events_through_marker(&db, &receiver, 1).await;
    db.execute(&format!("DROP PUBLICATION {name}")).await;
    db.execute("INSERT INTO pd VALUES (2)").await;
    let after_insert = db.wal_lsn().await;
    let err = wh
        .finished(WAIT)
        .await
        .expect_err("walhook stops when its publication is gone");
    acks.finish().await.assert_ok();
    assert_eq!(err.exit_code(), 3, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("publication '{name}' does not exist")),
        "{text}"
    );
    assert!(
        text.contains("pg_drop_replication_slot"),
        "guidance: {text}"
    );
    assert!(
        !receiver
            .events()
            .iter()
            .any(|e| e["form"] == "pd" && e["data"]["id"] == 2),
        "the row written after the drop is not delivered"
    );
    if version < PG18 {
        // 14–17: the walsender fails on the first change after the drop, so
        // nothing past it was acknowledged.
        let confirmed = db.slot_confirmed_flush_lsn(&name).await.unwrap();
        assert!(
            confirmed < after_insert,
            "confirmed_flush_lsn {confirmed:X} stays before the row written after the drop ({after_insert:X})"
        );
    }
    // 18: pgoutput skips a missing publication with a server WARNING and
    // keeps streaming, so only walhook's own check (each heartbeat) notices;
    // the exit code and message are the same.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_created_after_the_slot_is_refused_with_guidance() {
    let db = TestDb::new().await;
    let version = server_version(&db).await;
    let name = db_name(&db);
    db.execute("CREATE TABLE late (id int PRIMARY KEY)").await;
    // The wrong order: slot first, a write, then the publication.
    let created_at = db
        .query_one_string(&format!(
            "SELECT lsn::text FROM pg_create_logical_replication_slot('{name}', 'pgoutput')"
        ))
        .await;
    db.execute("INSERT INTO late VALUES (1)").await;
    let receiver = TestReceiver::start().await;
    let store = scratch_dir(&name).join("store");
    let cfg = ConfigText::new(&db.url(), &name, &store)
        .source("manage_publication = false")
        .source("create_slot = false")
        .table("name = \"late\"")
        .subscription("hook", &receiver.url(), "");
    // Not made yet, and walhook is told not to make it.
    let (code, text) = check(&cfg).await;
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains(&format!("publication '{name}' does not exist")),
        "{text}"
    );
    db.execute(&format!(
        "CREATE PUBLICATION {name} FOR TABLE late WITH (publish_via_partition_root = true)"
    ))
    .await;
    db.execute("INSERT INTO late VALUES (2)").await;
    if version >= PG18 {
        // PostgreSQL 18 skips changes made before the publication existed
        // (server WARNING "skipped loading publication") instead of failing,
        // and nothing reaches the client to tell: row 1 is never sent, row 2
        // is (documented in docs/events.md).
        let wh = InProcess::start(cfg.parse()).await;
        let events = receiver.events_after_wait(1, WAIT).await;
        assert_eq!(
            ops_and_data(&events),
            vec![("data_create".into(), json!({"id": 2}))]
        );
        wh.stop().await.unwrap();
        db.execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
            .await;
        return;
    }
    // 14–17: the walsender cannot load the publication for row 1.
    let err = tokio::time::timeout(
        WAIT,
        app::run(cfg.parse(), CancellationToken::new(), Hooks::default()),
    )
    .await
    .expect("walhook stops by itself")
    .expect_err("a publication younger than the slot is an error");
    assert_eq!(err.exit_code(), 3, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "publication '{name}' was created after replication slot '{name}'"
        )),
        "{text}"
    );
    assert!(
        text.contains("recreate the slot after the publication"),
        "{text}"
    );
    assert!(receiver.requests().is_empty(), "nothing delivered");
    let confirmed = db.slot_confirmed_flush_lsn(&name).await.unwrap();
    assert_eq!(
        confirmed,
        crate::support::db::parse_lsn(&created_at),
        "nothing acknowledged"
    );
    // The guidance works: drop the slot, let walhook create it (after the
    // publication) on a fresh store.
    eventually(WAIT, "the slot to be released", || async {
        (!db.slot_held(&name).await).then_some(())
    })
    .await;
    db.execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
    let fixed = ConfigText::new(&db.url(), &name, &scratch_dir(&name).join("store"))
        .source("manage_publication = false")
        .table("name = \"late\"")
        .subscription("hook", &receiver.url(), "");
    let wh = InProcess::start(fixed.parse()).await;
    db.execute("INSERT INTO late VALUES (3)").await;
    let events = receiver.events_after_wait(1, WAIT).await;
    assert_eq!(
        ops_and_data(&events),
        vec![("data_create".into(), json!({"id": 3}))]
    );
    wh.stop().await.unwrap();
}
