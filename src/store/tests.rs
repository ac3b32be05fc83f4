#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "walhook-store-{name}-{}-{}-{}",
            std::process::id(),
            now_ms(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(lsn: u64, index: u32) -> NewEvent {
    NewEvent {
        id: format!("{lsn:016X}-{index:04}"),
        commit_lsn: lsn,
        op: "data_create".to_owned(),
        form: "orders".to_owned(),
        payload: format!(r#"{{"id":"{lsn:016X}-{index:04}","data":{{"n":{index}}}}}"#).into_bytes(),
        key: Some(index.to_string()),
    }
}

/// One transaction of `n` events at `lsn`, committed at `lsn + 1`.
fn tx(lsn: u64, n: u32) -> Vec<Append> {
    vec![
        Append::Events((0..n).map(|i| event(lsn, i)).collect()),
        Append::Commit {
            end_lsn: lsn + 1,
            form_schemas: Vec::new(),
        },
    ]
}

fn count_events(store: &Store) -> u64 {
    store.stats().unwrap().events
}

#[test]
fn store_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Store>();
}

#[test]
fn appends_fsync_and_state_uses_wal() {
    let dir = TestDir::new("pragmas");
    let store = Store::open(&dir.0).unwrap();
    let pragma = |conn: &Mutex<Connection>, name: &str| -> String {
        lock(conn)
            .query_row(&format!("PRAGMA {name}"), [], |row| {
                row.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    // synchronous: 2 = FULL, 1 = NORMAL.
    assert_eq!(pragma(&store.inner.writer, "synchronous"), "Integer(2)");
    assert_eq!(pragma(&store.inner.state, "synchronous"), "Integer(1)");
    for conn in [&store.inner.writer, &store.inner.state] {
        assert_eq!(pragma(conn, "journal_mode"), r#"Text("wal")"#);
        assert_eq!(pragma(conn, "foreign_keys"), "Integer(1)");
    }
}

#[test]
fn append_and_read_round_trip_in_order() {
    let dir = TestDir::new("roundtrip");
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.durable_lsn().unwrap(), None);
    assert_eq!(store.last_seq().unwrap(), 0);
    assert!(store.read_after(0, 10).unwrap().is_empty());

    let mut batch = tx(0x100, 3);
    batch.extend(tx(0x200, 2));
    assert_eq!(store.append(&batch).unwrap(), Some(0x201));

    let events = store.read_after(0, 100).unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "0000000000000100-0000",
            "0000000000000100-0001",
            "0000000000000100-0002",
            "0000000000000200-0000",
            "0000000000000200-0001"
        ]
    );
    let seqs: Vec<_> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let expected = event(0x200, 1);
    let got = &events[4];
    assert_eq!(
        (
            got.commit_lsn,
            got.op.as_str(),
            got.form.as_str(),
            &got.payload
        ),
        (0x200, "data_create", "orders", &expected.payload)
    );
    assert!(got.stored_at_ms > 0);
    assert_eq!(
        got.key.as_deref(),
        Some("1"),
        "the row key is stored beside the event"
    );
    assert_eq!(store.last_seq().unwrap(), 5);

    // Paging: limit and after_seq.
    let page: Vec<_> = store
        .read_after(2, 2)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, [3, 4]);
    assert!(store.read_after(5, 10).unwrap().is_empty());
}

#[test]
fn reappend_is_ignored_and_durable_lsn_is_monotonic() {
    let dir = TestDir::new("idempotent");
    let store = Store::open(&dir.0).unwrap();
    store.append(&tx(0x100, 10)).unwrap();
    assert_eq!(count_events(&store), 10);

    // Postgres re-sends the transaction after a restart: nothing new.
    assert_eq!(store.append(&tx(0x100, 10)).unwrap(), Some(0x101));
    assert_eq!(count_events(&store), 10);
    assert_eq!(store.last_seq().unwrap(), 10);

    // A partially stored transaction completes without duplicates.
    let mut batch = tx(0x200, 5);
    batch.pop(); // no commit yet: crash before the end of the transaction
    assert_eq!(store.append(&batch).unwrap(), Some(0x101));
    assert_eq!(store.append(&tx(0x200, 8)).unwrap(), Some(0x201));
    assert_eq!(count_events(&store), 18);
    let events = store.read_after(0, 100).unwrap();
    let ids: Vec<_> = events.iter().map(|e| e.id.clone()).collect();
    let mut expected: Vec<_> = (0..10).map(|i| event(0x100, i).id).collect();
    expected.extend((0..8).map(|i| event(0x200, i).id));
    assert_eq!(ids, expected);
    // Seqs strictly increase (ignored re-appends may leave gaps).
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.last_seq().unwrap(), events[17].seq);

    // A lower commit or progress never lowers the durable LSN.
    assert_eq!(
        store
            .append(&[Append::Commit {
                end_lsn: 0x50,
                form_schemas: Vec::new()
            }])
            .unwrap(),
        Some(0x201)
    );
    assert_eq!(
        store.append(&[Append::Progress { lsn: 0x60 }]).unwrap(),
        Some(0x201)
    );
    assert_eq!(
        store.append(&[Append::Progress { lsn: 0x300 }]).unwrap(),
        Some(0x300)
    );
    assert_eq!(store.durable_lsn().unwrap(), Some(0x300));
    // Within one batch the maximum wins, whatever the order.
    let batch = [
        Append::Commit {
            end_lsn: 0x500,
            form_schemas: Vec::new(),
        },
        Append::Commit {
            end_lsn: 0x400,
            form_schemas: Vec::new(),
        },
    ];
    assert_eq!(store.append(&batch).unwrap(), Some(0x500));
    assert_eq!(store.append(&[]).unwrap(), Some(0x500));
    drop(store);
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.durable_lsn().unwrap(), Some(0x500));
}

