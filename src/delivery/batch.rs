//! Batch assembly: which of the next wanted events travel in one request.
//!
//! A batch holds events in commit order and closes when it has
//! `batch.max_events` events, or when the next event would make the body
//! (`{"events":[...]}`, measured exactly with `render::batch_len`) exceed
//! `batch.max_bytes`; an event larger than `max_bytes` on its own still goes,
//! alone, so nothing is ever stuck. Without `batch`, every batch is one event.
//! The worker decides *when* to send (a full batch at once, a partial one
//! after `max_wait` once the log is caught up); this module only decides
//! *what fits*, so it is pure and tested without I/O.

use std::time::Duration;

use tokio::time::Instant;

use super::render::batch_len;
use crate::config::SubscriptionConfig;
use crate::store::StoredEvent;

/// The limits of one subscription's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    max_events: usize,
    /// `None`: no byte limit (one event per request needs none).
    max_bytes: Option<usize>,
    max_wait: Duration,
}

impl Limits {
    /// From `sub.batch`; without it, one event per request and no waiting.
    /// A batch never grows past `max_body` (the subscription's body limit),
    /// so only a single event that is too large on its own can exceed it.
    pub(crate) fn of(sub: &SubscriptionConfig, max_body: usize) -> Limits {
        match &sub.batch {
            None => Limits {
                max_events: 1,
                max_bytes: None,
                max_wait: Duration::ZERO,
            },
            Some(batch) => Limits {
                max_events: usize::try_from(batch.max_events)
                    .unwrap_or(usize::MAX)
                    .max(1),
                max_bytes: Some(
                    usize::try_from(batch.max_bytes.get())
                        .unwrap_or(usize::MAX)
                        .min(max_body),
                ),
                max_wait: batch.max_wait.get(),
            },
        }
    }
}

/// Events gathered for one request.
#[derive(Debug)]
pub(crate) struct Batch {
    limits: Limits,
    events: Vec<StoredEvent>,
    body_lens: Vec<usize>,
    /// The highest seq this batch accounts for: its last event, or an
    /// unwanted event passed over after it (the cursor may move there once
    /// the batch is delivered or dead-lettered).
    through: i64,
    opened_at: Option<Instant>,
}

impl Batch {
    /// An empty batch under `limits`.
    pub(crate) fn new(limits: Limits) -> Batch {
        Batch {
            limits,
            events: Vec::new(),
            body_lens: Vec::new(),
            through: 0,
            opened_at: None,
        }
    }

