//! End to end, in-process: Postgres → walhook → a real HTTP receiver.

use std::time::Duration;

use serde_json::Value;

use crate::runner::{eventually, scratch_dir, ConfigText, InProcess};
use crate::support::db::TestDb;
use crate::support::receiver::TestReceiver;

const WAIT: Duration = Duration::from_secs(30);
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The database name doubles as slot and publication name (slots are
/// cluster-wide, databases are per test).
pub fn db_name(db: &TestDb) -> String {
    db.slot_name()
}

fn base_config(db: &TestDb, receiver: &TestReceiver, tables: &[&str]) -> ConfigText {
    let name = db_name(db);
    let store = scratch_dir(&name);
    let mut cfg = ConfigText::new(&db.url(), &name, &store);
    for t in tables {
        cfg = cfg.table(t);
    }
    cfg.subscription(
        "hook",
        &receiver.url(),
        &format!(
            "auth = {{ type = \"hmac\", secret = \"{SECRET}\" }}\nretry = {{ max_attempts = 50, initial = \"50ms\", max = \"200ms\" }}\nops = [\"data_create\", \"data_update\", \"data_remove\", \"data_truncate\", \"form_update\"]"
        ),
    )
}

/// Independent Standard Webhooks verification of one request.
pub(crate) fn verify_signature(req: &crate::support::receiver::Request) {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let header = |name: &str| -> String {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("missing header {name}"))
    };
    let id = header("webhook-id");
    let ts = header("webhook-timestamp");
    let sig = header("webhook-signature");
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&req.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert!(
        sig.split(' ').any(|s| s == expected),
        "signature {sig} does not verify (expected {expected})"
    );
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body["id"].as_str().unwrap(),
        id,
        "webhook-id is the event id"
    );
}