#[test]
fn durable_lsn_events_and_form_schemas_survive_reopen() {
    let dir = TestDir::new("reopen");
    {
        let store = Store::open(&dir.0).unwrap();
        let mut batch = tx(0x1_0000_0000, 4);
        batch.push(Append::Commit {
            end_lsn: 0x1_0000_0001,
            form_schemas: vec![FormSchema {
                form: "orders".to_owned(),
                fields_json: r#"[{"name":"id","type":"int4"}]"#.to_owned(),
            }],
        });
        store.append(&batch).unwrap();
        store
            .append(&[Append::Commit {
                end_lsn: 0x1_0000_0001,
                form_schemas: vec![FormSchema {
                    form: "orders".to_owned(),
                    fields_json: r#"[{"name":"id","type":"int8"}]"#.to_owned(),
                }],
            }])
            .unwrap();
    }
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.durable_lsn().unwrap(), Some(0x1_0000_0001));
    assert_eq!(store.last_seq().unwrap(), 4);
    assert_eq!(count_events(&store), 4);
    let schemas = store.form_schemas().unwrap();
    assert_eq!(schemas.len(), 1);
    assert_eq!(schemas["orders"], r#"[{"name":"id","type":"int8"}]"#);
    // Seqs continue after the reopen.
    store.append(&tx(0x1_0000_0100, 1)).unwrap();
    assert_eq!(store.last_seq().unwrap(), 5);
}

#[test]
fn second_open_is_locked_until_the_first_is_dropped() {
    let dir = TestDir::new("lock");
    let first = Store::open(&dir.0).unwrap();
    let clone = first.clone();
    let err = Store::open(&dir.0).unwrap_err();
    assert!(
        matches!(&err, StoreError::Locked { path } if *path == dir.0),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("another walhook is using"), "{message}");
    assert!(message.contains(&dir.0.display().to_string()), "{message}");
    assert!(message.contains("store.path"), "{message}");
    drop(first);
    // A clone keeps the store (and its lock) alive.
    assert!(matches!(
        Store::open(&dir.0),
        Err(StoreError::Locked { .. })
    ));
    drop(clone);
    let again = Store::open(&dir.0).unwrap();
    assert_eq!(again.dir(), dir.0.as_path());
}

