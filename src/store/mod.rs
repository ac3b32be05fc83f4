//! The durable event log and per-subscription delivery state, in one SQLite
//! file (`<store.path>/walhook.db`, WAL mode) guarded by an exclusive lock on
//! `<store.path>/walhook.lock`.
//!
//! # Progress tracking: when Postgres may forget a change
//!
//! The LSN walhook reports to Postgres as flushed is **only ever a value
//! returned by [`Store::append`]**, and `append` returns it only after the
//! SQLite transaction that holds every event up to that LSN has committed on
//! a connection with `synchronous = FULL`, i.e. after the WAL file was
//! fsynced. With `NORMAL`, a power loss may roll back a commit we already
//! acknowledged, and Postgres would never send those rows again (silent
//! loss), hence `FULL` on the append connection.
//!
//! * The durable LSN only moves forward: a lower `Commit`/`Progress` than the
//!   stored one is ignored, in memory and in SQL (`max(value, new)`).
//! * The source appends a transaction's events first and its `Commit {
//!   end_lsn }` last (possibly across several `append` calls for a huge
//!   transaction), so the durable LSN never points inside a transaction
//!   whose events are not all stored. `Progress` is for LSNs that carry no
//!   events (idle keepalives, heartbeats) and must only be sent when no
//!   transaction is open.
//! * After a restart Postgres re-sends everything after the confirmed LSN,
//!   which may include events that were stored but not yet acknowledged.
//!   Event ids are stable (`<commit lsn>-<index>`) and `UNIQUE`, and appends
//!   use `INSERT OR IGNORE`, so a re-sent event leaves no duplicate row.
//! * One `append` call is one transaction (group commit): the caller batches
//!   events (bounded in bytes) to pay one fsync per batch, not per event.
//!
//! # Delivery state durability
//!
//! Cursors, attempts and dead letters are written on a second connection
//! with `synchronous = NORMAL`. That is safe: a power loss can only roll back
//! the newest state commits (a cursor moves back, so those events are
//! delivered again, which at-least-once allows), and any state commit that
//! precedes a later `FULL` append is durable with it because the WAL is a
//! single append-only file that the append's fsync covers. This keeps the
//! per-delivery `advance` from paying an fsync each.
//!
//! # Schema (version 4, `PRAGMA user_version`)
//!
//! * `events(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE,
//!   commit_lsn, op, form, payload BLOB, stored_at_ms, row_key)`: the log
//!   (`row_key`, added in version 2, is the row key as text for formats that
//!   address rows by key; NULL for events without a row or from version 1). `seq` is
//!   strictly increasing and never reused, even after pruning
//!   (AUTOINCREMENT), so a cursor is just "the last seq handled". Seqs may
//!   have gaps (an ignored re-append consumes one), so counts come from
//!   `count(*)`, never from subtracting seqs.
//! * `meta(key, value)`: `durable_lsn`.
//! * `resyncs(at_ms, slot, reason, old_durable_lsn, new_start_lsn)`
//!   (version 4): each slot replaced by `walhook run --resync`, i.e. each gap
//!   in the captured changes.
//! * `form_schemas(form, fields_json, updated_at_ms)`: the last known fields
//!   of each form, to detect `form_update` across restarts.
//! * `subscriptions(name, cursor, attempts, next_attempt_at_ms, last_error,
//!   disabled_reason, delivered, dead_lettered, ...)`: one row per
//!   subscription; a restart keeps its place.
//! * `dead_letters(subscription, seq, event_id, op, form, commit_lsn,
//!   payload, attempts, status, reason, body_excerpt, at_ms, row_key, ...)`: keeps a
//!   copy of the event so retention never drops a dead letter.
//! * `attempts(subscription, event_id, op, form, events, attempt, outcome,
//!   status, duration_ms, latency_ms, error, at_ms)` (version 3): the
//!   delivery history, one row per HTTP attempt (a batch is one row naming
//!   its first event), written with the delivery state (see [`history`]) and
//!   pruned after `store.history_retention`. `subscriptions.paused_at_ms`
//!   (version 3) is set while the admin API has paused the subscription.
//!
//! LSNs are `u64` in Rust and stored as SQLite `INTEGER` (`i64`) with an `as`
//! cast: real LSNs stay far below 2^63, so the order is preserved.
//!
//! # Concurrency
//!
//! [`Store`] is a cheap `Clone` (`Arc`). It holds two connections: the
//! writer (appends only) and the state connection (delivery state and all
//! reads). WAL mode lets readers run beside the writer; the two writers
//! serialise on SQLite's write lock with a busy timeout, and every write
//! transaction begins `IMMEDIATE` so it waits instead of failing. Calls
//! block: async callers wrap them in `spawn_blocking`.

