//! The shared oracle for fault scenarios (Jepsen set-style).
//!
//! **Workload.** [`Ledger::create`] makes a table `ledger (k int PRIMARY KEY, seq int,
//! pad text)` with REPLICA IDENTITY FULL, and a trigger that writes every committed row
//! change into `ledger_history (k, seq, op)`. The history table is not captured, and it is
//! transactional: rolled-back writes leave no trace, so after a scenario `ledger_history`
//! is exactly what Postgres committed. Each write is identified by `(op, k, seq)`; the
//! rule for scenarios is that every UPDATE raises `seq` (`SET seq = seq + 1`) and a
//! deleted key is not inserted again with an old `seq`.
//!
//! **Verdict.** [`check`] compares the committed writes with what the receiver accepted
//! (2xx, single events or `{"events": [...]}` batches in walhook's format) plus the
//! subscription's dead letters in the store:
//! - `lost`: committed but neither delivered nor dead-lettered. Must be 0.
//! - `phantom`: delivered but never committed (a rolled-back write). Must be 0.
//! - `duplicate deliveries`: an event id accepted more than once; allowed only for the
//!   events in flight at a fault, so the scenario passes its own bound.
//! - `queue duplicates`: one write delivered under two different event ids, i.e. a
//!   re-sent transaction the store's UNIQUE key should have absorbed. Must be 0.
//! - per-key order: in first-delivery order, each key's `seq` only grows.
//!
//! **Ack after durable.** [`AckWatch`] samples the slot's `confirmed_flush_lsn` and the
//! store's durable LSN every 100 ms while a scenario runs; the slot must never be
//! confirmed past what the store holds durably.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use super::db::{chain, parse_lsn, TestDb};
use super::receiver::TestReceiver;
use walhook::store::inspect::StoreView;

/// The captured table of the oracle's workload.
pub struct Ledger;

impl Ledger {
    /// The table name; configure it with [`Ledger::TABLE_TOML`].
    pub const TABLE: &'static str = "ledger";
    /// The `[[tables]]` body for walhook's configuration.
    pub const TABLE_TOML: &'static str = "name = \"ledger\"";

    /// Creates `ledger` and its committed-history trigger in `db`.
    pub async fn create(db: &TestDb) {
        db.execute(
            "CREATE TABLE ledger (k int PRIMARY KEY, seq int NOT NULL, pad text);
             ALTER TABLE ledger REPLICA IDENTITY FULL;
             CREATE TABLE ledger_history (n bigserial PRIMARY KEY, k int NOT NULL, seq int NOT NULL, op text NOT NULL);
             CREATE FUNCTION ledger_record() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF TG_OP = 'DELETE' THEN
                 INSERT INTO ledger_history (k, seq, op) VALUES (OLD.k, OLD.seq, 'data_remove');
                 RETURN OLD;
               ELSIF TG_OP = 'UPDATE' THEN
                 INSERT INTO ledger_history (k, seq, op) VALUES (NEW.k, NEW.seq, 'data_update');
               ELSE
                 INSERT INTO ledger_history (k, seq, op) VALUES (NEW.k, NEW.seq, 'data_create');
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER ledger_record AFTER INSERT OR UPDATE OR DELETE ON ledger
               FOR EACH ROW EXECUTE FUNCTION ledger_record();",
        )
        .await;
    }

    /// Inserts keys `from..=to` with `seq = 1` in one transaction.
    pub async fn insert(db: &TestDb, from: i64, to: i64) {
        db.execute(&format!(
            "INSERT INTO ledger SELECT i, 1, md5(i::text) FROM generate_series({from}, {to}) i"
        ))
        .await;
    }

    /// Raises `seq` of keys `from..=to` in one transaction.
    pub async fn bump(db: &TestDb, from: i64, to: i64) {
        db.execute(&format!(
            "UPDATE ledger SET seq = seq + 1 WHERE k BETWEEN {from} AND {to}"
        ))
        .await;
    }

    /// Deletes keys `from..=to` in one transaction.
    pub async fn delete(db: &TestDb, from: i64, to: i64) {
        db.execute(&format!(
            "DELETE FROM ledger WHERE k BETWEEN {from} AND {to}"
        ))
        .await;
    }
}

