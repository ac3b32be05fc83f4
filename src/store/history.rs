//! The delivery history: one row per HTTP attempt, for `GET /api/deliveries`
//! and for operators asking "what happened to event X".
//!
//! Rows are written by the delivery workers together with the delivery
//! state they already write (the cursor advance, a failure, a dead letter),
//! in the same transaction, so the history costs no extra commit on the hot
//! path: a worker buffers the attempts of delivered requests and writes them
//! with its coalesced cursor advance. A crash can lose the buffered rows of
//! the last second (history is for people, not for delivery guarantees).
//!
//! Rows are kept for `store.history_retention` and deleted in chunks by
//! [`Store::prune_history`] (index on `at_ms`), so pruning never holds the
//! write lock for long.

use rusqlite::{params, Row, Transaction};
use serde::Serialize;

use super::{lock, now_ms, sql_count, Store, StoreError, PRUNE_CHUNK};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered,
    /// Failed; the request is tried again after a backoff.
    Retry,
    /// Failed and given up: its events became dead letters.
    DeadLetter,
    /// The endpoint is gone (410) or `disable_after` was reached: the subscription was disabled.
    Disabled,
}

impl AttemptOutcome {
    /// The stored and exported name (`delivered`, `retry`, `dead_letter`, `disabled`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::DeadLetter => "dead_letter",
            AttemptOutcome::Disabled => "disabled",
        }
    }

    fn parse(text: &str) -> AttemptOutcome {
        match text {
            "delivered" => AttemptOutcome::Delivered,
            "retry" => AttemptOutcome::Retry,
            "dead_letter" => AttemptOutcome::DeadLetter,
            _ => AttemptOutcome::Disabled,
        }
    }
}

/// One attempt to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// The event id (a batch: its first event's id, the `webhook-id`).
    pub event_id: String,
    /// Its op.
    pub op: String,
    /// Its form.
    pub form: String,
    /// Events in the request (1 without `batch`).
    pub events: u32,
    /// 1 for the first attempt of the request, then 2, 3, ...
    pub attempt: u32,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The HTTP status, when a response came back.
    pub status: Option<u16>,
    /// How long the attempt took (ms).
    pub duration_ms: i64,
    /// Commit → 2xx (ms) of the (first) event, when delivered.
    pub latency_ms: Option<i64>,
    /// Why it failed (status line or error chain; never a body or a secret).
    pub error: Option<String>,
    /// When it ended (ms since the Unix epoch).
    pub at_ms: i64,
}

/// A recorded attempt read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredAttempt {
    /// Row id (increasing; usable as a paging cursor).
    pub id: i64,
    /// The subscription.
    pub subscription: String,
    /// The attempt.
    #[serde(flatten)]
    pub record: AttemptRecord,
}

/// Which attempts [`Store::attempts`] returns (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptFilter {
    /// Only this subscription's.
    pub subscription: Option<String>,
    /// `Some(true)`: only failed ones (every outcome but delivered);
    /// `Some(false)`: only delivered ones.
    pub failed: Option<bool>,
    /// Only rows with an id below this (paging).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