mod error;
pub mod history;
pub mod inspect;
pub mod queue;
pub mod replay;
mod schema;
#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use history::{AttemptFilter, AttemptOutcome, AttemptRecord, StoredAttempt};

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

/// The database file inside the store directory.
pub const DB_FILE: &str = "walhook.db";
/// The lock file inside the store directory; held exclusively while open.
pub const LOCK_FILE: &str = "walhook.lock";

/// Rows deleted per prune transaction: small enough that an append waiting
/// for the write lock is delayed by milliseconds, large enough to keep up.
const PRUNE_CHUNK: i64 = 10_000;

/// `read_after` stops adding events once their payloads reach this many
/// bytes (guarantee 6: a run of 10 MB rows must not load `limit` of them).
pub const READ_MAX_BYTES: usize = 16 * 1024 * 1024;

/// With AUTOINCREMENT, a re-sent event that `OR IGNORE` drops still consumes
/// a seq, so seqs have gaps after a restart's re-sent tail. A `NOT EXISTS`
/// pre-check would avoid them but costs a third of the append rate; readers
/// only rely on seqs increasing, and `backlog` counts rows.
const INSERT_EVENT: &str =
    "INSERT OR IGNORE INTO events (id, commit_lsn, op, form, payload, stored_at_ms, row_key)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const UPSERT_FORM: &str = "INSERT INTO form_schemas (form, fields_json, updated_at_ms) VALUES (?1, ?2, ?3)
     ON CONFLICT (form) DO UPDATE SET fields_json = excluded.fields_json, updated_at_ms = excluded.updated_at_ms";
const RAISE_DURABLE_LSN: &str = "INSERT INTO meta (key, value) VALUES ('durable_lsn', ?1)
     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)";
const SELECT_EVENTS_AFTER: &str =
    "SELECT seq, id, op, form, commit_lsn, payload, stored_at_ms, row_key FROM events
     WHERE seq > ?1 ORDER BY seq LIMIT ?2";
/// Events a subscription still has to pass: captured ones and its own re-queued copies.
pub(crate) const COUNT_BACKLOG: &str =
    "SELECT count(*) FROM events WHERE seq > ?1 AND for_subscription IN ('', ?2)";
const SELECT_EVENTS_FOR: &str =
    "SELECT seq, id, op, form, commit_lsn, payload, stored_at_ms, row_key FROM events
     WHERE seq > ?1 AND for_subscription IN ('', ?3) ORDER BY seq LIMIT ?2";
const SELECT_SUBSCRIPTION: &str = "SELECT name, cursor, attempts, next_attempt_at_ms, last_error, disabled_reason, delivered, dead_lettered,
            paused_at_ms IS NOT NULL
     FROM subscriptions WHERE name = ?1";
const SELECT_SUBSCRIPTIONS: &str = "SELECT name, cursor, attempts, next_attempt_at_ms, last_error, disabled_reason, delivered, dead_lettered,
            paused_at_ms IS NOT NULL
     FROM subscriptions ORDER BY name";
const SELECT_LAST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM events";
const SELECT_DEAD_LETTERS: &str =
    "SELECT subscription, seq, event_id, attempts, status, reason, body_excerpt, at_ms,
            op, form, commit_lsn, payload, event_stored_at_ms, row_key
     FROM dead_letters WHERE subscription = ?1 ORDER BY id LIMIT ?2";

/// First wait before retrying a write that found the store full.
const FULL_FIRST_RETRY: Duration = Duration::from_millis(500);

/// Longest wait between retries of a write that found the store full, so
/// space freed by an operator is noticed within this long.
const FULL_MAX_RETRY: Duration = Duration::from_secs(30);

/// How long to wait before retrying a write that failed with a full store
/// ([`StoreError::is_full`]) for the `failures`-th time in a row: doubling
/// from 500 ms up to 30 s. A full disk pauses walhook; it does not stop it.
pub fn full_retry_delay(failures: u32) -> Duration {
    FULL_FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(FULL_MAX_RETRY)
}

/// One event to append; `payload` is the event JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Stable id (`<16 hex commit LSN>-<index>`); re-appends are ignored.
    pub id: String,
    /// Commit LSN of the transaction the event belongs to.
    pub commit_lsn: u64,
    /// Operation (`data_create`, ...).
    pub op: String,
    /// Form name.
    pub form: String,
    /// The event JSON.
    pub payload: Vec<u8>,
    /// The row key as text (key field values joined by `:`); None for events
    /// without a row (truncate, form_update).
    pub key: Option<String>,
}

/// The current fields of a form (JSON), replacing the previous ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormSchema {
    /// Form name.
    pub form: String,
    /// Fields as JSON.
    pub fields_json: String,
}

