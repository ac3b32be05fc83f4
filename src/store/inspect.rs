//! A read-only look at a store another process may be writing.
//!
//! `walhook status` runs beside `walhook run`, which holds the store's lock;
//! reading needs no lock: SQLite in WAL mode lets a read-only connection see
//! the last committed state while the writer goes on.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{
    lsn_from_sql, lsn_option, query_resyncs, subscription_row, Resync, StoreError,
    SubscriptionState, COUNT_BACKLOG, DB_FILE, SELECT_SUBSCRIPTIONS,
};

/// The schema version that added the `resyncs` table.
const RESYNCS_SINCE_VERSION: i64 = 4;

/// Opens the database of the store at `dir` with `flags`, without the
/// store's lock (for commands that run beside `walhook run`).
pub(super) fn open_unlocked(
    dir: &Path,
    flags: OpenFlags,
) -> Result<(Connection, PathBuf), StoreError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Err(StoreError::Io {
            context: "find the store (has walhook run with this store.path?)",
            path,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let conn = Connection::open_with_flags(&path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
    conn.busy_timeout(UNLOCKED_BUSY_TIMEOUT)
        .map_err(StoreError::sqlite(&path, "set the busy timeout"))?;
    Ok((conn, path))
}

/// How long a command beside `walhook run` waits for the writer's lock on
/// the database file (appends hold it for milliseconds).
const UNLOCKED_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One subscription as the store sees it.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    /// cursor, attempts, last error, counters
    pub state: SubscriptionState,
    /// events stored after its cursor
    pub backlog: u64,
    /// dead letters kept for it
    pub dead_letters: u64,
}

/// A read-only connection to a store directory.
pub struct StoreView {
    conn: Connection,
    path: PathBuf,
}

impl StoreView {
    /// Opens `dir`'s database read-only, without taking the store's lock.
    /// A store an older walhook wrote is refused with a hint: the view
    /// reads columns of the current schema and never migrates by itself.
    pub fn open(dir: &Path) -> Result<StoreView, StoreError> {
        let (conn, path) = open_unlocked(dir, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(StoreError::sqlite(&path, "schema version check"))?;
        if found < super::schema::SCHEMA_VERSION {
            return Err(StoreError::Outdated {
                path,
                found,
                current: super::schema::SCHEMA_VERSION,
            });
        }
        Ok(StoreView { conn, path })
    }

    /// The highest LSN durably stored (what Postgres may have been told).
    pub fn durable_lsn(&self) -> Result<Option<u64>, StoreError> {
        let value: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'durable_lsn'",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(StoreError::sqlite(&self.path, "read progress"))?;
        Ok(value.map(lsn_from_sql).and_then(lsn_option))
    }

    /// Number of events stored.
    pub fn events(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
            .map_err(StoreError::sqlite(&self.path, "count events"))?;
        Ok(n.max(0) as u64)
    }

    /// Every subscription with its backlog and dead letters.
    pub fn subscriptions(&self) -> Result<Vec<SubscriptionView>, StoreError> {
        let err = StoreError::sqlite(&self.path, "read subscriptions");
        let states: Vec<SubscriptionState> = {
            let mut stmt = self.conn.prepare(SELECT_SUBSCRIPTIONS).map_err(&err)?;
            let rows = stmt.query_map([], subscription_row).map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(&err)?
        };
        let mut out = Vec::with_capacity(states.len());
        for state in states {
            let backlog: i64 = self
                .conn
                .query_row(
                    COUNT_BACKLOG,
                    rusqlite::params![state.cursor, state.name],
                    |row| row.get(0),
                )
                .map_err(&err)?;
            let dead: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM dead_letters WHERE subscription = ?1",
                    [&state.name],
                    |row| row.get(0),
                )
                .map_err(&err)?;
            out.push(SubscriptionView {
                state,
                backlog: backlog.max(0) as u64,
                dead_letters: dead.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Every slot replacement by `walhook run --resync`, oldest first (none
    /// for a store written before resyncs were recorded).
    pub fn resyncs(&self) -> Result<Vec<Resync>, StoreError> {
        let err = StoreError::sqlite(&self.path, "read resyncs");
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(&err)?;
        if version < RESYNCS_SINCE_VERSION {
            return Ok(Vec::new());
        }
        query_resyncs(&self.conn).map_err(err)
    }

    /// The dead letters kept for `subscription`, oldest first, as
    /// `(event id, event JSON)`.
    pub fn dead_letter_payloads(
        &self,
        subscription: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let err = StoreError::sqlite(&self.path, "read dead letters");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT event_id, payload FROM dead_letters WHERE subscription = ?1 ORDER BY id",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([subscription], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Append, NewEvent, Start, Store};

    #[test]
    fn reads_while_the_store_is_open_and_locked() {
        let dir = std::env::temp_dir().join(format!("walhook-inspect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.ensure_subscription("a", Start::Earliest).unwrap();
        let events = (0..3)
            .map(|i| NewEvent {
                id: format!("0000000000000100-{i:04}"),
                commit_lsn: 0x100,
                op: "data_create".into(),
                form: "f".into(),
                payload: b"{}".to_vec(),
                key: None,
            })
            .collect();
        store
            .append(&[
                Append::Events(events),
                Append::Commit {
                    end_lsn: 0x101,
                    form_schemas: Vec::new(),
                },
            ])
            .unwrap();
        let view = StoreView::open(&dir).unwrap();
        assert_eq!(view.durable_lsn().unwrap(), Some(0x101));
        assert_eq!(view.events().unwrap(), 3);
        let subs = view.subscriptions().unwrap();
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].backlog, 3);
        assert_eq!(subs[0].dead_letters, 0);
        assert!(view.dead_letter_payloads("a").unwrap().is_empty());
        let first = store.read_after(0, 1).unwrap().remove(0);
        store
            .dead_letter("a", &first, 3, Some(400), "bad request", None)
            .unwrap();
        assert_eq!(
            view.dead_letter_payloads("a").unwrap(),
            vec![("0000000000000100-0000".to_string(), b"{}".to_vec())]
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_an_older_schema_is_refused_with_a_hint() {
        let dir = std::env::temp_dir().join(format!("walhook-inspect-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        drop(Store::open(&dir).unwrap());
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        conn.execute_batch("PRAGMA user_version = 2").unwrap();
        drop(conn);
        let err = StoreView::open(&dir).err().unwrap();
        assert!(
            matches!(err, StoreError::Outdated { found: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("start `walhook run`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_store_says_so() {
        let err = StoreView::open(Path::new("/nonexistent/walhook-store"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("has walhook run"), "{err}");
    }
}
