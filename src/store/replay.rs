//! Replay: putting retained events back in front of a subscription.
//!
//! `walhook replay` may run while `walhook run` holds the store's lock, so it
//! never changes a cursor itself: it files a request ([`submit_replay`]) on
//! its own connection, and the process that owns the store applies it
//! ([`Store::apply_replay`]) between worker runs, so no worker's in-memory
//! position can overwrite the rewind.

use std::path::Path;

use rusqlite::{params, OpenFlags, OptionalExtension, TransactionBehavior};

use super::inspect::open_unlocked;
use super::{lock, now_ms, Store, StoreError};

/// A filed replay request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// request id
    pub id: i64,
    /// the subscription to rewind
    pub subscription: String,
    /// replay retained events stored at or after this time (ms since epoch)
    pub since_ms: i64,
}

/// What applying a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// events put back in front of the subscription
    pub requeued: u64,
    /// human-readable summary, also stored with the request
    pub summary: String,
}

/// Files a replay request in the store at `dir` (no lock needed); returns its id.
pub fn submit_replay(dir: &Path, subscription: &str, since_ms: i64) -> Result<i64, StoreError> {
    let (conn, path) = open_unlocked(dir, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.execute(
        "INSERT INTO replay_requests (subscription, since_ms, created_at_ms) VALUES (?1, ?2, ?3)",
        params![subscription, since_ms, now_ms()],
    )
    .map_err(StoreError::sqlite(&path, "file a replay request"))?;
    Ok(conn.last_insert_rowid())
}

/// The outcome of request `id` once applied (`None` while pending).
pub fn replay_outcome(dir: &Path, id: i64) -> Result<Option<String>, StoreError> {
    let (conn, path) = open_unlocked(dir, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.query_row(
        "SELECT outcome FROM replay_requests WHERE id = ?1 AND applied_at_ms IS NOT NULL",
        [id],
        |row| row.get::<_, Option<String>>(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(StoreError::sqlite(&path, "read a replay request"))
}

impl Store {
    /// Requests filed and not applied yet, oldest first.
    pub fn pending_replays(&self) -> Result<Vec<ReplayRequest>, StoreError> {
        let err = self.err("read replay requests");
        let conn = lock(&self.inner.state);
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, subscription, coalesce(since_ms, 0) FROM replay_requests
                 WHERE applied_at_ms IS NULL ORDER BY id",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |row| {
                Ok(ReplayRequest {
                    id: row.get(0)?,
                    subscription: row.get(1)?,
                    since_ms: row.get(2)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Rewinds the subscription to the first retained event stored at or
    /// after `since_ms` (never forward), clears its retry state, and marks
    /// the request applied. Only call while the subscription's worker is
    /// stopped.
    pub fn apply_replay(&self, req: &ReplayRequest) -> Result<ReplayOutcome, StoreError> {
        let err = self.err("apply a replay request");
        let mut conn = lock(&self.inner.state);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let cursor: Option<i64> = tx
            .query_row(
                "SELECT cursor FROM subscriptions WHERE name = ?1",
                [&req.subscription],
                |row| row.get(0),
            )
            .optional()
            .map_err(&err)?;
        let outcome = match cursor {
            None => ReplayOutcome {
                requeued: 0,
                summary: format!("no subscription '{}' in the store", req.subscription),
            },
            Some(cursor) => {
                let first: Option<i64> = tx
                    .query_row(
                        "SELECT min(seq) FROM events WHERE stored_at_ms >= ?1",
                        [req.since_ms],
                        |row| row.get(0),
                    )
                    .map_err(&err)?;
                match first {
                    Some(first) if first <= cursor => {
                        let requeued: i64 = tx
                            .query_row(
                                "SELECT count(*) FROM events WHERE seq >= ?1 AND seq <= ?2",
                                [first, cursor],
                                |row| row.get(0),
                            )
                            .map_err(&err)?;
                        tx.execute(
                            "UPDATE subscriptions SET cursor = ?2, attempts = 0, next_attempt_at_ms = NULL,
                             last_error = NULL, updated_at_ms = ?3 WHERE name = ?1",
                            params![req.subscription, first - 1, now_ms()],
                        )
                        .map_err(&err)?;
                        ReplayOutcome {
                            requeued: requeued.max(0) as u64,
                            summary: format!("{requeued} events re-queued"),
                        }
                    }
                    _ => ReplayOutcome {
                        requeued: 0,
                        summary: "nothing to replay: no retained event the subscription has passed since then".into(),
                    },
                }
            }
        };
        tx.execute(
            "UPDATE replay_requests SET applied_at_ms = ?2, outcome = ?3 WHERE id = ?1",
            params![req.id, now_ms(), outcome.summary],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(outcome)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Append, NewEvent, Start};

    fn events(lsn: u64, n: usize) -> Vec<Append> {
        vec![
            Append::Events(
                (0..n)
                    .map(|i| NewEvent {
                        id: format!("{lsn:016X}-{i:04}"),
                        commit_lsn: lsn,
                        op: "data_create".into(),
                        form: "f".into(),
                        payload: b"{}".to_vec(),
                        key: None,
                    })
                    .collect(),
            ),
            Append::Commit {
                end_lsn: lsn + 1,
                form_schemas: Vec::new(),
            },
        ]
    }

    #[test]
    fn a_request_filed_beside_the_owner_rewinds_the_cursor_once_applied() {
        let dir = std::env::temp_dir().join(format!("walhook-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.ensure_subscription("s", Start::Earliest).unwrap();
        store.append(&events(0x100, 5)).unwrap();
        store.advance("s", store.last_seq().unwrap(), 5).unwrap();
        assert_eq!(store.backlog("s").unwrap(), 0);

        // Filed from "another process" while the store is open and locked.
        let id = submit_replay(&dir, "s", 0).unwrap();
        assert_eq!(replay_outcome(&dir, id).unwrap(), None);
        let pending = store.pending_replays().unwrap();
        assert_eq!(pending.len(), 1);
        let outcome = store.apply_replay(&pending[0]).unwrap();
        assert_eq!(outcome.requeued, 5);
        assert_eq!(store.backlog("s").unwrap(), 5);
        assert!(store.pending_replays().unwrap().is_empty());
        assert_eq!(
            replay_outcome(&dir, id).unwrap().as_deref(),
            Some("5 events re-queued")
        );

        // Since a time after every event: nothing, and never forward.
        let id = submit_replay(&dir, "s", now_ms() + 60_000).unwrap();
        let outcome = store
            .apply_replay(&store.pending_replays().unwrap()[0])
            .unwrap();
        assert_eq!(outcome.requeued, 0);
        assert_eq!(store.backlog("s").unwrap(), 5);
        assert!(replay_outcome(&dir, id)
            .unwrap()
            .unwrap()
            .contains("nothing"));

        // An unknown subscription is reported, not an error.
        submit_replay(&dir, "nope", 0).unwrap();
        let outcome = store
            .apply_replay(&store.pending_replays().unwrap()[0])
            .unwrap();
        assert!(outcome.summary.contains("no subscription"));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