/// One item of an append batch; the batch is one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Append {
    /// Events, stored in order.
    Events(Vec<NewEvent>),
    /// A transaction ended; everything up to `end_lsn` is in this batch or earlier.
    Commit {
        /// The commit's end LSN, the value Postgres' own apply worker acknowledges.
        end_lsn: u64,
        /// Form schemas the transaction changed. They are stored with the
        /// commit, never before it: event indexes depend on them (a
        /// `form_update` event takes an index), so a transaction cut off and
        /// re-sent must be mapped against the schema from before it.
        form_schemas: Vec<FormSchema>,
    },
    /// An LSN with no events behind it (idle keepalive, heartbeat); only
    /// valid while no transaction is open.
    Progress {
        /// The LSN that may be acknowledged.
        lsn: u64,
    },
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the log (monotonic, never reused).
    pub seq: i64,
    /// Stable event id.
    pub id: String,
    /// Operation.
    pub op: String,
    /// Form name.
    pub form: String,
    /// Commit LSN of its transaction.
    pub commit_lsn: u64,
    /// The event JSON.
    pub payload: Vec<u8>,
    /// When it was appended (ms since the Unix epoch).
    pub stored_at_ms: i64,
    /// The row key as text ([`NewEvent::key`]); None for events without a row
    /// and for events stored by a walhook that did not record keys.
    pub key: Option<String>,
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events appended from now on.
    End,
    /// Every event still retained.
    Earliest,
}

/// The delivery state of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    /// Subscription name.
    pub name: String,
    /// The last seq delivered or dead-lettered.
    pub cursor: i64,
    /// Failed attempts for the event after the cursor.
    pub attempts: u32,
    /// When the next attempt is due (ms since the Unix epoch).
    pub next_attempt_at_ms: Option<i64>,
    /// The last failure (cleared by a success).
    pub last_error: Option<String>,
    /// Why the endpoint disabled the subscription (410 Gone), if it did.
    pub disabled_reason: Option<String>,
    /// Events delivered, ever.
    pub delivered: u64,
    /// Events dead-lettered, ever.
    pub dead_lettered: u64,
    /// Paused through the admin API (survives restarts until resumed).
    pub paused: bool,
}

/// An event that exhausted its attempts for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Subscription name.
    pub subscription: String,
    /// The event's seq in the log.
    pub seq: i64,
    /// The event id.
    pub event_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status, if a response came back.
    pub status: Option<u16>,
    /// Why it failed.
    pub reason: String,
    /// The start of the last response body.
    pub body_excerpt: Option<String>,
    /// When it was dead-lettered (ms since the Unix epoch).
    pub at_ms: i64,
}

/// Size and progress of the store, for metrics and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Events retained.
    pub events: u64,
    /// Highest seq ever appended (0 if none).
    pub last_seq: i64,
    /// The LSN that may be acknowledged to Postgres.
    pub durable_lsn: Option<u64>,
    /// Bytes on disk (database plus its WAL file).
    pub file_bytes: u64,
}

/// A slot replaced by `walhook run --resync`: the changes between
/// `old_durable_lsn` and `new_start_lsn` were never captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    /// When it happened (ms since the Unix epoch).
    pub at_ms: i64,
    /// The slot's name.
    pub slot: String,
    /// What was wrong with the old slot.
    pub reason: String,
    /// The store's durable LSN before the resync; None for an empty store.
    pub old_durable_lsn: Option<u64>,
    /// Where the new slot starts.
    pub new_start_lsn: u64,
}

