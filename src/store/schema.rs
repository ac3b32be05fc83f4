//! Connection settings and the versioned schema (`PRAGMA user_version`).
//!
//! `MIGRATIONS[i]` takes a database from version `i` to `i + 1`; each runs in
//! its own transaction together with the `user_version` bump, so a crash in
//! the middle of an upgrade leaves the previous version intact. Never edit a
//! shipped migration: append a new one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// How long a statement waits for the other connection's write lock. Appends
/// and prune chunks hold it for milliseconds; a wait this long means a stuck
/// disk, which should surface as an error rather than hang forever.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound of the WAL file kept after a checkpoint (bytes), so a burst
/// does not leave a huge `-wal` file behind.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Migrations, oldest first; the schema version is `MIGRATIONS.len()`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    // An event is captured once (for_subscription '', requeue 0: re-sent
    // transactions are ignored by the unique key); `walhook replay --dead`
    // appends copies meant for one subscription, one per dead letter.
    "CREATE TABLE events (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT    NOT NULL,
        commit_lsn       INTEGER NOT NULL,
        op               TEXT    NOT NULL,
        form             TEXT    NOT NULL,
        payload          BLOB    NOT NULL,
        stored_at_ms     INTEGER NOT NULL,
        for_subscription TEXT    NOT NULL DEFAULT '',
        requeue          INTEGER NOT NULL DEFAULT 0,
        UNIQUE (id, for_subscription, requeue)
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE form_schemas (
        form          TEXT PRIMARY KEY,
        fields_json   TEXT    NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        name               TEXT PRIMARY KEY,
        cursor             INTEGER NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms INTEGER,
        last_error         TEXT,
        disabled_reason    TEXT,
        delivered          INTEGER NOT NULL DEFAULT 0,
        dead_lettered      INTEGER NOT NULL DEFAULT 0,
        created_at_ms      INTEGER NOT NULL,
        updated_at_ms      INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        subscription    TEXT    NOT NULL REFERENCES subscriptions(name) ON DELETE CASCADE,
        seq             INTEGER NOT NULL,
        event_id        TEXT    NOT NULL,
        op              TEXT    NOT NULL,
        form            TEXT    NOT NULL,
        commit_lsn      INTEGER NOT NULL,
        payload         BLOB    NOT NULL,
        event_stored_at_ms INTEGER NOT NULL,
        attempts        INTEGER NOT NULL,
        status          INTEGER,
        reason          TEXT    NOT NULL,
        body_excerpt    TEXT,
        at_ms           INTEGER NOT NULL
    );
    CREATE INDEX dead_letters_by_subscription ON dead_letters(subscription, id);",
    // 1 -> 2: replay requests, written by `walhook replay` beside a running
    // walhook (which holds the lock) and applied by it; and the row key
    // (`a:b` for composite keys) beside each event, for formats that address
    // rows by key (jiandaoyun `_id`); NULL for events without a row
    // (truncate, form_update) and for events stored by version 1.
    "CREATE TABLE replay_requests (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        subscription  TEXT    NOT NULL,
        since_ms      INTEGER,
        dead          INTEGER NOT NULL DEFAULT 0,
        created_at_ms INTEGER NOT NULL,
        applied_at_ms INTEGER,
        outcome       TEXT
    );
    CREATE INDEX events_by_stored_at ON events(stored_at_ms);
    ALTER TABLE events ADD COLUMN row_key TEXT;
    ALTER TABLE dead_letters ADD COLUMN row_key TEXT;",
    // 2 -> 3: the delivery history (one row per HTTP attempt, kept for
    // store.history_retention; pruned by time, hence the index on at_ms;
    // listed newest first per subscription), and the pause set through the
    // admin API, which survives restarts (NULL = not paused).
    "CREATE TABLE attempts (
        id           INTEGER PRIMARY KEY,
        subscription TEXT    NOT NULL,
        event_id     TEXT    NOT NULL,
        op           TEXT    NOT NULL,
        form         TEXT    NOT NULL,
        events       INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        outcome      TEXT    NOT NULL,
        status       INTEGER,
        duration_ms  INTEGER NOT NULL,
        latency_ms   INTEGER,
        error        TEXT,
        at_ms        INTEGER NOT NULL
    );
    CREATE INDEX attempts_by_time ON attempts(at_ms);
    CREATE INDEX attempts_by_subscription ON attempts(subscription, id);
    ALTER TABLE subscriptions ADD COLUMN paused_at_ms INTEGER;",
    // 3 -> 4: slots replaced by `walhook run --resync`: the changes between
    // the store's durable LSN at that moment (`old_durable_lsn`, NULL for an
    // empty store) and the new slot's start (`new_start_lsn`) were never
    // captured; `walhook status` shows the gap.
    "CREATE TABLE resyncs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms           INTEGER NOT NULL,
        slot            TEXT    NOT NULL,
        reason          TEXT    NOT NULL,
        old_durable_lsn INTEGER,
        new_start_lsn   INTEGER NOT NULL
    );",
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Durability level of a connection (see the module docs of `store`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Sync {
    /// fsync the WAL on every commit: events and the durable LSN.
    Full,
    /// fsync at checkpoints (and by any later FULL commit): delivery state.
    Normal,
}

/// Opens one connection to `path` with WAL, the given synchronous level,
/// foreign keys and a busy timeout.
pub(super) fn connect(path: &Path, sync: Sync) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still durable with synchronous=FULL, only slower and readers block
        // the writer; happens on filesystems without shared memory support.
        tracing::warn!(path = %path.display(), journal_mode = %mode, "store could not switch to WAL mode");
    }
    let sync = match sync {
        Sync::Full => "FULL",
        Sync::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync};
         PRAGMA foreign_keys = ON;
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
    ))
    .map_err(open_err)?;
    Ok(conn)
}

/// Brings the schema to `SCHEMA_VERSION`; refuses files from a newer build.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = StoreError::sqlite(path, "schema migration");
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(StoreError::sqlite(path, "schema version check"))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let Ok(start) = usize::try_from(found) else {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    };
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.execute_batch(sql).map_err(&err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        tracing::info!(path = %path.display(), version = version + 1, "store schema migrated");
    }
    Ok(())
}