#[test]
fn open_creates_missing_directories() {
    let dir = TestDir::new("mkdir");
    let nested = dir.0.join("a/b/c");
    let store = Store::open(&nested).unwrap();
    assert!(nested.join(DB_FILE).exists());
    assert!(nested.join(LOCK_FILE).exists());
    drop(store);
}

#[test]
fn open_refuses_a_newer_schema() {
    let dir = TestDir::new("version");
    drop(Store::open(&dir.0).unwrap());
    {
        let conn = Connection::open(dir.0.join(DB_FILE)).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
    }
    let err = Store::open(&dir.0).unwrap_err();
    assert!(
        matches!(err, StoreError::Version { found: 99, supported, .. } if supported == schema::SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade walhook"), "{err}");
}

#[test]
fn ensure_subscription_end_vs_earliest_and_kept_across_reopen() {
    let dir = TestDir::new("subs");
    {
        let store = Store::open(&dir.0).unwrap();
        store.append(&tx(0x100, 5)).unwrap();
        let end = store.ensure_subscription("late", Start::End).unwrap();
        assert_eq!(end.cursor, 5);
        let early = store.ensure_subscription("early", Start::Earliest).unwrap();
        assert_eq!(
            early,
            SubscriptionState {
                name: "early".to_owned(),
                cursor: 0,
                attempts: 0,
                next_attempt_at_ms: None,
                last_error: None,
                disabled_reason: None,
                delivered: 0,
                dead_lettered: 0,
                paused: false,
            }
        );
        assert_eq!(store.backlog("late").unwrap(), 0);
        assert_eq!(store.backlog("early").unwrap(), 5);
        store.append(&tx(0x200, 3)).unwrap();
        assert_eq!(store.backlog("late").unwrap(), 3);
        assert_eq!(store.read_after(end.cursor, 10).unwrap()[0].seq, 6);
        store.advance("early", 2, 2).unwrap();
        // Existing rows are returned unchanged, whatever the start.
        assert_eq!(
            store
                .ensure_subscription("early", Start::End)
                .unwrap()
                .cursor,
            2
        );
    }
    let store = Store::open(&dir.0).unwrap();
    store.append(&tx(0x300, 2)).unwrap();
    assert_eq!(
        store
            .ensure_subscription("late", Start::End)
            .unwrap()
            .cursor,
        5
    );
    let early = store.ensure_subscription("early", Start::Earliest).unwrap();
    assert_eq!((early.cursor, early.delivered), (2, 2));
    let names: Vec<_> = store
        .subscriptions()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["early", "late"]);
    assert!(store.subscription("missing").unwrap().is_none());
    assert_eq!(store.subscription("late").unwrap().unwrap().cursor, 5);
}

#[test]
fn delivery_state_transitions() {
    let dir = TestDir::new("state");
    let store = Store::open(&dir.0).unwrap();
    store.append(&tx(0x100, 4)).unwrap();
    store.ensure_subscription("crm", Start::Earliest).unwrap();

    store.record_failure("crm", 1, 1_000, "HTTP 500").unwrap();
    store.record_failure("crm", 2, 3_000, "timeout").unwrap();
    let s = store.subscription("crm").unwrap().unwrap();
    assert_eq!(
        (
            s.cursor,
            s.attempts,
            s.next_attempt_at_ms,
            s.last_error.as_deref()
        ),
        (0, 2, Some(3_000), Some("timeout"))
    );

    store.advance("crm", 1, 1).unwrap();
    let s = store.subscription("crm").unwrap().unwrap();
    assert_eq!(
        (
            s.cursor,
            s.attempts,
            s.next_attempt_at_ms,
            s.last_error,
            s.delivered
        ),
        (1, 0, None, None, 1)
    );
    // The cursor never moves back.
    store.advance("crm", 0, 0).unwrap();
    assert_eq!(store.subscription("crm").unwrap().unwrap().cursor, 1);

    let second = store.read_after(1, 1).unwrap().remove(0);
    store.record_failure("crm", 12, 9_000, "HTTP 400").unwrap();
    store
        .dead_letter("crm", &second, 12, Some(400), "HTTP 400", Some("bad field"))
        .unwrap();
    let s = store.subscription("crm").unwrap().unwrap();
    assert_eq!(
        (
            s.cursor,
            s.attempts,
            s.next_attempt_at_ms,
            s.dead_lettered,
            s.delivered
        ),
        (2, 0, None, 1, 1)
    );
    assert_eq!(s.last_error.as_deref(), Some("HTTP 400"));
    assert_eq!(store.backlog("crm").unwrap(), 2);
    let letters = store.dead_letters("crm", 10).unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (
            letter.subscription.as_str(),
            letter.seq,
            letter.event_id.as_str(),
            letter.attempts,
            letter.status,
            letter.reason.as_str(),
            letter.body_excerpt.as_deref()
        ),
        (
            "crm",
            2,
            second.id.as_str(),
            12,
            Some(400),
            "HTTP 400",
            Some("bad field")
        )
    );
    assert!(letter.at_ms > 0);
    // The copy survives pruning of the event itself.
    assert_eq!(
        store.prune(Duration::ZERO, now_ms() + 1_000, &[]).unwrap(),
        3
    );
    let (_, copy) = store.dead_letter_events("crm", 10).unwrap().remove(0);
    assert_eq!(copy, second);
    assert!(store.dead_letters("other", 10).unwrap().is_empty());

    store.set_disabled("crm", Some("HTTP 410 Gone")).unwrap();
    let s = store.subscription("crm").unwrap().unwrap();
    assert_eq!(s.disabled_reason.as_deref(), Some("HTTP 410 Gone"));
    store.set_disabled("crm", None).unwrap();
    assert_eq!(
        store.subscription("crm").unwrap().unwrap().disabled_reason,
        None
    );

    // Unknown subscriptions are an error, not a silent no-op.
    for result in [
        store.advance("nope", 1, 1),
        store.record_failure("nope", 1, 1, "x"),
        store.dead_letter("nope", &second, 1, None, "x", None),
        store.set_disabled("nope", None),
        store.backlog("nope").map(|_| ()),
    ] {
        assert!(
            matches!(&result, Err(StoreError::UnknownSubscription { name }) if name == "nope"),
            "{result:?}"
        );
    }
    assert!(store.dead_letters("crm", 10).unwrap().len() == 1);
}