/// The embedded store; see the module docs for the acknowledgement rule.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db_path: PathBuf,
    /// Appends only, `synchronous = FULL`.
    writer: Mutex<Connection>,
    /// Delivery state and reads, `synchronous = NORMAL`.
    state: Mutex<Connection>,
    /// Durable LSN; 0 means never set (LSN 0 is Postgres' InvalidXLogRecPtr).
    /// Written only under the writer lock after a commit.
    durable_lsn: AtomicU64,
    /// Highest seq committed.
    last_seq: AtomicI64,
    /// Held for the life of the store; declared last so the connections
    /// close (and checkpoint) before the lock is released.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and locks it exclusively.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            context: "create the store directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_err = |context: &'static str| {
            let path = lock_path.clone();
            move |source| StoreError::Io {
                context,
                path,
                source,
            }
        };
        let mut lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(lock_err("open the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(TryLockError::Error(source)) => return Err(lock_err("lock")(source)),
        }
        // The pid only helps an operator find the holder; the lock is what counts.
        if let Err(error) = lock
            .set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
        {
            tracing::warn!(path = %lock_path.display(), error = %error, "cannot write pid into the store lock file");
        }

        let db_path = dir.join(DB_FILE);
        let mut writer = schema::connect(&db_path, schema::Sync::Full)?;
        schema::migrate(&mut writer, &db_path)?;
        let state = schema::connect(&db_path, schema::Sync::Normal)?;

        let (durable, last_seq) = {
            let err = StoreError::sqlite(&db_path, "open: read progress");
            let durable: Option<i64> = writer
                .query_row(
                    "SELECT value FROM meta WHERE key = 'durable_lsn'",
                    [],
                    |row| row.get(0),
                )
                .optional()
                .map_err(&err)?;
            let last_seq: i64 = writer
                .query_row(SELECT_LAST_SEQ, [], |row| row.get(0))
                .map_err(&err)?;
            (durable, last_seq)
        };
        let durable = durable.map_or(0, lsn_from_sql);
        tracing::info!(path = %db_path.display(), durable_lsn = durable, last_seq, "store opened");

        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db_path,
                writer: Mutex::new(writer),
                state: Mutex::new(state),
                durable_lsn: AtomicU64::new(durable),
                last_seq: AtomicI64::new(last_seq),
                _lock: lock,
            }),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends a batch in one fsynced transaction and returns the durable
    /// LSN after it, the only value that may be acknowledged to Postgres.
    pub fn append(&self, items: &[Append]) -> Result<Option<u64>, StoreError> {
        self.append_counted(items).map(|(lsn, _)| lsn)
    }

    /// Like [`Store::append`], also returning how many events were new
    /// (re-sent ones are ignored by their unique id and not counted).
    pub fn append_counted(&self, items: &[Append]) -> Result<(Option<u64>, u64), StoreError> {
        let err = self.err("append");
        let now = now_ms();
        let mut conn = lock(&self.inner.writer);
        let current = self.inner.durable_lsn.load(Ordering::Acquire);
        if items.is_empty() {
            return Ok((lsn_option(current), 0));
        }
        let mut inserted_events = 0u64;
        let mut lsn = current;
        let mut last_seq = None;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        {
            let mut insert = tx.prepare_cached(INSERT_EVENT).map_err(&err)?;
            for item in items {
                match item {
                    Append::Events(events) => {
                        for event in events {
                            let inserted = insert
                                .execute(params![
                                    event.id,
                                    lsn_to_sql(event.commit_lsn),
                                    event.op,
                                    event.form,
                                    event.payload,
                                    now,
                                    event.key
                                ])
                                .map_err(&err)?;
                            if inserted == 1 {
                                last_seq = Some(tx.last_insert_rowid());
                                inserted_events += 1;
                            }
                        }
                    }
                    Append::Commit {
                        end_lsn,
                        form_schemas,
                    } => {
                        for schema in form_schemas {
                            tx.prepare_cached(UPSERT_FORM)
                                .and_then(|mut stmt| {
                                    stmt.execute(params![schema.form, schema.fields_json, now])
                                })
                                .map_err(&err)?;
                        }
                        lsn = lsn.max(*end_lsn);
                    }
                    Append::Progress { lsn: l } => {
                        lsn = lsn.max(*l);
                    }
                }
            }
        }
        if lsn > current {
            tx.prepare_cached(RAISE_DURABLE_LSN)
                .and_then(|mut stmt| stmt.execute(params![lsn_to_sql(lsn)]))
                .map_err(&err)?;
        }
        let commits = items.iter().any(|i| matches!(i, Append::Commit { .. }));
        if commits && crate::failpoint::failpoint!("before_store_commit") {
            return Err(StoreError::simulated_full(&self.inner.db_path, "append"));
        }
        if crate::failpoint::failpoint!("store_append") {
            // Dropping `tx` rolls the batch back, as a failed commit does.
            return Err(StoreError::simulated_full(&self.inner.db_path, "append"));
        }
        tx.commit().map_err(&err)?;
        // Published only now that the commit is fsynced; still under the
        // writer lock, so concurrent appends cannot publish out of order.
        if let Some(seq) = last_seq {
            self.inner.last_seq.fetch_max(seq, Ordering::AcqRel);
        }
        self.inner.durable_lsn.store(lsn, Ordering::Release);
        Ok((lsn_option(lsn), inserted_events))
    }

    /// Records a resync and raises the durable LSN to the new slot's start,
    /// in one fsynced transaction: from there on, the new slot's position is
    /// what the store accounts for (the gap before it is in `resyncs`).
    pub fn record_resync(
        &self,
        slot: &str,
        reason: &str,
        old_durable_lsn: Option<u64>,
        new_start_lsn: u64,
    ) -> Result<(), StoreError> {
        let err = self.err("record a resync");
        let mut conn = lock(&self.inner.writer);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.execute(
            "INSERT INTO resyncs (at_ms, slot, reason, old_durable_lsn, new_start_lsn)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                now_ms(),
                slot,
                reason,
                old_durable_lsn.map(lsn_to_sql),
                lsn_to_sql(new_start_lsn)
            ],
        )
        .map_err(&err)?;
        tx.prepare_cached(RAISE_DURABLE_LSN)
            .and_then(|mut stmt| stmt.execute(params![lsn_to_sql(new_start_lsn)]))
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        self.inner
            .durable_lsn
            .fetch_max(new_start_lsn, Ordering::AcqRel);
        Ok(())
    }

    /// Every recorded resync, oldest first.
    pub fn resyncs(&self) -> Result<Vec<Resync>, StoreError> {
        let conn = lock(&self.inner.state);
        query_resyncs(&conn).map_err(self.err("read resyncs"))
    }

    /// The LSN that may be acknowledged to Postgres (None before the first).
    pub fn durable_lsn(&self) -> Result<Option<u64>, StoreError> {
        Ok(lsn_option(self.inner.durable_lsn.load(Ordering::Acquire)))
    }

    /// Highest seq committed to the log (0 if none).
    pub fn last_seq(&self) -> Result<i64, StoreError> {
        Ok(self.inner.last_seq.load(Ordering::Acquire))
    }

    /// The last stored fields (JSON) of every form.
    pub fn form_schemas(&self) -> Result<HashMap<String, String>, StoreError> {
        let err = self.err("read form schemas");
        let conn = lock(&self.inner.state);
        let mut stmt = conn
            .prepare_cached("SELECT form, fields_json FROM form_schemas")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Creates the subscription's cursor if missing (at the log's end or at
    /// its start); an existing row is returned unchanged.
    pub fn ensure_subscription(
        &self,
        name: &str,
        start: Start,
    ) -> Result<SubscriptionState, StoreError> {
        let err = self.err("create subscription");
        let mut conn = lock(&self.inner.state);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        if let Some(state) = query_subscription(&tx, name).map_err(&err)? {
            return Ok(state);
        }
        let cursor: i64 = match start {
            Start::End => tx
                .query_row(SELECT_LAST_SEQ, [], |row| row.get(0))
                .map_err(&err)?,
            Start::Earliest => 0,
        };
        let now = now_ms();
        tx.execute(
            "INSERT INTO subscriptions (name, cursor, created_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?3)",
            params![name, cursor, now],
        )
        .map_err(&err)?;
        let state = query_subscription(&tx, name)
            .map_err(&err)?
            .ok_or_else(|| err(rusqlite::Error::QueryReturnedNoRows))?;
        tx.commit().map_err(&err)?;
        tracing::info!(subscription = name, cursor, "subscription cursor created");
        Ok(state)
    }

    /// The state of one subscription, if it exists.
    pub fn subscription(&self, name: &str) -> Result<Option<SubscriptionState>, StoreError> {
        let conn = lock(&self.inner.state);
        query_subscription(&conn, name).map_err(self.err("read subscription"))
    }

    /// The state of every subscription, by name.
    pub fn subscriptions(&self) -> Result<Vec<SubscriptionState>, StoreError> {
        let err = self.err("read subscriptions");
        let conn = lock(&self.inner.state);
        let mut stmt = conn.prepare_cached(SELECT_SUBSCRIPTIONS).map_err(&err)?;
        let rows = stmt.query_map([], subscription_row).map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Events with `seq > after_seq` in order: at most `limit`, and fewer
    /// once their payloads reach [`READ_MAX_BYTES`] (never fewer than one
    /// if any exists). An empty result means the reader is caught up.
    pub fn read_after(&self, after_seq: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(SELECT_EVENTS_AFTER, after_seq, limit, None)
    }

    /// Like [`Self::read_after`], for one subscription: captured events plus
    /// the copies `walhook replay --dead` re-queued for it (and not those
    /// re-queued for others).
    pub fn read_for(
        &self,
        subscription: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(SELECT_EVENTS_FOR, after_seq, limit, Some(subscription))
    }

    fn read(
        &self,
        sql: &str,
        after_seq: i64,
        limit: usize,
        subscription: Option<&str>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let err = self.err("read events");
        let conn = lock(&self.inner.state);
        let mut stmt = conn.prepare_cached(sql).map_err(&err)?;
        let mut rows = match subscription {
            Some(name) => stmt.query(params![after_seq, sql_count(limit), name]),
            None => stmt.query(params![after_seq, sql_count(limit)]),
        }
        .map_err(&err)?;
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(&err)? {
            let event = event_row(row).map_err(&err)?;
            bytes = bytes.saturating_add(event.payload.len());
            events.push(event);
            if bytes >= READ_MAX_BYTES {
                break;
            }
        }
        Ok(events)
    }

    /// Records a success up to `seq`: cursor = max(cursor, seq), retry state
    /// cleared, `delivered` increased.
    pub fn advance(&self, name: &str, seq: i64, delivered: u64) -> Result<(), StoreError> {
        self.advance_with(name, seq, delivered, &[])
    }

    /// Like [`Store::advance`], writing `attempts` to the delivery history
    /// in the same transaction.
    pub fn advance_with(
        &self,
        name: &str,
        seq: i64,
        delivered: u64,
        attempts: &[AttemptRecord],
    ) -> Result<(), StoreError> {
        self.update_subscription_with_history(
            "advance cursor",
            name,
            attempts,
            "UPDATE subscriptions SET cursor = max(cursor, ?2), attempts = 0,
                 next_attempt_at_ms = NULL, last_error = NULL,
                 delivered = delivered + ?3, updated_at_ms = ?4
             WHERE name = ?1",
            params![name, seq, sql_u64(delivered), now_ms()],
        )
    }

    /// Records a failed attempt on the event after the cursor.
    pub fn record_failure(
        &self,
        name: &str,
        attempts: u32,
        next_attempt_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.record_failure_with(name, attempts, next_attempt_at_ms, error, &[])
    }

    /// Like [`Store::record_failure`], writing `history` to the delivery
    /// history in the same transaction.
    pub fn record_failure_with(
        &self,
        name: &str,
        attempts: u32,
        next_attempt_at_ms: i64,
        error: &str,
        history: &[AttemptRecord],
    ) -> Result<(), StoreError> {
        self.update_subscription_with_history(
            "record failure",
            name,
            history,
            "UPDATE subscriptions SET attempts = ?2, next_attempt_at_ms = ?3,
                 last_error = ?4, updated_at_ms = ?5
             WHERE name = ?1",
            params![name, attempts, next_attempt_at_ms, error, now_ms()],
        )
    }

    /// One delivery-state write: `history` appended to the attempt log and
    /// `update` (of subscription `name`'s row, which must exist) in one
    /// transaction. The `store_state_write` failpoint simulates a full disk.
    fn update_subscription_with_history(
        &self,
        what: &'static str,
        name: &str,
        history: &[AttemptRecord],
        update: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), StoreError> {
        if crate::failpoint::failpoint!("store_state_write") {
            return Err(StoreError::simulated_full(&self.inner.db_path, what));
        }
        let err = self.err(what);
        let mut conn = lock(&self.inner.state);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        history::insert(&tx, name, history).map_err(&err)?;
        let changed = tx
            .prepare_cached(update)
            .and_then(|mut stmt| stmt.execute(params))
            .map_err(&err)?;
        expect_row(changed, name)?;
        tx.commit().map_err(&err)
    }

    /// In one transaction: keeps a copy of `event` as a dead letter, moves
    /// the cursor past it, resets the retry state (`last_error` = `reason`)
    /// and counts it in `dead_lettered`.
    pub fn dead_letter(
        &self,
        name: &str,
        event: &StoredEvent,
        attempts: u32,
        status: Option<u16>,
        reason: &str,
        body_excerpt: Option<&str>,
    ) -> Result<(), StoreError> {
        self.dead_letter_at(
            name,
            event,
            attempts,
            status,
            reason,
            body_excerpt,
            event.seq,
        )
    }

    /// Like [`Store::dead_letter`], but leaves the cursor where it is: for
    /// `ordering = "key"` lanes, which finish events out of seq order and move
    /// the cursor only to their low watermark (with [`Store::advance`]).
    pub fn dead_letter_keep_cursor(
        &self,
        name: &str,
        event: &StoredEvent,
        attempts: u32,
        status: Option<u16>,
        reason: &str,
        body_excerpt: Option<&str>,
    ) -> Result<(), StoreError> {
        self.dead_letter_at(
            name,
            event,
            attempts,
            status,
            reason,
            body_excerpt,
            i64::MIN,
        )
    }

    /// Dead-letters `event` and moves the cursor to at least `cursor_to`.
    #[allow(clippy::too_many_arguments)]
    fn dead_letter_at(
        &self,
        name: &str,
        event: &StoredEvent,
        attempts: u32,
        status: Option<u16>,
        reason: &str,
        body_excerpt: Option<&str>,
        cursor_to: i64,
    ) -> Result<(), StoreError> {
        if crate::failpoint::failpoint!("store_state_write") {
            return Err(StoreError::simulated_full(
                &self.inner.db_path,
                "dead-letter event",
            ));
        }
        let err = self.err("dead-letter event");
        let now = now_ms();
        let mut conn = lock(&self.inner.state);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let changed = tx
            .prepare_cached(
                "UPDATE subscriptions SET cursor = max(cursor, ?2), attempts = 0,
                     next_attempt_at_ms = NULL, last_error = ?3,
                     dead_lettered = dead_lettered + 1, updated_at_ms = ?4
                 WHERE name = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![name, cursor_to, reason, now]))
            .map_err(&err)?;
        expect_row(changed, name)?;
        tx.prepare_cached(
            "INSERT INTO dead_letters (subscription, seq, event_id, op, form, commit_lsn, payload,
                 event_stored_at_ms, attempts, status, reason, body_excerpt, at_ms, row_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                name,
                event.seq,
                event.id,
                event.op,
                event.form,
                lsn_to_sql(event.commit_lsn),
                event.payload,
                event.stored_at_ms,
                attempts,
                status,
                reason,
                body_excerpt,
                now,
                event.key
            ])
        })
        .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Up to `limit` dead letters of a subscription, oldest first.
    pub fn dead_letters(&self, name: &str, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .dead_letter_events(name, limit)?
            .into_iter()
            .map(|(letter, _)| letter)
            .collect())
    }

    /// Like [`Store::dead_letters`], with the kept copy of each event (for replay).
    pub fn dead_letter_events(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<(DeadLetter, StoredEvent)>, StoreError> {
        let err = self.err("read dead letters");
        let conn = lock(&self.inner.state);
        let mut stmt = conn.prepare_cached(SELECT_DEAD_LETTERS).map_err(&err)?;
        let rows = stmt
            .query_map(params![name, sql_count(limit)], dead_letter_row)
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// How many dead letters the subscription has.
    pub fn dead_letter_count(&self, name: &str) -> Result<u64, StoreError> {
        let conn = lock(&self.inner.state);
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM dead_letters WHERE subscription = ?1")
            .and_then(|mut stmt| stmt.query_row([name], |row| row.get(0)))
            .map_err(self.err("count dead letters"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Disables the subscription with a reason (410 Gone), or re-enables it with `None`.
    pub fn set_disabled(&self, name: &str, reason: Option<&str>) -> Result<(), StoreError> {
        let conn = lock(&self.inner.state);
        let changed = conn
            .prepare_cached(
                "UPDATE subscriptions SET disabled_reason = ?2, updated_at_ms = ?3 WHERE name = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![name, reason, now_ms()]))
            .map_err(self.err("set disabled"))?;
        expect_row(changed, name)
    }

    /// Events the subscription has not handled yet (seq > cursor).
    pub fn backlog(&self, name: &str) -> Result<u64, StoreError> {
        let err = self.err("count backlog");
        let conn = lock(&self.inner.state);
        let cursor: Option<i64> = conn
            .prepare_cached("SELECT cursor FROM subscriptions WHERE name = ?1")
            .and_then(|mut stmt| stmt.query_row([name], |row| row.get(0)).optional())
            .map_err(&err)?;
        let Some(cursor) = cursor else {
            return Err(StoreError::UnknownSubscription {
                name: name.to_owned(),
            });
        };
        let count: i64 = conn
            .prepare_cached(COUNT_BACKLOG)
            .and_then(|mut stmt| stmt.query_row(params![cursor, name], |row| row.get(0)))
            .map_err(&err)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes events stored before `now_ms - retention` that every listed
    /// (active) subscription has handled, in chunks of `PRUNE_CHUNK` (10k) rows
    /// per transaction so appends are not stalled. Subscriptions not listed
    /// (or without a row) do not hold events back. The newest event is
    /// always kept. Returns the number of rows deleted.
    pub fn prune(
        &self,
        retention: Duration,
        now_ms: i64,
        keep_subscriptions: &[String],
    ) -> Result<u64, StoreError> {
        let err = self.err("prune events");
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention_ms);
        let bound = {
            let conn = lock(&self.inner.state);
            let last_seq: i64 = conn
                .query_row(SELECT_LAST_SEQ, [], |row| row.get(0))
                .map_err(&err)?;
            let mut bound = last_seq.saturating_sub(1);
            let mut stmt = conn
                .prepare_cached("SELECT cursor FROM subscriptions WHERE name = ?1")
                .map_err(&err)?;
            for name in keep_subscriptions {
                let cursor: Option<i64> = stmt
                    .query_row([name], |row| row.get(0))
                    .optional()
                    .map_err(&err)?;
                if let Some(cursor) = cursor {
                    bound = bound.min(cursor);
                }
            }
            bound
        };
        let mut total = 0u64;
        loop {
            // Re-lock per chunk so delivery calls interleave with a long prune.
            let conn = lock(&self.inner.state);
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM events WHERE seq IN (
                         SELECT seq FROM events WHERE seq <= ?1 AND stored_at_ms < ?2
                         ORDER BY seq LIMIT ?3)",
                )
                .and_then(|mut stmt| stmt.execute(params![bound, cutoff, PRUNE_CHUNK]))
                .map_err(&err)?;
            drop(conn);
            total += deleted as u64;
            if (deleted as i64) < PRUNE_CHUNK {
                break;
            }
        }
        if total > 0 {
            tracing::debug!(deleted = total, bound, "store pruned");
        }
        Ok(total)
    }

    /// Counts and sizes for metrics and `status`.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let events: i64 = {
            let conn = lock(&self.inner.state);
            conn.query_row("SELECT count(*) FROM events", [], |row| row.get(0))
                .map_err(self.err("count events"))?
        };
        let mut file_bytes = 0u64;
        let wal_path = self.inner.dir.join(format!("{DB_FILE}-wal"));
        for path in [&self.inner.db_path, &wal_path] {
            match std::fs::metadata(path) {
                Ok(meta) => file_bytes += meta.len(),
                Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        context: "read the size of",
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(StoreStats {
            events: u64::try_from(events).unwrap_or(0),
            last_seq: self.last_seq()?,
            durable_lsn: self.durable_lsn()?,
            file_bytes,
        })
    }

    fn err(&self, context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        StoreError::sqlite(&self.inner.db_path, context)
    }
}

/// Locks a connection; a panic elsewhere cannot leave a transaction open
/// (rusqlite rolls back on drop), so a poisoned mutex is still usable.
fn lock(mutex: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// LSNs are stored as INTEGER; real LSNs stay below 2^63 (see module docs).
fn lsn_to_sql(lsn: u64) -> i64 {
    lsn as i64
}

fn lsn_from_sql(value: i64) -> u64 {
    value as u64
}

fn lsn_option(lsn: u64) -> Option<u64> {
    (lsn != 0).then_some(lsn)
}

fn sql_count(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn expect_row(changed: usize, name: &str) -> Result<(), StoreError> {
    if changed == 0 {
        return Err(StoreError::UnknownSubscription {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn query_subscription(
    conn: &Connection,
    name: &str,
) -> rusqlite::Result<Option<SubscriptionState>> {
    conn.prepare_cached(SELECT_SUBSCRIPTION)?
        .query_row([name], subscription_row)
        .optional()
}

fn subscription_row(row: &Row<'_>) -> rusqlite::Result<SubscriptionState> {
    Ok(SubscriptionState {
        name: row.get(0)?,
        cursor: row.get(1)?,
        attempts: row.get(2)?,
        next_attempt_at_ms: row.get(3)?,
        last_error: row.get(4)?,
        disabled_reason: row.get(5)?,
        delivered: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
        dead_lettered: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
        paused: row.get(8)?,
    })
}

pub(crate) fn query_resyncs(conn: &Connection) -> rusqlite::Result<Vec<Resync>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, slot, reason, old_durable_lsn, new_start_lsn FROM resyncs ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(Resync {
            at_ms: row.get(0)?,
            slot: row.get(1)?,
            reason: row.get(2)?,
            old_durable_lsn: row.get::<_, Option<i64>>(3)?.map(lsn_from_sql),
            new_start_lsn: lsn_from_sql(row.get(4)?),
        })
    })?;
    rows.collect()
}

fn event_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get(0)?,
        id: row.get(1)?,
        op: row.get(2)?,
        form: row.get(3)?,
        commit_lsn: lsn_from_sql(row.get(4)?),
        payload: row.get(5)?,
        stored_at_ms: row.get(6)?,
        key: row.get(7)?,
    })
}

fn dead_letter_row(row: &Row<'_>) -> rusqlite::Result<(DeadLetter, StoredEvent)> {
    let letter = DeadLetter {
        subscription: row.get(0)?,
        seq: row.get(1)?,
        event_id: row.get(2)?,
        attempts: row.get(3)?,
        status: row.get(4)?,
        reason: row.get(5)?,
        body_excerpt: row.get(6)?,
        at_ms: row.get(7)?,
    };
    let event = StoredEvent {
        seq: letter.seq,
        id: letter.event_id.clone(),
        op: row.get(8)?,
        form: row.get(9)?,
        commit_lsn: lsn_from_sql(row.get(10)?),
        payload: row.get(11)?,
        stored_at_ms: row.get(12)?,
        key: row.get(13)?,
    };
    Ok((letter, event))
}
