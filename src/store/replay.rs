//! Replay: putting retained events back in front of a subscription.
//!
//! Two kinds: `--since T` rewinds the subscription's cursor to the first
//! event stored since then; `--dead` appends a copy of each of its dead
//! letters to the end of the log, visible to that subscription only (same
//! event id, so receivers still deduplicate), and clears the dead letters.
//!
//! `walhook replay` may run while `walhook run` holds the store's lock, so it
//! never changes a cursor itself: it files a request ([`submit_replay`]) on
//! its own connection, and the process that owns the store applies it
//! ([`Store::apply_replay`]) between worker runs, so no worker's in-memory
//! position can overwrite the rewind.

use std::path::Path;

use rusqlite::{params, OpenFlags, OptionalExtension, TransactionBehavior};

use super::inspect::open_unlocked;
use std::sync::atomic::Ordering;

use super::{lock, now_ms, Store, StoreError};

/// A filed replay request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// request id
    pub id: i64,
    /// the subscription to rewind
    pub subscription: String,
    /// what to replay
    pub kind: ReplayKind,
}

/// What a replay request puts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    /// retained events stored at or after this time (ms since the epoch)
    Since(i64),
    /// the subscription's dead letters
    Dead,
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
pub fn submit_replay(dir: &Path, subscription: &str, kind: ReplayKind) -> Result<i64, StoreError> {
    let (conn, path) = open_unlocked(dir, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let (since_ms, dead) = match kind {
        ReplayKind::Since(ms) => (Some(ms), false),
        ReplayKind::Dead => (None, true),
    };
    conn.execute(
        "INSERT INTO replay_requests (subscription, since_ms, dead, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![subscription, since_ms, dead, now_ms()],
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
    /// Files a replay request through this (owning) store, as
    /// [`submit_replay`] does from another process; returns its id.
    pub fn file_replay(&self, subscription: &str, kind: ReplayKind) -> Result<i64, StoreError> {
        let (since_ms, dead) = match kind {
            ReplayKind::Since(ms) => (Some(ms), false),
            ReplayKind::Dead => (None, true),
        };
        let conn = lock(&self.inner.state);
        conn.execute(
            "INSERT INTO replay_requests (subscription, since_ms, dead, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![subscription, since_ms, dead, now_ms()],
        )
        .map_err(self.err("file a replay request"))?;
        Ok(conn.last_insert_rowid())
    }

    /// Requests filed and not applied yet, oldest first.
    pub fn pending_replays(&self) -> Result<Vec<ReplayRequest>, StoreError> {
        let err = self.err("read replay requests");
        let conn = lock(&self.inner.state);
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, subscription, since_ms, dead FROM replay_requests
                 WHERE applied_at_ms IS NULL ORDER BY id",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |row| {
                let since: Option<i64> = row.get(2)?;
                let dead: bool = row.get(3)?;
                Ok(ReplayRequest {
                    id: row.get(0)?,
                    subscription: row.get(1)?,
                    kind: match (dead, since) {
                        (false, Some(ms)) => ReplayKind::Since(ms),
                        _ => ReplayKind::Dead,
                    },
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
            Some(_) if req.kind == ReplayKind::Dead => {
                let now = now_ms();
                let requeued = tx
                    .execute(
                        "INSERT OR IGNORE INTO events
                           (id, commit_lsn, op, form, payload, stored_at_ms, row_key, for_subscription, requeue)
                         SELECT event_id, commit_lsn, op, form, payload, ?2, row_key, subscription, id
                         FROM dead_letters WHERE subscription = ?1 ORDER BY id",
                        params![req.subscription, now],
                    )
                    .map_err(&err)?;
                tx.execute(
                    "DELETE FROM dead_letters WHERE subscription = ?1",
                    [&req.subscription],
                )
                .map_err(&err)?;
                let last: i64 = tx
                    .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
                        row.get(0)
                    })
                    .map_err(&err)?;
                self.inner.last_seq.fetch_max(last, Ordering::AcqRel);
                ReplayOutcome {
                    requeued: requeued as u64,
                    summary: format!("{requeued} dead letters re-queued"),
                }
            }
            Some(cursor) => {
                let ReplayKind::Since(since_ms) = req.kind else {
                    return Err(err(rusqlite::Error::InvalidQuery));
                };
                let first: Option<i64> = tx
                    .query_row(
                        "SELECT min(seq) FROM events WHERE stored_at_ms >= ?1",
                        [since_ms],
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
        let id = submit_replay(&dir, "s", ReplayKind::Since(0)).unwrap();
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
        let id = submit_replay(&dir, "s", ReplayKind::Since(now_ms() + 60_000)).unwrap();
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
        submit_replay(&dir, "nope", ReplayKind::Since(0)).unwrap();
        let outcome = store
            .apply_replay(&store.pending_replays().unwrap()[0])
            .unwrap();
        assert!(outcome.summary.contains("no subscription"));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dead_letters_come_back_for_their_subscription_only() {
        let dir = std::env::temp_dir().join(format!("walhook-replay-dead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.ensure_subscription("s", Start::Earliest).unwrap();
        store.ensure_subscription("t", Start::Earliest).unwrap();
        store.append(&events(0x100, 3)).unwrap();
        let first = store.read_for("s", 0, 1).unwrap().remove(0);
        store
            .dead_letter("s", &first, 3, Some(400), "HTTP 400", Some("bad"))
            .unwrap();
        let last = store.last_seq().unwrap();
        store.advance("s", last, 2).unwrap();
        store.advance("t", last, 3).unwrap();

        submit_replay(&dir, "s", ReplayKind::Dead).unwrap();
        let outcome = store
            .apply_replay(&store.pending_replays().unwrap()[0])
            .unwrap();
        assert_eq!(outcome.requeued, 1);
        assert!(store.dead_letters("s", 10).unwrap().is_empty());
        let again = store.read_for("s", last, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, first.id, "same event id");
        assert_eq!(again[0].payload, first.payload);
        assert!(
            store.read_for("t", last, 10).unwrap().is_empty(),
            "not for t"
        );
        assert_eq!(store.backlog("s").unwrap(), 1);
        assert_eq!(store.backlog("t").unwrap(), 0);
        // Capture re-sending the original is still ignored.
        store.append(&events(0x100, 3)).unwrap();
        assert!(store.read_for("t", last, 10).unwrap().is_empty());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