#[test]
fn prune_respects_retention_and_the_slowest_cursor() {
    let dir = TestDir::new("prune");
    let store = Store::open(&dir.0).unwrap();
    store.append(&tx(0x100, 30)).unwrap();
    let stored_at = store.read_after(0, 1).unwrap()[0].stored_at_ms;
    store.ensure_subscription("fast", Start::Earliest).unwrap();
    store.ensure_subscription("slow", Start::Earliest).unwrap();
    store.ensure_subscription("gone", Start::Earliest).unwrap();
    store.advance("fast", 25, 25).unwrap();
    store.advance("slow", 10, 10).unwrap();
    let active = ["fast".to_owned(), "slow".to_owned()];
    let day = Duration::from_secs(86_400);

    // Too young: nothing goes, although both cursors passed them.
    assert_eq!(store.prune(day, stored_at + 1_000, &active).unwrap(), 0);
    // Old enough: only what the slowest active cursor has handled.
    let later = stored_at + 86_400_000 + 1;
    assert_eq!(store.prune(day, later, &active).unwrap(), 10);
    assert_eq!(store.read_after(0, 1).unwrap()[0].seq, 11);
    assert_eq!(count_events(&store), 20);
    // "gone" is not active (cursor 0) and does not hold events back.
    store.advance("slow", 28, 18).unwrap();
    assert_eq!(store.prune(day, later, &active).unwrap(), 15);
    // With every cursor at the end, the newest row is still kept.
    store.advance("fast", 30, 5).unwrap();
    store.advance("slow", 30, 2).unwrap();
    assert_eq!(store.prune(day, later, &active).unwrap(), 4);
    let left = store.read_after(0, 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, 30);
    // seq never goes back, even across a reopen.
    drop(store);
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.last_seq().unwrap(), 30);
    store.append(&tx(0x200, 1)).unwrap();
    assert_eq!(store.read_after(30, 10).unwrap()[0].seq, 31);
    // The slow cursor's backlog is exact after pruning.
    assert_eq!(store.backlog("slow").unwrap(), 1);
}