    /// Adds `event` whose rendered body has `body_len` bytes, or gives it
    /// back when it does not fit (the batch is then complete). An empty
    /// batch takes any event, however large.
    // The "error" is the caller's own event handed back, moved not copied.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(
        &mut self,
        event: StoredEvent,
        body_len: usize,
        now: Instant,
    ) -> Result<(), StoredEvent> {
        if !self.events.is_empty() {
            if self.events.len() >= self.limits.max_events {
                return Err(event);
            }
            if let Some(max) = self.limits.max_bytes {
                let len = batch_len(self.body_lens.iter().copied().chain([body_len]));
                if len > max {
                    return Err(event);
                }
            }
        }
        self.opened_at.get_or_insert(now);
        self.through = self.through.max(event.seq);
        self.events.push(event);
        self.body_lens.push(body_len);
        Ok(())
    }

    /// Records an unwanted event passed over while this batch is open.
    pub(crate) fn pass_over(&mut self, seq: i64) {
        self.through = self.through.max(seq);
    }

    /// Whether no event was added yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether the event count limit is reached (the byte limit is only
    /// known to be reached when the next event does not fit).
    pub(crate) fn is_full(&self) -> bool {
        self.events.len() >= self.limits.max_events
    }

    /// Until when a partial batch may wait for more events.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.limits.max_wait)
    }

    /// The highest seq the batch accounts for.
    pub(crate) fn through(&self) -> i64 {
        self.through
    }

    /// The events, in commit order.
    pub(crate) fn into_events(self) -> Vec<StoredEvent> {
        self.events
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{BatchConfig, ByteSize};

    fn event(seq: i64, len: usize) -> StoredEvent {
        StoredEvent {
            seq,
            id: format!("{seq:016X}-0000"),
            op: "data_create".into(),
            form: "orders".into(),
            commit_lsn: 1,
            payload: vec![b'x'; len],
            stored_at_ms: 0,
            key: None,
        }
    }

    fn limits(max_events: u32, max_bytes: u64) -> Limits {
        let mut sub: SubscriptionConfig =
            serde_json::from_value(serde_json::json!({"name": "s", "url": "http://127.0.0.1:1/"}))
                .unwrap();
        sub.batch = Some(BatchConfig {
            max_events,
            max_bytes: ByteSize(max_bytes),
            max_wait: Duration::from_millis(250).into(),
        });
        Limits::of(&sub, usize::MAX)
    }

    /// Pushes `lens` one by one into fresh batches: the sizes of the batches.
    fn split(limits: Limits, lens: &[usize]) -> Vec<Vec<i64>> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut batch = Batch::new(limits);
        let mut queue: std::collections::VecDeque<StoredEvent> = lens
            .iter()
            .enumerate()
            .map(|(i, len)| event(i64::try_from(i).unwrap() + 1, *len))
            .collect();
        while let Some(e) = queue.pop_front() {
            let len = e.payload.len();
            if let Err(back) = batch.push(e, len, now) {
                queue.push_front(back);
                let full = std::mem::replace(&mut batch, Batch::new(limits));
                out.push(full.into_events().iter().map(|e| e.seq).collect());
                continue;
            }
            if batch.is_full() {
                let full = std::mem::replace(&mut batch, Batch::new(limits));
                out.push(full.into_events().iter().map(|e| e.seq).collect());
            }
        }
        if !batch.is_empty() {
            out.push(batch.into_events().iter().map(|e| e.seq).collect());
        }
        out
    }

    #[test]
    fn without_batch_every_request_is_one_event() {
        let sub: SubscriptionConfig =
            serde_json::from_value(serde_json::json!({"name": "s", "url": "http://127.0.0.1:1/"}))
                .unwrap();
        let limits = Limits::of(&sub, usize::MAX);
        assert_eq!(split(limits, &[10, 10, 10_000_000]), [[1], [2], [3]]);
        let batch = Batch::new(limits);
        assert_eq!(batch.deadline(), None);
    }

    #[test]
    fn batches_close_at_max_events_in_order() {
        let sizes: Vec<Vec<i64>> = split(limits(100, 1 << 30), &[5; 250]);
        let lens: Vec<usize> = sizes.iter().map(Vec::len).collect();
        assert_eq!(lens, [100, 100, 50]);
        let flat: Vec<i64> = sizes.concat();
        assert_eq!(flat, (1..=250).collect::<Vec<_>>());
    }

    #[test]
    fn batches_never_exceed_max_bytes() {
        // Body of n events of 10 bytes: 13 + 10n + (n - 1).
        let max = batch_len([10; 4]);
        assert_eq!(max, 13 + 40 + 3);
        let batches = split(limits(100, u64::try_from(max).unwrap()), &[10; 10]);
        assert_eq!(batches, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
        // One byte less: only three fit.
        let batches = split(limits(100, u64::try_from(max - 1).unwrap()), &[10; 6]);
        assert_eq!(batches, [vec![1, 2, 3], vec![4, 5, 6]]);
    }

    #[test]
    fn an_oversized_event_goes_alone() {
        let batches = split(limits(100, 100), &[10, 10, 500, 10, 10]);
        assert_eq!(batches, [vec![1, 2], vec![3], vec![4, 5]]);
        let batches = split(limits(100, 100), &[500, 500]);
        assert_eq!(batches, [vec![1], vec![2]]);
    }

    #[test]
    fn through_covers_passed_over_events_and_the_deadline_starts_at_the_first() {
        let limits = limits(10, 1000);
        let mut batch = Batch::new(limits);
        let t0 = Instant::now();
        batch.push(event(3, 5), 5, t0).unwrap();
        batch.pass_over(4);
        batch
            .push(event(5, 5), 5, t0 + Duration::from_millis(100))
            .unwrap();
        batch.pass_over(7);
        assert_eq!(batch.through(), 7);
        assert_eq!(batch.deadline(), Some(t0 + Duration::from_millis(250)));
    }
}