/// One row change: `(op, key, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Write {
    /// `data_create`, `data_update` or `data_remove` as an index into [`OPS`].
    pub op: u8,
    /// The row's key.
    pub k: i64,
    /// The row's `seq` (the new one for an update, the deleted one for a remove).
    pub seq: i64,
}

/// The event ops of the workload, in [`Write::op`] order.
pub const OPS: [&str; 3] = ["data_create", "data_update", "data_remove"];

impl Write {
    fn new(op: &str, k: i64, seq: i64) -> Option<Write> {
        let op = OPS.iter().position(|o| *o == op)? as u8;
        Some(Write { op, k, seq })
    }
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}(k={}, seq={})",
            OPS[self.op as usize], self.k, self.seq
        )
    }
}

/// What Postgres committed to `ledger`, from `ledger_history`.
pub async fn committed(db: &TestDb) -> Vec<Write> {
    let rows = db
        .client()
        .query(
            "SELECT op, k::int8, seq::int8 FROM ledger_history ORDER BY n",
            &[],
        )
        .await
        .unwrap_or_else(|err| panic!("read ledger_history: {}", chain(&err)));
    rows.iter()
        .map(|row| {
            let op: String = row.get(0);
            Write::new(&op, row.get(1), row.get(2))
                .unwrap_or_else(|| panic!("unexpected op {op} in ledger_history"))
        })
        .collect()
}

/// The outcome of [`check`].
#[derive(Debug, Default)]
pub struct Verdict {
    /// Writes Postgres committed.
    pub committed: usize,
    /// Distinct event ids the receiver accepted (2xx).
    pub delivered: usize,
    /// Ledger events found in the dead letters.
    pub dead_lettered: usize,
    /// Committed writes neither delivered nor dead-lettered.
    pub lost: Vec<Write>,
    /// Delivered writes Postgres never committed.
    pub phantom: Vec<Write>,
    /// Event ids accepted more than once, with the number of times.
    pub duplicate_deliveries: BTreeMap<String, usize>,
    /// Writes that arrived under more than one event id.
    pub queue_duplicates: Vec<(Write, Vec<String>)>,
    /// Keys whose `seq` went backwards in first-delivery order.
    pub order_violations: Vec<String>,
}

impl Verdict {
    /// Extra deliveries beyond the first, over all event ids.
    pub fn extra_deliveries(&self) -> usize {
        self.duplicate_deliveries.values().map(|n| n - 1).sum()
    }

    /// Whether nothing is missing (the scenario may still be delivering otherwise).
    pub fn complete(&self) -> bool {
        self.lost.is_empty()
    }

    /// Panics with a readable summary unless: nothing lost, nothing phantom, no queue
    /// duplicates, per-key order held, and at most `max_redeliveries` extra deliveries
    /// (the events in flight at the faults of the scenario).
    pub fn assert_ok(&self, max_redeliveries: usize) {
        let mut problems = Vec::new();
        if !self.lost.is_empty() {
            problems.push(format!(
                "{} lost (first: {})",
                self.lost.len(),
                first_few(&self.lost)
            ));
        }
        if !self.phantom.is_empty() {
            problems.push(format!(
                "{} delivered but never committed (first: {})",
                self.phantom.len(),
                first_few(&self.phantom)
            ));
        }
        if !self.queue_duplicates.is_empty() {
            let (write, ids) = &self.queue_duplicates[0];
            problems.push(format!(
                "{} writes queued twice under different ids (first: {write} as {ids:?})",
                self.queue_duplicates.len()
            ));
        }
        if !self.order_violations.is_empty() {
            problems.push(format!(
                "per-key order broken: {}",
                self.order_violations.join("; ")
            ));
        }
        if self.extra_deliveries() > max_redeliveries {
            let sample: Vec<_> = self.duplicate_deliveries.iter().take(5).collect();
            problems.push(format!(
                "{} redeliveries, more than the {max_redeliveries} allowed for events in flight (e.g. {sample:?})",
                self.extra_deliveries()
            ));
        }
        assert!(
            problems.is_empty(),
            "oracle: {} committed, {} delivered, {} dead-lettered: {}",
            self.committed,
            self.delivered,
            self.dead_lettered,
            problems.join(" | ")
        );
    }
}

fn first_few(writes: &[Write]) -> String {
    let shown: Vec<String> = writes.iter().take(5).map(Write::to_string).collect();
    shown.join(", ")
}