#[test]
fn prune_deletes_in_chunks() {
    let dir = TestDir::new("chunks");
    let store = Store::open(&dir.0).unwrap();
    let n = u32::try_from(PRUNE_CHUNK).unwrap() * 2 + 5;
    store.append(&tx(0x100, n)).unwrap();
    store.ensure_subscription("s", Start::End).unwrap();
    let names = ["s".to_owned()];
    let deleted = store.prune(Duration::ZERO, now_ms() + 1, &names).unwrap();
    assert_eq!(deleted, u64::from(n) - 1);
    assert_eq!(count_events(&store), 1);
}

#[test]
fn read_after_is_bounded_in_bytes() {
    let dir = TestDir::new("bytes");
    let store = Store::open(&dir.0).unwrap();
    let big = |i: u32| NewEvent {
        payload: vec![b'x'; READ_MAX_BYTES / 2],
        ..event(0x100, i)
    };
    store
        .append(&[
            Append::Events((0..5).map(big).collect()),
            Append::Commit {
                end_lsn: 0x101,
                form_schemas: Vec::new(),
            },
        ])
        .unwrap();
    let first = store.read_after(0, 100).unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.read_after(first[1].seq, 100).unwrap();
    assert_eq!(rest.len(), 2);
    let last = store.read_after(rest[1].seq, 100).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].seq, 5);
}

#[test]
fn readers_run_beside_the_writer() {
    let dir = TestDir::new("concurrent");
    let store = Store::open(&dir.0).unwrap();
    store.ensure_subscription("s", Start::Earliest).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for t in 0..50u64 {
                store.append(&tx(0x1000 + t * 0x10, 100)).unwrap();
            }
        })
    };
    let mut cursor = 0;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 5_000 && Instant::now() < deadline {
        let events = store.read_after(cursor, 300).unwrap();
        if let Some(last) = events.last() {
            store.advance("s", last.seq, events.len() as u64).unwrap();
            cursor = last.seq;
        }
        seen.extend(events.into_iter().map(|e| (e.seq, e.id)));
    }
    writer.join().unwrap();
    assert_eq!(seen.len(), 5_000);
    // Commit order: seqs and ids both strictly increase, so no duplicates.
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
    assert_eq!(store.backlog("s").unwrap(), 0);
    assert_eq!(store.subscription("s").unwrap().unwrap().delivered, 5_000);
}