/// Parses expected JSON (keeps number digits, unlike `json!`).
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn num(v: &Value) -> String {
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_family_create_update_delete() {
    let db = TestDb::new().await;
    db.execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE kinds (
            id int8 PRIMARY KEY, i2 int2, i4 int4, n numeric, n2 numeric(10,2), f4 float4, f8 float8,
            b bool, t text, vc varchar(10), j json, jb jsonb, ts timestamp, tstz timestamptz,
            d date, tm time, ttz timetz, iv interval, u uuid, by bytea, ta text[], ia int4[],
            ia2 int4[][], nan numeric, inf float8, ip inet, e mood, nul text, password text)",
    )
    .await;
    // Settings a role or database may carry must not change our output: the
    // replication session pins its own.
    db.execute(&format!(
        "ALTER DATABASE {db} SET TimeZone = 'America/St_Johns';
         ALTER DATABASE {db} SET DateStyle = 'SQL, DMY';
         ALTER DATABASE {db} SET extra_float_digits = -3;
         ALTER DATABASE {db} SET bytea_output = 'escape';",
        db = db.name()
    ))
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = base_config(
        &db,
        &receiver,
        &["name = \"public.kinds\"\nform = \"kind\"\nexclude = [\"password\"]\nrename = { t = \"title\" }"],
    )
    .parse();
    let wh = InProcess::start(cfg).await;

    db.execute(
        r#"INSERT INTO kinds VALUES (9223372036854775807, 32767, -2147483648, 12345678901234.123456, 1.50,
            1.5, 0.1, true, 'héllo "q" 🎉', 'v', '{"a": [1, 2], "a": 3}', '{"k": {"n": 1.10}}',
            '2026-11-22 04:20:00.123456', '2026-11-22 06:20:00.5+02', '2026-11-22', '04:20:00',
            '04:05:06+02', '1 day 02:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10',
            '{"a,b","\"q\"",NULL,""}', '{1,2,NULL}', '{{1,2},{3,4}}', 'NaN', '-Infinity',
            '192.168.0.1/24', 'happy', NULL, 'hunter2')"#,
    )
    .await;
    db.execute("UPDATE kinds SET b = false, n2 = 2.25 WHERE id = 9223372036854775807")
        .await;
    db.execute("DELETE FROM kinds").await;

    let reqs = receiver.wait_for(3, WAIT).await;
    for r in &reqs {
        verify_signature(r);
    }
    let events: Vec<Value> = reqs
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let create = &events[0];
    assert_eq!(create["op"], "data_create");
    assert_eq!(create["form"], "kind");
    let d = &create["data"];
    assert_eq!(num(&d["id"]), "9223372036854775807");
    assert_eq!(num(&d["i2"]), "32767");
    assert_eq!(num(&d["i4"]), "-2147483648");
    assert_eq!(num(&d["n"]), "12345678901234.123456");
    assert_eq!(num(&d["n2"]), "1.50");
    assert_eq!(num(&d["f4"]), "1.5");
    assert_eq!(num(&d["f8"]), "0.1");
    assert_eq!(d["b"], Value::Bool(true));
    assert_eq!(d["title"], "héllo \"q\" 🎉", "renamed t → title");
    assert!(d.get("t").is_none());
    assert_eq!(d["vc"], "v");
    assert_eq!(d["j"]["a"].to_string(), "3", "json is embedded");
    assert_eq!(num(&d["jb"]["k"]["n"]), "1.10");
    assert_eq!(d["ts"], "2026-11-22T04:20:00.123456");
    assert_eq!(d["tstz"], "2026-11-22T04:20:00.5Z");
    assert_eq!(d["d"], "2026-11-22");
    assert_eq!(d["tm"], "04:20:00");
    assert_eq!(d["ttz"], "04:05:06+02:00");
    assert_eq!(d["iv"], "1 day 02:00:00");
    assert_eq!(d["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(d["by"], "AP8Q", "bytea is base64");
    assert_eq!(
        d["ta"],
        serde_json::json!(["a,b", "\"q\"", null, ""]),
        "text[] with quotes, NULL and empty"
    );
    assert_eq!(d["ia"].to_string(), "[1,2,null]");
    assert_eq!(d["ia2"].to_string(), "[[1,2],[3,4]]");
    assert_eq!(d["nan"], "NaN");
    assert_eq!(d["inf"], "-Infinity");
    assert_eq!(d["ip"], "192.168.0.1/24");
    assert_eq!(d["e"], "happy");
    assert_eq!(d["nul"], Value::Null);
    assert!(d.get("password").is_none(), "excluded column");
    let src = &create["source"];
    assert_eq!(src["schema"], "public");
    assert_eq!(src["table"], "kinds");
    let id = create["id"].as_str().unwrap();
    let (lsn_hex, index) = id.split_once('-').unwrap();
    assert_eq!(lsn_hex.len(), 16);
    assert_eq!(index, "0000");
    let lsn = u64::from_str_radix(lsn_hex, 16).unwrap();
    assert_eq!(
        src["lsn"],
        format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
    );
    assert!(src["commit_time"].as_str().unwrap().ends_with('Z'));
    assert!(src["xid"].as_u64().unwrap() > 0);

    let update = &events[1];
    assert_eq!(update["op"], "data_update");
    assert_eq!(update["data"]["b"], Value::Bool(false));
    assert_eq!(num(&update["data"]["n2"]), "2.25");
    assert!(
        update.get("old").is_none(),
        "DEFAULT identity without key change sends no old row"
    );
    assert!(update.get("changed").is_none());

    let remove = &events[2];
    assert_eq!(remove["op"], "data_remove");
    assert_eq!(
        remove["data"],
        serde_json::json!({"id": 9223372036854775807u64}),
        "DEFAULT identity: delete carries the key"
    );
    assert!(
        events[0]["id"].as_str() < events[1]["id"].as_str()
            && events[1]["id"].as_str() < events[2]["id"].as_str(),
        "ids sort in commit order"
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_old_values_and_changed() {
    let db = TestDb::new().await;
    db.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = base_config(&db, &receiver, &["name = \"orders\""]).parse();
    let wh = InProcess::start(cfg).await;
    db.execute("INSERT INTO orders VALUES (42, 'new', 120.50)")
        .await;
    db.execute("UPDATE orders SET status = 'paid' WHERE id = 42")
        .await;
    db.execute("UPDATE orders SET id = 43 WHERE id = 42").await;
    db.execute("DELETE FROM orders WHERE id = 43").await;
    let ev = receiver.events_after_wait(4, WAIT).await;
    assert_eq!(ev[1]["op"], "data_update");
    assert_eq!(
        ev[1]["old"],
        json(r#"{"id": 42, "status": "new", "total": 120.50}"#)
    );
    assert_eq!(num(&ev[1]["old"]["total"]), "120.50");
    assert_eq!(ev[1]["changed"], serde_json::json!(["status"]));
    assert_eq!(ev[2]["changed"], serde_json::json!(["id"]));
    assert_eq!(ev[2]["old"]["id"], 42);
    assert_eq!(ev[3]["op"], "data_remove");
    assert_eq!(
        ev[3]["data"],
        json(r#"{"id": 43, "status": "paid", "total": 120.50}"#),
        "FULL identity: delete carries the whole row"
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_never_a_wrong_value() {
    let db = TestDb::new().await;
    db.execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs_full REPLICA IDENTITY FULL;",
    )
    .await;
    let receiver = TestReceiver::start().await;
    let cfg = base_config(&db, &receiver, &["name = \"docs\"", "name = \"docs_full\""]).parse();
    let wh = InProcess::start(cfg).await;
    let big = "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 2000) i";
    db.execute(&format!(
        "INSERT INTO docs VALUES (1, 'a', ({big})); INSERT INTO docs_full VALUES (1, 'a', ({big}));"
    ))
    .await;
    db.execute(
        "UPDATE docs SET title = 'b' WHERE id = 1; UPDATE docs_full SET title = 'b' WHERE id = 1;",
    )
    .await;
    let ev = receiver.events_after_wait(4, WAIT).await;
    let by_form = |form: &str, op: &str| -> Value {
        ev.iter()
            .find(|e| e["form"] == form && e["op"] == op)
            .cloned()
            .unwrap_or_else(|| panic!("no {op} for {form}"))
    };
    let created = by_form("docs", "data_create");
    assert_eq!(created["data"]["body"].as_str().unwrap().len(), 64_000);

    let upd = by_form("docs", "data_update");
    assert_eq!(upd["data"]["title"], "b");
    assert!(
        upd["data"].get("body").is_none(),
        "an unchanged TOAST value is left out, not reported as null: {upd}"
    );
    assert_eq!(upd["unchanged_toast"], serde_json::json!(["body"]));

    let full = by_form("docs_full", "data_update");
    assert_eq!(
        full["data"]["body"], created["data"]["body"],
        "with FULL identity the value is filled from the old row"
    );
    assert!(full.get("unchanged_toast").is_none());
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_transaction_stays_together_in_order() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY)")
        .await;
    let receiver = TestReceiver::start().await;
    let cfg = base_config(&db, &receiver, &["name = \"a\"", "name = \"b\""]).parse();
    let wh = InProcess::start(cfg).await;
    db.execute(
        "BEGIN; INSERT INTO a VALUES (1, 'x'); INSERT INTO b VALUES (7); UPDATE a SET v = 'y' WHERE id = 1; COMMIT;",
    )
    .await;
    db.execute("TRUNCATE b").await;
    let ev = receiver.events_after_wait(4, WAIT).await;
    let ids: Vec<&str> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let lsn = ids[0].split_once('-').unwrap().0;
    assert_eq!(
        ids[..3],
        [
            format!("{lsn}-0000"),
            format!("{lsn}-0001"),
            format!("{lsn}-0002")
        ],
        "one commit LSN, consecutive indexes"
    );
    assert_eq!(ev[0]["op"], "data_create");
    assert_eq!(ev[1]["form"], "b");
    assert_eq!(ev[2]["op"], "data_update");
    assert!(ev
        .iter()
        .all(|e| e["source"]["xid"] == ev[0]["source"]["xid"] || e["op"] == "data_truncate"));
    assert_eq!(ev[3]["op"], "data_truncate");
    assert_eq!(ev[3]["form"], "b");
    assert_eq!(
        ev[3]["data"],
        serde_json::json!({"cascade": false, "restart_identity": false})
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_change_emits_form_update() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE f (id int PRIMARY KEY, a text)")
        .await;
    let receiver = TestReceiver::start().await;
    let cfg = base_config(&db, &receiver, &["name = \"f\""]).parse();
    let wh = InProcess::start(cfg).await;
    db.execute("INSERT INTO f VALUES (1, 'x')").await;
    receiver.wait_for(1, WAIT).await;
    db.execute("ALTER TABLE f ADD COLUMN b int; INSERT INTO f VALUES (2, 'y', 5)")
        .await;
    let ev = receiver.events_after_wait(3, WAIT).await;
    assert_eq!(ev[1]["op"], "form_update");
    let fields: Vec<&str> = ev[1]["data"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["id", "a", "b"]);
    assert_eq!(
        ev[2]["data"],
        serde_json::json!({"id": 2, "a": "y", "b": 5})
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_without_loss() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE r (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let cfg = base_config(&db, &receiver, &["name = \"r\""]);
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO r SELECT generate_series(1, 50)")
        .await;
    receiver.wait_for(50, WAIT).await;
    wh.stop().await.unwrap();

    // Written while walhook is down: the slot keeps it for us.
    db.execute("INSERT INTO r SELECT generate_series(51, 100)")
        .await;
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO r SELECT generate_series(101, 120)")
        .await;
    let ev = receiver.events_after_wait(120, WAIT).await;
    let mut ids: Vec<i64> = ev
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 120, "no duplicates after a clean restart");
    ids.sort();
    assert_eq!(ids, (1..=120).collect::<Vec<_>>());
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_does_not_hold_back_the_slot() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE s (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    receiver.set_default(crate::support::receiver::Reply::Status(500));
    let name = db_name(&db);
    let cfg = base_config(&db, &receiver, &["name = \"s\""]).parse();
    let wh = InProcess::start(cfg).await;
    db.execute("INSERT INTO s SELECT generate_series(1, 20)")
        .await;
    let after_insert = db.wal_lsn().await;
    // The endpoint fails (and is retried), yet the slot's confirmed position
    // passes our insert. Acks follow the store, not the endpoint, so the ack
    // may come before the first retry: wait for both rather than assume an
    // order between them.
    eventually(
        WAIT,
        "confirmed_flush_lsn to pass the insert while the endpoint is retried",
        || async {
            let lsn = db.slot_confirmed_flush_lsn(&name).await?;
            let failed = receiver.requests().len();
            (lsn >= after_insert && failed >= 2).then_some(())
        },
    )
    .await;
    assert!(
        receiver.requests().iter().all(|r| r.status == 500),
        "nothing was accepted while the endpoint failed"
    );
    receiver.set_default(crate::support::receiver::Reply::Status(200));
    // Wait until all 20 distinct ids were accepted.
    eventually(WAIT, "all 20 events delivered after recovery", || async {
        let ok: std::collections::BTreeSet<String> = receiver
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (ok.len() == 20).then_some(())
    })
    .await;
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_advances_while_other_tables_are_busy() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int, pad text)")
        .await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let cfg = base_config(&db, &receiver, &["name = \"quiet\""]).parse();
    let wh = InProcess::start(cfg).await;
    // Only the unpublished table is written: nothing reaches us but WAL grows.
    db.execute("INSERT INTO busy SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i")
        .await;
    let after = db.wal_lsn().await;
    eventually(
        WAIT,
        "the idle slot to move past the busy table's WAL",
        || async {
            let lsn = db.slot_confirmed_flush_lsn(&name).await?;
            (lsn >= after).then_some(())
        },
    )
    .await;
    assert!(
        receiver.requests().is_empty(),
        "no events for an unpublished table"
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_does_not_delay_another_subscription() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE iso (id int PRIMARY KEY)").await;
    let healthy = TestReceiver::start().await;
    let dead = TestReceiver::start().await;
    dead.set_default(crate::support::receiver::Reply::Status(503));
    let cfg = base_config(&db, &healthy, &["name = \"iso\""])
        .subscription(
            "dead",
            &dead.url(),
            "retry = { max_attempts = 1000, initial = \"1s\", max = \"1s\" }",
        )
        .parse();
    let wh = InProcess::start(cfg).await;
    db.execute("INSERT INTO iso SELECT generate_series(1, 200)")
        .await;
    let ev = healthy.events_after_wait(200, WAIT).await;
    let ids: Vec<i64> = ev
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=200).collect::<Vec<_>>(),
        "healthy endpoint gets all, in order"
    );
    let dead_ids: std::collections::BTreeSet<String> = dead
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(
        dead_ids.len(),
        1,
        "the dead endpoint only ever sees its first event, retried: {dead_ids:?}"
    );
    wh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_with_prior_progress_stops_with_exit_4() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE lost (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let name = db_name(&db);
    let cfg = base_config(&db, &receiver, &["name = \"lost\""]);
    let wh = InProcess::start(cfg.parse()).await;
    db.execute("INSERT INTO lost VALUES (1)").await;
    receiver.wait_for(1, WAIT).await;
    wh.stop().await.unwrap();
    // The walsender releases the slot a moment after the client left (on
    // PostgreSQL 14 noticeably later).
    eventually(WAIT, "the slot to be released", || async {
        (!db.slot_held(&name).await).then_some(())
    })
    .await;
    db.execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await;
    let err = walhook::app::run(
        cfg.parse(),
        tokio_util::sync::CancellationToken::new(),
        walhook::app::Hooks::default(),
    )
    .await
    .expect_err("a lost slot must stop walhook");
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(
        err.to_string().contains("slot missing: resync required"),
        "{err}"
    );
    assert_eq!(
        db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .await,
        0,
        "the slot is never recreated silently"
    );
    // Recreated by someone else: its position is ahead of what the store
    // holds, so changes in between are gone. Same verdict.
    db.execute(&format!(
        "SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')"
    ))
    .await;
    let err = walhook::app::run(
        cfg.parse(),
        tokio_util::sync::CancellationToken::new(),
        walhook::app::Hooks::default(),
    )
    .await
    .expect_err("a recreated slot must stop walhook");
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("recreated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_walhook_on_the_same_store_fails_fast_with_exit_5() {
    let db = TestDb::new().await;
    db.execute("CREATE TABLE two (id int PRIMARY KEY)").await;
    let receiver = TestReceiver::start().await;
    let cfg = base_config(&db, &receiver, &["name = \"two\""]);
    let first = InProcess::start(cfg.parse()).await;
    let err = tokio::time::timeout(
        WAIT,
        walhook::app::run(
            cfg.parse(),
            tokio_util::sync::CancellationToken::new(),
            walhook::app::Hooks::default(),
        ),
    )
    .await
    .expect("the second instance fails fast")
    .expect_err("the store is locked");
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(err.to_string().contains("another walhook"), "{err}");
    // The first one is unaffected.
    db.execute("INSERT INTO two VALUES (1)").await;
    receiver.wait_for(1, WAIT).await;
    first.stop().await.unwrap();
}