/// A ledger event found in a body: its id and the write it carries.
fn ledger_events(body: &Value, out: &mut Vec<(String, Write)>) {
    let items: Vec<&Value> = match body.get("events").and_then(Value::as_array) {
        Some(batch) => batch.iter().collect(),
        None => vec![body],
    };
    for event in items {
        if event.get("form").and_then(Value::as_str) != Some(Ledger::TABLE) {
            continue;
        }
        let (Some(id), Some(op)) = (
            event.get("id").and_then(Value::as_str),
            event.get("op").and_then(Value::as_str),
        ) else {
            continue;
        };
        let field = |name: &str| -> Option<i64> {
            let value = event.get("data")?.get(name)?;
            value
                .as_i64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .or_else(|| value.to_string().parse().ok())
        };
        let (Some(k), Some(seq)) = (field("k"), field("seq")) else {
            panic!("oracle: ledger event without data.k/data.seq: {event}");
        };
        if let Some(write) = Write::new(op, k, seq) {
            out.push((id.to_string(), write));
        }
    }
}

/// Compares what Postgres committed with what `receiver` accepted plus the dead letters
/// of `subscription` in the store at `store_dir` (`None`: no dead letters expected).
pub async fn check(
    db: &TestDb,
    receiver: &TestReceiver,
    store_dir: Option<&Path>,
    subscription: &str,
) -> Verdict {
    let committed = committed(db).await;

    let mut delivered: Vec<(String, Write)> = Vec::new();
    for request in receiver.requests() {
        if (200..300).contains(&request.status) {
            ledger_events(&request.json(), &mut delivered);
        }
    }
    let mut dead: Vec<(String, Write)> = Vec::new();
    if let Some(dir) = store_dir {
        let view = StoreView::open(dir)
            .unwrap_or_else(|err| panic!("oracle: open the store at {}: {err}", dir.display()));
        let letters = view
            .dead_letter_payloads(subscription)
            .unwrap_or_else(|err| panic!("oracle: read dead letters: {err}"));
        for (_, payload) in letters {
            let value: Value = serde_json::from_slice(&payload)
                .unwrap_or_else(|err| panic!("oracle: dead letter is not JSON: {err}"));
            ledger_events(&value, &mut dead);
        }
    }
    verdict(&committed, &delivered, &dead)
}

fn verdict(
    committed: &[Write],
    delivered: &[(String, Write)],
    dead: &[(String, Write)],
) -> Verdict {
    let mut times: HashMap<&str, usize> = HashMap::new();
    let mut ids_of: BTreeMap<Write, BTreeSet<&str>> = BTreeMap::new();
    let mut last_seq: HashMap<i64, (i64, &str)> = HashMap::new();
    let mut order_violations = Vec::new();
    for (id, write) in delivered {
        let n = times.entry(id).or_insert(0);
        *n += 1;
        ids_of.entry(*write).or_default().insert(id);
        if *n > 1 {
            continue; // order is judged on first deliveries
        }
        if let Some((seq, prev)) = last_seq.get(&write.k) {
            if write.seq < *seq && order_violations.len() < 10 {
                order_violations.push(format!(
                    "k={} got seq {} ({id}) after seq {seq} ({prev})",
                    write.k, write.seq
                ));
            }
        }
        last_seq.insert(write.k, (write.seq, id));
    }
    let seen: BTreeSet<Write> = delivered
        .iter()
        .chain(dead.iter())
        .map(|(_, w)| *w)
        .collect();
    let committed_set: BTreeSet<Write> = committed.iter().copied().collect();
    Verdict {
        committed: committed.len(),
        delivered: times.len(),
        dead_lettered: dead.len(),
        lost: committed
            .iter()
            .filter(|w| !seen.contains(w))
            .copied()
            .collect(),
        phantom: delivered
            .iter()
            .map(|(_, w)| *w)
            .filter(|w| !committed_set.contains(w))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        duplicate_deliveries: times
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.to_string(), *n))
            .collect(),
        queue_duplicates: ids_of
            .into_iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(w, ids)| (w, ids.into_iter().map(str::to_string).collect()))
            .collect(),
        order_violations,
    }
}