#[test]
fn errors_name_the_file_and_the_fix() {
    let full = StoreError::Sqlite {
        path: PathBuf::from("/data/walhook.db"),
        context: "append",
        source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None),
    };
    assert!(full.is_full());
    let message = full.to_string();
    assert!(message.contains("/data/walhook.db"), "{message}");
    assert!(message.contains("free space"), "{message}");
    assert!(std::error::Error::source(&full).is_some());

    let io_full = StoreError::Io {
        context: "create the store directory",
        path: PathBuf::from("/data"),
        source: std::io::Error::from(std::io::ErrorKind::StorageFull),
    };
    assert!(io_full.is_full());
    assert!(!StoreError::Locked {
        path: PathBuf::from("/data")
    }
    .is_full());

    // A file in the way of the directory: an Io error naming the path.
    let dir = TestDir::new("blocked");
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file.join("store")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );

    // Garbage where the database should be.
    let dir = TestDir::new("corrupt");
    std::fs::write(dir.0.join(DB_FILE), vec![0xAB; 8192]).unwrap();
    let err = Store::open(&dir.0).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn a_failed_append_raises_nothing_and_the_store_recovers() {
    let dir = TestDir::new("full");
    let store = Store::open(&dir.0).unwrap();
    store.append(&tx(0x100, 10)).unwrap();
    // Simulate a full disk: cap the file at its current size.
    let pages: i64 = lock(&store.inner.writer)
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .unwrap();
    lock(&store.inner.writer)
        .execute_batch(&format!("PRAGMA max_page_count = {pages}"))
        .unwrap();
    let big: Vec<Append> = vec![
        Append::Events(
            (0..200)
                .map(|i| NewEvent {
                    payload: vec![b'x'; 4096],
                    ..event(0x200, i)
                })
                .collect(),
        ),
        Append::Commit {
            end_lsn: 0x201,
            form_schemas: Vec::new(),
        },
    ];
    let err = store.append(&big).unwrap_err();
    assert!(err.is_full(), "{err:?}");
    assert!(err.to_string().contains("free space"), "{err}");
    // Nothing of the failed batch is visible or acknowledged.
    assert_eq!(store.durable_lsn().unwrap(), Some(0x101));
    assert_eq!(store.last_seq().unwrap(), 10);
    assert_eq!(count_events(&store), 10);
    // Space is freed: the same batch goes through.
    lock(&store.inner.writer)
        .execute_batch("PRAGMA max_page_count = 1073741823")
        .unwrap();
    assert_eq!(store.append(&big).unwrap(), Some(0x201));
    assert_eq!(count_events(&store), 210);
}

#[test]
fn throughput_smoke() {
    let dir = TestDir::new("throughput");
    let store = Store::open(&dir.0).unwrap();
    let payload = vec![b'x'; 300];
    let batches: Vec<Vec<Append>> = (0..100u64)
        .map(|b| {
            let lsn = 0x1_0000 + b * 0x100;
            let events = (0..1_000u32)
                .map(|i| NewEvent {
                    payload: payload.clone(),
                    ..event(lsn, i)
                })
                .collect();
            vec![
                Append::Events(events),
                Append::Commit {
                    end_lsn: lsn + 1,
                    form_schemas: Vec::new(),
                },
            ]
        })
        .collect();
    let started = Instant::now();
    for batch in &batches {
        store.append(batch).unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(store.last_seq().unwrap(), 100_000);
    eprintln!(
        "store append: 100000 events in 100 batches in {elapsed:?} = {:.0} events/s",
        100_000.0 / elapsed.as_secs_f64()
    );
}

#[test]
fn a_resync_is_recorded_and_moves_the_durable_lsn_to_the_new_slot() {
    let dir = TestDir::new("resync");
    {
        let store = Store::open(&dir.0).unwrap();
        store.append(&tx(0x100, 2)).unwrap();
        assert_eq!(store.durable_lsn().unwrap(), Some(0x101));
        store
            .record_resync("s", "slot lost: it is invalidated", Some(0x101), 0x9000)
            .unwrap();
        assert_eq!(
            store.durable_lsn().unwrap(),
            Some(0x9000),
            "the new slot's start is accounted for"
        );
        assert_eq!(count_events(&store), 2, "stored events are kept");
        // A later, lower progress report does not move it back.
        store.append(&[Append::Progress { lsn: 0x200 }]).unwrap();
        assert_eq!(store.durable_lsn().unwrap(), Some(0x9000));
    }
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.durable_lsn().unwrap(), Some(0x9000), "persisted");
    let resyncs = store.resyncs().unwrap();
    assert_eq!(resyncs.len(), 1);
    assert_eq!(resyncs[0].slot, "s");
    assert_eq!(resyncs[0].old_durable_lsn, Some(0x101));
    assert_eq!(resyncs[0].new_start_lsn, 0x9000);
    assert!(resyncs[0].reason.contains("invalidated"));
    let view = inspect::StoreView::open(&dir.0).unwrap();
    assert_eq!(view.resyncs().unwrap(), resyncs, "status sees it too");
}
