//! The queue between capture and the store writer, bounded by bytes.
//!
//! Capture decodes while the writer waits on its fsync, and the writer then
//! commits everything queued meanwhile in one SQLite transaction (group
//! commit). How much can queue up decides how well the two overlap: a bound
//! by item count is either small (a transaction of 100 rows is two items, so
//! a few transactions per fsync) or, with 2 MB chunks, a lot of memory. So
//! each item holds permits worth its payload bytes from a shared budget
//! until the writer has committed it; an item larger than the whole budget
//! takes all of it and travels alone.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::Append;

/// What an item without payload (a commit, a progress mark) counts as, and
/// what each event adds on top of its payload (id, op, form, key).
const ITEM_OVERHEAD: usize = 128;

/// Sends [`Append`] items to the writer; waits while the budget is spent.
#[derive(Debug, Clone)]
pub struct AppendSender {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    total: usize,
}

/// The writer's end of the queue.
#[derive(Debug)]
pub struct AppendReceiver {
    rx: mpsc::UnboundedReceiver<Queued>,
}

/// An item and the budget it holds until dropped.
#[derive(Debug)]
pub struct Queued {
    /// The item.
    pub item: Append,
    /// Returned to the budget when dropped: after the item was written.
    pub permit: OwnedSemaphorePermit,
}

/// The queue was closed: the writer (or capture) is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A queue holding at most `budget_bytes` of payload (at least one item).
pub fn append_queue(budget_bytes: usize) -> (AppendSender, AppendReceiver) {
    let total = budget_bytes.clamp(ITEM_OVERHEAD, Semaphore::MAX_PERMITS);
    let (tx, rx) = mpsc::unbounded_channel();
    (
        AppendSender {
            tx,
            budget: Arc::new(Semaphore::new(total)),
            total,
        },
        AppendReceiver { rx },
    )
}

/// The bytes an item counts for.
fn weight(item: &Append) -> usize {
    match item {
        Append::Events(events) => events
            .iter()
            .map(|e| e.payload.len() + ITEM_OVERHEAD)
            .sum::<usize>()
            .max(ITEM_OVERHEAD),
        Append::Commit { form_schemas, .. } => {
            ITEM_OVERHEAD
                + form_schemas
                    .iter()
                    .map(|s| s.fields_json.len())
                    .sum::<usize>()
        }
        Append::Progress { .. } => ITEM_OVERHEAD,
    }
}

impl AppendSender {
    /// Queues `item`, first waiting until the budget has room for it.
    pub async fn send(&self, item: Append) -> Result<(), Closed> {
        let permits = weight(&item).min(self.total) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Closed)?;
        self.tx.send(Queued { item, permit }).map_err(|_| Closed)
    }
}

impl AppendReceiver {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Queued> {
        self.rx.recv().await
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<Queued> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::NewEvent;

    fn events(n: usize, bytes: usize) -> Append {
        Append::Events(
            (0..n)
                .map(|i| NewEvent {
                    id: format!("0000000000000001-{i:04}"),
                    commit_lsn: 1,
                    op: "data_create".into(),
                    form: "f".into(),
                    payload: vec![b'x'; bytes],
                    key: None,
                })
                .collect(),
        )
    }

    #[tokio::test]
    async fn items_keep_their_order_and_the_budget_bounds_what_is_queued() {
        let (tx, mut rx) = append_queue(4 * 1024);
        // Three items of ~1.1 KiB fit; the fourth waits for a write.
        for _ in 0..3 {
            tx.send(events(1, 1000)).await.unwrap();
        }
        tx.send(Append::Progress { lsn: 7 }).await.unwrap();
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            tx.send(events(1, 1000)),
        )
        .await;
        assert!(blocked.is_err(), "the fourth large item must wait");
        let first = rx.recv().await.unwrap();
        assert!(matches!(first.item, Append::Events(_)));
        drop(first);
        tx.send(events(1, 1000)).await.unwrap();
        let mut kinds = Vec::new();
        while let Some(q) = rx.try_recv() {
            kinds.push(match q.item {
                Append::Events(_) => "events",
                Append::Progress { lsn } => {
                    assert_eq!(lsn, 7);
                    "progress"
                }
                Append::Commit { .. } => "commit",
            });
        }
        assert_eq!(kinds, ["events", "events", "progress", "events"]);
    }

    #[tokio::test]
    async fn an_item_larger_than_the_budget_travels_alone() {
        let (tx, mut rx) = append_queue(1024);
        tx.send(events(1, 10_000)).await.unwrap();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            tx.send(Append::Progress { lsn: 1 }),
        )
        .await;
        assert!(waiting.is_err(), "nothing queues beside an oversized item");
        drop(rx.recv().await.unwrap());
        tx.send(Append::Progress { lsn: 1 }).await.unwrap();
        assert!(rx.try_recv().is_some());
    }

    #[tokio::test]
    async fn a_dropped_receiver_closes_the_queue() {
        let (tx, rx) = append_queue(1024);
        drop(rx);
        assert_eq!(tx.send(Append::Progress { lsn: 1 }).await, Err(Closed));
    }
}