/// Inserts `attempts` of subscription `name` inside `tx`.
pub(super) fn insert(
    tx: &Transaction<'_>,
    name: &str,
    attempts: &[AttemptRecord],
) -> rusqlite::Result<()> {
    if attempts.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO attempts (subscription, event_id, op, form, events, attempt, outcome, status,
             duration_ms, latency_ms, error, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for a in attempts {
        stmt.execute(params![
            name,
            a.event_id,
            a.op,
            a.form,
            a.events,
            a.attempt,
            a.outcome.as_str(),
            a.status,
            a.duration_ms,
            a.latency_ms,
            a.error,
            a.at_ms
        ])?;
    }
    Ok(())
}

fn attempt_row(row: &Row<'_>) -> rusqlite::Result<StoredAttempt> {
    let outcome: String = row.get(7)?;
    Ok(StoredAttempt {
        id: row.get(0)?,
        subscription: row.get(1)?,
        record: AttemptRecord {
            event_id: row.get(2)?,
            op: row.get(3)?,
            form: row.get(4)?,
            events: row.get(5)?,
            attempt: row.get(6)?,
            outcome: AttemptOutcome::parse(&outcome),
            status: row.get(8)?,
            duration_ms: row.get(9)?,
            latency_ms: row.get(10)?,
            error: row.get(11)?,
            at_ms: row.get(12)?,
        },
    })
}

impl Store {
    /// Writes attempts to the history on their own (no state change).
    pub fn record_attempts(
        &self,
        name: &str,
        attempts: &[AttemptRecord],
    ) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let err = self.err("record delivery attempts");
        let mut conn = lock(&self.inner.state);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        insert(&tx, name, attempts).map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Recorded attempts matching `filter`, newest first.
    pub fn attempts(&self, filter: &AttemptFilter) -> Result<Vec<StoredAttempt>, StoreError> {
        let err = self.err("read delivery attempts");
        let conn = lock(&self.inner.state);
        let outcome = match filter.failed {
            None => "",
            Some(true) => "AND outcome <> 'delivered'",
            Some(false) => "AND outcome = 'delivered'",
        };
        let sql = format!(
            "SELECT id, subscription, event_id, op, form, events, attempt, outcome, status,
                    duration_ms, latency_ms, error, at_ms
             FROM attempts
             WHERE (?1 IS NULL OR subscription = ?1) AND id < ?2 {outcome}
             ORDER BY id DESC LIMIT ?3"
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(&err)?;
        let rows = stmt
            .query_map(
                params![
                    filter.subscription,
                    filter.before_id.unwrap_or(i64::MAX),
                    sql_count(filter.limit)
                ],
                attempt_row,
            )
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    /// Deletes attempts older than `retention` (before `now_ms - retention`),
    /// `PRUNE_CHUNK` rows per transaction; returns how many.
    pub fn prune_history(
        &self,
        retention: std::time::Duration,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let err = self.err("prune delivery history");
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention_ms);
        let mut total = 0u64;
        loop {
            // Re-lock per chunk so delivery writes interleave with a long prune.
            let conn = lock(&self.inner.state);
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM attempts WHERE id IN (
                         SELECT id FROM attempts WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
                )
                .and_then(|mut stmt| stmt.execute(params![cutoff, PRUNE_CHUNK]))
                .map_err(&err)?;
            drop(conn);
            total += deleted as u64;
            if (deleted as i64) < PRUNE_CHUNK {
                break;
            }
        }
        Ok(total)
    }

    /// Pauses (`true`) or resumes (`false`) a subscription; kept across restarts.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<(), StoreError> {
        let conn = lock(&self.inner.state);
        let now = now_ms();
        let changed = conn
            .prepare_cached(
                "UPDATE subscriptions SET paused_at_ms = CASE WHEN ?2 THEN coalesce(paused_at_ms, ?3) END,
                     updated_at_ms = ?3
                 WHERE name = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![name, paused, now]))
            .map_err(self.err("pause or resume"))?;
        super::expect_row(changed, name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::Start;

    fn record(event_id: &str, outcome: AttemptOutcome, at_ms: i64) -> AttemptRecord {
        AttemptRecord {
            event_id: event_id.into(),
            op: "data_create".into(),
            form: "orders".into(),
            events: 1,
            attempt: 1,
            outcome,
            status: Some(if outcome == AttemptOutcome::Delivered {
                200
            } else {
                500
            }),
            duration_ms: 12,
            latency_ms: (outcome == AttemptOutcome::Delivered).then_some(30),
            error: (outcome != AttemptOutcome::Delivered)
                .then(|| "HTTP 500 Internal Server Error".into()),
            at_ms,
        }
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("walhook-history-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn attempts_are_written_with_the_state_and_read_back_newest_first() {
        let dir = scratch("rw");
        let store = Store::open(&dir).unwrap();
        store.ensure_subscription("a", Start::Earliest).unwrap();
        store.ensure_subscription("b", Start::Earliest).unwrap();
        let now = now_ms();
        store
            .advance_with("a", 0, 1, &[record("E1", AttemptOutcome::Delivered, now)])
            .unwrap();
        store
            .record_failure_with(
                "a",
                1,
                now + 1000,
                "HTTP 500",
                &[record("E2", AttemptOutcome::Retry, now)],
            )
            .unwrap();
        store
            .record_attempts("b", &[record("E3", AttemptOutcome::DeadLetter, now)])
            .unwrap();
        let all = store
            .attempts(&AttemptFilter {
                limit: 10,
                ..AttemptFilter::default()
            })
            .unwrap();
        let ids: Vec<&str> = all.iter().map(|a| a.record.event_id.as_str()).collect();
        assert_eq!(ids, ["E3", "E2", "E1"], "newest first");
        let failed_a = store
            .attempts(&AttemptFilter {
                subscription: Some("a".into()),
                failed: Some(true),
                limit: 10,
                before_id: None,
            })
            .unwrap();
        assert_eq!(failed_a.len(), 1);
        assert_eq!(failed_a[0].record, record("E2", AttemptOutcome::Retry, now));
        assert_eq!(
            store.subscription("a").unwrap().unwrap().attempts,
            1,
            "the failure is recorded too"
        );
        // Paging: below the newest id.
        let older = store
            .attempts(&AttemptFilter {
                before_id: Some(all[0].id),
                limit: 1,
                ..AttemptFilter::default()
            })
            .unwrap();
        assert_eq!(older[0].record.event_id, "E2");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pruning_deletes_only_attempts_past_retention_in_chunks() {
        let dir = scratch("prune");
        let store = Store::open(&dir).unwrap();
        let day = 24 * 3600 * 1000;
        let now = now_ms();
        // More old rows than one prune chunk, and a few recent ones.
        let old: Vec<AttemptRecord> = (0..PRUNE_CHUNK + 5)
            .map(|i| {
                record(
                    &format!("old-{i}"),
                    AttemptOutcome::Delivered,
                    now - 31 * day,
                )
            })
            .collect();
        store.record_attempts("s", &old).unwrap();
        let recent: Vec<AttemptRecord> = (0..3)
            .map(|i| record(&format!("new-{i}"), AttemptOutcome::Retry, now - 29 * day))
            .collect();
        store.record_attempts("s", &recent).unwrap();
        let deleted = store
            .prune_history(std::time::Duration::from_secs(30 * 24 * 3600), now)
            .unwrap();
        assert_eq!(deleted, (PRUNE_CHUNK + 5) as u64);
        let left = store
            .attempts(&AttemptFilter {
                limit: 100,
                ..AttemptFilter::default()
            })
            .unwrap();
        assert_eq!(left.len(), 3);
        assert!(left.iter().all(|a| a.record.event_id.starts_with("new-")));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pause_survives_reopening_the_store() {
        let dir = scratch("pause");
        {
            let store = Store::open(&dir).unwrap();
            store.ensure_subscription("a", Start::End).unwrap();
            assert!(!store.subscription("a").unwrap().unwrap().paused);
            store.set_paused("a", true).unwrap();
            assert!(store.set_paused("nope", true).is_err());
        }
        let store = Store::open(&dir).unwrap();
        assert!(store.subscription("a").unwrap().unwrap().paused);
        store.set_paused("a", false).unwrap();
        assert!(!store.subscription("a").unwrap().unwrap().paused);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