/// Polls [`check`] every 200 ms until nothing is lost or `timeout` passes, and returns
/// the last verdict (assert on it).
pub async fn settle(
    db: &TestDb,
    receiver: &TestReceiver,
    store_dir: Option<&Path>,
    subscription: &str,
    timeout: Duration,
) -> Verdict {
    let deadline = Instant::now() + timeout;
    loop {
        let verdict = check(db, receiver, store_dir, subscription).await;
        if verdict.complete() || Instant::now() >= deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What [`AckWatch`] saw.
#[derive(Debug, Default)]
pub struct AckReport {
    /// Samples where both the slot and the store could be read.
    pub compared: usize,
    /// `(confirmed_flush_lsn, durable LSN)` pairs where the slot was ahead.
    pub violations: Vec<(u64, Option<u64>)>,
}

impl AckReport {
    /// Panics if the slot was ever confirmed past the store's durable LSN, or if no
    /// sample could compare the two.
    pub fn assert_ok(&self) {
        assert!(
            self.compared > 0,
            "ack watch: no sample could read both the slot and the store"
        );
        assert!(
            self.violations.is_empty(),
            "ack watch: confirmed_flush_lsn passed the durable LSN {} times in {} samples; first (confirmed, durable): {:?}",
            self.violations.len(),
            self.compared,
            self.violations[0]
        );
    }
}

/// Samples the slot's `confirmed_flush_lsn` and the store's durable LSN every 100 ms
/// until [`AckWatch::finish`]. The slot is read first and the store second; the durable
/// LSN only grows, so a sample where the slot is ahead is a real violation.
///
/// Before the store has recorded any durable LSN, the slot may only sit where it was
/// created (the first confirmed LSN seen).
pub struct AckWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<AckReport>,
}

impl AckWatch {
    /// Starts sampling `slot` in `db`'s cluster against the store at `store_dir`.
    pub async fn start(db: &TestDb, slot: &str, store_dir: &Path) -> AckWatch {
        let client = db.connect().await;
        let slot = slot.to_string();
        let dir: PathBuf = store_dir.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = AckReport::default();
            let mut created_at: Option<u64> = None;
            let sql =
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1";
            while !flag.load(Ordering::Relaxed) {
                // The server may be restarting or the slot not made yet: skip the sample.
                let confirmed = match client.query_opt(sql, &[&slot]).await {
                    Ok(Some(row)) => row.get::<_, Option<String>>(0).map(|t| parse_lsn(&t)),
                    _ => None,
                };
                if let Some(confirmed) = confirmed {
                    let durable = StoreView::open(&dir)
                        .ok()
                        .and_then(|v| v.durable_lsn().ok());
                    if let Some(durable) = durable {
                        report.compared += 1;
                        let bound = match durable {
                            Some(lsn) => lsn,
                            None => *created_at.get_or_insert(confirmed),
                        };
                        if confirmed > bound {
                            report.violations.push((confirmed, durable));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            report
        });
        AckWatch { stop, task }
    }

    /// Stops sampling and returns the report.
    pub async fn finish(self) -> AckReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .unwrap_or_else(|err| panic!("ack watch task: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(op: u8, k: i64, seq: i64) -> Write {
        Write { op, k, seq }
    }

    #[test]
    fn verdict_counts_lost_phantom_duplicates_and_order() {
        let committed = vec![w(0, 1, 1), w(1, 1, 2), w(0, 2, 1), w(2, 2, 1)];
        let delivered = vec![
            ("A-0".to_string(), w(0, 1, 1)),
            ("B-0".to_string(), w(1, 1, 2)),
            ("B-0".to_string(), w(1, 1, 2)), // redelivered
            ("C-0".to_string(), w(1, 1, 2)), // same write, second id
            ("D-0".to_string(), w(0, 9, 1)), // never committed
        ];
        let dead = vec![("E-0".to_string(), w(0, 2, 1))];
        let v = verdict(&committed, &delivered, &dead);
        assert_eq!(v.lost, vec![w(2, 2, 1)]);
        assert_eq!(v.phantom, vec![w(0, 9, 1)]);
        assert_eq!(v.extra_deliveries(), 1);
        assert_eq!(v.queue_duplicates.len(), 1);
        assert!(v.order_violations.is_empty());

        let backwards = vec![
            ("B-0".to_string(), w(1, 1, 2)),
            ("A-0".to_string(), w(0, 1, 1)),
        ];
        let v = verdict(&committed[..2], &backwards, &[]);
        assert_eq!(v.order_violations.len(), 1, "{:?}", v.order_violations);
        assert!(v.lost.is_empty());
    }
}
